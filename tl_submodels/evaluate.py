"""Validate a sub-model by ablation: faithfulness, necessity and size.

faithfulness = (m(S kept, rest ablated) - m(all ablated)) / (m(full) - m(all ablated)): how much
of the model's behaviour the sub-model carries on its own. necessity = (m(full) - m(S ablated)) /
(m(full) - m(all ablated)): how much the behaviour is lost without it. All runs are on the clean
prompts; "ablated" uses the chosen ablation with the task's corrupt prompts as reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from jaxtyping import Int
from torch import Tensor

from tl_submodels import model as tlmodel
from tl_submodels.ablation import Ablation, Ablator, complement
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.submodel import SubModel
from tl_submodels.task import Task


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """How well a sub-model explains a task, measured by ablation.

    Example:
        >>> ev = tls.evaluate(model, circuit, task, ablation="mean")  # doctest: +SKIP
        >>> round(ev.faithfulness, 2), ev.size  # doctest: +SKIP
        (0.97, 5)
    """

    faithfulness: float
    necessity: float
    specificity: dict[str, float] | None = None
    size: int
    fraction: float  # size / number of components the model has in the same universe
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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluate(
    model: Any,
    sub: SubModel,
    task: Task,
    *,
    ablation: Ablation = "mean",
    reference: Int[Tensor, "batch pos"] | None = None,
) -> Evaluation:
    """Faithfulness, necessity and size of ``sub`` on ``task``.

    Args:
        model: a TransformerLens model in eval mode.
        sub: the sub-model to validate.
        task: the behaviour; runs are on ``task.clean``.
        ablation: how removed components are replaced (see :func:`tl_submodels.ablation_hooks`).
        reference: tokens for mean/resample ablation (default: ``task.corrupt``).

    Raises:
        TLSubmodelsError: when ablating everything does not change the metric (nothing to measure).

    Example:
        >>> ev = tls.evaluate(model, tls.SubModel(components=["L1H1"]), task)  # doctest: +SKIP
    """
    tlmodel.check_model(model, ())
    sub.validate(model)
    task = task.to(tlmodel.first_param_device(model))
    ref = task.corrupt if reference is None else reference
    if ablation == "patch":
        ref = task.corrupt
    ablator = Ablator(model, ablation=ablation, reference=None if ablation == "zero" else ref)

    def run(hooks: list) -> tuple[float, float]:
        logits = tlmodel.run_logits(model, task.clean, hooks)
        return float(task.metric(logits)), task.accuracy(logits)

    full, acc_full = run([])
    kept, acc_kept = run(ablator.hooks(sub, keep_only=True))
    removed, acc_removed = run(ablator.hooks(sub))
    nothing, _ = run(ablator.hooks([], keep_only=True))
    denom = full - nothing
    if abs(denom) <= 1e-6 * max(1.0, abs(full)):
        raise TLSubmodelsError(
            f"ablating every component leaves the metric at {full:.4g}: nothing to attribute. "
            "Try another ablation or reference."
        )
    universe = len(complement(model, SubModel(name="empty")))
    return Evaluation(
        faithfulness=(kept - nothing) / denom,
        necessity=(full - removed) / denom,
        size=len(sub),
        fraction=len(sub) / max(1, universe),
        metric_full=full,
        metric_kept=kept,
        metric_ablated=removed,
        metric_all_ablated=nothing,
        accuracy_full=acc_full,
        accuracy_kept=acc_kept,
        accuracy_ablated=acc_removed,
        ablation=ablation,
        submodel=sub.name,
        task=task.name,
    )
