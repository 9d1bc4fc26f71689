"""Gradient attribution: estimate every patching score from a few forward and backward passes.

``atp`` (attribution patching) is the first-order Taylor estimate of activation patching:
``(a_source - a_base) . d metric / d a`` at the base run, for every head (``hook_z``), neuron
(``mlp.hook_post``) and MLP layer (``hook_mlp_out``) from one batched forward and backward over
all examples. ``ig`` integrates the gradient along the straight line from the base to the source
activations of one site (all components of that site move together, the rest of the model runs
freely), batched over the interpolation steps; the scores of one site sum to the exact effect of
patching the whole site as the steps grow (completeness).

Scores come back in the same :class:`~tl_submodels.Scores` type as :func:`tl_submodels.patch`,
normalised the same way; ``raw_*`` hold the estimated metric of each patched run.

Gradients are taken with ``torch.autograd.grad`` with respect to zero-valued leaves added at the
hook points, so the model's parameters, their ``requires_grad`` flags and ``.grad`` are untouched.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from tl_submodels import model as tlmodel
from tl_submodels.components import Kind
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.scores import Direction, Scores, check_scoring, metric_gap
from tl_submodels.sweep import Sweep, distributed, fingerprint_model, fingerprint_task
from tl_submodels.task import Task

Method = Literal["atp", "ig"]


def attribute(
    model: Any,
    task: Task,
    *,
    method: Method = "atp",
    kinds: tuple[Kind, ...] | Kind | None = None,
    per_position: bool = False,
    direction: Direction = "denoising",
    steps: int = 8,
    batch_size: int | None = None,
    max_memory_mb: float = 1024.0,
    per_example: bool = False,
    progress: bool = False,
    checkpoint: str | Path | None = None,
) -> Scores:
    """Attribution scores for every component, in the Scores type of :func:`tl_submodels.patch`.

    Args:
        model: a TransformerLens model in eval mode.
        task: the clean/corrupt prompts and metric.
        method: ``"atp"`` (one forward and backward) or ``"ig"`` (integrated gradients per site).
        kinds: any of ``"heads"``, ``"neurons"``, ``"mlps"`` (default: heads, and mlps where the
            model has MLPs).
        per_position: heads and MLP layers per position (``[layer, pos, head]``, ``[layer, pos]``).
        direction: ``"denoising"`` (gradients at the corrupt run, towards clean) or ``"noising"``.
        steps: interpolation steps for ``"ig"`` (midpoint rule).
        batch_size: rows per forward (examples, or examples x steps for ``"ig"``); default all.
        max_memory_mb: budget for the gradients held at once; ``"atp"`` splits the sites into
            groups (one forward and backward each) when all of them would not fit.
        per_example: also keep each prompt's estimated effect (``Scores.per_example``).
        progress: show a tqdm progress bar.
        checkpoint: a file for partial results, written atomically after every forward and
            backward; a rerun with the same arguments resumes and gives bit-identical scores.

    Inside an initialised ``torch.distributed`` process group the examples are shared out over
    the ranks (by default one chunk of ``ceil(batch / world_size)`` examples each) and every
    rank returns the whole result; with the same ``batch_size`` it is bit-identical to one
    process, with the default it can differ in the last float bits (other batch shapes).

    Returns:
        Scores whose ``raw_*`` are the estimated metric of each patched run.

    Raises:
        TLSubmodelsError: unknown method, bad kinds or steps, a metric without a clean-corrupt gap.

    Example:
        >>> model = tls.zoo.load("induction-2l")
        >>> task = tls.zoo.task("induction-2l", "induction", n=16)
        >>> scores = tls.attribute(model, task, method="atp")
        >>> scores.heads.shape
        torch.Size([2, 4])
    """
    if method not in ("atp", "ig"):
        raise TLSubmodelsError(f"unknown attribution method {method!r}: choose 'atp' or 'ig'")
    if steps < 1:
        raise TLSubmodelsError(f"steps must be a positive number of interpolation steps, got {steps}")
    info, kinds, task = check_scoring(model, task, kinds, per_position, direction)
    base_tokens, source_tokens = (task.corrupt, task.clean) if direction == "denoising" else (task.clean, task.corrupt)
    sites = [(kind, layer) for layer in range(info.n_layers) for kind in kinds]
    names = [tlmodel.site_hook(kind, layer) for kind, layer in sites]
    base_logits, base = tlmodel.run_cache(model, base_tokens, names)
    source_logits, source = tlmodel.run_cache(model, source_tokens, names)
    base_value, source_value = float(task.metric(base_logits)), float(task.metric(source_logits))
    clean_value, corrupt_value = (source_value, base_value) if direction == "denoising" else (base_value, source_value)
    gap = metric_gap(task, clean_value, corrupt_value)

    def reduce(kind: Kind, contribution: Tensor) -> Tensor:
        """delta * gradient of one site, [batch, pos, ...] -> the per-example score shape."""
        if kind == "heads":
            out = contribution.sum(-1)  # [batch, pos, head]
            return out if per_position else out.sum(1)
        if kind == "neurons":
            return contribution.sum(1)  # [batch, d_mlp]
        out = contribution.sum(-1)  # [batch, pos]
        return out if per_position else out.sum(1)

    # each[name]: every example's estimated effect on its own metric, [batch, ...]. Gradients are of
    # the batch mean, so an example's own effect is batch x its delta . gradient.
    each: dict[str, Tensor] = {}
    site_kind = dict(zip(names, [kind for kind, _ in sites], strict=True))
    # Inside a process group the examples are shared out: by default each rank takes one chunk.
    world = distributed()[1]
    rows = max(1, batch_size or -(-task.batch // world))
    key = None
    if checkpoint is not None:
        key = {
            "fn": "attribute",
            "method": method,
            "model": fingerprint_model(model),
            "task": fingerprint_task(task),
            "kinds": list(kinds),
            "per_position": per_position,
            "direction": direction,
            "steps": steps if method == "ig" else None,
            "rows": rows,
            "max_memory_mb": max_memory_mb,
        }
    if method == "atp":
        chunks = [torch.arange(lo, min(lo + rows, task.batch)) for lo in range(0, task.batch, rows)]
        site_groups = _by_memory(names, base, rows, max_memory_mb)
        items: list[tuple[int, int]] = [(gi, ci) for gi in range(len(site_groups)) for ci in range(len(chunks))]
        sweep = Sweep(len(items), key=key or {}, checkpoint=checkpoint, desc=f"atp {task.name}", progress=progress)
        try:
            for i in sweep.todo():
                gi, ci = items[i]
                group, idx = site_groups[gi], chunks[ci]
                grads = _gradients(model, task, idx, base_tokens, {n: None for n in group})
                sweep.done(
                    i, {n: reduce(site_kind[n], (source[n][idx] - base[n][idx]) * grads[n]).cpu() for n in group}
                )
            done = sweep.gather()
        finally:
            sweep.close()
        for gi, group in enumerate(site_groups):
            parts = [done[i] for i, (g, _) in enumerate(items) if g == gi]  # chunk order
            each |= {n: torch.cat([p[n] for p in parts]) * task.batch for n in group}
    else:
        alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
        per_chunk = max(1, rows // task.batch) if batch_size else steps
        ig_items = [(name, lo) for name in names for lo in range(0, steps, per_chunk)]
        sweep = Sweep(len(ig_items), key=key or {}, checkpoint=checkpoint, desc=f"ig {task.name}", progress=progress)
        try:
            for i in sweep.todo():
                name, lo = ig_items[i]
                delta = source[name] - base[name]
                a = alphas[lo : lo + per_chunk].to(delta.device)
                idx = torch.arange(task.batch).repeat(len(a))
                scale = a.repeat_interleave(task.batch).view(-1, *[1] * (delta.ndim - 1))
                grads = _gradients(
                    model, task, idx, base_tokens, {name: base[name][idx] + scale * delta[idx]}, copies=len(a)
                )
                sweep.done(i, grads[name].view(len(a), task.batch, *delta.shape[1:]).sum(0).cpu())
            done = sweep.gather()
        finally:
            sweep.close()
        for name in names:
            delta = source[name] - base[name]
            total = None
            for i, (n, _) in enumerate(ig_items):  # step-chunk order, as one process sums them
                if n == name:
                    total = done[i] if total is None else total + done[i]
            assert total is not None
            each[name] = reduce(site_kind[name], delta * total.to(delta.device) / steps).cpu() * task.batch

    per_kind: dict[str, Tensor] = {
        kind: torch.stack([each[tlmodel.site_hook(kind, layer)] for layer in range(info.n_layers)], dim=1).detach()
        for kind in kinds
    }  # [batch, layer, ...]
    sign = 1.0 if direction == "denoising" else -1.0
    out = {k: per_kind[k].mean(0) if k in per_kind else None for k in ("heads", "neurons", "mlps")}
    raw = {k: None if v is None else base_value + v for k, v in out.items()}
    norm = {k: None if v is None else sign * v / gap for k, v in out.items()}
    return Scores(
        heads=norm["heads"], neurons=norm["neurons"], mlps=norm["mlps"],
        raw_heads=raw["heads"], raw_neurons=raw["neurons"], raw_mlps=raw["mlps"],
        clean_metric=clean_value, corrupt_metric=corrupt_value, method=method if method == "atp" else f"ig{steps}",
        direction=direction, metric=task.metric_name, per_position=per_position, task=task.name,
        per_example={k: sign * v / gap for k, v in per_kind.items()} if per_example else None,
    )  # fmt: skip


def _by_memory(names: list[str], acts: dict[str, Tensor], rows: int, max_memory_mb: float) -> list[list[str]]:
    """Sites in groups whose gradients for ``rows`` examples fit the budget (one site at least)."""
    groups: list[list[str]] = [[]]
    used = 0.0
    for name in names:
        a = acts[name]
        size = a[0].numel() * a.element_size() * rows / 2**20
        if groups[-1] and used + size > max_memory_mb:
            groups.append([])
            used = 0.0
        groups[-1].append(name)
        used += size
    return groups


def _gradients(
    model: Any,
    task: Task,
    idx: Tensor,
    base_tokens: Tensor,
    sites: dict[str, Tensor | None],
    copies: int = 1,
) -> dict[str, Tensor]:
    """d(sum of the per-example metric / batch) / d(activation) at each site, for rows ``idx``.

    A site given a tensor has its activation replaced by it (the IG path); every site gets a
    zero-valued leaf added, whose gradient is the activation's gradient. The model's parameters
    are not differentiated.
    """
    leaves: dict[str, Tensor] = {}

    def make_hook(name: str, value: Tensor | None) -> Callable[..., Tensor]:
        def hook(act: Tensor, hook: Any = None) -> Tensor:
            if value is not None:
                act = value.to(act.device, act.dtype)
            leaf = torch.zeros_like(act, requires_grad=True)
            leaves[name] = leaf
            return act + leaf

        return hook

    hooks = [(name, make_hook(name, value)) for name, value in sites.items()]
    sub = task.subset(idx[: len(idx) // copies]) if copies > 1 else task.subset(idx)
    with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
        logits = model(base_tokens[idx])
        per_example = sub.per_example(sub.final_logits(logits))
        metric = per_example.sum() / task.batch
        missing = [n for n in sites if n not in leaves]
        if missing:
            raise TLSubmodelsError(f"hook points {missing} did not run in the forward pass; cannot attribute there")
        grads = torch.autograd.grad(metric, [leaves[n] for n in sites], allow_unused=True)
    return {n: torch.zeros_like(leaves[n]) if g is None else g.detach() for n, g in zip(sites, grads, strict=True)}
