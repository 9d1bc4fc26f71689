"""Results as values: every result type round-trips through strict JSON, and data of another schema or
version is refused with a clear message."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from conftest import MLP_CFG, make_mlp_task
from hypothesis import given, settings
from hypothesis import strategies as st

import tl_submodels as tls
from tl_submodels import model as tlmodel
from tl_submodels.diff import AccuracyChange, Difference
from tl_submodels.explain import Prediction
from tl_submodels.values import decode, encode


def strict_json(data):
    """Through text and back, refusing NaN and Infinity (not JSON: jq and most parsers reject them)."""
    text = json.dumps(data, allow_nan=False)
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def same(a, b) -> bool:
    """Equal values: tensors by dtype, shape and content (NaN equal to NaN), floats with NaN equal to NaN."""
    if isinstance(a, torch.Tensor):
        if not (isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape):
            return False
        return bool(((a == b) | (a.isnan() & b.isnan())).all()) if a.is_floating_point() else a.equal(b)
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, tuple | list):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if dataclasses.is_dataclass(a) and not isinstance(a, type):
        fields = [f.name for f in dataclasses.fields(a) if f.compare]
        return type(a) is type(b) and all(same(getattr(a, n), getattr(b, n)) for n in fields)
    return a == b


# ----- the codec, over generated values

floats = st.floats(allow_nan=True, allow_infinity=True, width=32)
tensors = st.one_of(
    st.lists(floats, min_size=0, max_size=12).map(lambda v: torch.tensor(v, dtype=torch.float32)),
    st.lists(st.integers(-(2**40), 2**40), min_size=1, max_size=12).map(lambda v: torch.tensor(v).reshape(-1, 1)),
    st.lists(st.booleans(), min_size=1, max_size=6).map(torch.tensor),
)
components = st.sampled_from(["L0H1", "L2N17", "MLP1", "L1H0@3"]).map(tls.parse_component)
leaves = st.one_of(st.none(), st.booleans(), st.integers(), floats.map(float), st.text(max_size=8), tensors, components)
values = st.recursive(
    leaves,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.text(min_size=1, max_size=5).filter(lambda k: not k.startswith("_")), inner, max_size=3),
        st.dictionaries(st.integers(), inner, max_size=3),
        st.builds(Difference, components, st.text(max_size=5), floats.map(float)),
    ),
    max_leaves=12,
)


@settings(max_examples=200, deadline=None)
@given(x=values)
def test_encode_then_decode_gives_the_value_back_through_strict_json(x):
    assert same(decode(strict_json(encode(x))), x)


# ----- every result type


@pytest.fixture(scope="module")
def results(mlp_model, mlp_state, induction_model):
    """One real instance of every result type, on the small random model (and the induction zoo model for a trace)."""
    task = make_mlp_task(mlp_model, n=6)
    other = make_mlp_task(mlp_model, n=6, seed=3).replace(name="other")
    parts = [tls.SubModel(["L0H1", "L1N3"], name="a"), tls.SubModel(["MLP2", "L2H0"], name="b")]
    prompt = task.clean[0]
    kl = tls.Task.from_tokens(mlp_model, clean=task.clean, corrupt=task.corrupt, answer=task.answer, metric="kl")
    g = torch.Generator().manual_seed(9)
    changed = tlmodel.build_from_tl_checkpoint(
        MLP_CFG, {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in mlp_state.items()}
    )
    return {
        "Task": task,
        "Task (kl, clean logits)": kl,
        "Scores": tls.patch(mlp_model, task, kinds=("heads", "mlps"), n_boot=50),
        "SubModel": parts[0],
        "Evaluation": tls.evaluate(mlp_model, parts[0], task, others=[other], minimality=True, baselines=3),
        "Usage": tls.usage(mlp_model, prompt, parts, ablation="zero"),
        "Explanation": tls.explain(mlp_model, prompt, parts, ablation="zero"),
        "Edges": tls.attribute_edges(mlp_model, task),
        "Factorization": tls.factorize(mlp_model, [task, other], k=2),
        "ModelDiff": tls.diff(mlp_model, changed, [task, other], ablation="zero", min_score=-1.0),
        "Decomposition": tls.decompose(mlp_model, task.clean, k=2, method="ablation"),
        "Trace": tls.trace(
            induction_model, [0, 3, 4, 5, 3, 4], [tls.SubModel(["L1H0"], name="x")], max_new_tokens=2, ablation="zero"
        ),
    }


KINDS = ["Task", "Task (kl, clean logits)", "Scores", "SubModel", "Evaluation", "Usage", "Explanation", "Edges",
         "Factorization", "ModelDiff", "Decomposition", "Trace"]  # fmt: skip


@pytest.mark.parametrize("kind", KINDS)
def test_every_result_round_trips_through_strict_json(kind, results):
    x = results[kind]
    data = strict_json(x.to_dict())
    assert isinstance(data["schema"], str) and isinstance(data["version"], int)
    back = type(x).from_dict(data)
    assert type(back) is type(x)
    assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps(x.to_dict(), sort_keys=True)
    for name in getattr(x, "__dataclass_fields__", {}):  # field by field, tensors and NaNs included
        if not name.startswith("_") and name not in getattr(x, "NOT_SAVED", ()):
            assert same(getattr(back, name), getattr(x, name)), name


@pytest.mark.parametrize("kind", KINDS)
def test_another_schema_version_or_kind_is_refused(kind, results):
    x = results[kind]
    data = x.to_dict()
    with pytest.raises(tls.TLSubmodelsError, match="version 99"):
        type(x).from_dict({**data, "version": 99})
    with pytest.raises(tls.TLSubmodelsError, match="schema"):
        type(x).from_dict({**data, "schema": "tl_submodels.something_else"})


def test_records_are_named_not_positional(results):
    d, ex = results["ModelDiff"], results["Explanation"]
    assert all(isinstance(r, Difference) for r in d.ranking) and d.ranking[0].component in d.components
    change = d.accuracy(0, "b", d.parts[0].name)
    assert isinstance(change, AccuracyChange) and 0 <= change.full <= 1
    assert isinstance(ex.rows[0].top[0], Prediction) and ex.rows[0].ablated == "full"
    assert ex.rows[1]["kl"] == ex.rows[1].kl  # the rows still read as the dicts they were


def test_a_task_with_a_metric_function_says_it_cannot_be_saved(mlp_model):
    task = make_mlp_task(mlp_model, n=4, metric=lambda logits, t: logits[:, -1, 0].mean())
    with pytest.raises(tls.TLSubmodelsError, match="custom metric function"):
        task.to_dict()


def test_scores_files_without_a_schema_are_refused(results):
    old = {k: v for k, v in results["Scores"].to_dict().items() if k not in ("schema", "version")}
    with pytest.raises(tls.TLSubmodelsError, match=r"expected schema 'tl_submodels\.Scores'"):
        tls.Scores.from_dict(old)
