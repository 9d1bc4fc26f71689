"""Benchmark factorize on multitask-3l: exact per-prompt patching against attribution (AtP) effects.

Prints JSON lines: the time of each (the exact run is the baseline measured in the same run),
a ``factorize_vs_patch`` line (factorize with exact patching over the time of the patching alone,
the same prompts in the same run: the work after scoring is the validation of the parts by ablation),
split into the scoring (inside ``patch`` / ``attribute``) and the rest (the factorisation, choosing
k, and validating every part by ablation, the same work for both), the ratios, and how well the two agree: Spearman correlation of the per-prompt effect matrices,
and for each task label the Jaccard overlap of the sub-models the two runs find.

Usage:
    python scripts/bench_factorize.py [--n 64] [--threads 2]
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_attribution import scoring_timer

import tl_submodels as tls
from tl_submodels.zoo import multitask as mt

# the module (``tl_submodels.factorize`` the attribute is the function of the same name)
factorize_module = importlib.import_module("tl_submodels.factorize")


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.flatten().argsort().argsort().double()
    rb = b.flatten().argsort().argsort().double()
    ra, rb = ra - ra.mean(), rb - rb.mean()
    return float((ra * rb).sum() / (ra.norm() * rb.norm()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=64, help="prompts per task")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = tls.zoo.load("multitask-3l")
    tasks = [tls.zoo.task("multitask-3l", t, n=args.n, seed=0, model=model) for t in mt.TASKS]
    runs = {}
    for scorer in ("patch", "atp"):
        with scoring_timer(factorize_module) as spent:
            t0 = time.perf_counter()
            f = tls.factorize(model, tasks, method=scorer)
            seconds = time.perf_counter() - t0
        scoring = spent["patch"] + spent["attribute"]
        runs[scorer] = (f, seconds, scoring)
        parts = {
            p.name: {
                "size": len(p),
                "accuracy_drop": round(e.accuracy_full - e.accuracy_ablated, 3),
                "max_drop_elsewhere": round(max(e.accuracy_drop_elsewhere.values(), default=0.0), 3),
            }
            for p, e in zip(f.parts, f.evaluations, strict=True)
        }
        print(json.dumps({"bench": f"factorize_{scorer}", "seconds": round(seconds, 3),
                          "scoring_seconds": round(scoring, 3), "rest_seconds": round(seconds - scoring, 3), "k": len(f.parts),
                          "purity": round(f.purity, 3), "parts": parts, "prompts": len(f.prompt_task),
                          "components": len(f.components)}), flush=True)  # fmt: skip
    (fp, tp, sp), (fa, ta, sa) = runs["patch"], runs["atp"]
    t0 = time.perf_counter()
    for t in tasks:  # the scoring alone, outside factorize
        tls.patch(model, t, kinds=("heads", "neurons"), direction="noising", per_example=True)
    patching = time.perf_counter() - t0
    print(json.dumps({"bench": "factorize_vs_patch", "factorize_seconds": round(tp, 3), "patch_seconds": round(patching, 3),
                      "ratio": round(tp / patching, 3), "threads": args.threads, "prompts_per_task": args.n}), flush=True)  # fmt: skip
    overlap = {}
    for p in fp.parts:
        q = next((q for q in fa.parts if q.name == p.name), None)
        if q is not None:
            overlap[p.name] = round(len(p.components & q.components) / len(p.components | q.components), 3)
    print(json.dumps({"bench": "factorize_atp_vs_patch", "patch_seconds": round(tp, 3), "atp_seconds": round(ta, 3),
                      "speedup": round(tp / ta, 3), "scoring_speedup": round(sp / sa, 3), "effects_spearman": round(spearman(fp.effects, fa.effects), 3),
                      "effects_spearman_abs": round(spearman(fp.effects.abs(), fa.effects.abs()), 3),
                      "part_jaccard_by_label": overlap}), flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
