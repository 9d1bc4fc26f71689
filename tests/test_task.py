"""Task: construction checks and metrics against hand computations."""

from __future__ import annotations

import pytest
import torch

import tl_submodels as tls


def test_metrics_by_hand(mlp_model, mlp_task):
    logits = mlp_model(mlp_task.clean).detach()
    final = logits[:, -1]
    a, w = mlp_task.answer, mlp_task.wrong
    rows = torch.arange(len(a))
    expected = {
        "logit_diff": (final[rows, a] - final[rows, w]).mean(),
        "prob": final.softmax(-1)[rows, a].mean(),
        "logprob": final.log_softmax(-1)[rows, a].mean(),
    }
    for name, value in expected.items():
        task = mlp_task.replace(metric_name=name)
        torch.testing.assert_close(task.metric(logits), value, atol=1e-5, rtol=0)
    kl_task = tls.Task.from_tokens(mlp_model, clean=mlp_task.clean, corrupt=mlp_task.corrupt, answer=a, metric="kl")
    assert float(kl_task.metric(logits)) == pytest.approx(0.0, abs=1e-5)
    corrupt_final = mlp_model(mlp_task.corrupt).detach()[:, -1]
    p = final.log_softmax(-1)
    by_hand = (p.exp() * (p - corrupt_final.log_softmax(-1))).sum(-1).mean()
    torch.testing.assert_close(kl_task.metric(mlp_model(mlp_task.corrupt)), by_hand, atol=1e-5, rtol=0)


def test_position_reads_each_example(mlp_model, mlp_task):
    pos = torch.tensor([3, 4, 5, 6, 7, 8])
    task = mlp_task.replace(position=pos)
    logits = mlp_model(task.clean).detach()
    final = logits[torch.arange(6), pos]
    expected = (final[torch.arange(6), task.answer] - final[torch.arange(6), task.wrong]).mean()
    torch.testing.assert_close(task.metric(logits), expected, atol=1e-5, rtol=0)


def test_from_prompts_pads_and_reads_last_token(induction_model):
    task = tls.Task.from_prompts(
        induction_model,
        clean=["t5 t9 t3 t5 t9", "t1 t2 t1"],
        corrupt=["t5 t9 t3 t7 t8", "t1 t2 t4"],
        answer=["t3", "t2"],
        wrong=["t1", "t4"],
    )
    assert task.clean.shape == (2, 6)
    assert task.position.tolist() == [5, 3]
    assert task.clean[0].tolist() == [0, 5, 9, 3, 5, 9]
    assert task.clean[1, :4].tolist() == [0, 1, 2, 1]
    assert task.accuracy(induction_model(task.clean)) == 1.0
    with pytest.raises(tls.TLSubmodelsError, match="same length"):
        tls.Task.from_prompts(induction_model, clean=["t5 t9"], corrupt=["t5"], answer=["t3"], wrong=["t1"])
    with pytest.raises(tls.TLSubmodelsError, match="single tokens"):
        tls.Task.from_prompts(induction_model, clean=["t5"], corrupt=["t6"], answer=["t3 t4"], wrong=["t1"])
    with pytest.raises(tls.TLSubmodelsError, match="outside the tokenizer's vocabulary"):
        tls.Task.from_prompts(induction_model, clean=["t5 t99"], corrupt=["t5 t6"], answer=["t3"], wrong=["t1"])


@pytest.mark.ill_typed
def test_bad_input(mlp_model, mlp_task):
    with pytest.raises(
        tls.TLSubmodelsError,
        match=r"clean and corrupt must have the same shape \[batch, pos\]: clean \[6, 12\], corrupt \[6, 11\]",
    ):
        tls.Task.from_tokens(
            mlp_model,
            clean=mlp_task.clean,
            corrupt=mlp_task.corrupt[:, :11],
            answer=mlp_task.answer,
            wrong=mlp_task.wrong,
        )
    with pytest.raises(tls.TLSubmodelsError, match="token id 50, outside the model's vocabulary"):
        tls.Task.from_tokens(
            mlp_model, clean=mlp_task.clean, corrupt=mlp_task.corrupt, answer=torch.full((6,), 50), wrong=mlp_task.wrong
        )
    with pytest.raises(tls.TLSubmodelsError, match="needs wrong tokens"):
        tls.Task.from_tokens(mlp_model, clean=mlp_task.clean, corrupt=mlp_task.corrupt, answer=mlp_task.answer)
    with pytest.raises(tls.TLSubmodelsError, match="unknown metric"):
        mlp_task.replace(metric_name="accuracy")
    with pytest.raises(tls.TLSubmodelsError, match="n_ctx=24"):
        long = torch.zeros(2, 30, dtype=torch.long)
        tls.Task.from_tokens(mlp_model, clean=long, corrupt=long, answer=[0, 0], wrong=[1, 1])
    with pytest.raises(tls.TLSubmodelsError, match="integer token ids"):
        tls.Task.from_tokens(
            mlp_model,
            clean=mlp_task.clean.float(),
            corrupt=mlp_task.corrupt,
            answer=mlp_task.answer,
            wrong=mlp_task.wrong,
        )
    with pytest.raises(tls.TLSubmodelsError, match="one entry per example"):
        mlp_task.replace(answer=mlp_task.answer[:3])


def test_metric_errors(mlp_model, mlp_task):
    logits = mlp_model(mlp_task.clean)

    def nan(final, task):
        return torch.full((final.shape[0],), float("nan"))

    def scalar(final, task):
        return final[:, 0].mean()

    def matrix(final, task):
        return final[:, :2]

    with pytest.raises(tls.TLSubmodelsError, match="NaN"):
        mlp_task.replace(metric_fn=nan, metric_name="nan").metric(logits)
    for fn in (scalar, matrix):
        with pytest.raises(tls.TLSubmodelsError, match="must return one value per example"):
            mlp_task.replace(metric_fn=fn, metric_name=fn.__name__).metric(logits)


def test_answers_must_be_outputs_of_the_unembedding(mlp_state):
    """A model whose unembedding has fewer outputs (d_vocab_out 20) than inputs (d_vocab 50): an answer id of 30
    is refused when the task is built, not by a raw index error inside patch."""
    from conftest import MLP_CFG

    cfg = dict(MLP_CFG, d_vocab_out=20)
    state = dict(
        mlp_state, **{"unembed.W_U": mlp_state["unembed.W_U"][:, :20], "unembed.b_U": mlp_state["unembed.b_U"][:20]}
    )
    model = tls.model.build_from_tl_checkpoint(cfg, state)
    clean = torch.randint(0, 50, (4, 8), generator=torch.Generator().manual_seed(0))
    corrupt = clean.clone()
    corrupt[:, 3] = (corrupt[:, 3] + 1) % 50
    with pytest.raises(tls.TLSubmodelsError, match="d_vocab_out=20"):
        tls.Task.from_tokens(model, clean=clean, corrupt=corrupt, answer=[30, 1, 2, 3], wrong=[4, 5, 6, 7])
    assert tls.model.model_info(model).d_vocab_out == 20
    # inputs above 20 are fine; answers below it work through patch
    task = tls.Task.from_tokens(model, clean=clean, corrupt=corrupt, answer=[19, 1, 2, 3], wrong=[4, 5, 6, 7])
    assert tls.patch(model, task, kinds=("heads",)).heads.shape == (3, 4)
    # a task built for the inputs alone (by hand, without the model) is refused by the scorers, with what to do
    by_hand = tls.Task(
        clean=clean, corrupt=corrupt, answer=torch.tensor([30, 1, 2, 3]), wrong=torch.tensor([4, 5, 6, 7]), d_vocab=50
    )
    with pytest.raises(tls.TLSubmodelsError, match="d_vocab_out=20"):
        tls.patch(model, by_hand, kinds=("heads",))
