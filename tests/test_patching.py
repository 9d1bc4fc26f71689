"""Exact patching against TransformerLens' own patching functions, and its guarantees."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import assert_same_weights, hook_count, make_mlp_task, weights_snapshot
from transformer_lens import patching

import tl_submodels as tls
from tl_submodels import model as tlmodel
from tl_submodels import patching as tlpatching

TOL = 1e-4


def tl_reference(model, task, fn):
    _, cache = model.run_with_cache(task.clean)
    return fn(model, task.corrupt, cache, task.metric)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("which", ["induction", "mlp"])
def test_heads_and_mlps_equal_transformer_lens(which, fast, request):
    model = request.getfixturevalue(f"{which}_model")
    task = request.getfixturevalue(f"{which}_task")
    scores = tls.patch(model, task, kinds="heads", fast=fast)
    ref = tl_reference(model, task, patching.get_act_patch_attn_head_out_all_pos)
    assert (scores.raw_heads - ref).abs().max() <= TOL
    by_pos = tls.patch(model, task, kinds="heads", per_position=True, fast=fast)
    ref_pos = tl_reference(model, task, patching.get_act_patch_attn_head_out_by_pos)
    assert by_pos.raw_heads.shape == ref_pos.shape
    assert (by_pos.raw_heads - ref_pos).abs().max() <= TOL
    if which == "mlp":
        mlps = tls.patch(model, task, kinds="mlps", per_position=True, fast=fast)
        ref_mlp = tl_reference(model, task, patching.get_act_patch_mlp_out)
        assert (mlps.raw_mlps - ref_mlp).abs().max() <= TOL


def test_normalisation_and_baselines(induction_model, induction_task):
    s = tls.patch(induction_model, induction_task, kinds="heads")
    clean = float(induction_task.metric(induction_model(induction_task.clean)))
    corrupt = float(induction_task.metric(induction_model(induction_task.corrupt)))
    assert s.clean_metric == pytest.approx(clean, abs=1e-4)
    assert s.corrupt_metric == pytest.approx(corrupt, abs=1e-4)
    torch.testing.assert_close(s.heads, (s.raw_heads - corrupt) / (clean - corrupt), atol=1e-4, rtol=0)
    noise = tls.patch(induction_model, induction_task, kinds="heads", direction="noising")
    torch.testing.assert_close(noise.heads, (clean - noise.raw_heads) / (clean - corrupt), atol=1e-4, rtol=0)


def test_noising_equals_transformer_lens_with_roles_swapped(mlp_model, mlp_task):
    s = tls.patch(mlp_model, mlp_task, kinds=("heads", "mlps"), direction="noising", per_position=True)
    _, cache = mlp_model.run_with_cache(mlp_task.corrupt)
    ref = patching.get_act_patch_attn_head_out_by_pos(mlp_model, mlp_task.clean, cache, mlp_task.metric)
    assert (s.raw_heads - ref).abs().max() <= TOL
    ref_mlp = patching.get_act_patch_mlp_out(mlp_model, mlp_task.clean, cache, mlp_task.metric)
    assert (s.raw_mlps - ref_mlp).abs().max() <= TOL


@pytest.mark.parametrize("fast", [True, False])
def test_neurons_equal_one_hook_per_neuron(mlp_model, mlp_task, fast):
    s = tls.patch(mlp_model, mlp_task, kinds="neurons", fast=fast, batch_size=50)
    _, cache = mlp_model.run_with_cache(mlp_task.clean)
    for layer, neuron in [(0, 0), (0, 63), (1, 17), (2, 5)]:
        name = f"blocks.{layer}.mlp.hook_post"

        def hook(act, hook, n=neuron, name=name):
            act[:, :, n] = cache[name][:, :, n]
            return act

        logits = mlp_model.run_with_hooks(mlp_task.corrupt, fwd_hooks=[(name, hook)])
        assert float(s.raw_neurons[layer, neuron]) == pytest.approx(float(mlp_task.metric(logits)), abs=TOL)


def test_batching_does_not_change_results(mlp_model, mlp_task):
    a = tls.patch(mlp_model, mlp_task, kinds=("heads", "mlps"), batch_size=6)
    b = tls.patch(mlp_model, mlp_task, kinds=("heads", "mlps"), batch_size=10_000)
    torch.testing.assert_close(a.raw_heads, b.raw_heads, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.raw_mlps, b.raw_mlps, atol=1e-5, rtol=0)


def test_per_example_positions_and_other_metrics(mlp_model):
    pos = torch.tensor([7, 11, 9, 11, 8, 10])
    for metric in ("logprob", "prob", "kl"):
        task = make_mlp_task(mlp_model, position=pos, metric=metric)
        s = tls.patch(mlp_model, task, kinds="heads")
        ref = tl_reference(mlp_model, task, patching.get_act_patch_attn_head_out_all_pos)
        assert (s.raw_heads - ref).abs().max() <= TOL, metric


def test_no_hooks_left_and_weights_untouched(mlp_model, mlp_task):
    snap, hooks = weights_snapshot(mlp_model), hook_count(mlp_model)
    tls.patch(mlp_model, mlp_task, kinds=("heads", "neurons", "mlps"), fast=False)
    tls.patch(mlp_model, mlp_task, kinds=("heads", "neurons", "mlps"))
    assert hook_count(mlp_model) == hooks
    assert_same_weights(mlp_model, snap)


def test_metric_raising_midway_leaves_no_hook(mlp_model):
    calls = {"n": 0}

    def flaky(logits, task):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("boom")
        return logits[:, 0] - logits[:, 1]

    task = make_mlp_task(mlp_model, metric=flaky)
    snap, hooks = weights_snapshot(mlp_model), hook_count(mlp_model)
    for fast in (True, False):
        calls["n"] = 0
        with pytest.raises(RuntimeError, match="boom"):
            tls.patch(mlp_model, task, kinds="heads", fast=fast, batch_size=6)
        assert hook_count(mlp_model) == hooks
    assert_same_weights(mlp_model, snap)


@pytest.mark.ill_typed
def test_bad_input(mlp_model, mlp_task, induction_model, induction_task):
    with pytest.raises(tls.TLSubmodelsError, match="kind"):
        tls.patch(mlp_model, mlp_task, kinds="attention")
    with pytest.raises(tls.TLSubmodelsError, match="attention-only"):
        tls.patch(induction_model, induction_task, kinds="neurons")
    with pytest.raises(tls.TLSubmodelsError, match="d_vocab"):
        tls.patch(induction_model, mlp_task)
    same = mlp_task.replace(corrupt=mlp_task.clean)
    with pytest.raises(tls.TLSubmodelsError, match="no gap"):
        tls.patch(mlp_model, same)

    def nan_metric(logits, task):
        return logits[:, 0] * float("nan")

    with pytest.raises(tls.TLSubmodelsError, match="NaN"):
        tls.patch(mlp_model, make_mlp_task(mlp_model, metric=nan_metric))

    def scalar_metric(logits, task):
        return logits[:, 0].mean()

    with pytest.raises(tls.TLSubmodelsError, match="one value per example"):
        tls.patch(mlp_model, make_mlp_task(mlp_model, metric=scalar_metric))


def test_patching_a_subset_of_components(mlp_model, mlp_task):
    full = tls.patch(mlp_model, mlp_task, kinds=("heads", "neurons", "mlps"))
    some = tls.patch(mlp_model, mlp_task, kinds=("heads", "neurons", "mlps"), components=["L0H1", "L2N7", "MLP1"])
    picked = {(0, 1): some.heads[0, 1], (2, 7): some.neurons[2, 7], (1,): some.mlps[1]}
    torch.testing.assert_close(picked[(0, 1)], full.heads[0, 1])
    torch.testing.assert_close(picked[(2, 7)], full.neurons[2, 7])
    torch.testing.assert_close(picked[(1,)], full.mlps[1])
    assert int(torch.isnan(some.heads).sum()) == 3 * 4 - 1 and int(torch.isnan(some.mlps).sum()) == 2
    assert {str(c) for c, _ in some.items()} == {"L0H1", "L2N7", "MLP1"}


@pytest.mark.ill_typed
def test_patching_a_subset_bad_input(mlp_model, mlp_task):
    with pytest.raises(tls.TLSubmodelsError, match="kinds"):
        tls.patch(mlp_model, mlp_task, kinds="heads", components=["MLP1"])
    with pytest.raises(tls.TLSubmodelsError, match="per_position=False"):
        tls.patch(mlp_model, mlp_task, kinds="heads", components=["L0H1"], per_position=True)
    with pytest.raises(tls.TLSubmodelsError, match="out of range"):
        tls.patch(mlp_model, mlp_task, kinds="heads", components=["L9H1"])


def test_per_example_effects(mlp_model, mlp_task):
    s = tls.patch(mlp_model, mlp_task, kinds=("heads", "neurons", "mlps"), per_example=True)
    gap = s.clean_metric - s.corrupt_metric
    for kind in ("heads", "neurons", "mlps"):
        ex = s.per_example[kind]
        assert ex.shape == (mlp_task.batch, *getattr(s, kind).shape)
        torch.testing.assert_close(ex.mean(0), getattr(s, kind), atol=1e-5, rtol=0)
    for i in (0, 3):  # each row is that prompt's own effect: its patched minus its own corrupt metric
        alone = tls.patch(mlp_model, mlp_task.subset([i]), kinds="heads")
        torch.testing.assert_close(
            s.per_example["heads"][i] * gap + alone.corrupt_metric, alone.raw_heads, atol=1e-4, rtol=0
        )
    shuffled = tls.patch(mlp_model, mlp_task.subset([5, 4, 3, 2, 1, 0]), kinds="heads", per_example=True)
    torch.testing.assert_close(shuffled.per_example["heads"], s.per_example["heads"].flip(0), atol=1e-4, rtol=1e-5)
    assert tls.patch(mlp_model, mlp_task, kinds="heads").per_example is None


def test_fast_path_falls_back_when_it_disagrees_with_the_model(mlp_model, mlp_task, monkeypatch):
    real = tlmodel.Adapter.standard_weights

    def wrong(self, *args):
        w = real(self, *args)
        return dataclasses.replace(w, W_U=w.W_U * 1.01)  # a forward that is not the model's

    monkeypatch.setattr(tlmodel.Adapter, "standard_weights", wrong)
    with pytest.warns(UserWarning, match="patching through hooks instead"):
        s = tls.patch(mlp_model, mlp_task, kinds="heads")
    ref = tl_reference(mlp_model, mlp_task, patching.get_act_patch_attn_head_out_all_pos)
    assert (s.raw_heads - ref).abs().max() <= TOL


@pytest.mark.parametrize("fast", [True, False])
def test_a_small_memory_budget_scores_the_examples_in_chunks(mlp_model, mlp_task, fast):
    """A budget that holds about two examples' cached runs: examples in chunks, the same numbers."""
    kinds = ("heads", "neurons", "mlps")
    info = tlmodel.model_info(mlp_model)
    per_example = tlpatching._example_mb(info, kinds, mlp_task.seq_len)
    budget = 2.5 * per_example / tlpatching.BUDGET_FOR_CACHES
    if fast:  # the fast path's weight copies count too: room for them (they need at most half the budget)
        budget = max(budget + tls.adapter(mlp_model).blocks_mb(), 2.01 * tls.adapter(mlp_model).blocks_mb())
    calls = []
    real = tlpatching._patch_examples
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(tlpatching, "_patch_examples", lambda m, t, *a: calls.append(t.batch) or real(m, t, *a))
        chunked = tls.patch(mlp_model, mlp_task, kinds=kinds, per_example=True, max_memory_mb=budget, fast=fast)
    whole = tls.patch(mlp_model, mlp_task, kinds=kinds, per_example=True, fast=fast)
    assert len(calls) > 1 and sum(calls) == mlp_task.batch, calls
    for kind in kinds:  # other batch shapes: equal up to float32 rounding
        torch.testing.assert_close(getattr(chunked, kind), getattr(whole, kind), atol=1e-4, rtol=0)
        torch.testing.assert_close(chunked.per_example[kind], whole.per_example[kind], atol=1e-4, rtol=0)
    assert chunked.clean_metric == pytest.approx(whole.clean_metric, abs=1e-5)
    with pytest.raises(tls.TLSubmodelsError, match="below what one example needs"):
        tls.patch(mlp_model, mlp_task, kinds=kinds, max_memory_mb=per_example / 10)


def test_per_position_default_kinds_are_heads_and_mlps(mlp_model, mlp_task):
    """The docstring's default: per position, heads and MLP layers (neurons are scored over all positions)."""
    s = tls.patch(mlp_model, mlp_task, per_position=True)
    seq = mlp_task.clean.shape[1]
    assert s.heads.shape == (3, seq, 4) and s.mlps.shape == (3, seq) and s.neurons is None
    torch.testing.assert_close(s.mlps, tls.patch(mlp_model, mlp_task, kinds=("mlps",), per_position=True).mlps)
    assert tls.patch(mlp_model, mlp_task).neurons is not None  # over all positions the default has every kind


@pytest.mark.parametrize("score", ["patch", "atp"])
def test_batch_size_and_memory_must_be_positive(mlp_model, mlp_task, score):
    """Issue 19: batch_size=0 was accepted silently."""
    fn = tls.patch if score == "patch" else tls.attribute
    for bad in (0, -2):
        with pytest.raises(tls.TLSubmodelsError, match="batch_size must be a positive number"):
            fn(mlp_model, mlp_task, batch_size=bad)
    with pytest.raises(tls.TLSubmodelsError, match="max_memory_mb must be a positive"):
        fn(mlp_model, mlp_task, max_memory_mb=0.0)
    assert fn(mlp_model, mlp_task, batch_size=1, kinds="heads").heads.shape == (3, 4)


def test_patch_plans_before_it_runs(mlp_model, mlp_task):
    """plan_patch decides chunks and rows per forward without running the model; its key is plain JSON."""
    import json

    info, kinds = tlmodel.model_info(mlp_model), ("heads", "neurons", "mlps")
    budget = 2.5 * tlpatching._example_mb(info, kinds, mlp_task.seq_len) / tlpatching.BUDGET_FOR_CACHES  # 2 examples
    calls = []
    handle = mlp_model.register_forward_hook(lambda *a: calls.append(1))
    try:
        plan = tlpatching.plan_patch(info, mlp_task, kinds=kinds, per_position=False, direction="denoising",
                                     batch_size=None, max_memory_mb=1024.0, weights_mb=0.0, path="weights",
                                     device_type="cpu")  # fmt: skip
        tight = tlpatching.plan_patch(info, mlp_task, kinds=kinds, per_position=False, direction="noising",
                                      batch_size=None, max_memory_mb=budget, weights_mb=0.0, path="hooks",
                                      device_type="cpu")  # fmt: skip
    finally:
        handle.remove()
    assert not calls
    assert plan.chunks == (tuple(range(mlp_task.batch)),) and plan.rows_per_forward == tlpatching.CPU_ROWS
    assert {len(c) for c in tight.chunks} == {2} and sum(tight.chunks, ()) == tuple(range(mlp_task.batch))
    assert json.loads(json.dumps(plan.key())) == plan.key() and plan.key() != tight.key()
