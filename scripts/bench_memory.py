"""Peak memory of a sweep against the budget it was given (``max_memory_mb``), on the GPT-2-shaped random model.

One JSON line per (sweep, budget): the peak resident memory the call added (RSS high-water mark
during the call minus RSS before it, in a fresh process per measurement: ``/proc/self/clear_refs``
resets the mark), the budget, and their ratio. The model and task are those of
``bench_attribution.py`` (12 layers, 12 heads, d_model 768, d_mlp 3072, batch 8 x 64 tokens).

Sweeps: ``patch`` (exact, heads and MLP layers), ``atp`` (every head, neuron and MLP layer), ``ig``
(integrated gradients of the heads, 4 steps).

Usage:
    .venv/bin/python scripts/bench_memory.py [--budgets 128,256,512,1024] [--sweeps patch,atp,ig] [--model gpt2]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SWEEPS = ("patch", "atp", "ig")


def build(name: str) -> tuple[Any, Any]:
    """``gpt2``: the GPT-2-shaped random model, batch 8 x 64 tokens; ``small``: the 4-layer model of
    bench_patching.py (d_model 256, d_mlp 1024), batch 32 x 64 tokens (what tests/test_memory.py runs)."""
    from bench_attribution import SMALL_CFG, build_gpt2_shape, make_task
    from bench_patching import random_tl_state

    from tl_submodels import model as tlmodel

    if name == "gpt2":
        return build_gpt2_shape()
    model = tlmodel.build_from_tl_checkpoint(SMALL_CFG, random_tl_state(SMALL_CFG))
    model.eval()
    return model, make_task(model, SMALL_CFG, 32, 64, 32)


def probe(sweep: str, budget: float, model_name: str = "gpt2") -> dict:
    """In this (fresh) process: build the model, reset the RSS high-water mark, run one sweep."""
    from bench_attribution import rss_mb

    import tl_submodels as tls

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model, task = build(model_name)
    with torch.no_grad():
        model(task.clean[:1])  # warm up the allocator and lazy initialisation outside the measurement
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap pages back, so RSS counts live memory only
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the RSS high-water mark (VmHWM) to the current RSS
    before = rss_mb()
    t0 = time.perf_counter()
    if sweep == "patch":
        tls.patch(model, task, kinds=("heads", "mlps"), max_memory_mb=budget)
    elif sweep == "atp":
        tls.attribute(model, task, method="atp", max_memory_mb=budget)
    else:
        tls.attribute(model, task, method="ig", steps=4, kinds=("heads",), max_memory_mb=budget)
    seconds = time.perf_counter() - t0
    peak = _status_mb("VmHWM")
    return {"model": model_name, "sweep": sweep, "budget_mb": budget, "peak_added_mb": round(peak - before, 1),
            "ratio": round((peak - before) / budget, 3), "seconds": round(seconds, 2)}  # fmt: skip


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


# glibc keeps freed memory in its heap (and raises its mmap threshold after large frees), so RSS
# would lag behind what is live: a fixed threshold makes every tensor its own mapping, returned on free.
PROBE_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budgets", default="128,256,512,1024")
    parser.add_argument("--sweeps", default=",".join(SWEEPS))
    parser.add_argument("--model", choices=("gpt2", "small"), default="gpt2")
    parser.add_argument("--probe", nargs=2, metavar=("SWEEP", "BUDGET"))
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe[0], float(args.probe[1]), args.model)), flush=True)
        return 0
    for sweep in args.sweeps.split(","):
        for budget in args.budgets.split(","):
            print(json.dumps(measure(sweep, float(budget), args.model)), flush=True)
    return 0


def measure(sweep: str, budget: float, model_name: str = "gpt2") -> dict:
    """Run one probe in a fresh process; its JSON result, or the error it ended with."""
    out = subprocess.run(
        [sys.executable, __file__, "--model", model_name, "--probe", sweep, str(budget)],
        capture_output=True, text=True, env={**os.environ, **PROBE_ENV},
    )  # fmt: skip
    if out.returncode != 0:
        return {"model": model_name, "sweep": sweep, "budget_mb": budget, "error": out.stderr[-500:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    sys.exit(main())
