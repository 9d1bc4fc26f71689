"""Uncertainty: bootstrap intervals that cover, significance with the planted groups as truth, random baselines.

Oracles: the value measured on 2,048 prompts (calibration), scipy's own bootstrap (the BCa ends), the
multitask zoo's planted groups and the induction zoo's ground-truth heads (what is real).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy import stats as sp

import tl_submodels as tls
from tl_submodels import stats
from tl_submodels.cli import main
from tl_submodels.zoo import multitask


def test_bca_ends_equal_scipys_bootstrap_on_a_ratio_of_paired_means():
    g = torch.Generator().manual_seed(3)
    a = torch.empty(80, dtype=torch.float64).exponential_(generator=g)
    b = 2 * a + 1 + 0.5 * torch.randn(80, generator=g, dtype=torch.float64)
    low, high = stats.bca(torch.stack([a, b], 1), lambda x, y: x / y, n_boot=20000, seed=0)
    ref = sp.bootstrap(
        (a.numpy(), b.numpy()),
        lambda x, y, axis: x.mean(axis) / y.mean(axis),
        paired=True,
        vectorized=True,
        n_resamples=20000,
        method="BCa",
        random_state=np.random.default_rng(0),
    ).confidence_interval
    width = ref.high - ref.low
    assert abs(float(low) - ref.low) < 0.03 * width and abs(float(high) - ref.high) < 0.03 * width


def test_an_interval_of_a_statistic_no_resample_moves_is_the_point():
    low, high = stats.bca(torch.ones(16, 1), lambda m: m, n_boot=100)
    assert float(low) == float(high) == 1.0


def _circuits() -> list[tuple[str, str, tls.SubModel]]:
    gt = tls.zoo.info("induction-2l")["ground_truth"]
    planted = multitask.planted(3, 8, 256)
    return [
        ("induction-2l", "induction", tls.SubModel(gt["previous_token_heads"] + gt["induction_heads"], name="gt")),
        ("multitask-3l", "addition", tls.SubModel(planted["addition"], name="addition")),
    ]


@pytest.mark.parametrize(("name", "task", "circuit"), _circuits(), ids=["induction-2l", "multitask-3l-addition"])
def test_faithfulness_intervals_from_64_prompts_cover_the_value_on_2048(zoo_model, name, task, circuit):
    model = zoo_model(name)
    truth = tls.evaluate(model, circuit, tls.zoo.task(name, task, n=2048, seed=1000), n_boot=None).faithfulness
    covered, widths = 0, {64: [], 256: []}
    for seed in range(50):
        ev = tls.evaluate(model, circuit, tls.zoo.task(name, task, n=64, seed=seed), seed=seed)
        low, high = ev.faithfulness_ci
        assert low <= ev.faithfulness <= high
        covered += low <= truth <= high
        widths[64].append(high - low)
    for seed in range(8):
        ev = tls.evaluate(model, circuit, tls.zoo.task(name, task, n=256, seed=100 + seed), seed=seed)
        widths[256].append(ev.faithfulness_ci[1] - ev.faithfulness_ci[0])
    assert covered / 50 >= 0.88, (covered, truth)
    # four times the prompts: about half the width
    assert np.mean(widths[256]) < 0.7 * np.mean(widths[64])


def test_every_evaluation_value_has_its_interval(mlp_model, mlp_task):
    other = mlp_task.replace(name="other")
    ev = tls.evaluate(mlp_model, ["L0H1", "MLP1"], mlp_task, others=[other], ablation="zero")
    for name in ("faithfulness", "necessity", "accuracy_full", "accuracy_kept", "accuracy_ablated"):
        low, high = getattr(ev, f"{name}_ci")
        assert low <= getattr(ev, name) + 1e-6 and getattr(ev, name) <= high + 1e-6, name
    assert ev.specificity_ci is not None and set(ev.specificity_ci) == {"other"}
    assert ev.n_boot == stats.DEFAULT_N_BOOT and "BCa" in repr(ev)
    assert tls.evaluate(mlp_model, ["L0H1"], mlp_task, n_boot=None).faithfulness_ci is None


def test_score_intervals_hold_the_scores_and_narrow_with_prompts(zoo_model):
    model = zoo_model("induction-2l")
    width = []
    for n in (32, 128):
        scores = tls.patch(model, tls.zoo.task("induction-2l", "induction", n=n), kinds="heads", n_boot=500)
        low, high = scores.heads_ci
        assert bool((low <= scores.heads + 1e-6).all() and (scores.heads <= high + 1e-6).all())
        width.append(float((high - low)[1].mean()))  # the induction heads
        frame = scores.to_frame()
        assert {"ci_low", "ci_high"} <= set(frame.columns)
    assert width[1] < 0.7 * width[0]
    # the same from AtP's per-example estimates
    atp = tls.attribute(model, tls.zoo.task("induction-2l", "induction", n=32), kinds="heads", n_boot=200)
    assert atp.heads_ci is not None and bool((atp.heads_ci[0] <= atp.heads + 1e-6).all())


def test_significant_finds_planted_members_and_nothing_else_on_multitask(zoo_model):
    model = zoo_model("multitask-3l")
    planted = multitask.planted(3, 8, 256)
    for task in multitask.TASKS:
        scores = tls.patch(
            model, tls.zoo.task("multitask-3l", task, n=256, seed=0), kinds=("heads", "neurons"), per_example=True
        )
        found = {str(c) for c in scores.significant(0.05, min_effect=0.01)}
        assert found, task
        precision = len(found & set(planted[task])) / len(found)
        assert precision >= 0.9, (task, sorted(found - set(planted[task])))
        # every component found has an effect of that size (the test is of |effect| > 0.01, not of effect != 0)
        effects = {str(c): v for c, v in scores.items()}
        assert all(abs(effects[c]) > 0.01 for c in found)


def test_significant_against_zero_on_induction_finds_the_ground_truth_heads(zoo_model):
    model = zoo_model("induction-2l")
    gt = tls.zoo.info("induction-2l")["ground_truth"]
    scores = tls.patch(model, tls.zoo.task("induction-2l", "induction", n=64), kinds="heads", per_example=True)
    found = {str(c) for c in scores.significant(0.05)}
    assert set(gt["previous_token_heads"] + gt["induction_heads"]) <= found
    p = scores.p_values()["heads"]
    assert p.shape == scores.heads.shape and bool((p[1] < 1e-6).all())


def test_zoo_circuits_beat_their_random_baselines(zoo_model):
    planted = multitask.planted(3, 8, 256)
    gt = tls.zoo.info("induction-2l")["ground_truth"]
    cases = [("induction-2l", "induction", gt["previous_token_heads"] + gt["induction_heads"])]
    cases += [("multitask-3l", task, planted[task]) for task in multitask.TASKS]
    cases += [("harmful-3l", "backdoor", planted["backdoor"])]
    for name, task, members in cases:
        model = zoo_model(name)
        ev = tls.evaluate(model, members, tls.zoo.task(name, task, n=64, model=model), baselines=100, n_boot=None)
        assert ev.baselines is not None and len(ev.baselines.faithfulness) == 100
        assert ev.baseline_percentile is not None and ev.baseline_percentile >= 99, (task, ev)
        assert ev.faithfulness > float(ev.baselines.faithfulness.max()) or ev.baseline_percentile == 100


def test_bad_input_is_refused_clearly(mlp_model, mlp_task):
    with pytest.raises(tls.TLSubmodelsError, match="n_boot is a number of bootstrap resamples"):
        tls.evaluate(mlp_model, ["L0H1"], mlp_task, n_boot=1)
    with pytest.raises(tls.TLSubmodelsError, match="n_boot"):
        tls.patch(mlp_model, mlp_task, kinds="heads", n_boot=0)
    with pytest.raises(tls.TLSubmodelsError, match="level is a confidence level"):
        tls.evaluate(mlp_model, ["L0H1"], mlp_task, level=1.5)
    one = mlp_task.subset([0])
    with pytest.raises(tls.TLSubmodelsError, match="at least 2"):
        tls.evaluate(mlp_model, ["L0H1"], one, ablation="zero")
    scores = tls.patch(mlp_model, mlp_task, kinds="heads", per_example=True)
    for alpha in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(tls.TLSubmodelsError, match=r"alpha is a false-discovery rate in \(0, 1\)"):
            scores.significant(alpha)
    with pytest.raises(tls.TLSubmodelsError, match="per_example=True"):
        tls.patch(mlp_model, mlp_task, kinds="heads").significant()
    with pytest.raises(tls.TLSubmodelsError, match="per_example=True"):
        tls.patch(mlp_model, mlp_task, kinds="heads").with_intervals()
    heads = [f"L{layer}H{h}" for layer in range(3) for h in range(4)]
    with pytest.raises(tls.TLSubmodelsError, match="every component of its kinds"):
        tls.evaluate(mlp_model, heads, mlp_task, baselines=5)
    with pytest.raises(tls.TLSubmodelsError, match="baselines is a number"):
        tls.evaluate(mlp_model, ["L0H1"], mlp_task, baselines=-1)


def test_find_circuit_on_induction_holds_out_and_is_stable(zoo_model):
    model = zoo_model("induction-2l")
    gt = tls.zoo.info("induction-2l")["ground_truth"]
    truth = gt["previous_token_heads"] + gt["induction_heads"]
    circuit = tls.find_circuit(model, tls.zoo.task("induction-2l", "induction", n=64), holdout=0.2, stability=20)
    ev = circuit.evidence
    assert (ev.chosen_on, ev.held_out) == (51, 13)
    assert ev.holdout.faithfulness >= 0.9 and ev.holdout.faithfulness_ci is not None
    assert all(ev.stability.frequency[h] >= 0.9 for h in truth), ev.stability.frequency
    assert ev.stability.n == 20 and len(ev.stability.jaccard) == 20 and 0 <= ev.stability.mean_jaccard <= 1
    # the evidence travels with the sub-model's JSON, and set algebra drops it
    back = tls.SubModel.from_dict(json.loads(json.dumps(circuit.to_dict())))
    assert back == circuit and back.evidence == circuit.evidence
    assert (circuit | ["L0H1"]).evidence is None and "held out" in circuit._repr_html_()


def test_a_holdout_leaving_too_few_prompts_is_refused(mlp_model, mlp_task):
    for holdout in (0.1, 0.9, 0.0, 1.0):
        with pytest.raises(tls.TLSubmodelsError, match="holdout"):
            tls.find_circuit(mlp_model, mlp_task, holdout=holdout)
    scores = tls.patch(mlp_model, mlp_task)
    with pytest.raises(tls.TLSubmodelsError, match="scores= were computed on every prompt"):
        tls.find_circuit(mlp_model, mlp_task, scores=scores, stability=2)


def test_intervals_are_shown_in_plots_tables_the_report_and_the_cli(zoo_model, tmp_path, capsys):
    model = zoo_model("induction-2l")
    task = tls.zoo.task("induction-2l", "induction", n=32)
    circuit = tls.find_circuit(model, task)
    ev = tls.evaluate(model, circuit, task, baselines=20)
    bars = ev.plot()
    faith = next(t for t in bars.data if t.name == "faithfulness")
    low, high = ev.faithfulness_ci
    assert faith.error_y.array[0] == pytest.approx(high - ev.faithfulness)
    assert faith.error_y.arrayminus[0] == pytest.approx(ev.faithfulness - low)
    assert any("random" in (t.name or "") for t in bars.data)  # the baselines' median beside the bars
    scores = tls.patch(model, task, kinds="heads", n_boot=200)
    heat = scores.plot()
    assert heat.data[0].customdata.shape == (2, 4, 2) and "customdata[0]" in heat.data[0].hovertemplate
    mlp_model = zoo_model("multitask-3l")
    mlps = tls.patch(mlp_model, tls.zoo.task("multitask-3l", "addition", n=16), kinds="mlps", n_boot=200)
    assert mlps.plot("mlps").data[0].error_y.array is not None
    # the CLI: intervals in the tables and in --json
    assert (
        main(["scores", "--model", "induction-2l", "--task", "induction", "--n", "16", "--n-boot", "100", "--json"])
        == 0
    )
    top = json.loads(capsys.readouterr().out)["top"]
    assert all(r["ci_low"] <= r["score"] + 1e-6 and r["score"] <= r["ci_high"] + 1e-6 for r in top)
    assert main(["discover", "--model", "induction-2l", "--task", "induction", "--n", "32", "--holdout", "0.25",
                 "--baselines", "10", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["evaluation"]["faithfulness_ci"] is not None and result["circuit"]["evidence"]["held_out"] == 8
    assert main(["discover", "--model", "induction-2l", "--task", "induction", "--n", "32", "--baselines", "10"]) == 0
    printed = capsys.readouterr().out
    assert "bootstrap interval" in printed and "random circuits" in printed and "[" in printed
    # the report's sub-model table
    html = tls.report(model, [task], parts=[circuit]).html
    assert "faithfulness 95%" in html
