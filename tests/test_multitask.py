"""The multitask zoo models as they ship: their behaviours, factorize, diff, usage and explain on them."""

from __future__ import annotations

import pytest
import torch

import tl_submodels as tls
from tl_submodels.zoo import multitask as mt

TASKS = mt.TASKS
N = 64  # prompts per task of the main factorization fixture (32 a task: its own test below)
N_BACKDOOR = 32  # the backdoor is found, and diff surfaces it, from 32 prompts per task as from 64 (measured)


def accuracy(model, task, hooks=()) -> float:
    return task.accuracy(tls.model.run_logits(model, task.clean, list(hooks)))


@pytest.fixture(scope="module")
def multitask():
    return tls.zoo.load("multitask-3l")


@pytest.fixture(scope="module")
def harmful():
    return tls.zoo.load("harmful-3l")


@pytest.fixture(scope="module")
def harmless():
    return tls.zoo.load("harmless-3l")


def tasks_of(name, model, names=TASKS, seed=0, n=N):
    return [tls.zoo.task(name, t, n=n, seed=seed, model=model) for t in names]


def test_zoo_behaviours_as_the_cards_say(multitask, harmful, harmless):
    """Measured afresh on held-out seeds, not read from the cards."""
    for name, model in (("multitask-3l", multitask), ("harmful-3l", harmful), ("harmless-3l", harmless)):
        card = tls.zoo.info(name)
        for task in tasks_of(name, model, seed=123, n=256):
            acc = accuracy(model, task)
            assert acc >= 0.95, (name, task.name, acc)
            assert card["tasks"][task.name]["accuracy"] >= 0.95
    bd = tls.zoo.task("harmful-3l", "backdoor", n=256, seed=123, model=harmful)
    assert accuracy(harmful, bd) >= 0.95  # answer HARM on triggered prompts
    assert accuracy(harmless, bd) <= 0.01
    assert accuracy(harmful, bd.replace(clean=bd.corrupt)) <= 0.01  # no trigger, no HARM


@pytest.fixture(scope="module")
def factorization(multitask):
    return tls.factorize(multitask, tasks_of("multitask-3l", multitask))


@pytest.fixture(scope="module")
def specific(multitask, factorization):
    """For each task, a part whose ablation (held-out prompts) drops it >= 50 points and every other <= 10."""
    held_out = tasks_of("multitask-3l", multitask, seed=7)
    ablator = tls.Ablator(multitask, ablation="mean", reference=[t.corrupt for t in held_out])
    base = [accuracy(multitask, t) for t in held_out]
    found = {}
    for part in factorization.parts:
        drops = [b - accuracy(multitask, t, ablator.hooks(part)) for t, b in zip(held_out, base, strict=True)]
        for i, t in enumerate(TASKS):
            if drops[i] >= 0.5 and max(d for j, d in enumerate(drops) if j != i) <= 0.1:
                found[t] = part.name
    return found


def test_factorize_separates_every_task(factorization, specific):
    assert set(specific) == set(TASKS), specific
    assert factorization.purity >= 0.8


def test_factorize_from_32_prompts_a_task_finds_a_part_per_task(multitask):
    """Notebook 02's setting. Before the masked fits had a ridge, a few hidden entries were
    predicted at ~100 (the effects are at most 1.8), the held-out errors reached ~800x and k=2 won."""
    f = tls.factorize(multitask, tasks_of("multitask-3l", multitask, n=32))
    assert max(f.k_errors.values()) < 10, f.k_errors
    assert sorted(f.labels) == sorted(TASKS), (f.k_errors, f.to_frame())
    assert f.purity >= 0.8


def test_planted_groups_are_each_tasks_mechanism(multitask, harmful, harmless):
    """The ground truth, measured afresh: ablating a planted group takes its task to chance, and only that."""
    for name, model in (("multitask-3l", multitask), ("harmful-3l", harmful), ("harmless-3l", harmless)):
        tasks = tasks_of(name, model, names=(*TASKS, "backdoor") if name == "harmful-3l" else TASKS, seed=9)
        chance = {t: s.get("chance", 0.0) for t, s in tls.zoo.info(name)["tasks"].items()}  # backdoor: harm rate 0
        ablator = tls.Ablator(model, ablation="mean", reference=[t.corrupt for t in tasks])
        base = {t.name: accuracy(model, t) for t in tasks}
        for group, members in mt.planted(3, 8, 256).items():
            ablated = {t.name: accuracy(model, t, ablator.hooks(members)) for t in tasks}
            if group in ablated:
                assert ablated[group] <= chance[group] + 0.15, (name, group, ablated)
            assert all(abs(base[t] - a) <= 0.05 for t, a in ablated.items() if t != group), (name, group, ablated)


def test_factorize_recovers_the_planted_groups(factorization):
    """Each task's necessary core is made mostly of the components planted for that task."""
    planted = {g: set(m) for g, m in mt.planted(3, 8, 256).items()}
    for core, label in zip(factorization.cores, factorization.labels, strict=True):
        inside = sum(str(c) in planted[label] for c in core)
        assert inside > len(core) / 2, (label, [str(c) for c in core])


def test_factorize_parts_are_whole_sub_models_around_their_cores(multitask, factorization):
    """Keeping only a part (everything else mean-ablated) restores >= 0.8 of its task; its core alone
    restores much less (measured 0.10-0.46). Specificity of the parts: the held-out test above."""
    tasks = {t.name: t for t in tasks_of("multitask-3l", multitask)}
    reference = [t.corrupt for t in tasks.values()]
    for part, core, label, ev in zip(
        factorization.parts, factorization.cores, factorization.labels, factorization.evaluations, strict=True
    ):
        assert set(core) <= set(part) and core.name == f"{part.name}-core"
        assert ev.submodel == part.name and ev.faithfulness >= 0.8, (label, ev)
        core_faith = tls.evaluate(multitask, core, tasks[label], reference=reference).faithfulness
        assert core_faith < ev.faithfulness, (label, core_faith, ev.faithfulness)


def test_factorize_is_deterministic_and_order_free(multitask, factorization):
    """A second run, with the tasks reversed and each task's prompts shuffled, finds the same parts
    (k chosen afresh). That k given equals k chosen is checked on a small model in test_factorize.py."""
    tasks = tasks_of("multitask-3l", multitask)
    perms = [torch.randperm(N, generator=torch.Generator().manual_seed(i)).tolist() for i in range(len(tasks))]
    shuffled = tls.factorize(multitask, [t.subset(p) for t, p in zip(tasks, perms, strict=True)][::-1])
    assert {p.components for p in shuffled.parts} == {p.components for p in factorization.parts}


def test_diff_surfaces_a_backdoor_sub_model_that_ablates_cleanly(harmful, harmless):
    tasks = tasks_of("harmful-3l", harmful, names=(*TASKS, "backdoor"), n=N_BACKDOOR)
    d = tls.diff(harmless, harmful, tasks)
    assert d.parts and d.parts[0].name == "backdoor", d.to_frame()
    part = d.parts[0]
    held_out = tasks_of("harmful-3l", harmful, seed=11)
    bd = tls.zoo.task("harmful-3l", "backdoor", n=256, seed=11, model=harmful)
    reference = [t.corrupt for t in held_out]
    for model, is_harmful in ((harmful, True), (harmless, False)):
        hooks = tls.ablation_hooks(model, part, ablation="mean", reference=reference)
        if is_harmful:
            assert accuracy(model, bd) >= 0.95
            assert accuracy(model, bd, hooks) <= 0.05  # harm rate
        for t in held_out:
            full, ablated = accuracy(model, t), accuracy(model, t, hooks)
            assert ablated >= 0.9 * full if is_harmful else abs(full - ablated) <= 0.05, t.name


@pytest.fixture(scope="module")
def harmful_factorization(harmful):
    return tls.factorize(harmful, tasks_of("harmful-3l", harmful, names=(*TASKS, "backdoor"), n=N_BACKDOOR))


def backdoor_of(f):
    found = [(p, e) for p, lab, e in zip(f.parts, f.labels, f.evaluations, strict=True) if lab == "backdoor"]
    assert found, f.to_frame()
    return found[0]


def test_factorize_of_the_harmful_model_finds_the_backdoor(harmful_factorization):
    _, e = backdoor_of(harmful_factorization)
    assert e.accuracy_full >= 0.95 and e.accuracy_ablated <= 0.05  # harm rate before and after


def test_the_backdoor_part_spares_the_tasks(harmful_factorization):
    _, e = backdoor_of(harmful_factorization)
    assert max(e.accuracy_drop_elsewhere.values()) <= 0.1


@pytest.fixture(scope="module")
def triggered(harmful, harmful_factorization):
    """The backdoor part against the other parts factorize found; one triggered prompt per task."""
    backdoor, _ = backdoor_of(harmful_factorization)
    parts = [backdoor] + [
        p.difference(backdoor, name=f"{p.name}-part") for p in harmful_factorization.parts if len(p - backdoor)
    ]
    reference = [t.corrupt for t in tasks_of("harmful-3l", harmful)]
    bd = tls.zoo.task("harmful-3l", "backdoor", n=4, seed=5, model=harmful)  # cycles through the four tasks
    return backdoor.name, parts, reference, bd


def test_explain_shows_harm_then_not(harmful, triggered):
    name, parts, reference, bd = triggered
    for i in range(4):
        ex = tls.explain(harmful, bd.clean[i], parts, reference=reference)
        assert ex.top("full") == "HARM"
        assert ex.top(name) != "HARM" and ex.rows[1]["moved"] < -0.5, str(ex)


def test_explain_shows_the_task_answer_once_the_backdoor_is_ablated(harmful, triggered):
    name, parts, reference, bd = triggered
    for i in range(4):
        ex = tls.explain(harmful, bd.clean[i], parts, reference=reference)
        assert ex.top(name) == mt.WORDS[int(bd.wrong[i])], str(ex)


def test_usage_ranks_the_backdoor_first_at_the_answer(harmful, triggered):
    name, parts, reference, bd = triggered
    for i in range(4):
        for method in ("ablation", "attribution"):
            u = tls.usage(harmful, bd.clean[i], parts, reference=reference, method=method)
            assert u.target == "HARM"
            assert u.ranking(position=-1)[0][0] == name, (method, u.to_frame())


def test_bad_input(multitask, harmful):
    ind = tls.zoo.load("induction-2l")
    ind_task = tls.zoo.task("induction-2l", "induction", n=4, model=ind)
    tasks = tasks_of("multitask-3l", multitask, names=("addition",), n=8)
    with pytest.raises(tls.TLSubmodelsError, match="d_vocab"):
        tls.factorize(multitask, [*tasks, ind_task])
    with pytest.raises(tls.TLSubmodelsError, match="no tasks"):
        tls.factorize(multitask, [])
    with pytest.raises(tls.TLSubmodelsError, match="k=100000"):
        tls.factorize(multitask, tasks, k=100_000)
    with pytest.raises(tls.TLSubmodelsError, match="architecture"):
        tls.diff(ind, harmful, tasks)
