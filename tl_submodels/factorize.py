"""Factorise a model's components into sub-models across tasks and prompts, and the atoms of circuits.

``factorize`` builds the prompts x components matrix of per-prompt effects (exact noising
patching, or attribution) over every task, and factors its magnitude non-negatively:
``|E| ~ W H``. Non-negative matrix factorisation (NMF) fits the question: a prompt uses a
sub-model or it does not, and a component belongs to a sub-model with some weight; neither can
be negative, and the parts add up. PCA or ICA would allow signed mixtures that cancel, which
have no reading as "parts". Row ``i`` of ``W`` says how much prompt ``i`` uses each factor; row
``j`` of ``H`` says which components make factor ``j``.

- **k** (the number of sub-models), when not given, is chosen by held-out-entry cross-validation
  (Wold's holdout / bi-cross-validation, as Owen and Perry 2009): a tenth of the matrix entries
  is hidden, NMF is fitted on the rest for each candidate k, and the smallest k whose error on
  the hidden entries is within one standard error of the least wins (:func:`tl_submodels.nmf.choose_k`).
  Which entries are hidden depends on the prompt's tokens, not its row, so the choice does not
  depend on the prompts' order.
- **Cores**: a factor's necessary core is the set of components, from thresholds on its
  loadings, chosen by validation: each candidate set is ablated (mean ablation by default) and
  the one that best trades the accuracy lost on the factor's own tasks against the largest loss
  on any other task wins (fewer components on ties). A core is specific but small: keeping only
  it restores little of its task (on multitask-3l, 64 prompts a task: faithfulness 0.10-0.46).
- **Parts** (the extents): the core grown, most loaded components first, until keeping only
  it (everything else ablated) restores ``EXTENT_TARGET`` (0.8) of its label task's metric,
  admitting only components whose ablation keeps the part specific: no other task loses more
  than ``SPECIFIC`` (5 points) of top-1 accuracy nor more than ``SPECIFIC_METRIC`` (0.1) of its
  metric's full-to-all-ablated gap, or the core's own losses there plus ``SPECIFIC_SLACK``
  (:func:`tl_submodels.discovery.grow_specific`, as ``decompose`` grows its extents). Either
  gate alone let extents overfit the prompts they were grown on (measured on multitask-3l,
  64 prompts a task: accuracy alone, the majority extent cost successor 11 points on held-out
  prompts; the metric alone, the successor extent cost majority 30 points, a two-way task whose
  metric moves little before its answers flip).
- **Label**: the task whose prompts use the factor most.

NMF starts from NNDSVDa (a deterministic SVD-based start), so equal inputs give equal results.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm import tqdm

from tl_submodels import model as tlmodel
from tl_submodels.ablation import AblatedRuns, Ablation, Ablator, Reference
from tl_submodels.attribution import attribute
from tl_submodels.components import Component, Kind, parse_component
from tl_submodels.discovery import (
    EXTENT_TARGET,
    SPECIFIC,
    SPECIFIC_METRIC,
    SPECIFIC_SLACK,
    Stability,
    grow_specific,
    parts_stability,
    split_prompts,
)
from tl_submodels.errors import TLSubmodelsError, renamed
from tl_submodels.evaluate import Evaluation, evaluate, interval_columns
from tl_submodels.nmf import choose_k, nmf
from tl_submodels.patching import patch
from tl_submodels.submodel import SubModel
from tl_submodels.summary import MAX_ITEMS, summary_text
from tl_submodels.task import Task, check_tasks
from tl_submodels.values import Value

__all__ = ["Factorization", "Scorer", "atoms", "factorize", "refine_by_validation"]

Scorer = Literal["patch", "atp", "ig"]


@dataclass(frozen=True, kw_only=True)
class Factorization(Value):
    """Sub-models found across tasks, which prompts use them, and how each validated.

    Attributes:
        parts: one SubModel per factor, named by its label (``"addition"``, ``"addition-2"``...):
            the whole sub-model (the core's extent: keeping only it restores >= 0.8 of the label
            task where that can be reached while its ablation stays specific).
        cores: the necessary core of each part (same order and names, ``-core`` appended): the
            smallest members whose ablation best separates the part's tasks from the others.
        labels: the task whose prompts use each part most.
        task_share: ``[part, task]`` each part's usage split over the tasks (rows sum to 1).
        usage: ``[prompt, part]`` how much each prompt uses each part (rows sum to 1).
        prompt_task: the task of each prompt (row of ``usage``).
        evaluations: each part validated by ablation on its label task, with specificity on the others.
        effects: ``[prompt, component]`` the per-prompt effects that were factorised (each task's
            rows scaled to mean L2 norm 1).
        components: the columns of ``effects``.
        loadings: ``[part, component]`` the factor loadings (NMF's H).
        k_errors: held-out error of each candidate k (empty when k was given).
        k_error_se: its standard error over the prompts; k is the smallest whose error is within
            one standard error (at least 0.01) of the least (see :func:`tl_submodels.nmf.choose_k`).
        holdout_evaluations: with ``factorize(..., holdout=f)``, each part evaluated like
            ``evaluations`` on the fraction ``f`` of every task's prompts that the factorisation and
            the choice of members never saw (``evaluations``, ``usage`` and ``effects`` are of the rest).
        stability: with ``factorize(..., stability=n)``, one :class:`tl_submodels.discovery.Stability`
            per part: how often each member is in the part's best-matching part over ``n`` reruns (same
            k) on bootstrap resamples of every task's prompts, and the Jaccard overlaps.

    Example:
        >>> f = tls.factorize(model, tasks)  # doctest: +SKIP
        >>> [(p.name, len(p)) for p in f.parts]  # doctest: +SKIP
        [('addition', 9), ('induction', 4), ...]
    """

    parts: list[SubModel]
    labels: list[str]
    task_names: list[str]
    task_share: Float[Tensor, "part task"]
    usage: Float[Tensor, "prompt part"]
    prompt_task: list[str]
    evaluations: list[Evaluation]
    effects: Float[Tensor, "prompt component"]
    components: list[Component]
    loadings: Float[Tensor, "part component"]
    k_errors: dict[int, float]
    ablation: str
    method: str
    cores: list[SubModel]
    k_error_se: dict[int, float] = field(default_factory=dict)
    holdout_evaluations: list[Evaluation] | None = None
    stability: list[Stability] | None = None

    @property
    def purity(self) -> float:
        """Fraction of prompts whose most-used part is labelled with the prompt's own task."""
        top = self.usage.argmax(1).tolist()
        return sum(self.labels[j] == t for j, t in zip(top, self.prompt_task, strict=True)) / len(top)

    def part(self, name: str) -> SubModel:
        """The part called ``name``."""
        for p in self.parts:
            if p.name == name:
                return p
        raise TLSubmodelsError(f"no part {name!r}; the parts are {[p.name for p in self.parts]}")

    def plot(self) -> Any:
        """The prompt x sub-model usage heat map (plotly); see :func:`tl_submodels.viz.usage_heatmap`.

        Example:
            >>> tls.factorize(model, tasks).plot()  # doctest: +SKIP
        """
        from tl_submodels import viz

        return viz.usage_heatmap(self)

    def _repr_html_(self) -> str:
        return str(self.to_frame().to_html())

    def __repr__(self) -> str:
        rows = [
            (p.name, f"{len(p)} members (core {len(c)}), faithfulness {ev.faithfulness:.2f} on {lab}")
            for p, c, lab, ev in zip(self.parts, self.cores, self.labels, self.evaluations, strict=True)
        ]
        return summary_text(
            f"Factorization: {len(self.parts)} parts of {len(self.components)} components over {len(self.prompt_task)} "
            f"prompts of {len(self.task_names)} tasks ({self.method} effects, purity {self.purity:.2f})",
            [*rows[:MAX_ITEMS], ("all", ".to_frame(); picture: .plot()")],
        )

    def to_frame(self) -> Any:
        """One row per part: label, size and core size, faithfulness and necessity on its task, largest accuracy drop elsewhere."""
        import pandas as pd

        rows = []
        none: list[Evaluation | None] = [None] * len(self.parts)
        held: list[Evaluation | None] = list(self.holdout_evaluations) if self.holdout_evaluations else none
        for p, core, lab, ev, out in zip(self.parts, self.cores, self.labels, self.evaluations, held, strict=True):
            drops = ev.accuracy_drop_elsewhere or {}
            row = {
                "part": p.name,
                "label": lab,
                "size": len(p),
                "core_size": len(core),
                "share_of_label_task": float(self.task_share[self.parts.index(p), self.task_names.index(lab)]),
                "faithfulness": ev.faithfulness,
                **interval_columns("faithfulness", ev.faithfulness_ci),
                "necessity": ev.necessity,
                **interval_columns("necessity", ev.necessity_ci),
                "accuracy_drop": ev.accuracy_full - ev.accuracy_ablated,
                "max_accuracy_drop_elsewhere": max(drops.values(), default=0.0),
            }
            if self.stability is not None:
                row["stability_jaccard"] = self.stability[self.parts.index(p)].mean_jaccard
            if out is not None:
                row |= {
                    "holdout_faithfulness": out.faithfulness,
                    **interval_columns("holdout_faithfulness", out.faithfulness_ci),
                }
            rows.append(row | {"components": " ".join(str(c) for c in sorted(p))})
        return pd.DataFrame(rows)


def factorize(
    model: Any,
    tasks: Sequence[Task],
    *,
    k: int | None = None,
    kinds: tuple[Kind, ...] | None = None,
    method: Scorer = "patch",
    ablation: Ablation = "mean",
    reference: Reference | None = None,
    k_max: int | None = None,
    progress: bool = False,
    checkpoint: str | Path | None = None,
    scorer: Scorer | None = None,
    holdout: float | None = None,
    stability: int = 0,
    seed: int = 0,
) -> Factorization:
    """Candidate sub-models across ``tasks``: NMF of per-prompt effects, each factor validated by ablation.

    Args:
        model: a TransformerLens model in eval mode.
        tasks: the behaviours (distinct names, the model's vocabulary); every prompt of every
            task is a row of the effect matrix.
        k: the number of sub-models; None chooses it by held-out cross-validation.
        kinds: component kinds (default: heads, and neurons where the model has MLPs: a whole
            MLP layer serves many behaviours, so it would sit in every part and blur the factors).
        method: per-prompt effects by exact noising patching (``"patch"``) or attribution
            (``"atp"``, ``"ig"``: one forward and backward, for big models).
        ablation: how a part is ablated to choose its members and validate it.
        reference: prompts for mean ablation (default: every task's corrupt prompts).
        k_max: largest k tried when choosing it (default: 3 per task, at most 12).
        progress: show progress bars.
        checkpoint: a folder for the scoring sweeps' checkpoints (one file per task, see
            :func:`tl_submodels.patch`): an interrupted factorize resumes its scoring from them;
            the factorisation and validation after it are rerun (they are deterministic).
        scorer: the old name of ``method`` (deprecated).
        holdout: the fraction of each task's prompts (drawn with ``seed``) kept out of everything: the
            parts are found and chosen on the rest and evaluated on them (``holdout_evaluations``).
        stability: rerun the factorisation (same k) on this many bootstrap resamples of every task's prompts
            (``Factorization.stability``).
        seed: seeds the holdout split and the resamples.

    Inside an initialised ``torch.distributed`` process group the scoring is shared out over
    the ranks; every rank then factors and validates the same matrix and returns the same result.

    Returns:
        A :class:`Factorization`: parts (whole sub-models) and their cores, labels, prompt x part
        usage, an evaluation per part.

    Raises:
        TLSubmodelsError: no tasks, tasks with equal names or another vocabulary, k out of range.

    Example:
        >>> model = tls.zoo.load("multitask-3l")  # doctest: +SKIP
        >>> tasks = [tls.zoo.task("multitask-3l", t, n=64) for t in ("induction", "addition")]  # doctest: +SKIP
        >>> f = tls.factorize(model, tasks)  # doctest: +SKIP
        >>> f.to_frame()  # doctest: +SKIP
    """
    info = tlmodel.check_model(model, ())
    tasks = check_tasks(tasks, info.d_vocab)
    if holdout is not None or stability:
        if isinstance(stability, bool) or not isinstance(stability, int) or stability < 0:
            raise TLSubmodelsError(f"stability is a number of bootstrap reruns (0 for none); got {stability!r}")
        splits = [split_prompts(t, holdout, seed) for t in tasks]
        chosen = [c for c, _ in splits]

        def run(ts: list[Task], k: int | None, first: bool) -> Factorization:  # the reruns are not checkpointed
            return factorize(model, ts, k=k, kinds=kinds, method=scorer or method, ablation=ablation,
                             reference=reference, k_max=k_max, progress=progress and first,
                             checkpoint=checkpoint if first else None)  # fmt: skip

        found = run(chosen, k, True)
        if holdout is not None:
            held = [h for _, h in splits if h is not None]
            held_ref = reference if reference is not None else [t.corrupt for t in held]
            checks = [
                evaluate(model, p, held[found.task_names.index(lab)], ablation=ablation, reference=held_ref,
                         others=[t for t in held if t.name != lab], seed=seed)
                for p, lab in zip(found.parts, found.labels, strict=True)
            ]  # fmt: skip
            found = dataclasses.replace(found, holdout_evaluations=checks)
        if stability:
            gen = torch.Generator().manual_seed(seed + 1)
            reruns = []
            for _ in tqdm(range(stability), desc="stability reruns", disable=not progress):
                resampled = [t.subset(torch.randint(0, t.batch, (t.batch,), generator=gen)) for t in chosen]
                reruns.append(run(resampled, len(found.parts), False).parts)
            found = dataclasses.replace(found, stability=parts_stability(found.parts, reruns, seed))
        return found
    if scorer is not None:
        renamed("factorize(scorer=...)", "factorize(method=...)")
        method = scorer
    if method not in ("patch", "atp", "ig"):
        raise TLSubmodelsError(f"unknown method {method!r}: choose 'patch', 'atp' or 'ig'")
    kinds = kinds or (("heads", "neurons") if info.has_mlps else ("heads",))
    device = tlmodel.first_param_device(model)
    tasks = [t.to(device) for t in tasks]

    # 1. Per-prompt effects (normalised by each task's clean-corrupt gap), each task's block
    #    scaled to the same size, so that no task dominates because its effects are larger.
    rows, prompt_task, keys = [], [], []
    # the columns: each kind's [layer, unit] tensor flattened, layer-major
    components = [c for kind in kinds for c in info.components((kind,))]
    for t in tqdm(tasks, desc="scoring tasks", disable=not progress):
        ckpt = None if checkpoint is None else Path(checkpoint) / f"{method}-{t.name}.ckpt"
        if method == "patch":
            s = patch(model, t, kinds=kinds, direction="noising", per_example=True, checkpoint=ckpt)
        else:
            s = attribute(model, t, method=method, kinds=kinds, direction="noising", per_example=True, checkpoint=ckpt)
        assert s.per_example is not None
        block = torch.cat([s.per_example[kind].reshape(t.batch, -1) for kind in kinds], 1)
        # every task weighs the same in the factorisation: its rows' mean L2 norm is 1
        rows.append(block / block.norm(dim=1).mean().clamp_min(1e-12))
        prompt_task += [t.name] * t.batch
        keys += [zlib.crc32(t.name.encode() + bytes(str(r.tolist()), "ascii")) for r in t.clean.cpu()]
    # Factorise the rows in a canonical order (by task name, then tokens), so that the order in
    # which prompts and tasks come cannot change the result; report them in the caller's order.
    tokens = [tuple(r.tolist()) for t in tasks for r in t.clean.cpu()]
    canon = sorted(range(len(tokens)), key=lambda i: (prompt_task[i], tokens[i]))
    back = torch.empty(len(canon), dtype=torch.long)
    back[torch.tensor(canon)] = torch.arange(len(canon))
    effects = torch.cat(rows).double()
    data = effects.abs()[canon]
    keys = [keys[i] for i in canon]
    n_prompts, n_comp = data.shape

    # 2. k: given, or chosen by held-out error (nmf.choose_k).
    k_errors: dict[int, float] = {}
    k_error_se: dict[int, float] = {}
    if k is None:
        k_hi = min(k_max or min(3 * len(tasks), 12), n_comp, n_prompts)
        k, k_errors, k_error_se = choose_k(data, keys, k_hi, progress=progress)
    elif not isinstance(k, int) or not 1 <= k <= min(n_comp, n_prompts):
        raise TLSubmodelsError(
            f"k={k!r} sub-models from {n_comp} components and {n_prompts} prompts: choose 1 <= k <= "
            f"{min(n_comp, n_prompts)}, or k=None to choose it by cross-validation"
        )
    w, h = nmf(data, k)

    w = w[back]  # back to the caller's prompt order
    # 3. Usage, task shares, labels.
    names = [t.name for t in tasks]
    task_of = torch.tensor([names.index(n) for n in prompt_task])
    scale = h.sum(1).clamp_min(1e-30)  # put the factors' size into W, so usage compares factors
    w, h = w * scale, h / scale[:, None]
    share = torch.stack([w[task_of == i].mean(0) for i in range(len(tasks))], 1)  # [k, task]
    share = share / share.sum(1, keepdim=True).clamp_min(1e-30)
    labels = [names[int(i)] for i in share.argmax(1)]
    usage = w / w.sum(1, keepdim=True).clamp_min(1e-30)

    # 4. Members by validation, then the evaluation of each part.
    ref = reference if reference is not None else [t.corrupt for t in tasks]
    ablator = Ablator(model, ablation=ablation, reference=None if ablation == "zero" else ref)
    runs = AblatedRuns(model, ablator, tasks)  # every set's validation runs through it
    base_acc = runs.accuracies([])
    parts: list[SubModel] = []
    cores: list[SubModel] = []
    for j in tqdm(range(k), desc="validating parts", disable=not progress):
        core = _choose_members(runs, h, j, components, share[j], base_acc)
        extent = _extent(runs, h, j, components, core, names.index(labels[j]))
        name = labels[j] if labels.count(labels[j]) == 1 else f"{labels[j]}-{labels[: j + 1].count(labels[j])}"
        how = f"({method} effects, NMF), {ablation}-ablation-validated; {float(share[j].max()):.0%} of its use is on {labels[j]!r}"
        parts.append(SubModel(components=extent, name=name, description=f"factorize: factor {j} of {k} {how}"))
        cores.append(
            SubModel(
                components=core,
                name=f"{name}-core",
                description=f"factorize: the necessary core of factor {j} of {k} {how}",
            )
        )
    evaluations = []
    for p, lab in zip(parts, labels, strict=True):
        own = tasks[names.index(lab)]
        evaluations.append(
            evaluate(model, p, own, ablation=ablation, reference=ref, others=[t for t in tasks if t.name != lab])
        )
    return Factorization(
        parts=parts,
        labels=labels,
        task_names=names,
        task_share=share.float(),
        usage=usage.float(),
        prompt_task=prompt_task,
        evaluations=evaluations,
        effects=effects.float(),
        components=components,
        loadings=h.float(),
        k_errors=k_errors,
        k_error_se=k_error_se,
        ablation=ablation,
        method=method,
        cores=cores,
    )


def _choose_members(
    runs: AblatedRuns,
    loadings: Tensor,
    j: int,
    components: list[Component],
    share: Tensor,
    base_acc: list[float],
) -> list[Component]:
    """The member set of factor ``j`` whose ablation best separates the factor's tasks from the rest.

    Objective of a set: the share-weighted accuracy lost on the tasks minus the largest loss on
    any task, weighted by how little the factor is used there. Candidates: thresholds on two
    rankings, by loading on factor ``j`` and by loading times the fraction of the component's
    total loading that factor ``j`` holds (which ranks shared components lower), halving by
    sqrt 2 from the top to 1/1024 of it. The best candidate, and separately the empty set, are
    then refined by validation: members whose removal does not lower the objective are dropped,
    and of the 32 most exclusive components the one that raises it most is added, while that
    helps. The better of the two results wins.
    """
    loading = loadings[j]
    exclusive = loading * loading / loadings.sum(0).clamp_min(1e-30)
    memo: dict[frozenset[int], float] = {}

    def score(members: frozenset[int]) -> float:
        if members not in memo:
            accs = runs.accuracies([components[c] for c in members])
            drops = torch.tensor([b - a for a, b in zip(accs, base_acc, strict=True)])
            memo[members] = float((share * drops).sum() - ((1 - share) * drops).max())
        return memo[members]

    def better(a: frozenset[int], b: frozenset[int]) -> bool:
        return _better(score, a, b)

    best: frozenset[int] = frozenset()
    for ranking in (loading, exclusive):
        order = ranking.argsort(descending=True).tolist()
        top = float(ranking[order[0]])
        for i in range(21 if top > 0 else 0):
            cand = frozenset(order[: int((ranking >= top * 2 ** (-i / 2)).sum())])
            if better(cand, best):
                best = cand
    pool = sorted(set(exclusive.argsort(descending=True).tolist()[:32]) | best)

    def refine(start: frozenset[int]) -> frozenset[int]:  # prune the least exclusive first
        return refine_by_validation(start, pool, score, prune_key=lambda c: float(exclusive[c]))

    # from the best threshold set, and by growing from nothing; the better one wins
    found = [refine(best), refine(frozenset())]
    best = found[1] if better(found[1], found[0]) else found[0]
    return [components[c] for c in sorted(best, key=lambda c: -float(loading[c]))]


def _extent(
    runs: AblatedRuns,
    loadings: Tensor,
    j: int,
    components: list[Component],
    core: list[Component],
    own: int,
) -> list[Component]:
    """Factor ``j``'s core grown until keeping only it restores ``EXTENT_TARGET`` of task ``own``, while specific."""
    full = runs.metrics([], only=[own])[0]
    nothing = runs.metrics([], keep_only=True, only=[own])[0]
    if abs(full - nothing) <= 1e-6 * max(1.0, abs(full)):
        return core  # nothing to restore

    seen: dict[frozenset[Component], float] = {}

    def faith(keep: list[Component]) -> float:  # memoised: the final trim revisits prefixes
        key = frozenset(keep)
        if key not in seen:
            seen[key] = (runs.metrics(keep, keep_only=True, only=[own])[0] - nothing) / (full - nothing)
        return seen[key]

    tasks = runs.tasks
    others = [i for i in range(len(tasks)) if i != own]
    full_metric = dict(zip(others, runs.metrics([], only=others), strict=True))
    full_acc = dict(zip(others, runs.accuracies([], only=others), strict=True))
    floor = dict(zip(others, runs.metrics([], keep_only=True, only=others), strict=True))

    def lost(i: int, final: Tensor) -> tuple[float, float]:
        """What task ``i`` loses: top-1 accuracy, and metric as a fraction of its full-to-all-ablated gap."""
        metric, acc = float(tasks[i].per_example(final).mean()), tasks[i].read_accuracy(final)
        gap = full_metric[i] - floor[i]
        return full_acc[i] - acc, (full_metric[i] - metric) / gap if abs(gap) > 1e-6 else 0.0

    def elsewhere(members: list[Component]) -> tuple[float, float]:
        """The most any other task loses (see ``lost``)."""
        losses = [lost(i, f) for i, f in zip(others, runs.finals(members, only=others), strict=True)]
        return max([0.0, *(a for a, _ in losses)]), max([0.0, *(m for _, m in losses)])

    # most loaded first: ranking by exclusive loading put in many components with tiny loadings,
    # whose small costs elsewhere added up on held-out prompts (measured: majority's extent 295-422
    # members, 11-12 points lost on another task's held-out prompts; by loading: 67 members, 0 lost)
    inside = set(core)
    loading = loadings[j]
    rest = [
        components[c]
        for c in loading.argsort(descending=True).tolist()
        if loading[c] > 0 and components[c] not in inside
    ]
    core_acc, core_metric = elsewhere(core)
    acc_bound = max(SPECIFIC, core_acc + SPECIFIC_SLACK)
    metric_bound = max(SPECIFIC_METRIC, core_metric + SPECIFIC_SLACK)

    order = list(others)  # the task that last failed is checked first: most candidates fail on one

    def specific(members: list[Component]) -> bool:
        for i in order:
            acc_lost, metric_lost = lost(i, runs.finals(members, only=[i])[0])
            if acc_lost > acc_bound or metric_lost > metric_bound:
                order.remove(i)
                order.insert(0, i)
                return False
        return True

    return grow_specific(core, rest, faith, specific, EXTENT_TARGET)


def _better(score: Callable[[frozenset[int]], float], a: frozenset[int], b: frozenset[int]) -> bool:
    """``a`` beats ``b``: a higher score, or as high and smaller."""
    return score(a) > score(b) + 1e-9 or (score(a) >= score(b) - 1e-9 and len(a) < len(b))


def refine_by_validation(
    start: frozenset[int],
    pool: Sequence[int],
    score: Callable[[frozenset[int]], float],
    *,
    prune_key: Callable[[int], float],
    rounds: int = 8,
    min_gain: float = 0.01,
) -> frozenset[int]:
    """Improve a component set by validation: drop members whose removal does not lower ``score``
    (in ``prune_key`` order), then add the one member of ``pool`` that raises it most, while that
    gains more than ``min_gain``; at most ``rounds`` rounds. ``score`` should be memoised.

    Example (a score that rewards holding 1 and 2 and penalises size)::

        >>> refine_by_validation(frozenset({0, 1}), [2, 3], lambda s: len(s & {1, 2}) - 0.1 * len(s),
        ...                      prune_key=lambda c: c)
        frozenset({1, 2})
    """
    cur = start
    for _ in range(rounds):
        for c in sorted(cur, key=prune_key):
            if len(cur) > 1 and _better(score, cur - {c}, cur):
                cur = cur - {c}
        grown = max((cur | {c} for c in pool if c not in cur), key=score, default=cur)
        if score(grown) <= score(cur) + min_gain:
            break
        cur = grown
    return cur


def atoms(circuits: Sequence[SubModel] | Mapping[str, SubModel]) -> list[SubModel]:
    """The Venn decomposition of task circuits: for each combination, the components in exactly those.

    Each atom is named by the circuits that share it (``"induction&successor"``); atoms are
    ordered by how many circuits share them (most first), then by name. Empty atoms are left out.

    Example:
        >>> a = SubModel(components=["L0H0", "L1H1"], name="a")
        >>> b = SubModel(components=["L0H0", "L2H3"], name="b")
        >>> [(x.name, sorted(map(str, x))) for x in atoms([a, b])]
        [('a&b', ['L0H0']), ('a', ['L1H1']), ('b', ['L2H3'])]
    """
    subs = list(circuits.values()) if isinstance(circuits, Mapping) else list(circuits)
    if not subs:
        raise TLSubmodelsError("atoms needs at least one circuit")
    names = [s.name for s in subs]
    if len(set(names)) != len(names):
        raise TLSubmodelsError(f"circuits need distinct names (they name the atoms); got {names}")
    groups: dict[tuple[str, ...], set[Component]] = {}
    for c in set().union(*(s.components for s in subs)):
        key = tuple(s.name for s in subs if c in s)
        groups.setdefault(key, set()).add(parse_component(c))
    ordered = sorted(groups.items(), key=lambda kv: (-len(kv[0]), "&".join(kv[0])))
    return [
        SubModel(components=comps, name="&".join(key), description=f"in exactly the circuits {list(key)}")
        for key, comps in ordered
    ]
