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
from typing import Any, Literal

import torch
from torch import Tensor
from tqdm.auto import tqdm

from tl_submodels import model as tlmodel
from tl_submodels.components import Kind, check_kinds
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.scores import Direction, Scores
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
    progress: bool = False,
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
        progress: show a tqdm progress bar.

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
    info = tlmodel.check_model(model, ())
    kinds = check_kinds(kinds if kinds is not None else info.kinds())
    tlmodel.check_model(model, kinds)
    if per_position and "neurons" in kinds:
        raise TLSubmodelsError("per_position=True covers heads and mlps; score neurons over all positions")
    if direction not in ("denoising", "noising"):
        raise TLSubmodelsError(f"direction must be 'denoising' or 'noising', got {direction!r}")
    if task.d_vocab != info.d_vocab:
        raise TLSubmodelsError(
            f"task {task.name!r} was built for d_vocab={task.d_vocab}, the model has d_vocab={info.d_vocab}"
        )
    task = task.to(tlmodel.first_param_device(model))
    base_tokens, source_tokens = (task.corrupt, task.clean) if direction == "denoising" else (task.clean, task.corrupt)
    sites = [(kind, layer) for layer in range(info.n_layers) for kind in kinds]
    names = [tlmodel.site_hook(kind, layer) for kind, layer in sites]
    base_logits, base = tlmodel.run_cache(model, base_tokens, names)
    source_logits, source = tlmodel.run_cache(model, source_tokens, names)
    base_value, source_value = float(task.metric(base_logits)), float(task.metric(source_logits))
    clean_value, corrupt_value = (source_value, base_value) if direction == "denoising" else (base_value, source_value)
    gap = clean_value - corrupt_value
    if abs(gap) <= 1e-6 * max(1.0, abs(clean_value)):
        raise TLSubmodelsError(
            f"the metric {task.metric_name!r} is {clean_value:.4g} on both clean and corrupt prompts: no gap to attribute"
        )

    # effect[name]: sum over examples of delta . gradient, per unit (and position) of the site
    effect: dict[str, Tensor] = {}
    rows = batch_size or task.batch
    if method == "atp":
        chunks = range(0, task.batch, max(1, rows))
        for lo in tqdm(chunks, desc=f"atp {task.name}", disable=not progress):
            idx = torch.arange(lo, min(lo + max(1, rows), task.batch))
            grads = _gradients(model, task, idx, base_tokens, {n: None for n in names})
            for name in names:
                part = ((source[name][idx] - base[name][idx]) * grads[name]).sum(0)
                effect[name] = effect.get(name, 0) + part
    else:
        alphas = (torch.arange(steps, dtype=torch.float32) + 0.5) / steps
        per_chunk = max(1, rows // task.batch) if batch_size else steps
        bar = tqdm(total=len(names) * -(-steps // per_chunk), desc=f"ig {task.name}", disable=not progress)
        for name in names:
            total = None
            for lo in range(0, steps, per_chunk):
                a = alphas[lo : lo + per_chunk]
                idx = torch.arange(task.batch).repeat(len(a))
                path = base[name][idx] + a.repeat_interleave(task.batch).to(base[name].device).view(
                    -1, *[1] * (base[name].ndim - 1)
                ) * (source[name][idx] - base[name][idx])
                grads = _gradients(model, task, idx, base_tokens, {name: path}, copies=len(a))
                g = grads[name].view(len(a), task.batch, *base[name].shape[1:]).sum(0)
                total = g if total is None else total + g
                bar.update(1)
            assert total is not None
            effect[name] = ((source[name] - base[name]) * total / steps).sum(0)
        bar.close()

    out: dict[str, Tensor | None] = {k: None for k in ("heads", "neurons", "mlps")}
    for kind in kinds:
        per_layer = []
        for layer in range(info.n_layers):
            e = effect[tlmodel.site_hook(kind, layer)]  # [pos, ...]
            if kind == "heads":
                e = e.sum(-1)  # [pos, head]
                per_layer.append(e if per_position else e.sum(0))
            elif kind == "neurons":
                per_layer.append(e.sum(0))
            else:
                e = e.sum(-1)  # [pos]
                per_layer.append(e if per_position else e.sum())
        out[kind] = torch.stack(per_layer).detach().cpu()
    raw = {k: None if v is None else base_value + v for k, v in out.items()}
    norm = {k: None if v is None else (v if direction == "denoising" else -v) / gap for k, v in out.items()}
    return Scores(
        heads=norm["heads"], neurons=norm["neurons"], mlps=norm["mlps"],
        raw_heads=raw["heads"], raw_neurons=raw["neurons"], raw_mlps=raw["mlps"],
        clean_metric=clean_value, corrupt_metric=corrupt_value, method=method if method == "atp" else f"ig{steps}",
        direction=direction, metric=task.metric_name, per_position=per_position, task=task.name,
    )  # fmt: skip


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
