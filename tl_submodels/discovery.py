"""Discovery: from scores to a sub-model that carries the behaviour.

``find_circuit`` ranks components, grows a sub-model in rank order until keep-only faithfulness
reaches the target, then drops every member the target does not need. Faithfulness is always
measured by ablation, so the ranking decides only how small the result is and how much work it
takes: ``method="exact"`` ranks by exact patching of every component; ``"attribution+exact"``
ranks by attribution patching (one forward and backward), grows on that ranking, then patches
exactly only the members it grew and prunes them in the order of their exact effects.
"""

from __future__ import annotations

from typing import Any, Literal

from tqdm import tqdm

from tl_submodels import model as tlmodel
from tl_submodels.ablation import Ablation, Ablator
from tl_submodels.attribution import attribute
from tl_submodels.components import Component, Kind
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.patching import patch
from tl_submodels.scores import Scores
from tl_submodels.submodel import SubModel
from tl_submodels.task import Task

LINEAR_SCAN = 64
Method = Literal["exact", "attribution+exact"]


def find_circuit(
    model: Any,
    task: Task,
    *,
    target: float = 0.9,
    ablation: Ablation = "mean",
    kinds: tuple[Kind, ...] | None = None,
    scores: Scores | None = None,
    method: Method = "exact",
    name: str | None = None,
    progress: bool = False,
) -> SubModel:
    """The smallest-found sub-model whose keep-only faithfulness reaches ``target``.

    Args:
        model: a TransformerLens model in eval mode.
        task: the behaviour to explain.
        target: faithfulness to reach, in (0, 1].
        ablation: how the rest of the model is ablated (reference: ``task.corrupt``).
        kinds: component kinds to rank (default: heads, and mlps where the model has MLPs).
        scores: precomputed scores to rank by (default: computed as ``method`` says).
        method: ``"exact"`` (patch every component) or ``"attribution+exact"`` (rank by
            attribution, patch exactly only the candidates needed).
        name: the sub-model's name (default ``"{task.name}-circuit"``).
        progress: show progress bars.

    Returns:
        A SubModel; its description records the faithfulness reached.

    Raises:
        TLSubmodelsError: a target outside (0, 1], or one the ranked components cannot reach.

    Example:
        >>> model = tls.zoo.load("induction-2l")
        >>> task = tls.zoo.task("induction-2l", "induction", n=32)
        >>> circuit = tls.find_circuit(model, task, target=0.9)
        >>> len(circuit) <= 8
        True
    """
    if not 0 < target <= 1:
        raise TLSubmodelsError(f"target is a faithfulness in (0, 1], got {target}")
    if method not in ("exact", "attribution+exact"):
        raise TLSubmodelsError(f"unknown method {method!r}: choose 'exact' or 'attribution+exact'")
    info = tlmodel.check_model(model, ())
    kinds = kinds or info.kinds()
    if scores is None:
        scorer = patch if method == "exact" else attribute
        scores = scorer(model, task, kinds=kinds, progress=progress)
    ranked = list(dict.fromkeys(c.without_pos() for c, _ in scores.top(10**9)))
    task = task.to(tlmodel.first_param_device(model))
    ablator = Ablator(model, ablation=ablation, reference=None if ablation == "zero" else task.corrupt)

    def metric(keep: list[Component]) -> float:
        hooks = ablator.hooks(keep, keep_only=True)
        return float(task.metric(tlmodel.run_logits(model, task.clean, hooks)))

    full = float(task.metric(tlmodel.run_logits(model, task.clean)))
    nothing = metric([])
    if abs(full - nothing) <= 1e-6 * max(1.0, abs(full)):
        raise TLSubmodelsError(
            f"ablating every component leaves the metric at {full:.4g}; there is no behaviour to find a circuit for"
        )

    seen: dict[frozenset[Component], float] = {}

    def faith(keep: list[Component]) -> float:  # memoised: growing and pruning revisit sets
        key = frozenset(keep)
        if key not in seen:
            seen[key] = (metric(keep) - nothing) / (full - nothing)
        return seen[key]

    members = _grow(ranked, faith, target)
    if faith(members) < target:  # _grow ends at the whole ranking when no prefix reaches the target
        raise TLSubmodelsError(
            f"keeping all {len(ranked)} ranked components reaches faithfulness {faith(ranked):.3f} < target {target}. "
            "Rank more kinds (kinds=('heads', 'mlps')) or lower the target."
        )
    if method == "attribution+exact" and scores.method != "patch":
        # Confirm with exact patching of the members only: their exact effects order the pruning.
        exact = patch(model, task, kinds=kinds, components=members, progress=progress)
        members = [c for c, _ in exact.top(len(members))]
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


def _grow(ranked: list[Component], faith: Any, target: float) -> list[Component]:
    """The shortest prefix of ``ranked`` whose faithfulness reaches ``target``; all of it if none does."""
    n = len(ranked)
    if n <= LINEAR_SCAN:
        k = next((k for k in range(1, n + 1) if faith(ranked[:k]) >= target), n)
    else:  # doubling, then bisection
        hi = 1
        while hi < n and faith(ranked[:hi]) < target:
            hi *= 2
        lo, hi = hi // 2, min(hi, n)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if faith(ranked[:mid]) >= target else (mid, hi)
        k = hi
    return ranked[:k]
