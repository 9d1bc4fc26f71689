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
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Any, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_submodels.errors import TLSubmodelsError
from tl_submodels.model.hooks import hook_attn_out_norm, hook_attn_reads, hook_mlp_in, hook_rotary
from tl_submodels.model.info import ModelInfo, model_info

__all__ = ["Adapter", "StandardWeights", "adapter"]

Line = Literal[2, 4, 0]


@dataclass(frozen=True, kw_only=True)
class StandardWeights:
    """Weights of a pre-norm transformer in TL layout, read from either line, and the options the
    weight-level forward (:mod:`tl_submodels.fastpath`) needs to run it exactly.

    Covers learned and rotary positions (partial rotary, adjacent or half-split pairs), LayerNorm and
    RMS norm, plain and gated MLPs, grouped key-value heads (``W_K``/``W_V`` hold ``kv_heads`` heads),
    parallel attention and MLP, norms after attention and MLP, soft-capped scores and logits, and
    local (sliding-window) attention. Absent biases are zeros.
    """

    normalization: str | None  # "LN", "LNPre", "RMS", "RMSPre" or None
    eps: float
    act_fn: str | None
    attn_scale: float
    scale_by_layer: bool
    ln1: list[tuple[Tensor | None, Tensor | None]]
    ln2: list[tuple[Tensor | None, Tensor | None]]
    W_Q: Tensor  # [layer, head, d_model, d_head]
    b_Q: Tensor
    W_K: Tensor  # [layer, kv_head, d_model, d_head]
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
    W_gate: Tensor | None = None  # [layer, d_model, d_mlp]: post = act(x @ W_gate) * (x @ W_in + b_in)
    parallel: bool = False  # attention and MLP both read the residual entering the block
    # norms on the attention and MLP outputs before they join the residual (Gemma 2), per layer
    ln1_post: list[tuple[Tensor | None, Tensor | None]] | None = None
    ln2_post: list[tuple[Tensor | None, Tensor | None]] | None = None
    rotary_cos: Tensor | None = None  # [pos, rotary_dim]: the model's own tables, for positions 0 ..
    rotary_sin: Tensor | None = None
    rotary_adjacent: bool = False  # rotate pairs (0, 1), (2, 3), ... (GPT-J) instead of the two halves
    attn_soft_cap: float = 0.0  # scores -> cap * tanh(scores / cap) where > 0
    logit_soft_cap: float = 0.0
    windows: tuple[int | None, ...] = ()  # per layer: keys at most this many positions back (None: all)


_SUPPORTED_ACT = ("relu", "gelu", "gelu_new", "gelu_fast", "gelu_pytorch_tanh", "silu")
# cfg flags outside what the fast path runs: (flag, what it means)
_NOT_STANDARD = (
    ("use_qk_norm", "q/k norms"),
    ("num_experts", "mixture of experts"),
)
# TL 4 bridges over these HuggingFace models whose weights, read in TL layout, do not reproduce the model's
# forward (measured on transformer-lens 4.3: logits 0.45 apart on a tiny random Falcon with multi-query attention)
_HOOKS_ONLY = {"FalconForCausalLM": "its bridge's fused query/key/value weights do not reproduce its forward"}
# Modules whose hooks on a model are the libraries' own wiring, not a user's: TransformerLens (TL 4's bridge)
# and transformers (its output capturing, installed on a HuggingFace model's first forward).
_WIRING = ("transformer_lens.", "transformers.")


def _user_hooks(hp: Any) -> bool:
    """Whether a hook point holds a hook that is not TransformerLens' own permanent wiring."""
    handles = [*getattr(hp, "fwd_hooks", []), *getattr(hp, "bwd_hooks", [])]
    if any(not getattr(h, "is_permanent", False) for h in handles):
        return True
    # hooks registered on the module directly, not through HookPoint.add_hook, are not in those lists
    return len(hp._forward_hooks) + len(hp._backward_hooks) > len(handles)


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

    def W_out(self) -> Float[Tensor, "layer d_mlp d_model"] | None:
        """Every MLP's output weights in TL layout, detached; None for an attention-only model.

        Example:
            >>> tlmodel.adapter(model).W_out().shape  # doctest: +SKIP
            torch.Size([3, 256, 64])
        """
        if self.model.cfg.attn_only:
            return None
        return self.model.W_out.detach()

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
        differ. The libraries' own wiring does not count: TL 4's bridges add permanent hooks (OPT's) and hooks on
        other modules, and ``transformers`` installs output-capturing hooks on a HuggingFace model's first forward."""
        model = self.model
        if any(_user_hooks(hp) for hp in model.hook_dict.values()):
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
                if any(not (getattr(fn, "__module__", None) or "").startswith(_WIRING) for fn in fns.values()):
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
        for flag, what in _NOT_STANDARD:
            if getattr(cfg, flag, None):
                return what
        if self.line == 4 and self.source.split()[-1] in _HOOKS_ONLY:
            return _HOOKS_ONLY[self.source.split()[-1]]
        positions = getattr(cfg, "positional_embedding_type", "standard")
        if positions not in ("standard", "rotary"):
            return f"{positions} positions"
        if positions == "rotary" and self.line == 4 and hook_rotary(0, "cos") not in self.model.hook_dict:
            return "rotary positions the bridge does not show (no hook_cos)"
        if not self.causal:
            return "bidirectional attention"
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

    def standard_weights(self, n_pos: int | None = None) -> StandardWeights | None:
        """TL-layout weights where the fast path covers the model (see :attr:`why_hooks`), else None.

        ``n_pos``: the longest sequence the forward will run (rotary models: the tables cover positions
        ``0 .. n_pos - 1``; default ``cfg.n_ctx``). Callers check the fast path's logits against the
        model's, so a None here is a speed matter only, never a correctness one. Read afresh on every call.

        Example:
            >>> w = adapter(tls.zoo.load("induction-2l")).standard_weights()
            >>> tuple(w.W_Q.shape[:2]) == (2, 4) and w.rotary_cos is None
            True
        """
        if self.why_hooks:
            return None
        try:
            weights = _read_weights(self)
            if getattr(self.model.cfg, "positional_embedding_type", "standard") != "rotary":
                return weights
            cos, sin = self.rotary_tables(n_pos or int(self.model.cfg.n_ctx))
        except (AttributeError, KeyError, RuntimeError, TypeError, ValueError, IndexError):
            return None  # not TL-layout weights after all: hooks
        return replace(weights, rotary_cos=cos, rotary_sin=sin, rotary_adjacent=self._rotary_adjacent())

    def rotary_tables(self, n_pos: int) -> tuple[Float[Tensor, "pos rotary_dim"], Float[Tensor, "pos rotary_dim"]]:
        """The cosines and sines a rotary model multiplies its queries and keys by, at positions ``0 .. n_pos - 1``
        (each frequency twice, in the layout the model pairs dimensions in), as the model itself computes them.

        TL 2 keeps them as buffers; a TL 4 bridge shows them at ``hook_cos``/``hook_sin`` during a forward
        (one forward of ``n_pos`` tokens reads them: HuggingFace's own rotary module, its scaling included).

        Example:
            >>> ad = adapter(tls.load_model(folder))  # doctest: +SKIP
            >>> cos, sin = ad.rotary_tables(16)  # doctest: +SKIP
        """
        model = self.model
        if self.line != 4:
            attn = model.blocks[0].attn
            return attn.rotary_cos[:n_pos].detach(), attn.rotary_sin[:n_pos].detach()
        seen: dict[str, Tensor] = {}
        names = {hook_rotary(0, "cos"): "cos", hook_rotary(0, "sin"): "sin"}

        def keep(act: Tensor, hook: Any) -> None:
            seen[names[hook.name]] = act.detach().reshape(-1, act.shape[-1])[-n_pos:]

        probe = torch.zeros(1, n_pos, dtype=torch.long, device=self.device)
        with torch.no_grad():
            model.run_with_hooks(probe, fwd_hooks=[(n, keep) for n in names])
        return seen["cos"], seen["sin"]

    def _rotary_adjacent(self) -> bool:
        """Whether rotary pairs adjacent dimensions (GPT-J in TL 2) rather than the two halves."""
        return self.line != 4 and bool(getattr(self.model.cfg, "rotary_adjacent_pairs", False))


def adapter(model: Any) -> Adapter:
    """The adapter of ``model``: refuses objects that are not TL models (see :func:`model_info`).

    Raises:
        TLSubmodelsError: when ``model`` has no cfg or hook_dict, or the cfg lacks a field.

    Example:
        >>> adapter(tls.zoo.load("induction-2l")).line in (2, 4)
        True
    """
    return Adapter(model, model_info(model), _line_of(model))


def _inner(module: Any) -> Any:
    """The HuggingFace module a TL 4 bridge component wraps (the module itself elsewhere)."""
    return getattr(module, "original_component", None) or module


def _norm_params(module: Any) -> tuple[Tensor | None, Tensor | None]:
    w = getattr(module, "w", None)
    if w is None:
        w = getattr(module, "weight", None)
    b = getattr(module, "b", None)
    if b is None:
        b = getattr(module, "bias", None)
    w = None if w is None else w.detach()
    if w is not None and type(_inner(module)).__name__.startswith("Gemma"):
        w = 1.0 + w  # HuggingFace's Gemma norms scale by (1 + weight); TL 2 folds the 1 in
    return (w, None if b is None else b.detach())


def _eps(ad: Adapter) -> float:
    """The norms' epsilon: the HuggingFace module's own where there is one (TL 4 bridges), else the cfg's."""
    inner = _inner(ad.model.blocks[0].ln1)
    for name in ("variance_epsilon", "eps"):
        value = getattr(inner, name, None)
        if isinstance(value, float):
            return value
    return float(getattr(ad.model.cfg, "eps", 1e-5))


def _param(module: Any, *names: str) -> Tensor | None:
    """The first of ``names`` that ``module`` has as a tensor, detached (None where absent: a bias-free layer)."""
    for name in names:
        try:
            value = getattr(module, name)
        except (AttributeError, RuntimeError):
            continue
        if isinstance(value, Tensor):
            return value.detach()
    return None


def _stack(values: list[Tensor | None], like: list[Tensor]) -> Tensor:
    """Per-layer tensors stacked; a missing one (no bias) is zeros shaped like its ``like`` entry."""
    return torch.stack([torch.zeros_like(r) if v is None else v for v, r in zip(values, like, strict=True)])


def _read_weights(ad: Adapter) -> StandardWeights:
    model = ad.model
    cfg = model.cfg
    attn_only = bool(getattr(cfg, "attn_only", False))
    d_head = int(cfg.d_head)
    blocks = list(model.blocks)
    attns = [b.attn for b in blocks]
    inner_attn = _inner(attns[0])
    scale = float(getattr(cfg, "attn_scale", -1.0) or -1.0)
    if not getattr(cfg, "use_attn_scale", True):
        scale = 1.0
    elif ad.line == 4 and isinstance(getattr(inner_attn, "scaling", None), float):
        scale = 1.0 / inner_attn.scaling  # the HuggingFace module's own (Gemma 2: query_pre_attn_scalar)
    elif scale <= 0:
        scale = d_head**0.5
    W_Q = torch.stack([_param(a, "W_Q") for a in attns])  # type: ignore[misc]
    W_K = torch.stack([_param(a, "_W_K", "W_K") for a in attns])  # type: ignore[misc]  # TL 2 GQA: the kv heads
    W_V = torch.stack([_param(a, "_W_V", "W_V") for a in attns])  # type: ignore[misc]
    W_O = torch.stack([_param(a, "W_O") for a in attns])  # type: ignore[misc]
    qb, kvb, ob = list(W_Q[:, :, 0]), list(W_K[:, :, 0]), list(W_O[:, 0, 0])
    parallel = ad.parallel_blocks
    mlps: dict[str, Tensor | None] = dict.fromkeys(("W_in", "b_in", "W_out", "b_out", "W_gate"))
    ln2: list[tuple[Tensor | None, Tensor | None]] = [(None, None)] * len(blocks)
    if not attn_only:
        ms = [b.mlp for b in blocks]
        W_in = torch.stack([_param(m, "W_in") for m in ms])  # type: ignore[misc]
        W_out = torch.stack([_param(m, "W_out") for m in ms])  # type: ignore[misc]
        gated = bool(getattr(cfg, "gated_mlp", False))
        mlps = {
            "W_in": W_in,
            "b_in": _stack([_param(m, "b_in") for m in ms], list(W_in[:, 0])),
            "W_out": W_out,
            "b_out": _stack([_param(m, "b_out") for m in ms], list(W_out[:, 0])),
            "W_gate": torch.stack([_param(m, "W_gate") for m in ms]) if gated else None,  # type: ignore[misc]
        }
        # GPT-J and Falcon (TL 4) run attention and MLP from one norm: ln1 serves both
        ln2 = [_norm_params(b.ln2 if hasattr(b, "ln2") or not parallel else b.ln1) for b in blocks]
    post = ad.post_norms
    windows: list[int | None] = [None] * len(blocks)
    if ad.line == 4:  # the HuggingFace attention module's own window (None on its global layers)
        windows = [getattr(_inner(a), "sliding_window", None) for a in attns]
    elif getattr(cfg, "use_local_attn", False):
        types = getattr(cfg, "attn_types", None) or ["local"] * len(blocks)
        windows = [int(cfg.window_size) if t == "local" else None for t in types]
    return StandardWeights(
        normalization=getattr(cfg, "normalization_type", None),
        eps=_eps(ad),
        act_fn=getattr(cfg, "act_fn", None),
        attn_scale=scale,
        scale_by_layer=bool(getattr(cfg, "scale_attn_by_inverse_layer_idx", False)),
        ln1=[_norm_params(b.ln1) for b in blocks],
        ln2=ln2,
        W_Q=W_Q,
        b_Q=_stack([_param(a, "b_Q") for a in attns], qb),
        W_K=W_K,
        b_K=_stack([_param(a, "_b_K", "b_K") for a in attns], kvb),
        W_V=W_V,
        b_V=_stack([_param(a, "_b_V", "b_V") for a in attns], kvb),
        W_O=W_O,
        b_O=_stack([_param(a, "b_O") for a in attns], ob),
        W_in=mlps["W_in"],
        b_in=mlps["b_in"],
        W_out=mlps["W_out"],
        b_out=mlps["b_out"],
        W_gate=mlps["W_gate"],
        parallel=parallel,
        ln1_post=[_norm_params(b.ln1_post) for b in blocks] if post else None,
        ln2_post=[_norm_params(b.ln2_post) for b in blocks] if post and not attn_only else None,
        ln_final=_norm_params(model.ln_final),
        W_U=model.W_U.detach(),
        b_U=_stack([_param(model, "b_U")], [model.W_U[0].detach()])[0],
        attn_soft_cap=max(0.0, float(getattr(cfg, "attn_scores_soft_cap", -1.0) or -1.0)),
        logit_soft_cap=max(0.0, float(getattr(cfg, "output_logits_soft_cap", -1.0) or -1.0)),
        windows=tuple(windows),
    )
