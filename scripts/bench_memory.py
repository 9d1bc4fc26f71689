"""Peak memory of a sweep against the budget it was given (``max_memory_mb``), on the GPT-2-shaped random model.

One JSON line per (sweep, budget): the peak resident memory the call added (RSS high-water mark
during the call minus RSS before it, in a fresh process per measurement: ``/proc/self/clear_refs``
resets the mark), the budget, and their ratio. The model and task are those of
``bench_attribution.py`` (12 layers, 12 heads, d_model 768, d_mlp 3072, batch 8 x 64 tokens).

Sweeps: ``patch`` (exact, heads and MLP layers), ``atp`` (every head, neuron and MLP layer).

Usage:
    .venv/bin/python scripts/bench_memory.py [--budgets 64,128,256,512]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

SWEEPS = ("patch", "atp")


def probe(sweep: str, budget: float) -> dict:
    """In this (fresh) process: build the model, reset the RSS high-water mark, run one sweep."""
    from bench_attribution import build_gpt2_shape, rss_mb

    import tl_submodels as tls

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    model, task = build_gpt2_shape()
    with torch.no_grad():
        model(task.clean[:1])  # warm up the allocator and lazy initialisation outside the measurement
    gc.collect()
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = rss_mb()
    t0 = time.perf_counter()
    if sweep == "patch":
        tls.patch(model, task, kinds=("heads", "mlps"), max_memory_mb=budget)
    else:
        tls.attribute(model, task, method="atp", max_memory_mb=budget)
    seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"sweep": sweep, "budget_mb": budget, "peak_added_mb": round(peak - before, 1),
            "ratio": round((peak - before) / budget, 3), "seconds": round(seconds, 2)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--budgets", default="64,128,256,512")
    parser.add_argument("--sweeps", default=",".join(SWEEPS))
    parser.add_argument("--probe", nargs=2, metavar=("SWEEP", "BUDGET"))
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe[0], float(args.probe[1]))), flush=True)
        return 0
    for sweep in args.sweeps.split(","):
        for budget in args.budgets.split(","):
            out = subprocess.run([sys.executable, __file__, "--probe", sweep, budget], capture_output=True, text=True)
            if out.returncode != 0:
                print(json.dumps({"sweep": sweep, "budget_mb": float(budget), "error": out.stderr[-500:]}), flush=True)
                continue
            print(out.stdout.strip().splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
