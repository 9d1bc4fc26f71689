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
