"""SubModel: set algebra laws, JSON round-trip, schema errors."""

from __future__ import annotations

import json

import pytest

import tl_submodels as tls
from tl_submodels import SubModel


def sm(*names: str, name: str = "s") -> SubModel:
    return SubModel(components=list(names), name=name)


def test_algebra():
    a, b, c = sm("L0H1", "L1H2", "MLP0"), sm("L1H2", "L0N5"), sm("MLP0", "L0N5", "L2H0")
    assert {str(x) for x in a | b} == {"L0H1", "L1H2", "MLP0", "L0N5"}
    assert {str(x) for x in a & b} == {"L1H2"}
    assert {str(x) for x in a - b} == {"L0H1", "MLP0"}
    # laws
    assert (a | b).components == (b | a).components
    assert (a & (b | c)).components == ((a & b) | (a & c)).components
    assert ((a - b) | (a & b)).components == a.components
    assert (a - a).components == frozenset()
    assert a.union(["L3H3"]).components == a.components | {tls.Head(3, 3)}
    assert "L0H1" in a and tls.Head(0, 1) in a and "L9H9" not in a
    assert [str(x) for x in a] == ["L0H1", "MLP0", "L1H2"]


def test_json_round_trip(tmp_path):
    a = SubModel(components=["L0H1", "L1H2@3", "L0N5", "MLP1"], name="induction", description="found by a test")
    path = a.save(tmp_path / "a.json")
    b = SubModel.load(path)
    assert b == a
    assert SubModel.from_dict(json.loads(json.dumps(a.to_dict()))) == a
    assert json.loads(path.read_text())["version"] == 1


def test_json_errors(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"schema": "tl_submodels.submodel", "version": 1, "comp')
    with pytest.raises(tls.TLSubmodelsError, match="not valid JSON"):
        SubModel.load(bad)
    other = tmp_path / "v2.json"
    other.write_text(json.dumps({"schema": "tl_submodels.submodel", "version": 2, "components": []}))
    with pytest.raises(
        tls.TLSubmodelsError, match=r"schema .tl_submodels\.submodel. version 2; this tl_submodels reads version 1"
    ):
        SubModel.load(other)
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"heads": [1, 2]}))
    with pytest.raises(tls.TLSubmodelsError, match="not a tl_submodels sub-model"):
        SubModel.load(foreign)
    with pytest.raises(tls.TLSubmodelsError, match="no such file"):
        SubModel.load(tmp_path / "missing.json")
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps({"schema": "tl_submodels.submodel", "version": 1, "components": ["L1Q3"]}))
    with pytest.raises(tls.TLSubmodelsError, match="cannot parse component 'L1Q3'"):
        SubModel.load(unknown)


def test_validate_against_model(mlp_model):
    sm("L2H3", "L0N63", "MLP2").validate(mlp_model)
    with pytest.raises(
        tls.TLSubmodelsError, match=r"L5H0: layer 5 out of range; this model has n_layers=3 \(layers 0-2\)"
    ):
        sm("L5H0").validate(mlp_model)


def test_components_may_be_given_positionally_and_lists_work_where_a_sub_model_is_taken(mlp_model, mlp_task):
    """Issue 19: ``SubModel(["L0H0"])`` raised a bare TypeError, and ``evaluate`` refused a list of components."""
    assert SubModel(["L0H0", "L1N3"], name="a") == SubModel(components=["L0H0", "L1N3"], name="a")
    assert SubModel.of(["L0H0"]) == SubModel(["L0H0"]) and SubModel.of(a := SubModel(["L1H1"], name="x")) is a
    listed = tls.evaluate(mlp_model, ["L0H0", "L1H2"], mlp_task, ablation="zero")
    typed = tls.evaluate(mlp_model, SubModel(["L0H0", "L1H2"]), mlp_task, ablation="zero")
    assert listed.faithfulness == typed.faithfulness and listed.necessity == typed.necessity and listed.size == 2
    with pytest.raises(tls.TLSubmodelsError, match="n_layers"):
        tls.evaluate(mlp_model, ["L9H0"], mlp_task, ablation="zero")
