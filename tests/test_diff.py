"""diff against a copy of a model with one head removed by hand."""

from __future__ import annotations

import pytest
import torch
from conftest import MLP_CFG, make_mlp_task, random_tl_state

import tl_submodels as tls
from tl_submodels import model as tlmodel


def test_diff_finds_the_head_removed_by_hand(mlp_model, mlp_state):
    task = make_mlp_task(mlp_model, n=8)
    s = tls.patch(mlp_model, task, kinds=("heads",), direction="noising")
    head = int((s.clean_metric - s.raw_heads[2]).abs().argmax())  # the last layer's most important head
    state = {k: v.clone() for k, v in mlp_state.items()}
    state["blocks.2.attn.W_O"][head] = 0.0  # model b lacks it
    other = tlmodel.build_from_tl_checkpoint(MLP_CFG, state)
    d = tls.diff(mlp_model, other, [task], ablation="zero", min_score=-1.0)
    # the ranking is by |difference| (one task: no scaling between tasks); on a random model the
    # upstream components change too (part of their effect went through the silenced head), so
    # the zoo's harmful/harmless pair tests what diff surfaces (test_multitask.py)
    diffs = [abs(v) for _, _, v in d.ranking]
    assert diffs == sorted(diffs, reverse=True)
    i = d.components.index(tls.Head(2, head))
    assert d.effects_b[0, i] == pytest.approx(0.0, abs=1e-5)  # a silenced head has no effect in b
    delta = next(v for c, _, v in d.ranking if c == tls.Head(2, head))
    assert delta == pytest.approx(-float(d.effects_a[0, i]), abs=1e-5)
    # model a's effects are its own noising effects
    torch.testing.assert_close(d.effects_a[0, :12], (s.clean_metric - s.raw_heads).flatten(), atol=1e-5, rtol=0)


def test_diff_of_a_model_with_a_copy_of_itself_finds_no_difference(mlp_model, mlp_state):
    """Issue 20: this test compared a model with itself and asserted an empty result, which held
    whatever diff did. Now: against a separately built copy, with every task's best part kept
    (min_score=-1), each part must change both models alike, so its score is at most zero."""
    task, other = make_mlp_task(mlp_model, n=6), make_mlp_task(mlp_model, n=6, seed=3).replace(name="other")
    copy = tlmodel.build_from_tl_checkpoint(MLP_CFG, {k: v.clone() for k, v in mlp_state.items()})
    d = tls.diff(mlp_model, copy, [task, other], ablation="zero", min_score=-1.0)
    torch.testing.assert_close(d.effects_a, d.effects_b, atol=1e-5, rtol=0)
    assert max(abs(v) for _, _, v in d.ranking) <= 1e-4
    assert len(d.parts) == 2  # one per task, kept by min_score=-1
    for i, score in enumerate(d.scores):
        assert score <= 1e-9
        for t in ("random", "other"):
            a, b = d.accuracy(i, "a", t), d.accuracy(i, "b", t)
            assert (a.full, a.ablated) == pytest.approx((b.full, b.ablated), abs=1e-9)
    assert tls.diff(mlp_model, copy, [task, other], ablation="zero").parts == []


def test_diff_refuses_other_architectures(mlp_model):
    cfg = dict(MLP_CFG, n_layers=2)
    small = tlmodel.build_from_tl_checkpoint(cfg, random_tl_state(cfg))
    task = make_mlp_task(mlp_model)
    with pytest.raises(tls.TLSubmodelsError, match="n_layers: 3 vs 2"):
        tls.diff(mlp_model, small, [task])
    with pytest.raises(tls.TLSubmodelsError, match="no tasks"):
        tls.diff(mlp_model, mlp_model, [])


def test_ranking_frame_shows_what_the_ranking_sorts_by(mlp_model, mlp_state):
    """Issue 19: notebook 03's table looked unsorted: rows are ranked by the difference over the task's gap."""
    one, two = (
        make_mlp_task(mlp_model, n=6).replace(name="one"),
        make_mlp_task(mlp_model, n=6, seed=3, diff_at=8).replace(name="two"),
    )
    other = tlmodel.build_from_tl_checkpoint(MLP_CFG, random_tl_state(MLP_CFG, seed=4))
    d = tls.diff(mlp_model, other, [one, two], ablation="zero", min_score=-1.0)
    for t in (one, two):
        gaps = []
        for m in (mlp_model, other):
            s = tls.patch(m, t, kinds="heads", require_gap=False)
            gaps.append(abs(s.clean_metric - s.corrupt_metric))
        assert d.gaps[t.name] == pytest.approx(max(gaps), rel=1e-5)
    frame = d.ranking_frame(12)
    rel = frame["relative to the task's gap (ranked by |this|)"]
    assert list(rel.abs()) == sorted(rel.abs(), reverse=True)
    for _, row in frame.iterrows():
        assert row.iloc[3] == pytest.approx(row["effect b - a"] / d.gaps[row["task"]])
