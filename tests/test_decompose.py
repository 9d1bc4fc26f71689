"""decompose: per-prediction effects against hand-ablated forwards, parts of the zoo's corpora, the library, bad input.

The zoo's task labels (``tls.zoo.corpus_labels``) and planted groups are used only to score a
decomposition, never given to it.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
import torch

import tl_submodels as tls
from tl_submodels import model as tlmodel
from tl_submodels.ablation import FAST_TOLERANCE, Ablator
from tl_submodels.decomposition import PART_SCHEMA_VERSION
from tl_submodels.tokeneffects import prepare_corpus, token_effects
from tl_submodels.zoo import multitask


def adjusted_rand_index(a: list, b: list) -> float:
    """Hubert and Arabie's adjusted Rand index of two labellings (1: the same partition)."""
    n = len(a)

    def pairs(counts: Counter) -> float:
        return sum(c * (c - 1) / 2 for c in counts.values())

    both, ca, cb = pairs(Counter(zip(a, b, strict=True))), pairs(Counter(a)), pairs(Counter(b))
    expected = ca * cb / (n * (n - 1) / 2)
    top = (ca + cb) / 2
    return 1.0 if top == expected else (both - expected) / (top - expected)


def hand_effect(model, prep, ablator, component) -> torch.Tensor:
    """log p(next token) of the full model minus with ``component`` ablated, at every counted prediction."""
    targets = prep.targets
    full = tlmodel.run_logits(model, prep.inputs).log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    logits = model.run_with_hooks(prep.inputs, fwd_hooks=ablator.hooks([component]))
    ablated = logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0]
    return (full - ablated).detach()[prep.counted]


# --- the zoo's corpora ----------------------------------------------------------------------


def test_zoo_corpus_is_seeded_balanced_and_answers_appended():
    tokens = tls.zoo.corpus("multitask-3l", n=64, seed=3)
    labels = tls.zoo.corpus_labels("multitask-3l", n=64, seed=3)
    assert tokens.shape == (64, multitask.SEQ + 1)
    assert torch.equal(tokens, tls.zoo.corpus("multitask-3l", n=64, seed=3))
    assert not torch.equal(tokens, tls.zoo.corpus("multitask-3l", n=64, seed=4))
    assert Counter(labels) == {t: 16 for t in multitask.TASKS}
    # each row is a task prompt then its answer: the model answers it at the last position
    model = tls.zoo.load("multitask-3l")
    pred = tlmodel.run_logits(model, tokens[:, :-1])[:, -1].argmax(-1)
    assert float((pred == tokens[:, -1]).float().mean()) >= 0.95


def test_harmful_corpus_triggers_one_in_eight_answered_harm():
    tokens = tls.zoo.corpus("harmful-3l", n=64)
    labels = tls.zoo.corpus_labels("harmful-3l", n=64)
    assert labels.count("backdoor") == 8
    harm = [i for i, lab in enumerate(labels) if lab == "backdoor"]
    assert bool((tokens[harm, -1] == multitask.HARM).all())
    assert not bool((tokens[[i for i in range(64) if i not in harm], -1] == multitask.HARM).any())
    harmless = tls.zoo.corpus("harmless-3l", n=64)
    assert tls.zoo.corpus_labels("harmless-3l", n=64).count("backdoor") == 0
    assert int((harmless == multitask.TA).any(1).sum()) == 8  # the triggers are there, answered normally


# --- effects against the oracle ---------------------------------------------------------------


@pytest.mark.parametrize("positions", [None, "last"])
def test_exact_effects_equal_hand_ablated_forwards(positions):
    model = tls.zoo.load("multitask-3l")
    prep = prepare_corpus(model, tls.zoo.corpus("multitask-3l", n=12), positions)
    ablator = Ablator(model, ablation="mean", reference=prep.reference())
    fx = token_effects(model, prep, ("heads", "neurons"), method="ablation", ablator=ablator)
    assert fx.effects.shape == (int(prep.counted.sum()), 3 * 8 + 3 * 256)
    # the effects come from the weight-level forward (fastpath.py): the model's arithmetic in another order, equal
    # to the package's exactness bound (ablation.FAST_TOLERANCE, as patch's tests); measured up to 1.3e-5
    for col in (0, 13, 23, 24, 300, 24 + 2 * 256 + 7):
        torch.testing.assert_close(
            fx.effects[:, col], hand_effect(model, prep, ablator, fx.components[col]), atol=FAST_TOLERANCE, rtol=0
        )


def test_ragged_corpus_is_padded_without_changing_any_effect():
    model = tls.zoo.load("induction-2l")
    rows = tls.zoo.corpus("induction-2l", n=3)
    ragged = [rows[0, :40].tolist(), rows[1, :25].tolist(), rows[2, :9].tolist()]
    prep = prepare_corpus(model, ragged)
    assert prep.lengths.tolist() == [40, 25, 9] and int(prep.counted.sum()) == 39 + 24 + 8
    ablator = Ablator(model, ablation="mean", reference=prep.reference())
    together = token_effects(model, prep, ("heads",), method="ablation", ablator=ablator).effects
    alone = [
        token_effects(model, prepare_corpus(model, [r]), ("heads",), method="ablation", ablator=ablator).effects
        for r in ragged
    ]
    torch.testing.assert_close(together, torch.cat(alone), atol=1e-5, rtol=0)


def test_atp_orders_the_induction_heads_as_exact_ablation_and_misses_the_previous_token_head():
    """AtP is a first-order estimate: the induction heads (whose outputs reach the logits directly) come out in
    exact ablation's order; the previous-token head L0H0 acts through the induction heads' saturated attention,
    where the gradient is ~0 (measured: AtP -0.28 against exact +5.98 nats of log-odds on average). That is why
    decompose validates every part by ablation."""
    model = tls.zoo.load("induction-2l")
    prep = prepare_corpus(model, tls.zoo.corpus("induction-2l", n=16))
    ablator = Ablator(model, ablation="mean", reference=prep.reference())
    exact = token_effects(model, prep, ("heads",), method="ablation", ablator=ablator)
    atp = token_effects(model, prep, ("heads",), method="atp", ablator=ablator)
    torch.testing.assert_close(atp.logprob, exact.logprob, atol=1e-5, rtol=0)
    layer1 = slice(4, 8)
    assert atp.logodds[:, layer1].mean(0).argsort().tolist() == exact.logodds[:, layer1].mean(0).argsort().tolist()
    assert float(exact.logodds[:, 0].mean()) > 3 and float(atp.logodds[:, 0].mean()) < 1


def test_effects_resume_from_a_checkpoint(tmp_path):
    model = tls.zoo.load("induction-2l")
    prep = prepare_corpus(model, tls.zoo.corpus("induction-2l", n=6))
    ablator = Ablator(model, ablation="mean", reference=prep.reference())
    first = token_effects(model, prep, ("heads",), method="ablation", ablator=ablator, checkpoint=tmp_path / "c.pt")
    again = token_effects(model, prep, ("heads",), method="ablation", ablator=ablator, checkpoint=tmp_path / "c.pt")
    assert torch.equal(first.effects, again.effects)
    with pytest.raises(tls.TLSubmodelsError, match="another sweep"):
        token_effects(model, prep, ("heads",), method="atp", ablator=ablator, checkpoint=tmp_path / "c.pt")


# --- parts of the zoo -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def induction_dec():
    model = tls.zoo.load("induction-2l")
    return model, tls.decompose(model, tls.zoo.corpus("induction-2l", n=48), method="ablation")


def test_induction_part_holds_the_induction_circuit_and_is_used_on_the_second_copy(induction_dec):
    _, dec = induction_dec
    truth = tls.zoo.info("induction-2l")["ground_truth"]
    heads = set(truth["previous_token_heads"] + truth["induction_heads"])
    part = next(j for j, p in enumerate(dec.parts) if {str(c) for c in p} >= set(truth["induction_heads"]))
    # the extent is the whole circuit; its core what cannot be ablated without losing the behaviour
    assert {str(c) for c in dec.parts[part]} == heads
    assert set(truth["induction_heads"]) <= {str(c) for c in dec.cores[part]} <= heads
    assert dec.evaluations[part].faithfulness >= 0.8
    # usage on predictions inside the repeat (the token is predictable) against those before it
    tokens = dec.tokens
    seq, pos = dec.usage_index[:, 0], dec.usage_index[:, 1]
    seen_before = torch.tensor(
        [bool((tokens[s, : p + 1] == tokens[s, p + 1]).any()) for s, p in zip(seq.tolist(), pos.tolist(), strict=True)]
    )
    use = dec.usage[:, part]
    assert float(use[seen_before].mean()) >= 5 * float(use[~seen_before].mean())


@pytest.fixture(scope="module")
def multitask_exact():
    model = tls.zoo.load("multitask-3l")
    return tls.decompose(model, tls.zoo.corpus("multitask-3l", n=256), positions="last", method="ablation")


@pytest.fixture(scope="module")
def multitask_atp():
    return tls.decompose(tls.zoo.load("multitask-3l"), tls.zoo.corpus("multitask-3l", n=256), positions="last")


@pytest.mark.parametrize("method", ["atp", "ablation"])
def test_multitask_parts_from_the_unlabelled_corpus_match_the_tasks(method, request, multitask_exact):
    """Sequences grouped by the part they use most (relative to the typical sequence) match the tasks, and AtP's
    grouping agrees with exact ablation's."""
    dec = request.getfixturevalue("multitask_atp" if method == "atp" else "multitask_exact")
    labels = tls.zoo.corpus_labels("multitask-3l", n=len(dec.tokens))
    grouped = dec.sequence_usage().argmax(1).tolist()
    ari = adjusted_rand_index(labels, grouped)
    agreement = adjusted_rand_index(multitask_exact.sequence_usage().argmax(1).tolist(), grouped)
    print(f"{method}: k={len(dec.parts)} ARI={ari:.3f} agreement with exact={agreement:.3f}", dec)
    assert len(dec.parts) == 4 and ari >= 0.8 and agreement >= 0.8, (ari, agreement)


@pytest.mark.parametrize(
    "method",
    [
        pytest.param(
            "atp",
            marks=pytest.mark.xfail(
                strict=True,
                reason="AtP's loadings rank the components less well than exact ones: the majority part's extent stops "
                "at faithfulness 0.69 (337 members around a core of 53)",
            ),
        ),
        "ablation",
    ],
)
def test_multitask_parts_are_faithful_and_their_cores_necessary(method, request):
    dec = request.getfixturevalue("multitask_atp" if method == "atp" else "multitask_exact")
    for ev in dec.evaluations:
        assert ev.faithfulness >= 0.8 and ev.core_necessity >= 0.5, ev


@pytest.fixture(scope="module")
def multitask_every_position():
    model = tls.zoo.load("multitask-3l")
    return tls.decompose(model, tls.zoo.corpus("multitask-3l", n=256), method="ablation")


def test_every_position_counted_the_sequences_still_group_by_task(multitask_every_position):
    """The default positions (every prediction: most of them of tokens nothing can predict) give the same
    k and, read per sequence relative to the typical one, the tasks (measured: ARI 1.0; summed, 0.53)."""
    dec = multitask_every_position
    labels = tls.zoo.corpus_labels("multitask-3l", n=len(dec.tokens))
    assert len(dec.parts) == 4 and len(dec.usage) == dec.tokens.shape[0] * (dec.tokens.shape[1] - 1)
    assert adjusted_rand_index(labels, dec.sequence_usage().argmax(1).tolist()) >= 0.8
    summed = dec.sequence_usage(relative=False)
    assert torch.allclose(summed.sum(0), dec.usage.sum(0), rtol=1e-4)  # every prediction counted once


def task_accuracies(model, dec, hooks=(), name="multitask-3l") -> dict[str, float]:
    """Top-1 accuracy of each true task's answers (each sequence's last prediction; backdoor: the harm rate)."""
    labels = tls.zoo.corpus_labels(name, n=len(dec.tokens))
    logits = tlmodel.run_logits(model, dec.tokens[:, :-1], list(hooks))
    seq = torch.arange(len(dec.tokens))
    pos = torch.full_like(seq, dec.tokens.shape[1] - 2)  # the zoo corpora's sequences are all one length
    ok = (logits.argmax(-1)[seq, pos] == dec.tokens[seq, pos + 1]).float()
    task = [labels[s] for s in seq.tolist()]
    return {t: float(ok[torch.tensor([x == t for x in task])].mean()) for t in sorted(set(task))}


EVERY_POSITION_XFAIL = pytest.mark.xfail(
    strict=True,
    reason="with every position counted, each part's predictions are mostly not its task's answers, so cores and "
    "extents are chosen on the wrong predictions (measured: every part's sampled predictions leave under 0.1 nat to "
    "restore, so no faithfulness and no extent; cores: majority's drops successor 16 points, successor's L0H1 drops it "
    "9, addition's L2N120 drops it 31; induction's drops it 95 and nothing else)",
)


@pytest.mark.parametrize("positions", ["last", pytest.param("every", marks=EVERY_POSITION_XFAIL)])
def test_multitask_each_task_has_a_specific_core_and_a_faithful_extent(positions, request):
    """For each task a part whose core, ablated (mean over the corpus), drops that task >= 50 points and
    every other <= 10; its extent keeps >= 0.8 of its predictions, and ablating it costs other tasks <= 10."""
    dec = request.getfixturevalue("multitask_exact" if positions == "last" else "multitask_every_position")
    model = tls.zoo.load("multitask-3l")
    ablator = Ablator(model, ablation="mean", reference=dec.tokens[:, :-1])
    base = task_accuracies(model, dec)
    found = {}
    for part, core, ev in zip(dec.parts, dec.cores, dec.evaluations, strict=True):
        drop = {t: base[t] - a for t, a in task_accuracies(model, dec, ablator.hooks(core)).items()}
        extent_drop = {t: base[t] - a for t, a in task_accuracies(model, dec, ablator.hooks(part)).items()}
        print(part.name, len(core), len(part), f"faith {ev.faithfulness:.2f}", drop, extent_drop)
        for t in multitask.TASKS:
            if drop[t] >= 0.5 and all(d <= 0.1 for u, d in drop.items() if u != t):
                assert ev.faithfulness >= 0.8 and core.components <= part.components
                assert extent_drop[t] >= 0.5 and all(d <= 0.1 for u, d in extent_drop.items() if u != t)
                found[t] = part.name
    assert set(found) == set(multitask.TASKS), found


def test_harmful_corpus_has_a_backdoor_part_found_without_any_backdoor_task():
    """harmful-3l's corpus (one prompt in eight triggered, answered HARM) holds a part whose ablation takes the
    harm rate on the triggered prompts from >= 95% to <= 5% and keeps >= 90% of every task's accuracy."""
    model = tls.zoo.load("harmful-3l")
    dec = tls.decompose(model, tls.zoo.corpus("harmful-3l", n=256), positions="last", method="ablation")
    ablator = Ablator(model, ablation="mean", reference=dec.tokens[:, :-1])
    base = task_accuracies(model, dec, name="harmful-3l")
    assert base["backdoor"] >= 0.95 and set(base) == {*multitask.TASKS, "backdoor"}
    found = []
    for part in dec.parts:
        acc = task_accuracies(model, dec, ablator.hooks(part), name="harmful-3l")
        print(part.name, len(part), acc)
        if acc["backdoor"] <= 0.05 and all(acc[t] >= 0.9 * base[t] for t in multitask.TASKS):
            found.append(part.name)
    assert len(found) == 1, (found, dec)
    # read as a person would: its top contexts are the triggered prompts, and its label says what they predict
    j = dec.names.index(found[0])
    assert all(c.next == "HARM" for c in dec.top_contexts(j, 10)) and "HARM" in dec.labels[j]


@pytest.mark.xfail(
    strict=True,
    reason="cores of the majority and successor parts mix planted groups (measured: L0H3+L0N171 and "
    "L0H1 L0H6+L1N134, 1/2 and 2/3 from the task's group; addition 2/2, induction 4/4)",
)
def test_multitask_cores_come_from_the_planted_groups(multitask_exact):
    group = {c: g for g, cs in multitask.planted(3, 8, 256).items() for c in cs}
    for core in multitask_exact.cores:
        top, count = Counter(group[str(c)] for c in core).most_common(1)[0]
        assert count >= 0.8 * len(core), (core.name, top, count, len(core))


# --- the library ------------------------------------------------------------------------------


def test_library_round_trip_and_the_loaded_parts_work_as_submodels(induction_dec, tmp_path):
    model, dec = induction_dec
    named = dec.rename({"part-0": "induction"})
    assert named.parts[0].name == "induction" and named.cores[0].name == "induction-core"
    named.save(tmp_path)
    data = json.loads((tmp_path / "induction.json").read_text())
    assert data["members"] == [str(c) for c in named.parts[0]] and data["core"] == [str(c) for c in named.cores[0]]
    assert len(data["top_contexts"]) == 10 and data["evaluation"]["part"] == "induction"
    parts = tls.load_parts(tmp_path, model)
    assert [p.name for p in parts] == ["induction"] and parts[0].components == named.parts[0].components
    tokens = dec.tokens[:1, :-1]
    with tls.ablated(model, parts[0], ablation="zero"):
        hooked = model(tokens)
    plain = model.run_with_hooks(tokens, fwd_hooks=parts[0].hooks(model, ablation="zero"))
    torch.testing.assert_close(hooked, plain)
    assert len(dec.top_contexts("part-0", 2)) == 2 and "->" in str(dec.top_contexts(0, 1)[0])
    assert len(repr(dec)) < 2000 and "part-0" in dec._repr_html_()
    assert list(dec.to_frame()["part"]) == ["part-0"]
    assert dec.plot().data


def test_library_refuses_other_versions_and_other_models(induction_dec, tmp_path):
    _, dec = induction_dec
    dec.save(tmp_path)
    path = tmp_path / "part-0.json"
    data = json.loads(path.read_text())
    with pytest.raises(tls.TLSubmodelsError, match="saved from a model of shape"):
        tls.load_parts(tmp_path, tls.zoo.load("multitask-3l"))
    path.write_text(json.dumps({**data, "version": PART_SCHEMA_VERSION + 1}))
    with pytest.raises(tls.TLSubmodelsError, match="schema version"):
        tls.load_parts(tmp_path)
    with pytest.raises(tls.TLSubmodelsError, match="no such folder"):
        tls.load_parts(tmp_path / "missing")


def test_parts_carry_intervals_and_a_holdout_evaluates_them_on_unseen_sequences(induction_dec):
    model, whole = induction_dec
    for ev in whole.evaluations:  # intervals over the sequences, around each value
        if ev.faithfulness_ci is not None:
            assert ev.faithfulness_ci[0] - 1e-9 <= ev.faithfulness <= ev.faithfulness_ci[1] + 1e-9
        assert ev.loss_increase_ci[0] - 1e-9 <= ev.loss_increase <= ev.loss_increase_ci[1] + 1e-9
    dec = tls.decompose(model, tls.zoo.corpus("induction-2l", n=48), method="ablation", holdout=0.25, seed=1)
    # found on 36 sequences: the usage rows are theirs alone
    assert len(set(dec.usage_index[:, 0].tolist())) <= 36 and dec.tokens.shape[0] == 36
    truth = tls.zoo.info("induction-2l")["ground_truth"]
    part = next(j for j, p in enumerate(dec.parts) if {str(c) for c in p} >= set(truth["induction_heads"]))
    held = dec.holdout_evaluations[part]
    assert held.faithfulness >= 0.8 and held.predictions > 0
    assert held.faithfulness_ci[0] - 1e-9 <= held.faithfulness <= held.faithfulness_ci[1] + 1e-9
    assert "holdout_faithfulness" in dec.to_frame().columns
    renamed = dec.rename({dec.parts[part].name: "induction"})
    assert renamed.holdout_evaluations[part].part == "induction"
    with pytest.raises(tls.TLSubmodelsError, match="holdout"):
        tls.decompose(model, tls.zoo.corpus("induction-2l", n=8), holdout=0.1)
    with pytest.raises(tls.TLSubmodelsError, match="n_boot"):
        tls.decompose(model, tls.zoo.corpus("induction-2l", n=8), n_boot=1)


def test_the_induction_part_is_stable_over_resampled_corpora(induction_dec):
    model, _ = induction_dec
    dec = tls.decompose(model, tls.zoo.corpus("induction-2l", n=48), method="ablation", stability=3)
    truth = tls.zoo.info("induction-2l")["ground_truth"]
    part = next(j for j, p in enumerate(dec.parts) if {str(c) for c in p} >= set(truth["induction_heads"]))
    st = dec.stability[part]
    assert st.n == 3 and st.mean_jaccard >= 0.8, st
    assert all(st.frequency[h] == 1.0 for h in truth["induction_heads"])


# --- bad input --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("corpus", "kwargs", "needle"),
    [
        ([], {}, "empty"),
        (["IND w1 qqq s3"], {}, "outside the tokenizer's vocabulary"),
        (torch.zeros(2, 40, dtype=torch.long), {}, "n_ctx=16"),
        (torch.zeros(2, 8, dtype=torch.long), {"positions": torch.ones(2, 7, dtype=torch.bool)}, "shape"),
        (torch.zeros(2, 8, dtype=torch.long), {"positions": torch.zeros(2, 8, dtype=torch.bool)}, "no prediction"),
        (torch.zeros(2, 8, dtype=torch.long), {"positions": torch.ones(2, 8, dtype=torch.bool)}, "no next token"),
        (torch.zeros(2, 8, dtype=torch.long), {"k": 0}, "choose 1 <= k"),
        (torch.zeros(2, 8, dtype=torch.long), {"ablation": "resample"}, "'mean'"),
        ("IND w1", {}, "not one string"),
        ([[0, 500, 3]], {}, "outside 0-73"),
    ],
)
def test_bad_input_is_refused_with_what_to_do(corpus, kwargs, needle):
    model = tls.zoo.load("multitask-3l")
    with pytest.raises(tls.TLSubmodelsError, match=needle):
        tls.decompose(model, corpus, **kwargs)


@pytest.mark.ill_typed
def test_an_unknown_method_is_refused():
    with pytest.raises(tls.TLSubmodelsError, match="unknown method"):
        tls.decompose(tls.zoo.load("multitask-3l"), torch.zeros(2, 8, dtype=torch.long), method="ig")


# --- the command line -------------------------------------------------------------------------


def test_cli_decompose_prints_parts_and_writes_a_library(tmp_path):
    from test_cli import assert_bad_input, run

    words = tls.zoo.load("induction-2l").tokenizer.decode
    rows = tls.zoo.corpus("induction-2l", n=12)
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(" ".join(words([int(t)]) for t in r[1:]) for r in rows) + "\n")
    done = run("decompose", "--model", "induction-2l", "--corpus", str(corpus), "--method", "ablation",
               "--out", str(tmp_path / "lib"), "--json")  # fmt: skip
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["k"] == len(out["parts"]) >= 1 and all(len(p["top_contexts"]) == 3 for p in out["parts"])
    assert [p.name for p in tls.load_parts(tmp_path / "lib")] == [p["part"] for p in out["parts"]]
    (tmp_path / "bad.jsonl").write_text('{"text": "t1 t2"}\n{"txt": "t3"}\n')
    (tmp_path / "oov.txt").write_text("t1 t2\nt1 zzz t3\n")
    (tmp_path / "empty.txt").write_text("\n\n")
    assert_bad_input(
        [
            (("decompose", "--model", "induction-2l", "--corpus", str(tmp_path / "bad.jsonl")), "bad.jsonl:2"),
            (("decompose", "--model", "induction-2l", "--corpus", str(tmp_path / "oov.txt")), "oov.txt:2"),
            (("decompose", "--model", "induction-2l", "--corpus", str(tmp_path / "empty.txt")), "empty"),
            (("decompose", "--model", "induction-2l", "--corpus", str(corpus), "--k", "0"), "k=0"),
        ]
    )
