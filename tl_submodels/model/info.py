"""The model contract: what tl_submodels reads off a model's cfg, and the checks every entry point runs."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any

from tl_submodels.components import KINDS, MLP, Component, Head, Kind, Neuron, forward_order
from tl_submodels.errors import TLSubmodelsError, did_you_mean
from tl_submodels.model.hooks import hook_resid_pre, site_hook

__all__ = ["EXPECTED", "ModelInfo", "check_model", "model_info"]

EXPECTED = (
    "a TransformerLens model: transformer-lens 4.x TransformerBridge or transformer-lens 2.x "
    "HookedTransformer (or any model with the same hook names and a cfg with n_layers, n_heads, "
    "d_head, d_model, d_mlp)"
)


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

    @cached_property
    def site_kinds(self) -> dict[str, Kind]:
        """Every component site's hook name and the kind of the units that live there (built once)."""
        return {site_hook(kind, layer): kind for kind in self.kinds() for layer in range(self.n_layers)}

    def site_kind(self, name: str) -> Kind:
        """The component kind whose units live at hook point ``name`` (see :func:`site_hook`)."""
        kind = self.site_kinds.get(name)
        if kind is None:
            raise TLSubmodelsError(f"{name!r} is not a component site of this model")
        return kind

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
        return sorted(out, key=forward_order)


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
