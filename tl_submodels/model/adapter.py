"""The model adapter: one object per model that knows which kind of TransformerLens model it is.

Everything that differs between a TL 2 ``HookedTransformer``, a TL 4 ``TransformerBridge`` (native or
over a HuggingFace model) and any other object with TL's hook names is decided here, from the model
passed in (not from the installed package): starting and stopping a forward at a layer, the final
norm and unembedding, weights in TL layout, the reader hook flags, the memory a backward pass holds,
and whether the weight-level fast path (:mod:`tl_submodels.fastpath`) applies.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_submodels.errors import TLSubmodelsError
from tl_submodels.model.hooks import hook_attn_out_norm, hook_attn_reads, hook_mlp_in
from tl_submodels.model.info import ModelInfo, model_info

__all__ = ["Adapter", "StandardWeights", "adapter"]

Line = Literal[2, 4, 0]


@dataclass(frozen=True, kw_only=True)
class StandardWeights:
    """Weights of a standard (GPT-2 style) transformer in TL layout, read from either line."""

    normalization: str | None  # "LN", "LNPre", "RMS", "RMSPre" or None
    eps: float
    act_fn: str | None
    attn_scale: float
    scale_by_layer: bool
    ln1: list[tuple[Tensor | None, Tensor | None]]
    ln2: list[tuple[Tensor | None, Tensor | None]]
    W_Q: Tensor  # [layer, head, d_model, d_head]
    b_Q: Tensor
    W_K: Tensor
    b_K: Tensor
    W_V: Tensor
    b_V: Tensor
    W_O: Tensor  # [layer, head, d_head, d_model]
    b_O: Tensor  # [layer, d_model]
    W_in: Tensor | None
    b_in: Tensor | None
    W_out: Tensor | None
    b_out: Tensor | None
    ln_final: tuple[Tensor | None, Tensor | None]
    W_U: Tensor
    b_U: Tensor


_SUPPORTED_ACT = ("relu", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "silu")
# cfg flags outside the standard pre-norm transformer the fast path runs: (flag, what it means)
_NOT_STANDARD = (
    ("gated_mlp", "gated MLP"),
    ("parallel_attn_mlp", "parallel attention and MLP"),
    ("use_local_attn", "local attention"),
    ("use_qk_norm", "q/k norms"),
    ("num_experts", "mixture of experts"),
)


def _line_of(model: Any) -> Line:
    """4 for a TL 4 bridge, 2 for a TL 2 HookedTransformer (or a subclass), 0 for anything else."""
    for cls in type(model).__mro__:
        module = cls.__module__ or ""
        if module.startswith("transformer_lens.model_bridge"):
            return 4
        if module.startswith("transformer_lens") and cls.__name__ == "HookedTransformer":
            return 2
    return 0


@dataclass(frozen=True, eq=False)
class Adapter:
    """What tl_submodels needs to know about one model, read off the model itself.

    Build it with :func:`adapter`. Holds no weights: what it reads (weights in TL layout, flags) is
    read when asked, so weights edited in place are seen.

    Example:
        >>> ad = adapter(tls.zoo.load("induction-2l"))
        >>> ad.fast_path, ad.info.n_layers
        ('weights', 2)
    """

    model: Any
    info: ModelInfo
    line: Line

    @property
    def source(self) -> str:
        """What the model is: ``"HookedTransformer"``, ``"TransformerBridge (native)"``,
        ``"TransformerBridge over LlamaForCausalLM"``, or the class of another TL-like object."""
        if self.line == 4:
            inner = getattr(self.model, "original_model", None)
            if inner is None or (type(inner).__module__ or "").startswith("transformer_lens"):
                return "TransformerBridge (native)"
            return f"TransformerBridge over {type(inner).__name__}"
        return type(self.model).__name__

    def describe(self) -> dict[str, Any]:
        """The model card rows a report shows: TL line, class, sizes, fast path."""
        i = self.info
        return {
            "TransformerLens line": self.line or "neither (an object with TL's hook names)",
            "model": self.source,
            "layers x heads": f"{i.n_layers} x {i.n_heads} (d_head {i.d_head})",
            "d_model / d_mlp": f"{i.d_model} / {i.d_mlp}",
            "d_vocab": i.d_vocab,
            "exact path": self.fast_path if self.fast_path == "weights" else f"hooks ({self.why_hooks})",
        }

    def __repr__(self) -> str:
        path = "weight-level fast path" if self.fast_path == "weights" else f"hooks: {self.why_hooks}"
        return f"Adapter({self.source}, TL {self.line or '?'}, {self.info.n_layers} layers; {path})"

    # ----- running

    @property
    def causal(self) -> bool:
        return getattr(self.model.cfg, "attention_dir", "causal") == "causal"

    @property
    def starts_at_layer(self) -> bool:
        """True where ``model(resid, start_at_layer=l)`` skips the blocks before ``l``.

        TL 2's HookedTransformer does. TL 4's TransformerBridge accepts the argument but still runs
        the earlier blocks (it re-injects the residual at block ``l``), so nothing is saved there.
        """
        return self.line == 2

    @property
    def device(self) -> torch.device:
        """The device of the model's first parameter (CPU for a model without any)."""
        try:
            return next(self.model.parameters()).device
        except (StopIteration, AttributeError):
            return torch.device("cpu")

    def forward_from(
        self,
        layer: int,
        tokens: Int[Tensor, "batch pos"],
        resid: Float[Tensor, "batch pos d_model"] | None,
        fwd_hooks: list,
    ) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits of a hooked forward without gradients, starting at ``layer`` from ``resid`` where that saves work."""
        model = self.model
        with torch.no_grad(), model.hooks(fwd_hooks=fwd_hooks):
            if resid is not None and layer > 0 and self.starts_at_layer:
                return model(resid, start_at_layer=layer)
            return model(tokens)

    def resid_after(
        self, tokens: Int[Tensor, "batch pos"], layer: int, fwd_hooks: list
    ) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream leaving block ``layer`` of a hooked forward without gradients (the
        blocks above it are not run: ``stop_at_layer`` on both lines)."""
        with torch.no_grad():
            return self.model.run_with_hooks(tokens, fwd_hooks=fwd_hooks, stop_at_layer=layer + 1)

    def unembed(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        """Logits of a final residual stream: the model's final norm, then its unembedding."""
        with torch.no_grad():
            return self.model.unembed(self.model.ln_final(resid))

    def W_O(self) -> Float[Tensor, "layer head_index d_head d_model"]:
        """Every head's output weights in TL layout, detached."""
        return self.model.W_O.detach()

    @property
    def backward_factor(self) -> float:
        """Activations a forward+backward holds per row, relative to :meth:`ModelInfo.layer_row_mb`.

        TL 2's HookedTransformer (hand-written LayerNorm, GELU and attention masking) keeps about twice
        as much for the backward pass as TL 4's bridge (measured by scripts/bench_memory.py).
        """
        return 2.0 if self.line == 2 else 1.0

    def has_hooks(self) -> bool:
        """True while any forward or backward hook is registered on the model: on its hook points, on any of its
        other modules (plain ``register_forward_hook`` too) or globally, i.e. when a shortcut around hooks would
        differ. TransformerLens' own wiring on other modules (TL 4's bridge adds some) does not count."""
        model = self.model
        if any(hp._forward_hooks or hp._backward_hooks for hp in model.hook_dict.values()):
            return True
        glob = torch.nn.modules.module
        if glob._global_forward_hooks or glob._global_forward_pre_hooks or glob._global_backward_hooks:
            return True
        hook_points = {id(hp) for hp in model.hook_dict.values()}
        for m in model.modules():
            if id(m) in hook_points:
                continue
            hooks = (m._forward_hooks, m._forward_pre_hooks, m._backward_hooks, getattr(m, "_backward_pre_hooks", {}))
            for fns in hooks:
                if any(not getattr(fn, "__module__", "").startswith("transformer_lens") for fn in fns.values()):
                    return True
        return False

    @contextmanager
    def reader_hooks(self) -> Iterator[str]:
        """Turn on the hook points that show what each component reads; restore the flags after.

        Yields the reader granularity: ``"qkv"`` where each head's q, k and v inputs can be split
        (TL 2 HookedTransformer, TL 4 bridges with joint-QKV attention such as GPT-2), else
        ``"layer"`` (one reader per attention layer, at its norm's input: TL 4 native bridges).
        ``use_split_qkv_input``, ``use_hook_mlp_in`` and ``use_attn_in`` are restored on exit, also on error.
        """
        model, cfg = self.model, self.model.cfg
        if self.post_norms:
            raise TLSubmodelsError(
                f"{self.source} normalises each attention and MLP output before adding it to the residual stream "
                "(Gemma 2), so a head's share of what its layer writes is not a sum; edge attribution does not cover "
                "this model (node scores: tls.attribute)"
            )
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
            if self.info.has_mlps:
                model.set_use_hook_mlp_in(True)
                self._check_mlp_reads_resid()
            if granularity == "layer" and hook_attn_reads(0) not in model.hook_dict:
                raise TLSubmodelsError(
                    f"{self.source} can neither split its attention inputs per head nor expose "
                    f"{hook_attn_reads(0)!r}; edge attribution needs one of them"
                )
            yield granularity
        finally:
            if granularity == "qkv" or saved["use_split_qkv_input"]:
                model.set_use_split_qkv_input(saved["use_split_qkv_input"])
            if self.info.has_mlps:
                model.set_use_hook_mlp_in(saved["use_hook_mlp_in"])
            if saved["use_attn_in"]:
                model.set_use_attn_in(True)

    @property
    def post_norms(self) -> bool:
        """True where attention and MLP outputs are normalised before they join the residual (Gemma 2).

        Read off the hook points as well as the cfg: TL 4's bridges over HuggingFace models do not set
        ``use_normalization_before_and_after``."""
        cfg_says = bool(getattr(self.model.cfg, "use_normalization_before_and_after", False))
        return cfg_says or hook_attn_out_norm(0) in self.model.hook_dict

    @property
    def parallel_blocks(self) -> bool:
        """True where a block's attention and MLP both read the residual entering it (GPT-J, NeoX, Falcon)."""
        return bool(getattr(self.model.cfg, "parallel_attn_mlp", False))

    def _check_mlp_reads_resid(self) -> None:
        """Refuse models whose MLPs read their attention's norm output (``hook_mlp_in`` never runs)."""
        ran: list[bool] = []
        probe = torch.zeros(1, 1, dtype=torch.long, device=self.device)
        with torch.no_grad():
            self.model.run_with_hooks(probe, fwd_hooks=[(hook_mlp_in(0), lambda act, hook: ran.append(True))])
        if not ran:
            raise TLSubmodelsError(
                f"{self.source} runs attention and MLP in parallel from one shared norm (it has no "
                f"{hook_mlp_in(0)!r} that runs), so what an MLP reads cannot be told apart from what its layer's "
                "attention reads; edge attribution does not cover this model (node scores: tls.attribute)"
            )

    # ----- the fast path

    def blocks_mb(self) -> float:
        """Memory of the parameters of the model's blocks, in MB: a bound on what the fast path copies."""
        return sum(p.numel() * p.element_size() for p in self.model.blocks.parameters()) / 2**20

    @cached_property
    def why_hooks(self) -> str:
        """Why the weight-level fast path does not apply to this architecture ("" where it does)."""
        cfg = self.model.cfg
        if self.post_norms:
            return "norms after attention and MLP"
        for flag, what in _NOT_STANDARD:
            if getattr(cfg, flag, None):
                return what
        if getattr(cfg, "positional_embedding_type", "standard") != "standard":
            return f"{getattr(cfg, 'positional_embedding_type', '?')} positions"
        if not self.causal:
            return "bidirectional attention"
        if (getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0) > 0 or (
            getattr(cfg, "output_logits_soft_cap", -1.0) or -1.0
        ) > 0:
            return "soft-capped scores or logits"
        if getattr(cfg, "normalization_type", None) not in ("LN", "LNPre", "RMS", "RMSPre", None):
            return f"normalization {getattr(cfg, 'normalization_type', None)!r}"
        if self.info.has_mlps and getattr(cfg, "act_fn", None) not in _SUPPORTED_ACT:
            return f"activation {getattr(cfg, 'act_fn', None)!r}"
        if len({p.device for p in self.model.parameters()}) > 1:
            return "weights split across devices"
        return ""

    @property
    def fast_path(self) -> Literal["weights", "hooks"]:
        """``"weights"`` where exact runs can go over the weights (:mod:`tl_submodels.fastpath`), else ``"hooks"``."""
        return "hooks" if self.why_hooks else "weights"

    def standard_weights(self) -> StandardWeights | None:
        """TL-layout weights where the model is a plain pre-norm transformer on one device, else None.

        Architectures outside that family (see :attr:`why_hooks`) return None and are run through
        hooks instead. Callers check the fast path's logits against the model's, so a None here is a
        speed matter only, never a correctness one. Read afresh on every call.
        """
        if self.why_hooks:
            return None
        try:
            return _read_weights(self.model)
        except (AttributeError, KeyError, RuntimeError, TypeError, ValueError):
            return None  # not TL-layout weights after all: hooks


def adapter(model: Any) -> Adapter:
    """The adapter of ``model``: refuses objects that are not TL models (see :func:`model_info`).

    Raises:
        TLSubmodelsError: when ``model`` has no cfg or hook_dict, or the cfg lacks a field.

    Example:
        >>> adapter(tls.zoo.load("induction-2l")).line in (2, 4)
        True
    """
    return Adapter(model, model_info(model), _line_of(model))


def _norm_params(module: Any) -> tuple[Tensor | None, Tensor | None]:
    w = getattr(module, "w", None)
    if w is None:
        w = getattr(module, "weight", None)
    b = getattr(module, "b", None)
    if b is None:
        b = getattr(module, "bias", None)
    return (None if w is None else w.detach(), None if b is None else b.detach())


def _read_weights(model: Any) -> StandardWeights:
    cfg = model.cfg
    attn_only = bool(getattr(cfg, "attn_only", False))
    d_head = int(cfg.d_head)
    scale = float(getattr(cfg, "attn_scale", -1.0) or -1.0)
    if not getattr(cfg, "use_attn_scale", True):
        scale = 1.0
    elif scale <= 0:
        scale = d_head**0.5
    norm = getattr(cfg, "normalization_type", None)
    blocks = list(model.blocks)

    def stack(name: str) -> Tensor:
        return getattr(model, name).detach()

    return StandardWeights(
        normalization=norm,
        eps=float(getattr(cfg, "eps", 1e-5)),
        act_fn=getattr(cfg, "act_fn", None),
        attn_scale=scale,
        scale_by_layer=bool(getattr(cfg, "scale_attn_by_inverse_layer_idx", False)),
        ln1=[_norm_params(b.ln1) for b in blocks],
        ln2=[(None, None) if attn_only else _norm_params(b.ln2) for b in blocks],
        W_Q=stack("W_Q"),
        b_Q=stack("b_Q"),
        W_K=stack("W_K"),
        b_K=stack("b_K"),
        W_V=stack("W_V"),
        b_V=stack("b_V"),
        W_O=stack("W_O"),
        b_O=stack("b_O"),
        W_in=None if attn_only else stack("W_in"),
        b_in=None if attn_only else stack("b_in"),
        W_out=None if attn_only else stack("W_out"),
        b_out=None if attn_only else stack("b_out"),
        ln_final=_norm_params(model.ln_final),
        W_U=stack("W_U"),
        b_U=stack("b_U"),
    )
