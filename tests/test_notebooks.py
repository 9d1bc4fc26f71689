"""The notebooks: each runs top to bottom, and each .ipynb is its .py pair without outputs.

Every notebook under notebooks/ is executed with nbclient in a kernel of the interpreter running
the tests (so on whichever TransformerLens line this environment has), single-threaded. A cell
that raises fails the test with the cell's source and the error. The .ipynb files are stored
without outputs and must hold the same cells as their jupytext percent-format .py pair; after
editing the .py, run ``jupytext --sync notebooks/*.py``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

import pytest

jupytext = pytest.importorskip("jupytext")
nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from nbclient.exceptions import CellExecutionError, CellTimeoutError  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"
EXPECTED = ("01_quickstart", "02_submodels_across_tasks", "03_harmful_vs_harmless", "04_decompose")
STEMS = sorted(p.stem for p in NOTEBOOKS.glob("*.py"))
KERNEL = "tl-submodels-test"
CELL_TIMEOUT_S = 600
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def test_every_notebook_is_there_in_both_forms():
    assert set(EXPECTED) <= set(STEMS), f"missing notebooks: {sorted(set(EXPECTED) - set(STEMS))}"
    unpaired = sorted({p.stem for p in NOTEBOOKS.glob("*.ipynb")} ^ set(STEMS))
    assert not unpaired, f"notebooks without their .py / .ipynb pair: {unpaired}; run jupytext --sync notebooks/*.py"


def _cells(nb) -> list[tuple[str, str]]:
    return [(c.cell_type, c.source.strip()) for c in nb.cells]


@pytest.mark.parametrize("stem", STEMS)
def test_ipynb_is_in_sync_with_its_py_and_has_no_outputs(stem):
    py, ipynb = NOTEBOOKS / f"{stem}.py", NOTEBOOKS / f"{stem}.ipynb"
    assert ipynb.is_file(), f"{ipynb.name} is missing; run jupytext --sync notebooks/{py.name}"
    stored = nbformat.read(ipynb, as_version=4)
    nbformat.validate(stored)
    with_outputs = [
        i for i, c in enumerate(stored.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)
    ]
    assert not with_outputs, f"{ipynb.name}: cells {with_outputs} have outputs stored; clear them before committing"
    from_py = jupytext.read(py)
    assert _cells(from_py) == _cells(stored), (
        f"{ipynb.name} differs from {py.name}; run jupytext --sync notebooks/{py.name} (edit the .py, not the .ipynb)"
    )
    formats = stored.metadata.get("jupytext", {}).get("formats", "")
    assert "py:percent" in formats, f"{ipynb.name}: not paired with a percent-format .py (formats={formats!r})"


@pytest.fixture(scope="module")
def kernel_manager_factory(tmp_path_factory):
    """Kernels of this interpreter (not whatever 'python3' resolves to), with one CPU thread."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    kernels = tmp_path_factory.mktemp("kernels")
    spec = kernels / KERNEL
    spec.mkdir()
    # the package under test, also where it is not installed in this environment (python -m pytest puts the
    # working directory on sys.path, a kernel does not)
    pythonpath = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "PYDEVD_DISABLE_FILE_VALIDATION": "1",
        "PYTHONPATH": pythonpath,
    }
    (spec / "kernel.json").write_text(
        json.dumps(
            {
                "argv": [sys.executable, "-Xfrozen_modules=off", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                "display_name": f"tl_submodels tests ({sys.executable})",
                "language": "python",
                "env": env,
            }
        )
    )

    def make() -> KernelManager:
        return KernelManager(kernel_name=KERNEL, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(kernels)]))

    return make


@pytest.mark.parametrize("stem", STEMS)
def test_notebook_runs_top_to_bottom(stem, kernel_manager_factory):
    nb = jupytext.read(NOTEBOOKS / f"{stem}.py")
    km = kernel_manager_factory()
    client = nbclient.NotebookClient(
        nb, km=km, timeout=CELL_TIMEOUT_S, resources={"metadata": {"path": str(NOTEBOOKS)}}
    )
    start = time.perf_counter()
    try:
        client.execute()
    except CellExecutionError as e:
        pytest.fail(f"notebooks/{stem}.py failed:\n{ANSI.sub('', str(e))}", pytrace=False)
    except CellTimeoutError as e:
        pytest.fail(f"notebooks/{stem}.py: a cell ran over {CELL_TIMEOUT_S} s:\n{ANSI.sub('', str(e))}", pytrace=False)
    finally:
        if km.has_kernel:  # nbclient shuts down only the kernels it started itself
            km.shutdown_kernel(now=True)
    print(f"{stem}: executed in {time.perf_counter() - start:.1f} s ({os.path.basename(sys.prefix)})")
