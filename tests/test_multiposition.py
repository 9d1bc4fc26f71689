"""Tasks that read several positions per example: every number against the single-position tasks it
averages, or against log-probabilities and argmaxes taken by hand from the model's own logits."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from conftest import MLP_CFG

import tl_submodels as tls
from tl_submodels import patching as tlpatching
from tl_submodels.cli import main
from tl_submodels.sweep import fingerprint_task
from tl_submodels.task import Task

TOL = 1e-5
KINDS = ("heads", "neurons", "mlps")


def mlp_reads(model, n: int = 6, seq: int = 12, diff_at: int = 5, ragged: bool = False, metric: str = "logit_diff"):
    """A random-model task reading three positions per example from ``diff_at`` on (with ``ragged``,
    examples read 3, 2, 1, ... of them), plus its prompts, positions and answers as plain lists."""
    g = torch.Generator().manual_seed(7)
    V = MLP_CFG["d_vocab"]
    clean = torch.randint(0, V, (n, seq), generator=g)
    corrupt = clean.clone()
    corrupt[:, diff_at:] = torch.randint(0, V, (n, seq - diff_at), generator=g)
    position = [sorted(torch.randperm(seq - diff_at, generator=g)[:3].add(diff_at).tolist()) for _ in range(n)]
    if ragged:
        position = [p[: 3 - i % 3] for i, p in enumerate(position)]
    answer = [torch.randint(0, V, (len(p),), generator=g).tolist() for p in position]
    wrong = [[(a + 1) % V for a in row] for row in answer]
    task = Task.from_tokens(model, clean=clean, corrupt=corrupt, answer=answer, wrong=wrong, position=position,
                            metric=metric, name="reads")  # fmt: skip
    return task, position, answer, wrong


def single(model, task: Task, rows: list[int], position: list[int], answer: list[int], wrong: list[int] | None):
    """The one-position task of examples ``rows``, reading ``position[i]`` with ``answer[i]``."""
    return Task.from_tokens(model, clean=task.clean[rows], corrupt=task.corrupt[rows], answer=answer, wrong=wrong,
                            position=position, metric=task.metric_name, name="one")  # fmt: skip


def no_warnings(fn):
    """``fn()``, failing on any warning (the fast path warns when it falls back to hooks)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        return fn()


@pytest.mark.parametrize("fast", [True, False])
def test_patching_is_the_mean_of_the_single_position_tasks(mlp_model, fast):
    task, position, answer, wrong = mlp_reads(mlp_model)
    assert task.multi_position and task.answer.shape == (6, 3) and bool(task.reads.all())
    rows = list(range(task.batch))
    singles = [single(mlp_model, task, rows, [p[j] for p in position], [a[j] for a in answer],
                      [w[j] for w in wrong]) for j in range(3)]  # fmt: skip
    for per_position in (False, True):
        kinds = ("heads", "mlps") if per_position else KINDS
        multi = no_warnings(lambda: tls.patch(mlp_model, task, kinds=kinds, per_position=per_position, fast=fast))  # noqa: B023
        ones = [tls.patch(mlp_model, s, kinds=kinds, per_position=per_position, fast=fast) for s in singles]
        for kind in kinds:
            want = torch.stack([getattr(s, f"raw_{kind}") for s in ones]).mean(0)
            got = getattr(multi, f"raw_{kind}")
            assert got.shape == want.shape and (got - want).abs().max() <= TOL, (kind, per_position)
        assert multi.clean_metric == pytest.approx(sum(s.clean_metric for s in ones) / 3, abs=TOL)
        assert multi.corrupt_metric == pytest.approx(sum(s.corrupt_metric for s in ones) / 3, abs=TOL)


@pytest.mark.parametrize("fast", [True, False])
def test_padded_reads_per_example(mlp_model, fast):
    """Examples reading 3, 2 and 1 positions: each example's patched metric is the mean over its own reads."""
    task, position, answer, wrong = mlp_reads(mlp_model, ragged=True)
    assert task.reads.sum(1).tolist() == [3, 2, 1, 3, 2, 1]
    assert task.position[2].tolist() == [position[2][0], -1, -1] and task.answer[2, 1:].tolist() == [-1, -1]
    s = no_warnings(lambda: tls.patch(mlp_model, task, kinds=KINDS, per_example=True, fast=fast))
    base = task.per_example(task.final_logits(mlp_model(task.corrupt).detach()))  # each example's corrupt metric
    gap = s.clean_metric - s.corrupt_metric
    means = {k: [] for k in KINDS}
    for i in range(task.batch):
        reads = [
            tls.patch(mlp_model, single(mlp_model, task, [i], [p], [a], [w]), kinds=KINDS, fast=fast, require_gap=False)
            for p, a, w in zip(position[i], answer[i], wrong[i], strict=True)
        ]
        for kind in KINDS:
            want = torch.stack([getattr(r, f"raw_{kind}") for r in reads]).mean(0)
            got = s.per_example[kind][i] * gap + base[i]
            assert (got - want).abs().max() <= TOL, (kind, i)
            means[kind].append(want)
    for kind in KINDS:  # the aggregate: the mean over examples of their means over reads
        assert (getattr(s, f"raw_{kind}") - torch.stack(means[kind]).mean(0)).abs().max() <= TOL


@pytest.mark.parametrize("tricks", [{"prune_last_layer": False}, {"prefix_reuse": False}])
def test_the_fast_path_without_its_shortcuts(mlp_model, monkeypatch, tricks):
    """The last layer over every position, or no reused prefix: the same numbers, still on the fast path."""
    task, *_ = mlp_reads(mlp_model, ragged=True)
    want = tls.patch(mlp_model, task, kinds=KINDS)
    monkeypatch.setattr(tlpatching, "TRICKS", {**tlpatching.TRICKS, **tricks})
    got = no_warnings(lambda: tls.patch(mlp_model, task, kinds=KINDS))
    for kind in KINDS:
        assert (getattr(got, f"raw_{kind}") - getattr(want, f"raw_{kind}")).abs().max() <= TOL, kind


def test_loss_and_the_other_metrics_by_hand(mlp_model):
    task, position, answer, wrong = mlp_reads(mlp_model, ragged=True, metric="loss")
    logits = mlp_model(task.clean).detach()
    logp, final = logits.log_softmax(-1), logits
    each = {"loss": [], "logprob": [], "prob": [], "logit_diff": []}
    for i in range(task.batch):
        ps, a, w = position[i], answer[i], wrong[i]
        each["loss"].append(torch.stack([logp[i, p, t] for p, t in zip(ps, a, strict=True)]).mean())
        each["logprob"].append(each["loss"][-1])
        each["prob"].append(torch.stack([logp[i, p, t].exp() for p, t in zip(ps, a, strict=True)]).mean())
        each["logit_diff"].append(
            torch.stack([final[i, p, t] - final[i, p, u] for p, t, u in zip(ps, a, w, strict=True)]).mean()
        )
    for name, values in each.items():
        t = task.replace(metric_name=name)
        torch.testing.assert_close(t.per_example(t.final_logits(logits)), torch.stack(values), atol=TOL, rtol=0)
        torch.testing.assert_close(t.metric(logits), torch.stack(values).mean(), atol=TOL, rtol=0)
    # one read per example: "loss" is "logprob", the same numbers as before
    one = single(mlp_model, task, list(range(6)), [p[0] for p in position], [a[0] for a in answer], None)
    by_hand = torch.stack([logp[i, position[i][0], answer[i][0]] for i in range(6)]).mean()
    assert one.replace(metric_name="loss").metric(logits) == one.replace(metric_name="logprob").metric(logits)
    torch.testing.assert_close(one.replace(metric_name="loss").metric(logits), by_hand, atol=TOL, rtol=0)
    # kl: zero on the clean run, by hand on the corrupt run
    kl = Task.from_tokens(mlp_model, clean=task.clean, corrupt=task.corrupt, answer=answer, position=position,
                          metric="kl")  # fmt: skip
    assert kl.clean_logits.shape == (6, 3, MLP_CFG["d_vocab"])
    with pytest.warns(DeprecationWarning, match=r"Task.reference is now Task.clean_logits"):
        assert kl.reference is kl.clean_logits
    assert float(kl.metric(logits)) == pytest.approx(0.0, abs=TOL)
    bad = mlp_model(task.corrupt).detach().log_softmax(-1)
    want = torch.stack([
        torch.stack([(logp[i, p].exp() * (logp[i, p] - bad[i, p])).sum() for p in position[i]]).mean() for i in range(6)
    ]).mean()  # fmt: skip
    torch.testing.assert_close(kl.metric(mlp_model(task.corrupt)), want, atol=TOL, rtol=0)


def test_accuracy_by_hand(mlp_model):
    task, position, _, _ = mlp_reads(mlp_model, ragged=True)
    logits = mlp_model(task.clean).detach()
    top = logits.argmax(-1)
    # answers: the model's own top prediction at some reads, another token at the others
    answer = [[int(top[i, p]) if (i + j) % 2 == 0 else (int(top[i, p]) + 1) % 50 for j, p in enumerate(ps)]
              for i, ps in enumerate(position)]  # fmt: skip
    t = Task.from_tokens(mlp_model, clean=task.clean, corrupt=task.corrupt, answer=answer, position=position,
                         metric="logprob")  # fmt: skip
    per_example = [sum((i + j) % 2 == 0 for j in range(len(ps))) / len(ps) for i, ps in enumerate(position)]
    assert t.accuracy(logits) == pytest.approx(sum(per_example) / len(per_example), abs=1e-6)


def test_custom_metric_gets_every_read(mlp_model):
    task, *_ = mlp_reads(mlp_model, ragged=True, metric="loss")
    seen = []

    def mean_logprob(read_logits, t):
        seen.append(tuple(read_logits.shape))
        logp = read_logits.log_softmax(-1).gather(-1, t.answer.clamp(min=0)[..., None])[..., 0]
        return (logp * t.reads).sum(1) / t.reads.sum(1)

    custom = task.replace(metric_fn=mean_logprob, metric_name="mean_logprob")
    logits = mlp_model(task.clean).detach()
    torch.testing.assert_close(custom.metric(logits), task.metric(logits), atol=TOL, rtol=0)
    s = tls.patch(mlp_model, custom, kinds="heads", batch_size=12)  # two copies of the batch per forward
    torch.testing.assert_close(s.raw_heads, tls.patch(mlp_model, task, kinds="heads").raw_heads, atol=TOL, rtol=0)
    assert (6, 3, 50) in seen and (12, 3, 50) in seen


@pytest.mark.parametrize("method", ["atp", "ig"])
def test_attribution_is_the_mean_of_the_single_position_tasks(mlp_model, method):
    """Attribution is linear in the metric: the multi-position estimate is the mean of the single ones."""
    task, position, answer, wrong = mlp_reads(mlp_model)
    rows = list(range(task.batch))
    multi = tls.attribute(mlp_model, task, method=method, kinds=KINDS, steps=2)
    ones = [
        tls.attribute(mlp_model, single(mlp_model, task, rows, [p[j] for p in position], [a[j] for a in answer],
                                        [w[j] for w in wrong]), method=method, kinds=KINDS, steps=2)
        for j in range(3)
    ]  # fmt: skip
    for kind in KINDS:
        want = torch.stack([getattr(s, f"raw_{kind}") for s in ones]).mean(0)
        assert (getattr(multi, f"raw_{kind}") - want).abs().max() <= TOL, kind


def test_edges_add_up_to_the_node_scores(mlp_model):
    task, *_ = mlp_reads(mlp_model, ragged=True)
    edges = tls.attribute_edges(mlp_model, task)
    nodes = tls.attribute(mlp_model, task, method="atp", kinds=("heads", "mlps"))
    raw = edges.raw.nan_to_num(0.0).sum(1)
    for i, w in enumerate(edges.writers):
        c = tls.parse_component(w)
        node = nodes.raw_heads[c.layer, c.index] if c.kind == "heads" else nodes.raw_mlps[c.layer]
        assert float(raw[i]) == pytest.approx(float(node) - nodes.corrupt_metric, abs=1e-4), w


def span_task(model, n: int = 16, seed: int = 0, reads: range = range(24, 32)) -> Task:
    """Induction over a span: clean is BOS, A (16 tokens), A[:15]; corrupt resamples the first copy
    (BOS, B, A[:15]), so every position of the second copy predicts its next token (the answer) only in
    the clean run; wrong is the token induction predicts from the corrupt prompt's first copy."""
    zoo = tls.zoo.task("induction-2l", "induction", n=n, seed=seed, model=model)
    g = torch.Generator().manual_seed(seed + 1)
    corrupt = zoo.clean.clone()
    corrupt[:, 1:17] = torch.randint(1, 64, (n, 16), generator=g).to(corrupt.device)
    position = torch.tensor(list(reads)).expand(n, -1)
    full = torch.cat([zoo.clean, zoo.answer[:, None]], 1)  # the token after each position
    return Task.from_tokens(model, clean=zoo.clean, corrupt=corrupt, answer=full.gather(1, position + 1),
                            wrong=corrupt.gather(1, position - 15), position=position, name="span")  # fmt: skip


def test_find_circuit_evaluate_and_factorize_on_a_span(induction_model):
    task = span_task(induction_model)
    assert task.accuracy(induction_model(task.clean)) >= 0.9  # the first tokens of a copy are less sure
    circuit = no_warnings(lambda: tls.find_circuit(induction_model, task, target=0.9, ablation="mean"))
    truth = tls.zoo.info("induction-2l")["ground_truth"]
    assert set(truth["previous_token_heads"]) | set(truth["induction_heads"]) <= {str(c) for c in circuit}
    held_out = span_task(induction_model, n=32, seed=5)
    ev = tls.evaluate(induction_model, circuit, held_out, ablation="mean")
    assert ev.faithfulness >= 0.8 and ev.accuracy_full >= 0.9 and ev.accuracy_ablated <= 0.2
    f = tls.factorize(induction_model, [task, tls.zoo.task("induction-2l", "induction", n=16, model=induction_model)],
                      k=1)  # fmt: skip
    assert f.usage.shape == (32, 1) and len(f.parts) == 1
    assert set(truth["induction_heads"]) & {str(c) for c in f.parts[0]}


def test_diff_of_a_model_with_itself_is_empty(mlp_model):
    task, *_ = mlp_reads(mlp_model, ragged=True)
    d = tls.diff(mlp_model, mlp_model, [task], ablation="zero")
    torch.testing.assert_close(d.effects_a, d.effects_b)
    assert d.parts == []


def test_subset_tiling_devices_and_checkpoints(mlp_model, tmp_path):
    task, *_ = mlp_reads(mlp_model, ragged=True)
    logits = mlp_model(task.clean).detach()
    each = task.per_example(task.final_logits(logits))
    sub = task.subset([4, 1])
    assert sub.answer.shape == (2, 3) and sub.reads.sum(1).tolist() == [2, 2]
    torch.testing.assert_close(sub.per_example(sub.final_logits(logits[[4, 1]])), each[[4, 1]])
    tiled = task.per_example(task.final_logits(torch.cat([logits, logits])))  # copies x batch rows
    torch.testing.assert_close(tiled, torch.cat([each, each]))
    assert task.to("cpu").answer.shape == (6, 3)
    # a [batch, 1] task is another task than the [batch] one (the same numbers, another layout)
    flat = task.replace(answer=task.answer[:, 0], wrong=task.wrong[:, 0], position=task.position[:, 0])
    col = task.replace(answer=task.answer[:, :1], wrong=task.wrong[:, :1], position=task.position[:, :1])
    assert fingerprint_task(flat) != fingerprint_task(col)
    torch.testing.assert_close(flat.metric(logits), col.metric(logits))
    first = tls.patch(mlp_model, task, kinds="heads", checkpoint=tmp_path / "p.ckpt")
    again = tls.patch(mlp_model, task, kinds="heads", checkpoint=tmp_path / "p.ckpt")
    assert torch.equal(first.raw_heads, again.raw_heads)


def test_bad_reads_are_refused(mlp_model):
    task, *_ = mlp_reads(mlp_model)
    kw = {"clean": task.clean, "corrupt": task.corrupt}
    cases = [
        (
            {"answer": [[1, 2]] * 6, "position": [[5, -1]] + [[5, 6]] * 5},
            "padded \\(-1\\) in the same places: example 0",
        ),
        ({"answer": [[1, 2]] * 6, "position": [[5, 6]] * 6, "wrong": [[3, -1]] * 6}, "answer and wrong must be padded"),
        ({"answer": [[1, 2]] * 5 + [[]], "position": [[5, 6]] * 5 + [[]]}, "example 5 reads no position"),
        ({"answer": [[1, 2]] * 6}, "no position says where each is read"),
        ({"answer": [[1, 2]] * 6, "position": [[5, 12]] * 6}, r"position must index the sequence \(0-11\)"),
        ({"answer": [[1, 50]] * 6, "position": [[5, 6]] * 6}, "token id 50, outside"),
        ({"answer": [1] * 6, "position": [[5, 6]] * 6}, "one per example: position and answer"),
    ]
    for extra, message in cases:
        with pytest.raises(tls.TLSubmodelsError, match=message):
            Task.from_tokens(mlp_model, **kw, metric="loss", **extra)
    with pytest.raises(tls.TLSubmodelsError, match="pass position= with one token position per answer"):
        tls.Task.from_prompts(tls.zoo.load("induction-2l"), clean=["t1 t2"], corrupt=["t1 t3"], answer=[["t2", "t1"]])
    with pytest.raises(tls.TLSubmodelsError, match="past the prompt's last token"):
        tls.Task.from_prompts(tls.zoo.load("induction-2l"), clean=["t1 t2", "t1 t2 t3"], corrupt=["t1 t3", "t1 t3 t3"],
                              answer=[["t2"], ["t1"]], position=[[3], [3]], metric="loss")  # fmt: skip


@pytest.mark.ill_typed
def test_position_and_answer_tensors_of_different_shapes(mlp_model):
    """Shapes that differ contradict the hints (one ``n``): refused with a message, also without the checker."""
    task, *_ = mlp_reads(mlp_model)
    with pytest.raises(
        tls.TLSubmodelsError, match=r"same shape \[batch, n\] = \[6, 3\]: answer \[6, 3\], position \[6, 2\]"
    ):
        task.replace(position=task.position[:, :2])
    with pytest.raises(tls.TLSubmodelsError, match=r"answer \[6, 2\], wrong \[6, 3\]"):
        Task.from_tokens(mlp_model, clean=task.clean, corrupt=task.corrupt, answer=[[1, 2]] * 6,
                         position=[[5, 6]] * 6, wrong=[[1, 2, 3]] * 6)  # fmt: skip
    with pytest.raises(tls.TLSubmodelsError, match="one row of reads per example"):
        task.replace(answer=task.answer[:, :0], position=task.position[:, :0], wrong=None)


def jsonl_words(model, ids) -> str:
    return " ".join(model.tokenizer.decode([int(i)]) for i in ids)


def test_cli_jsonl_with_several_reads(induction_model, tmp_path, capsys):
    """Lines reading 4 or 3 positions (no wrong tokens: the metric is loss) score as the same Task built by hand."""
    task = span_task(induction_model, n=8, reads=range(20, 32, 3)).replace(wrong=None, metric_name="loss")
    rows, position, answer = [], [], []
    for i in range(task.batch):
        k = 4 - i % 2
        position.append(task.position[i, :k].tolist())
        answer.append(task.answer[i, :k].tolist())
        rows.append({"clean": jsonl_words(induction_model, task.clean[i, 1:]),
                     "corrupt": jsonl_words(induction_model, task.corrupt[i, 1:]),
                     "answer": [jsonl_words(induction_model, [a]) for a in answer[-1]], "position": position[-1]})  # fmt: skip
    path = tmp_path / "span.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["scores", "--model", "induction-2l", "--task", str(path), "--json", "--top", "8"]) == 0
    printed = json.loads(capsys.readouterr().out)
    ragged = Task.from_tokens(induction_model, clean=task.clean, corrupt=task.corrupt, answer=answer, position=position,
                              metric="loss")  # fmt: skip
    assert ragged.reads.sum(1).tolist() == [4, 3] * 4
    want = tls.patch(induction_model, ragged)
    assert printed["clean_metric"] == pytest.approx(want.clean_metric, abs=TOL)
    assert {r["component"]: r["score"] for r in printed["top"]} == pytest.approx(
        {str(c): v for c, v in want.top(8)}, abs=TOL
    )


def test_cli_jsonl_bad_reads_exit_2(tmp_path, capsys):
    ok = {"clean": "t1 t2 t3 t1 t2", "corrupt": "t4 t5 t6 t1 t2"}
    cases = {
        "strpos": ({**ok, "answer": "t3", "position": [4]}, 'needs "answer" as a list'),
        "listans": ({**ok, "answer": ["t2", "t3"]}, 'a list of answers needs "position"'),
        "lengths": ({**ok, "answer": ["t2", "t3"], "position": [4]}, "2 answers but 1 positions"),
        "far": ({**ok, "answer": ["t3"], "position": [6]}, "position 6 is past the prompt's last token"),
        "wronglen": ({**ok, "answer": ["t2", "t3"], "position": [3, 4], "wrong": ["t1"]}, "1 wrong tokens"),
        "mixwrong": ({**ok, "answer": "t3"}, '"wrong" is on some lines and not on others (line 1)'),
    }
    for name, (row, message) in cases.items():
        path = tmp_path / f"{name}.jsonl"
        good = {**ok, "answer": ["t2", "t3"], "position": [3, 4]}
        if "wrong" in row or name == "mixwrong":
            good["wrong"] = ["t1", "t1"]
        path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
        assert main(["scores", "--model", "induction-2l", "--task", str(path)]) == 2, name
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"{name}.jsonl:2" in err and message in err, (name, err)


@pytest.mark.parametrize("method", ["ablation", "attribution"])
def test_usage_of_a_multi_position_task_is_the_mean_over_its_reads(mlp_model, method):
    """usage(task): each part's contribution to the task's metric; linear in the metric, so a task that
    reads three positions gets the mean of the three one-position tasks' contributions."""
    task, position, answer, wrong = mlp_reads(mlp_model)
    rows = list(range(task.batch))
    singles = [single(mlp_model, task, rows, [p[j] for p in position], [a[j] for a in answer],
                      [w[j] for w in wrong]) for j in range(3)]  # fmt: skip
    parts = [tls.SubModel(["L0H1", "L1N4", "L2H0"], name="a"), tls.SubModel(["MLP1", "L2N9"], name="b")]
    multi = tls.usage(mlp_model, task, parts, method=method, ablation="zero")
    ones = [tls.usage(mlp_model, s, parts, method=method, ablation="zero") for s in singles]
    assert multi.values.shape == (2, task.seq_len) and multi.target == "reads (logit_diff)"
    torch.testing.assert_close(multi.values, torch.stack([u.values for u in ones]).mean(0), atol=TOL, rtol=0)
    torch.testing.assert_close(multi.totals, torch.stack([u.totals for u in ones]).mean(0), atol=TOL, rtol=0)
    if method == "ablation":  # the total: the task's metric with the part ablated everywhere, by hand
        with torch.no_grad():
            full = float(task.metric(mlp_model(task.clean)))
            ablated = float(
                task.metric(mlp_model.run_with_hooks(task.clean, fwd_hooks=parts[0].hooks(mlp_model, ablation="zero")))
            )
        assert float(multi.totals[0]) == pytest.approx(full - ablated, abs=TOL)


def test_explain_of_a_multi_position_task_reports_its_metric_and_accuracy(mlp_model):
    task, *_ = mlp_reads(mlp_model, ragged=True)
    parts = [tls.SubModel(["L0H1", "L1N4", "L2H0"], name="a"), tls.SubModel(["MLP1", "L2N9"], name="b")]
    ex = tls.explain(mlp_model, task, parts, ablation="zero", k=3)
    hooks = parts[1].hooks(mlp_model, ablation="zero")
    with torch.no_grad():
        full, ablated = mlp_model(task.clean), mlp_model.run_with_hooks(task.clean, fwd_hooks=hooks)
    rows = {r["ablated"]: r for r in ex.rows}
    assert rows["full"]["metric"] == pytest.approx(float(task.metric(full)), abs=TOL)
    assert rows["b"]["metric"] == pytest.approx(float(task.metric(ablated)), abs=TOL)
    assert rows["b"]["accuracy"] == pytest.approx(task.accuracy(ablated))
    # KL: over each example's own reads, then over the examples, by hand
    p, q = full.log_softmax(-1), ablated.log_softmax(-1)
    kls = []
    for i in range(task.batch):
        at = [int(x) for x in task.position[i] if x >= 0]
        kls.append(float((p[i, at].exp() * (p[i, at] - q[i, at])).sum(-1).mean()))
    assert rows["b"]["kl"] == pytest.approx(sum(kls) / len(kls), abs=TOL)
    assert rows["full"]["kl"] == pytest.approx(0.0, abs=TOL)
    top = p[0, int(task.position[0, 0])].exp().topk(3)
    assert [w for w, _ in rows["full"]["top"]] == [str(int(i)) for i in top.indices]  # the first example's first read
    assert {"metric", "accuracy"} <= set(ex.to_frame().columns)
