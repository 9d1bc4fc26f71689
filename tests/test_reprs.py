"""Every result's repr is a short summary (what, how many, the top few); the full content is in .to_frame()."""

from __future__ import annotations

import pytest
import torch
from conftest import MLP_CFG, make_mlp_task, random_tl_state

import tl_submodels as tls
from tl_submodels import model as tlmodel

LIMIT = 2000  # characters: a few lines in a notebook cell


@pytest.fixture(scope="module")
def results(mlp_model, mlp_state):
    task = make_mlp_task(mlp_model, n=8).replace(name="one")
    two = make_mlp_task(mlp_model, n=8, seed=2, diff_at=7).replace(name="two")
    other = tlmodel.build_from_tl_checkpoint(MLP_CFG, random_tl_state(MLP_CFG, seed=5))
    units = [f"L{layer}H{h}" for layer in range(3) for h in range(4)] + [
        f"L{layer}N{n}" for layer in range(3) for n in range(64)
    ]
    every = tls.SubModel(units, name="everything")  # 12 heads and 192 neurons
    parts = [tls.SubModel(["L0H0", "L1N3"], name="a"), tls.SubModel(["MLP2", "L2H1"], name="b")]
    scores = tls.patch(mlp_model, task, per_example=True)
    return {
        "task": task,
        "scores": scores,
        "attribution": tls.attribute(mlp_model, task, method="ig"),
        "submodel": every,
        "evaluation": tls.evaluate(mlp_model, parts[0], task, ablation="zero", others=[two]),
        "factorization": tls.factorize(mlp_model, [task, two], k=3),
        "diff": tls.diff(mlp_model, other, [task, two], ablation="zero", min_score=-1.0),
        "edges": tls.attribute_edges(mlp_model, task),
        "usage": tls.usage(mlp_model, torch.arange(12), parts, ablation="zero"),
        "explanation": tls.explain(mlp_model, torch.arange(12), parts, ablation="zero"),
        "trace": tls.trace(mlp_model, torch.arange(6), parts, max_new_tokens=12, ablation="zero"),
        "decomposition": tls.decompose(
            mlp_model, torch.randint(0, 50, (16, 12), generator=torch.Generator().manual_seed(0)), k=2
        ),
    }


@pytest.mark.parametrize(
    "name",
    ["task", "scores", "attribution", "submodel", "evaluation", "factorization", "diff", "edges", "usage", "explanation", "trace",
     "decomposition"],
)  # fmt: skip
def test_repr_is_a_short_summary(results, name):
    value = results[name]
    text = repr(value)
    assert len(text) < LIMIT, f"{name}: {len(text)} characters:\n{text[:3000]}"
    assert type(value).__name__ in text or name in text.lower(), text
    if hasattr(value, "_repr_html_"):
        assert len(value._repr_html_()) < 20 * LIMIT  # notebook tables may be wider, never the whole content


def test_reprs_name_what_they_hold(results):
    assert "everything" in repr(results["submodel"]) and "204 components" in repr(results["submodel"])
    assert "more" in repr(results["submodel"])  # the first few members, then how many more
    top = results["scores"].top(1)[0][0]
    assert str(top) in repr(results["scores"])
    d = results["diff"]
    assert f"{len(d.parts)} differing parts" in repr(d) and str(d.ranking[0][0]) in repr(d)
    assert "faithfulness" in repr(results["evaluation"]) and "two" in repr(results["evaluation"])
    assert f"{len(results['factorization'].parts)} parts" in repr(results["factorization"])
