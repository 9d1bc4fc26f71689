"""Diff two models of one architecture (e.g. a harmful and a harmless fine-tune): what one uses and the other not.

For every task, each component is scored in both models by exact noising patching, in the
task's metric units (not normalised: one model may lack the behaviour, leaving nothing to
normalise by). Components are ranked by how much their effect differs. For each task, the
top-ranked components form a candidate sub-model, chosen by validation: sets are ablated in
both models, and the one whose ablation changes that task's accuracy most differently in the
two models, at the least cost to the other tasks, wins (the best prefix of the ranking, then
refined member by member as factorize refines its parts).

The candidates are the task's 32 top-ranked components (of its top 128) whose ablation alone
changes no other task's accuracy by more than 0.1 in either model. Patching measures a component on the
task's own prompts; ablation replaces it on every prompt, so a component can differ on one task
and, ablated, break another. Without that filter, on harmful-3l with the backdoor prompts of seed
5, the top-ranked neuron cost majority 94 points alone, every prefix of the ranking broke another
task, and no backdoor part was found; with it, the backdoor part is found on every sample we
tried (tests/test_diff_seeds.py). Validation runs go through :class:`tl_submodels.ablation.AblatedRuns`
(ablated forwards that start at the first layer a set changes).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from tl_submodels import model as tlmodel
from tl_submodels.ablation import AblatedRuns, Ablation, Ablator, Reference
from tl_submodels.components import Component, Kind
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.factorize import refine_by_validation
from tl_submodels.patching import patch
from tl_submodels.submodel import SubModel
from tl_submodels.summary import MAX_ITEMS, listed, summary_text
from tl_submodels.task import Task, check_tasks
from tl_submodels.values import Value, register

__all__ = ["ALONE_ELSEWHERE", "ARCH_FIELDS", "CANDIDATES", "AccuracyChange", "Difference", "ModelDiff", "diff"]

ARCH_FIELDS = ("n_layers", "n_heads", "d_head", "d_model", "d_mlp", "d_vocab")
CANDIDATES = 32  # a task's part is chosen from its 32 most differing components (of the top 128) ...
ALONE_ELSEWHERE = 0.1  # ... that, ablated alone, change no other task's accuracy by more than this in either model


class Difference(NamedTuple):
    """One ranked (component, task) pair of a :class:`ModelDiff`: the effect in model b minus model a."""

    component: Component
    task: str
    difference: float  # effect_b - effect_a, in the task's metric units


class AccuracyChange(NamedTuple):
    """A part's validation in one model on one task: the task's accuracy unablated and with the part ablated."""

    model: str  # "a" or "b"
    task: str
    full: float
    ablated: float


register("record:Difference", Difference)
register("record:AccuracyChange", AccuracyChange)


@dataclass(frozen=True, kw_only=True)
class ModelDiff(Value):
    """Components and sub-models whose effects differ between two models.

    Attributes:
        components: every scored component.
        effects_a, effects_b: ``[task, component]`` noising effect (clean metric minus the
            metric with the component patched from the corrupt run), in metric units.
        ranking: :class:`Difference` records ``(component, task, difference = effect_b - effect_a)``,
            largest ``|difference|`` first (over tasks scaled by their larger clean-corrupt gap).
        parts: one SubModel per task where the models differ, named ``"{task}"``.
        validation: per part, an :class:`AccuracyChange` per model (``"a"``/``"b"``) and task: the
            task's accuracy unablated and with the part ablated (``.accuracy(i, "b", task)``).
        gaps: per task, the larger of the two models' clean-corrupt metric gaps: the ranking divides
            each difference by it, so that tasks of different metric scales compare.

    Example:
        >>> d = tls.diff(harmless, harmful, tasks)  # doctest: +SKIP
        >>> d.parts[0].name, d.accuracy(0, "b", "backdoor")  # doctest: +SKIP
        ('backdoor', AccuracyChange(model='b', task='backdoor', full=1.0, ablated=0.0))
    """

    components: list[Component]
    task_names: list[str]
    effects_a: Float[Tensor, "task component"]
    effects_b: Float[Tensor, "task component"]
    ranking: list[Difference]
    parts: list[SubModel]
    validation: list[list[AccuracyChange]]
    scores: list[float]
    gaps: dict[str, float] = field(default_factory=dict)  # task -> the larger clean-corrupt gap (the ranking's scale)

    def accuracy(self, part: int, model: str, task: str) -> AccuracyChange:
        """Part ``part``'s validation in ``model`` (``"a"`` or ``"b"``) on ``task``."""
        for v in self.validation[part]:
            if v.model == model and v.task == task:
                return v
        raise TLSubmodelsError(
            f"no validation of part {part} in model {model!r} on task {task!r}; tasks: {self.task_names}"
        )

    def plot(self) -> Any:
        """The components whose effects differ most, per task (plotly); see :func:`tl_submodels.viz.diff_heatmap`.

        Example:
            >>> tls.diff(harmless, harmful, tasks).plot()  # doctest: +SKIP
        """
        from tl_submodels import viz

        return viz.diff_heatmap(self)

    def _repr_html_(self) -> str:
        return str(self.to_frame().to_html())

    def ranking_frame(self, top: int = 10) -> Any:
        """The ``top`` differing (component, task) pairs as ranked: the difference in metric units, and
        the value the ranking sorts by (the difference divided by the task's gap, ``gaps``).

        Example:
            >>> tls.diff(harmless, harmful, tasks).ranking_frame(5)  # doctest: +SKIP
        """
        import pandas as pd

        return pd.DataFrame(
            [
                {
                    "component": str(c),
                    "task": t,
                    "effect b - a": v,
                    "relative to the task's gap (ranked by |this|)": v / self.gaps[t] if self.gaps else float("nan"),
                }
                for c, t, v in self.ranking[:top]
            ]
        )

    def __repr__(self) -> str:
        rows = [
            (p.name, f"{len(p)} members, score {s:.2f}: {listed(sorted(p), 6)}")
            for p, s in zip(self.parts, self.scores, strict=True)
        ]
        top = ", ".join(f"{c} on {t} {v:+.2f}" for c, t, v in self.ranking[:5])
        return summary_text(
            f"ModelDiff over {len(self.task_names)} tasks ({', '.join(self.task_names)}): {len(self.components)} "
            f"components scored, {len(self.parts)} differing parts",
            [
                *rows[:MAX_ITEMS],
                ("largest differences (b - a)", top),
                ("all", ".to_frame(), .ranking; picture: .plot()"),
            ],
        )

    def to_frame(self) -> Any:
        """One row per part: task, size, accuracy change of its task in each model, largest change elsewhere."""
        import pandas as pd

        rows = []
        for i, (p, score) in enumerate(zip(self.parts, self.scores, strict=True)):
            row: dict[str, Any] = {"part": p.name, "size": len(p), "score": score}
            for m in ("a", "b"):
                own = self.accuracy(i, m, p.name)
                row[f"{m}: {p.name} acc"] = f"{own.full:.2f} -> {own.ablated:.2f}"
                row[f"{m}: max drop elsewhere"] = max(
                    (x.full - x.ablated for x in self.validation[i] if x.model == m and x.task != p.name), default=0.0
                )
            row["components"] = " ".join(str(c) for c in sorted(p))
            rows.append(row)
        return pd.DataFrame(rows)


def diff(
    model_a: Any,
    model_b: Any,
    tasks: Sequence[Task],
    *,
    kinds: tuple[Kind, ...] | None = None,
    ablation: Ablation = "mean",
    reference: Reference | None = None,
    min_score: float = 0.5,
    progress: bool = False,
) -> ModelDiff:
    """The components and sub-models whose effects differ between two models of one architecture.

    Args:
        model_a, model_b: TransformerLens models with the same shapes and vocabulary.
        tasks: behaviours to compare on (built for either model: same vocabulary).
        kinds: component kinds (default: heads, and neurons where the models have MLPs: a
            difference is found as its own part, and a whole MLP layer serves many behaviours).
        ablation: how parts are ablated to validate them (mean over ``reference``).
        reference: prompts for the means (default: every task's corrupt prompts).
        min_score: keep a task's part only if its validated accuracy difference (the task's
            accuracy change in one model minus in the other, less the largest change elsewhere)
            reaches this.
        progress: show progress bars.

    Raises:
        TLSubmodelsError: models of different architectures, no tasks, tasks of another vocabulary.

    Example:
        >>> a, b = tls.zoo.load("harmless-3l"), tls.zoo.load("harmful-3l")  # doctest: +SKIP
        >>> tasks = [tls.zoo.task("harmful-3l", t, n=64) for t in ("backdoor", "addition")]  # doctest: +SKIP
        >>> tls.diff(a, b, tasks).to_frame()  # doctest: +SKIP
    """
    info_a, info_b = tlmodel.check_model(model_a, ()), tlmodel.check_model(model_b, ())
    differ = [
        f"{f}: {getattr(info_a, f)} vs {getattr(info_b, f)}"
        for f in ARCH_FIELDS
        if getattr(info_a, f) != getattr(info_b, f)
    ]
    if differ:
        raise TLSubmodelsError(
            "diff compares two models of one architecture (component by component); these differ in "
            + "; ".join(differ)
        )
    tasks = check_tasks(tasks, info_a.d_vocab)
    names = [t.name for t in tasks]
    kinds = kinds or (("heads", "neurons") if info_a.has_mlps else ("heads",))
    components = [c for kind in kinds for c in info_a.components((kind,))]

    def effects(model: Any) -> tuple[Tensor, list[float]]:
        rows, gaps = [], []
        for t in tasks:
            s = patch(model, t.to(tlmodel.first_param_device(model)), kinds=kinds, direction="noising",
                      require_gap=False, progress=progress)  # fmt: skip
            raw = torch.cat([getattr(s, f"raw_{k}").reshape(-1) for k in kinds])
            rows.append(s.clean_metric - raw)
            gaps.append(abs(s.clean_metric - s.corrupt_metric))
        return torch.stack(rows), gaps

    eff_a, gaps_a = effects(model_a)
    eff_b, gaps_b = effects(model_b)
    scale = torch.tensor([max(a, b, 1e-6) for a, b in zip(gaps_a, gaps_b, strict=True)])[:, None]
    delta = eff_b - eff_a
    rel = (delta / scale).abs()
    flat = rel.flatten().argsort(descending=True).tolist()
    ranking = [
        Difference(components[i % len(components)], names[i // len(components)], float(delta.flatten()[i]))
        for i in flat
    ]

    ref = reference if reference is not None else [t.corrupt for t in tasks]
    models = {"a": model_a, "b": model_b}
    runs = {
        m: AblatedRuns(
            model,
            Ablator(model, ablation=ablation, reference=None if ablation == "zero" else ref),
            [t.to(tlmodel.first_param_device(model)) for t in tasks],
        )
        for m, model in models.items()
    }

    seen: dict[frozenset[int], dict[str, list[float]]] = {}  # every task's search asks about some of the same sets

    def accuracies(members: frozenset[int]) -> dict[str, list[float]]:
        if members not in seen:
            seen[members] = {m: runs[m].accuracies([components[c] for c in sorted(members)]) for m in models}
        return seen[members]

    base = accuracies(frozenset())
    parts, validation, scores = [], [], []

    def choose(ti: int) -> tuple[float, list[int], dict[str, list[float]]]:
        """Task ``ti``'s part: the best prefix of its candidates (sizes 1, 2, 4, ...), refined by validation
        (members that do not help are dropped; of the 32 top candidates, the best is added while that helps).

        A set's score: how differently its ablation changes the task's accuracy in the two models,
        less the largest change on any other task in either model. Returns score, members, accuracies.
        """
        memo: dict[frozenset[int], tuple[float, float, dict[str, list[float]]]] = {}

        def validated(members: frozenset[int]) -> tuple[float, float, dict[str, list[float]]]:
            """(score, the largest accuracy change on another task in either model, accuracies)."""
            if members not in memo:
                acc = accuracies(members)
                change = {m: [b - a for b, a in zip(base[m], acc[m], strict=True)] for m in models}
                own = abs(change["a"][ti] - change["b"][ti])
                elsewhere = max([abs(change[m][j]) for m in models for j in range(len(tasks)) if j != ti], default=0.0)
                memo[members] = (own - elsewhere, elsewhere, acc)
            return memo[members]

        def score(members: frozenset[int]) -> float:
            return validated(members)[0]

        # Candidates: the most differing components whose ablation alone spares the other tasks. The
        # effects are measured by patching on each task's own prompts, the validation by ablation over
        # every task's: a component can differ on this task and, ablated, break another one (measured on
        # harmful-3l, backdoor prompts of seed 5: the top-ranked neuron cost majority 94 points alone).
        ranked = rel[ti].argsort(descending=True).tolist()
        order: list[int] = []
        for c in ranked[: 4 * CANDIDATES]:
            if len(order) < CANDIDATES and validated(frozenset([c]))[1] <= ALONE_ELSEWHERE:
                order.append(c)
        order = order or ranked
        rank = {c: r for r, c in enumerate(order)}

        sizes = [2**i for i in range(len(order).bit_length())]  # 1, 2, 4, ... up to len(order)
        start = max((frozenset(order[:n]) for n in sizes), key=lambda p: (score(p), -len(p)))
        chosen = refine_by_validation(start, order[:32], score, prune_key=lambda c: -rank[c])
        return score(chosen), sorted(chosen, key=rank.__getitem__), validated(chosen)[2]

    for ti, t in enumerate(tasks):
        score_, members, acc = choose(ti)
        if score_ < min_score:
            continue
        n = len(members)
        parts.append(
            SubModel(
                components=[components[c] for c in members],
                name=t.name,
                description=f"diff: {n} components whose {t.name!r} effects differ most between the models, "
                f"chosen by validation; score {score_:.2f}",
            )
        )
        validation.append([AccuracyChange(m, tn, base[m][j], acc[m][j]) for m in models for j, tn in enumerate(names)])
        scores.append(score_)
    order = sorted(range(len(parts)), key=lambda i: -scores[i])
    return ModelDiff(
        components=components,
        task_names=names,
        effects_a=eff_a,
        effects_b=eff_b,
        ranking=ranking,
        parts=[parts[i] for i in order],
        validation=[validation[i] for i in order],
        scores=[scores[i] for i in order],
        gaps={n: float(g) for n, g in zip(names, scale[:, 0].tolist(), strict=True)},
    )
