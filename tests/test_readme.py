"""The README's command-line session runs top to bottom, as written, in a fresh folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def cli_session() -> str:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Command line") :]
    match = re.search(r"```bash\n(.*?)```", section, re.S)
    assert match, "the README's Command line section needs a ```bash block"
    return match.group(1)


def test_the_readme_cli_session_runs_top_to_bottom(tmp_path):
    script = cli_session()
    assert script.count("tl-submodels ") >= 10
    bin_dir = Path(sys.executable).parent  # the environment's console scripts (tl-submodels)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900)  # fmt: skip
    assert done.returncode == 0, f"stderr:\n{done.stderr[-3000:]}\nstdout:\n{done.stdout[-2000:]}"
    out = tmp_path / "out"
    for name in ("scores.json", "circuit.json", "backdoor.json", "corpus.txt", "report.html"):
        assert (out / name).is_file(), name
    assert list((out / "parts").glob("*.json")) and list((out / "lib").glob("*.json"))
    assert "departs at step 0" in done.stdout  # the backdoor circuit ablated, the decision changes
    assert len((out / "corpus.txt").read_text().splitlines()) == 32
