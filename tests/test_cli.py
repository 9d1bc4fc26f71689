"""The tl-submodels command: the demo job, machine output, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys

import tl_submodels as tls
from tl_submodels.cli import main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "tl_submodels.cli", *args], capture_output=True, text=True, timeout=600
    )


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
    for args in (
        ("discover", "--model", "nope", "--task", "induction"),
        ("discover", "--model", "induction-2l", "--task", "copy"),
        ("zoo", "info", "nope"),
    ):
        proc = run(*args)
        assert proc.returncode == 2, proc
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
        assert proc.stderr.startswith("tl-submodels: error:")


def test_factorize_explain_diff_on_zoo_models(tmp_path, capsys):
    out = tmp_path / "parts"
    args = ["factorize", "--model", "multitask-3l", "--task", "addition", "--task", "majority", "--n", "32"]
    assert main([*args, "--k", "2", "--json", "--out", str(out)]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["k"] == 2 and len(result["parts"]) == 2
    files = sorted(out.glob("*.json"))
    assert len(files) == 2 and all(tls.SubModel.load(f) for f in files)
    prompt = "ADD w1 n3 w2 w5 n4 w3 w1 w2 w2 w5 w6 w7 w8 ="
    assert main(["explain", "--model", "multitask-3l", "--prompt", prompt, "--part", str(files[0]),
                 "--reference", "addition", "--json"]) == 0  # fmt: skip
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert rows[0]["ablated"] == "full" and rows[0]["top"][0][0] == "n7"
    assert main(["diff", "--model-a", "harmless-3l", "--model-b", "harmful-3l", "--task", "backdoor",
                 "--task", "addition", "--n", "32", "--json"]) == 0  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["top"] and {"component", "task", "effect_b_minus_a"} <= set(result["top"][0])


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
        '{"clean": "ADD w1 n1 w2 w5 n2 w3 w1 w2 w2 w5 w6 w7 w8 =", "corrupt": "x", "answer": "n3", "wrong": "n4"}\n{oops\n'
    )
    no_word = tmp_path / "noword.jsonl"
    no_word.write_text(json.dumps({"clean": "ADD n1 =", "corrupt": "ADD n2 =", "answer": "n99", "wrong": "n4"}) + "\n")
    part = tmp_path / "part.json"
    part.write_text(json.dumps({**tls.SubModel(components=["L0H0"], name="p").to_dict(), "components": ["L7H0"]}))
    cases = [
        (("factorize", "--model", "nope", "--task", "addition"), "no zoo model"),
        (("factorize", "--model", "multitask-3l", "--task", str(bad_json)), "bad.jsonl:2"),
        (("factorize", "--model", "multitask-3l", "--task", str(no_word)), "n99"),
        (("explain", "--model", "multitask-3l", "--prompt", "ADD n1 n2 =", "--part", str(part),
          "--reference", "addition"), "L7H0"),
        (("diff", "--model-a", "induction-2l", "--model-b", "harmful-3l", "--task", "addition"), "architecture"),
    ]  # fmt: skip
    for args, needle in cases:
        proc = run(*args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert needle in proc.stderr, (needle, proc.stderr)
