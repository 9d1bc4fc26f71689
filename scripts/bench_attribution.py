"""Benchmark tls.attribute (attribution patching) on CPU: cost against one forward + backward pass,
agreement and speed against TransformerLens 4's attribution_patch, and find_circuit ranked by
attribution against the exact search.

Three lines of JSON on stdout, one object each (progress goes to stderr):

1. ``atp_gpt2_shape``: a random TransformerBridge of GPT-2-small shape (12 layers, 12 heads,
   d_model 768, d_head 64, d_mlp 3072, n_ctx 64, gelu_new, LayerNorm) with a 1000-token vocabulary
   (GPT-2 has 50257: a smaller unembedding, said in the line), batch 8 x 64 tokens, corrupt from
   position 32 on, logit difference. ``tls.attribute(method="atp")`` for every head, neuron and MLP
   layer against ``logits = model(corrupt); task.metric(logits).backward()`` (parameter gradients
   included, then zeroed). Peak memory is the ``ru_maxrss`` of a fresh subprocess of this script
   (``--mem-probe``) that builds the same model, resets its high-water mark
   (``/proc/self/clear_refs``) and makes one call.
2. ``atp_vs_tl4``: the 4-layer model of ``bench_patching.py`` (same config and weights), batch
   16 x 32, corrupt from position 16. TL's ``attribution_patch`` scores one example per call (its
   metric sees single-example logits), so it runs once per example and its node scores are
   averaged; ours scores heads and MLP layers per position in one call. Scores are compared in
   metric units (``normalised score * (clean - corrupt)``).
3. ``find_circuit_attribution_vs_exact``: ``tls.find_circuit(method="atp")`` and
   ``method="patch"`` on the GPT-2-shaped model, each timed once (with the time spent in
   ``attribute`` and ``patch`` apart from the search's ablated forwards), then ``tls.evaluate``
   with mean ablation. When the exact search is estimated to exceed ``EXACT_BUDGET_S`` at batch 8 x 64,
   the line uses batch 4 x 32 (corrupt from 16) and says so.

Random weights have std 0.2 on the 4-layer model (as in ``bench_patching.py``) and
0.2 * sqrt(256 / 768) on the GPT-2-shaped one, so both residual streams have the same scale.

Timings are the best of rounds that call each contender in turn (so a change of load hits both
alike), after one warm-up round; a warm-up round slower than ``SLOW_S`` counts as the first
round, and no new round starts after ``ROUNDS_BUDGET_S``. ``paired_*_median`` is the median
over rounds of the ratio of two calls made back to back. Every line carries the 1-minute load
average when it starts and when it ends: about the thread count when this script runs alone,
more when other work shares the CPU. Timings are then unreliable, far more than the extra load
suggests: with every core busy, each of torch's OpenMP parallel regions waits for a descheduled
thread, so a forward of the GPT-2-shaped model took 0.37 s on an idle machine and about 4 s
beside one other 2-core process.

Usage:
    .venv/bin/python scripts/bench_attribution.py
    .venv/bin/python scripts/bench_attribution.py --only find_circuit   # line 3 alone
    .venv/bin/python scripts/bench_attribution.py --only families       # atp_family: GPT-2 and Llama bridges

With ``--only find_circuit`` the forward time that decides line 3's batch size is the best of
``REPEATS`` no-grad forwards of the corrupt batch (line 1's ``forward_seconds``, measured alone).
"""

from __future__ import annotations

import argparse
import gc
import importlib.metadata
import json
import os
import resource
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

# Run from a checkout without installing the package (`make` installs it in editable mode).
ROOT = str(Path(__file__).resolve().parents[1])
SCRIPTS = str(Path(__file__).resolve().parent)
for _path in (ROOT, SCRIPTS):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from bench_patching import CFG as SMALL_CFG  # noqa: E402
from bench_patching import log, random_tl_state  # noqa: E402

import tl_submodels as tls  # noqa: E402
from tl_submodels import discovery  # noqa: E402
from tl_submodels import model as tlmodel  # noqa: E402
from tl_submodels.components import Kind  # noqa: E402

GPT2_CFG: dict[str, Any] = dict(SMALL_CFG, n_layers=12, n_heads=12, d_model=768, d_head=64, d_mlp=3072, n_ctx=64)
GPT2_STD = 0.2 * (SMALL_CFG["d_model"] / GPT2_CFG["d_model"]) ** 0.5
GPT2_BATCH, GPT2_SEQ, GPT2_DIFF_AT = 8, 64, 32
SMALL_BATCH, SMALL_SEQ, SMALL_DIFF_AT = 16, 32, 16
# find_circuit falls back to this size when the exact search would take longer than EXACT_BUDGET_S.
REDUCED_BATCH, REDUCED_SEQ, REDUCED_DIFF_AT = 4, 32, 16
EXACT_BUDGET_S = 240.0
# Cost of find_circuit(method="patch") in forwards of the whole batch: tls.patch of 144 heads and
# 12 MLP layers took about 15 forwards' time on this CPU, the doubling/bisection search about 20
# forwards, pruning one forward per member (at most all 156 components; half assumed).
EXACT_FORWARDS = 15 + 20 + 156 // 2
REPEATS = 3
SLOW_S = 10.0
ROUNDS_BUDGET_S = 45.0
ATP_KINDS: tuple[Kind, ...] = ("heads", "neurons", "mlps")
CircuitMethod = Literal["patch", "atp"]
Emit = Callable[..., None]


def make_task(model: Any, cfg: dict[str, Any], batch: int, seq: int, diff_at: int, seed: int = 1) -> tls.Task:
    """Random clean prompts; corrupt ones equal up to ``diff_at``; a logit difference between random tokens."""
    g = torch.Generator().manual_seed(seed)
    V = cfg["d_vocab"]
    clean = torch.randint(0, V, (batch, seq), generator=g)
    corrupt = clean.clone()
    corrupt[:, diff_at:] = torch.randint(0, V, (batch, seq - diff_at), generator=g)
    answer = torch.randint(0, V, (batch,), generator=g)
    wrong = (answer + 1 + torch.randint(0, V - 1, (batch,), generator=g)) % V
    return tls.Task.from_tokens(model, clean=clean, corrupt=corrupt, answer=answer, wrong=wrong, name="random")


def timed_rounds(
    fns: dict[str, Callable[[], Any]], repeats: int = REPEATS, budget_s: float = ROUNDS_BUDGET_S
) -> tuple[dict[str, list[float]], dict[str, Any]]:
    """Seconds of each call per round, and each function's last result; rounds call every function in turn.

    One warm-up round first; if it took longer than ``SLOW_S`` it is kept as the first round. Then
    rounds until there are ``repeats`` or ``budget_s`` has passed since the first timed round began.
    """

    def one_round() -> tuple[dict[str, float], dict[str, Any]]:
        times, results = {}, {}
        for name, fn in fns.items():
            t0 = time.perf_counter()
            results[name] = fn()
            times[name] = time.perf_counter() - t0
        return times, results

    start = time.perf_counter()
    first, results = one_round()
    rounds: dict[str, list[float]] = {name: [] for name in fns}
    if sum(first.values()) > SLOW_S:
        for name, t in first.items():
            rounds[name].append(t)
    else:
        start = time.perf_counter()
    while len(rounds[next(iter(fns))]) < repeats and (
        not rounds[next(iter(fns))] or time.perf_counter() - start < budget_s
    ):
        times, results = one_round()
        for name, t in times.items():
            rounds[name].append(t)
    return rounds, results


def paired_ratio_median(num: list[float], den: list[float]) -> float:
    """Median over rounds of num / den (calls made back to back)."""
    return float(torch.tensor([a / b for a, b in zip(num, den, strict=True)]).median())


def build_gpt2_shape() -> tuple[Any, tls.Task]:
    model = tlmodel.build_from_tl_checkpoint(GPT2_CFG, random_tl_state(GPT2_CFG, std=GPT2_STD))
    model.eval()
    return model, make_task(model, GPT2_CFG, GPT2_BATCH, GPT2_SEQ, GPT2_DIFF_AT)


def forward_backward(model: Any, task: tls.Task) -> float:
    """The baseline: one forward and backward of the corrupt batch (parameter gradients too), grads zeroed."""
    loss = task.metric(model(task.corrupt))
    loss.backward()
    model.zero_grad(set_to_none=True)
    return float(loss.detach())


def run_atp(model: Any, task: tls.Task) -> tls.Scores:
    return tls.attribute(model, task, method="atp", kinds=ATP_KINDS)


# --------------------------------------------------------------------------------------------
# Peak memory: a fresh process per measurement


def rss_mb() -> float:
    """Current resident set size (Linux /proc), or the high-water mark where /proc is missing."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mem_probe(kind: str) -> int:
    """Child process: build the GPT-2-shaped model, reset the RSS high-water mark, make one call, print JSON."""
    model, task = build_gpt2_shape()
    gc.collect()
    try:  # Linux >= 4.0: "5" resets the peak RSS (VmHWM, and with it ru_maxrss) to the current RSS
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        reset = True
    except OSError:
        reset = False
    before = rss_mb()
    if kind == "atp":
        run_atp(model, task)
    else:
        forward_backward(model, task)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({"peak_rss_mb": peak, "rss_before_call_mb": before, "hwm_reset": reset}), flush=True)
    return 0


def spawn_probe(kind: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--mem-probe", kind], stdout=subprocess.PIPE, text=True
    )


def read_probe(proc: subprocess.Popen[str]) -> dict[str, Any]:
    out, _ = proc.communicate()
    if proc.returncode != 0:
        return {"error": f"memory probe exited with {proc.returncode}"}
    return json.loads(out.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# find_circuit


class NoMethodArgument(Exception):
    """find_circuit does not take ``method`` yet."""


@contextmanager
def scoring_timer(module: Any = discovery) -> Iterator[dict[str, float]]:
    """Seconds the functions of ``module`` spend inside attribute() and patch() (the scoring), by wrapping
    the names it calls.

    For discovery, the rest of a find_circuit call is the search: ablated forwards while growing and
    pruning; for factorize, the factorisation and the validation of its parts.
    """
    spent = {"attribute": 0.0, "patch": 0.0, "patch_calls": 0}
    saved = {name: getattr(module, name) for name in ("attribute", "patch") if hasattr(module, name)}

    def wrap(name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0
                if name == "patch":
                    spent["patch_calls"] += 1

        return timed

    for name, fn in saved.items():
        setattr(module, name, wrap(name, fn))
    try:
        yield spent
    finally:
        for name, fn in saved.items():
            setattr(module, name, fn)


def circuit_run(model: Any, task: tls.Task, method: CircuitMethod) -> tuple[dict[str, Any], tls.SubModel | None]:
    """Time one find_circuit call and evaluate its circuit; an error becomes a field of the result."""
    t0 = time.perf_counter()
    with scoring_timer() as spent:
        try:
            circuit = tls.find_circuit(model, task, target=0.9, kinds=("heads", "mlps"), method=method)
        except TypeError as e:
            if "method" in str(e) and "keyword" in str(e):
                raise NoMethodArgument(str(e)) from e
            raise
        except tls.TLSubmodelsError as e:
            return {"seconds": time.perf_counter() - t0, "error": str(e)}, None
    seconds = time.perf_counter() - t0
    ev = tls.evaluate(model, circuit, task, ablation="mean")
    return {
        "seconds": seconds,
        "attribute_seconds": spent["attribute"],
        "patch_seconds": spent["patch"],
        "patch_calls": spent["patch_calls"],
        "search_seconds": seconds - spent["attribute"] - spent["patch"],
        "size": ev.size,
        "components": sorted(str(c) for c in circuit.components),
        "faithfulness": ev.faithfulness,
        "necessity": ev.necessity,
        "description": circuit.description,
    }, circuit


# --------------------------------------------------------------------------------------------


def bench_atp_gpt2_shape(emit: Emit) -> tuple[Any, float]:
    """Line 1. Returns the model and the time of one no-grad forward of the batch (for line 3's estimate)."""
    load_start = round(os.getloadavg()[0], 2)
    log("atp_gpt2_shape: peak-memory probes (two fresh processes), building the model")
    probes = {kind: spawn_probe(kind) for kind in ("atp", "fwd_bwd")}
    model, task = build_gpt2_shape()
    mem = {kind: read_probe(proc) for kind, proc in probes.items()}
    log("atp_gpt2_shape: timing")

    def forward() -> Tensor:
        with torch.no_grad():
            return model(task.corrupt)

    rounds, results = timed_rounds(
        {"forward": forward, "fwd_bwd": lambda: forward_backward(model, task), "ours": lambda: run_atp(model, task)}
    )
    fwd_s, base_s, ours_s = (min(rounds[k]) for k in ("forward", "fwd_bwd", "ours"))
    scores = results["ours"]
    assert scores.heads is not None and scores.neurons is not None and scores.mlps is not None
    ok = "error" not in mem["atp"] and "error" not in mem["fwd_bwd"]
    emit(
        "atp_gpt2_shape",
        load_avg_1m_start=load_start,
        ours_seconds=ours_s,
        fwd_bwd_seconds=base_s,
        ratio_ours_to_fwd_bwd=ours_s / base_s,
        paired_ratio_median=paired_ratio_median(rounds["ours"], rounds["fwd_bwd"]),
        rounds=len(rounds["ours"]),
        target_ratio="<= 3",
        forward_seconds=fwd_s,
        ours_peak_rss_mb=mem["atp"].get("peak_rss_mb", mem["atp"].get("error")),
        ours_rss_before_call_mb=mem["atp"].get("rss_before_call_mb"),
        fwd_bwd_peak_rss_mb=mem["fwd_bwd"].get("peak_rss_mb", mem["fwd_bwd"].get("error")),
        fwd_bwd_rss_before_call_mb=mem["fwd_bwd"].get("rss_before_call_mb"),
        peak_rss_delta_ratio=(
            (mem["atp"]["peak_rss_mb"] - mem["atp"]["rss_before_call_mb"])
            / (mem["fwd_bwd"]["peak_rss_mb"] - mem["fwd_bwd"]["rss_before_call_mb"])
            if ok
            else None
        ),
        peak_rss_is_call_only=bool(ok and mem["atp"]["hwm_reset"] and mem["fwd_bwd"]["hwm_reset"]),
        n_heads=scores.heads.numel(),
        n_neurons=scores.neurons.numel(),
        n_mlps=scores.mlps.numel(),
        clean_metric=scores.clean_metric,
        corrupt_metric=scores.corrupt_metric,
        batch=GPT2_BATCH,
        seq=GPT2_SEQ,
        diff_at=GPT2_DIFF_AT,
        d_vocab=GPT2_CFG["d_vocab"],
        d_vocab_note="GPT-2 small has 50257; 1000 here (smaller embedding and unembedding only)",
        weight_std=GPT2_STD,
    )
    return model, fwd_s


def bench_atp_vs_tl4(emit: Emit) -> None:
    """Line 2: TL 4's attribution_patch, one call per example, against one tls.attribute call."""
    load_start = round(os.getloadavg()[0], 2)
    log("atp_vs_tl4")
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch

    model = tlmodel.build_from_tl_checkpoint(SMALL_CFG, random_tl_state(SMALL_CFG))
    model.eval()
    task = make_task(model, SMALL_CFG, SMALL_BATCH, SMALL_SEQ, SMALL_DIFF_AT)

    def tl_loop() -> dict[Any, float]:
        totals: dict[Any, float] = {}
        for i in range(task.batch):  # TL's metric reads one example; ours is the batch mean
            one = task.subset([i])
            result = attribution_patch(model, one.clean, one.corrupt, one.metric)
            for node, value in result.node_scores.items():
                totals[node] = totals.get(node, 0.0) + value / task.batch
        return totals

    def ours() -> tls.Scores:
        return tls.attribute(model, task, method="atp", kinds=("heads", "mlps"), per_position=True)

    rounds, results = timed_rounds({"tl": tl_loop, "ours": ours})
    tl_s, ours_s = min(rounds["tl"]), min(rounds["ours"])
    reference, scores = results["tl"], results["ours"]
    assert scores.heads is not None and scores.mlps is not None
    gap = scores.clean_metric - scores.corrupt_metric
    diffs, scale = [], 0.0
    for node, value in reference.items():
        if node.kind == "attn_head_out":
            mine = float(scores.heads[node.layer, node.position, node.head]) * gap
        elif node.kind == "mlp_out":
            mine = float(scores.mlps[node.layer, node.position]) * gap
        else:
            continue
        diffs.append(abs(mine - value))
        scale = max(scale, abs(value))
    emit(
        "atp_vs_tl4",
        load_avg_1m_start=load_start,
        tl_seconds=tl_s,
        ours_seconds=ours_s,
        speedup=tl_s / ours_s,
        paired_speedup_median=paired_ratio_median(rounds["tl"], rounds["ours"]),
        rounds=len(rounds["ours"]),
        target_speedup=">= 5",
        max_abs_diff=max(diffs),
        target_max_abs_diff="<= 1e-4",
        max_abs_tl_score=scale,
        nodes_compared=len(diffs),
        tl_calls_per_run=task.batch,
        clean_metric=scores.clean_metric,
        corrupt_metric=scores.corrupt_metric,
        batch=SMALL_BATCH,
        seq=SMALL_SEQ,
        diff_at=SMALL_DIFF_AT,
    )


def bench_atp_family(emit: Emit, family: str) -> None:
    """``atp_family``: as line 2 on a model of ``hf_shapes.py`` (a HuggingFace-backed bridge on TL 4), batch 16 x 32;
    also counts the model forwards and backward passes one ``tls.attribute`` call makes."""
    import hf_shapes
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch

    load_start = round(os.getloadavg()[0], 2)
    log(f"atp_family {family}")
    model = hf_shapes.load(family)
    task = hf_shapes.task(model, SMALL_BATCH, SMALL_SEQ, SMALL_DIFF_AT)

    def tl_loop() -> dict[Any, float]:
        totals: dict[Any, float] = {}
        for i in range(task.batch):  # TL's metric reads one example; ours is the batch mean
            one = task.subset([i])
            result = attribution_patch(model, one.clean, one.corrupt, one.metric)
            for node, value in result.node_scores.items():
                totals[node] = totals.get(node, 0.0) + value / task.batch
        return totals

    def ours() -> tls.Scores:
        return tls.attribute(model, task, method="atp", kinds=("heads", "mlps"), per_position=True)

    passes = {"forward": 0, "backward": 0}
    cls = type(model)
    real_forward = cls.forward

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        passes["forward"] += 1
        out = real_forward(self, *args, **kwargs)
        if isinstance(out, Tensor) and out.requires_grad:
            out.register_hook(lambda grad: passes.__setitem__("backward", passes["backward"] + 1))
        return out

    cls.forward = counted  # type: ignore[method-assign]
    try:
        ours()
    finally:
        cls.forward = real_forward  # type: ignore[method-assign]
    rounds, results = timed_rounds({"tl": tl_loop, "ours": ours})
    tl_s, ours_s = min(rounds["tl"]), min(rounds["ours"])
    reference, scores = results["tl"], results["ours"]
    assert scores.heads is not None and scores.mlps is not None
    gap = scores.clean_metric - scores.corrupt_metric
    diffs, scale = [], 0.0
    for node, value in reference.items():
        if node.kind == "attn_head_out":
            mine = float(scores.heads[node.layer, node.position, node.head]) * gap
        elif node.kind == "mlp_out":
            mine = float(scores.mlps[node.layer, node.position]) * gap
        else:
            continue
        diffs.append(abs(mine - value))
        scale = max(scale, abs(value))
    emit(
        "atp_family",
        family=family,
        model=tlmodel.adapter(model).source,
        load_avg_1m_start=load_start,
        tl_seconds=tl_s,
        ours_seconds=ours_s,
        speedup=tl_s / ours_s,
        paired_speedup_median=paired_ratio_median(rounds["tl"], rounds["ours"]),
        rounds=len(rounds["ours"]),
        target_speedup=">= 5",
        ours_model_forwards=passes["forward"],
        ours_backward_passes=passes["backward"],
        max_abs_diff=max(diffs),
        max_abs_tl_score=scale,
        nodes_compared=len(diffs),
        tl_calls_per_run=task.batch,
        batch=SMALL_BATCH,
        seq=SMALL_SEQ,
        diff_at=SMALL_DIFF_AT,
    )


def bench_find_circuit(emit: Emit, model: Any, fwd_s: float) -> None:
    """Line 3: find_circuit ranked by attribution (checked exactly) vs the exact search, on the GPT-2-shaped model."""
    load_start = round(os.getloadavg()[0], 2)
    log("find_circuit_attribution_vs_exact")
    est_exact_s = fwd_s * EXACT_FORWARDS
    reduced = est_exact_s > EXACT_BUDGET_S
    batch, seq, diff_at = (
        (REDUCED_BATCH, REDUCED_SEQ, REDUCED_DIFF_AT) if reduced else (GPT2_BATCH, GPT2_SEQ, GPT2_DIFF_AT)
    )
    task = make_task(model, GPT2_CFG, batch, seq, diff_at)
    size_note = (
        f"reduced from batch {GPT2_BATCH} x {GPT2_SEQ} tokens: the exact search was estimated at "
        f"{est_exact_s:.0f}s (> {EXACT_BUDGET_S:.0f}s budget) from {EXACT_FORWARDS} forwards of {fwd_s:.2f}s"
        if reduced
        else f"full size: exact search estimated at {est_exact_s:.0f}s"
    )
    log(size_note)
    try:
        log("find_circuit(method='atp')")
        attr, attr_circuit = circuit_run(model, task, "atp")
    except NoMethodArgument as e:
        log(f"find_circuit has no method argument: {e}")
        emit("find_circuit_attribution_vs_exact", skipped="find_circuit has no method argument yet")
        return
    log(f"atp: {attr}")
    log("find_circuit(method='exact')")
    exact, exact_circuit = circuit_run(model, task, "patch")
    log(f"exact: {exact}")
    shared = None
    if attr_circuit is not None and exact_circuit is not None:
        shared = len(set(attr_circuit.components) & set(exact_circuit.components))
    emit(
        "find_circuit_attribution_vs_exact",
        load_avg_1m_start=load_start,
        **{f"attribution_{k}": v for k, v in attr.items()},
        **{f"exact_{k}": v for k, v in exact.items()},
        ratio_exact_to_attribution_seconds=exact["seconds"] / attr["seconds"],
        target_ratio=">= 5",
        shared_components=shared,
        target=0.9,
        kinds="heads,mlps",
        n_components=GPT2_CFG["n_layers"] * (GPT2_CFG["n_heads"] + 1),
        timed_once=True,
        batch=batch,
        seq=seq,
        diff_at=diff_at,
        size_note=size_note,
    )


def gpt2_forward_seconds() -> tuple[Any, float]:
    """The GPT-2-shaped model and the best of ``REPEATS`` no-grad forwards of its batch (after a warm-up)."""
    model, task = build_gpt2_shape()
    times = []
    with torch.no_grad():
        for _ in range(REPEATS + 1):
            t0 = time.perf_counter()
            model(task.corrupt)
            times.append(time.perf_counter() - t0)
    return model, min(times[1:])


def main(only: str | None = None, families: list[str] | None = None) -> int:
    torch.manual_seed(0)
    common = {
        "threads": torch.get_num_threads(),
        "transformer_lens": importlib.metadata.version("transformer-lens"),
        "torch": torch.__version__,
        "model": "TransformerBridge" if tls.model.INSTALLED_LINE == 4 else "HookedTransformer",
    }

    def emit(name: str, **fields: Any) -> None:
        # 6 significant digits (not decimals: a max_abs_diff of 3e-7 must not print as 0.0)
        rounded = {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in fields.items()}
        load = round(os.getloadavg()[0], 2)  # other work on the machine skews every timing
        print(json.dumps({"bench": name, **rounded, **common, "load_avg_1m": load}), flush=True)

    if only == "families":
        for family in families or ["gpt2", "llama"]:
            bench_atp_family(emit, family)
        log("done")
        return 0
    if only == "find_circuit":
        model, fwd_s = gpt2_forward_seconds()
        bench_find_circuit(emit, model, fwd_s)
        log("done")
        return 0
    if only in (None, "atp_gpt2_shape", "atp_vs_tl4"):
        model, fwd_s = bench_atp_gpt2_shape(emit) if only != "atp_vs_tl4" else (None, 0.0)
        if only != "atp_gpt2_shape":
            bench_atp_vs_tl4(emit)
        if only is None:
            bench_find_circuit(emit, model, fwd_s)
    log("done")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Benchmark tls.attribute on CPU.")
    parser.add_argument("--mem-probe", choices=("atp", "fwd_bwd"), help=argparse.SUPPRESS)
    parser.add_argument(
        "--only",
        choices=("atp_gpt2_shape", "atp_vs_tl4", "find_circuit", "families"),
        help="run one benchmark line only",
    )
    parser.add_argument("--families", default="gpt2,llama", help="with --only families: hf_shapes.py's models")
    args = parser.parse_args()
    sys.exit(mem_probe(args.mem_probe) if args.mem_probe else main(args.only, args.families.split(",")))
