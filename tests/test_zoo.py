"""The zoo: offline loading on both lines, tasks, and the model card's claims."""

from __future__ import annotations

import pytest
import torch

import tl_submodels as tls


def test_list_info_load():
    assert "induction-2l" in tls.zoo.list()
    card = tls.zoo.info("induction-2l")
    assert card["config"]["n_layers"] == 2 and card["config"]["attn_only"]
    with pytest.raises(tls.TLSubmodelsError, match=r"no zoo model 'induction-2'.*Did you mean 'induction-2l'"):
        tls.zoo.load("induction-2")
    with pytest.raises(tls.TLSubmodelsError, match="no task 'copy'"):
        tls.zoo.task("induction-2l", "copy")


def test_task_is_seeded_and_well_formed(induction_model):
    a = tls.zoo.task("induction-2l", "induction", n=16, seed=3, model=induction_model)
    b = tls.zoo.task("induction-2l", "induction", n=16, seed=3, model=induction_model)
    c = tls.zoo.task("induction-2l", "induction", n=16, seed=4, model=induction_model)
    assert torch.equal(a.clean, b.clean) and not torch.equal(a.clean, c.clean)
    seg = tls.zoo.info("induction-2l")["tasks"]["induction"]["segment"]
    assert torch.equal(a.clean[:, 1 : 1 + seg - 1], a.clean[:, 1 + seg :])  # the repeat
    assert torch.equal(a.clean[:, : 1 + seg], a.corrupt[:, : 1 + seg])  # shared prefix
    assert torch.equal(a.answer, a.clean[:, seg])
    assert a.first_difference() == 1 + seg and (a.wrong != a.answer).all()


def test_card_accuracy_and_ground_truth_hold(induction_model):
    card = tls.zoo.info("induction-2l")
    task = tls.zoo.task("induction-2l", "induction", n=256, seed=7, model=induction_model)
    acc = task.accuracy(induction_model(task.clean))
    assert acc >= 0.95 and abs(acc - card["tasks"]["induction"]["accuracy"]) < 0.05
    assert task.accuracy(induction_model(task.corrupt)) < 0.2
    # the ground truth's attention scores, recomputed through TransformerLens' own cache
    n = 19
    g = torch.Generator().manual_seed(11)
    lo, hi = card["symbols"]
    rand = torch.randint(lo, hi + 1, (64, n), generator=g)
    tokens = torch.cat([torch.zeros(64, 1, dtype=torch.long), rand, rand], 1)
    _, cache = induction_model.run_with_cache(tokens)
    q = torch.arange(n + 1, 2 * n + 1)
    for name in card["ground_truth"]["previous_token_heads"]:
        c = tls.parse_component(name)
        assert cache[f"blocks.{c.layer}.attn.hook_pattern"][:, c.head, q, q - 1].mean() > 0.4
    for name in card["ground_truth"]["induction_heads"]:
        c = tls.parse_component(name)
        assert cache[f"blocks.{c.layer}.attn.hook_pattern"][:, c.head, q, q - n + 1].mean() > 0.4
