"""Hook names: the only place they are spelled.

Every supported model (TL 2 ``HookedTransformer``, TL 4 ``TransformerBridge``, anything with TL's hook
names) uses these, so they are plain functions of the layer.
"""

from __future__ import annotations

from tl_submodels.components import Component, Kind

__all__ = [
    "component_hook", "hook_attn_out_norm", "hook_attn_reads", "hook_k", "hook_mlp_in", "hook_mlp_out", "hook_pattern", "hook_post",
    "hook_resid_mid", "hook_resid_post", "hook_resid_pre", "hook_rotary", "hook_split_input", "hook_v", "hook_z", "site_hook",
]  # fmt: skip


def hook_z(layer: int) -> str:
    """Per-head attention output before W_O: ``[batch, pos, head_index, d_head]``."""
    return f"blocks.{layer}.attn.hook_z"


def hook_post(layer: int) -> str:
    """MLP neuron activations: ``[batch, pos, d_mlp]``."""
    return f"blocks.{layer}.mlp.hook_post"


def hook_mlp_out(layer: int) -> str:
    """MLP layer output: ``[batch, pos, d_model]``."""
    return f"blocks.{layer}.hook_mlp_out"


def hook_resid_pre(layer: int) -> str:
    """Residual stream entering a block: ``[batch, pos, d_model]``."""
    return f"blocks.{layer}.hook_resid_pre"


def hook_resid_mid(layer: int) -> str:
    """Residual stream between a block's attention and its MLP (models with MLPs)."""
    return f"blocks.{layer}.hook_resid_mid"


def hook_resid_post(layer: int) -> str:
    """Residual stream leaving a block."""
    return f"blocks.{layer}.hook_resid_post"


def hook_pattern(layer: int) -> str:
    """Attention pattern: ``[batch, head_index, query_pos, key_pos]``."""
    return f"blocks.{layer}.attn.hook_pattern"


def hook_k(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_k"


def hook_v(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_v"


def hook_rotary(layer: int, which: str) -> str:
    """The rotary table a TL 4 bridge shows at ``layer``: ``which`` is ``"cos"`` or ``"sin"``."""
    return f"blocks.{layer}.attn.hook_{which}"


def site_hook(kind: Kind, layer: int) -> str:
    """The hook point where components of ``kind`` live in ``layer``."""
    return {"heads": hook_z, "neurons": hook_post, "mlps": hook_mlp_out}[kind](layer)


def component_hook(c: Component) -> str:
    """The hook point of one component, e.g. ``L1H3`` -> ``blocks.1.attn.hook_z``."""
    return site_hook(c.kind, c.layer)


def hook_split_input(layer: int, which: str) -> str:
    """A head's own copy of the residual its q, k or v reads: ``[batch, pos, head_index, d_model]``."""
    return f"blocks.{layer}.hook_{which}_input"


def hook_mlp_in(layer: int) -> str:
    """The residual an MLP reads (before its norm): ``[batch, pos, d_model]``."""
    return f"blocks.{layer}.hook_mlp_in"


def hook_attn_out_norm(layer: int) -> str:
    """The norm some families (Gemma 2) apply to the attention output before adding it to the residual."""
    return f"blocks.{layer}.ln1_post.hook_in"


def hook_attn_reads(layer: int) -> str:
    """The residual a block's attention reads, before its norm, apart from the residual path."""
    return f"blocks.{layer}.ln1.hook_in"
