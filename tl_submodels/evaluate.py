"""Validate a sub-model by ablation: faithfulness, necessity, specificity and size.

faithfulness = (m(S kept, rest ablated) - m(all ablated)) / (m(full) - m(all ablated)): how much
of the model's behaviour the sub-model carries on its own. necessity = (m(full) - m(S ablated)) /
(m(full) - m(all ablated)): how much the behaviour is lost without it. specificity: the same
necessity measured on each other task, and the accuracy each loses: a specific sub-model has
high necessity on its task and near zero on the others. minimality (on request): for each
member, the faithfulness lost when only it is left out. All runs are on the clean prompts;
"ablated" uses the chosen ablation with the task's corrupt prompts as reference.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from tl_submodels import model as tlmodel
from tl_submodels.ablation import AblatedRuns, Ablation, Ablator, Reference
from tl_submodels.components import Component, forward_order
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.submodel import SubModel
from tl_submodels.summary import summary_html, summary_text
from tl_submodels.task import Task
from tl_submodels.values import Value

__all__ = ["Evaluation", "evaluate"]


@dataclass(frozen=True, kw_only=True)
class Evaluation(Value):
    """How well a sub-model explains a task, measured by ablation.

    Example:
        >>> ev = tls.evaluate(model, circuit, task, ablation="mean")  # doctest: +SKIP
        >>> round(ev.faithfulness, 2), ev.size  # doctest: +SKIP
        (0.97, 5)
    """

    faithfulness: float
    necessity: float
    specificity: dict[str, float] | None = None  # other task -> its necessity (fraction of its metric lost)
    accuracy_drop_elsewhere: dict[str, float] | None = None  # other task -> accuracy lost
    size: int
    fraction: float  # size / the model's components of the kinds the sub-model holds (heads, neurons, MLPs)
    metric_full: float
    metric_kept: float
    metric_ablated: float  # the sub-model ablated
    metric_all_ablated: float
    accuracy_full: float
    accuracy_kept: float
    accuracy_ablated: float
    ablation: str
    submodel: str
    task: str
    # member -> the faithfulness lost when only that member is left out of the kept sub-model
    # (evaluate(..., minimality=True)); a member near 0 adds nothing the others do not already carry
    minimality: dict[str, float] | None = None

    def plot(self) -> Any:
        """Bars of faithfulness, necessity and accuracies (plotly); see :func:`tl_submodels.viz.evaluation_bars`.

        Example:
            >>> tls.evaluate(model, circuit, task).plot()  # doctest: +SKIP
        """
        from tl_submodels import viz

        return viz.evaluation_bars(self)

    def _summary(self) -> tuple[str, list[tuple[str, str]]]:
        rows = [
            ("faithfulness", f"{self.faithfulness:.3f} (share of the metric restored keeping only the sub-model)"),
            ("necessity", f"{self.necessity:.3f} (share lost ablating it)"),
            ("size", f"{self.size} ({self.fraction:.1%} of the components)"),
            (
                "accuracy",
                f"full {self.accuracy_full:.2f}, kept only {self.accuracy_kept:.2f}, ablated {self.accuracy_ablated:.2f}",
            ),
        ]
        if self.minimality:
            least = sorted(self.minimality.items(), key=lambda kv: kv[1])[:5]
            rows.append(("least needed members", ", ".join(f"{c} {v:+.2f}" for c, v in least)))
        if self.accuracy_drop_elsewhere:
            worst = sorted(self.accuracy_drop_elsewhere.items(), key=lambda kv: -kv[1])[:5]
            rows.append(("accuracy lost elsewhere", ", ".join(f"{t} {v:+.2f}" for t, v in worst)))
        return f"Evaluation of {self.submodel} on {self.task} ({self.ablation} ablation)", rows

    def __repr__(self) -> str:
        return summary_text(*self._summary())

    def _repr_html_(self) -> str:
        return summary_html(*self._summary())


class _Necessity(NamedTuple):
    """One task's metric and accuracy: full, with the sub-model removed, and with everything ablated."""

    full: float
    removed: float
    nothing: float
    accuracy_full: float
    accuracy_removed: float


def evaluate(
    model: Any,
    sub: SubModel | Iterable[Component | str],
    task: Task,
    *,
    ablation: Ablation = "mean",
    reference: Reference | None = None,
    others: Sequence[Task] = (),
    minimality: bool = False,
) -> Evaluation:
    """Faithfulness, necessity and size of ``sub`` on ``task``; specificity over ``others``.

    Args:
        model: a TransformerLens model in eval mode.
        sub: the sub-model to validate (a SubModel, or components / their strings: ``["L0H0", "L1H2"]``).
        task: the behaviour; runs are on ``task.clean``.
        ablation: how removed components are replaced (see :func:`tl_submodels.ablation_hooks`).
        reference: tokens for mean/resample ablation (default: ``task.corrupt``); the same
            ablation values are used on the other tasks. Patch ablation takes none: each clean
            prompt is patched with its own corrupt prompt.
        others: other tasks: ``specificity[name]`` is the sub-model's necessity on each, and
            ``accuracy_drop_elsewhere[name]`` the accuracy each loses when it is ablated.
        minimality: also measure, for each member, the faithfulness lost when only it is left
            out of the kept sub-model (``Evaluation.minimality``; one forward per member).

    Raises:
        TLSubmodelsError: when ablating everything does not change the metric (nothing to measure),
            or another task has the same name or another vocabulary.

    Example:
        >>> ev = tls.evaluate(model, tls.SubModel(components=["L1H1"]), task)  # doctest: +SKIP
        >>> ev = tls.evaluate(model, part, add_task, others=[succ_task, maj_task])  # doctest: +SKIP
        >>> ev.specificity  # doctest: +SKIP
        {'successor': 0.02, 'majority': -0.01}
    """
    tlmodel.check_model(model, ())
    sub = SubModel.of(sub).validate(model)
    task = task.to(tlmodel.first_param_device(model))
    if ablation == "patch" and reference is not None:
        raise TLSubmodelsError(
            "ablation='patch' patches each clean prompt with its own corrupt prompt (task.corrupt), so it takes no "
            "reference=; drop it, or use ablation='mean' or 'resample' with that reference"
        )
    ref = task.corrupt if reference is None else reference
    ablator = Ablator(model, ablation=ablation, reference=None if ablation == "zero" else ref)

    names = [t.name for t in others]
    if task.name in names or len(set(names)) != len(names):
        raise TLSubmodelsError(f"tasks need distinct names to report specificity; got {[task.name, *names]}")
    for t in others:
        if t.d_vocab != task.d_vocab:
            raise TLSubmodelsError(f"task {t.name!r} has d_vocab={t.d_vocab}, task {task.name!r} {task.d_vocab}")

    def run(t: Task, hooks: list) -> tuple[float, float]:
        logits = tlmodel.run_logits(model, t.clean, hooks)
        return float(t.metric(logits)), t.accuracy(logits)

    def necessity(t: Task) -> _Necessity:
        full, acc_full = run(t, [])
        removed, acc_removed = run(t, ablator.hooks(sub))
        nothing, _ = run(t, ablator.hooks([], keep_only=True))
        if abs(full - nothing) <= 1e-6 * max(1.0, abs(full)):
            raise TLSubmodelsError(
                f"task {t.name!r}: ablating every component leaves the metric at {full:.4g}: nothing to attribute. "
                "Try another ablation or reference."
            )
        return _Necessity(full, removed, nothing, acc_full, acc_removed)

    own = necessity(task)
    full, removed, nothing, denom = own.full, own.removed, own.nothing, own.full - own.nothing
    kept, acc_kept = run(task, ablator.hooks(sub, keep_only=True))
    specificity, drops = {}, {}
    for t in others:
        n = necessity(t.to(task.clean.device))
        specificity[t.name] = (n.full - n.removed) / (n.full - n.nothing)
        drops[t.name] = n.accuracy_full - n.accuracy_removed
    info = tlmodel.model_info(model)
    least: dict[str, float] | None = None
    if minimality:
        runs = AblatedRuns(model, ablator, [task])
        least = {
            str(c): (kept - runs.metrics([m for m in sub if m != c], keep_only=True)[0]) / denom
            for c in sorted(sub, key=forward_order)
        }
    universe = sum(len(info.components((kind,))) for kind in sorted({c.kind for c in sub}))
    return Evaluation(
        faithfulness=(kept - nothing) / denom,
        necessity=(full - removed) / denom,
        specificity=specificity if others else None,
        accuracy_drop_elsewhere=drops if others else None,
        size=len(sub),
        fraction=len(sub) / max(1, universe),
        metric_full=full,
        metric_kept=kept,
        metric_ablated=removed,
        metric_all_ablated=nothing,
        accuracy_full=own.accuracy_full,
        accuracy_kept=acc_kept,
        accuracy_ablated=own.accuracy_removed,
        ablation=ablation,
        submodel=sub.name,
        task=task.name,
        minimality=least,
    )
