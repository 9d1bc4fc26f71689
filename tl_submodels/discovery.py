"""Discovery: from scores to a sub-model that carries the behaviour.

``find_circuit`` ranks components, grows a sub-model in rank order until keep-only faithfulness
reaches the target, then drops every member the target does not need. Faithfulness is always
measured by ablation, so the ranking decides only how small the result is and how much work it
takes: ``method="patch"`` ranks by exact patching of every component; ``"atp"``
ranks by attribution patching (one forward and backward), grows on that ranking, and prunes
what it grew. Where it grew more than ``EXACT_CONFIRM_MIN`` members it patches exactly only
those, keeps the shortest prefix of them in the order of their exact effects that reaches the
target (bisection) and prunes that; fewer it prunes directly, least attributed first (a patch
call would cost more forwards than it could save).

Is it real? ``holdout=0.2`` chooses the members on 80% of the prompts and evaluates them on the
other 20%; ``stability=n`` runs the same search on ``n`` bootstrap resamples of the prompts and
reports how often each member is chosen and the mean Jaccard overlap with the result; both land in
``SubModel.evidence`` (:class:`Evidence`).

Keep-only runs stop after the highest layer they keep: the layers above are ablated whole, so
what they add to the residual stream is the same in every run (see :class:`_KeepOnlyRuns`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm import tqdm

from tl_submodels import model as tlmodel
from tl_submodels.ablation import Ablation, Ablator
from tl_submodels.attribution import attribute
from tl_submodels.components import Component, Kind, forward_order
from tl_submodels.errors import TLSubmodelsError, renamed
from tl_submodels.evaluate import Evaluation, evaluate
from tl_submodels.patching import FAST_TOLERANCE, patch
from tl_submodels.scores import Scores
from tl_submodels.submodel import SubModel
from tl_submodels.task import Task
from tl_submodels.values import Value

__all__ = [
    "EXACT_CONFIRM_MIN",
    "EXTENT_TARGET",
    "LINEAR_SCAN",
    "RESID_CACHE_MB",
    "SPECIFIC",
    "SPECIFIC_METRIC",
    "SPECIFIC_SLACK",
    "Evidence",
    "Method",
    "Stability",
    "find_circuit",
    "grow_specific",
    "grow_to_target",
    "keep_only_faithfulness",
    "parts_stability",
    "split_prompts",
    "stability_of",
]

LINEAR_SCAN = 64
# method="atp" patches its grown members exactly (to order and bisect them) only when there
# are more than this many: pruning k members costs k - 1 ablated forwards in any order, fewer
# than one patch call (which runs the clean and corrupt batches and every member) for small k.
EXACT_CONFIRM_MIN = 8
# Memory for the residual streams of the all-ablated run that let keep-only runs stop early.
RESID_CACHE_MB = 512.0
Method = Literal["patch", "atp"]
_OLD_METHODS = {"exact": "patch", "attribution+exact": "atp"}  # the names before one vocabulary


@dataclass(frozen=True, kw_only=True)
class Stability(Value):
    """The same search on ``n`` bootstrap resamples of the prompts (``seed``).

    ``frequency``: each component chosen in any run -> the fraction of the resamples that chose it;
    ``jaccard``: each resample's overlap with the full-data result (intersection over union), and
    ``mean_jaccard`` their mean.

    Example:
        >>> circuit = tls.find_circuit(model, task, stability=20)  # doctest: +SKIP
        >>> circuit.evidence.stability.frequency["L1H1"], circuit.evidence.stability.mean_jaccard  # doctest: +SKIP
        (1.0, 0.93)
    """

    frequency: dict[str, float]
    jaccard: list[float]
    mean_jaccard: float
    n: int
    seed: int


@dataclass(frozen=True, kw_only=True)
class Evidence(Value):
    """How a search's result was checked: ``holdout``, its evaluation on prompts the search did not see
    (``chosen_on`` prompts chose the members, ``held_out`` judged them), and ``stability`` over resamples.

    Example:
        >>> circuit = tls.find_circuit(model, task, holdout=0.2)  # doctest: +SKIP
        >>> circuit.evidence.holdout.faithfulness, circuit.evidence.holdout.faithfulness_ci  # doctest: +SKIP
        (0.93, (0.9, 0.95))
    """

    holdout: Evaluation | None = None
    chosen_on: int
    held_out: int = 0
    stability: Stability | None = None

    def rows(self) -> list[tuple[str, str]]:
        """Summary lines for a sub-model's repr."""
        out = []
        if self.holdout is not None:
            ev, ci = self.holdout, self.holdout.faithfulness_ci
            interval = "" if ci is None else f" [{ci[0]:.3f}, {ci[1]:.3f}]"
            out.append(
                (
                    "held out",
                    f"faithfulness {ev.faithfulness:.3f}{interval} on {self.held_out} prompts not used to choose it "
                    f"(chosen on {self.chosen_on})",
                )
            )
        if self.stability is not None:
            st = self.stability
            rare = sorted(st.frequency.items(), key=lambda kv: (kv[1], kv[0]))[:5]
            out.append(
                (
                    "stability",
                    f"mean Jaccard {st.mean_jaccard:.2f} with {st.n} bootstrap reruns; least chosen: "
                    + ", ".join(f"{c} {f:.0%}" for c, f in rare),
                )
            )
        return out


def find_circuit(
    model: Any,
    task: Task,
    *,
    target: float = 0.9,
    ablation: Ablation = "mean",
    kinds: tuple[Kind, ...] | None = None,
    scores: Scores | None = None,
    method: Method | str = "patch",
    name: str | None = None,
    progress: bool = False,
    holdout: float | None = None,
    stability: int = 0,
    seed: int = 0,
) -> SubModel:
    """The smallest-found sub-model whose keep-only faithfulness reaches ``target``.

    Args:
        model: a TransformerLens model in eval mode.
        task: the behaviour to explain.
        target: faithfulness to reach, in (0, 1].
        ablation: how the rest of the model is ablated (reference: ``task.corrupt``).
        kinds: component kinds to rank (default: heads, and mlps where the model has MLPs: whole
            layers keep a circuit small and its search short; pass neurons for a finer one).
        scores: precomputed scores to rank by (default: computed as ``method`` says).
        method: ``"patch"`` (rank by exact patching of every component) or ``"atp"`` (rank by
            attribution patching, patch exactly only the candidates needed). The old names
            ``"exact"`` and ``"attribution+exact"`` still work, with a DeprecationWarning.
        name: the sub-model's name (default ``"{task.name}-circuit"``).
        progress: show progress bars.
        holdout: the fraction of the prompts (drawn with ``seed``) kept out of the search; the result
            is evaluated on them (``SubModel.evidence.holdout``, an :class:`Evaluation` with intervals).
        stability: rerun the search on this many bootstrap resamples of the prompts it used
            (``SubModel.evidence.stability``: how often each member is chosen, Jaccard overlaps).
        seed: seeds the holdout split and the resamples.

    Returns:
        A SubModel; its description records the faithfulness reached, its ``evidence`` the checks asked for.

    Raises:
        TLSubmodelsError: a target outside (0, 1], or one the ranked components cannot reach; a holdout
            outside (0, 1) or leaving fewer than 2 prompts on a side; ``scores`` with a holdout or
            stability (they were computed on every prompt).

    Example:
        >>> model = tls.zoo.load("induction-2l")
        >>> task = tls.zoo.task("induction-2l", "induction", n=32)
        >>> circuit = tls.find_circuit(model, task, target=0.9)
        >>> len(circuit) <= 8
        True
    """
    if not 0 < target <= 1:
        raise TLSubmodelsError(f"target is a faithfulness in (0, 1], got {target}")
    if method in _OLD_METHODS:
        renamed(f"find_circuit(method={method!r})", f"method={_OLD_METHODS[method]!r}")
        method = _OLD_METHODS[method]
    if method not in ("patch", "atp"):
        raise TLSubmodelsError(f"unknown method {method!r}: choose 'patch' (exact) or 'atp' (attribution first)")
    if holdout is None and not stability:
        return _search(model, task, target, ablation, kinds, scores, method, name, progress)
    if scores is not None:
        raise TLSubmodelsError(
            "scores= were computed on every prompt, so a search on part of them (holdout=, stability=) cannot "
            "rank by them; drop scores= and pass method= instead"
        )
    if isinstance(stability, bool) or not isinstance(stability, int) or stability < 0:
        raise TLSubmodelsError(
            f"stability is a number of bootstrap reruns of the search (0 for none); got {stability!r}"
        )
    chosen, held = split_prompts(task, holdout, seed)
    circuit = _search(model, chosen, target, ablation, kinds, None, method, name, progress)
    checked = evaluate(model, circuit, held, ablation=ablation, seed=seed) if held is not None else None
    steady = _stability(model, chosen, circuit, stability, seed, target, ablation, kinds, method) if stability else None
    evidence = Evidence(
        holdout=checked, chosen_on=chosen.batch, held_out=0 if held is None else held.batch, stability=steady
    )
    return SubModel(circuit.components, name=circuit.name, description=circuit.description, evidence=evidence)


def split_prompts(task: Task, holdout: float | None, seed: int) -> tuple[Task, Task | None]:
    """``task`` split into the prompts a search may use and the ``holdout`` fraction it may not (drawn with
    ``seed``); ``(task, None)`` without a holdout.

    Example:
        >>> chosen, held = split_prompts(task, 0.25, seed=0)  # doctest: +SKIP
        >>> chosen.batch, held.batch  # doctest: +SKIP
        (48, 16)
    """
    if holdout is None:
        return task, None
    if isinstance(holdout, bool) or not isinstance(holdout, int | float) or not 0 < holdout < 1:
        raise TLSubmodelsError(f"holdout is the fraction of prompts kept out of the search, in (0, 1); got {holdout!r}")
    n_held = round(task.batch * holdout)
    if n_held < 2 or task.batch - n_held < 2:
        raise TLSubmodelsError(
            f"holdout={holdout} of {task.batch} prompts leaves {task.batch - n_held} to search on and {n_held} to "
            "check on; each side needs at least 2: add prompts or change the holdout"
        )
    order = torch.randperm(task.batch, generator=torch.Generator().manual_seed(seed))
    return task.subset(order[n_held:].sort().values), task.subset(order[:n_held].sort().values)


def _stability(
    model: Any,
    task: Task,
    circuit: SubModel,
    n: int,
    seed: int,
    target: float,
    ablation: Ablation,
    kinds: tuple[Kind, ...] | None,
    method: Method | str,
) -> Stability:
    """The search rerun on ``n`` bootstrap resamples of ``task``'s prompts."""
    gen = torch.Generator().manual_seed(seed + 1)
    found = []
    for _ in range(n):
        resample = task.subset(torch.randint(0, task.batch, (task.batch,), generator=gen))
        try:
            found.append(_search(model, resample, target, ablation, kinds, None, method, None, False).components)
        except TLSubmodelsError:  # the target out of reach on this resample: nothing chosen
            found.append(frozenset())
    return stability_of(circuit.components, found, seed)


def stability_of(result: frozenset[Component], reruns: list[frozenset[Component]], seed: int) -> Stability:
    """How often each component was chosen over ``reruns`` of a search, and each rerun's Jaccard overlap with
    ``result`` (1 where both are empty).

    Example:
        >>> both = SubModel(["L0H0", "L1H1"]).components
        >>> st = stability_of(both, [SubModel(["L0H0"]).components, both], seed=0)
        >>> st.frequency, st.mean_jaccard
        ({'L0H0': 1.0, 'L1H1': 0.5}, 0.75)
    """
    if not reruns:
        raise TLSubmodelsError("stability needs at least one rerun")
    counts: dict[Component, int] = {}
    jaccard = []
    for found in reruns:
        for c in found:
            counts[c] = counts.get(c, 0) + 1
        union = found | result
        jaccard.append(len(found & result) / len(union) if union else 1.0)
    n = len(reruns)
    frequency = {str(c): counts.get(c, 0) / n for c in sorted(set(counts) | set(result), key=forward_order)}
    return Stability(frequency=frequency, jaccard=jaccard, mean_jaccard=sum(jaccard) / n, n=n, seed=seed)


def parts_stability(parts: list[SubModel], reruns: list[list[SubModel]], seed: int) -> list[Stability]:
    """Each part's :func:`stability_of` over ``reruns`` of a factorisation, matching it in each rerun to the
    rerun's part that overlaps it most (Jaccard; nothing where the rerun found no part).

    Example:
        >>> parts = [SubModel(["L0H0", "L0H1"], name="a")]
        >>> parts_stability(parts, [[SubModel(["L0H0"]), SubModel(["L1H1"])]], seed=0)[0].mean_jaccard
        0.5
    """

    def overlap(a: frozenset[Component], b: frozenset[Component]) -> float:
        return len(a & b) / len(a | b) if a | b else 1.0

    out = []
    for p in parts:
        matched = [
            max((r.components for r in run), key=lambda c: overlap(p.components, c), default=frozenset())
            for run in reruns
        ]
        out.append(stability_of(p.components, matched, seed))
    return out


def _search(
    model: Any,
    task: Task,
    target: float,
    ablation: Ablation,
    kinds: tuple[Kind, ...] | None,
    scores: Scores | None,
    method: Method | str,
    name: str | None,
    progress: bool,
) -> SubModel:
    """find_circuit's search on every prompt of ``task``."""
    info = tlmodel.check_model(model, ())
    kinds = kinds or info.kinds()
    own_scores = scores is None
    if scores is None:
        scorer = patch if method == "patch" else attribute
        scores = scorer(model, task, kinds=kinds, progress=progress)
    ranked = list(dict.fromkeys(c.without_pos() for c, _ in scores.top(10**9)))
    task = task.to(tlmodel.first_param_device(model))
    ablator = Ablator(model, ablation=ablation, reference=None if ablation == "zero" else task.corrupt)
    # attribute() ran the clean prompts unablated (the same forward, the same metric): reuse it.
    computed = scores.method != "patch" and own_scores and scores.direction == "denoising"
    faith = keep_only_faithfulness(model, task, ablator, full=scores.clean_metric if computed else None)
    members = grow_to_target(ranked, faith, target)
    if faith(members) < target:  # grow_to_target ends at the whole ranking when no prefix reaches the target
        raise TLSubmodelsError(
            f"keeping all {len(ranked)} ranked components reaches faithfulness {faith(ranked):.3f} < target {target}. "
            "Rank more kinds (kinds=('heads', 'mlps')) or lower the target."
        )
    if method == "atp" and scores.method != "patch" and len(members) > EXACT_CONFIRM_MIN:
        # Confirm with exact patching of the members only; in the order of their exact effects,
        # the shortest prefix that reaches the target (bisection), and only that prefix is pruned.
        exact = patch(model, task, kinds=kinds, components=members, progress=progress)
        members = _shortest_reaching([c for c, _ in exact.top(len(members))], faith, target)
    # Prune: drop members the target does not need, least important first.
    for c in tqdm(list(reversed(members)), desc="pruning", disable=not progress):
        trial = [m for m in members if m != c]
        if trial and faith(trial) >= target:
            members = trial
    reached = faith(members)
    return SubModel(
        components=frozenset(members),
        name=name or f"{task.name}-circuit",
        description=f"find_circuit: {method} ranking, {ablation} ablation, faithfulness {reached:.3f} (target {target})",
    )


def keep_only_faithfulness(
    model: Any, task: Task, ablator: Ablator, *, full: float | None = None
) -> Callable[[list[Component]], float]:
    """A memoised function: the faithfulness of keeping only some components (the rest ablated) on ``task``.

    Faithfulness is ``(metric(keep) - metric(nothing kept)) / (metric(all kept) - metric(nothing kept))``
    on the task's clean prompts. ``full``: the unablated metric, when already computed.

    Raises:
        TLSubmodelsError: when ablating every component does not change the metric (nothing to measure).

    Example:
        >>> faith = keep_only_faithfulness(model, task, tls.Ablator(model, reference=task.corrupt))  # doctest: +SKIP
        >>> faith([Head(1, 0), Head(0, 0)])  # doctest: +SKIP
        0.97
    """
    runs = _KeepOnlyRuns(model, task, ablator)
    if full is None:
        full = float(task.metric(tlmodel.run_logits(model, task.clean)))
    nothing = runs.nothing
    if abs(full - nothing) <= 1e-6 * max(1.0, abs(full)):
        raise TLSubmodelsError(
            f"ablating every component leaves {task.name!r}'s metric at {full:.4g}: there is no behaviour to measure"
        )
    seen: dict[frozenset[Component], float] = {}

    def faith(keep: list[Component]) -> float:  # memoised: growing and pruning revisit sets
        key = frozenset(keep)
        if key not in seen:
            seen[key] = (runs.metric(keep) - nothing) / (full - nothing)
        return seen[key]

    return faith


def grow_to_target(
    ranked: list[Component], faith: Callable[[list[Component]], float], target: float, *, start: int = 1
) -> list[Component]:
    """The shortest prefix of ``ranked`` (at least ``start`` long) whose ``faith`` reaches ``target``; all of it if none does.

    Linear for short rankings, else doubling then bisection (which assumes faithfulness grows with the prefix).

    Example:
        >>> from tl_submodels import Head
        >>> grow_to_target([Head(0, i) for i in range(6)], lambda keep: len(keep) / 6, 0.5)
        [Head(0, 0), Head(0, 1), Head(0, 2)]
    """
    n = len(ranked)
    start = max(1, min(start, n))
    if n - start < LINEAR_SCAN:
        k = next((k for k in range(start, n + 1) if faith(ranked[:k]) >= target), n)
    else:  # doubling, then bisection
        lo, hi = start - 1, start  # lo: the longest prefix seen to fall short
        while hi < n and faith(ranked[:hi]) < target:
            lo, hi = hi, min(n, 2 * hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if faith(ranked[:mid]) >= target else (mid, hi)
        k = hi
    return ranked[:k]


EXTENT_TARGET = 0.8  # keep-only faithfulness a part's extent reaches on its behaviour (decompose, factorize)
SPECIFIC = 0.05  # an extent's ablation costs any other behaviour at most this top-1 accuracy ...
SPECIFIC_METRIC = 0.1  # factorize: nor more than this fraction of another task's metric gap ...
SPECIFIC_SLACK = 0.05  # ... or its core's own cost there plus this


def grow_specific(
    core: list[Component],
    rest: list[Component],
    faith: Callable[[list[Component]], float],
    specific: Callable[[list[Component]], bool],
    target: float,
    *,
    block: int = 8,
    patience: int = 256,
    min_gain: float = 0.01,
) -> list[Component]:
    """``core`` grown from ``rest`` (in its order) until ``faith`` reaches ``target``, admitting only what keeps it ``specific``.

    Candidates come in blocks, ``block`` long at first and twice as long after each block that
    went in whole; a block whose admission would make the part unspecific is split in halves, down
    to single components, and only the offending ones are left out. Growth stops early once the
    last ``patience`` candidates together raised ``faith`` by less than ``min_gain``: the target
    is out of reach of what stays specific, and more members would only make the part bigger.
    The result is the shortest prefix of what was admitted (in order) that reaches ``target``, or,
    where none does, that comes within ``min_gain`` of the best reached.

    Example:
        >>> from tl_submodels import Head
        >>> a, b, c, x, d = (Head(0, i) for i in range(5))
        >>> grow_specific([a], [b, c, x, d], lambda m: len(m) / 4, lambda m: x not in m, 1.0, block=2)
        [Head(0, 0), Head(0, 1), Head(0, 2), Head(0, 4)]
    """
    extent = list(core)

    def admit(some: list[Component]) -> None:  # ``some`` as a whole is not specific: split it
        if len(some) > 1:
            for part in (some[: len(some) // 2], some[len(some) // 2 :]):
                if specific(extent + part):
                    extent.extend(part)
                else:
                    admit(part)

    lo, size = 0, block
    reached = [(0, faith(extent))]  # (candidates examined, faithfulness)
    while lo < len(rest) and reached[-1][1] < target:
        some = rest[lo : lo + size]
        if specific(extent + some):  # a whole block went in: try a block twice as long next
            extent.extend(some)
            size *= 2
        else:
            admit(some)
            size = block
        lo += len(some)
        reached.append((lo, faith(extent)))
        before = [f for n, f in reached if n <= lo - patience]
        if before and reached[-1][1] - before[-1] < min_gain:
            break
    best = max(f for _, f in reached)
    goal = target if best >= target else best - min_gain
    return grow_to_target(extent, faith, goal, start=len(core))  # the shortest admitted prefix that reaches it


def _shortest_reaching(ordered: list[Component], faith: Any, target: float) -> list[Component]:
    """The shortest prefix of ``ordered`` (all of which reaches ``target``) that reaches it, by bisection."""
    lo, hi = 0, len(ordered)  # the empty prefix has faithfulness 0; the whole one reaches the target
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if faith(ordered[:mid]) >= target else (mid, hi)
    return ordered[:hi]


class _KeepOnlyRuns:
    """The metric of the task's clean prompts with only some components kept, the rest ablated.

    A layer none of whose components is kept is ablated whole: its heads' ``z`` and its MLP output
    are replaced by values that do not depend on the layer's input, so what it adds to the
    residual stream is the same in every run. A keep-only run therefore needs the model only up
    to the highest layer it keeps: it stops after that layer (``stop_at_layer``), adds what the
    layers above added in the run that ablates everything, and unembeds. That shortcut is checked
    against the model's own all-ablated forward; models where it differs, that cannot stop early,
    carry other hooks, or whose cached residual streams would pass ``RESID_CACHE_MB`` run every
    layer instead.
    """

    def __init__(self, model: Any, task: Task, ablator: Ablator) -> None:
        self.model, self.task, self.ablator = model, task, ablator
        self.n_layers = ablator.info.n_layers
        everything = ablator.hooks([], keep_only=True)
        n = self.n_layers
        names = [tlmodel.hook_resid_pre(layer) for layer in range(n)] + [tlmodel.hook_resid_post(n - 1)]
        mb = task.clean.numel() * ablator.info.d_model * (n + 1) * 4 / 2**20
        self.pre: list[Tensor] | None = None
        self._to_top: dict[int, Tensor] = {}
        usable = (
            n > 1
            and mb <= RESID_CACHE_MB
            and not tlmodel.adapter(model).has_hooks()
            and all(name in model.hook_dict for name in names)
        )
        if not usable:
            logits = tlmodel.run_logits(model, task.clean, everything)
        else:
            saved: dict[str, Tensor] = {}

            def saver(name: str) -> Any:
                def save(act: Tensor, hook: Any = None) -> None:
                    saved[name] = act.detach()

                return save

            logits = tlmodel.run_logits(model, task.clean, everything + [(name, saver(name)) for name in names])
            self.pre, self.final = [saved[name] for name in names[:-1]], saved[names[-1]]
            try:  # the shortcut from layer 0 on must give the logits the model just gave
                short = self._stopped(everything, 0)
                ok = short.shape == logits.shape and bool(
                    (short - logits).abs().max() <= FAST_TOLERANCE * max(1.0, float(logits.abs().max()))
                )
            except (TypeError, ValueError, RuntimeError, AttributeError):
                ok = False
            if not ok:
                self.pre = None
        self.nothing = float(task.metric(logits))

    def metric(self, keep: list[Component]) -> float:
        """The task's metric with only ``keep`` kept."""
        if not keep:
            return self.nothing
        hooks = self.ablator.hooks(keep, keep_only=True)
        top = max(c.layer for c in keep)
        if self.pre is None or top >= self.n_layers - 1:
            return float(self.task.metric(tlmodel.run_logits(self.model, self.task.clean, hooks)))
        return float(self.task.metric(self._stopped(hooks, top)))

    def _stopped(self, hooks: list, top: int) -> Tensor:
        """Logits of a run that stops after layer ``top``, the ablated layers above it added from the cache."""
        assert self.pre is not None
        ad = tlmodel.adapter(self.model)
        resid = ad.resid_after(self.task.clean, top, hooks)
        if top not in self._to_top:
            self._to_top[top] = self.final - self.pre[top + 1].to(self.final.device)
        return ad.unembed(resid.to(self.final.device) + self._to_top[top])
