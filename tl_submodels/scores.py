"""Scores: the effect of every component on a task's metric, with how it was measured.

``heads`` is ``[layer, head]`` (``[layer, pos, head]`` per position), ``neurons`` ``[layer, d_mlp]``,
``mlps`` ``[layer]`` (``[layer, pos]`` per position); each normalised (1 = the whole clean-corrupt
gap), ``None`` for kinds not scored. The raw metric values of the patched runs are kept beside
them, with the clean and corrupt baselines, the method and the direction.

With ``per_example=True`` the scorers also keep each prompt's effect: ``per_example[kind]`` has a
leading batch axis (``[batch, layer, head]`` ...), normalised by the batch's clean-corrupt gap,
so that its mean over the batch is the aggregate score, and ``per_example_gap`` each prompt's own
clean-corrupt gap in the same units (mean 1).

Uncertainty (from those per-prompt values, no more forwards): ``with_intervals`` gives each score a
BCa bootstrap interval over the prompts (``heads_ci``, ...: the score is a ratio of two means, the
effect's and the gap's, resampled together); ``significant`` the components whose effect differs from
zero, by t-tests with the false-discovery rate held at ``alpha`` (Benjamini-Hochberg). Both need
``per_example=True`` or ``n_boot=`` when scoring.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from jaxtyping import Float
from torch import Tensor

from tl_submodels import model as tlmodel
from tl_submodels import stats
from tl_submodels.components import KINDS, MLP, Component, Head, Kind, Neuron, check_kinds
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.model import ModelInfo
from tl_submodels.submodel import SubModel
from tl_submodels.summary import summary_html, summary_text
from tl_submodels.task import Task
from tl_submodels.values import Value, check_schema

__all__ = ["Direction", "Scores", "Sides", "check_budget", "check_scoring", "json_safe", "metric_gap", "sides"]

Direction = Literal["denoising", "noising"]


@dataclass(frozen=True, kw_only=True)
class Scores(Value):
    """Per-component effects of one method on one task.

    Example:
        >>> scores = tls.patch(model, task)  # doctest: +SKIP
        >>> scores.top(3)  # doctest: +SKIP
        [(Head(1, 2), 0.61), (Head(0, 3), 0.44), (Head(1, 0), 0.20)]
    """

    SCHEMA_VERSION = 2  # 2: schema and version in the file (version 1 files had neither)

    heads: Float[Tensor, "layer head"] | Float[Tensor, "layer pos head"] | None = None
    neurons: Float[Tensor, "layer d_mlp"] | None = None
    mlps: Float[Tensor, " layer"] | Float[Tensor, "layer pos"] | None = None
    raw_heads: Tensor | None = None
    raw_neurons: Tensor | None = None
    raw_mlps: Tensor | None = None
    clean_metric: float
    corrupt_metric: float
    method: str = "patch"
    direction: Direction = "denoising"
    metric: str = "logit_diff"
    per_position: bool = False
    task: str = "task"
    per_example: dict[str, Tensor] | None = None
    per_example_gap: Float[Tensor, " batch"] | None = None
    # BCa bootstrap intervals over the prompts, (low, high) each shaped like the scores (Scores.with_intervals)
    heads_ci: tuple[Tensor, Tensor] | None = None
    neurons_ci: tuple[Tensor, Tensor] | None = None
    mlps_ci: tuple[Tensor, Tensor] | None = None
    ci_level: float = 0.95
    n_boot: int | None = None

    def __post_init__(self) -> None:
        if self.direction not in ("denoising", "noising"):
            raise TLSubmodelsError(f"direction must be 'denoising' or 'noising', got {self.direction!r}")
        if all(getattr(self, k) is None for k in KINDS):
            raise TLSubmodelsError("Scores needs at least one of heads, neurons, mlps")

    @property
    def kinds(self) -> tuple[Kind, ...]:
        return tuple(k for k in KINDS if getattr(self, k) is not None)

    def items(self, kinds: tuple[Kind, ...] | None = None) -> list[tuple[Component, float]]:
        """Every scored (component, normalised score), per position where scored per position."""
        out: list[tuple[Component, float]] = []
        for kind in check_kinds(kinds) if kinds else self.kinds:
            t = getattr(self, kind)
            if t is None:
                continue
            for idx in torch.cartesian_prod(*[torch.arange(n) for n in t.shape]).view(-1, t.ndim).tolist():
                value = float(t[tuple(idx)])
                if value == value:  # NaN: not scored (patch(components=...))
                    out.append((_component(kind, idx, self.per_position and kind != "neurons"), value))
        return out

    def top(
        self, k: int = 10, *, kinds: tuple[Kind, ...] | None = None, absolute: bool = True
    ) -> list[tuple[Component, float]]:
        """The ``k`` components with the largest (absolute) effect, largest first.

        Example:
            >>> [str(c) for c, _ in scores.top(2)]  # doctest: +SKIP
            ['L1H2', 'L0H3']
        """
        items = self.items(kinds)
        items.sort(key=lambda cv: (-(abs(cv[1]) if absolute else cv[1]), cv[0].key))
        return items[:k]

    def to_submodel(self, k: int | None = None, *, threshold: float | None = None, name: str | None = None) -> SubModel:
        """The top ``k`` components, or all with ``|score| >= threshold``, as a SubModel."""
        if (k is None) == (threshold is None):
            raise TLSubmodelsError("pass exactly one of k=... or threshold=...")
        picked = self.top(k) if k is not None else [cv for cv in self.items() if abs(cv[1]) >= (threshold or 0.0)]
        return SubModel(
            components=frozenset(c for c, _ in picked),
            name=name or f"{self.task}-top",
            description=f"from {self.method} scores",
        )

    def with_intervals(self, n_boot: int = stats.DEFAULT_N_BOOT, *, level: float = 0.95, seed: int = 0) -> Scores:
        """These scores with a BCa bootstrap interval each (``heads_ci``, ``neurons_ci``, ``mlps_ci``: ``(low,
        high)`` tensors shaped like the scores), resampling the prompts of ``per_example``.

        Example:
            >>> scores = tls.patch(model, task, per_example=True).with_intervals(1000)  # doctest: +SKIP
            >>> low, high = scores.heads_ci  # doctest: +SKIP
        """
        examples = self._examples("intervals")
        stats.check_n_boot(n_boot)
        gap = self._gaps(examples)
        out: dict[str, Any] = {}
        for kind, each in examples.items():
            columns = torch.stack([each, gap.view(-1, *[1] * (each.ndim - 1)).expand_as(each)], 1)
            out[f"{kind}_ci"] = stats.bca(columns, _ratio, n_boot=n_boot, level=level, seed=seed)
        return dataclasses.replace(self, **out, ci_level=level, n_boot=n_boot)

    def p_values(self, min_effect: float = 0.0) -> dict[str, Tensor]:
        """Each kind's t-test p-values (shaped like its scores) against a component's effect over the prompts
        being zero, or at most ``min_effect`` in size (:func:`tl_submodels.stats.p_values`); NaN where not scored.

        Example:
            >>> tls.patch(model, task, per_example=True).p_values()["heads"].shape  # doctest: +SKIP
            torch.Size([2, 4])
        """
        return {kind: stats.p_values(each, min_effect) for kind, each in self._examples("p-values").items()}

    def significant(
        self,
        alpha: float = 0.05,
        *,
        min_effect: float = 0.0,
        kinds: tuple[Kind, ...] | None = None,
        name: str | None = None,
    ) -> SubModel:
        """The components whose effect differs from zero over the prompts, the false-discovery rate held at
        ``alpha`` over every component tested (t-tests, Benjamini-Hochberg), as a SubModel.

        In a trained model many components move a metric by a tiny amount on every prompt, and with
        enough prompts each of those differs from zero too. ``min_effect`` (in the scores' units: 0.01 is
        1% of the clean-corrupt gap) asks for effects larger than that in size instead, tested as such.

        Example:
            >>> scores = tls.patch(model, task, per_example=True)  # doctest: +SKIP
            >>> sorted(str(c) for c in scores.significant(0.05))  # doctest: +SKIP
            ['L0H0', 'L1H0', 'L1H1', 'L1H2', 'L1H3']
        """
        stats.check_alpha(alpha)
        wanted = check_kinds(kinds) if kinds else self.kinds
        p = {k: v for k, v in self.p_values(min_effect).items() if k in wanted}
        if not p:
            raise TLSubmodelsError(f"these scores hold no per-example values of {list(wanted)}")
        flat = torch.cat([v.flatten() for v in p.values()])
        hit = stats.reject(flat, alpha).tolist()
        picked, at = [], 0
        for kind, v in p.items():
            for idx in torch.cartesian_prod(*[torch.arange(n) for n in v.shape]).view(-1, v.ndim).tolist():
                if hit[at]:
                    picked.append(_component(kind, idx, self.per_position and kind != "neurons"))
                at += 1
        return SubModel(
            components=frozenset(picked),
            name=name or f"{self.task}-significant",
            description=f"{self.method} effects {'nonzero' if not min_effect else f'larger than {min_effect}'} over "
            f"{self._batch()} prompts (t-tests, Benjamini-Hochberg false-discovery rate {alpha})",
        )

    def _examples(self, what: str) -> dict[str, Tensor]:
        if self.per_example is None:
            raise TLSubmodelsError(
                f"{what} need each prompt's effect: score with per_example=True (or n_boot=...), e.g. "
                "tls.patch(model, task, per_example=True)"
            )
        if self._batch() < 2:
            raise TLSubmodelsError(f"{what} resample the prompts and need at least 2; these scores have 1")
        return self.per_example

    def _batch(self) -> int:
        return 0 if not self.per_example else next(iter(self.per_example.values())).shape[0]

    def _gaps(self, examples: dict[str, Tensor]) -> Tensor:
        """Each prompt's gap over the batch's (mean 1); ones where not kept (files before it was)."""
        if self.per_example_gap is not None:
            return self.per_example_gap.float()
        return torch.ones(next(iter(examples.values())).shape[0])

    def to_frame(self) -> Any:
        """A pandas DataFrame: one row per component with score, raw metric, kind, layer, index, pos, and
        ``ci_low``/``ci_high`` where the scores carry intervals.

        Example:
            >>> tls.patch(model, task).to_frame().head()  # doctest: +SKIP
        """
        import pandas as pd

        rows = []
        for kind in self.kinds:
            t, raw, ci = getattr(self, kind), getattr(self, f"raw_{kind}"), getattr(self, f"{kind}_ci")
            for idx in torch.cartesian_prod(*[torch.arange(n) for n in t.shape]).view(-1, t.ndim).tolist():
                c = _component(kind, idx, self.per_position and kind != "neurons")
                row = {
                    "component": str(c),
                    "kind": kind,
                    "layer": c.layer,
                    "index": c.index,
                    "pos": c.pos,
                    "score": float(t[tuple(idx)]),
                    "raw": None if raw is None else float(raw[tuple(idx)]),
                }
                if ci is not None:
                    row |= {"ci_low": float(ci[0][tuple(idx)]), "ci_high": float(ci[1][tuple(idx)])}
                rows.append(row)
        return pd.DataFrame(rows)

    def plot(self, kind: Kind | None = None) -> Any:
        """A plotly figure: the heads heat map, the MLP bars or the neuron strips (``kind``; default the first scored).

        Example:
            >>> tls.patch(model, task).plot()  # doctest: +SKIP
        """
        from tl_submodels import viz

        if kind is None:
            return viz.plot_scores(self)
        draw = {"heads": viz.scores_heatmap, "mlps": viz.mlp_bars, "neurons": viz.neuron_strips}
        if kind not in draw:
            raise TLSubmodelsError(f"kind must be one of {list(draw)}, got {kind!r}")
        return draw[kind](self)

    def _summary(self) -> tuple[str, list[tuple[str, str]]]:
        top = ", ".join(f"{c} {v:+.2f}" for c, v in self.top(5))
        shapes = ", ".join(f"{k} {list(getattr(self, k).shape)}" for k in self.kinds)
        return (
            f"Scores: {self.method} ({self.direction}) on {self.task}",
            [
                ("metric", f"{self.metric}: clean {self.clean_metric:.3f}, corrupt {self.corrupt_metric:.3f}"),
                ("scored", shapes),
                ("top", top),
                ("all", ".to_frame(); picture: .plot()"),
            ],
        )

    def __repr__(self) -> str:
        return summary_text(*self._summary())

    def _repr_html_(self) -> str:
        return summary_html(*self._summary())

    def to_dict(self) -> dict[str, Any]:
        """Plain lists and numbers for ``json.dumps``, strict JSON: NaN (not scored) becomes null and an
        infinity the string "inf" or "-inf"; :meth:`from_dict` reads both back.

        Example:
            >>> Scores.from_dict(json.loads(json.dumps(scores.to_dict())))  # doctest: +SKIP
        """
        out: dict[str, Any] = {"schema": self.schema(), "version": self.SCHEMA_VERSION} | {
            k: getattr(self, k)
            for k in ("clean_metric", "corrupt_metric", "method", "direction", "metric", "per_position", "task")
        }
        for kind in KINDS:
            for key in (kind, f"raw_{kind}"):
                t = getattr(self, key)
                out[key] = None if t is None else t.tolist()
        out["per_example"] = None if self.per_example is None else {k: v.tolist() for k, v in self.per_example.items()}
        out["per_example_gap"] = None if self.per_example_gap is None else self.per_example_gap.tolist()
        for kind in KINDS:
            ci = getattr(self, f"{kind}_ci")
            out[f"{kind}_ci"] = None if ci is None else [ci[0].tolist(), ci[1].tolist()]
        out["ci_level"], out["n_boot"] = self.ci_level, self.n_boot
        return json_safe(out)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Scores:
        """Read what :meth:`to_dict` wrote (also a file ``tl-submodels scores --out`` wrote); another schema or
        version is refused (TLSubmodelsError)."""
        check_schema(data, cls.schema(), cls.SCHEMA_VERSION, "Scores")

        def tensor(key: str) -> Tensor | None:
            return None if data.get(key) is None else torch.tensor(_nan_for_none(data[key]), dtype=torch.float32)

        def interval(key: str) -> tuple[Tensor, Tensor] | None:
            ends = data.get(key)
            if ends is None:
                return None
            return tuple(torch.tensor(_nan_for_none(e), dtype=torch.float32) for e in ends)  # type: ignore[return-value]

        return cls(
            heads=tensor("heads"),
            neurons=tensor("neurons"),
            mlps=tensor("mlps"),
            raw_heads=tensor("raw_heads"),
            raw_neurons=tensor("raw_neurons"),
            raw_mlps=tensor("raw_mlps"),
            clean_metric=float(_nan_for_none(data["clean_metric"])),
            corrupt_metric=float(_nan_for_none(data["corrupt_metric"])),
            method=str(data["method"]),
            direction=data["direction"],
            metric=str(data["metric"]),
            per_position=bool(data["per_position"]),
            task=str(data["task"]),
            per_example=None
            if data.get("per_example") is None
            else {k: torch.tensor(_nan_for_none(v), dtype=torch.float32) for k, v in data["per_example"].items()},
            per_example_gap=tensor("per_example_gap"),
            heads_ci=interval("heads_ci"),
            neurons_ci=interval("neurons_ci"),
            mlps_ci=interval("mlps_ci"),
            ci_level=float(data.get("ci_level", 0.95)),
            n_boot=data.get("n_boot"),
        )


def _ratio(effect: Tensor, gap: Tensor) -> Tensor:
    return effect / gap


def _component(kind: Kind, idx: list[int], per_position: bool) -> Component:
    if kind == "heads":
        return Head(idx[0], idx[2], pos=idx[1]) if per_position else Head(idx[0], idx[1])
    if kind == "neurons":
        return Neuron(idx[0], idx[1])
    return MLP(idx[0], pos=idx[1]) if per_position else MLP(idx[0])


def check_scoring(
    model: Any, task: Task, kinds: tuple[Kind, ...] | Kind | None, per_position: bool, direction: str
) -> tuple[ModelInfo, tuple[Kind, ...], Task]:
    """The checks every scorer makes: model, kinds, direction, vocabulary; the task on the model's device."""
    info = tlmodel.check_model(model, ())
    if kinds is None:  # every kind the model has; per position, heads and MLP layers (neurons are scored over all)
        kinds = tuple(k for k in info.kinds() if not (per_position and k == "neurons"))
    kinds = check_kinds(kinds)
    tlmodel.check_model(model, kinds)
    if direction not in ("denoising", "noising"):
        raise TLSubmodelsError(f"direction must be 'denoising' or 'noising', got {direction!r}")
    if per_position and "neurons" in kinds:
        raise TLSubmodelsError("per_position=True covers heads and mlps; score neurons over all positions")
    if task.d_vocab != info.d_vocab:
        raise TLSubmodelsError(
            f"task {task.name!r} was built for d_vocab={task.d_vocab}, the model has d_vocab={info.d_vocab}"
        )
    outputs = info.d_vocab_out or info.d_vocab
    for name in ("answer", "wrong"):
        ids = getattr(task, name)
        if ids is not None and int(ids.max()) >= outputs:
            raise TLSubmodelsError(
                f"task {task.name!r}: {name} holds token id {int(ids.max())}, but the model's unembedding has only "
                f"d_vocab_out={outputs} outputs: build the task with answers the model can predict"
            )
    return info, kinds, task.to(tlmodel.first_param_device(model))


def check_budget(batch_size: int | None, max_memory_mb: float) -> None:
    """The scorers' sizing arguments: ``batch_size`` a positive int or None, ``max_memory_mb`` positive.

    Example:
        >>> check_budget(None, 1024.0)
    """
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise TLSubmodelsError(
            f"batch_size must be a positive number of rows per forward, or None to fit max_memory_mb; got {batch_size!r}"
        )
    if not max_memory_mb > 0:
        raise TLSubmodelsError(f"max_memory_mb must be a positive number of megabytes, got {max_memory_mb!r}")


class Sides(NamedTuple):
    """The two runs of a scorer, by direction: ``base`` is run and patched into, ``source`` gives the patched
    activations. Denoising runs corrupt and patches in clean; noising the reverse. ``sign`` turns a change of
    the base run's metric into an effect: ``sign * (patched - base) / gap``."""

    base: Tensor
    source: Tensor
    sign: float

    def clean_corrupt(self, base_value: float, source_value: float) -> tuple[float, float]:
        """The clean and corrupt metric values, from the base and source runs' values."""
        return (source_value, base_value) if self.sign > 0 else (base_value, source_value)


def sides(task: Task, direction: Direction) -> Sides:
    """The base and source prompts of ``task`` for ``direction`` (the one place the swap is written)."""
    if direction == "denoising":
        return Sides(base=task.corrupt, source=task.clean, sign=1.0)
    return Sides(base=task.clean, source=task.corrupt, sign=-1.0)


def metric_gap(task: Task, clean_value: float, corrupt_value: float) -> float:
    """clean - corrupt metric; refuses a task whose corrupt prompts do not move the metric."""
    gap = clean_value - corrupt_value
    if abs(gap) <= 1e-6 * max(1.0, abs(clean_value)):
        raise TLSubmodelsError(
            f"the metric {task.metric_name!r} is {clean_value:.4g} on both clean and corrupt prompts, so there is no "
            "gap to score against. Check that the corrupt prompts remove what the answer depends on."
        )
    return gap


def json_safe(x: Any) -> Any:
    """Nested lists/dicts as strict JSON: NaN becomes None (null), infinities the strings "inf" and "-inf"."""
    if isinstance(x, dict):
        return {k: json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else str(x)
    return x


def _nan_for_none(x: Any) -> Any:
    """The inverse of :func:`json_safe` for numbers: None back to NaN, "inf"/"-inf" back to floats."""
    if isinstance(x, list):
        return [_nan_for_none(v) for v in x]
    return float("nan") if x is None else float(x) if isinstance(x, str) else x
