"""Sweeps honour ``max_memory_mb``: the peak memory a call adds stays under its budget (within 10%).

Measured as scripts/bench_memory.py does, each call in a fresh process: the resident-set high-water mark
during the call minus the resident set before it (Linux /proc; glibc told to hand freed tensors back at
once, so the resident set follows the live tensors). The model is the 4-layer random model of the
benchmarks, 32 prompts of 64 tokens, whose sweeps take 290-790 MB when the budget does not bind.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
bench_memory = pytest.importorskip("bench_memory")

pytestmark = pytest.mark.skipif(
    not Path("/proc/self/clear_refs").exists(), reason="peak memory is read from Linux /proc"
)

BUDGET_MB = 64.0


@pytest.mark.parametrize("sweep", ["patch", "atp", "ig"])
def test_peak_memory_stays_under_the_budget(sweep):
    unbounded = bench_memory.measure(sweep, 4096.0, "small")
    bounded = bench_memory.measure(sweep, BUDGET_MB, "small")
    assert "error" not in unbounded and "error" not in bounded, (unbounded, bounded)
    assert unbounded["peak_added_mb"] > 3 * BUDGET_MB, unbounded  # the budget binds: without it, far more
    assert bounded["peak_added_mb"] <= 1.1 * BUDGET_MB, bounded
