"""The model contract: what tl_submodels needs of a model, and the one place that knows TL lines.

tl_submodels works with any object that has TransformerLens' hook names and a ``cfg`` with
``n_layers, n_heads, d_head, d_model, d_mlp``: transformer-lens 4.x ``TransformerBridge`` (native or
over a HuggingFace model) and transformer-lens 2.x ``HookedTransformer``. Every hook name used by
the package is built here, and so is every call whose spelling differs between the two lines.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_submodels.components import KINDS, MLP, Component, Head, Kind, Neuron
from tl_submodels.errors import TLSubmodelsError, did_you_mean


def _tl_line() -> int:
    """4 where the installed transformer-lens has ``model_bridge`` (``TransformerBridge``), else 2.

    Found by looking for the subpackage, not by importing it: importing transformer_lens takes
    seconds, and ``import tl_submodels`` (the command line's errors, ``zoo list``) needs none of it.
    """
    spec = importlib.util.find_spec("transformer_lens")
    folders = (spec.submodule_search_locations or []) if spec is not None else []
    return 4 if any((Path(folder) / "model_bridge").is_dir() for folder in folders) else 2


TL_LINE = _tl_line()

EXPECTED = (
    "a TransformerLens model: transformer-lens 4.x TransformerBridge or transformer-lens 2.x "
    "HookedTransformer (or any model with the same hook names and a cfg with n_layers, n_heads, "
    "d_head, d_model, d_mlp)"
)


# ---------------------------------------------------------------------------------------------
# Hook names: the only place they are spelled.


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


def site_hook(kind: Kind, layer: int) -> str:
    """The hook point where components of ``kind`` live in ``layer``."""
    return {"heads": hook_z, "neurons": hook_post, "mlps": hook_mlp_out}[kind](layer)


def component_hook(c: Component) -> str:
    """The hook point of one component, e.g. ``L1H3`` -> ``blocks.1.attn.hook_z``."""
    return site_hook(c.kind, c.layer)


# ---------------------------------------------------------------------------------------------
# The contract.


@dataclass(frozen=True, kw_only=True)
class ModelInfo:
    """What tl_submodels reads off a model's cfg.

    Example:
        >>> info = model_info(tls.zoo.load("induction-2l"))
        >>> info.n_layers, info.n_heads
        (2, 4)
    """

    n_layers: int
    n_heads: int
    d_head: int
    d_model: int
    d_mlp: int | None
    d_vocab: int
    n_ctx: int
    attn_only: bool
    d_vocab_out: int = 0  # the unembedding's outputs (0: as many as d_vocab)

    @property
    def has_mlps(self) -> bool:
        return not self.attn_only and bool(self.d_mlp)

    def kinds(self) -> tuple[Kind, ...]:
        """The component kinds this model has."""
        return KINDS if self.has_mlps else ("heads",)

    def n_units(self, kind: Kind) -> int:
        """Units per layer: heads, neurons, or 1 MLP."""
        return {"heads": self.n_heads, "neurons": self.d_mlp or 0, "mlps": 1}[kind]

    def site_mb(self, kind: Kind, seq: int) -> float:
        """Memory of one prompt's float32 activation at the hook point of ``kind`` in one layer
        (``hook_z``, ``mlp.hook_post``, ``hook_mlp_out``), in MB."""
        width = {"heads": self.n_heads * self.d_head, "neurons": self.d_mlp or 0, "mlps": self.d_model}[kind]
        return 4 * seq * width / 2**20

    def layer_row_mb(self, seq: int) -> float:
        """Memory of one layer's main float32 activations for one prompt of ``seq`` tokens (residual stream and
        norms, q/k/v/z, attention scores and pattern, MLP pre/post), in MB: the unit the sweeps budget in."""
        width = 8 * self.d_model + 4 * self.n_heads * self.d_head + 2 * self.n_heads * seq + 3 * (self.d_mlp or 0)
        return 4 * seq * width / 2**20

    def site_kind(self, name: str) -> Kind:
        """The component kind whose units live at hook point ``name`` (see :func:`site_hook`)."""
        for kind in self.kinds():
            if any(site_hook(kind, layer) == name for layer in range(self.n_layers)):
                return kind
        raise TLSubmodelsError(f"{name!r} is not a component site of this model")

    def check_component(self, c: Component) -> None:
        """Raise if ``c`` is not in this model."""
        if c.layer >= self.n_layers:
            raise TLSubmodelsError(
                f"{c}: layer {c.layer} out of range; this model has n_layers={self.n_layers} "
                f"(layers 0-{self.n_layers - 1})"
            )
        if c.kind != "heads" and not self.has_mlps:
            raise TLSubmodelsError(f"{c}: this model is attention-only and has no MLP neurons or layers")
        if isinstance(c, Head) and c.head >= self.n_heads:
            raise TLSubmodelsError(
                f"{c}: head {c.head} out of range; this model has n_heads={self.n_heads} (heads 0-{self.n_heads - 1})"
            )
        if isinstance(c, Neuron) and c.neuron >= (self.d_mlp or 0):
            raise TLSubmodelsError(
                f"{c}: neuron {c.neuron} out of range; this model has d_mlp={self.d_mlp} (neurons 0-{(self.d_mlp or 1) - 1})"
            )
        if c.pos is not None and c.pos >= self.n_ctx:
            raise TLSubmodelsError(f"{c}: position {c.pos} out of range; this model has n_ctx={self.n_ctx}")

    def components(self, kinds: Iterable[Kind]) -> list[Component]:
        """Every component of the given kinds, in forward order."""
        out: list[Component] = []
        for layer in range(self.n_layers):
            for kind in kinds:
                if kind == "heads":
                    out += [Head(layer, h) for h in range(self.n_heads)]
                elif kind == "neurons" and self.has_mlps:
                    out += [Neuron(layer, n) for n in range(self.d_mlp or 0)]
                elif kind == "mlps" and self.has_mlps:
                    out.append(MLP(layer))
        return sorted(out)


def model_info(model: Any) -> ModelInfo:
    """Read the contract fields off ``model.cfg``; refuse objects that are not TL models.

    Raises:
        TLSubmodelsError: when ``model`` has no cfg or the cfg lacks a field.

    Example:
        >>> model_info(tls.zoo.load("induction-2l")).n_layers  # doctest: +SKIP
        2
    """
    cfg = getattr(model, "cfg", None)
    if cfg is None or not hasattr(model, "hook_dict"):
        raise TLSubmodelsError(f"expected {EXPECTED}; got {type(model).__name__}, which has no cfg or hook_dict")
    missing = [f for f in ("n_layers", "n_heads", "d_head", "d_model", "d_vocab") if getattr(cfg, f, None) is None]
    if missing:
        raise TLSubmodelsError(f"model.cfg lacks {missing}; expected {EXPECTED}")
    attn_only = bool(getattr(cfg, "attn_only", False))
    d_mlp = getattr(cfg, "d_mlp", None)
    return ModelInfo(
        n_layers=int(cfg.n_layers),
        n_heads=int(cfg.n_heads),
        d_head=int(cfg.d_head),
        d_model=int(cfg.d_model),
        d_mlp=None if attn_only or not d_mlp or d_mlp < 0 else int(d_mlp),
        d_vocab=int(cfg.d_vocab),
        n_ctx=int(getattr(cfg, "n_ctx", 0) or 0) or 1 << 30,
        attn_only=attn_only,
        d_vocab_out=max(0, int(getattr(cfg, "d_vocab_out", 0) or 0)),
    )


def check_model(model: Any, kinds: Sequence[Kind] = ("heads",), *, training_ok: bool = False) -> ModelInfo:
    """Check that ``model`` can be analysed for ``kinds`` and return its :class:`ModelInfo`.

    Refuses: objects that are not TL models, models in training mode (dropout makes patching
    meaningless), and models lacking a needed hook point (the message names the hook).

    Example:
        >>> check_model(model, ("heads",)).n_heads  # doctest: +SKIP
        4
    """
    info = model_info(model)
    if getattr(model, "training", False) and not training_ok:
        raise TLSubmodelsError(
            f"{type(model).__name__} is in training mode: dropout would make every patched run "
            "differ at random. Call model.eval() first."
        )
    needed = [hook_resid_pre(0)]
    for kind in kinds:
        if kind != "heads" and not info.has_mlps:
            raise TLSubmodelsError(f"kind {kind!r} needs MLPs, but this model is attention-only; use kinds=('heads',)")
        needed += [site_hook(kind, layer) for layer in range(info.n_layers)]
    hook_dict = model.hook_dict
    for name in needed:
        if name not in hook_dict:
            raise TLSubmodelsError(
                f"{type(model).__name__} has no hook point {name!r}; tl_submodels needs {EXPECTED}."
                + did_you_mean(name, hook_dict)
            )
    return info


def hook_split_input(layer: int, which: str) -> str:
    """A head's own copy of the residual its q, k or v reads: ``[batch, pos, head_index, d_model]``."""
    return f"blocks.{layer}.hook_{which}_input"


def hook_mlp_in(layer: int) -> str:
    """The residual an MLP reads (before its norm): ``[batch, pos, d_model]``."""
    return f"blocks.{layer}.hook_mlp_in"


def hook_attn_reads(layer: int) -> str:
    """The residual a block's attention reads, before its norm, apart from the residual path."""
    return f"blocks.{layer}.ln1.hook_in"


@contextmanager
def reader_hooks(model: Any) -> Iterator[str]:
    """Turn on the hook points that show what each component reads; restore the flags after.

    Yields the reader granularity: ``"qkv"`` where each head's q, k and v inputs can be split
    (TL 2 HookedTransformer, TL 4 bridges with joint-QKV attention such as GPT-2), else
    ``"layer"`` (one reader per attention layer, at its norm's input: TL 4 native bridges).
    ``use_split_qkv_input``, ``use_hook_mlp_in`` and ``use_attn_in`` are restored on exit, also on error.
    """
    cfg = model.cfg
    saved = {f: bool(getattr(cfg, f, False)) for f in ("use_split_qkv_input", "use_hook_mlp_in", "use_attn_in")}
    granularity = "layer"
    try:
        if saved["use_attn_in"]:
            model.set_use_attn_in(False)
        try:
            model.set_use_split_qkv_input(True)
            granularity = "qkv"
        except (NotImplementedError, AttributeError, AssertionError):
            granularity = "layer"
        if not getattr(cfg, "attn_only", False):
            model.set_use_hook_mlp_in(True)
        if granularity == "layer" and hook_attn_reads(0) not in model.hook_dict:
            raise TLSubmodelsError(
                f"{type(model).__name__} can neither split its attention inputs per head nor expose "
                f"{hook_attn_reads(0)!r}; edge attribution needs one of them"
            )
        yield granularity
    finally:
        if granularity == "qkv" or saved["use_split_qkv_input"]:
            model.set_use_split_qkv_input(saved["use_split_qkv_input"])
        if not getattr(cfg, "attn_only", False):
            model.set_use_hook_mlp_in(saved["use_hook_mlp_in"])
        if saved["use_attn_in"]:
            model.set_use_attn_in(True)


def has_hooks(model: Any) -> bool:
    """True while any forward or backward hook is registered on the model: on its hook points, on any of its
    other modules (plain ``register_forward_hook`` too) or globally, i.e. when a shortcut around hooks would
    differ. TransformerLens' own wiring on other modules (TL 4's bridge adds some) does not count."""
    if any(hp._forward_hooks or hp._backward_hooks for hp in model.hook_dict.values()):
        return True
    glob = torch.nn.modules.module
    if glob._global_forward_hooks or glob._global_forward_pre_hooks or glob._global_backward_hooks:
        return True
    hook_points = {id(hp) for hp in model.hook_dict.values()}
    for m in model.modules():
        if id(m) in hook_points:
            continue
        for hooks in (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, getattr(m, "_backward_pre_hooks", {})):
            if any(not getattr(fn, "__module__", "").startswith("transformer_lens") for fn in hooks.values()):
                return True
    return False


def is_attention_causal(model: Any) -> bool:
    return getattr(model.cfg, "attention_dir", "causal") == "causal"


# ---------------------------------------------------------------------------------------------
# Calls that differ between the lines.


def supports_start_at_layer(model: Any) -> bool:
    """True where ``model(resid, start_at_layer=l)`` skips the blocks before ``l``.

    TL 2's HookedTransformer does. TL 4's TransformerBridge accepts the argument but still runs
    the earlier blocks (it re-injects the residual at block ``l``), so nothing is saved there.
    """
    return TL_LINE == 2 and type(model).__name__ == "HookedTransformer"


def first_param_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def build_from_tl_checkpoint(
    cfg: dict[str, Any], state_dict: dict[str, Tensor], device: str | None = None, tokenizer: Any = None
) -> Any:
    """Build an eval-mode model from a HookedTransformer-layout state dict, on either TL line.

    On TL 4 this is ``TransformerBridge.boot_native`` plus ``convert_tl_checkpoint``; on TL 2 a
    ``HookedTransformer``. Used by the zoo.
    """
    if TL_LINE == 4:
        from transformer_lens.model_bridge import TransformerBridge
        from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

        bridge: Any = TransformerBridge  # boot_native is attached at run time, out of mypy's sight
        model = bridge.boot_native(dict(cfg, seed=0), device=device, tokenizer=tokenizer)
        model.load_state_dict(convert_tl_checkpoint(state_dict, model.cfg), strict=True)
    else:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        model = HookedTransformer(HookedTransformerConfig(**cfg, device=device or "cpu"), tokenizer=tokenizer)
        result = model.load_state_dict(state_dict, strict=False)
        stray = [k for k in result.missing_keys if not k.endswith((".mask", ".IGNORE"))]
        if stray or result.unexpected_keys:
            raise TLSubmodelsError(
                f"checkpoint does not match the config: missing {stray}, unexpected {result.unexpected_keys}"
            )
    model.eval()
    return model


def tokenize(model: Any, text: str, *, prepend_bos: bool = True) -> list[int]:
    """Token ids of ``text`` through the model's tokenizer, never cut to ``n_ctx`` (callers check the length)."""
    if getattr(model, "tokenizer", None) is None:
        raise TLSubmodelsError(
            f"{type(model).__name__} has no tokenizer, so prompts cannot be tokenized; "
            "build the task from token ids with Task.from_tokens(model, clean=..., corrupt=..., answer=...)"
        )
    ids = [int(t) for t in model.to_tokens(text, prepend_bos=prepend_bos, truncate=False)[0].tolist()]
    unk, unk_text = getattr(model.tokenizer, "unk_token_id", None), getattr(model.tokenizer, "unk_token", None)
    if unk is not None and unk in ids and (not unk_text or unk_text not in text):
        raise TLSubmodelsError(
            f"{text!r} holds a word outside the tokenizer's vocabulary (it reads as {unk_text!r}); "
            "check the spelling of the prompt"
        )
    return ids


def single_token(model: Any, text: str) -> int:
    """The id of ``text``, which must be exactly one token."""
    ids = tokenize(model, text, prepend_bos=False)
    if len(ids) != 1:
        raise TLSubmodelsError(f"answer {text!r} is {len(ids)} tokens {ids}; answers must be single tokens")
    return ids[0]


def pad_token_id(model: Any) -> int:
    tok = getattr(model, "tokenizer", None)
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tok, attr, None) if tok is not None else None
        if value is not None:
            return int(value)
    return 0


def run_logits(
    model: Any, tokens: Int[Tensor, "batch pos"], fwd_hooks: list | None = None
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of a (hooked) forward without gradients."""
    with torch.no_grad():
        if fwd_hooks:
            return model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)
        return model(tokens)


def run_cache(model: Any, tokens: Int[Tensor, "batch pos"], names: Iterable[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits and the named activations of one forward, without gradients."""
    wanted = set(names)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
    return logits, {n: cache[n] for n in wanted}


def forward_from(
    model: Any,
    layer: int,
    tokens: Int[Tensor, "batch pos"],
    resid: Float[Tensor, "batch pos d_model"] | None,
    fwd_hooks: list,
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of a hooked forward, starting at ``layer`` from ``resid`` where that saves work."""
    with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks):
        if resid is not None and layer > 0 and supports_start_at_layer(model):
            return model(resid, start_at_layer=layer)
        return model(tokens)
