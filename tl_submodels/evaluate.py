"""Validate a sub-model by ablation: faithfulness, necessity, specificity and size.

faithfulness = (m(S kept, rest ablated) - m(all ablated)) / (m(full) - m(all ablated)): how much
of the model's behaviour the sub-model carries on its own. necessity = (m(full) - m(S ablated)) /
(m(full) - m(all ablated)): how much the behaviour is lost without it. specificity: the same
necessity measured on each other task, and the accuracy each loses: a specific sub-model has
high necessity on its task and near zero on the others. minimality (on request): for each
member, the faithfulness lost when only it is left out. All runs are on the clean prompts;
"ablated" uses the chosen ablation with the task's corrupt prompts as reference.

Uncertainty: every value is a mean (or a ratio of means) over the task's prompts, so each carries a
BCa bootstrap interval over the prompts (``faithfulness_ci``, ...; :mod:`tl_submodels.stats`),
computed from the per-prompt values of the same runs, with no more forwards. The ablation values
(the reference's means) are held fixed: the interval is over the prompts evaluated, not over the
reference. ``baselines=n`` measures ``n`` random sub-models of the same size and kinds (and the one of
the largest weight norms) and places the sub-model's faithfulness among them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from tl_submodels import model as tlmodel
from tl_submodels import stats
from tl_submodels.ablation import AblatedRuns, Ablation, Ablator, Reference
from tl_submodels.components import Component, Kind, forward_order
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.submodel import SubModel
from tl_submodels.summary import summary_html, summary_text
from tl_submodels.task import Task
from tl_submodels.values import Value

__all__ = ["Baselines", "Evaluation", "evaluate", "interval_columns"]


@dataclass(frozen=True, kw_only=True)
class Baselines(Value):
    """What sub-models of the same size and kinds do on the same task when chosen without looking.

    ``faithfulness`` and ``necessity`` of ``n`` sub-models drawn uniformly at random (``seed``; each
    another set than the sub-model evaluated), and of
    the one holding each kind's components of the largest weight norm (``norm_*``: a head's
    ``||W_O||``, a neuron's output row, an MLP layer's ``W_out``).

    Example:
        >>> ev = tls.evaluate(model, circuit, task, baselines=100)  # doctest: +SKIP
        >>> ev.baselines.faithfulness.shape, ev.baseline_percentile  # doctest: +SKIP
        (torch.Size([100]), 100.0)
    """

    faithfulness: Float[Tensor, " n"]
    necessity: Float[Tensor, " n"]
    norm_faithfulness: float
    norm_necessity: float
    seed: int


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
    # BCa bootstrap intervals over the task's prompts, (low, high) at ``ci_level`` (None: evaluate(..., n_boot=None))
    faithfulness_ci: tuple[float, float] | None = None
    necessity_ci: tuple[float, float] | None = None
    accuracy_full_ci: tuple[float, float] | None = None
    accuracy_kept_ci: tuple[float, float] | None = None
    accuracy_ablated_ci: tuple[float, float] | None = None
    specificity_ci: dict[str, tuple[float, float]] | None = None  # other task -> interval of its necessity
    ci_level: float = 0.95
    n_boot: int | None = None
    # random sub-models of the same size and kinds (evaluate(..., baselines=n)), and where this one's
    # faithfulness falls among them: the percentage of them it beats (ties count half)
    baselines: Baselines | None = None
    baseline_percentile: float | None = None

    def plot(self) -> Any:
        """Bars of faithfulness, necessity and accuracies (plotly); see :func:`tl_submodels.viz.evaluation_bars`.

        Example:
            >>> tls.evaluate(model, circuit, task).plot()  # doctest: +SKIP
        """
        from tl_submodels import viz

        return viz.evaluation_bars(self)

    def _summary(self) -> tuple[str, list[tuple[str, str]]]:
        rows = [
            (
                "faithfulness",
                f"{self.faithfulness:.3f}{_ci(self.faithfulness_ci)} (share of the metric restored keeping only the "
                "sub-model)",
            ),
            ("necessity", f"{self.necessity:.3f}{_ci(self.necessity_ci)} (share lost ablating it)"),
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
        if self.baselines is not None and self.baseline_percentile is not None:
            b = self.baselines
            rows.append(
                (
                    "against random",
                    f"beats {self.baseline_percentile:.1f}% of {len(b.faithfulness)} random sub-models of its size and "
                    f"kinds (their faithfulness: median {float(b.faithfulness.median()):.3f}, max "
                    f"{float(b.faithfulness.max()):.3f}); largest weight norms: {b.norm_faithfulness:.3f}",
                )
            )
        if self.n_boot:
            rows.append(("intervals", f"{self.ci_level:.0%} BCa bootstrap over the prompts ({self.n_boot} resamples)"))
        return f"Evaluation of {self.submodel} on {self.task} ({self.ablation} ablation)", rows

    def __repr__(self) -> str:
        return summary_text(*self._summary())

    def _repr_html_(self) -> str:
        return summary_html(*self._summary())


def interval_columns(name: str, interval: tuple[float, float] | None) -> dict[str, float]:
    """``{name_low, name_high}`` for a table row, or nothing when there is no interval.

    Example:
        >>> interval_columns("faithfulness", (0.9, 0.95))
        {'faithfulness_low': 0.9, 'faithfulness_high': 0.95}
    """
    return {} if interval is None else {f"{name}_low": interval[0], f"{name}_high": interval[1]}


def _ci(interval: tuple[float, float] | None) -> str:
    return "" if interval is None else f" [{interval[0]:.3f}, {interval[1]:.3f}]"


class _Run(NamedTuple):
    """Each prompt's metric and accuracy in one run."""

    metric: Float[Tensor, " batch"]
    accuracy: Float[Tensor, " batch"]


class _Necessity(NamedTuple):
    """One task's runs: full, with the sub-model removed, and with everything ablated."""

    full: _Run
    removed: _Run
    nothing: _Run

    def value(self) -> float:
        full, removed, nothing = (float(r.metric.mean()) for r in self)
        return (full - removed) / (full - nothing)

    def interval(self, n_boot: int, level: float, seed: int) -> tuple[float, float]:
        columns = torch.stack([self.full.metric, self.removed.metric, self.nothing.metric], 1)
        return _pair(stats.bca(columns, _necessity, n_boot=n_boot, level=level, seed=seed))


def _necessity(full: Tensor, removed: Tensor, nothing: Tensor) -> Tensor:
    return (full - removed) / (full - nothing)


def _mean(x: Tensor) -> Tensor:
    return x


def _pair(ends: tuple[Tensor, Tensor]) -> tuple[float, float]:
    return float(ends[0]), float(ends[1])


def _mean_ci(x: Float[Tensor, " batch"], n_boot: int, level: float, seed: int) -> tuple[float, float]:
    return _pair(stats.bca(x[:, None], _mean, n_boot=n_boot, level=level, seed=seed))


def evaluate(
    model: Any,
    sub: SubModel | Iterable[Component | str],
    task: Task,
    *,
    ablation: Ablation = "mean",
    reference: Reference | None = None,
    others: Sequence[Task] = (),
    minimality: bool = False,
    n_boot: int | None = stats.DEFAULT_N_BOOT,
    level: float = 0.95,
    baselines: int = 0,
    seed: int = 0,
) -> Evaluation:
    """Faithfulness, necessity and size of ``sub`` on ``task``; specificity over ``others``; intervals and baselines.

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
        n_boot: bootstrap resamples of the prompts for the ``*_ci`` intervals (BCa, from the
            per-prompt values of the same runs: no more forwards); None for none.
        level: the intervals' confidence level.
        baselines: this many random sub-models of the same size and kinds, and the one of the largest
            weight norms, measured the same way (``Evaluation.baselines``; two forwards each), and this
            one's percentile among them (``Evaluation.baseline_percentile``).
        seed: seeds the resamples and the random sub-models.

    Raises:
        TLSubmodelsError: when ablating everything does not change the metric (nothing to measure),
            another task has the same name or another vocabulary, ``n_boot`` < 2, ``level`` outside
            (0, 1), or a task has fewer than 2 prompts to resample.

    Example:
        >>> ev = tls.evaluate(model, tls.SubModel(components=["L1H1"]), task)  # doctest: +SKIP
        >>> ev.faithfulness, ev.faithfulness_ci  # doctest: +SKIP
        (0.41, (0.35, 0.47))
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
    if n_boot is not None:
        stats.check_n_boot(n_boot)
        if not 0 < level < 1:
            raise TLSubmodelsError(f"level is a confidence level in (0, 1), for example 0.95; got {level!r}")
    if isinstance(baselines, bool) or not isinstance(baselines, int) or baselines < 0:
        raise TLSubmodelsError(
            f"baselines is a number of random sub-models to compare with (0 for none); got {baselines!r}"
        )
    ref = task.corrupt if reference is None else reference
    ablator = Ablator(model, ablation=ablation, reference=None if ablation == "zero" else ref)

    names = [t.name for t in others]
    if task.name in names or len(set(names)) != len(names):
        raise TLSubmodelsError(f"tasks need distinct names to report specificity; got {[task.name, *names]}")
    for t in (task, *others):
        if t.d_vocab != task.d_vocab:
            raise TLSubmodelsError(f"task {t.name!r} has d_vocab={t.d_vocab}, task {task.name!r} {task.d_vocab}")
        if n_boot is not None and t.batch < 2:
            raise TLSubmodelsError(
                f"task {t.name!r} has {t.batch} prompt: intervals resample the prompts and need at least 2; "
                "add prompts, or pass n_boot=None"
            )

    def run(t: Task, hooks: list) -> _Run:
        final = t.final_logits(tlmodel.run_logits(model, t.clean, hooks))
        return _Run(t.per_example(final).detach().double().cpu(), t.per_example_accuracy(final).double().cpu())

    def necessity(t: Task) -> _Necessity:
        n = _Necessity(run(t, []), run(t, ablator.hooks(sub)), run(t, ablator.hooks([], keep_only=True)))
        full, nothing = float(n.full.metric.mean()), float(n.nothing.metric.mean())
        if abs(full - nothing) <= 1e-6 * max(1.0, abs(full)):
            raise TLSubmodelsError(
                f"task {t.name!r}: ablating every component leaves the metric at {full:.4g}: nothing to attribute. "
                "Try another ablation or reference."
            )
        return n

    own = necessity(task)
    full, removed, nothing = (float(r.metric.mean()) for r in own)
    denom = full - nothing
    kept_run = run(task, ablator.hooks(sub, keep_only=True))
    kept = float(kept_run.metric.mean())
    specificity, drops, spec_ci = {}, {}, {}
    for i, t in enumerate(others):
        n = necessity(t.to(task.clean.device))
        specificity[t.name] = n.value()
        drops[t.name] = float(n.full.accuracy.mean() - n.removed.accuracy.mean())
        if n_boot is not None:
            spec_ci[t.name] = n.interval(n_boot, level, seed + 1 + i)
    info = tlmodel.model_info(model)
    least: dict[str, float] | None = None
    runs = AblatedRuns(model, ablator, [task]) if minimality or baselines else None
    if minimality and runs is not None:
        least = {
            str(c): (kept - runs.metrics([m for m in sub if m != c], keep_only=True)[0]) / denom
            for c in sorted(sub, key=forward_order)
        }
    universe = sum(len(info.components((kind,))) for kind in sorted({c.kind for c in sub}))
    faithfulness = (kept - nothing) / denom
    intervals: dict[str, Any] = {}
    if n_boot is not None:
        columns = torch.stack([kept_run.metric, own.nothing.metric, own.full.metric], 1)
        intervals = {
            "faithfulness_ci": _pair(stats.bca(columns, stats.faithfulness, n_boot=n_boot, level=level, seed=seed)),
            "necessity_ci": own.interval(n_boot, level, seed),
            "accuracy_full_ci": _mean_ci(own.full.accuracy, n_boot, level, seed),
            "accuracy_kept_ci": _mean_ci(kept_run.accuracy, n_boot, level, seed),
            "accuracy_ablated_ci": _mean_ci(own.removed.accuracy, n_boot, level, seed),
            "specificity_ci": spec_ci if others else None,
            "ci_level": level,
            "n_boot": n_boot,
        }
    base: Baselines | None = None
    percentile: float | None = None
    if baselines and runs is not None:
        base = _baselines(model, sub, runs, baselines, seed, full=full, nothing=nothing)
        percentile = (
            float(100 * ((base.faithfulness < faithfulness).sum() + 0.5 * (base.faithfulness == faithfulness).sum()))
            / baselines
        )
    return Evaluation(
        faithfulness=faithfulness,
        necessity=(full - removed) / denom,
        specificity=specificity if others else None,
        accuracy_drop_elsewhere=drops if others else None,
        size=len(sub),
        fraction=len(sub) / max(1, universe),
        metric_full=full,
        metric_kept=kept,
        metric_ablated=removed,
        metric_all_ablated=nothing,
        accuracy_full=float(own.full.accuracy.mean()),
        accuracy_kept=float(kept_run.accuracy.mean()),
        accuracy_ablated=float(own.removed.accuracy.mean()),
        ablation=ablation,
        submodel=sub.name,
        task=task.name,
        minimality=least,
        baselines=base,
        baseline_percentile=percentile,
        **intervals,
    )


def _baselines(
    model: Any, sub: SubModel, runs: AblatedRuns, n: int, seed: int, *, full: float, nothing: float
) -> Baselines:
    """Faithfulness and necessity of ``n`` random sub-models of ``sub``'s size per kind, and of the largest weight norms."""
    info = tlmodel.model_info(model)
    counts = {kind: sum(c.kind == kind for c in sub) for kind in sorted({c.kind for c in sub})}
    pools = {kind: info.components((kind,)) for kind in counts}
    gen = torch.Generator().manual_seed(seed)

    def measure(comps: list[Component]) -> tuple[float, float]:
        kept = runs.metrics(comps, keep_only=True)[0]
        removed = runs.metrics(comps)[0]
        return (kept - nothing) / (full - nothing), (full - removed) / (full - nothing)

    if all(len(pools[kind]) == k for kind, k in counts.items()):
        raise TLSubmodelsError(
            f"{sub.name!r} holds every component of its kinds ({', '.join(counts)}): no other sub-model of its size "
            "to compare with; pass baselines=0"
        )
    values = []
    for _ in range(n):
        drawn = sub.components
        while drawn == sub.components:  # another set than the sub-model itself
            drawn = frozenset(
                pools[kind][int(i)]
                for kind, k in counts.items()
                for i in torch.randperm(len(pools[kind]), generator=gen)[:k]
            )
        values.append(measure(sorted(drawn, key=forward_order)))
    norms = _weight_norms(model)
    largest = [
        c
        for kind, k in counts.items()
        for c in sorted(pools[kind], key=lambda c: -norms[kind][c.layer, c.index or 0])[:k]
    ]
    norm_f, norm_n = measure(largest)
    faith, nec = torch.tensor(values, dtype=torch.float64).T.float()
    return Baselines(faithfulness=faith, necessity=nec, norm_faithfulness=norm_f, norm_necessity=norm_n, seed=seed)


def _weight_norms(model: Any) -> dict[Kind, Tensor]:
    """Each component's output weight norm: heads ``[layer, head]`` (||W_O||), neurons ``[layer, d_mlp]`` (the
    row of W_out), MLP layers ``[layer, 1]`` (||W_out||)."""
    ad = tlmodel.adapter(model)
    out: dict[Kind, Tensor] = {"heads": ad.W_O().float().flatten(2).norm(dim=-1)}
    w_out = ad.W_out()
    if w_out is not None:
        out["neurons"] = w_out.float().norm(dim=-1)
        out["mlps"] = w_out.float().flatten(1).norm(dim=-1)[:, None]
    return out
