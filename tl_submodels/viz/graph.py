"""The circuit graph: sub-models laid out by layer, nodes sized by score, edges from attribute_edges."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go

from tl_submodels.components import Component, Head, Neuron
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.viz.style import PALETTE, SHARED, as_submodels, figure

__all__ = ["circuit_graph", "plot_submodel"]

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
    subs = as_submodels(parts)
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

    fig = figure(title, showlegend=True, height=450)
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
        for sign, colour in (("+", PALETTE[0]), ("-", PALETTE[4])):  # what the edge colours mean
            if any((v >= 0) == (sign == "+") for _, v in strongest):
                fig.add_trace(
                    go.Scatter(
                        x=[None], y=[None], mode="lines", line={"width": 3, "color": colour},
                        name=f"edge {sign}: {'moves the metric toward clean' if sign == '+' else 'against it'} (width: |score|)",
                    )
                )  # fmt: skip
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
                # MLP nodes sit below the heads: their labels below them, so no label sits on another
                textposition=["bottom center" if nodes[m]["kind"] == "mlp" else "top center" for m in members],
                hovertext=[f"{m}: {', '.join(owners[m]) or 'output'}" for m in members],
                hoverinfo="text",
                name=group,
            )
        )
    fig.update_xaxes(
        tickvals=[*range(n_layers), n_layers + 0.5],
        ticktext=[*(f"L{i}" for i in range(n_layers)), "logits"],
        title="layer (heads at the layer, its MLP half a layer to the right)",
        showgrid=False,
    )
    fig.update_yaxes(showticklabels=False, showgrid=False, zeroline=False)
    return fig


def plot_submodel(sub: Any) -> go.Figure:
    """One sub-model laid out as a circuit graph, node-only (what ``SubModel.plot()`` draws).

    Example:
        >>> fig = tls.viz.plot_submodel(tls.find_circuit(model, task))  # doctest: +SKIP
    """
    return circuit_graph(sub, title=f"Sub-model {sub.name} ({len(sub)} components)")
