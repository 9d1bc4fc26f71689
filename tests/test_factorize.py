"""factorize, nmf, choose_k, atoms and evaluate's specificity, on a random model and planted matrices."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import hook_count, make_mlp_task

import tl_submodels as tls
from tl_submodels.discovery import split_prompts
from tl_submodels.nmf import choose_k, nmf


def test_nmf_recovers_planted_blocks():
    g = torch.Generator().manual_seed(0)
    w0 = torch.zeros(60, 3)
    h0 = torch.zeros(3, 30)
    for j in range(3):  # prompts 20j..20j+19 use factor j; factor j is columns 10j..10j+9
        w0[20 * j : 20 * (j + 1), j] = torch.rand(20, generator=g) + 0.5
        h0[j, 10 * j : 10 * (j + 1)] = torch.rand(10, generator=g) + 0.5
    data = w0 @ h0
    w, h = nmf(data, 3)
    assert (w >= 0).all() and (h >= 0).all()
    assert ((w @ h - data).norm() / data.norm()) < 1e-3
    # each found factor covers exactly one planted block of columns and rows
    cols = {frozenset((h[j] > 0.1 * h[j].max()).nonzero().flatten().tolist()) for j in range(3)}
    assert cols == {frozenset(range(10 * j, 10 * (j + 1))) for j in range(3)}
    w2, h2 = nmf(data, 3)  # deterministic start: the same input gives the same factors
    assert torch.equal(w2, w) and torch.equal(h2, h)
    with pytest.raises(tls.TLSubmodelsError, match="non-negative"):
        nmf(-data, 2)


@pytest.mark.parametrize("seed", range(3))
def test_choose_k_finds_the_planted_rank_in_any_row_order(seed):
    """Sparse non-negative factors of rank 2 (exact) and 3 (plus 1% noise): k is the planted rank.

    Beyond the true rank the held-out error still falls by ~1e-4 on exact data, which one standard
    error over rows that agree this closely does not forgive; the tolerance does.
    """
    g = torch.Generator().manual_seed(seed)
    exact = (torch.rand(60, 2, generator=g) ** 3) @ (torch.rand(2, 30, generator=g) ** 3)
    assert choose_k(exact.double(), list(range(60)), 5)[0] == 2
    noisy = (torch.rand(90, 3, generator=g) ** 3) @ (torch.rand(3, 40, generator=g) ** 3)
    noisy = (noisy + 0.01 * torch.rand(90, 40, generator=g)).double()
    k, errors, se = choose_k(noisy, list(range(90)), 6)
    assert k == 3, errors
    assert sorted(errors) == sorted(se) == list(range(1, 7))
    assert errors[1] > errors[2] > 10 * errors[3]  # too few factors leave real structure out
    # which entries are hidden follows each row's key, so reordering the rows changes nothing
    perm = torch.randperm(90, generator=g)
    k2, errors2, _ = choose_k(noisy[perm], perm.tolist(), 6)
    assert k2 == 3
    assert errors2 == pytest.approx(errors, rel=1e-6)
    with pytest.raises(tls.TLSubmodelsError, match="one key per row"):
        choose_k(noisy, [0, 1], 3)
    with pytest.raises(tls.TLSubmodelsError, match="choose 1 <= k_max <= 40"):
        choose_k(noisy, list(range(90)), 41)


def test_atoms_are_the_venn_decomposition():
    a = tls.SubModel(components=["L0H0", "L1H1", "L2H2"], name="a")
    b = tls.SubModel(components=["L0H0", "L1H1", "L2H3"], name="b")
    c = tls.SubModel(components=["L0H0", "L0N5"], name="c")
    out = tls.atoms({"a": a, "b": b, "c": c})
    got = {x.name: sorted(map(str, x)) for x in out}
    assert got == {"a&b&c": ["L0H0"], "a&b": ["L1H1"], "a": ["L2H2"], "b": ["L2H3"], "c": ["L0N5"]}
    assert out[0].name == "a&b&c"
    # the atoms partition the union
    union = set().union(*(x.components for x in out))
    assert union == a.components | b.components | c.components
    assert sum(len(x) for x in out) == len(union)
    with pytest.raises(tls.TLSubmodelsError, match="at least one"):
        tls.atoms([])
    with pytest.raises(tls.TLSubmodelsError, match="distinct names"):
        tls.atoms([a, a])


@pytest.fixture(scope="module")
def two_tasks(mlp_model):
    t1 = make_mlp_task(mlp_model, n=8, seed=1).replace(name="one")
    t2 = make_mlp_task(mlp_model, n=8, seed=2, diff_at=7).replace(name="two")
    return [t1, t2]


def test_factorize_structure_and_order_invariance(mlp_model, two_tasks):
    before = hook_count(mlp_model)
    f = tls.factorize(mlp_model, two_tasks, k=3)
    assert hook_count(mlp_model) == before
    assert len(f.parts) == len(f.labels) == len(f.evaluations) == 3
    assert f.usage.shape == (16, 3)
    torch.testing.assert_close(f.usage.sum(1), torch.ones(16))
    torch.testing.assert_close(f.task_share.sum(1), torch.ones(3))
    assert f.effects.shape == (16, len(f.components))
    assert set(f.labels) <= {"one", "two"}
    for p, lab, ev in zip(f.parts, f.labels, f.evaluations, strict=True):
        assert ev.task == lab and set(ev.specificity) == {"one", "two"} - {lab}
        assert all(c in f.components for c in p)
    # the effect rows are the per-prompt noising effects of exact patching, each task's block
    # scaled to mean row norm 1
    s = tls.patch(mlp_model, two_tasks[0], kinds=("heads", "neurons"), direction="noising", per_example=True)
    block = torch.cat([s.per_example["heads"].reshape(8, -1), s.per_example["neurons"].reshape(8, -1)], 1)
    torch.testing.assert_close(f.effects[:8], block / block.norm(dim=1).mean(), atol=1e-5, rtol=1e-4)
    # the same sub-models when the prompts come in another order
    perm = [two_tasks[0].subset(list(range(7, -1, -1))), two_tasks[1].subset([3, 1, 0, 2, 7, 6, 5, 4])]
    g = tls.factorize(mlp_model, perm, k=3)
    assert [p.components for p in g.parts] == [p.components for p in f.parts]
    assert g.labels == f.labels


def test_factorize_chooses_k_by_held_out_error(mlp_model, two_tasks):
    f = tls.factorize(mlp_model, two_tasks, k_max=4)
    assert sorted(f.k_errors) == sorted(f.k_error_se) == [1, 2, 3, 4]
    # the one-standard-error rule: the smallest k within one standard error of the least error
    best = min(f.k_errors, key=f.k_errors.get)
    assert len(f.parts) == min(k for k, e in f.k_errors.items() if e <= f.k_errors[best] + f.k_error_se[best])
    # the chosen k given explicitly: the same parts (the fit after choosing k is deterministic)
    again = tls.factorize(mlp_model, two_tasks, k=len(f.parts))
    assert [p.components for p in again.parts] == [p.components for p in f.parts] and again.k_errors == {}


def test_factorize_with_a_holdout_evaluates_parts_on_prompts_it_never_saw(mlp_model, two_tasks):
    f = tls.factorize(mlp_model, two_tasks, k=2, holdout=0.25, seed=3)
    assert f.usage.shape == (12, 2) and len(f.holdout_evaluations) == 2  # 6 of each task's 8 prompts chosen on
    splits = [split_prompts(t, 0.25, 3) for t in two_tasks]
    held = [h for _, h in splits]
    # the parts are those of the chosen prompts alone, and each is evaluated on its task's held-out prompts
    alone = tls.factorize(mlp_model, [c for c, _ in splits], k=2)
    assert [p.components for p in f.parts] == [p.components for p in alone.parts]
    for p, lab, ev in zip(f.parts, f.labels, f.holdout_evaluations, strict=True):
        own = next(t for t in held if t.name == lab)
        oracle = tls.evaluate(mlp_model, p, own, reference=[t.corrupt for t in held], seed=3)
        assert ev.faithfulness == pytest.approx(oracle.faithfulness) and ev.faithfulness_ci == oracle.faithfulness_ci
        assert set(ev.specificity) == {"one", "two"} - {lab}
    assert {"holdout_faithfulness", "faithfulness_low", "faithfulness_high"} <= set(f.to_frame().columns)
    with pytest.raises(tls.TLSubmodelsError, match="holdout"):
        tls.factorize(mlp_model, two_tasks, k=2, holdout=0.1)


def test_factorize_stability_reruns_on_resamples(mlp_model, two_tasks):
    f = tls.factorize(mlp_model, two_tasks, k=2, stability=3)
    assert len(f.stability) == 2 and all(st.n == 3 and len(st.jaccard) == 3 for st in f.stability)
    for p, st in zip(f.parts, f.stability, strict=True):
        assert {str(c) for c in p} <= set(st.frequency) and all(0 <= v <= 1 for v in st.frequency.values())
        # a member's frequency is at most the share of reruns whose matched part overlaps the part at all
        assert max(st.frequency[str(c)] for c in p) <= sum(j > 0 for j in st.jaccard) / 3
    assert "stability_jaccard" in f.to_frame().columns
    back = tls.Factorization.from_dict(json.loads(json.dumps(f.to_dict())))
    assert back.stability == f.stability
    with pytest.raises(tls.TLSubmodelsError, match="stability is a number"):
        tls.factorize(mlp_model, two_tasks, k=2, stability=-1)


def test_factorize_bad_input(mlp_model, two_tasks, induction_task):
    with pytest.raises(tls.TLSubmodelsError, match="no tasks"):
        tls.factorize(mlp_model, [])
    with pytest.raises(tls.TLSubmodelsError, match="distinct names"):
        tls.factorize(mlp_model, [two_tasks[0], two_tasks[0]])
    with pytest.raises(tls.TLSubmodelsError, match="d_vocab"):
        tls.factorize(mlp_model, [two_tasks[0], induction_task])
    with pytest.raises(tls.TLSubmodelsError, match="k=10000"):
        tls.factorize(mlp_model, two_tasks, k=10_000)


@pytest.mark.ill_typed
def test_factorize_unknown_method(mlp_model, two_tasks):
    with pytest.raises(tls.TLSubmodelsError, match="unknown method 'magic'"):
        tls.factorize(mlp_model, two_tasks, method="magic")
    with pytest.warns(DeprecationWarning, match=r"factorize\(scorer=...\) is now factorize\(method=...\)"):
        with pytest.raises(tls.TLSubmodelsError, match="unknown method 'magic'"):
            tls.factorize(mlp_model, two_tasks, scorer="magic")


def test_specificity_is_necessity_on_the_other_tasks(mlp_model, two_tasks):
    one, two = two_tasks
    sub = tls.SubModel(components=["L1H2", "L2H0", "L0N3"], name="s")
    ref = [one.corrupt, two.corrupt]
    ev = tls.evaluate(mlp_model, sub, one, reference=ref, others=[two])
    alone = tls.evaluate(mlp_model, sub, two, reference=ref)
    assert ev.specificity == pytest.approx({"two": alone.necessity}, abs=1e-6)
    assert ev.accuracy_drop_elsewhere == pytest.approx({"two": alone.accuracy_full - alone.accuracy_ablated})
    assert tls.evaluate(mlp_model, sub, one).specificity is None
    with pytest.raises(tls.TLSubmodelsError, match="distinct names"):
        tls.evaluate(mlp_model, sub, one, others=[one])


def test_mean_over_a_list_of_references_weights_every_token(mlp_model, two_tasks):
    one, two = two_tasks
    short = two.clean[:, :9]
    ab = tls.Ablator(mlp_model, ablation="mean", reference=[one.clean, short])
    (name, fn), = ab.hooks(["L1H0"])  # fmt: skip
    _, cache = mlp_model.run_with_cache(torch.cat([one.clean[:, :9], short]), names_filter=name)
    _, full = mlp_model.run_with_cache(one.clean, names_filter=name)
    expect = torch.cat([full[name].flatten(0, 1), cache[name][8:].flatten(0, 1)]).mean(0)
    act = full[name].clone()
    out = fn(act)
    torch.testing.assert_close(out[:, :, 0], expect[0].expand_as(out[:, :, 0]), atol=1e-5, rtol=0)
    with pytest.raises(tls.TLSubmodelsError, match="list of references"):
        tls.Ablator(mlp_model, ablation="resample", reference=[one.clean, short])
