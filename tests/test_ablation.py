"""Ablation hooks against hand-edited weights, hand-computed means, and TL's hook machinery."""

from __future__ import annotations

import pytest
import torch
from conftest import MLP_CFG, assert_same_weights, hook_count, make_mlp_task, weights_snapshot

import tl_submodels as tls
from tl_submodels import model as tlmodel
from tl_submodels.ablation import AblatedRuns

ATOL = 1e-4


def test_zero_head_equals_zeroed_W_O(mlp_model, mlp_state, mlp_task):
    for layer, head in [(0, 1), (2, 3)]:
        hooks = tls.ablation_hooks(mlp_model, [f"L{layer}H{head}"], ablation="zero")
        ours = mlp_model.run_with_hooks(mlp_task.clean, fwd_hooks=hooks)
        edited = dict(mlp_state)
        edited[f"blocks.{layer}.attn.W_O"] = edited[f"blocks.{layer}.attn.W_O"].clone()
        edited[f"blocks.{layer}.attn.W_O"][head] = 0
        oracle = tlmodel.build_from_tl_checkpoint(MLP_CFG, edited)(mlp_task.clean)
        torch.testing.assert_close(ours, oracle, atol=ATOL, rtol=0)


def test_zero_neuron_equals_zeroed_W_out_row(mlp_model, mlp_state, mlp_task):
    edited = dict(mlp_state)
    edited["blocks.1.mlp.W_out"] = edited["blocks.1.mlp.W_out"].clone()
    edited["blocks.1.mlp.W_out"][[7, 40]] = 0
    oracle = tlmodel.build_from_tl_checkpoint(MLP_CFG, edited)(mlp_task.clean)
    ours = mlp_model.run_with_hooks(mlp_task.clean, fwd_hooks=tls.ablation_hooks(mlp_model, ["L1N7", "L1N40"]))
    torch.testing.assert_close(ours, oracle, atol=ATOL, rtol=0)


def test_zero_mlp_equals_zeroed_mlp_weights(mlp_model, mlp_state, mlp_task):
    edited = dict(mlp_state)
    edited["blocks.2.mlp.W_out"] = torch.zeros_like(edited["blocks.2.mlp.W_out"])
    edited["blocks.2.mlp.b_out"] = torch.zeros_like(edited["blocks.2.mlp.b_out"])
    oracle = tlmodel.build_from_tl_checkpoint(MLP_CFG, edited)(mlp_task.clean)
    ours = mlp_model.run_with_hooks(mlp_task.clean, fwd_hooks=tls.ablation_hooks(mlp_model, ["MLP2"]))
    torch.testing.assert_close(ours, oracle, atol=ATOL, rtol=0)


def test_mean_ablation_equals_hand_mean(mlp_model, mlp_task):
    ref = mlp_task.corrupt
    _, cache = mlp_model.run_with_cache(ref)
    mean_z = cache["blocks.1.attn.hook_z"].mean((0, 1))  # [head, d_head]
    mean_post = cache["blocks.0.mlp.hook_post"].mean((0, 1))

    def by_hand_z(act, hook):
        act = act.clone()
        act[:, :, 2] = mean_z[2]
        return act

    def by_hand_post(act, hook):
        act = act.clone()
        act[:, :, 3] = mean_post[3]
        return act

    oracle = mlp_model.run_with_hooks(
        mlp_task.clean, fwd_hooks=[("blocks.1.attn.hook_z", by_hand_z), ("blocks.0.mlp.hook_post", by_hand_post)]
    )
    ours = mlp_model.run_with_hooks(
        mlp_task.clean, fwd_hooks=tls.ablation_hooks(mlp_model, ["L1H2", "L0N3"], ablation="mean", reference=ref)
    )
    torch.testing.assert_close(ours, oracle, atol=ATOL, rtol=0)
    per_pos = tls.ablation_hooks(mlp_model, ["L1H2"], ablation="mean", reference=ref, per_position=True)
    with mlp_model.hooks(fwd_hooks=per_pos):
        _, c2 = mlp_model.run_with_cache(mlp_task.clean, names_filter=lambda n: n == "blocks.1.attn.hook_z")
    z = c2["blocks.1.attn.hook_z"]
    expected = cache["blocks.1.attn.hook_z"][:, :, 2].mean(0)  # [pos, d_head]
    torch.testing.assert_close(z[:, :, 2], expected.expand_as(z[:, :, 2]), atol=1e-5, rtol=0)


def test_patch_ablation_of_everything_leaves_only_the_embeddings_changed(mlp_model, mlp_task):
    """Patching every head and MLP from the clean run into the corrupt run: the final residual is
    the clean one with the clean token embeddings swapped for the corrupt ones."""
    everything = tls.complement(mlp_model, [])  # all heads and MLPs
    hooks = tls.ablation_hooks(mlp_model, everything, ablation="patch", reference=mlp_task.clean)
    patched = mlp_model.run_with_hooks(mlp_task.corrupt, fwd_hooks=hooks)
    last = f"blocks.{MLP_CFG['n_layers'] - 1}.hook_resid_post"
    _, clean = mlp_model.run_with_cache(mlp_task.clean)
    _, corrupt = mlp_model.run_with_cache(mlp_task.corrupt)
    resid = clean[last] - clean["hook_embed"] + corrupt["hook_embed"]
    by_hand = mlp_model.unembed(mlp_model.ln_final(resid))
    torch.testing.assert_close(patched, by_hand, atol=ATOL, rtol=0)
    assert not torch.allclose(patched, mlp_model(mlp_task.clean), atol=ATOL)


def test_resample_is_seeded_and_takes_reference_rows(mlp_model, mlp_task):
    ref = mlp_task.corrupt
    a = mlp_model.run_with_hooks(
        mlp_task.clean, fwd_hooks=tls.ablation_hooks(mlp_model, ["L0H0"], ablation="resample", reference=ref, seed=1)
    )
    b = mlp_model.run_with_hooks(
        mlp_task.clean, fwd_hooks=tls.ablation_hooks(mlp_model, ["L0H0"], ablation="resample", reference=ref, seed=1)
    )
    c = mlp_model.run_with_hooks(
        mlp_task.clean, fwd_hooks=tls.ablation_hooks(mlp_model, ["L0H0"], ablation="resample", reference=ref, seed=2)
    )
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    rows = torch.randint(ref.shape[0], (ref.shape[0],), generator=torch.Generator().manual_seed(1))
    _, cache = mlp_model.run_with_cache(ref)
    src = cache["blocks.0.attn.hook_z"][rows]

    def by_hand(act, hook):
        act = act.clone()
        act[:, :, 0] = src[:, :, 0]
        return act

    torch.testing.assert_close(
        a, mlp_model.run_with_hooks(mlp_task.clean, fwd_hooks=[("blocks.0.attn.hook_z", by_hand)]), atol=ATOL, rtol=0
    )


def test_position_components_ablate_one_position(mlp_model, mlp_task):
    hooks = tls.ablation_hooks(mlp_model, ["L1H0@6"], ablation="zero")
    with mlp_model.hooks(fwd_hooks=hooks):
        _, cache = mlp_model.run_with_cache(mlp_task.clean, names_filter=lambda n: n == "blocks.1.attn.hook_z")
    z = cache["blocks.1.attn.hook_z"]
    assert torch.all(z[:, 6, 0] == 0)
    assert z[:, 5, 0].abs().sum() > 0 and z[:, 6, 1].abs().sum() > 0


def test_keep_only_ablates_the_complement(mlp_model, mlp_task):
    sub = tls.SubModel(components=["L0H1", "L2H0", "MLP1", "L2N3"])
    comp = {str(c) for c in tls.complement(mlp_model, sub)}
    assert "L0H1" not in comp and "MLP1" not in comp and "MLP0" in comp
    assert "L2N3" not in comp and "L2N4" in comp and "MLP2" not in comp
    assert len([c for c in comp if "H" in c]) == 3 * 4 - 2
    kept = mlp_model.run_with_hooks(mlp_task.clean, fwd_hooks=sub.hooks(mlp_model, ablation="zero", keep_only=True))
    explicit = mlp_model.run_with_hooks(
        mlp_task.clean, fwd_hooks=tls.ablation_hooks(mlp_model, sorted(comp), ablation="zero")
    )
    torch.testing.assert_close(kept, explicit, atol=0, rtol=0)
    everything = tls.SubModel(components=tls.complement(mlp_model, []))
    assert tls.ablation_hooks(mlp_model, everything, keep_only=True) == []


def test_hooks_work_in_every_tl_entry_point(induction_model, induction_task):
    model, task = induction_model, induction_task
    sub = tls.SubModel(components=["L1H0", "L1H1", "L1H2", "L1H3"])
    hooks = sub.hooks(model, ablation="mean", reference=task.corrupt)
    before = hook_count(model)
    a = model.run_with_hooks(task.clean, fwd_hooks=hooks)
    with model.hooks(fwd_hooks=hooks):
        b = model(task.clean)
        c, _ = model.run_with_cache(task.clean)
    with tls.ablated(model, sub, ablation="mean", reference=task.corrupt):
        d = model(task.clean)
    assert hook_count(model) == before
    for x in (b, c, d):
        torch.testing.assert_close(a, x, atol=1e-5, rtol=0)
    assert task.accuracy(a) < 0.2 < task.accuracy(model(task.clean))


def greedy(model, tokens, steps):
    for _ in range(steps):
        tokens = torch.cat([tokens, model(tokens)[:, -1].argmax(-1, keepdim=True)], 1)
    return tokens


def test_generation_under_ablation(induction_model, induction_task):
    model = induction_model
    prompt = induction_task.clean[:4, :20]
    sub = tls.SubModel(components=["L1H0", "L1H1", "L1H2", "L1H3"])
    before = hook_count(model)
    free = model.generate(prompt, max_new_tokens=6, do_sample=False, verbose=False, stop_at_eos=False)
    assert torch.equal(free, greedy(model, prompt, 6))
    for ablation in ("zero", "mean"):  # generation grows the sequence: these work at any length
        with tls.ablated(model, sub, ablation=ablation, reference=induction_task.corrupt):
            out = model.generate(prompt, max_new_tokens=6, do_sample=False, verbose=False, stop_at_eos=False)
            assert torch.equal(out, greedy(model, prompt, 6))
        assert out.shape == free.shape
        assert not torch.equal(out[:, 20:], free[:, 20:])
    assert hook_count(model) == before


def test_errors_and_cleanup(mlp_model, mlp_task):
    snap, hooks = weights_snapshot(mlp_model), hook_count(mlp_model)
    with pytest.raises(tls.TLSubmodelsError, match="layer 3 out of range; this model has n_layers=3"):
        tls.ablation_hooks(mlp_model, ["L3H0"])
    with pytest.raises(tls.TLSubmodelsError, match="head 4 out of range"):
        tls.ablation_hooks(mlp_model, ["L0H4"])
    with pytest.raises(tls.TLSubmodelsError, match="neuron 64 out of range"):
        tls.ablation_hooks(mlp_model, ["L0N64"])
    with pytest.raises(tls.TLSubmodelsError, match="needs reference"):
        tls.ablation_hooks(mlp_model, ["L0H0"], ablation="mean")
    short = tls.ablation_hooks(mlp_model, ["L0H0"], ablation="resample", reference=mlp_task.corrupt[:, :4])
    with pytest.raises(tls.TLSubmodelsError, match="4 positions"):
        mlp_model.run_with_hooks(mlp_task.clean, fwd_hooks=short)
    with (
        pytest.raises(tls.TLSubmodelsError),
        tls.ablated(mlp_model, ["L0H0"], ablation="resample", reference=mlp_task.corrupt[:, :4]),
    ):
        mlp_model(mlp_task.clean)
    assert hook_count(mlp_model) == hooks
    assert_same_weights(mlp_model, snap)


@pytest.mark.ill_typed
def test_unknown_ablation(mlp_model):
    with pytest.raises(tls.TLSubmodelsError, match="unknown ablation 'gaussian': choose from"):
        tls.ablation_hooks(mlp_model, ["L0H0"], ablation="gaussian")  # type: ignore[arg-type]


def test_ablator_runs_the_reference_once(mlp_model, mlp_task):
    calls = []

    def count(act, hook):
        calls.append(act.shape[0])

    ablator = tls.Ablator(mlp_model, ablation="mean", reference=mlp_task.corrupt)
    with mlp_model.hooks(fwd_hooks=[("blocks.0.hook_resid_pre", count)]):
        hook_sets = [ablator.hooks(s, keep_only=k) for s in (["L0H1"], ["L2H3", "MLP1"], []) for k in (False, True)]
    assert len(calls) == 1  # one reference forward for every sub-model
    for hooks, (s, k) in zip(
        hook_sets, [(s, k) for s in (["L0H1"], ["L2H3", "MLP1"], []) for k in (False, True)], strict=True
    ):
        expected = tls.ablation_hooks(mlp_model, s, ablation="mean", reference=mlp_task.corrupt, keep_only=k)
        a = mlp_model.run_with_hooks(mlp_task.clean, fwd_hooks=hooks)
        b = mlp_model.run_with_hooks(mlp_task.clean, fwd_hooks=expected)
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_a_reference_outside_the_vocabulary_is_refused_clearly(mlp_model):
    """Issue 19: it raised a raw torch IndexError from inside the embedding."""
    bad = torch.full((2, 5), MLP_CFG["d_vocab"] + 3)
    with pytest.raises(
        tls.TLSubmodelsError, match=f"token id {MLP_CFG['d_vocab'] + 3}, outside the model's vocabulary"
    ):
        tls.ablation_hooks(mlp_model, ["L0H0"], ablation="mean", reference=bad)
    with pytest.raises(tls.TLSubmodelsError, match="token id -1"):
        tls.Ablator(
            mlp_model,
            ablation="mean",
            reference=[torch.zeros(1, 3, dtype=torch.long), -torch.ones(1, 4, dtype=torch.long)],
        )


@pytest.mark.parametrize("ablation", ["mean", "zero", "resample"])
def test_ablated_runs_equal_the_hooked_runs(mlp_model, ablation):
    """AblatedRuns (the searches' fast ablated forwards: the weight-level path, starting from the run
    it shares the most layers with) against plain hooked forwards, for a random walk of sets like a
    search makes: one unit added or dropped at a time, jumps, keep-only sets, repeats, some tasks only."""
    from test_multiposition import mlp_reads

    tasks = [
        make_mlp_task(mlp_model, n=5),
        make_mlp_task(mlp_model, n=4, seq=9, seed=1),
        mlp_reads(mlp_model, ragged=True)[0],
    ]
    reference = tasks[0].corrupt
    ablator = tls.Ablator(mlp_model, ablation=ablation, reference=reference)
    runs = AblatedRuns(mlp_model, ablator, tasks)
    # the weight-level path where the ablation is one value per unit (zero, mean), hooks otherwise
    assert (runs.weights is not None) == (ablation != "resample")
    info = tlmodel.model_info(mlp_model)
    every = info.components(("heads", "neurons"))
    g = torch.Generator().manual_seed(0)
    current: set = set()
    walk = []
    for step in range(40):
        c = every[int(torch.randint(len(every), (1,), generator=g))]
        current = current ^ {c} if step % 7 else {every[int(i)] for i in torch.randint(len(every), (6,), generator=g)}
        walk.append((sorted(current), step % 5 == 4, None if step % 3 else [int(step % 3), 0][: 1 + step % 2]))
    walk += [([tls.MLP(1), tls.Head(2, 0)], False, None), (walk[3][0], walk[3][1], None), ([], True, None)]
    for sub, keep_only, only in walk:
        got = runs.finals(sub, keep_only=keep_only, only=only)
        hooks = ablator.hooks(sub, keep_only=keep_only)
        for i, final in zip(range(len(tasks)) if only is None else only, got, strict=True):
            t = tasks[i]
            expected = t.final_logits(mlp_model.run_with_hooks(t.clean, fwd_hooks=hooks))
            torch.testing.assert_close(final, expected, atol=ATOL, rtol=0)
        accs = runs.accuracies(sub, keep_only=keep_only, only=only)
        assert accs == [
            tasks[i].read_accuracy(f) for i, f in zip(range(len(tasks)) if only is None else only, got, strict=True)
        ]
    assert hook_count(mlp_model) == 0
