"""What the CLI says beside its numbers: legends, values outside [0, 1] explained, the finding in words."""

from __future__ import annotations

import dataclasses

import tl_submodels as tls
from tl_submodels.cli import main
from tl_submodels.cli_words import in_words, outside_unit_notes


def test_discover_prints_legends_and_says_what_it_found(capsys):
    assert main(["discover", "--model", "induction-2l", "--task", "induction", "--n", "32"]) == 0
    out = " ".join(capsys.readouterr().out.split())  # rich wraps captions
    assert "score: the share of the clean-corrupt metric gap restored" in out
    assert "faithfulness: the share of the metric" in out and "necessity: the share lost" in out
    truth = tls.zoo.info("induction-2l")["ground_truth"]
    heads = [*truth["previous_token_heads"], *truth["induction_heads"]]
    assert f"Found: the circuit of induction is {' '.join(heads)}" in out, out[-600:]
    assert "as the model card says" in out


def evaluation(**values: float) -> tls.Evaluation:
    base = dict(faithfulness=0.9, necessity=0.8, size=3, fraction=0.1, metric_full=5.0, metric_kept=4.6,
                metric_ablated=1.0, metric_all_ablated=0.5, accuracy_full=1.0, accuracy_kept=1.0, accuracy_ablated=0.0,
                ablation="mean", submodel="c", task="t")  # fmt: skip
    return tls.Evaluation(**{**base, **values})


def test_values_outside_the_unit_interval_are_explained():
    assert outside_unit_notes(evaluation()) == []
    (note,) = outside_unit_notes(evaluation(faithfulness=1.3))
    assert note.startswith("faithfulness 1.30 > 1: the circuit alone does better")
    (note,) = outside_unit_notes(evaluation(necessity=5.24))
    assert note.startswith("necessity 5.24 > 1: ablating the circuit costs more than ablating everything")
    notes = outside_unit_notes(evaluation(faithfulness=-0.2, necessity=-0.1))
    assert [n.split(":")[0] for n in notes] == ["faithfulness -0.20 < 0", "necessity -0.10 < 0"]


def test_in_words_names_what_the_card_lists_and_what_differs():
    ev = evaluation()
    exact = tls.SubModel(["L0H0", "L1H0", "L1H1", "L1H2", "L1H3"], name="c")
    assert in_words("induction-2l", "induction", exact, ev).endswith("as the model card says.")
    off = tls.SubModel(["L0H0", "L1H0", "L1H1", "L1H2", "L0H2"], name="c")
    said = in_words("induction-2l", "induction", off, ev)
    assert "missing here: L1H3" in said and "also here: L0H2" in said
    assert in_words("my-model", "t", exact, dataclasses.replace(ev, faithfulness=0.5)).endswith(
        "50% of the metric and 100% accuracy."
    )


def test_zoo_corpus_prints_text_that_decompose_reads(capsys, tmp_path):
    assert main(["zoo", "corpus", "multitask-3l", "--n", "5", "--seed", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    model = tls.zoo.load("multitask-3l")
    want = tls.zoo.corpus("multitask-3l", n=5, seed=3)
    from tl_submodels import model as tlmodel

    assert [tlmodel.tokenize(model, line) for line in lines] == want.tolist()  # BOS prepended again
    assert main(["zoo", "corpus", "nope"]) == 2


def test_every_table_has_a_legend(capsys):
    assert main(["scores", "--model", "induction-2l", "--task", "induction", "--n", "8", "--method", "atp"]) == 0
    assert "score: the gradient estimate" in " ".join(capsys.readouterr().out.split())
    args = ["diff", "--model-a", "induction-2l", "--model-b", "induction-2l", "--task", "induction", "--n", "8"]
    assert main(args) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "/ task gap: the same over the task's clean-corrupt gap, the value the rows are ranked by" in out
