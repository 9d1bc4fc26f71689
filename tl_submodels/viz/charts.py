"""plotly charts: score heat maps and bars, sub-model membership, usage, evaluations, diffs, explanations."""

from __future__ import annotations

from typing import Any

import plotly.graph_objects as go
import torch

from tl_submodels.errors import TLSubmodelsError
from tl_submodels.viz.style import PALETTE, as_submodels, diverging_heatmap, figure, need_scores, to_numpy

__all__ = [
    "decomposition_heatmap",
    "diff_heatmap",
    "evaluation_bars",
    "explanation_bars",
    "membership",
    "mlp_bars",
    "neuron_strips",
    "overlap",
    "plot_scores",
    "plot_usage",
    "scores_heatmap",
    "trace_heatmap",
    "usage_heatmap",
    "usage_positions",
]

# Scores ----------------------------------------------------------------------------------------


def scores_heatmap(scores: Any, *, title: str | None = None) -> go.Figure:
    """Heads' scores as a layer x head heat map (per-position scores: one row per head, one column per position).

    z is the normalised score (1 = the whole clean-corrupt gap), centred on 0; hover shows its bootstrap
    interval where the scores carry one (``Scores.with_intervals``).

    Example:
        >>> fig = tls.viz.scores_heatmap(tls.patch(model, task))  # doctest: +SKIP
        >>> fig.data[0].z.shape  # (n_layers, n_heads)  # doctest: +SKIP
    """
    heads = need_scores(scores, "heads")
    title = title or f"{scores.method} {scores.direction} scores of the heads on {scores.task}"
    fig = figure(title)
    if heads.ndim == 2:
        n_layers, n_heads = heads.shape
        x, y = [f"H{h}" for h in range(n_heads)], [f"L{layer}" for layer in range(n_layers)]
        fig.add_trace(diverging_heatmap(heads, x, y, "%{y}%{x}: %{z:.3f}" + _ci_hover(scores) + "<extra></extra>"))
        _ci_data(fig, scores, lambda t: t)
        fig.update_layout(
            xaxis_title="head", yaxis_title="layer", yaxis_autorange="reversed", height=max(260, 120 + 50 * n_layers)
        )
    else:  # [layer, pos, head]
        n_layers, n_pos, n_heads = heads.shape
        z = heads.permute(0, 2, 1).reshape(n_layers * n_heads, n_pos)
        y = [f"L{layer}H{h}" for layer in range(n_layers) for h in range(n_heads)]
        hover = "%{y} @ %{x}: %{z:.3f}" + _ci_hover(scores) + "<extra></extra>"
        fig.add_trace(diverging_heatmap(z, list(range(n_pos)), y, hover))
        _ci_data(fig, scores, lambda t: t.permute(0, 2, 1).reshape(n_layers * n_heads, n_pos))
        fig.update_layout(xaxis_title="position", yaxis_title="head", yaxis_autorange="reversed")
    return fig


def _ci_hover(scores: Any) -> str:
    return "" if getattr(scores, "heads_ci", None) is None else " [%{customdata[0]:.3f}, %{customdata[1]:.3f}]"


def _ci_data(fig: go.Figure, scores: Any, arrange: Any) -> None:
    """The heads' interval ends as the heat map's customdata (``[row, column, 2]``), laid out as ``arrange`` lays z."""
    ci = getattr(scores, "heads_ci", None)
    if ci is not None:
        fig.data[-1].customdata = torch.stack([arrange(ci[0]), arrange(ci[1])], -1).numpy()


def _error_y(values: list[float], intervals: list[tuple[float, float] | None]) -> dict[str, Any] | None:
    """plotly asymmetric error bars from intervals (None where there are none)."""
    if all(ci is None for ci in intervals):
        return None
    up = [0.0 if ci is None else ci[1] - v for v, ci in zip(values, intervals, strict=True)]
    down = [0.0 if ci is None else v - ci[0] for v, ci in zip(values, intervals, strict=True)]
    return {"type": "data", "symmetric": False, "array": up, "arrayminus": down}


def neuron_strips(scores: Any, *, top: int = 5, title: str | None = None) -> go.Figure:
    """MLP neurons' scores, one strip per layer, with the ``top`` neurons of each layer labelled.

    Example:
        >>> fig = tls.viz.neuron_strips(tls.patch(model, task, kinds=("neurons",)), top=3)  # doctest: +SKIP
    """
    neurons = need_scores(scores, "neurons")
    if top < 0:
        raise TLSubmodelsError(f"top must be >= 0, got {top}")
    n_layers, d_mlp = neurons.shape
    fig = figure(title or f"{scores.method} scores of the MLP neurons on {scores.task}", height=120 + 60 * n_layers)
    y = [f"L{layer}" for layer in range(n_layers)]
    fig.add_trace(diverging_heatmap(neurons, list(range(d_mlp)), y, "%{y}N%{x}: %{z:.3f}<extra></extra>"))
    for layer in range(n_layers):
        row = torch.nan_to_num(neurons[layer].abs(), nan=-1.0)
        for n in row.argsort(descending=True)[: min(top, d_mlp)].tolist():
            fig.add_annotation(
                x=n, y=f"L{layer}", text=f"N{n}", showarrow=True, arrowhead=0, ax=0, ay=-18, font={"size": 10}
            )
    fig.update_layout(xaxis_title="neuron", yaxis_title="layer", yaxis_autorange="reversed")
    return fig


def mlp_bars(scores: Any, *, title: str | None = None) -> go.Figure:
    """Whole-MLP-layer scores as bars (per-position scores: a layer x position heat map).

    Example:
        >>> fig = tls.viz.mlp_bars(tls.patch(model, task, kinds=("mlps",)))  # doctest: +SKIP
    """
    mlps = need_scores(scores, "mlps")
    fig = figure(title or f"{scores.method} scores of the MLP layers on {scores.task}", height=320)
    if mlps.ndim == 1:
        ci = getattr(scores, "mlps_ci", None)
        values = mlps.tolist()
        intervals: list[tuple[float, float] | None] = [None] * len(values)
        if ci is not None:
            intervals = list(zip(ci[0].tolist(), ci[1].tolist(), strict=True))
        fig.add_trace(
            go.Bar(
                x=[f"MLP{i}" for i in range(len(mlps))],
                y=to_numpy(mlps),
                hovertemplate="%{x}: %{y:.3f}<extra></extra>",
                error_y=_error_y(values, intervals),
            )
        )
        fig.update_layout(xaxis_title="MLP layer", yaxis_title="score")
    else:
        x, y = list(range(mlps.shape[1])), [f"MLP{i}" for i in range(mlps.shape[0])]
        fig.add_trace(diverging_heatmap(mlps, x, y, "%{y} @ %{x}: %{z:.3f}<extra></extra>"))
        fig.update_layout(xaxis_title="position", yaxis_title="MLP layer", yaxis_autorange="reversed")
    return fig


def plot_scores(scores: Any) -> go.Figure:
    """The main picture of a Scores (what ``Scores.plot()`` draws): heads if scored, else MLP layers, else neurons.

    Example:
        >>> fig = tls.viz.plot_scores(tls.patch(model, task))  # doctest: +SKIP
    """
    if scores.heads is not None:
        return scores_heatmap(scores)
    if scores.mlps is not None:
        return mlp_bars(scores)
    return neuron_strips(scores)


# Sub-models ------------------------------------------------------------------------------------


def membership(parts: Any, *, title: str = "Sub-model membership") -> go.Figure:
    """Which components each sub-model holds: a part x component matrix of 0/1.

    Example:
        >>> fig = tls.viz.membership(factorization)  # or [circuit_a, circuit_b]  # doctest: +SKIP
    """
    subs = as_submodels(parts)
    comps = sorted(set().union(*(s.components for s in subs)))
    z = [[1.0 if c in s else 0.0 for c in comps] for s in subs]
    fig = figure(title, height=150 + 40 * len(subs))
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=[str(c) for c in comps],
            y=[s.name for s in subs],
            colorscale=[[0.0, "#f7f7f7"], [1.0, PALETTE[0]]],
            zmin=0,
            zmax=1,
            showscale=False,
            xgap=1,
            ygap=1,
            hovertemplate="%{y} holds %{x}: %{z}<extra></extra>",
        )
    )
    fig.update_layout(xaxis_title="component", yaxis_title="sub-model", yaxis_autorange="reversed")
    return fig


def overlap(parts: Any, *, title: str = "Sub-model overlap (shared components)") -> go.Figure:
    """How many components each pair of sub-models shares (diagonal: each one's size).

    Example:
        >>> fig = tls.viz.overlap([circuit_a, circuit_b])  # doctest: +SKIP
    """
    subs = as_submodels(parts)
    names = [s.name for s in subs]
    z = [[len(a & b) for b in subs] for a in subs]
    fig = figure(title)
    fig.add_trace(
        go.Heatmap(
            z=z,
            x=names,
            y=names,
            text=z,
            texttemplate="%{text}",
            colorscale="Blues",
            hovertemplate="%{y} & %{x}: %{z} components<extra></extra>",
        )
    )
    fig.update_layout(yaxis_autorange="reversed")
    return fig


# Factorization and usage -----------------------------------------------------------------------


def usage_heatmap(factorization: Any, *, title: str | None = None) -> go.Figure:
    """Prompt x sub-model usage of a Factorization, prompts grouped by task.

    Example:
        >>> fig = tls.viz.usage_heatmap(tls.factorize(model, tasks))  # or factorization.plot()  # doctest: +SKIP
    """
    for attr in ("usage", "prompt_task", "labels", "parts"):
        if not hasattr(factorization, attr):
            raise TLSubmodelsError(
                f"usage_heatmap needs a Factorization (from tls.factorize); got {type(factorization)}"
            )
    order = sorted(range(len(factorization.prompt_task)), key=lambda i: (factorization.prompt_task[i], i))
    z = factorization.usage[order]
    x = [f"{p.name} ({lab})" for p, lab in zip(factorization.parts, factorization.labels, strict=True)]
    y = [f"{i}:{factorization.prompt_task[i]}" for i in order]
    fig = figure(title or f"Prompt x sub-model usage (purity {factorization.purity:.2f})", height=500)
    fig.add_trace(
        go.Heatmap(
            z=to_numpy(z),
            x=x,
            y=y,
            colorscale="Viridis",
            colorbar={"title": "usage"},
            hovertemplate="prompt %{y}<br>%{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(xaxis_title="sub-model (label)", yaxis_title="prompt (task)", yaxis_autorange="reversed")
    fig.update_yaxes(showticklabels=len(y) <= 80)
    return fig


def usage_positions(usage: Any, *, title: str | None = None) -> go.Figure:
    """A Usage (one prompt) as a sub-model x position heat map, columns labelled by the tokens.

    Example:
        >>> fig = tls.viz.usage_positions(tls.usage(model, prompt, parts, reference=ref))  # doctest: +SKIP
    """
    for attr in ("values", "tokens", "parts", "target"):
        if not hasattr(usage, attr):
            raise TLSubmodelsError(f"usage_positions needs a Usage (from tls.usage); got {type(usage).__name__}")
    x = [f"{i}:{t}" for i, t in enumerate(usage.tokens)]
    fig = figure(title or f"Contribution to the logit of {usage.target!r} by position ({usage.method})")
    fig.add_trace(
        diverging_heatmap(usage.values, x, list(usage.parts), "%{y} at %{x}: %{z:.3f}<extra></extra>", "logit drop")
    )
    fig.update_layout(xaxis_title="position:token", yaxis_title="sub-model", yaxis_autorange="reversed")
    return fig


def plot_usage(usage: Any) -> go.Figure:
    """The main picture of a Usage: :func:`usage_positions` (what ``Usage.plot()`` draws).

    Example:
        >>> fig = tls.viz.plot_usage(tls.usage(model, prompt, parts, reference=ref))  # doctest: +SKIP
    """
    return usage_positions(usage)


# Evaluations and diffs -------------------------------------------------------------------------


def evaluation_bars(evaluations: Any, *, title: str = "Sub-model evaluation (ablation)") -> go.Figure:
    """Faithfulness, necessity and accuracies (full, kept, ablated) of one or more Evaluations, grouped by sub-model,
    with their bootstrap intervals as error bars; the largest accuracy drop on other tasks where specificity was
    measured; the median faithfulness of random sub-models of the same size where baselines were measured.

    Example:
        >>> fig = tls.viz.evaluation_bars([tls.evaluate(model, c, task) for c in circuits])  # doctest: +SKIP
    """
    evs = [evaluations] if hasattr(evaluations, "faithfulness") else list(evaluations)
    if not evs or not all(hasattr(e, "faithfulness") for e in evs):
        raise TLSubmodelsError("evaluation_bars needs an Evaluation or a list of them (from tls.evaluate)")
    x = [f"{e.submodel} on {e.task}" for e in evs]
    fields = [
        ("faithfulness", "faithfulness"),
        ("necessity", "necessity"),
        ("accuracy_full", "accuracy (full)"),
        ("accuracy_kept", "accuracy (only it kept)"),
        ("accuracy_ablated", "accuracy (it ablated)"),
    ]
    fig = figure(title, barmode="group")
    for key, label in fields:
        values = [getattr(e, key) for e in evs]
        error = _error_y(values, [getattr(e, f"{key}_ci", None) for e in evs])
        fig.add_trace(go.Bar(name=label, x=x, y=values, error_y=error))
    if any(e.baselines is not None for e in evs):
        fig.add_trace(
            go.Scatter(
                name="random sub-models of its size (median faithfulness)",
                x=x,
                y=[None if e.baselines is None else float(e.baselines.faithfulness.median()) for e in evs],
                mode="markers",
                marker={"symbol": "line-ew-open", "size": 28, "color": PALETTE[-1]},
            )
        )
    if any(e.accuracy_drop_elsewhere for e in evs):
        fig.add_trace(
            go.Bar(
                name="largest accuracy drop elsewhere",
                x=x,
                y=[max((e.accuracy_drop_elsewhere or {}).values(), default=0.0) for e in evs],
            )
        )
    fig.update_layout(yaxis_title="value")
    return fig


def diff_heatmap(model_diff: Any, *, top: int = 20, title: str | None = None) -> go.Figure:
    """The ``top`` components whose effects differ most between the two models of a ModelDiff, per task.

    Example:
        >>> fig = tls.viz.diff_heatmap(tls.diff(harmless, harmful, tasks))  # doctest: +SKIP
    """
    if not hasattr(model_diff, "effects_a"):
        raise TLSubmodelsError(f"diff_heatmap needs a ModelDiff (from tls.diff); got {type(model_diff).__name__}")
    delta = model_diff.effects_b - model_diff.effects_a
    order = delta.abs().amax(0).argsort(descending=True)[:top].tolist()
    fig = figure(title or "Effect in model b minus effect in model a (noising, metric units)")
    x = [str(model_diff.components[i]) for i in order]
    fig.add_trace(
        diverging_heatmap(
            delta[:, order], x, list(model_diff.task_names), "%{y}, %{x}: %{z:.3f}<extra></extra>", "b - a"
        )
    )
    fig.update_layout(xaxis_title="component", yaxis_title="task")
    return fig


def explanation_bars(explanation: Any, *, title: str | None = None) -> go.Figure:
    """For an Explanation: the top prediction's probability in each row (full model, each ablation), with KL.

    Example:
        >>> fig = tls.viz.explanation_bars(tls.explain(model, prompt, parts, reference=ref))  # doctest: +SKIP
    """
    if not hasattr(explanation, "rows"):
        raise TLSubmodelsError(f"explanation_bars needs an Explanation (from tls.explain); got {type(explanation)}")
    rows = explanation.rows
    fig = figure(title or "Top prediction with each sub-model ablated")
    fig.add_trace(
        go.Bar(
            x=[r.ablated for r in rows],
            y=[r.top[0].prob for r in rows],
            text=[f"{r.top[0].token!s} (KL {r.kl:.2f})" for r in rows],
            textposition="auto",
            hovertext=[", ".join(f"{w} {p:.2f}" for w, p in r.top) for r in rows],
        )
    )
    fig.update_layout(xaxis_title="ablated", yaxis_title="probability of the top token")
    return fig


def decomposition_heatmap(decomposition: Any, *, title: str | None = None) -> go.Figure:
    """Each part's usage by position in the sequence: the mean usage of the predictions at each position.

    Example:
        >>> fig = tls.viz.decomposition_heatmap(dec)  # or dec.plot()  # doctest: +SKIP
    """
    for attr in ("usage", "usage_index", "parts", "labels"):
        if not hasattr(decomposition, attr):
            raise TLSubmodelsError(
                f"decomposition_heatmap needs a Decomposition (from tls.decompose); got {type(decomposition)}"
            )
    pos = decomposition.usage_index[:, 1]
    n_pos = int(pos.max()) + 1
    count = torch.zeros(n_pos).index_add_(0, pos, torch.ones(len(pos))).clamp_min(1)
    z = torch.zeros(n_pos, len(decomposition.parts)).index_add_(0, pos, decomposition.usage) / count[:, None]
    y = [f"{p.name}: {lab}" for p, lab in zip(decomposition.parts, decomposition.labels, strict=True)]
    fig = figure(title or f"Part usage by position ({len(decomposition.usage)} predictions)", height=200 + 40 * len(y))
    fig.add_trace(
        go.Heatmap(
            z=to_numpy(z.T),
            x=list(range(n_pos)),
            y=y,
            colorscale="Viridis",
            colorbar={"title": "mean usage"},
            hovertemplate="%{y}<br>position %{x}: %{z:.3f}<extra></extra>",
        )
    )
    fig.update_layout(xaxis_title="position of the prediction (predicts the token after it)", yaxis_title="part")
    return fig


def trace_heatmap(trace: Any, *, title: str | None = None) -> go.Figure:
    """A Trace as a part x step heat map of use: the chosen token of each step on the x axis, and in
    each cell the token the model would have chosen with that part ablated.

    Example:
        >>> fig = tls.viz.trace_heatmap(tls.trace(model, prompt, parts, reference=ref))  # or tr.plot()  # doctest: +SKIP
    """
    for attr in ("use", "part_names", "tokens", "counterfactual"):
        if not hasattr(trace, attr):
            raise TLSubmodelsError(f"trace_heatmap needs a Trace (from tls.trace); got {type(trace).__name__}")
    words = trace.words or [str(t) for t in trace.tokens]
    x = [f"{t}:{w}" for t, w in enumerate(words)]
    instead = trace.counterfactual_words or [[str(int(i)) for i in row] for row in trace.counterfactual]
    text = [[instead[t][j] for t in range(trace.steps)] for j in range(len(trace.part_names))]
    ablated = f", with {', '.join(trace.ablated)} ablated" if trace.ablated else ""
    fig = figure(
        title or f"Use of each part at each step{ablated} (nats; cells: the token chosen without it)",
        height=200 + 40 * len(trace.part_names),
    )
    heat = diverging_heatmap(
        trace.use.T, x, list(trace.part_names), "%{y} at step %{x}: %{z:.3f} nats, else %{text}<extra></extra>", "use"
    )
    heat.update(text=text, texttemplate="%{text}")
    fig.add_trace(heat)
    fig.update_layout(xaxis_title="step:chosen token", yaxis_title="part", yaxis_autorange="reversed")
    return fig
