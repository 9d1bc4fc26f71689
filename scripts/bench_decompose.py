"""Benchmark decompose's scoring (per-prediction effects of every head and neuron) against one forward + backward.

A random TransformerBridge (TL 4) or HookedTransformer (TL 2) of GPT-2-small shape (12 layers, 12 heads,
d_model 768, d_mlp 3072, n_ctx 64, a 1000-token vocabulary), a corpus of ``BATCH`` sequences of 65
tokens (the model reads 64). One JSON line per setting on stdout:

- ``positions``: ``"all"`` (every prediction counts: a backward per position) or ``"last"`` (one);
- ``predictions_per_second`` of ``token_effects(method="atp")`` over heads and neurons;
- ``baseline_seconds``: one forward and backward of the same tokens (the summed next-token loss,
  parameter gradients included), best of ``REPEATS``, measured in the same run;
- ``ratio``: scoring time over the baseline (the issue's goal: <= 4);
- ``peak_added_mb`` against ``max_memory_mb``: the resident-memory high-water mark the scoring added
  (``VmHWM`` after resetting it, in a fresh process per setting).

Run it alone (two torch processes on 2 cores slow each other 10-30x); the thread count is in each line.

Usage:
    .venv/bin/python scripts/bench_decompose.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

_here = str(Path(__file__).resolve().parent)
if _here not in sys.path:
    sys.path.insert(0, _here)

from bench_patching import CFG as SMALL_CFG  # noqa: E402
from bench_patching import random_tl_state  # noqa: E402

from tl_submodels import model as tlmodel  # noqa: E402
from tl_submodels.ablation import Ablator  # noqa: E402
from tl_submodels.tokeneffects import prepare_corpus, token_effects  # noqa: E402

CFG: dict[str, Any] = dict(SMALL_CFG, n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, n_ctx=64)
STD = 0.2 * (SMALL_CFG["d_model"] / CFG["d_model"]) ** 0.5
BATCH, SEQ = 8, 65
REPEATS = 3
MAX_MEMORY_MB = 1024.0


def build() -> tuple[Any, torch.Tensor]:
    model = tlmodel.build_from_tl_checkpoint(CFG, random_tl_state(CFG, std=STD))
    model.eval()
    corpus = torch.randint(1, CFG["d_vocab"], (BATCH, SEQ), generator=torch.Generator().manual_seed(0))
    return model, corpus


def baseline(model: Any, corpus: torch.Tensor) -> float:
    best = float("inf")
    for _ in range(REPEATS):
        t = time.perf_counter()
        logits = model(corpus[:, :-1])
        loss = -logits.log_softmax(-1).gather(-1, corpus[:, 1:, None]).sum()
        loss.backward()
        model.zero_grad(set_to_none=True)
        best = min(best, time.perf_counter() - t)
    return best


def score(model: Any, corpus: torch.Tensor, positions: str) -> tuple[float, int]:
    prep = prepare_corpus(model, corpus, None if positions == "all" else "last")
    ablator = Ablator(model, ablation="mean", reference=prep.reference())
    ablator.values([tlmodel.hook_z(0)])  # the means: one forward, outside the timing
    t = time.perf_counter()
    fx = token_effects(model, prep, ("heads", "neurons"), method="atp", ablator=ablator, max_memory_mb=MAX_MEMORY_MB)
    return time.perf_counter() - t, fx.effects.shape[0]


def probe(positions: str) -> None:
    """In a fresh process: the resident memory the scoring adds (printed as one number)."""
    model, corpus = build()
    prep = prepare_corpus(model, corpus, None if positions == "all" else "last")
    ablator = Ablator(model, ablation="mean", reference=prep.reference())
    ablator.values([tlmodel.hook_z(0)])
    Path("/proc/self/clear_refs").write_text("5")  # reset the high-water mark (VmHWM; ru_maxrss is never reset)
    start = _status_mb("VmRSS")
    token_effects(model, prep, ("heads", "neurons"), method="atp", ablator=ablator, max_memory_mb=MAX_MEMORY_MB)
    print(_status_mb("VmHWM") - start)


def _status_mb(field: str) -> float:
    """A memory field of /proc/self/status, in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return float(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--mem-probe":
        probe(sys.argv[2])
        return
    model, corpus = build()
    for positions in ("last", "all"):
        base = baseline(model, corpus)
        seconds, n = min(score(model, corpus, positions) for _ in range(REPEATS if positions == "last" else 1))
        mem = subprocess.run(
            [sys.executable, __file__, "--mem-probe", positions], capture_output=True, text=True, check=True
        ).stdout.split()[-1]
        print(
            json.dumps(
                {
                    "bench": "decompose_scoring_atp",
                    "model": "random GPT-2-small shape, 1000-token vocabulary",
                    "tl_line": tlmodel.adapter(model).line,
                    "threads": torch.get_num_threads(),
                    "sequences": BATCH,
                    "tokens_read": SEQ - 1,
                    "positions": positions,
                    "predictions": n,
                    "scoring_seconds": round(seconds, 3),
                    "predictions_per_second": round(n / seconds, 1),
                    "baseline_seconds": round(base, 3),
                    "ratio": round(seconds / base, 2),
                    "peak_added_mb": round(float(mem), 1),
                    "max_memory_mb": MAX_MEMORY_MB,
                    "load_average": os.getloadavg()[0],
                }
            ),
            flush=True,
        )


if __name__ == "__main__":
    main()
