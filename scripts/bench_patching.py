"""Benchmark tls.patch against TransformerLens' own activation patching functions (CPU).

Builds a random 4-layer TransformerBridge (8 heads, d_model 256, d_mlp 1024, GELU, LayerNorm,
standard positional embeddings), a 16 x 32 token clean/corrupt batch that differs from position 16
on, and a logit-difference metric. Each line of stdout is one JSON object: the time of TL's
function and of ``tls.patch`` for the same scores (best of 3 after one warm-up), the speedup, and
the largest difference between the raw metric values of the two. Progress goes to stderr.

TL's functions run under ``torch.no_grad()`` (no autograd graph: a conservative baseline). Every
line carries the 1-minute load average: about the thread count when this script runs alone, more
when other work shares the CPU (timings are then unreliable). Calls slower than ``SLOW_S`` are
timed once. ``*_small_batch`` fields time ``tls.patch(..., batch_size=SMALL_BATCH)`` beside the
default memory budget, which on CPU makes tensors far larger than the caches.

Usage:
    .venv/bin/python scripts/bench_patching.py
    .venv/bin/python scripts/bench_patching.py --families gpt2,llama,gemma2,neox   # hf_shapes.py's models
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from transformer_lens import patching as tl_patching

# Run from a checkout without installing the package (`make` installs it in editable mode).
ROOT = str(Path(__file__).resolve().parents[1])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import tl_submodels as tls  # noqa: E402
from tl_submodels import model as tlmodel  # noqa: E402

CFG: dict[str, Any] = {
    "n_layers": 4,
    "n_heads": 8,
    "d_model": 256,
    "d_head": 32,
    "d_mlp": 1024,
    "d_vocab": 1000,
    "n_ctx": 64,
    "attn_only": False,
    "act_fn": "gelu_new",
    "normalization_type": "LN",
    "positional_embedding_type": "standard",
}
BATCH, SEQ, DIFF_AT = 16, 32, 16
REPEATS = 3
# A call whose first run takes longer than this is timed once only (TL's heads_by_pos: 1024 forwards
# per call, already an average over many; tls.patch of every neuron), to keep the script near 3 minutes.
SLOW_S = 15.0
N_NEURON_SAMPLES = 20
# tls.patch's default batch (max_memory_mb=1024) is far larger than a CPU cache; also time this one.
SMALL_BATCH = 256


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def random_tl_state(cfg: dict[str, Any], seed: int = 0, std: float = 0.2) -> dict[str, Tensor]:
    """Random weights in HookedTransformer state-dict layout (std large enough for nonlinear effects)."""
    g = torch.Generator().manual_seed(seed)
    L, H, D, E, V, C, M = (cfg[k] for k in ("n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx", "d_mlp"))

    def r(*shape: int) -> Tensor:
        return torch.randn(*shape, generator=g) * std

    s = {
        "embed.W_E": r(V, D),
        "pos_embed.W_pos": r(C, D),
        "ln_final.w": 1 + r(D) / 3,
        "ln_final.b": r(D) / 3,
        "unembed.W_U": r(D, V),
        "unembed.b_U": r(V),
    }
    for l in range(L):
        b = f"blocks.{l}."
        s |= {b + "ln1.w": 1 + r(D) / 3, b + "ln1.b": r(D) / 3}
        for n in "QKV":
            s[b + f"attn.W_{n}"] = r(H, D, E)
            s[b + f"attn.b_{n}"] = r(H, E)
        s |= {b + "attn.W_O": r(H, E, D), b + "attn.b_O": r(D)}
        s |= {
            b + "ln2.w": 1 + r(D) / 3,
            b + "ln2.b": r(D) / 3,
            b + "mlp.W_in": r(D, M),
            b + "mlp.b_in": r(M),
            b + "mlp.W_out": r(M, D),
            b + "mlp.b_out": r(D),
        }
    return s


def make_task(model: Any, seed: int = 1) -> tls.Task:
    g = torch.Generator().manual_seed(seed)
    V = CFG["d_vocab"]
    clean = torch.randint(0, V, (BATCH, SEQ), generator=g)
    corrupt = clean.clone()
    corrupt[:, DIFF_AT:] = torch.randint(0, V, (BATCH, SEQ - DIFF_AT), generator=g)
    answer = torch.randint(0, V, (BATCH,), generator=g)
    wrong = (answer + 1 + torch.randint(0, V - 1, (BATCH,), generator=g)) % V
    return tls.Task.from_tokens(model, clean=clean, corrupt=corrupt, answer=answer, wrong=wrong, name="random")


def best_of(fn: Callable[[], Any], repeats: int = REPEATS, slow_s: float | None = None) -> tuple[float, int, Any]:
    """(best seconds, timed runs, last result): one warm-up call, then the min of ``repeats`` timed calls.

    Where ``slow_s`` is given and the warm-up call took longer, that call is the only timing.
    """
    t0 = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t0
    if slow_s is not None and first > slow_s:
        return first, 1, out
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), repeats, out


def run_ours(model: Any, task: tls.Task, **kw: Any) -> tuple[tls.Scores, bool]:
    """tls.patch, and whether it warned that the fast path fell back to hooks."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        scores = tls.patch(model, task, **kw)
    fell_back = any("fast patching path differs" in str(w.message) for w in caught)
    return scores, fell_back


def max_abs_diff(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    if a.shape != b.shape:
        raise RuntimeError(f"shape mismatch: ours {list(a.shape)} vs TL {list(b.shape)}")
    return float((a - b).abs().max())


def main() -> int:
    torch.manual_seed(0)
    common = {
        "threads": torch.get_num_threads(),
        "transformer_lens": importlib.metadata.version("transformer-lens"),
        "torch": torch.__version__,
        "batch": BATCH,
        "seq": SEQ,
        "diff_at": DIFF_AT,
    }

    def emit(name: str, **fields: Any) -> None:
        rounded = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in fields.items()}
        load = round(os.getloadavg()[0], 2)  # other work on the machine skews every timing
        print(json.dumps({"bench": name, **rounded, **common, "load_avg_1m": load}), flush=True)

    log("building model")
    model = tlmodel.build_from_tl_checkpoint(CFG, random_tl_state(CFG))
    model.eval()
    common["model"] = type(model).__name__
    task = make_task(model)
    clean, corrupt = task.clean, task.corrupt
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean)
        clean_metric = float(task.metric(model(clean)))
        corrupt_metric = float(task.metric(model(corrupt)))
    log(f"logit_diff clean={clean_metric:.4f} corrupt={corrupt_metric:.4f}")

    # Scale: one plain forward of the corrupt batch.
    def forward() -> Tensor:
        with torch.no_grad():
            return model(corrupt)

    fwd_s, _, _ = best_of(forward, repeats=10)
    emit("forward", seconds=fwd_s, clean_metric=clean_metric, corrupt_metric=corrupt_metric)

    def tl(fn: Callable[..., Tensor]) -> Callable[[], Tensor]:
        def call() -> Tensor:
            with torch.no_grad():  # conservative baseline: no autograd graph for TL either
                return fn(model, corrupt, clean_cache, task.metric)

        return call

    # 1. heads over all positions.
    log("heads_all_pos")
    tl_s, tl_n, tl_res = best_of(tl(tl_patching.get_act_patch_attn_head_out_all_pos))
    ours_s, _, (scores, fb) = best_of(lambda: run_ours(model, task, kinds="heads"))
    # TL's function as a user calls it, with autograd on (TL does not turn it off itself).
    tl_grad_s, _, _ = best_of(
        lambda: tl_patching.get_act_patch_attn_head_out_all_pos(model, corrupt, clean_cache, task.metric)
    )
    heads_all_tl_s = tl_s
    emit(
        "heads_all_pos",
        tl_seconds=tl_s,
        tl_repeats=tl_n,
        ours_seconds=ours_s,
        speedup=tl_s / ours_s,
        tl_default_grad_seconds=tl_grad_s,
        speedup_vs_tl_default_grad=tl_grad_s / ours_s,
        max_abs_diff=max_abs_diff(scores.raw_heads, tl_res),
        tl_forwards=CFG["n_layers"] * CFG["n_heads"],
        fast_path_fell_back=fb,
    )

    # 2. MLP layer outputs per position.
    log("mlp_out_by_pos")
    tl_s, tl_n, tl_res = best_of(tl(tl_patching.get_act_patch_mlp_out))
    ours_s, _, (scores, fb) = best_of(lambda: run_ours(model, task, kinds="mlps", per_position=True))
    emit(
        "mlp_out_by_pos",
        tl_seconds=tl_s,
        tl_repeats=tl_n,
        ours_seconds=ours_s,
        speedup=tl_s / ours_s,
        max_abs_diff=max_abs_diff(scores.raw_mlps, tl_res),
        tl_forwards=CFG["n_layers"] * SEQ,
        fast_path_fell_back=fb,
    )

    # 3. heads per position (TL: one forward per (layer, pos, head)).
    log("heads_by_pos (TL runs 1024 forwards per call)")
    tl_s, tl_n, tl_res = best_of(tl(tl_patching.get_act_patch_attn_head_out_by_pos), slow_s=SLOW_S)
    ours_s, _, (scores, fb) = best_of(lambda: run_ours(model, task, kinds="heads", per_position=True))
    small_s, _, (small, _) = best_of(
        lambda: run_ours(model, task, kinds="heads", per_position=True, batch_size=SMALL_BATCH)
    )
    emit(
        "heads_by_pos",
        tl_seconds=tl_s,
        tl_repeats=tl_n,
        ours_seconds=ours_s,
        speedup=tl_s / ours_s,
        max_abs_diff=max_abs_diff(scores.raw_heads, tl_res),
        ours_seconds_small_batch=small_s,
        speedup_small_batch=tl_s / small_s,
        small_batch_size=SMALL_BATCH,
        max_abs_diff_small_batch=max_abs_diff(small.raw_heads, tl_res),
        tl_forwards=CFG["n_layers"] * CFG["n_heads"] * SEQ,
        fast_path_fell_back=fb,
    )

    # 4. What each trick contributes, heads over all positions. Each step adds one to the last:
    #    batched hooks (many patches per forward, TL's own forward) -> the weight-level path that
    #    starts after the patched site -> + reuse of the shared prefix's keys/values -> + the last
    #    layer computed only where the metric reads (= the default).
    log("heads_all_pos tricks")
    from tl_submodels import patching as tls_patching

    def timed(prefix: bool, prune: bool, fast: bool = True) -> tuple[float, tls.Scores]:
        tls_patching.TRICKS.update(prefix_reuse=prefix, prune_last_layer=prune)
        try:
            seconds, _, (scores, _) = best_of(lambda: run_ours(model, task, kinds="heads", fast=fast))
        finally:
            tls_patching.TRICKS.update(prefix_reuse=True, prune_last_layer=True)
        return seconds, scores

    hooks_s, hooks_scores = timed(True, True, fast=False)
    site_s, _ = timed(False, False)
    prefix_s, _ = timed(True, False)
    fast_s, fast_scores = timed(True, True)
    emit(
        "heads_all_pos_tricks",
        tl_seconds=heads_all_tl_s,
        batched_hooks_seconds=hooks_s,
        after_site_seconds=site_s,
        plus_prefix_reuse_seconds=prefix_s,
        plus_last_layer_pruning_seconds=fast_s,
        speedup_batching=heads_all_tl_s / hooks_s,
        speedup_after_site=hooks_s / site_s,
        speedup_prefix_reuse=site_s / prefix_s,
        speedup_last_layer_pruning=prefix_s / fast_s,
        speedup_total=heads_all_tl_s / fast_s,
        max_abs_diff_hooks_vs_fast=max_abs_diff(hooks_scores.raw_heads, fast_scores.raw_heads),
    )

    # 5. Every neuron.
    log("neurons")
    ours_s, ours_n, (scores, fb) = best_of(lambda: run_ours(model, task, kinds="neurons"), slow_s=SLOW_S)
    small_s, small_n, (small, _) = best_of(
        lambda: run_ours(model, task, kinds="neurons", batch_size=SMALL_BATCH), slow_s=SLOW_S
    )
    n_layers, d_mlp = CFG["n_layers"], CFG["d_mlp"]
    g = torch.Generator().manual_seed(2)
    picks = [
        (int(i) // d_mlp, int(i) % d_mlp) for i in torch.randperm(n_layers * d_mlp, generator=g)[:N_NEURON_SAMPLES]
    ]

    def one_neuron(layer: int, n: int) -> float:
        name = tlmodel.hook_post(layer)
        src = clean_cache[name][:, :, n]

        def hook(act: Tensor, hook: Any = None) -> Tensor:
            act[:, :, n] = src
            return act

        with torch.no_grad():
            return float(task.metric(model.run_with_hooks(corrupt, fwd_hooks=[(name, hook)])))

    one_neuron(*picks[0])  # warm-up
    values, times = [], []
    for layer, n in picks:
        t0 = time.perf_counter()
        values.append(one_neuron(layer, n))
        times.append(time.perf_counter() - t0)
    per_fwd = sum(times) / len(times)
    est_s = per_fwd * n_layers * d_mlp
    assert scores.raw_neurons is not None and small.raw_neurons is not None
    sample_diff = max(abs(v - float(scores.raw_neurons[layer, n])) for v, (layer, n) in zip(values, picks, strict=True))
    emit(
        "neurons",
        ours_seconds=ours_s,
        ours_repeats=ours_n,
        n_neurons=n_layers * d_mlp,
        tl_style_seconds_per_forward=per_fwd,
        tl_style_estimated_seconds=est_s,
        speedup=est_s / ours_s,
        ours_seconds_small_batch=small_s,
        ours_repeats_small_batch=small_n,
        speedup_small_batch=est_s / small_s,
        small_batch_size=SMALL_BATCH,
        max_abs_diff_small_vs_default=max_abs_diff(small.raw_neurons, scores.raw_neurons),
        sampled_neurons=len(picks),
        max_abs_diff_sampled=sample_diff,
        fast_path_fell_back=fb,
    )
    log("done")
    return 0


def bench_family(family: str, emit: Callable[..., None]) -> None:
    """The lines of one family: see :func:`bench_families`."""
    import hf_shapes

    from tl_submodels.ablation import AblatedRuns, Ablator

    log(f"{family}: building")
    model = hf_shapes.load(family)
    ad = tlmodel.adapter(model)
    task = hf_shapes.task(model, BATCH, SEQ, DIFF_AT)
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(task.clean)
    shape = {"family": family, "model": ad.source, "path": ad.fast_path, "why_hooks": ad.why_hooks}

    def tl_heads() -> Tensor:
        with torch.no_grad():
            return tl_patching.get_act_patch_attn_head_out_all_pos(model, task.corrupt, clean_cache, task.metric)

    log(f"{family}: heads_all_pos")
    ours_s, _, (scores, fb) = best_of(lambda: run_ours(model, task, kinds="heads"), repeats=2)
    tl_times = []
    for _ in range(2):
        t0 = time.perf_counter()
        ref = tl_heads()
        tl_times.append(time.perf_counter() - t0)
    again, _, _ = best_of(lambda: run_ours(model, task, kinds="heads"), repeats=1)
    ours_s = min(ours_s, again)
    emit(
        "family_heads_all_pos",
        **shape,
        tl_seconds=min(tl_times),
        ours_seconds=ours_s,
        speedup=min(tl_times) / ours_s,
        max_abs_diff=max_abs_diff(scores.raw_heads, ref),
        metric_gap=scores.clean_metric - scores.corrupt_metric,
        fast_path_fell_back=fb,
    )

    if family == "llama":
        log(f"{family}: neurons (sampled)")
        info = tls.check_model(model, ("neurons",))
        g = torch.Generator().manual_seed(2)
        n_total = info.n_layers * info.n_units("neurons")
        picks = torch.randperm(n_total, generator=g)[:256].tolist()
        names = [f"L{i // info.n_units('neurons')}N{i % info.n_units('neurons')}" for i in picks]
        ours_s, _, (nscores, fb) = best_of(lambda: run_ours(model, task, kinds="neurons", components=names), 1)
        per_ours = ours_s / len(names)
        one: list[float] = []
        worst = 0.0
        for name in names[:N_NEURON_SAMPLES]:
            c = tls.parse_component(name)
            hook_name = tlmodel.hook_post(c.layer)
            src = clean_cache[hook_name][:, :, c.index]

            def hook(act: Tensor, hook: Any = None, src: Tensor = src, n: int = c.index) -> Tensor:
                act[:, :, n] = src
                return act

            t0 = time.perf_counter()
            with torch.no_grad():
                value = float(task.metric(model.run_with_hooks(task.corrupt, fwd_hooks=[(hook_name, hook)])))
            one.append(time.perf_counter() - t0)
            assert nscores.raw_neurons is not None
            worst = max(worst, abs(value - float(nscores.raw_neurons[c.layer, c.index])))
        per_tl = sorted(one)[len(one) // 2]
        emit(
            "family_neurons",
            **shape,
            n_neurons=n_total,
            ours_neurons_timed=len(names),
            ours_seconds_per_neuron=per_ours,
            tl_style_seconds_per_forward_median=per_tl,
            tl_style_forwards_timed=len(one),
            speedup=per_tl / per_ours,
            estimated_ours_seconds_all=per_ours * n_total,
            estimated_tl_style_seconds_all=per_tl * n_total,
            max_abs_diff_sampled=worst,
            fast_path_fell_back=fb,
        )

    log(f"{family}: ablated forwards")
    g = torch.Generator().manual_seed(3)
    pool = [f"L{layer}H{h}" for layer in range(model.cfg.n_layers) for h in range(model.cfg.n_heads)]
    pool += [f"L{layer}N{n}" for layer in range(model.cfg.n_layers) for n in range(0, model.cfg.d_mlp, 7)]
    sets = [[pool[int(i)] for i in torch.randperm(len(pool), generator=g)[:12]] for _ in range(24)]
    ablator = Ablator(model, ablation="mean", reference=task.corrupt)

    def sweep() -> tuple[Any, list[Tensor]]:
        runs = AblatedRuns(model, ablator, [task])
        return runs, [runs.finals(s)[0] for s in sets]

    fast_s, _, (runs, fast_out) = best_of(sweep, repeats=2)
    real = tlmodel.Adapter.standard_weights
    tlmodel.Adapter.standard_weights = lambda self, *a: None  # type: ignore[method-assign]
    try:
        hooks_s, _, (_, hooks_out) = best_of(sweep, repeats=2)
    finally:
        tlmodel.Adapter.standard_weights = real  # type: ignore[method-assign]
    emit(
        "family_ablated_forwards",
        **shape,
        sets=len(sets),
        set_size=12,
        weights_path=runs.weights is not None,
        weights_seconds=fast_s,
        hooks_seconds=hooks_s,
        speedup=hooks_s / fast_s,
        max_abs_diff=max(max_abs_diff(a, b) for a, b in zip(fast_out, hooks_out, strict=True)),
    )


def bench_families(families: list[str]) -> int:
    """One line per family of ``hf_shapes.py`` (the models users load: HuggingFace-backed bridges on TL 4):
    exact head patching over all positions against TL's ``get_act_patch_attn_head_out_all_pos`` (rounds that
    call each in turn, after a warm-up of ours; TL under ``torch.no_grad()``); for ``llama``, neurons against
    one hooked forward per neuron (both sampled, per neuron); and the ablated forwards that ``evaluate``,
    ``factorize`` and ``diff`` run (``AblatedRuns``, mean ablation of 24 random sets) over the weights
    against the same through hooks."""
    common = {
        "threads": torch.get_num_threads(),
        "transformer_lens": importlib.metadata.version("transformer-lens"),
        "torch": torch.__version__,
        "batch": BATCH,
        "seq": SEQ,
        "diff_at": DIFF_AT,
    }

    def emit(name: str, **fields: Any) -> None:
        rounded = {k: (float(f"{v:.6g}") if isinstance(v, float) else v) for k, v in fields.items()}
        print(json.dumps({"bench": name, **rounded, **common, "load_avg_1m": round(os.getloadavg()[0], 2)}), flush=True)

    for family in families:
        bench_family(family, emit)
    log("done")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--families":
        sys.exit(bench_families(sys.argv[2].split(",")))
    sys.exit(main())
