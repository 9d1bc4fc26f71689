"""torch.distributed: two CPU processes on the gloo backend give the single-process results, on every rank."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap

import pytest
import torch

import tl_submodels as tls

WORKER = textwrap.dedent(
    """
    import sys, torch, torch.distributed as dist
    import tl_submodels as tls

    rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.set_num_threads(1)
    done, items = tls.sweep.Sweep.done, []  # count the work items this rank computes
    tls.sweep.Sweep.done = lambda self, i, r: (items.append(i), done(self, i, r))[1]
    model = tls.zoo.load("multitask-3l")
    task = tls.zoo.task("multitask-3l", "addition", n=8, model=model)
    tasks = [tls.zoo.task("multitask-3l", t, n=12, model=model) for t in ("addition", "majority")]
    results = {
        "patch": tls.patch(model, task, per_example=True).to_dict(),
        "atp": tls.attribute(model, task, batch_size=4, per_example=True).to_dict(),
        "atp_default": tls.attribute(model, task).to_dict(),
        "ig": tls.attribute(model, task, method="ig", steps=4, batch_size=8, kinds=("heads",)).to_dict(),
    }
    f = tls.factorize(model, tasks, k=2, kinds=("heads",))
    results["factorize"] = {"effects": f.effects, "parts": [sorted(map(str, p)) for p in f.parts], "labels": f.labels}
    results["items"] = items
    torch.save(results, out)
    dist.destroy_process_group()
    """
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dist")
    script = folder / "worker.py"
    script.write_text(WORKER)
    port = str(free_port())
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), port, str(folder / f"rank{r}.pt")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in range(2)
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def single():
    model = tls.zoo.load("multitask-3l")
    task = tls.zoo.task("multitask-3l", "addition", n=8, model=model)
    tasks = [tls.zoo.task("multitask-3l", t, n=12, model=model) for t in ("addition", "majority")]
    f = tls.factorize(model, tasks, k=2, kinds=("heads",))
    return {
        "patch": tls.patch(model, task, per_example=True),
        "atp": tls.attribute(model, task, batch_size=4, per_example=True),
        "atp_default": tls.attribute(model, task),
        "ig": tls.attribute(model, task, method="ig", steps=4, batch_size=8, kinds=("heads",)),
        "factorize": f,
    }


@pytest.mark.parametrize("name", ["patch", "atp", "ig"])
def test_two_gloo_ranks_equal_one_process_bit_for_bit(two_ranks, single, name):
    want = single[name]
    for rank in two_ranks:
        got = tls.Scores.from_dict(rank[name])
        for kind in want.kinds:
            assert torch.equal(getattr(got, kind), getattr(want, kind)), (name, kind)
        if want.per_example is not None:
            for k, v in want.per_example.items():
                assert torch.equal(got.per_example[k], v), (name, k)


def test_attribution_split_by_the_default_chunks_matches_to_float_precision(two_ranks, single):
    want = single["atp_default"]
    for rank in two_ranks:  # each rank took half the examples: other batch shapes, same numbers to 1e-5
        got = tls.Scores.from_dict(rank["atp_default"])
        for kind in want.kinds:
            torch.testing.assert_close(getattr(got, kind), getattr(want, kind), rtol=1e-5, atol=1e-6)


def test_the_work_is_shared_out(two_ranks):
    a, b = (r["items"] for r in two_ranks)
    assert a and b and abs(len(a) - len(b)) <= 6  # a few sweeps, each split alternately
    assert all(i % 2 == 0 for i in a) and all(i % 2 == 1 for i in b)


def test_factorize_on_two_ranks_equals_one_process(two_ranks, single):
    want = single["factorize"]
    for rank in two_ranks:
        got = rank["factorize"]
        assert torch.equal(got["effects"], want.effects)
        assert got["parts"] == [sorted(map(str, p)) for p in want.parts]
        assert got["labels"] == want.labels
