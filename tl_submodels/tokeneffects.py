"""Per-prediction effects on a plain corpus: how much ablating each component changes each next-token log-probability.

``decompose`` needs, for every counted prediction of a corpus (the logits at position ``p``
predicting the corpus token at ``p + 1``) and every head, neuron or MLP layer, the change in that
token's log-probability when the component is ablated (mean over the corpus, or zero). The model
reads every corpus token but the last of each sequence; sequences of different lengths are
right-padded, and padding is never counted nor attended to by a counted position (causal).

- ``method="ablation"``: exact. Each forward replicates a chunk of sequences once per unit of one
  site, each copy ablating a different unit.
- ``method="atp"``: the first-order estimate ``(value - a) . d log p / d a`` summed over the
  positions the prediction reads. One forward per chunk of sequences, then one backward per
  counted position (batched over the sequences): a prediction at ``p`` reads the component at
  every position up to ``p``, so each position's prediction needs its own gradient.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_submodels import model as tlmodel
from tl_submodels.ablation import Ablator
from tl_submodels.components import Component, Kind
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.sweep import Sweep, distributed, fingerprint_model

__all__ = ["Corpus", "EffectMethod", "Positions", "PreparedCorpus", "TokenEffects", "prepare_corpus", "token_effects"]

EffectMethod = Literal["atp", "ablation"]
Corpus = Sequence[str] | Int[Tensor, "batch pos"] | Sequence[Sequence[int]] | Sequence[Tensor]
# a bool mask [batch, pos] of the corpus' shape (checked by prepare_corpus, with a message), "last" or None
Positions = Tensor | Literal["last"] | None


@dataclass(frozen=True)
class PreparedCorpus:
    """A corpus as padded token ids, its sequence lengths and the predictions that count."""

    tokens: Int[Tensor, "batch pos"]  # right-padded with ``pad``
    lengths: Int[Tensor, " batch"]
    counted: Bool[Tensor, "batch read"]  # position p counts its prediction of token p + 1 (read = pos - 1)
    pad: int

    @property
    def index(self) -> Int[Tensor, "prediction 2"]:
        """(sequence, position) of each counted prediction, sequence-major."""
        return self.counted.nonzero()

    @property
    def inputs(self) -> Int[Tensor, "batch read"]:
        """What the model reads: every token but the last column."""
        return self.tokens[:, :-1]

    @property
    def targets(self) -> Int[Tensor, "batch read"]:
        return self.tokens[:, 1:]

    def subset(self, rows: Int[Tensor, " n"]) -> PreparedCorpus:
        """The sequences at ``rows`` (for a held-out split).

        Example:
            >>> prep.subset(torch.tensor([0, 2])).tokens.shape[0]  # doctest: +SKIP
            2
        """
        return PreparedCorpus(
            tokens=self.tokens[rows], lengths=self.lengths[rows], counted=self.counted[rows], pad=self.pad
        )

    def reference(self) -> list[Tensor]:
        """The real input tokens grouped by length (for mean ablation over the corpus' tokens)."""
        groups: dict[int, list[Tensor]] = {}
        for row, n in zip(self.tokens, self.lengths.tolist(), strict=True):
            if n > 1:
                groups.setdefault(n - 1, []).append(row[: n - 1])
        return [torch.stack(g) for _, g in sorted(groups.items())]


def prepare_corpus(model: Any, corpus: Corpus, positions: Positions = None) -> PreparedCorpus:
    """Token ids, lengths and counted predictions of ``corpus``; refuses what cannot be scored.

    Args:
        model: the model (tokenizer, vocabulary and context length).
        corpus: strings (tokenized with a BOS), an int tensor ``[batch, pos]``, or token-id lists of
            any lengths (padded here).
        positions: which predictions count: a bool ``[batch, pos]`` mask over the corpus tokens
            (position ``p`` predicts token ``p + 1``, so the last column and padding cannot count),
            ``"last"`` (each sequence's last prediction), or None (every prediction).

    Example:
        >>> prep = prepare_corpus(model, ["IND w1 s3 s4 s3"], "last")  # doctest: +SKIP
        >>> prep.index.tolist()  # doctest: +SKIP
        [[0, 4]]
    """
    info = tlmodel.model_info(model)
    if isinstance(corpus, str):
        raise TLSubmodelsError("corpus must be a list of strings or of token ids, not one string; wrap it: [text]")
    if isinstance(corpus, Tensor):
        if corpus.ndim != 2 or corpus.dtype.is_floating_point or corpus.dtype == torch.bool:
            raise TLSubmodelsError(
                f"a corpus tensor must be int token ids [batch, pos]; got {corpus.dtype} {list(corpus.shape)}"
            )
        rows = [r for r in corpus.long().cpu()]
    else:
        items = list(corpus)
        if items and all(isinstance(x, str) for x in items):
            rows = [torch.tensor(tlmodel.tokenize(model, str(x))) for x in items]
        elif all(isinstance(x, Tensor | list | tuple) for x in items):
            try:
                rows = [torch.as_tensor(x).long().reshape(-1) for x in items]
            except (TypeError, ValueError, RuntimeError) as e:
                raise TLSubmodelsError(f"corpus sequences must be lists of int token ids: {e}") from e
        else:
            raise TLSubmodelsError(
                "corpus must be a list of strings, an int tensor [batch, pos], or a list of token-id lists; "
                f"got a {type(corpus).__name__} of {sorted({type(x).__name__ for x in items})}"
            )
    if not rows:
        raise TLSubmodelsError("the corpus is empty: pass at least one sequence of two or more tokens")
    lengths = torch.tensor([len(r) for r in rows])
    for i, r in enumerate(rows):
        if len(r) < 2:
            raise TLSubmodelsError(f"corpus sequence {i} has {len(r)} token(s); each needs two or more (a prediction)")
        if len(r) - 1 > info.n_ctx:
            raise TLSubmodelsError(
                f"corpus sequence {i} has {len(r)} tokens: the model would read {len(r) - 1}, more than its "
                f"n_ctx={info.n_ctx}. Split long sequences into pieces of at most {info.n_ctx + 1} tokens."
            )
        if int(r.min()) < 0 or int(r.max()) >= info.d_vocab:
            raise TLSubmodelsError(
                f"corpus sequence {i} holds token id {int(r.max()) if r.max() >= info.d_vocab else int(r.min())} "
                f"outside 0-{info.d_vocab - 1} (d_vocab={info.d_vocab})"
            )
    pad = tlmodel.pad_token_id(model)
    tokens = torch.full((len(rows), int(lengths.max())), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        tokens[i, : len(r)] = r
    has_next = torch.arange(tokens.shape[1] - 1)[None] < (lengths[:, None] - 1)  # [batch, pos - 1]
    if positions is None:
        counted = has_next
    elif isinstance(positions, str):
        if positions != "last":
            raise TLSubmodelsError(f"positions must be None, 'last' or a bool [batch, pos] mask; got {positions!r}")
        counted = torch.zeros_like(has_next)
        counted[torch.arange(len(rows)), lengths - 2] = True
    else:
        mask = torch.as_tensor(positions).cpu()
        if mask.dtype != torch.bool or tuple(mask.shape) != tuple(tokens.shape):
            raise TLSubmodelsError(
                f"positions must be a bool mask of the corpus' shape {list(tokens.shape)} (True where the "
                f"prediction of the next token counts); got {mask.dtype} {list(mask.shape)}"
            )
        stray = mask[:, :-1] & ~has_next
        if bool(mask[:, -1].any()) or bool(stray.any()):
            raise TLSubmodelsError(
                "positions marks a position that has no next token (a sequence's last token, or padding): "
                "position p counts the prediction of token p + 1"
            )
        counted = mask[:, :-1]
    if not bool(counted.any()):
        raise TLSubmodelsError("positions counts no prediction: mark at least one position that has a next token")
    return PreparedCorpus(tokens=tokens, lengths=lengths, counted=counted, pad=pad)


@dataclass(frozen=True)
class TokenEffects:
    """Effects of ablating each component on each counted prediction's log-probability."""

    effects: Float[Tensor, "prediction component"]  # log p(full) - log p(ablated): > 0 where the part helps
    logodds: Float[Tensor, "prediction component"]  # the same in log-odds, log p / (1 - p) (does not saturate)
    logprob: Float[Tensor, " prediction"]  # the full model's log-probability of each next token
    correct: Bool[Tensor, " prediction"]  # the full model's top-1 prediction is the next token
    components: list[Component]
    method: EffectMethod  # "atp" (estimated) or "ablation" (exact)


def _logprobs(logits: Tensor, targets: Tensor) -> Tensor:
    return logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]


def _logodds(logits: Tensor, targets: Tensor) -> Tensor:
    """log p / (1 - p) of each target: its logit minus the logsumexp of the others. Unlike log p it does not
    saturate as p -> 1, so its gradient still sees a component that a confident prediction depends on."""
    target = logits.gather(-1, targets[..., None])[..., 0]
    others = logits.scatter(-1, targets[..., None], float("-inf")).logsumexp(-1)
    return target - others


def _chunks(n: int, size: int) -> list[Tensor]:
    return [torch.arange(lo, min(lo + size, n)) for lo in range(0, n, size)]


def _rows_per_forward(info: tlmodel.ModelInfo, seq: int, max_memory_mb: float, backward: bool) -> int:
    """Sequences one forward (and backward) may take within ``max_memory_mb``."""
    row = info.n_layers * info.layer_row_mb(seq) * (3 if backward else 1) + 8 * seq * info.d_vocab / 2**20
    fit = int(max_memory_mb // max(row, 1e-9))
    if fit < 1:
        raise TLSubmodelsError(
            f"max_memory_mb={max_memory_mb:g} is below what one sequence of {seq} tokens needs (~{row:.0f} MB): "
            "raise it or shorten the sequences"
        )
    return fit


def token_effects(
    model: Any,
    prep: PreparedCorpus,
    kinds: tuple[Kind, ...],
    *,
    method: EffectMethod,
    ablator: Ablator,
    max_memory_mb: float = 1024.0,
    checkpoint: str | Path | None = None,
    progress: bool = False,
) -> TokenEffects:
    """The ``[prediction, component]`` effects of ``prep``'s counted predictions, by ``method``.

    The work is a list of items (chunks of sequences; for ``"ablation"`` also a site and a range of
    its units) run through :class:`~tl_submodels.sweep.Sweep`: resumable from ``checkpoint`` and
    shared over ``torch.distributed`` ranks, with the same numbers however it was spread.

    Example:
        >>> fx = token_effects(model, prep, ("heads",), method="ablation", ablator=ablator)  # doctest: +SKIP
        >>> fx.effects.shape  # doctest: +SKIP
        torch.Size([64, 8])
    """
    if method not in ("atp", "ablation"):
        raise TLSubmodelsError(f"unknown method {method!r}: choose 'atp' (gradients) or 'ablation' (exact)")
    info = ablator.info
    device = tlmodel.first_param_device(model)
    inputs, targets, counted = prep.inputs.to(device), prep.targets.to(device), prep.counted.to(device)
    sites = [(kind, layer) for kind in kinds for layer in range(info.n_layers)]  # the columns' order
    names = [tlmodel.site_hook(kind, layer) for kind, layer in sites]
    values = ablator.values(names)
    components = [c for kind in kinds for c in info.components((kind,))]
    batch, seq = inputs.shape
    rows = _rows_per_forward(info, seq, max_memory_mb, backward=method == "atp")
    world = distributed()[1]
    chunks = _chunks(batch, max(1, min(rows, -(-batch // world))))
    items: list[tuple[int, int, int]] = []  # (chunk, site, first unit); site -1: the unablated run
    copies: dict[int, int] = {}
    for ci, idx in enumerate(chunks):
        items.append((ci, -1, 0))
        if method == "atp":
            continue
        for si, (kind, _) in enumerate(sites):
            units = info.n_units(kind)
            copies[si] = max(1, min(units, rows // len(idx)))
            items += [(ci, si, lo) for lo in range(0, units, copies[si])]
    key = {
        "fn": "token_effects",
        "method": method,
        "model": fingerprint_model(model),
        "corpus": _fingerprint(prep),
        "kinds": list(kinds),
        "ablation": ablator.ablation,
        "rows": rows,
    }
    sweep = Sweep(len(items), key=key, checkpoint=checkpoint, desc=f"{method} effects", progress=progress)
    full: dict[int, tuple[Tensor, Tensor]] = {}  # chunk -> the unablated log-probs and log-odds [b, seq]
    fast = _FastCopies.of(model, seq) if method == "ablation" else None  # None: hooked forwards
    try:
        for i in sweep.todo():
            ci, si, lo = items[i]
            idx = chunks[ci]
            mask = prep.counted[idx]
            if method == "atp":
                lp, ok, fx = _atp_chunk(model, inputs[idx], targets[idx], counted[idx], names, values)
                odds = torch.cat([fx[n][mask] for n in names], 1)
                result = {
                    "logprob": lp[mask],
                    "correct": ok[mask],
                    "logodds": odds,
                    "effects": _logp_effect(lp[mask], odds),
                }
            elif si < 0:
                with torch.no_grad():
                    logits = model(inputs[idx])
                result = {
                    "logprob": _logprobs(logits, targets[idx]).cpu()[mask],
                    "correct": (logits.argmax(-1) == targets[idx]).cpu()[mask],
                }
            else:
                if ci not in full:
                    if fast is not None:
                        logits = fast.cache(inputs[idx], names)
                        fast = fast if fast.agrees(logits) else None
                    else:
                        with torch.no_grad():
                            logits = model(inputs[idx])
                    full = {ci: (_logprobs(logits, targets[idx]).cpu(), _logodds(logits, targets[idx]).cpu())}
                kind, layer = sites[si]
                us = torch.arange(lo, min(lo + copies[si], info.n_units(kind)))
                if fast is not None:
                    lp, odds = fast.copies(targets[idx], kind, layer, names[si], us, values[names[si]])
                else:
                    lp, odds = _ablated_copies(model, inputs[idx], targets[idx], names[si], kind, us, values[names[si]])
                result = {  # [counted, units]
                    "effects": (full[ci][0][None] - lp).permute(1, 2, 0)[mask],
                    "logodds": (full[ci][1][None] - odds).permute(1, 2, 0)[mask],
                }
            sweep.done(i, result)
        done = sweep.gather()
    finally:
        sweep.close()
    parts: dict[str, list[list[Tensor]]] = {"effects": [[] for _ in chunks], "logodds": [[] for _ in chunks]}
    logprob, correct = [], []
    for i, (ci, si, _) in enumerate(items):
        if si < 0:
            logprob.append(done[i]["logprob"])
            correct.append(done[i]["correct"])
        for f in ("effects", "logodds"):
            if f in done[i]:
                parts[f][ci].append(done[i][f])
    effects, logodds = (torch.cat([torch.cat(p, 1) for p in parts[f]]) for f in ("effects", "logodds"))
    return TokenEffects(
        effects=effects,
        logodds=logodds,
        logprob=torch.cat(logprob),
        correct=torch.cat(correct),
        components=components,
        method=method,
    )


def _logp_effect(logprob: Tensor, logodds_effect: Tensor) -> Tensor:
    """The change in log p implied by a change in log-odds: log p = logsigmoid(log-odds)."""
    lo = (logprob - torch.log1p(-logprob.exp().clamp(max=1 - 1e-7)))[:, None]
    return F.logsigmoid(lo) - F.logsigmoid(lo - logodds_effect)


def _fingerprint(prep: PreparedCorpus) -> str:
    h = hashlib.sha256()
    for t in (prep.tokens, prep.counted):
        h.update(repr(tuple(t.shape)).encode())
        h.update(t.contiguous().view(-1).to(torch.int64).numpy().tobytes())
    return h.hexdigest()


class _CopyHook:
    """Ablates unit ``units[r]`` of a site in copy ``r`` of a batch replicated ``len(units)`` times."""

    def __init__(self, kind: Kind, units: Tensor, value: Tensor) -> None:
        self.kind, self.units, self.value = kind, units, value

    def __call__(self, act: Tensor, hook: Any = None) -> Tensor:
        r = len(self.units)
        out = act.clone().view(r, act.shape[0] // r, *act.shape[1:])
        value = self.value.to(act.device, act.dtype)
        copy = torch.arange(r, device=act.device)
        units = self.units.to(act.device)
        if self.kind == "heads":  # [r, b, pos, head, d_head]
            out[copy, :, :, units] = value.expand(act.shape[-2:])[units][:, None, None]
        elif self.kind == "neurons":  # [r, b, pos, d_mlp]
            out[copy, :, :, units] = value.expand(act.shape[-1:])[units][:, None, None]
        else:  # whole MLP output, [r, b, pos, d_model]
            out[:] = value
        return out.view_as(act)


class _FastCopies:
    """The ablated copies of :func:`_ablated_copies` over the weights (:mod:`tl_submodels.fastpath`): each copy
    starts right after its ablated site from the cached unablated run, the site's change a known change of the
    residual stream (a head's ``(value - z) @ W_O[h]``, a neuron's ``(value - post) * W_out[n]``, an MLP's
    ``value - out``). Used where the adapter gives weights, without norms on the outputs; the unablated logits
    of each chunk are checked against the model's own (on a difference: hooks, with a warning)."""

    def __init__(self, model: Any, weights: Any) -> None:
        self.model, self.w = model, weights
        info = tlmodel.model_info(model)
        self.n_layers, self.mlps = info.n_layers, info.has_mlps
        self.parallel = bool(weights.parallel)
        self.base: dict[str, Tensor] = {}
        self.runner: Any = None

    @staticmethod
    def of(model: Any, seq: int) -> _FastCopies | None:
        ad = tlmodel.adapter(model)
        if not ad.causal or ad.has_hooks():
            return None
        weights = ad.standard_weights(seq)
        return None if weights is None or weights.ln1_post is not None else _FastCopies(model, weights)

    def _after(self, kind: Kind, layer: int) -> tuple[str, str]:
        """(the residual stream the site's change joins, the runner's stage there)."""
        if kind == "heads" and self.mlps and not self.parallel:
            return tlmodel.hook_resid_mid(layer), "attn"
        return tlmodel.hook_resid_post(layer), "mlp"

    def cache(self, inputs: Int[Tensor, "batch pos"], sites: list[str]) -> Float[Tensor, "batch pos d_vocab"]:
        """Run the chunk once unablated, keeping the sites and the residual streams; its logits."""
        from tl_submodels.fastpath import PrefixRunner

        kinds: tuple[Kind, ...] = ("heads", "mlps") if self.mlps else ("heads",)
        names = set(sites) | {self._after(k, layer)[0] for k in kinds for layer in range(self.n_layers)}
        names.add(tlmodel.hook_resid_pre(0))
        logits, self.base = tlmodel.run_cache(self.model, inputs, names)
        batch, seq = inputs.shape
        every = torch.arange(seq, device=inputs.device).expand(batch, seq)
        self.runner = PrefixRunner(self.w, [None] * self.n_layers, [None] * self.n_layers, 0, every, prune_last=False)
        return logits

    def agrees(self, logits: Tensor) -> bool:
        """The weight-level forward of the unablated chunk gives the model's logits (else: warn, use hooks)."""
        import warnings

        with torch.no_grad():
            ours = self.runner.run(self.base[tlmodel.hook_resid_pre(0)], 0, "pre")
        err = float((ours - logits).abs().max())
        if err <= 1e-4 * max(1.0, float(logits.abs().max())):
            return True
        warnings.warn(
            f"tl_submodels: the weight-level forward differs from the model's logits by {err:.2e}; decompose runs "
            "its ablations through hooks instead (slower, exact).",
            stacklevel=3,
        )
        return False

    def copies(
        self, targets: Tensor, kind: Kind, layer: int, site: str, units: Tensor, value: Tensor
    ) -> tuple[Float[Tensor, "copy batch pos"], Float[Tensor, "copy batch pos"]]:
        """Log-probs and log-odds of the targets, copy ``r`` with unit ``units[r]`` ablated."""
        act = self.base[site]
        value = value.to(act.device, act.dtype)
        units = units.to(act.device)
        w = self.w
        if kind == "heads":  # act [b, pos, head, d_head]
            dz = value.expand(act.shape[-2:])[units] - act[:, :, units]  # [b, pos, r, d_head]
            delta = torch.einsum("bsre,red->rbsd", dz, w.W_O[layer][units].to(act.device))
        elif kind == "neurons":  # act [b, pos, d_mlp]
            dpost = value.expand(act.shape[-1:])[units] - act[..., units]  # [b, pos, r]
            delta = torch.einsum("bsr,rd->rbsd", dpost, w.W_out[layer][units].to(act.device))
        else:  # the whole MLP output
            delta = (value - act)[None]
        after, stage = self._after(kind, layer)
        r = len(units)
        resid = self.base[after].repeat(r, 1, 1) + delta.flatten(0, 1)
        with torch.no_grad():
            logits = self.runner.run(resid, layer, stage)
        tiled = targets.repeat(r, 1)
        shape = (r, *targets.shape)
        return _logprobs(logits, tiled).view(shape).cpu(), _logodds(logits, tiled).view(shape).cpu()


def _ablated_copies(
    model: Any, inputs: Tensor, targets: Tensor, name: str, kind: Kind, units: Tensor, value: Tensor
) -> tuple[Float[Tensor, "copy batch pos"], Float[Tensor, "copy batch pos"]]:
    """Log-probs and log-odds of the targets, copy ``r`` with unit ``units[r]`` ablated."""
    r = len(units)
    with torch.no_grad():
        logits = model.run_with_hooks(inputs.repeat(r, 1), fwd_hooks=[(name, _CopyHook(kind, units, value))])
    tiled = targets.repeat(r, 1)
    return (
        _logprobs(logits, tiled).view(r, *inputs.shape).cpu(),
        _logodds(logits, tiled).view(r, *inputs.shape).cpu(),
    )


def _atp_chunk(
    model: Any, inputs: Tensor, targets: Tensor, counted: Tensor, names: list[str], values: dict[str, Tensor]
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Full-model log-probs and correctness, and each site's AtP effect on each prediction's log-odds ``[b, pos, units]``.

    Log-odds rather than log p: log p saturates as a prediction grows confident, so its gradient
    misses what a confident prediction depends on (measured on multitask-3l's answers: the AtP estimates
    of the log p effects had 1/30 to 1/1000 of their size (median per task), and grouping the prompts by
    them at k=4 gave ARI 0.48; by the log-odds estimates 0.82).
    """
    leaves: dict[str, Tensor] = {}
    acts: dict[str, Tensor] = {}

    class _Leaf:
        def __init__(self, name: str) -> None:
            self.name = name

        def __call__(self, act: Tensor, hook: Any = None) -> Tensor:
            acts[self.name] = act.detach()
            leaves[self.name] = torch.zeros_like(act, requires_grad=True)
            return act + leaves[self.name]

    hooks = [(n, _Leaf(n)) for n in names]
    b, seq = inputs.shape
    out = {n: torch.zeros(b, seq, 0) for n in names}
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(inputs)
        lp = _logprobs(logits, targets)
        odds = _logodds(logits, targets)
        missing = [n for n in names if n not in leaves]
        if missing:
            raise TLSubmodelsError(f"hook points {missing} did not run in the forward pass; cannot attribute there")
        deltas = {n: values[n].to(acts[n].device, acts[n].dtype) - acts[n] for n in names}
        chunks: dict[str, list[Tensor]] = {n: [] for n in names}
        positions = [p for p in range(seq) if bool(counted[:, p].any())]
        for i, p in enumerate(positions):
            grads = torch.autograd.grad(
                (odds[:, p] * counted[:, p]).sum(), [leaves[n] for n in names], retain_graph=i < len(positions) - 1
            )
            for n, g in zip(names, grads, strict=True):
                prod = deltas[n] * g  # [b, pos, ...]
                # sum over the positions read (all up to p; later ones have zero gradient) and d_head / d_model
                red = prod.sum(1)
                red = red.sum(-1) if red.ndim == 3 else red  # heads: [b, head]; neurons: [b, d_mlp]
                if red.ndim == 1:
                    red = red[:, None]  # mlps: [b, 1]
                chunks[n].append(red.detach())
        for n in names:
            if positions:
                stacked = torch.stack(chunks[n], 1)  # [b, n_positions, units]
                full = torch.zeros(b, seq, stacked.shape[-1])
                full[:, positions] = stacked.cpu()
                out[n] = -full  # log-odds(full) - log-odds(ablated) ~ -(delta . gradient)
    return lp.detach().cpu(), (logits.argmax(-1) == targets).cpu(), out
