"""find_circuit and evaluate on the zoo's known circuit, and evaluate's definitions."""

from __future__ import annotations

import pytest
import torch
from conftest import MLP_CFG, hook_count, make_mlp_task

import tl_submodels as tls
from tl_submodels import model as tlmodel


@pytest.fixture(scope="module")
def circuit(induction_model, induction_task):
    return tls.find_circuit(induction_model, induction_task, target=0.9, ablation="mean")


def test_circuit_contains_the_ground_truth(circuit):
    truth = tls.zoo.info("induction-2l")["ground_truth"]
    expected = set(truth["previous_token_heads"]) | set(truth["induction_heads"])
    assert truth["previous_token_heads"] and truth["induction_heads"]
    assert expected <= {str(c) for c in circuit}


def test_circuit_is_faithful_and_necessary(induction_model, circuit):
    task = tls.zoo.task("induction-2l", "induction", n=64, seed=123, model=induction_model)  # held-out prompts
    ev = tls.evaluate(induction_model, circuit, task, ablation="mean")
    assert ev.faithfulness >= 0.9
    assert ev.size == len(circuit)
    chance = tls.zoo.info("induction-2l")["tasks"]["induction"]["chance"]
    assert ev.accuracy_full >= 0.95
    assert ev.accuracy_ablated <= 5 * chance  # near chance
    assert ev.necessity > 0.8


def test_evaluate_matches_its_definition(induction_model, induction_task):
    model, task = induction_model, induction_task
    sub = tls.SubModel(components=["L0H2", "L1H2"], name="partial")
    ev = tls.evaluate(model, sub, task, ablation="zero")

    def m(hooks):
        return float(task.metric(model.run_with_hooks(task.clean, fwd_hooks=hooks)))

    everything = tls.complement(model, [])
    full = m([])
    kept = m(tls.ablation_hooks(model, [c for c in everything if str(c) not in ("L0H2", "L1H2")]))
    none = m(tls.ablation_hooks(model, everything))
    removed = m(tls.ablation_hooks(model, sub))
    assert ev.faithfulness == pytest.approx((kept - none) / (full - none), abs=1e-4)
    assert ev.necessity == pytest.approx((full - removed) / (full - none), abs=1e-4)
    assert ev.fraction == pytest.approx(2 / 8)


def test_empty_and_full_submodels(induction_model, induction_task):
    empty = tls.evaluate(induction_model, tls.SubModel(components=[], name="empty"), induction_task)
    assert empty.faithfulness == pytest.approx(0.0, abs=1e-6) and empty.necessity == pytest.approx(0.0, abs=1e-6)
    full = tls.evaluate(induction_model, tls.SubModel(components=tls.complement(induction_model, [])), induction_task)
    assert full.faithfulness == pytest.approx(1.0, abs=1e-6) and full.necessity == pytest.approx(1.0, abs=1e-6)


def test_no_hooks_left(induction_model, induction_task):
    before = hook_count(induction_model)
    tls.find_circuit(induction_model, induction_task.subset(slice(0, 8)), target=0.8)
    assert hook_count(induction_model) == before


def test_bad_targets(induction_model, induction_task):
    for target in (0.0, 1.5):
        with pytest.raises(tls.TLSubmodelsError, match="target"):
            tls.find_circuit(induction_model, induction_task, target=target)


def test_unreachable_target_is_an_error_not_a_silent_circuit(mlp_state):
    # Heads whose outputs are zeroed by hand carry nothing: ranking heads only (every MLP ablated),
    # no set of them can restore the metric, so the search must refuse rather than return one.
    silent = {k: (torch.zeros_like(v) if k.endswith("attn.W_O") else v) for k, v in mlp_state.items()}
    model = tlmodel.build_from_tl_checkpoint(MLP_CFG, silent)
    task = make_mlp_task(model)
    with pytest.raises(tls.TLSubmodelsError, match=r"kinds=\('heads', 'mlps'\)"):
        tls.find_circuit(model, task, target=0.5, kinds=("heads",), ablation="zero")


def test_circuit_with_mlps_reaches_target(mlp_model, mlp_task):
    sub = tls.find_circuit(mlp_model, mlp_task, target=0.8, kinds=("heads", "mlps"), ablation="zero")
    assert tls.evaluate(mlp_model, sub, mlp_task, ablation="zero").faithfulness >= 0.8


@pytest.mark.parametrize("which", ["induction", "mlp"])
def test_attribution_plus_exact_is_as_faithful_as_exact(which, request):
    model, task = request.getfixturevalue(f"{which}_model"), request.getfixturevalue(f"{which}_task")
    target = 0.9 if which == "induction" else 0.8
    exact = tls.find_circuit(model, task, target=target, method="exact")
    fast = tls.find_circuit(model, task, target=target, method="attribution+exact")
    ev_exact = tls.evaluate(model, exact, task)
    ev_fast = tls.evaluate(model, fast, task)
    assert ev_fast.faithfulness >= target and ev_exact.faithfulness >= target
    if which == "induction":
        truth = tls.zoo.info("induction-2l")["ground_truth"]
        assert set(truth["previous_token_heads"]) | set(truth["induction_heads"]) <= {str(c) for c in fast}
