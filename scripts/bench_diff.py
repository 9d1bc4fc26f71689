"""Benchmark ``tls.diff`` of harmless-3l and harmful-3l on their five tasks against exact patching of the same prompts.

One JSON line per seed pair: the seconds of ``diff`` (scoring both models by exact patching, then
choosing and validating each task's part by ablation), the seconds of the patching alone (every
task in both models, the same prompts, in the same run), their ratio, and what diff found (each
part's size and score). The backdoor task's prompts are drawn with one seed, the other four tasks'
with another (issue 19: 64 prompts a task, seeds 5/7 once found no part at all).

Run it alone (two torch processes on 2 cores slow each other 10-30x); the thread count is in each line.

Usage:
    python scripts/bench_diff.py [--n 64] [--pairs 5/7 0/0] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import tl_submodels as tls
from tl_submodels.zoo import multitask as mt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="prompts per task")
    ap.add_argument("--pairs", nargs="+", default=["5/7", "0/0"], help="backdoor seed / other tasks' seed")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    harmless, harmful = tls.zoo.load("harmless-3l"), tls.zoo.load("harmful-3l")
    for pair in args.pairs:
        backdoor_seed, seed = (int(x) for x in pair.split("/"))
        tasks = [tls.zoo.task("harmful-3l", t, n=args.n, seed=seed, model=harmful) for t in mt.TASKS]
        tasks.append(tls.zoo.task("harmful-3l", "backdoor", n=args.n, seed=backdoor_seed, model=harmful))
        t0 = time.perf_counter()
        d = tls.diff(harmless, harmful, tasks)
        t1 = time.perf_counter()
        for t in tasks:
            for model in (harmless, harmful):
                tls.patch(model, t, kinds=("heads", "neurons"), direction="noising", require_gap=False)
        t2 = time.perf_counter()
        print(json.dumps({"bench": "diff", "seeds": pair, "prompts_per_task": args.n, "diff_seconds": round(t1 - t0, 3),
                          "patch_seconds": round(t2 - t1, 3), "ratio": round((t1 - t0) / (t2 - t1), 3),
                          "parts": {p.name: {"size": len(p), "score": round(s, 3)} for p, s in zip(d.parts, d.scores, strict=True)},
                          "threads": args.threads}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
