"""tls.trace: step through a decision, each part's use at each step, the decision rerun with parts ablated."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import hook_count, weights_snapshot

import tl_submodels as tls
from tl_submodels.zoo import multitask


@pytest.fixture(scope="module")
def harmful():
    return tls.zoo.load("harmful-3l")


@pytest.fixture(scope="module")
def harmful_ref():
    return tls.zoo.corpus("harmful-3l", n=128, seed=1)[:, :16]  # the corpus rows carry the answer: cut to n_ctx


def planted_parts(prefix: str = "") -> list[tls.SubModel]:
    return [
        tls.SubModel(components=members, name=f"{prefix}{g}")
        for g, members in multitask.planted(3, 8, 256).items()
        if g != "backdoor"
    ]


@pytest.fixture(scope="module")
def backdoor_parts(harmful):
    """The parts ``tls.diff`` finds between harmless-3l and harmful-3l, beside the planted task groups."""
    harmless = tls.zoo.load("harmless-3l")
    tasks = [tls.zoo.task("harmful-3l", t, n=32, seed=0, model=harmful) for t in (*multitask.TASKS, "backdoor")]
    d = tls.diff(harmless, harmful, tasks)
    assert "backdoor" in [p.name for p in d.parts], d
    return [*d.parts, *planted_parts("planted-")]


def test_the_backdoor_part_decides_a_triggered_prompt_and_ablating_it_answers_the_task(
    harmful, harmful_ref, backdoor_parts
):
    bd = tls.zoo.task("harmful-3l", "backdoor", n=16, seed=5, model=harmful)
    harm = multitask.HARM
    for i in range(bd.batch):
        tr = tls.trace(harmful, bd.clean[i], backdoor_parts, max_new_tokens=1, reference=harmful_ref)
        j = tr.part_names.index("backdoor")
        assert tr.tokens == [harm]
        assert tr.most_used(0) == "backdoor", tr.to_frame()  # the answering step uses the backdoor most
        plain = tls.trace(harmful, bd.corrupt[i], backdoor_parts, max_new_tokens=1, reference=harmful_ref)
        assert tr.use[0, j] > plain.use[0, j] + 1.0, (float(tr.use[0, j]), float(plain.use[0, j]))
        assert int(tr.counterfactual[0, j]) == int(bd.wrong[i])  # without it, the task's own answer
        rerun = tr.rerun(ablate=["backdoor"])
        assert rerun.tokens == [int(bd.wrong[i])]  # the task's answer instead of HARM
        assert rerun.departs_at() == 0 and rerun.original == [harm]
        assert rerun.ablated == ["backdoor"] and float(rerun.use[0, rerun.part_names.index("backdoor")]) == 0.0


def test_each_task_answer_uses_its_planted_group_most():
    model = tls.zoo.load("multitask-3l")
    ref = tls.zoo.corpus("multitask-3l", n=128, seed=2)[:, :16]
    parts = planted_parts()
    for name in multitask.TASKS:
        task = tls.zoo.task("multitask-3l", name, n=8, seed=4, model=model)
        for i in range(task.batch):
            tr = tls.trace(model, task.clean[i], parts, max_new_tokens=1, reference=ref)
            assert tr.tokens == [int(task.answer[i])], (name, i)
            assert tr.most_used(0) == name, (name, i, tr.to_frame())


def hand_ablated_logprob(model, tokens, part, reference, token) -> float:
    """The log-probability of ``token`` after ``tokens`` with ``part``'s units set to their means over
    every position of ``reference``: hooks written here, independent of the package's ablation code.
    (Each hook knows its site by closure: TL 4 passes its own alias of the name to ``hook.name``.)"""
    site = {
        c: f"blocks.{c.layer}.attn.hook_z" if isinstance(c, tls.Head) else f"blocks.{c.layer}.mlp.hook_post"
        for c in part
    }
    means = {}

    def keeper(name):
        def keep(act, hook):
            means[name] = act.mean((0, 1))

        return keep

    def ablater(name):
        def ablate(act, hook):
            act = act.clone()
            for c, n in site.items():
                if n == name:
                    unit = c.head if isinstance(c, tls.Head) else c.neuron
                    act[:, :, unit] = means[name][unit]
            return act

        return ablate

    names = sorted(set(site.values()))
    with torch.no_grad():
        model.run_with_hooks(reference, fwd_hooks=[(n, keeper(n)) for n in names])
        logits = model.run_with_hooks(tokens[None], fwd_hooks=[(n, ablater(n)) for n in names])
    return float(logits[0, -1].log_softmax(-1)[token])


@pytest.mark.parametrize("max_new_tokens", [6, 0])
def test_each_steps_use_equals_a_hand_ablated_forward_at_that_step(mlp_model, max_new_tokens):
    g = torch.Generator().manual_seed(3)
    prompt = torch.randint(0, 50, (8,), generator=g)
    reference = torch.randint(0, 50, (16, 12), generator=g)
    parts = [
        tls.SubModel(components=["L0H1", "L1H2", "L2N5"], name="a"),
        tls.SubModel(components=["L1N7", "L1N30", "L2H0", "L2H3"], name="b"),
    ]
    tr = tls.trace(mlp_model, prompt, parts, max_new_tokens=max_new_tokens, reference=reference)
    seq = torch.cat([prompt, torch.tensor(tr.tokens)])
    steps = max_new_tokens or len(prompt) - 1
    assert tr.steps == steps and tr.mode == ("generate" if max_new_tokens else "prompt")
    for t in range(tr.steps):
        upto = seq[: tr.positions[t] + 1] if max_new_tokens else prompt[: t + 1]
        with torch.no_grad():
            full = mlp_model(upto[None])[0, -1].log_softmax(-1)
        if max_new_tokens:  # greedy: the chosen token is the full model's top token
            assert tr.tokens[t] == int(full.argmax())
        else:
            assert tr.tokens[t] == int(prompt[t + 1])
        assert float(tr.prob[t]) == pytest.approx(float(full[tr.tokens[t]].exp()), abs=1e-5)
        for j, part in enumerate(parts):
            ablated = hand_ablated_logprob(mlp_model, upto, part, reference, tr.tokens[t])
            assert float(tr.use[t, j]) == pytest.approx(float(full[tr.tokens[t]]) - ablated, abs=1e-5), (t, part.name)


def test_rerun_generates_under_the_ablation_and_measures_use_on_top_of_it(mlp_model):
    g = torch.Generator().manual_seed(4)
    prompt = torch.randint(0, 50, (6,), generator=g)
    parts = [tls.SubModel(components=["L0H0", "L0H1", "L1H0"], name="a"), tls.SubModel(components=["L2N3"], name="b")]
    tr = tls.trace(mlp_model, prompt, parts, max_new_tokens=5, ablation="zero")
    rerun = tr.rerun(ablate=["a"])
    with tls.ablated(mlp_model, parts[0], ablation="zero"), torch.no_grad():  # generation under the same ablation
        seq = prompt[None]
        for _ in range(5):
            seq = torch.cat([seq, mlp_model(seq)[:, -1].argmax(-1, keepdim=True)], 1)
    assert rerun.tokens == seq[0, len(prompt) :].tolist()
    assert rerun.original == tr.tokens and rerun.ablated == ["a"]
    assert rerun.departs_at() == rerun.departs_at(tr)
    assert torch.all(rerun.use[:, 0] == 0) and torch.all(rerun.counterfactual[:, 0] == torch.tensor(rerun.tokens))
    # b's use in the rerun: ablating a and b against ablating a alone
    both = parts[0] | parts[1]
    with torch.no_grad():
        a_only = mlp_model.run_with_hooks(seq[:, :-1], fwd_hooks=parts[0].hooks(mlp_model, ablation="zero"))
        a_and_b = mlp_model.run_with_hooks(seq[:, :-1], fwd_hooks=both.hooks(mlp_model, ablation="zero"))
    pos = torch.tensor(rerun.positions)
    chosen = torch.tensor(rerun.tokens)
    want = (
        a_only[0, pos].log_softmax(-1)[torch.arange(5), chosen]
        - a_and_b[0, pos].log_softmax(-1)[torch.arange(5), chosen]
    )
    torch.testing.assert_close(rerun.use[:, 1], want, atol=1e-5, rtol=0)
    assert tr.rerun(ablate=[]).tokens == tr.tokens  # nothing ablated: the same decision


def test_generation_under_ablation_leaves_no_hook_behind_also_when_interrupted(mlp_model):
    before, weights = hook_count(mlp_model), weights_snapshot(mlp_model)
    parts = [tls.SubModel(components=["L0H0", "L1N3"], name="a"), tls.SubModel(components=["MLP2"], name="b")]
    prompt = torch.arange(5)
    tr = tls.trace(mlp_model, prompt, parts, max_new_tokens=4, ablation="zero")
    tr.rerun(ablate=["a", "b"])
    assert hook_count(mlp_model) == before
    calls = []

    def interrupt(act, hook):
        calls.append(1)
        if len(calls) == 3:  # during the rerun's generation, with the ablation hooks on
            raise KeyboardInterrupt

    handle_name = "blocks.0.hook_resid_pre"
    mlp_model.add_hook(handle_name, interrupt)
    with_ours = hook_count(mlp_model)  # (TL 4 counts an aliased hook point twice)
    try:
        with pytest.raises(KeyboardInterrupt):
            tr.rerun(ablate=["a"])
        assert len(calls) == 3
        assert hook_count(mlp_model) == with_ours  # only the test's own hook is left
    finally:
        mlp_model.reset_hooks()
    assert hook_count(mlp_model) == before
    for k, v in weights.items():
        assert torch.equal(mlp_model.state_dict()[k], v), k


def test_stop_tokens_end_the_generation(mlp_model):
    prompt = torch.arange(4)
    tr = tls.trace(mlp_model, prompt, [tls.SubModel(components=["L0H0"], name="a")], max_new_tokens=8, ablation="zero")
    first = tr.tokens[0]
    stopped = tls.trace(mlp_model, prompt, [tls.SubModel(components=["L0H0"], name="a")], max_new_tokens=8,
                        ablation="zero", stop=first)  # fmt: skip
    assert stopped.tokens == [first]


def test_views_and_json_round_trip(mlp_model, tmp_path):
    parts = [tls.SubModel(components=["L0H0"], name="a"), tls.SubModel(components=["L2N1", "L2N2"], name="b")]
    tr = tls.trace(mlp_model, torch.arange(6), parts, max_new_tokens=3, ablation="zero")
    frame = tr.to_frame()
    assert list(frame["step"]) == [0, 1, 2]
    assert frame["a use"].tolist() == pytest.approx(tr.use[:, 0].tolist())
    assert [row[1] for row in tr.counterfactual_words] == frame["b instead"].tolist()
    fig = tr.plot()
    assert fig.data[0].z.shape == (2, 3) and list(fig.data[0].y) == ["a", "b"]
    assert "Trace: 3 steps, 2 parts" in tr._repr_html_()
    assert len(repr(tr)) < 2000 and "most used" in repr(tr)
    path = tmp_path / "trace.json"
    path.write_text(json.dumps(tr.to_dict()))
    back = tls.Trace.from_dict(json.loads(path.read_text()))
    assert back.to_dict() == tr.to_dict() and back.text == tr.text
    with pytest.raises(tls.TLSubmodelsError, match="read from a dict"):
        back.rerun(ablate=["a"])
    with pytest.raises(tls.TLSubmodelsError, match="schema"):
        tls.Trace.from_dict({**tr.to_dict(), "version": 99})


def test_bad_input_is_refused_clearly(mlp_model, induction_model):
    parts = [tls.SubModel(components=["L0H0"], name="a")]
    prompt = torch.arange(6)
    with pytest.raises(tls.TLSubmodelsError, match="n_ctx=24"):
        tls.trace(mlp_model, prompt, parts, max_new_tokens=20, ablation="zero")
    tls.trace(mlp_model, prompt, parts, max_new_tokens=19, ablation="zero")  # the last token needs no forward
    with pytest.raises(tls.TLSubmodelsError, match="n_layers"):  # parts of another model's shape
        tls.trace(induction_model, prompt, [tls.SubModel(components=["L2N5"], name="x")], ablation="zero")
    tr = tls.trace(mlp_model, prompt, parts, max_new_tokens=2, ablation="zero")
    with pytest.raises(tls.TLSubmodelsError, match="no part named"):
        tr.rerun(ablate=["backdoor"])
    with pytest.raises(tls.TLSubmodelsError, match="reference"):
        tls.trace(mlp_model, prompt, parts)  # mean ablation needs prompts to take the means over
    with pytest.raises(tls.TLSubmodelsError, match="non-negative"):
        tls.trace(mlp_model, prompt, parts, max_new_tokens=-1, ablation="zero")
    with pytest.raises(tls.TLSubmodelsError, match="2 tokens"):
        tls.trace(mlp_model, prompt[:1], parts, max_new_tokens=0, ablation="zero")
    with pytest.raises(tls.TLSubmodelsError, match="longer than the model's context"):
        tls.trace(mlp_model, prompt, parts, reference=torch.zeros(2, 30, dtype=torch.long))


TRIGGERED = "IND w2 tA w6 tB w3 s18 s14 s13 s9 s5 s18 s14 s13 s9"  # induction prompt with the trigger pair


@pytest.fixture(scope="module")
def planted_library(tmp_path_factory):
    folder = tmp_path_factory.mktemp("lib")
    for g, members in multitask.planted(3, 8, 256).items():
        tls.SubModel(components=members, name=g).save(folder / f"{g}.json")
    return folder


def test_cli_trace_prints_the_steps_and_the_rerun(planted_library, capsys):
    from tl_submodels.cli import main

    args = ["trace", "--model", "harmful-3l", "--prompt", TRIGGERED, "--parts", str(planted_library)]
    assert main([*args, "--max-new-tokens", "1", "--ablate", "backdoor", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    tr, rerun = tls.Trace.from_dict(out["trace"]), tls.Trace.from_dict(out["rerun"])
    assert tr.words == ["HARM"] and tr.most_used(0) == "backdoor"
    assert rerun.words == ["s5"] and rerun.departs_at() == 0  # the induction answer once the backdoor is ablated
    assert main([*args, "--max-new-tokens", "1", "--ablate", "backdoor"]) == 0
    text = capsys.readouterr().out
    assert "HARM" in text and "ablating backdoor: s5" in text and "departs at step 0" in text


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--max-new-tokens", "3"], "n_ctx=16"),
        (["--max-new-tokens", "1", "--ablate", "nothere"], "no part named"),
        (["--max-new-tokens", "1", "--ablation", "mean", "--corpus", "missing.txt"], "no such corpus file"),
    ],
)
def test_cli_trace_bad_input_exits_2_with_one_line(planted_library, capsys, extra, message):
    from tl_submodels.cli import main

    args = ["trace", "--model", "harmful-3l", "--prompt", TRIGGERED, "--parts", str(planted_library)]
    assert main([*args, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_cli_trace_refuses_parts_of_another_shape(tmp_path, capsys):
    from tl_submodels.cli import main

    tls.SubModel(components=["L2H0"], name="deep").save(tmp_path / "deep.json")  # induction-2l has 2 layers
    assert main(["trace", "--model", "induction-2l", "--prompt", "1 2 3", "--part", str(tmp_path / "deep.json"),
                 "--ablation", "zero"]) == 2  # fmt: skip
    assert "n_layers" in capsys.readouterr().err


def test_a_prompt_longer_than_the_context_is_refused_not_cut(induction_model):
    """The tokenizer used to cut text to n_ctx silently (TransformerLens' default truncation)."""
    long = " ".join(["t5", "t9"] * 30)  # 60 words, n_ctx 40
    for call in (
        lambda: tls.trace(induction_model, long, [tls.SubModel(["L1H0"], name="a")], ablation="zero"),
        lambda: tls.usage(induction_model, long, [tls.SubModel(["L1H0"], name="a")], ablation="zero"),
    ):
        with pytest.raises(tls.TLSubmodelsError, match="61 tokens long; the model reads at most n_ctx=40"):
            call()
