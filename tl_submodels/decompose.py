"""Sub-models of a corpus without a task: which parts a network holds, found from what it predicts.

``decompose`` needs no clean/corrupt prompts. The behaviour is the model's own next-token
prediction on a corpus: for each counted prediction and each head or neuron, the effect of
ablating the component on the log-odds of the corpus' next token (:mod:`tl_submodels.tokeneffects`).

1. **Rows.** Effects are measured in log-odds, ``log p / (1 - p)``: log p saturates on confident
   predictions (the ones a model was trained for), so a component that a prediction cannot do
   without moves its log p little once p is near 1. Rows whose effects are tiny (below a tenth of
   the 99th percentile of the rows' norms: unpredictable tokens that nothing in the model helps
   with) are left out of the factorisation, and every other row is scaled to unit norm: the
   behaviours' total effects differ 20x on multitask-3l, and unscaled rows let the largest take
   every factor. Each row says which components a prediction leans on, not how much.
2. **Factors.** NMF of the rows' magnitudes, as in :func:`tl_submodels.factorize`.
3. **k**, unless given: the largest k before two factors start to be used by the same predictions.
   Past the true number of behaviours NMF splits one behaviour's predictions over two factors
   that the same rows load on; the cosine between two factors' usage columns then jumps (on
   multitask-3l at every setting tried: from <= 0.41 at k=4 to >= 0.52 at k=5). k is the last k
   before that cosine first passes ``CO_USAGE``. The held-out error of ``choose_k`` keeps falling
   on such rows (it chose k=1 there), and the factors' stability over resamples was as high at
   k=8 as at k=4.
4. **Parts.** Each factor's predictions are the rows that use it most. Its *core* is the member set
   whose ablation best separates those predictions from every other factor's (chosen by validation,
   as in ``factorize``, then pruned to the smallest set within ``CORE_SLACK`` of the best); its
   *extent* grows the core, most exclusive components first, until keeping only it (everything
   else ablated) restores ``EXTENT_TARGET`` of the behaviour on its predictions, admitting only
   components that keep its ablation specific (no other part's predictions lose more than
   ``SPECIFIC`` top-1 accuracy, or the core's loss plus ``SPECIFIC_SLACK``): without that gate an
   extent takes in what other behaviours need (on multitask-3l the induction extent, ablated,
   cost majority 78 points). ``parts`` are the extents, ``cores`` the cores.
5. **Labels.** Each part's top contexts, the current and next tokens over-represented in its
   predictions against the whole corpus, and where in the sequences they are.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import torch
from torch import Tensor
from tqdm import tqdm

from tl_submodels import model as tlmodel
from tl_submodels import stats
from tl_submodels.ablation import FAST_TOLERANCE, Ablation, Ablator, layer_ablations
from tl_submodels.components import Component, Kind, forward_order
from tl_submodels.decomposition import Decomposition, PartEvaluation, model_shape
from tl_submodels.discovery import EXTENT_TARGET, SPECIFIC, SPECIFIC_SLACK, grow_specific, parts_stability
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.factorize import refine_by_validation
from tl_submodels.nmf import nmf
from tl_submodels.submodel import SubModel
from tl_submodels.tokeneffects import (
    Corpus,
    EffectMethod,
    Positions,
    PreparedCorpus,
    TokenEffects,
    prepare_corpus,
    token_effects,
)

__all__ = ["CORE_SLACK", "CO_USAGE", "EVAL_PREDICTIONS", "MIN_GAP", "ROW_FLOOR", "decompose"]

ROW_FLOOR = 0.1  # rows below this fraction of the 99th percentile of the rows' norms are not factorised
CO_USAGE = 0.5  # k stops before two factors' usage columns have a larger cosine
EVAL_PREDICTIONS = 64  # predictions per part used to choose cores and extents
MIN_GAP = 0.1  # nats: a part whose predictions the all-ablated model predicts as well has no faithfulness
CORE_SLACK = 0.05  # a core is the smallest candidate scoring within this of the best (own minus elsewhere necessity)


def decompose(
    model: Any,
    corpus: Corpus,
    *,
    positions: Positions = None,
    k: int | None = None,
    kinds: tuple[Kind, ...] | None = None,
    method: EffectMethod = "atp",
    ablation: Ablation = "mean",
    k_max: int = 12,
    max_memory_mb: float = 1024.0,
    checkpoint: str | Path | None = None,
    progress: bool = False,
    holdout: float | None = None,
    stability: int = 0,
    n_boot: int | None = stats.DEFAULT_N_BOOT,
    seed: int = 0,
) -> Decomposition:
    """Parts of what ``model`` does on ``corpus``, found without any task, each validated by ablation.

    Args:
        model: a TransformerLens model in eval mode.
        corpus: strings (through the model's tokenizer, BOS prepended), an int tensor ``[batch, pos]``,
            or token-id lists of different lengths (padded and masked inside).
        positions: the predictions that count: a bool ``[batch, pos]`` mask (position ``p`` predicts
            token ``p + 1``), ``"last"`` (each sequence's last prediction), or None (all).
        k: the number of parts; None chooses it (see the module docs).
        kinds: component kinds (default: heads, and neurons where the model has MLPs: a whole
            MLP layer serves many behaviours, so it would sit in every part and blur the factors).
        method: ``"atp"`` (gradients: one forward per chunk, a backward per counted position) or
            ``"ablation"`` (exact: a forward per unit; small models, verification).
        ablation: ``"mean"`` (over the corpus' tokens) or ``"zero"``.
        k_max: the largest k tried when choosing it.
        max_memory_mb: memory budget of the effects' forwards and backwards.
        checkpoint: a file for the effects sweep's partial results (resumed on a rerun).
        progress: show progress bars.
        holdout: the fraction of the sequences (drawn with ``seed``) kept out of finding the parts; each
            part is then evaluated on them (``Decomposition.holdout_evaluations``).
        stability: rerun the decomposition (same k) on this many bootstrap resamples of the sequences
            (``Decomposition.stability``: each part matched to its most overlapping rerun part).
        n_boot: bootstrap resamples of the sequences for the evaluations' intervals (``faithfulness_ci``,
            ...; BCa, from the validation runs' own per-prediction values); None for none.
        seed: seeds the holdout split and the resamples.

    Returns:
        A :class:`Decomposition`.

    Raises:
        TLSubmodelsError: an empty corpus, words outside the vocabulary, sequences longer than the
            context, a bad ``positions`` mask, ``k`` out of range, an unknown method or ablation.

    Example:
        >>> model = tls.zoo.load("multitask-3l")
        >>> dec = tls.decompose(model, tls.zoo.corpus("multitask-3l", n=32), positions="last", k=2)
        >>> len(dec.parts)
        2
    """
    info = tlmodel.check_model(model, ())
    if ablation not in ("mean", "zero"):
        raise TLSubmodelsError(f"decompose ablates with 'mean' (over the corpus) or 'zero', got {ablation!r}")
    if method not in ("atp", "ablation"):
        raise TLSubmodelsError(f"unknown method {method!r}: choose 'atp' (gradients) or 'ablation' (exact)")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise TLSubmodelsError(f"k={k!r}: choose 1 <= k <= the number of components, or k=None to choose it")
    kinds = kinds or (("heads", "neurons") if info.has_mlps else ("heads",))
    tlmodel.check_model(model, kinds)
    if n_boot is not None:
        stats.check_n_boot(n_boot)
    if isinstance(stability, bool) or not isinstance(stability, int) or stability < 0:
        raise TLSubmodelsError(f"stability is a number of bootstrap reruns (0 for none); got {stability!r}")
    prep = prepare_corpus(model, corpus, positions)
    prep, held = _split_sequences(prep, holdout, seed)
    ablator = Ablator(model, ablation=ablation, reference=prep.reference() if ablation == "mean" else None)
    fx = token_effects(
        model,
        prep,
        kinds,
        method=method,
        ablator=ablator,
        max_memory_mb=max_memory_mb,
        checkpoint=checkpoint,
        progress=progress,
    )
    boot = _Boot(n_boot, seed)
    dec = _from_effects(model, prep, ablator, fx, k=k, k_max=k_max, progress=progress, boot=boot)
    if held is not None:
        checks = _held_out(model, dec, held, kinds, method, ablator, boot, max_memory_mb)
        dec = dataclasses.replace(dec, holdout_evaluations=checks)
    if stability:
        gen = torch.Generator().manual_seed(seed + 1)
        reruns = []
        for _ in tqdm(range(stability), desc="stability reruns", disable=not progress):
            resample = prep.subset(torch.randint(0, prep.tokens.shape[0], (prep.tokens.shape[0],), generator=gen))
            again = Ablator(model, ablation=ablation, reference=resample.reference() if ablation == "mean" else None)
            fx_again = token_effects(model, resample, kinds, method=method, ablator=again, max_memory_mb=max_memory_mb)
            found = _from_effects(model, resample, again, fx_again, k=len(dec.parts), k_max=k_max, progress=False)
            reruns.append(found.parts)
        dec = dataclasses.replace(dec, stability=parts_stability(dec.parts, reruns, seed))
    return dec


def _held_out(
    model: Any,
    dec: Decomposition,
    held: PreparedCorpus,
    kinds: tuple[Kind, ...],
    method: EffectMethod,
    ablator: Ablator,
    boot: _Boot,
    max_memory_mb: float,
) -> list[PartEvaluation]:
    """Each part of ``dec`` evaluated on the held-out sequences, whose predictions are assigned to parts by the
    loadings ``dec`` found."""
    fx_held = token_effects(model, held, kinds, method=method, ablator=ablator, max_memory_mb=max_memory_mb)
    usage = _usage_given_loadings(fx_held.logodds.double().abs(), dec.loadings.double())
    own = usage.argmax(1)
    groups = [((own == j) & (usage.sum(1) > 0)).nonzero()[:, 0] for j in range(len(dec.parts))]
    probe = _Probe(model, held, ablator, groups)
    checks = []
    for j, (part, core) in enumerate(zip(dec.parts, dec.cores, strict=True)):
        extent = list(part)
        faith = probe.faithfulness(frozenset(extent), j) if len(probe.where[j][0]) else float("nan")
        checks.append(
            _evaluate(model, held, ablator, fx_held, groups[j], part.name, extent, list(core), faith, probe, j, boot)
        )
    return checks


def _split_sequences(
    prep: PreparedCorpus, holdout: float | None, seed: int
) -> tuple[PreparedCorpus, PreparedCorpus | None]:
    """The sequences a search may use, and the ``holdout`` fraction it may not (drawn with ``seed``)."""
    if holdout is None:
        return prep, None
    if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0 < holdout < 1:
        raise TLSubmodelsError(
            f"holdout is the fraction of sequences kept out of the search, in (0, 1); got {holdout!r}"
        )
    n = prep.tokens.shape[0]
    n_held = round(n * holdout)
    if n_held < 2 or n - n_held < 2:
        raise TLSubmodelsError(
            f"holdout={holdout} of {n} sequences leaves {n - n_held} to search on and {n_held} to check on; each "
            "side needs at least 2: add sequences or change the holdout"
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return prep.subset(order[n_held:].sort().values), prep.subset(order[:n_held].sort().values)


def _usage_given_loadings(mag: Tensor, h: Tensor, iters: int = 200) -> Tensor:
    """``[prediction, part]`` usage of new rows under fixed loadings ``h``: each non-zero row scaled to unit
    norm, its non-negative weights fitted (multiplicative updates for W alone), times the row's norm."""
    norm = mag.norm(dim=1)
    data = mag / norm.clamp_min(1e-30)[:, None]
    w = (data @ h.T).clamp_min(1e-12)
    hh = h @ h.T
    for _ in range(iters):
        w = w * (data @ h.T) / (w @ hh).clamp_min(1e-30)
    return w * norm[:, None]


class _Boot(NamedTuple):
    """The bootstrap settings of the evaluations' intervals (``n_boot`` None: none)."""

    n_boot: int | None
    seed: int

    def interval(self, values: Tensor, cluster: Tensor, statistic: Any) -> tuple[float, float] | None:
        """The BCa interval of ``statistic`` of the columns of ``values`` ``[prediction, k]``, resampling the
        clusters (sequences) of ``cluster``; None without n_boot or with fewer than 2 clusters."""
        if self.n_boot is None or len(values) == 0 or len(torch.unique(cluster)) < 2:
            return None
        sums = stats.cluster_sums(values.double(), cluster)
        low, high = stats.bca(sums, statistic, n_boot=self.n_boot, seed=self.seed)
        return float(low), float(high)


def _ratio(total: Tensor, count: Tensor) -> Tensor:
    return total / count


def _from_effects(
    model: Any,
    prep: PreparedCorpus,
    ablator: Ablator,
    fx: TokenEffects,
    *,
    k: int | None,
    k_max: int,
    progress: bool,
    boot: _Boot | None = None,
) -> Decomposition:
    """Rows, factors, parts, labels: everything after the token effects (see the module docs)."""
    mag = fx.logodds.double().abs()
    norm = mag.norm(dim=1)
    kept = norm >= ROW_FLOOR * float(norm.quantile(0.99)) if len(norm) > 1 else norm > 0
    kept &= norm > 0
    n_rows, n_comp = int(kept.sum()), mag.shape[1]
    if n_rows == 0:
        raise TLSubmodelsError("no counted prediction depends on any component: nothing to decompose")
    data = mag[kept] / norm[kept, None]
    limit = min(n_rows, n_comp)
    k_errors: dict[int, float] = {}
    if k is None:
        k, k_errors = _choose_k(data, min(k_max, limit))
    elif isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limit:
        raise TLSubmodelsError(
            f"k={k!r} parts from {n_rows} predictions with effects and {n_comp} components: choose 1 <= k <= {limit}, "
            "or k=None to choose it"
        )
    w, h = nmf(data, k)
    scale = h.sum(1).clamp_min(1e-30)  # loadings sum to 1, so a part's usage is the effect mass it explains
    w, h = w * scale, h / scale[:, None]
    usage = torch.zeros(len(mag), k, dtype=mag.dtype)
    usage[kept] = w * norm[kept, None]  # each prediction's share of each part, times the size of its effects
    own = usage.argmax(1)
    groups = [((own == j) & kept).nonzero()[:, 0] for j in range(k)]
    probe = _Probe(model, prep, ablator, groups)
    cores, parts, evaluations = [], [], []
    for j in tqdm(range(k), desc="validating parts", disable=not progress):
        core, extent, faith = _core_and_extent(probe, j, h, fx.components)
        name = f"part-{j}"
        parts.append(
            SubModel(components=extent, name=name, description=f"decompose: factor {j} of {k} ({fx.method} effects)")
        )
        cores.append(SubModel(components=core, name=f"{name}-core", description=f"necessary core of {name}"))
        evaluations.append(
            _evaluate(model, prep, ablator, fx, groups[j], name, extent, core, faith, probe, j, boot or _Boot(None, 0))
        )
    words = _words(model, prep.tokens)
    labels = [_label(prep, words, groups[j], usage[:, j]) for j in range(k)]
    return Decomposition(
        parts=parts,
        cores=cores,
        labels=labels,
        usage=usage.float(),
        usage_index=prep.index,
        loadings=h.float(),
        components=fx.components,
        evaluations=evaluations,
        k_errors=k_errors,
        tokens=prep.tokens,
        words=words,
        method=fx.method,
        ablation=str(ablator.ablation),
        model_shape=model_shape(model),
    )


def _choose_k(data: Tensor, k_max: int) -> tuple[int, dict[int, float]]:
    """The last k before two factors' usage columns first have a cosine above ``CO_USAGE`` (see the module docs)."""
    co: dict[int, float] = {1: 0.0}
    chosen = k_max
    for cand in range(2, k_max + 1):
        w, _ = nmf(data, cand, iters=300)
        wn = w / w.norm(dim=0, keepdim=True).clamp_min(1e-30)
        cos = wn.T @ wn
        cos.fill_diagonal_(0.0)
        co[cand] = float(cos.max())
        if co[cand] > CO_USAGE:
            chosen = cand - 1
            break
    return chosen, co


class _Probe:
    """Metrics of the parts' predictions (a sample of each part's) under ablation hooks, one forward each."""

    def __init__(self, model: Any, prep: PreparedCorpus, ablator: Ablator, groups: list[Tensor]) -> None:
        index = prep.index
        picked = []
        for g in groups:  # an even sample of each part's predictions
            step = max(1, len(g) // EVAL_PREDICTIONS)
            picked.append(g[::step][:EVAL_PREDICTIONS])
        seqs = sorted({int(index[i, 0]) for p in picked for i in p})
        self.model, self.ablator = model, ablator
        device = tlmodel.first_param_device(model)
        row = {s: r for r, s in enumerate(seqs)}
        self.rows = torch.tensor(seqs, dtype=torch.long)  # the corpus sequence of each probe row
        self.inputs = prep.inputs[seqs].to(device)
        self.targets = prep.targets[seqs].to(device)
        self.where = [(torch.tensor([row[int(index[i, 0])] for i in p], dtype=torch.long), index[p, 1]) for p in picked]
        self.memo: dict[tuple[frozenset[Component], bool], tuple[Tensor, Tensor, list[Tensor]]] = {}
        self.fast = _ProbeRunner.of(model, ablator, self.inputs)  # None: hooked forwards
        self.full = self.metrics(frozenset(), keep_only=False)
        self.nothing = self.metrics(frozenset(), keep_only=True)

    def _run(self, comps: frozenset[Component], keep_only: bool) -> tuple[Tensor, Tensor, list[Tensor]]:
        key = (comps, keep_only)
        if key not in self.memo:
            ordered: list[Component] = sorted(comps, key=forward_order)
            targets = self.ablator.targets(ordered, keep_only=keep_only) if (comps or keep_only) else []
            logits = self.fast.logits(targets) if self.fast is not None else None
            if logits is None:
                logits = tlmodel.run_logits(self.model, self.inputs, self.ablator.hooks(targets))
                if self.fast is not None and not self.fast.agrees(logits):
                    self.fast = None
            lp = logits.log_softmax(-1).gather(-1, self.targets[..., None])[..., 0].cpu()
            ok = (logits.argmax(-1) == self.targets).cpu().double()
            lp_mean, ok_mean = (
                torch.tensor(
                    [float(v[r, p].mean()) if len(r) else float("nan") for r, p in self.where], dtype=torch.float64
                )
                for v in (lp, ok)
            )
            self.memo[key] = (lp_mean, ok_mean, [lp[r, p].double() for r, p in self.where])
        return self.memo[key]

    def metrics(self, comps: frozenset[Component], *, keep_only: bool) -> Tensor:
        """Mean log p of each part's sampled predictions with ``comps`` ablated (or kept, the rest ablated)."""
        return self._run(comps, keep_only)[0]

    def accuracy_drop(self, comps: frozenset[Component]) -> Tensor:
        """Top-1 accuracy each part's sampled predictions lose with ``comps`` ablated."""
        return self._run(frozenset(), False)[1] - self._run(comps, False)[1]

    def necessity(self, comps: frozenset[Component]) -> Tensor:
        """Fraction of each part's behaviour lost with ``comps`` ablated, in [0, 1].

        The behaviour is the mean log p over the mean-ablated model's, with at least one nat of room:
        where ablating everything leaves a prediction nearly as likely (a two-way choice the mean
        model still gets half right), a smaller gap would blow small losses up. Losses past the gap
        count as the whole of it."""
        gap = (self.full - self.nothing).clamp_min(1.0)
        return ((self.full - self.metrics(comps, keep_only=False)) / gap).clamp(0.0, 1.0)

    def faithfulness(self, comps: frozenset[Component], j: int) -> float:
        """Fraction of part ``j``'s behaviour restored with only ``comps`` kept; NaN where the full model's
        predictions are less than ``MIN_GAP`` nats more likely than the all-ablated model's (nothing to restore)."""
        gap = float(self.full[j] - self.nothing[j])
        if not gap >= MIN_GAP:
            return float("nan")
        return float(self.metrics(comps, keep_only=True)[j] - self.nothing[j]) / gap

    def faithfulness_columns(self, comps: frozenset[Component], j: int) -> tuple[Tensor, Tensor]:
        """Part ``j``'s sampled predictions' log p with only ``comps`` kept, with everything ablated and with
        nothing ablated ``[prediction, 3]``, and each prediction's sequence (for :meth:`faithfulness`'s interval)."""
        columns = [self._run(c, keep)[2][j] for c, keep in ((comps, True), (frozenset(), True), (frozenset(), False))]
        return torch.stack(columns, 1), self.rows[self.where[j][0]]


class _ProbeRunner:
    """The probe's ablated forwards over the weights (:mod:`tl_submodels.fastpath`), zero or all-position mean
    ablation: each starts at the first ablated layer from the cached unablated run. The first ablated run is
    also run through hooks and compared (on a difference: hooks for good, with a warning)."""

    def __init__(self, model: Any, ablator: Ablator, runner: Any, resid: dict[int, Tensor]) -> None:
        self.model, self.ablator, self.runner, self.resid = model, ablator, runner, resid
        self.device = tlmodel.first_param_device(model)
        self.checked = False
        self.last: Tensor | None = None

    @staticmethod
    def of(model: Any, ablator: Ablator, inputs: Tensor) -> _ProbeRunner | None:
        from tl_submodels.fastpath import PrefixRunner

        ad = tlmodel.adapter(model)
        if ablator.ablation not in ("zero", "mean") or ablator.per_position or not ad.causal or ad.has_hooks():
            return None
        weights = ad.standard_weights(inputs.shape[1])
        if weights is None:
            return None
        n_layers = tlmodel.model_info(model).n_layers
        names = [tlmodel.hook_resid_pre(layer) for layer in range(n_layers)]
        logits, cache = tlmodel.run_cache(model, inputs, names)
        every = torch.arange(inputs.shape[1], device=inputs.device).expand(*inputs.shape)
        runner = PrefixRunner(weights, [None] * n_layers, [None] * n_layers, 0, every, prune_last=False)
        probe = _ProbeRunner(model, ablator, runner, {layer: cache[n] for layer, n in enumerate(names)})
        with torch.no_grad():
            ours = runner.run(probe.resid[0], 0, "pre")
        return probe if _agree(ours, logits) else None

    def logits(self, targets: list[Component]) -> Tensor | None:
        """Every position's logits with ``targets`` ablated; None for the first ablated set (run it through hooks
        and pass the result to :meth:`agrees`)."""
        if not targets:
            return None
        first = min(c.layer for c in targets)
        with torch.no_grad():
            out = self.runner.run(self.resid[first], first, "pre", layer_ablations(self.ablator, targets, self.device))
        if not self.checked:
            self.last = out
            return None
        return out

    def agrees(self, hooked: Tensor) -> bool:
        """The first ablated set's weight-level logits against the hooked ones."""
        if self.checked or self.last is None:
            return True
        self.checked = True
        if _agree(self.last, hooked):
            return True
        warnings.warn(
            "tl_submodels: the weight-level ablated forward differs from the hooked one; decompose validates its "
            "parts through hooks instead (slower, exact).",
            stacklevel=4,
        )
        return False


def _agree(ours: Tensor, theirs: Tensor) -> bool:
    return float((ours - theirs).abs().max()) <= FAST_TOLERANCE * max(1.0, float(theirs.abs().max()))


def _core_and_extent(
    probe: _Probe, j: int, loadings: Tensor, components: list[Component]
) -> tuple[list[Component], list[Component], float]:
    """Part ``j``'s core (by validation: own necessity minus the most lost elsewhere) and its extent."""
    loading = loadings[j]
    exclusive = loading * loading / loadings.sum(0).clamp_min(1e-30)
    others = [i for i in range(loadings.shape[0]) if i != j and len(probe.where[i][0])]

    def score(members: frozenset[int]) -> float:
        need = probe.necessity(frozenset(components[c] for c in members))
        elsewhere = max((float(need[i]) for i in others), default=0.0)
        return float(need[j]) - elsewhere

    memo: dict[frozenset[int], float] = {}

    def scored(members: frozenset[int]) -> float:
        if members not in memo:
            memo[members] = score(members)
        return memo[members]

    order = loading.argsort(descending=True).tolist()
    # thresholds on two rankings, by loading and by loading times the share of the component's loading
    # that this factor holds (which ranks shared components lower), halving by sqrt 2 from the top;
    # the smallest set within CORE_SLACK of the best score
    cands = {frozenset(order[:1])}
    for ranking in (loading, exclusive):
        ranked = ranking.argsort(descending=True).tolist()
        top = float(ranking[ranked[0]])
        cands |= {frozenset(ranked[: int((ranking >= top * 2 ** (-i / 2)).sum())]) for i in range(21 if top > 0 else 0)}
    high = max(scored(c) for c in cands)
    best = min((c for c in cands if scored(c) >= high - CORE_SLACK), key=len)
    pool = sorted(set(exclusive.argsort(descending=True).tolist()[:32]) | best)
    best = refine_by_validation(best, pool, scored, prune_key=lambda c: float(exclusive[c]), rounds=4)
    high = scored(best)
    for c in sorted(best, key=lambda c: float(exclusive[c])):  # the smallest set within CORE_SLACK of the best
        if len(best) > 1 and scored(best - {c}) >= high - CORE_SLACK:
            best = best - {c}
    core = [components[c] for c in sorted(best, key=lambda c: -float(loading[c]))]
    if not len(probe.where[j][0]) or math.isnan(probe.faithfulness(frozenset(), j)):
        return core, core, float("nan")  # no prediction, or no behaviour to restore: the extent is the core
    rest = [
        components[c] for c in exclusive.argsort(descending=True).tolist() if c not in best and float(exclusive[c]) > 0
    ]

    def faith(keep: list[Component]) -> float:
        return probe.faithfulness(frozenset(keep), j)

    def elsewhere(members: list[Component]) -> float:  # the most top-1 accuracy another part's predictions lose
        drop = probe.accuracy_drop(frozenset(members))
        return max((float(drop[i]) for i in others), default=0.0)

    bound = max(SPECIFIC, elsewhere(core) + SPECIFIC_SLACK)
    extent = grow_specific(core, rest, faith, lambda m: elsewhere(m) <= bound, EXTENT_TARGET)
    return core, extent, faith(extent)


def _evaluate(
    model: Any,
    prep: PreparedCorpus,
    ablator: Ablator,
    fx: Any,
    group: Tensor,
    name: str,
    extent: list[Component],
    core: list[Component],
    faith: float,
    probe: _Probe,
    j: int,
    boot: _Boot,
) -> PartEvaluation:
    """Loss and top-1 accuracy with the extent ablated, on the part's predictions and on every other one; intervals
    over the sequences (``boot``)."""
    device = tlmodel.first_param_device(model)
    logits = tlmodel.run_logits(model, prep.inputs.to(device), ablator.hooks(extent))
    targets = prep.targets.to(device)
    lp = logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0].cpu()[prep.counted]
    ok = (logits.argmax(-1) == targets).cpu()[prep.counted]
    mine = torch.zeros(len(lp), dtype=torch.bool)
    mine[group] = True

    def mean(t: Tensor, m: Tensor) -> float:
        return float(t[m].float().mean()) if bool(m.any()) else float("nan")

    need = probe.necessity(frozenset(extent))
    elsewhere = [float(need[i]) for i in range(len(need)) if i != j and len(probe.where[i][0])]
    seq = prep.index[:, 0][mine]
    ones = torch.ones(int(mine.sum()), dtype=torch.float64)
    faith_ci = None
    if not math.isnan(faith):
        columns, rows = probe.faithfulness_columns(frozenset(extent), j)
        faith_ci = boot.interval(columns, rows, stats.faithfulness)
    return PartEvaluation(
        faithfulness_ci=faith_ci,
        loss_increase_ci=boot.interval(torch.stack([(fx.logprob - lp)[mine].double(), ones], 1), seq, _ratio),
        accuracy_drop_ci=boot.interval(
            torch.stack([(fx.correct.float() - ok.float())[mine].double(), ones], 1), seq, _ratio
        ),
        part=name,
        size=len(extent),
        core_size=len(core),
        predictions=int(mine.sum()),
        faithfulness=faith,
        core_faithfulness=probe.faithfulness(frozenset(core), j) if len(probe.where[j][0]) else float("nan"),
        core_necessity=float(probe.necessity(frozenset(core))[j]),
        necessity_elsewhere=max(elsewhere, default=0.0),
        loss_increase=mean(fx.logprob - lp, mine),
        loss_increase_others=mean(fx.logprob - lp, ~mine),
        accuracy_drop=mean(fx.correct.float() - ok.float(), mine),
        accuracy_drop_others=mean(fx.correct.float() - ok.float(), ~mine),
    )


def _words(model: Any, tokens: Tensor) -> dict[int, str]:
    tok = getattr(model, "tokenizer", None)
    ids = sorted({int(t) for t in tokens.unique()})
    if tok is None:
        return {i: str(i) for i in ids}
    return {i: tok.decode([i]) for i in ids}


def _label(prep: PreparedCorpus, words: dict[int, str], group: Tensor, usage: Tensor, top: int = 3) -> str:
    """Next and current tokens over-represented in the part's predictions, and the positions they sit at."""
    if len(group) == 0:
        return "(no prediction uses it most)"
    index = prep.index
    cur_all = prep.tokens[index[:, 0], index[:, 1]].tolist()
    nxt_all = prep.tokens[index[:, 0], index[:, 1] + 1].tolist()
    g = group.tolist()

    def over(all_tokens: list[int]) -> list[str]:
        total, n = Counter(all_tokens), len(all_tokens)
        mine = Counter(all_tokens[i] for i in g)
        lift = {t: (c / len(g)) / (total[t] / n) for t, c in mine.items() if c >= 2 or len(g) < 4}
        best = sorted(lift, key=lambda t: (-lift[t], -mine[t]))[:top]
        return [words.get(t, str(t)) for t in best if lift[t] > 1.0]

    pos = Counter(int(index[i, 1]) for i in g)
    (p, c), *_ = pos.most_common(1)
    where = f"pos {p} ({c / len(g):.0%})" if c / len(g) >= 0.5 else f"pos {min(pos)}-{max(pos)}"
    nxt, cur = over(nxt_all), over(cur_all)
    return f"-> {' '.join(nxt) or '(any)'} after {' '.join(cur) or '(any)'}, {where}"
