"""Resumable sweeps and faults: an interrupted sweep, resumed, equals an uninterrupted one bit for bit;
a checkpoint from other arguments is refused; an error anywhere leaves no hook and no changed flag."""

from __future__ import annotations

import pytest
import torch
from conftest import hook_count, make_mlp_task

import tl_submodels as tls
from tl_submodels import sweep as tlsweep

FLAGS = ("use_split_qkv_input", "use_hook_mlp_in", "use_attn_in", "use_attn_result")


class Boom(Exception):
    pass


class Faulty:
    """A per-example logit-difference metric that raises on its ``fail_at``-th call (0: never)."""

    def __init__(self) -> None:
        self.calls, self.fail_at, self.error = 0, 0, Boom

    def __call__(self, logits, task):
        self.calls += 1
        if self.calls == self.fail_at:
            raise self.error(f"metric call {self.calls}")
        rows = torch.arange(len(logits), device=logits.device)
        return logits[rows, task.answer] - logits[rows, task.wrong]


@pytest.fixture
def faulty(mlp_model):
    metric = Faulty()
    return metric, make_mlp_task(mlp_model, n=4, metric=metric)


def flags(model) -> dict[str, bool]:
    return {f: bool(getattr(model.cfg, f, False)) for f in FLAGS}


def assert_same_scores(a: tls.Scores, b: tls.Scores) -> None:
    for kind in ("heads", "neurons", "mlps", "raw_heads", "raw_neurons", "raw_mlps"):
        x, y = getattr(a, kind), getattr(b, kind)
        assert (x is None) == (y is None)
        if x is not None:
            assert torch.equal(x, y), kind  # bit for bit
    assert a.clean_metric == b.clean_metric and a.corrupt_metric == b.corrupt_metric
    if a.per_example is not None:
        assert b.per_example is not None
        for k in a.per_example:
            assert torch.equal(a.per_example[k], b.per_example[k]), k


SWEEPS = {
    "patch": lambda m, t, **kw: tls.patch(m, t, batch_size=t.batch, per_example=True, **kw),
    "patch-hooks": lambda m, t, **kw: tls.patch(m, t, batch_size=t.batch, fast=False, kinds=("heads", "mlps"), **kw),
    "atp": lambda m, t, **kw: tls.attribute(m, t, batch_size=1, max_memory_mb=0.01, per_example=True, **kw),
    "ig": lambda m, t, **kw: tls.attribute(m, t, method="ig", steps=4, batch_size=t.batch, **kw),
}


@pytest.mark.parametrize("name", list(SWEEPS))
def test_an_interrupted_sweep_resumes_bit_for_bit(name, mlp_model, faulty, tmp_path):
    metric, task = faulty
    run = SWEEPS[name]
    want = run(mlp_model, task)  # uninterrupted, no checkpoint
    full_calls = metric.calls
    before, hooks = flags(mlp_model), hook_count(mlp_model)

    ckpt = tmp_path / "sweep.ckpt"
    metric.calls, metric.fail_at = 0, full_calls // 2 + 1
    with pytest.raises(Boom):
        run(mlp_model, task, checkpoint=ckpt)
    assert hook_count(mlp_model) == hooks and flags(mlp_model) == before
    assert ckpt.exists() and not list(tmp_path.glob(".*tmp*"))  # whole file, no stray temp file
    saved = len(torch.load(ckpt, weights_only=True)["results"])
    assert saved > 0

    metric.calls, metric.fail_at = 0, 0
    resumed = run(mlp_model, task, checkpoint=ckpt)
    assert_same_scores(want, resumed)
    assert metric.calls < full_calls  # the saved work was not redone
    metric.calls = 0
    again = run(mlp_model, task, checkpoint=ckpt)  # complete checkpoint: nothing recomputed but the baselines
    assert_same_scores(want, again)


def test_keyboard_interrupt_leaves_no_hook_and_no_flag(mlp_model, faulty, tmp_path):
    metric, task = faulty
    before, hooks = flags(mlp_model), hook_count(mlp_model)
    calls = [
        lambda: tls.patch(mlp_model, task, fast=False, checkpoint=tmp_path / "p.ckpt"),
        lambda: tls.attribute(mlp_model, task, checkpoint=tmp_path / "a.ckpt"),
        lambda: tls.attribute_edges(mlp_model, task),
        lambda: tls.evaluate(mlp_model, tls.SubModel(components=["L0H0"]), task, ablation="zero"),
        lambda: tls.find_circuit(mlp_model, task, ablation="zero"),
    ]
    for call in calls:
        for fail_at in (1, 2, 3):
            metric.calls, metric.fail_at, metric.error = 0, fail_at, KeyboardInterrupt
            try:
                call()
            except KeyboardInterrupt:
                pass
            assert hook_count(mlp_model) == hooks and flags(mlp_model) == before
    metric.fail_at = 0
    for path in tmp_path.iterdir():  # whatever was saved before the interrupt reads back as a checkpoint
        assert torch.load(path, weights_only=True)["format"] == tlsweep.FORMAT


def test_a_checkpoint_of_another_sweep_is_refused(mlp_model, mlp_task, tmp_path, monkeypatch):
    ckpt = tmp_path / "s.ckpt"
    tls.patch(mlp_model, mlp_task, kinds=("heads",), checkpoint=ckpt)
    with pytest.raises(tls.TLSubmodelsError, match="differs in: kinds"):
        tls.patch(mlp_model, mlp_task, kinds=("heads", "mlps"), checkpoint=ckpt)
    with pytest.raises(tls.TLSubmodelsError, match=r"differs in: .*task"):
        tls.patch(mlp_model, make_mlp_task(mlp_model, seed=5), kinds=("heads",), checkpoint=ckpt)
    with pytest.raises(tls.TLSubmodelsError, match=r"differs in: .*fn"):
        tls.attribute(mlp_model, mlp_task, kinds=("heads",), checkpoint=ckpt)
    other = tls.zoo.load("induction-2l")
    task = tls.zoo.task("induction-2l", "induction", n=4)
    tls.patch(other, task, checkpoint=tmp_path / "i.ckpt")
    edited = tls.zoo.load("induction-2l")
    with torch.no_grad():
        next(p for p in edited.parameters() if p.ndim == 2).mul_(0.5)
    with pytest.raises(tls.TLSubmodelsError, match="differs in: model"):
        tls.patch(edited, task, checkpoint=tmp_path / "i.ckpt")
    monkeypatch.setattr(tls.version, "__version__", "99.0")
    with pytest.raises(tls.TLSubmodelsError, match="differs in: version"):
        tls.patch(mlp_model, mlp_task, kinds=("heads",), checkpoint=ckpt)
    monkeypatch.undo()
    ckpt.write_bytes(b"not a checkpoint")
    with pytest.raises(tls.TLSubmodelsError, match="cannot be read"):
        tls.patch(mlp_model, mlp_task, kinds=("heads",), checkpoint=ckpt)


def test_factorize_resumes_its_scoring(tmp_path):
    model = tls.zoo.load("multitask-3l")
    metric = Faulty()
    tasks = []
    for name in ("addition", "majority"):
        t = tls.zoo.task("multitask-3l", name, n=12, model=model)
        tasks.append(tls.Task.from_tokens(model, clean=t.clean, corrupt=t.corrupt, answer=t.answer, wrong=t.wrong,
                                          metric=metric, name=name))  # fmt: skip
    want = tls.factorize(model, tasks, k=2, kinds=("heads",))
    counts = []
    for t in tasks:
        metric.calls = 0
        tls.patch(model, t, kinds=("heads",), direction="noising", per_example=True)
        counts.append(metric.calls)
    metric.calls, metric.fail_at = 0, sum(counts)  # the last metric call of the second task's scoring
    with pytest.raises(Boom):
        tls.factorize(model, tasks, k=2, kinds=("heads",), checkpoint=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["patch-addition.ckpt", "patch-majority.ckpt"]
    metric.calls, metric.fail_at = 0, 0
    got = tls.factorize(model, tasks, k=2, kinds=("heads",), checkpoint=tmp_path)
    assert torch.equal(got.effects, want.effects)
    assert [sorted(p) for p in got.parts] == [sorted(p) for p in want.parts]
    assert got.labels == want.labels
