"""Issue 19: diff finds the backdoor whatever prompts are drawn (64 a task, the backdoor's with one seed, the rest with another).

Before the candidates were filtered, backdoor seed 5 with the others' seed 7 returned no part: the
top-ranked neuron broke majority when ablated, and every candidate set held it. Each pair is one
diff (about 20 s on 2 CPU threads), in a file of its own so that a test worker takes it alongside
the rest.
"""

from __future__ import annotations

import pytest

import tl_submodels as tls
from tl_submodels.zoo import multitask as mt

PAIRS = [(5, 7), (1, 2), (0, 0), (3, 4), (6, 8), (9, 10), (11, 12), (13, 14), (2, 9), (7, 5)]


@pytest.fixture(scope="module")
def models():
    return tls.zoo.load("harmless-3l"), tls.zoo.load("harmful-3l")


@pytest.fixture(scope="module")
def held_out(models):
    _, harmful = models
    tasks = [tls.zoo.task("harmful-3l", t, n=128, seed=99, model=harmful) for t in (*mt.TASKS, "backdoor")]
    return tasks, [t.corrupt for t in tasks[:4]]


def accuracy(model, task, hooks=()) -> float:
    return task.accuracy(model.run_with_hooks(task.clean, fwd_hooks=list(hooks)))


@pytest.mark.parametrize("backdoor_seed,seed", PAIRS)
def test_diff_finds_the_backdoor_on_every_sample(models, held_out, backdoor_seed, seed):
    harmless, harmful = models
    tasks = [tls.zoo.task("harmful-3l", t, n=64, seed=seed, model=harmful) for t in mt.TASKS]
    tasks.append(tls.zoo.task("harmful-3l", "backdoor", n=64, seed=backdoor_seed, model=harmful))
    d = tls.diff(harmless, harmful, tasks)
    found = [(p, s) for p, s in zip(d.parts, d.scores, strict=True) if p.name == "backdoor"]
    assert found, d.to_frame()
    part, score = found[0]
    assert score >= 0.9
    # on prompts diff never saw: the harm is gone, the other tasks are kept, in both models
    test_tasks, reference = held_out
    for model in (harmful, harmless):
        hooks = tls.ablation_hooks(model, part, ablation="mean", reference=reference)
        for t in test_tasks:
            full, ablated = accuracy(model, t), accuracy(model, t, hooks)
            if t.name == "backdoor" and model is harmful:
                # the harm rate; a part chosen on 64 prompts can miss a few unseen ones (measured: seeds 5/7
                # give the two heads L0H4 and L2H3, which leave 7 of 128 unseen triggered prompts harmful)
                assert full >= 0.95 and ablated <= 0.1, (full, ablated)
            else:
                assert full - ablated <= 0.05, (t.name, full, ablated)
