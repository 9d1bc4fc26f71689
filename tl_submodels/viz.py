"""Pictures of everything the package computes: plotly charts and circuitsvis views.

Every function returns a figure (``plotly.graph_objects.Figure``) or a circuitsvis render
object and never displays it: the last expression of a notebook cell shows it, ``fig.write_html``
saves it, and :func:`tl_submodels.report` puts it in an offline HTML file. plotly and circuitsvis
are imported only here.

Example:
    >>> scores = tls.patch(model, task)  # doctest: +SKIP
    >>> tls.viz.scores_heatmap(scores)  # or scores.plot()  # doctest: +SKIP
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

import plotly.graph_objects as go
import torch
from circuitsvis.attention import attention_heads
from circuitsvis.tokens import colored_tokens_multi
from circuitsvis.utils.render import RenderedHTML
from jaxtyping import Int
from torch import Tensor

from tl_submodels.components import Component, Head, Neuron
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.submodel import SubModel

# Colour-blind-safe qualitative palette (Okabe-Ito) for sub-models; shared nodes are grey.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000"]
SHARED = "#999999"
DIVERGING = "RdBu"


def _figure(title: str, **layout: Any) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, template="plotly_white", margin={"l": 60, "r": 20, "t": 50, "b": 50}, **layout)
    return fig


def _np(t: Tensor) -> Any:
    return t.detach().float().cpu().numpy()


def _diverging(z: Tensor, x: list, y: list, hover: str, label: str | None = "score") -> go.Heatmap:
    """A heat map of signed values centred on 0, symmetric about it (NaN, i.e. not scored, left blank)."""
    bound = float(torch.nan_to_num(z.abs(), nan=0.0).max()) or 1.0
    return go.Heatmap(
        z=_np(z), x=x, y=y, colorscale=DIVERGING, zmid=0.0, zmin=-bound, zmax=bound,
        colorbar={"title": label} if label else None, showscale=label is not None, hovertemplate=hover,
    )  # fmt: skip


def _need(scores: Any, kind: str) -> Tensor:
    t = getattr(scores, kind, None)
    if t is None:
        raise TLSubmodelsError(
            f"these scores have no {kind} (kinds scored: {list(scores.kinds)}); score them with kinds=(..., {kind!r})"
        )
    return t


# Scores ----------------------------------------------------------------------------------------


def scores_heatmap(scores: Any, *, title: str | None = None) -> go.Figure:
    """Heads' scores as a layer x head heat map (per-position scores: one row per head, one column per position).

    z is the normalised score (1 = the whole clean-corrupt gap), centred on 0; hover shows the raw metric.

    Example:
        >>> fig = tls.viz.scores_heatmap(tls.patch(model, task))  # doctest: +SKIP
        >>> fig.data[0].z.shape  # (n_layers, n_heads)  # doctest: +SKIP
    """
    heads = _need(scores, "heads")
    title = title or f"{scores.method} {scores.direction} scores of the heads on {scores.task}"
    fig = _figure(title)
    if heads.ndim == 2:
        n_layers, n_heads = heads.shape
        x, y = [f"H{h}" for h in range(n_heads)], [f"L{layer}" for layer in range(n_layers)]
        fig.add_trace(_diverging(heads, x, y, "%{y}%{x}: %{z:.3f}<extra></extra>"))
        fig.update_layout(
            xaxis_title="head", yaxis_title="layer", yaxis_autorange="reversed", height=max(260, 120 + 50 * n_layers)
        )
    else:  # [layer, pos, head]
        n_layers, n_pos, n_heads = heads.shape
        z = heads.permute(0, 2, 1).reshape(n_layers * n_heads, n_pos)
        y = [f"L{layer}H{h}" for layer in range(n_layers) for h in range(n_heads)]
        fig.add_trace(_diverging(z, list(range(n_pos)), y, "%{y} @ %{x}: %{z:.3f}<extra></extra>"))
        fig.update_layout(xaxis_title="position", yaxis_title="head", yaxis_autorange="reversed")
    return fig


def neuron_strips(scores: Any, *, top: int = 5, title: str | None = None) -> go.Figure:
    """MLP neurons' scores, one strip per layer, with the ``top`` neurons of each layer labelled.

    Example:
        >>> fig = tls.viz.neuron_strips(tls.patch(model, task, kinds=("neurons",)), top=3)  # doctest: +SKIP
    """
    neurons = _need(scores, "neurons")
    if top < 0:
        raise TLSubmodelsError(f"top must be >= 0, got {top}")
    n_layers, d_mlp = neurons.shape
    fig = _figure(title or f"{scores.method} scores of the MLP neurons on {scores.task}", height=120 + 60 * n_layers)
    y = [f"L{layer}" for layer in range(n_layers)]
    fig.add_trace(_diverging(neurons, list(range(d_mlp)), y, "%{y}N%{x}: %{z:.3f}<extra></extra>"))
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
    mlps = _need(scores, "mlps")
    fig = _figure(title or f"{scores.method} scores of the MLP layers on {scores.task}", height=320)
    if mlps.ndim == 1:
        fig.add_trace(
            go.Bar(x=[f"MLP{i}" for i in range(len(mlps))], y=_np(mlps), hovertemplate="%{x}: %{y:.3f}<extra></extra>")
        )
        fig.update_layout(xaxis_title="MLP layer", yaxis_title="score")
    else:
        x, y = list(range(mlps.shape[1])), [f"MLP{i}" for i in range(mlps.shape[0])]
        fig.add_trace(_diverging(mlps, x, y, "%{y} @ %{x}: %{z:.3f}<extra></extra>"))
        fig.update_layout(xaxis_title="position", yaxis_title="MLP layer", yaxis_autorange="reversed")
    return fig


def plot_scores(scores: Any) -> go.Figure:
    """The main picture of a Scores: heads if scored, else MLP layers, else neurons."""
    if scores.heads is not None:
        return scores_heatmap(scores)
    if scores.mlps is not None:
        return mlp_bars(scores)
    return neuron_strips(scores)


# Sub-models ------------------------------------------------------------------------------------


def _submodels(parts: Any) -> list[SubModel]:
    if isinstance(parts, SubModel):
        return [parts]
    items = parts.parts if hasattr(parts, "parts") else parts
    items = list(items.values()) if isinstance(items, Mapping) else list(items)
    if not items or not all(isinstance(p, SubModel) for p in items):
        raise TLSubmodelsError(
            f"expected a SubModel, a list or dict of SubModels, or a Factorization; got {type(parts).__name__}"
        )
    return items


def membership(parts: Any, *, title: str = "Sub-model membership") -> go.Figure:
    """Which components each sub-model holds: a part x component matrix of 0/1.

    Example:
        >>> fig = tls.viz.membership(factorization)  # or [circuit_a, circuit_b]  # doctest: +SKIP
    """
    subs = _submodels(parts)
    comps = sorted(set().union(*(s.components for s in subs)))
    z = [[1.0 if c in s else 0.0 for c in comps] for s in subs]
    fig = _figure(title, height=150 + 40 * len(subs))
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
    subs = _submodels(parts)
    names = [s.name for s in subs]
    z = [[len(a & b) for b in subs] for a in subs]
    fig = _figure(title)
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


def plot_submodel(sub: SubModel) -> go.Figure:
    """One sub-model laid out as a circuit graph (node-only)."""
    return circuit_graph(sub, title=f"Sub-model {sub.name} ({len(sub)} components)")


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
    fig = _figure(title or f"Prompt x sub-model usage (purity {factorization.purity:.2f})", height=500)
    fig.add_trace(
        go.Heatmap(
            z=_np(z),
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
        >>> fig = tls.viz.usage_positions(tls.usage(model, parts, prompt, reference=ref))  # doctest: +SKIP
    """
    for attr in ("values", "tokens", "parts", "target"):
        if not hasattr(usage, attr):
            raise TLSubmodelsError(f"usage_positions needs a Usage (from tls.usage); got {type(usage).__name__}")
    x = [f"{i}:{t}" for i, t in enumerate(usage.tokens)]
    fig = _figure(title or f"Contribution to the logit of {usage.target!r} by position ({usage.method})")
    fig.add_trace(_diverging(usage.values, x, list(usage.parts), "%{y} at %{x}: %{z:.3f}<extra></extra>", "logit drop"))
    fig.update_layout(xaxis_title="position:token", yaxis_title="sub-model", yaxis_autorange="reversed")
    return fig


def usage_tokens(usage: Any) -> RenderedHTML:
    """The prompt's tokens coloured by each sub-model's contribution (circuitsvis ``colored_tokens_multi``).

    Hover a token for every sub-model's value; click a sub-model's name to colour by it.

    Example:
        >>> tls.viz.usage_tokens(tls.usage(model, parts, prompt, reference=ref))  # doctest: +SKIP
    """
    if not hasattr(usage, "values") or not hasattr(usage, "tokens"):
        raise TLSubmodelsError(f"usage_tokens needs a Usage (from tls.usage); got {type(usage).__name__}")
    return colored_tokens_multi(list(usage.tokens), usage.values.T.detach().float().cpu(), list(usage.parts))


def plot_usage(usage: Any) -> go.Figure:
    return usage_positions(usage)


# Attention -------------------------------------------------------------------------------------


def attention_patterns(model: Any, tokens: str | Int[Tensor, " pos"] | Sequence[int], part: Any) -> RenderedHTML:
    """Attention patterns of a sub-model's heads on one prompt (circuitsvis ``attention_heads``).

    ``part`` is a SubModel or an iterable of heads / strings (``["L1H2", "L0H3"]``).

    Example:
        >>> tls.viz.attention_patterns(model, "IND w1 s3 s4 s5 s3 s4", circuit)  # doctest: +SKIP
    """
    from tl_submodels.explain import _prompt, _words

    sub = part if isinstance(part, SubModel) else SubModel(components=part, name="heads")
    sub.validate(model)
    heads = sorted({Head(c.layer, c.head) for c in sub if isinstance(c, Head)})
    if not heads:
        raise TLSubmodelsError(f"sub-model {sub.name!r} has no attention heads to show; it holds {sorted(sub)}")
    ids = _prompt(model, tokens)
    names = {f"blocks.{layer}.attn.hook_pattern" for layer in {h.layer for h in heads}}
    _, cache = model.run_with_cache(ids, names_filter=lambda n: n in names)
    pattern = torch.stack([cache[f"blocks.{h.layer}.attn.hook_pattern"][0, h.head] for h in heads])
    return attention_heads(
        attention=pattern.detach().float().cpu(),
        tokens=_words(model, ids[0]),
        attention_head_names=[str(h) for h in heads],
    )


# Circuit graph ---------------------------------------------------------------------------------


def _node(c: Component) -> str:
    c = c.without_pos()
    return f"L{c.layer} neurons" if isinstance(c, Neuron) else str(c)


def _reader_nodes(reader: str, nodes: Mapping[str, Any]) -> list[str]:
    """Graph nodes an edge reader (``L2H0.q``, ``L2.attn``, ``MLP2``, ``logits``) stands for."""
    base = reader.split(".")[0]
    if reader.endswith(".attn"):  # one reader per attention layer: every head of that layer in the graph
        return [n for n, info in nodes.items() if info["kind"] == "head" and f"L{info['layer']}" == base]
    if base.startswith("MLP"):
        layer = base[3:]
        return [n for n in (base, f"L{layer} neurons") if n in nodes]
    return [base] if base in nodes else []


def circuit_graph(
    parts: Any,
    *,
    scores: Any = None,
    edges: Any = None,
    max_edges: int = 40,
    title: str = "Circuit graph",
) -> go.Figure:
    """Components laid out by layer (heads, then the MLP), coloured by sub-model, with the logits at the right.

    Neurons of one layer are drawn as one node. With ``edges`` (from :func:`tls.attribute_edges`)
    the ``max_edges`` strongest edges between drawn nodes are drawn, width by ``|score|``
    (q/k/v edges into one head are summed); without, the graph is node-only. With ``scores``
    node sizes follow ``|score|``. Nodes in several sub-models are grey and list them on hover.

    Example:
        >>> tls.viz.circuit_graph(factorization, edges=tls.attribute_edges(model, task))  # doctest: +SKIP
    """
    subs = _submodels(parts)
    if max_edges < 0:
        raise TLSubmodelsError(f"max_edges must be >= 0, got {max_edges}")
    owners: dict[str, list[str]] = {}
    nodes: dict[str, dict[str, Any]] = {}
    for s in subs:
        for c in sorted(s):
            name = _node(c)
            if name not in nodes:
                kind = "head" if isinstance(c, Head) else "mlp"
                nodes[name] = {"kind": kind, "layer": c.layer, "index": c.index if isinstance(c, Head) else None}
            if s.name not in owners.setdefault(name, []):
                owners[name].append(s.name)
    n_layers = max((info["layer"] for info in nodes.values()), default=0) + 1
    # x: layer (heads at L, MLP at L + 0.5); y: heads spread by index, MLPs at -1
    for _name, info in nodes.items():
        info["x"] = info["layer"] + (0.0 if info["kind"] == "head" else 0.5)
        info["y"] = float(info["index"]) if info["kind"] == "head" else -1.5
    nodes["logits"] = {"kind": "logits", "layer": n_layers, "x": n_layers + 0.5, "y": 0.0}
    owners["logits"] = []

    size = dict.fromkeys(nodes, 18.0)
    if scores is not None:
        by_node: dict[str, float] = {}
        for c, v in scores.items():
            key = _node(c)
            if key in nodes:
                by_node[key] = by_node.get(key, 0.0) + abs(v)
        peak = max(by_node.values(), default=0.0) or 1.0
        for key, v in by_node.items():
            size[key] = 10.0 + 30.0 * v / peak

    fig = _figure(title, showlegend=True, height=450)
    if edges is not None:
        weights: dict[tuple[str, str], float] = {}
        for i, w in enumerate(edges.writers):
            if w not in nodes:
                continue
            for j, r in enumerate(edges.readers):
                v = float(edges.scores[i, j])
                if v != v:
                    continue
                for target in _reader_nodes(r, nodes):
                    weights[(w, target)] = weights.get((w, target), 0.0) + v
        strongest = sorted(weights.items(), key=lambda kv: -abs(kv[1]))[:max_edges]
        peak = max((abs(v) for _, v in strongest), default=0.0) or 1.0
        for (w, r), v in strongest:
            a, b = nodes[w], nodes[r]
            fig.add_trace(
                go.Scatter(
                    x=[a["x"], b["x"]],
                    y=[a["y"], b["y"]],
                    mode="lines",
                    line={"width": 0.5 + 6.0 * abs(v) / peak, "color": PALETTE[0] if v >= 0 else PALETTE[4]},
                    opacity=0.6,
                    hoverinfo="text",
                    text=f"{w} → {r}: {v:.3f}",
                    showlegend=False,
                )
            )
    colours = {s.name: PALETTE[i % len(PALETTE)] for i, s in enumerate(subs)}
    groups: dict[str, list[str]] = {}
    for name in nodes:
        own = owners[name]
        group = "logits" if name == "logits" else (own[0] if len(own) == 1 else "shared")
        groups.setdefault(group, []).append(name)
    for group, members in groups.items():
        colour = colours.get(group, SHARED if group == "shared" else "#333333")
        fig.add_trace(
            go.Scatter(
                x=[nodes[m]["x"] for m in members],
                y=[nodes[m]["y"] for m in members],
                mode="markers+text",
                marker={"size": [size[m] for m in members], "color": colour, "line": {"width": 1, "color": "white"}},
                text=members,
                textposition="top center",
                hovertext=[f"{m}: {', '.join(owners[m]) or 'output'}" for m in members],
                hoverinfo="text",
                name=group,
            )
        )
    fig.update_xaxes(
        tickvals=[*range(n_layers), n_layers + 0.5],
        ticktext=[*(f"layer {i}" for i in range(n_layers)), "logits"],
        showgrid=False,
    )
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    return fig


# Evaluations and diffs -------------------------------------------------------------------------


def evaluation_bars(evaluations: Any, *, title: str = "Sub-model evaluation (ablation)") -> go.Figure:
    """Faithfulness, necessity and accuracies (full, kept, ablated) of one or more Evaluations, grouped by sub-model;
    the largest accuracy drop on other tasks where specificity was measured.

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
    fig = _figure(title, barmode="group")
    for key, label in fields:
        fig.add_trace(go.Bar(name=label, x=x, y=[getattr(e, key) for e in evs]))
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
    fig = _figure(title or "Effect in model b minus effect in model a (noising, metric units)")
    x = [str(model_diff.components[i]) for i in order]
    fig.add_trace(
        _diverging(delta[:, order], x, list(model_diff.task_names), "%{y}, %{x}: %{z:.3f}<extra></extra>", "b - a")
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
    fig = _figure(title or "Top prediction with each sub-model ablated")
    fig.add_trace(
        go.Bar(
            x=[r["ablated"] for r in rows],
            y=[r["top"][0][1] for r in rows],
            text=[f"{r['top'][0][0]!s} (KL {r['kl']:.2f})" for r in rows],
            textposition="auto",
            hovertext=[", ".join(f"{w} {p:.2f}" for w, p in r["top"]) for r in rows],
        )
    )
    fig.update_layout(xaxis_title="ablated", yaxis_title="probability of the top token")
    return fig


# HTML summaries (notebook reprs) ---------------------------------------------------------------


def summary_html(title: str, rows: Sequence[tuple[str, Any]]) -> str:
    """A small two-column HTML table: the ``_repr_html_`` of the result objects (no scripts, works offline)."""
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in rows
    )
    return f"<div><b>{html.escape(title)}</b><table>{body}</table></div>"


__all__ = [
    "PALETTE",
    "attention_patterns",
    "circuit_graph",
    "diff_heatmap",
    "evaluation_bars",
    "explanation_bars",
    "membership",
    "mlp_bars",
    "neuron_strips",
    "overlap",
    "scores_heatmap",
    "summary_html",
    "usage_heatmap",
    "usage_positions",
    "usage_tokens",
]
