"""find_circuit and evaluate on the zoo's known circuit, and evaluate's definitions."""

from __future__ import annotations

import pytest
import torch
from conftest import MLP_CFG, hook_count, make_mlp_task

import tl_submodels as tls
from tl_submodels import discovery
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
        with torch.no_grad():
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
    exact = tls.find_circuit(model, task, target=target, method="patch")
    fast = tls.find_circuit(model, task, target=target, method="atp")
    ev_exact = tls.evaluate(model, exact, task)
    ev_fast = tls.evaluate(model, fast, task)
    assert ev_fast.faithfulness >= target and ev_exact.faithfulness >= target
    if which == "induction":
        truth = tls.zoo.info("induction-2l")["ground_truth"]
        assert set(truth["previous_token_heads"]) | set(truth["induction_heads"]) <= {str(c) for c in fast}


@pytest.mark.parametrize("task_name", ["induction", "successor", "addition", "majority"])
def test_attribution_plus_exact_is_as_faithful_as_exact_on_multitask(task_name, zoo_model):
    model = zoo_model("multitask-3l")
    task = tls.zoo.task("multitask-3l", task_name, n=32, seed=0, model=model)
    exact = tls.find_circuit(model, task, target=0.9, method="patch")
    fast = tls.find_circuit(model, task, target=0.9, method="atp")
    ev_exact, ev_fast = tls.evaluate(model, exact, task), tls.evaluate(model, fast, task)
    assert ev_fast.faithfulness >= 0.9 and ev_exact.faithfulness >= 0.9, (ev_fast.faithfulness, ev_exact.faithfulness)


class _CountedBlocks:
    """Wraps the blocks' class ``forward`` to count the runs of the first and the last block; ``remove()``
    puts it back. Not with hooks: any hook on the model turns the shortcuts off (tl_submodels.model.Adapter.has_hooks)."""

    def __init__(self, model, counts):
        first, last = model.blocks[0], model.blocks[-1]
        self.cls = type(first)
        self.original = original = self.cls.forward

        def counted(block, *args, **kwargs):
            out = original(block, *args, **kwargs)  # counted once done (TL 4 stops a run inside the next block)
            counts["started"] += block is first
            counts["full"] += block is last
            return out

        self.cls.forward = counted

    def remove(self):
        self.cls.forward = self.original


def _forward_counter(model):
    """Counts forwards that enter the first block and that reach the last one."""
    counts = {"started": 0, "full": 0}
    return counts, [_CountedBlocks(model, counts)]


def test_a_plain_module_hook_turns_the_shortcut_off(induction_model, induction_task):
    ablator = tls.Ablator(induction_model, ablation="mean", reference=induction_task.corrupt)
    handle = induction_model.blocks[-1].register_forward_hook(lambda *_: None)
    try:
        assert discovery._KeepOnlyRuns(induction_model, induction_task, ablator).pre is None
    finally:
        handle.remove()
    assert discovery._KeepOnlyRuns(induction_model, induction_task, ablator).pre is not None


@pytest.mark.parametrize("which", ["induction", "mlp"])
def test_keep_only_runs_stop_early_and_match_full_forwards(which, request):
    model, task = request.getfixturevalue(f"{which}_model"), request.getfixturevalue(f"{which}_task")
    ablator = tls.Ablator(model, ablation="mean", reference=task.corrupt)
    runs = discovery._KeepOnlyRuns(model, task, ablator)
    assert runs.pre is not None  # the shortcut is on for these models
    everything = tls.complement(model, [])
    subsets = [everything[:1], everything[1:3], [everything[0], everything[-1]], everything[::2]]
    counts, handles = _forward_counter(model)
    try:
        fast = [runs.metric(keep) for keep in subsets]
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        plain = [
            float(task.metric(model.run_with_hooks(task.clean, fwd_hooks=ablator.hooks(keep, keep_only=True))))
            for keep in subsets
        ]
    assert fast == pytest.approx(plain, abs=1e-4)
    # Only the subsets that keep something in the last layer run it.
    last = model.cfg.n_layers - 1
    assert counts["full"] == sum(any(c.layer == last for c in keep) for keep in subsets) < len(subsets)


@pytest.mark.parametrize("which", ["induction", "mlp"])
def test_attribution_plus_exact_needs_fewer_full_forwards_and_patches_only_members(which, request, monkeypatch):
    model, task = request.getfixturevalue(f"{which}_model"), request.getfixturevalue(f"{which}_task")
    target = 0.9 if which == "induction" else 0.8
    patched = []
    real_patch = discovery.patch
    monkeypatch.setattr(discovery, "patch", lambda *a, **kw: patched.append(kw) or real_patch(*a, **kw))

    def run(method, cache_mb):
        monkeypatch.setattr(discovery, "RESID_CACHE_MB", cache_mb)
        counts, handles = _forward_counter(model)
        try:
            circuit = tls.find_circuit(model, task, target=target, method=method)
        finally:
            for h in handles:
                h.remove()
        return circuit, counts

    exact, _ = run("patch", discovery.RESID_CACHE_MB)
    fast, fast_counts = run("atp", discovery.RESID_CACHE_MB)
    slow, slow_counts = run("atp", 0.0)  # every keep-only run through every layer
    assert set(fast) == set(slow)  # stopping early changes the cost, not the search
    assert fast_counts["full"] < slow_counts["full"]
    ev_exact, ev_fast = tls.evaluate(model, exact, task), tls.evaluate(model, fast, task)
    assert ev_fast.faithfulness >= target and ev_exact.faithfulness >= target
    # exact patches everything once; attribution+exact patches only members it grew, and on the
    # induction model (heads only: few members) nothing at all.
    assert patched[0].get("components") is None
    assert all(kw["components"] is not None for kw in patched[1:])
    if which == "induction":
        assert len(patched) == 1


def test_attribution_plus_exact_patches_only_its_members_when_many(induction_model, induction_task, monkeypatch):
    monkeypatch.setattr(discovery, "EXACT_CONFIRM_MIN", 0)
    patched = []
    real_patch = discovery.patch
    monkeypatch.setattr(discovery, "patch", lambda *a, **kw: patched.append(kw) or real_patch(*a, **kw))
    circuit = tls.find_circuit(induction_model, induction_task, target=0.9, method="atp")
    assert len(patched) == 1
    members = set(patched[0]["components"])
    assert set(circuit) <= members and len(members) < len(tls.complement(induction_model, []))
    assert tls.evaluate(induction_model, circuit, induction_task).faithfulness >= 0.9


def test_grow_specific_stops_once_faithfulness_stalls():
    """600 candidates, faithfulness stuck after the first 10: growth stops about ``patience`` candidates later."""
    rest = [tls.Neuron(0, i) for i in range(600)]
    seen = []

    def faith(members):
        seen.append(len(members))
        return min(len(members), 11) / 20

    grown = discovery.grow_specific([tls.Head(0, 0)], rest, faith, lambda m: True, 0.8, block=8, patience=64)
    assert grown == [tls.Head(0, 0), *rest[:10]]
    assert max(seen) <= 1 + 10 + 64 + 128  # the stall is noticed within a doubling block of the patience


def test_grow_specific_leaves_out_only_what_breaks_specificity_and_stops_at_the_target():
    """Hand-made faithfulness and specificity: faith counts members; heads 'x' and 'y' make a part unspecific."""
    head = {name: tls.Head(0, i) for i, name in enumerate("abcdefghxyz")}

    def heads(names: str) -> list[tls.Component]:
        return [head[n] for n in names]

    def specific(members):
        return not set(heads("xy")) & set(members)

    grown = discovery.grow_specific(heads("a"), heads("bxcdyefgh"), lambda m: len(m) / 5, specific, 1.0, block=4)
    assert grown == heads("abcde")  # x and y left out; the shortest admitted prefix reaching 1.0
    # out of reach: the shortest admitted prefix within min_gain of the best faithfulness reached
    assert discovery.grow_specific(heads("a"), heads("xyz"), lambda m: 0.0, specific, 0.5) == heads("a")
    assert discovery.grow_specific(
        heads("a"), heads("bxcdyefgh"), lambda m: min(len(m), 3) / 5, specific, 1.0
    ) == heads("abc")
    # growing from a core that already reaches the target admits nothing
    assert discovery.grow_specific(heads("abcde"), heads("fgh"), lambda m: len(m) / 5, specific, 1.0) == heads("abcde")


def test_fraction_counts_the_kinds_the_submodel_holds(mlp_model, mlp_task):
    """Issue 20: fraction divided by heads plus whole MLPs, so a sub-model of neurons passed 1."""
    info = tlmodel.model_info(mlp_model)
    neurons = info.components(("neurons",))
    heads = info.components(("heads",))
    assert tls.evaluate(mlp_model, neurons, mlp_task, ablation="zero").fraction == pytest.approx(1.0)
    assert tls.evaluate(mlp_model, neurons[:5], mlp_task, ablation="zero").fraction == pytest.approx(5 / len(neurons))
    mixed = tls.evaluate(mlp_model, [*heads[:2], *neurons[:6]], mlp_task, ablation="zero")
    assert mixed.fraction == pytest.approx(8 / (len(heads) + len(neurons)))


def test_patch_ablation_refuses_a_reference_it_would_not_use(mlp_model, mlp_task):
    """Issue 20: evaluate replaced the caller's reference by task.corrupt without a word for ablation='patch'."""
    with pytest.raises(tls.TLSubmodelsError, match="takes no reference"):
        tls.evaluate(mlp_model, ["L0H0"], mlp_task, ablation="patch", reference=mlp_task.clean)
    ev = tls.evaluate(mlp_model, ["L0H0"], mlp_task, ablation="patch")
    by_hand = mlp_model.run_with_hooks(
        mlp_task.clean, fwd_hooks=tls.ablation_hooks(mlp_model, ["L0H0"], ablation="patch", reference=mlp_task.corrupt)
    )
    assert ev.metric_ablated == pytest.approx(float(mlp_task.metric(by_hand)), abs=1e-4)


def test_minimality_is_the_faithfulness_each_member_carries(induction_model, induction_task):
    """Issue 20 (DESIGN's promise): each member's removal from the kept sub-model, by evaluate's own faithfulness."""
    sub = ["L0H0", "L1H0", "L1H1", "L1H3"]
    ev = tls.evaluate(induction_model, sub, induction_task, minimality=True)
    assert ev.minimality is not None and set(ev.minimality) == set(sub)
    for c in sub:
        without = tls.evaluate(induction_model, [m for m in sub if m != c], induction_task)
        assert ev.minimality[c] == pytest.approx(ev.faithfulness - without.faithfulness, abs=1e-4)
    assert ev.minimality["L0H0"] > 0.1  # the previous-token head: nothing works without it
    assert tls.evaluate(induction_model, sub, induction_task).minimality is None


def test_find_circuit_methods_carry_the_shared_names_and_the_old_ones_warn(mlp_model, mlp_task):
    for old, new in (("exact", "patch"), ("attribution+exact", "atp")):
        with pytest.warns(DeprecationWarning, match=f"is now method={new!r}"):
            was = tls.find_circuit(mlp_model, mlp_task, target=0.8, method=old)
        assert set(was) == set(tls.find_circuit(mlp_model, mlp_task, target=0.8, method=new))
    with pytest.raises(tls.TLSubmodelsError, match="unknown method 'magic'"):
        tls.find_circuit(mlp_model, mlp_task, method="magic")
