"""viz: every function draws every zoo model, and each figure holds the data it claims to show."""

from __future__ import annotations

import json
import re

import numpy as np
import plotly.graph_objects as go
import pytest
import torch
from circuitsvis.utils.render import RenderedHTML

import tl_submodels as tls
from tl_submodels import viz
from tl_submodels.factorize import Factorization

ZOO = tls.zoo.list()


def first_task(name: str) -> str:
    return next(iter(tls.zoo.info(name)["tasks"]))


@pytest.fixture(scope="module", params=ZOO)
def drawn(request):
    name = request.param
    model = tls.zoo.load(name)
    task = tls.zoo.task(name, first_task(name), n=16, seed=3)
    scores = tls.attribute(model, task, method="atp")
    heads = sorted(c for c, _ in scores.top(40, kinds=("heads",)))
    a = tls.SubModel(components=heads[:3], name="a")
    b = tls.SubModel(components=heads[2:5], name="b")
    return name, model, task, scores, a, b


def props(render: RenderedHTML, element: str) -> dict:
    """The props circuitsvis serialised into its local (offline) HTML for ``element``."""
    match = re.search(rf"CircuitsVis\.{element},\s*(\{{.*\}})\s*\)\s*</script>", render.local_src, re.S)
    assert match, f"no {element} render call in the HTML"
    return json.loads(match.group(1))


def test_scores_heatmap_shows_the_head_scores(drawn):
    *_, scores, _, _ = drawn
    fig = viz.scores_heatmap(scores)
    assert isinstance(fig, go.Figure)
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), scores.heads.numpy(), rtol=0, atol=0)
    assert list(fig.data[0].y) == [f"L{i}" for i in range(scores.heads.shape[0])]
    np.testing.assert_allclose(np.asarray(scores.plot().data[0].z, dtype=float), scores.heads.numpy())


def test_mlp_views_show_the_mlp_scores_or_refuse_an_attention_only_model(drawn):
    scores = drawn[3]
    if scores.mlps is None:  # attention-only zoo model: a clear error, not an empty picture
        with pytest.raises(tls.TLSubmodelsError, match="no mlps"):
            viz.mlp_bars(scores)
        with pytest.raises(tls.TLSubmodelsError, match="no neurons"):
            viz.neuron_strips(scores)
        return
    np.testing.assert_allclose(np.asarray(viz.mlp_bars(scores).data[0].y, dtype=float), scores.mlps.numpy())
    fig = viz.neuron_strips(scores, top=2)
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), scores.neurons.numpy())
    labelled = {(a.y, a.text) for a in fig.layout.annotations}
    for layer in range(scores.neurons.shape[0]):
        for n in scores.neurons[layer].abs().topk(2).indices.tolist():
            assert (f"L{layer}", f"N{n}") in labelled


def test_per_position_heatmap_has_one_row_per_head():
    model = tls.zoo.load("induction-2l")
    task = tls.zoo.task("induction-2l", "induction", n=8)
    scores = tls.attribute(model, task, per_position=True, kinds=("heads",))
    z = np.asarray(viz.scores_heatmap(scores).data[0].z, dtype=float)
    layers, pos, heads = scores.heads.shape
    assert z.shape == (layers * heads, pos)
    np.testing.assert_allclose(z[1 * heads + 2], scores.heads[1, :, 2].numpy())


def test_membership_and_overlap_count_components(drawn):
    *_, a, b = drawn
    m = viz.membership([a, b])
    comps = sorted(a | b)
    assert list(m.data[0].x) == [str(c) for c in comps]
    assert [list(r) for r in m.data[0].z] == [[float(c in s) for c in comps] for s in (a, b)]
    o = viz.overlap({"a": a, "b": b}).data[0].z
    assert [list(r) for r in o] == [[len(a), len(a & b)], [len(a & b), len(b)]]


def test_circuit_graph_nodes_colours_and_edges(drawn):
    _, model, task, scores, a, b = drawn
    edges = tls.attribute_edges(model, task)
    fig = viz.circuit_graph([a, b], scores=scores, edges=edges, max_edges=5)
    nodes = {t.name: list(t.text) for t in fig.data if t.mode == "markers+text"}
    assert set(nodes["shared"]) == {str(c) for c in a & b}
    assert set(nodes["a"]) == {str(c) for c in a - b}
    assert nodes["logits"] == ["logits"]
    lines = [t for t in fig.data if t.mode == "lines" and t.showlegend is False]
    assert 0 < len(lines) <= 5
    # the edge colours have a legend: one entry per sign drawn, in the colour of those edges
    legend = {t.name.split(":")[0]: t.line.color for t in fig.data if t.mode == "lines" and t.showlegend is not False}
    assert legend == {f"edge {'+' if c == viz.PALETTE[0] else '-'}": c for c in {t.line.color for t in lines}}
    # the drawn edge weights are the largest sums of edge scores between drawn nodes
    drawn_heads = {str(c): c.layer for c in a | b}
    weights: dict[tuple[str, str], float] = {}
    for i, w in enumerate(edges.writers):
        for j, r in enumerate(edges.readers):
            v = float(edges.scores[i, j])
            base = r.split(".")[0]
            if r.endswith(".attn"):  # layer-granularity reader: every drawn head of that layer
                targets = [h for h, layer in drawn_heads.items() if f"L{layer}" == base]
            else:
                targets = [base] if base in drawn_heads or base == "logits" else []
            for target in targets:
                if w in drawn_heads and v == v:
                    weights[(w, target)] = weights.get((w, target), 0.0) + v
    best = max(abs(v) for v in weights.values())
    assert any(f": {best:.3f}" in t.text or f": {-best:.3f}" in t.text for t in lines)
    node_only = viz.circuit_graph(a)
    assert not [t for t in node_only.data if t.mode == "lines"]
    assert a.plot().data  # the SubModel shortcut draws the same graph


def test_usage_views_show_the_usage(drawn):
    _, model, task, _, a, b = drawn
    u = tls.usage(model, task.clean[0], [a, b], ablation="zero")
    fig = viz.usage_positions(u)
    np.testing.assert_allclose(np.asarray(fig.data[0].z, dtype=float), u.values.numpy())
    assert list(fig.data[0].y) == ["a", "b"]
    assert isinstance(u.plot(), go.Figure)
    p = props(viz.usage_tokens(u), "ColoredTokensMulti")
    assert p["tokens"] == u.tokens and p["labels"] == ["a", "b"]
    np.testing.assert_allclose(np.asarray(p["values"]), u.values.T.numpy(), atol=1e-6)


def test_attention_patterns_show_the_heads_patterns(drawn):
    _, model, task, _, a, _ = drawn
    render = viz.attention_patterns(model, task.clean[0], a)
    p = props(render, "AttentionHeads")
    heads = sorted(a)
    assert p["attentionHeadNames"] == [str(h) for h in heads]
    _, cache = model.run_with_cache(task.clean[:1])
    want = torch.stack([cache[f"blocks.{h.layer}.attn.hook_pattern"][0, h.head] for h in heads])
    np.testing.assert_allclose(np.asarray(p["attention"]), want.numpy(), atol=1e-6)
    with pytest.raises(tls.TLSubmodelsError, match="no attention heads"):
        viz.attention_patterns(model, task.clean[0], tls.SubModel(components=[], name="m"))


def test_evaluation_explanation_factorization_and_diff_pictures(drawn):
    _, model, task, _, a, b = drawn
    ev = tls.evaluate(model, a, task, ablation="zero")
    fig = ev.plot()
    bars = {t.name: t.y[0] for t in fig.data}
    assert bars["faithfulness"] == ev.faithfulness and bars["accuracy (it ablated)"] == ev.accuracy_ablated
    ex = tls.explain(model, task.clean[0], [a, b], ablation="zero", k=3)
    fig = ex.plot()
    assert list(fig.data[0].x) == ["full", "a", "b"]
    assert list(fig.data[0].y) == [r["top"][0][1] for r in ex.rows]
    # a Factorization and a ModelDiff made by hand: the pictures must show exactly their numbers
    usage = torch.rand(6, 2)
    fac = Factorization(
        parts=[a, b],
        labels=["t1", "t2"],
        task_names=["t1", "t2"],
        task_share=torch.eye(2),
        usage=usage,
        prompt_task=["t2", "t1", "t2", "t1", "t1", "t2"],
        evaluations=[ev, ev],
        effects=torch.zeros(6, 1),
        components=[sorted(a)[0]],
        loadings=torch.zeros(2, 1),
        k_errors={2: 0.0},
        ablation="zero",
        method="patch",
        cores=[a, b],
    )
    z = np.asarray(fac.plot().data[0].z, dtype=float)
    np.testing.assert_allclose(z, usage[[1, 3, 4, 0, 2, 5]].numpy(), rtol=1e-6)
    d = tls.ModelDiff(
        components=sorted(a | b),
        task_names=["t1"],
        effects_a=torch.zeros(1, len(a | b)),
        effects_b=torch.arange(len(a | b), dtype=torch.float)[None],
        ranking=[],
        parts=[],
        validation=[],
        scores=[],
    )
    fig = viz.diff_heatmap(d, top=2)
    assert isinstance(d.plot(), go.Figure)
    assert list(fig.data[0].x) == [str(c) for c in sorted(a | b)[::-1][:2]]


def test_reprs_are_offline_html(drawn):
    _, model, task, scores, a, _ = drawn
    ev = tls.evaluate(model, a, task, ablation="zero")
    for obj in (scores, a, ev):
        html = obj._repr_html_()
        assert html.startswith("<div>") and "<script" not in html
    assert str(sorted(a)[0]) in a._repr_html_()
