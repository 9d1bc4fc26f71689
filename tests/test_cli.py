"""The tl-submodels command: the demo job, machine output, exit codes."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import tl_submodels as tls
from tl_submodels.cli import main


def start(*args: str) -> subprocess.Popen:
    """The command in a fresh process (the console script's code path), started and not waited for."""
    # HF_HUB_OFFLINE: an unknown model name is tried on the hub; offline it fails at once instead of retrying
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "tl_submodels.cli", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip


def finish(proc: subprocess.Popen) -> subprocess.CompletedProcess:
    """Wait for ``proc`` (killed after 10 minutes, as ``subprocess.run`` would)."""
    try:
        stdout, stderr = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def run(*args: str) -> subprocess.CompletedProcess:
    return finish(start(*args))


def assert_bad_input(cases: list[tuple[tuple[str, ...], str]]) -> None:
    """Each command exits 2 with one line on stderr, ``tl-submodels: error: ...`` naming the problem
    (``needle``), and no traceback.

    The commands run side by side, one per core (at most 4): most of each one's time is Python
    importing torch, on one core.
    """
    width = max(1, min(4, os.cpu_count() or 1))
    for i in range(0, len(cases), width):
        batch = cases[i : i + width]
        results = [finish(proc) for proc in [start(*args) for args, _ in batch]]
        for (args, needle), done in zip(batch, results, strict=True):
            assert done.returncode == 2, (args, done.stderr)
            assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr, done.stderr
            assert done.stderr.startswith("tl-submodels: error:") and needle in done.stderr, (needle, done.stderr)


def test_discover_writes_a_valid_circuit(tmp_path, capsys):
    out = tmp_path / "circuit.json"
    assert (
        main(["discover", "--model", "induction-2l", "--task", "induction", "--n", "32", "--out", str(out), "--json"])
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    circuit = tls.SubModel.load(out)
    assert [str(c) for c in circuit] == result["circuit"]["components"]
    assert result["evaluation"]["faithfulness"] >= 0.9
    assert len(result["top"]) == 8  # every head of the 2x4 model (--top defaults to 10)


def test_discover_prints_tables():
    proc = run("discover", "--model", "induction-2l", "--task", "induction", "--n", "16")
    assert proc.returncode == 0, proc.stderr
    assert "top components" in proc.stdout and "faithfulness" in proc.stdout and "circuit" in proc.stdout


def test_zoo_commands(capsys):
    assert main(["zoo", "list"]) == 0
    assert "induction-2l" in capsys.readouterr().out
    assert main(["zoo", "info", "induction-2l"]) == 0
    assert json.loads(capsys.readouterr().out)["name"] == "induction-2l"


def test_bad_input_exits_2_with_one_line():
    cases = [
        (("discover", "--model", "nope", "--task", "induction"), "tl-submodels: error:"),
        (("discover", "--model", "induction-2l", "--task", "copy"), "tl-submodels: error:"),
        (("zoo", "info", "nope"), "tl-submodels: error:"),
    ]
    assert_bad_input(cases)


def test_factorize_explain_diff_on_zoo_models(tmp_path, capsys):
    out = tmp_path / "parts"
    args = ["factorize", "--model", "multitask-3l", "--task", "addition", "--task", "majority", "--n", "32"]
    assert main([*args, "--k", "2", "--json", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["k"] == 2 and len(result["parts"]) == 2
    files = sorted(f for f in out.glob("*.json") if f.name != "factorization.json")
    assert len(files) == 2 and all(tls.SubModel.load(f) for f in files)
    saved = tls.Factorization.from_dict(json.loads((out / "factorization.json").read_text()))
    assert {p.name for p in saved.parts} == {f.stem for f in files} and saved.purity == result["purity"]
    prompt = "ADD w1 n3 w2 w5 n4 w3 w1 w2 w2 w5 w6 w7 w8 ="
    assert main(["explain", "--model", "multitask-3l", "--prompt", prompt, "--part", str(files[0]),
                 "--reference", "addition", "--json"]) == 0  # fmt: skip
    printed = json.loads(capsys.readouterr().out)
    rows = printed["rows"]
    assert rows[0]["ablated"] == "full" and rows[0]["top"][0]["token"] == "n7"
    assert tls.Explanation.from_dict(printed).top() == "n7"
    assert main(["diff", "--model-a", "harmless-3l", "--model-b", "harmful-3l", "--task", "backdoor",
                 "--task", "addition", "--n", "32", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["top"] and {"component", "task", "effect_b_minus_a"} <= set(result["top"][0])
    assert str(tls.ModelDiff.from_dict(result["diff"]).ranking[0].component) == result["top"][0]["component"]


def test_jsonl_tasks(tmp_path, capsys):
    rows = [
        {"clean": f"ADD w1 n{a} w2 w5 n{b} w3 w1 w2 w2 w5 w6 w7 w8 =",
         "corrupt": f"ADD w1 n{(a + 1) % 13} w2 w5 n{b} w3 w1 w2 w2 w5 w6 w7 w8 =",
         "answer": f"n{(a + b) % 13}", "wrong": f"n{(a + b + 1) % 13}"}
        for a in range(6) for b in range(4)
    ]  # fmt: skip
    path = tmp_path / "adds.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert main(["factorize", "--model", "multitask-3l", "--task", str(path), "--k", "1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["parts"][0]["label"] == "adds"


def test_bad_input_of_the_new_commands(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(
        '{"clean": "ADD w1 n1 w2 w5 n2 w3 w1 w2 w2 w5 w6 w7 w8 =", "corrupt": "ADD w1 n3 w2 w5 n2 w3 w1 w2 w2 w5 w6 w7 w8 =", "answer": "n3", "wrong": "n4"}\n{oops\n'
    )
    no_word = tmp_path / "noword.jsonl"
    no_word.write_text(json.dumps({"clean": "ADD n1 =", "corrupt": "ADD n2 =", "answer": "n99", "wrong": "n4"}) + "\n")
    part = tmp_path / "part.json"
    part.write_text(json.dumps({**tls.SubModel(components=["L0H0"], name="p").to_dict(), "components": ["L7H0"]}))
    cases = [
        (("factorize", "--model", "nope", "--task", "addition"), "unknown model 'nope'"),
        (("factorize", "--model", "multitask-3l", "--task", str(bad_json)), "bad.jsonl:2"),
        (("factorize", "--model", "multitask-3l", "--task", str(no_word)), "n99"),
        (("explain", "--model", "multitask-3l", "--prompt", "ADD n1 n2 =", "--part", str(part),
          "--reference", "addition"), "L7H0"),
        (("diff", "--model-a", "induction-2l", "--model-b", "harmful-3l", "--task", "addition"), "architecture"),
    ]  # fmt: skip
    assert_bad_input(cases)


def test_scores_command_matches_the_library(tmp_path, capsys):
    out = tmp_path / "scores.json"
    args = ["scores", "--model", "induction-2l", "--task", "induction", "--n", "16", "--top", "3"]
    assert main([*args, "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    model = tls.zoo.load("induction-2l")
    want = tls.patch(model, tls.zoo.task("induction-2l", "induction", n=16))
    assert [r["component"] for r in printed["top"]] == [str(c) for c, _ in want.top(3)]
    saved = tls.Scores.from_dict(json.loads(out.read_text()))
    assert saved.heads is not None and (saved.heads - want.heads).abs().max() < 1e-6
    assert main(["scores", "--model", "multitask-3l", "--task", "addition", "--n", "8", "--method", "atp",
                 "--kinds", "mlps", "--json"]) == 0  # fmt: skip
    assert json.loads(capsys.readouterr().out)["method"] == "atp"


def strict(text: str):
    """json.loads that refuses NaN and Infinity, which are not JSON (jq and most parsers reject them)."""
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))


def test_json_is_strict_and_not_scored_entries_round_trip_as_null(tmp_path):
    model = tls.zoo.load("induction-2l")
    partial = tls.patch(model, tls.zoo.task("induction-2l", "induction", n=8), components=["L1H0"], per_example=True)
    assert partial.heads.isnan().sum() == 7  # every head but L1H0 not scored
    text = json.dumps(partial.to_dict(), allow_nan=False)
    back = tls.Scores.from_dict(strict(text))
    torch.testing.assert_close(back.heads, partial.heads, equal_nan=True)
    torch.testing.assert_close(back.per_example["heads"], partial.per_example["heads"], equal_nan=True)
    proc = run("scores", "--model", "induction-2l", "--task", "induction", "--n", "8", "--json")
    assert proc.returncode == 0, proc.stderr
    strict(proc.stdout)


def test_report_command_writes_an_offline_report(tmp_path, capsys):
    out = tmp_path / "r" / "report.html"
    assert (
        main(["report", "--model", "induction-2l", "--task", "induction", "--n", "16", "--out", str(out), "--json"])
        == 0
    )
    printed = json.loads(capsys.readouterr().out)
    assert printed["sections"] == ["card", "scores", "submodels", "usage", "trace", "attention", "graph", "about"]
    assert out.stat().st_size == printed["bytes"] and "<script src" not in out.read_text()


def test_a_checkpoint_folder_with_a_jsonl_task(tmp_path, capsys):
    folder = tmp_path / "ckpt"
    folder.mkdir()
    zoo = tls.zoo.ROOT / "induction-2l"
    for f in ("config.json", "weights.safetensors", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(zoo / f, folder / f)
    task = tls.zoo.task("induction-2l", "induction", n=8)
    model = tls.zoo.load("induction-2l")
    words = lambda ids: " ".join(model.tokenizer.decode([int(i)]) for i in ids[1:])  # noqa: E731
    rows = [
        {"clean": words(c), "corrupt": words(k), "answer": model.tokenizer.decode([int(a)]),
         "wrong": model.tokenizer.decode([int(w)])}
        for c, k, a, w in zip(task.clean, task.corrupt, task.answer, task.wrong, strict=True)
    ]  # fmt: skip
    path = tmp_path / "induction.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    assert main(["scores", "--model", str(folder), "--task", str(path), "--json", "--top", "8"]) == 0
    from_folder = {r["component"]: r["score"] for r in json.loads(capsys.readouterr().out)["top"]}
    want = tls.patch(model, task)
    assert {str(c): v for c, v in want.top(8)} == pytest.approx(from_folder, abs=1e-5)


def test_more_bad_input_exits_2_with_one_line(tmp_path):
    missing_answer = tmp_path / "answer.jsonl"
    ok = {
        "clean": "ADD w1 n1 w2 w5 n2 w3 w1 w2 w2 w5 w6 w7 w8 =",
        "corrupt": "ADD w1 n3 w2 w5 n2 w3 w1 w2 w2 w5 w6 w7 w8 =",
    }
    missing_answer.write_text(json.dumps({**ok, "answer": "n3", "wrong": "n4"}) + "\n"
                              + json.dumps({**ok, "answer": "zebra", "wrong": "n4"}) + "\n")  # fmt: skip
    junk_part = tmp_path / "junk.json"
    junk_part.write_text(json.dumps({**tls.SubModel(components=["L0H0"], name="p").to_dict(), "components": ["XYZ"]}))
    cases = [
        (("scores", "--model", "multitask-3l", "--task", str(missing_answer)), "answer.jsonl:2: answer"),
        (("report", "--model", "multitask-3l", "--task", "addition", "--part", str(junk_part), "--out",
          str(tmp_path / "r.html")), "XYZ"),
        (("scores", "--model", "induction-2l", "--task", "induction", "--method", "magic"), "invalid choice"),
        (("scores", "--model", "induction-2l"), "required: --task"),
        (("scores", "--model", str(tmp_path / "nothere"), "--task", "x"), "no checkpoint folder"),
        (("scores", "--model", str(tmp_path), "--task", "x"), "not a checkpoint folder"),
        (("report", "--model", "induction-2l", "--task", "induction", "--factorize", "--part", str(junk_part),
          "--out", "x.html"), "not both"),
    ]  # fmt: skip
    assert_bad_input(cases)
