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

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from tl_submodels import model as tlmodel
from tl_submodels import stats
from tl_submodels.components import Kind
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.scores import Direction, Scores, Sides, check_budget, check_scoring, metric_gap, sides
from tl_submodels.sweep import Sweep, distributed, fingerprint_model, fingerprint_task
from tl_submodels.task import Task

__all__ = ["AtPItem", "AttributionPlan", "IGItem", "Method", "attribute", "plan_attribution", "site_gradients"]

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
    n_boot: int | None = None,
) -> Scores:
    """Attribution scores for every component, in the Scores type of :func:`tl_submodels.patch`.

    Args:
        model: a TransformerLens model in eval mode.
        task: the clean/corrupt prompts and metric.
        method: ``"atp"`` (one forward and backward) or ``"ig"`` (integrated gradients per site).
        kinds: any of ``"heads"``, ``"neurons"``, ``"mlps"`` (default: every kind the model has:
            heads, and neurons and mlps where it has MLPs; with ``per_position``, heads and mlps).
        per_position: heads and MLP layers per position (``[layer, pos, head]``, ``[layer, pos]``).
        direction: ``"denoising"`` (gradients at the corrupt run, towards clean) or ``"noising"``.
        steps: interpolation steps for ``"ig"`` (midpoint rule).
        batch_size: rows per forward (examples, or examples x steps for ``"ig"``); default: what
            ``max_memory_mb`` allows.
        max_memory_mb: memory budget of the whole call beyond the model's weights: the cached source
            runs, each forward and backward and the gradients held at once. Examples go in chunks (and
            ``"ig"`` steps in several forwards) when they do not fit; ``"atp"`` also splits the sites into
            groups (one forward and backward each). With ``batch_size`` set it bounds the gradients only.
        per_example: also keep each prompt's estimated effect (``Scores.per_example``).
        n_boot: also give each score a BCa bootstrap interval over the prompts from this many resamples
            (``Scores.heads_ci``, ...; keeps ``per_example``): :meth:`Scores.with_intervals`.
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
    check_budget(batch_size, max_memory_mb)
    if n_boot is not None:
        stats.check_n_boot(n_boot)
        per_example = True
    side = sides(task, direction)
    plan = plan_attribution(
        tlmodel.adapter(model), task, kinds=kinds, method=method, per_position=per_position, direction=direction,
        steps=steps, batch_size=batch_size, max_memory_mb=max_memory_mb, world=distributed()[1],
    )  # fmt: skip
    key = None
    if checkpoint is not None:
        key = {"fn": "attribute", "model": fingerprint_model(model), "task": fingerprint_task(task), **plan.key()}
    run = _Executor(model, task, plan, side)
    items = plan.items
    first_of = {ci: min(i for i, item in enumerate(items) if item.chunk == ci) for ci in range(len(plan.chunks))}
    sweep = Sweep(len(items), key=key or {}, checkpoint=checkpoint, desc=f"{method} {task.name}", progress=progress)
    try:
        for i in sweep.todo():
            result, metrics = run(items[i])
            if i == first_of[items[i].chunk]:  # a chunk's first item keeps the chunk's metrics
                result["metrics"] = metrics
            sweep.done(i, result)
        done = sweep.gather()
    finally:
        run.close()
        sweep.close()
    names = list(run.site_kind)
    chunks = plan.chunks
    # Put together in item order: the same numbers however the work was spread over ranks or resumed.
    per_chunk: list[dict[str, Tensor]] = [{} for _ in chunks]
    for i, item in enumerate(items):
        for n, t in done[i].items():
            if n != "metrics":
                per_chunk[item.chunk][n] = t if n not in per_chunk[item.chunk] else per_chunk[item.chunk][n] + t
    # each[name]: every example's estimated effect on its own metric, [batch, ...]. Gradients are of
    # the batch mean, so an example's own effect is batch x its delta . gradient (over steps for "ig").
    scale_by = task.batch / (steps if method == "ig" else 1)
    each = {n: torch.cat([c[n] for c in per_chunk]) * scale_by for n in names}
    firsts = [done[first_of[ci]]["metrics"] for ci in range(len(chunks))]
    base_each, source_each = torch.cat([m["base"] for m in firsts]), torch.cat([m["source"] for m in firsts])
    base_value, source_value = float(base_each.mean()), float(source_each.mean())
    clean_value, corrupt_value = side.clean_corrupt(base_value, source_value)
    gap = metric_gap(task, clean_value, corrupt_value)

    per_kind: dict[str, Tensor] = {
        kind: torch.stack([each[tlmodel.site_hook(kind, layer)] for layer in range(info.n_layers)], dim=1).detach()
        for kind in kinds
    }  # [batch, layer, ...]
    sign = side.sign
    out = {k: per_kind[k].mean(0) if k in per_kind else None for k in ("heads", "neurons", "mlps")}
    raw = {k: None if v is None else base_value + v for k, v in out.items()}
    norm = {k: None if v is None else sign * v / gap for k, v in out.items()}
    scores = Scores(
        heads=norm["heads"], neurons=norm["neurons"], mlps=norm["mlps"],
        raw_heads=raw["heads"], raw_neurons=raw["neurons"], raw_mlps=raw["mlps"],
        clean_metric=clean_value, corrupt_metric=corrupt_value, method=method if method == "atp" else f"ig{steps}",
        direction=direction, metric=task.metric_name, per_position=per_position, task=task.name,
        per_example={k: sign * v / gap for k, v in per_kind.items()} if per_example else None,
        per_example_gap=sign * (source_each - base_each) / gap if per_example else None,
    )  # fmt: skip
    return scores if n_boot is None else scores.with_intervals(n_boot)


class _Executor:
    """Runs the work items of an attribution plan, keeping the cached base and source runs of one chunk."""

    def __init__(self, model: Any, task: Task, plan: AttributionPlan, side: Sides) -> None:
        self.model, self.task, self.plan, self.side = model, task, plan, side
        n_layers = tlmodel.model_info(model).n_layers
        self.site_kind = {tlmodel.site_hook(k, layer): k for layer in range(n_layers) for k in plan.kinds}
        self.chunks = [torch.tensor(c, dtype=torch.long) for c in plan.chunks]
        self.alphas = (torch.arange(plan.steps, dtype=torch.float32) + 0.5) / plan.steps  # IG: the steps' midpoints
        self._cached: tuple[int, dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]] | None = None

    def close(self) -> None:
        self._cached = None

    def _runs(self, ci: int) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
        """Base (IG only: AtP sees it in its own forward) and source activations of chunk ``ci``, and the
        per-example metric of those runs."""
        if self._cached is None or self._cached[0] != ci:
            self._cached = None
            idx, names = self.chunks[ci], list(self.site_kind)
            sub = self.task.subset(idx)
            base: dict[str, Tensor] = {}
            metrics = {}
            if self.plan.method == "ig":
                logits, base = tlmodel.run_cache(self.model, self.side.base[idx], names)
                metrics["base"] = sub.per_example(sub.final_logits(logits)).cpu()
            logits, source = tlmodel.run_cache(self.model, self.side.source[idx], names)
            metrics["source"] = sub.per_example(sub.final_logits(logits)).cpu()
            self._cached = (ci, base, source, metrics)
        return self._cached[1], self._cached[2], self._cached[3]

    def _reduce(self, kind: Kind, contribution: Tensor) -> Tensor:
        """delta * gradient of one site, [batch, pos, ...] -> the per-example score shape."""
        if kind == "neurons":
            return contribution.sum(1)  # [batch, d_mlp]
        out = contribution.sum(-1)  # heads [batch, pos, head], an MLP [batch, pos]
        return out if self.plan.per_position else out.sum(1)

    def __call__(self, item: AtPItem | IGItem) -> tuple[dict[str, Any], dict[str, Tensor]]:
        """One forward and backward: each site's per-example delta . gradient, and the chunk's metrics."""
        idx = self.chunks[item.chunk]
        base, source, metrics = self._runs(item.chunk)
        if isinstance(item, AtPItem):
            seen: dict[str, Tensor] = {}  # the base run's activations and metric, from this forward
            grads = site_gradients(self.model, self.task, idx, self.side.base, dict.fromkeys(item.sites), seen=seen)
            result = {n: self._reduce(self.site_kind[n], (source[n] - seen[n]) * grads[n]).cpu() for n in item.sites}
            return result, {**metrics, "base": seen["metric"].cpu()}
        name, lo = item.site, item.first_step
        delta = source[name] - base[name]
        a = self.alphas[lo : lo + self.plan.steps_per_forward].to(delta.device)
        local = torch.arange(len(idx)).repeat(len(a))
        scale = a.repeat_interleave(len(idx)).view(-1, *[1] * (delta.ndim - 1))
        value = base[name][local] + scale * delta[local]
        grads = site_gradients(self.model, self.task, idx.repeat(len(a)), self.side.base, {name: value}, copies=len(a))
        total = grads[name].view(len(a), len(idx), *delta.shape[1:]).sum(0)
        return {name: self._reduce(self.site_kind[name], delta * total).cpu()}, metrics


class AtPItem(NamedTuple):
    """One forward and backward of AtP: chunk ``chunk`` of the examples, the gradients at ``sites``."""

    chunk: int
    sites: tuple[str, ...]


class IGItem(NamedTuple):
    """One forward and backward of integrated gradients: chunk ``chunk``, one site, the interpolation steps
    ``first_step`` .. ``first_step + steps_per_forward - 1`` as copies of the batch."""

    chunk: int
    site: str
    first_step: int


@dataclass(frozen=True, kw_only=True)
class AttributionPlan:
    """What :func:`attribute` will run, decided before anything runs (:func:`plan_attribution`).

    Its :meth:`key` is what a checkpoint must match to be resumed.
    """

    method: Method
    kinds: tuple[Kind, ...]
    per_position: bool
    direction: Direction
    steps: int
    chunks: tuple[tuple[int, ...], ...]  # the examples of each chunk
    steps_per_forward: int
    grads_mb: float
    items: tuple[AtPItem | IGItem, ...]

    def key(self) -> dict[str, Any]:
        """The plan as plain JSON values: a checkpoint written for another plan is refused."""
        out = dataclasses.asdict(self)
        out["items"] = [list(i) for i in self.items]
        out["chunks"] = [list(c) for c in self.chunks]
        out["kinds"] = list(self.kinds)
        return out


def plan_attribution(
    ad: tlmodel.Adapter,
    task: Task,
    *,
    kinds: tuple[Kind, ...],
    method: Method,
    per_position: bool,
    direction: Direction,
    steps: int,
    batch_size: int | None,
    max_memory_mb: float,
    world: int = 1,
) -> AttributionPlan:
    """The chunks of examples and the typed work items of an attribution sweep; runs nothing.

    Examples go in chunks (and for ``"ig"`` interpolation steps per forward) that fit the budget; inside a
    process group of ``world`` ranks the chunks are shared out (by default one chunk each). AtP groups the
    sites whose gradients fit the budget into one forward and backward; IG runs one site and a few steps.

    Example:
        >>> plan = plan_attribution(tls.adapter(model), task, kinds=("heads",), method="atp", per_position=False,
        ...                         direction="denoising", steps=1, batch_size=None, max_memory_mb=1024)  # doctest: +SKIP
        >>> plan.items[0]  # doctest: +SKIP
        AtPItem(chunk=0, sites=('blocks.0.attn.hook_z', 'blocks.1.attn.hook_z'))
    """
    info = ad.info
    examples, steps_per_forward, grads_mb = _fit(ad, kinds, task, method, steps, batch_size, max_memory_mb)
    if batch_size is None:
        examples = min(examples, -(-task.batch // world))
    chunks = tuple(tuple(range(lo, min(lo + examples, task.batch))) for lo in range(0, task.batch, examples))
    names = {tlmodel.site_hook(kind, layer): kind for layer in range(info.n_layers) for kind in kinds}
    items: list[AtPItem | IGItem]
    if method == "atp":
        groups = _by_memory(names, info, task.seq_len, len(chunks[0]), grads_mb)
        items = [AtPItem(ci, tuple(g)) for ci in range(len(chunks)) for g in groups]
    else:
        items = [
            IGItem(ci, n, lo) for ci in range(len(chunks)) for n in names for lo in range(0, steps, steps_per_forward)
        ]
    return AttributionPlan(
        method=method, kinds=tuple(kinds), per_position=per_position, direction=direction,
        steps=steps if method == "ig" else 1, chunks=chunks, steps_per_forward=steps_per_forward, grads_mb=grads_mb,
        items=tuple(items),
    )  # fmt: skip


def _grad_row_mb(ad: tlmodel.Adapter, seq: int) -> float:
    """Memory one row of a forward and backward holds: every layer's saved activations and the logits, in MB."""
    info = ad.info
    per_layer = info.layer_row_mb(seq) * ad.backward_factor
    return info.n_layers * per_layer + 4 * seq * 2 * info.d_vocab / 2**20


def _fit(
    ad: tlmodel.Adapter,
    kinds: tuple[Kind, ...],
    task: Task,
    method: Method,
    steps: int,
    batch_size: int | None,
    max_memory_mb: float,
) -> tuple[int, int, float]:
    """Examples per chunk, interpolation steps per forward ("ig") and the budget for the gradients held at once.

    Given ``batch_size`` (rows per forward), the caller chose the chunks and ``max_memory_mb`` bounds the
    gradients only. Otherwise a chunk's cached runs, its forward and backward and its gradients fit the budget.
    """
    seq, batch, info = task.seq_len, task.batch, ad.info
    if batch_size is not None:
        if method == "atp":
            return batch_size, 1, max_memory_mb
        return batch, max(1, min(steps, batch_size // batch)), max_memory_mb
    site = {k: info.n_layers * info.site_mb(k, seq) for k in kinds}
    cached = 2 * sum(site.values())  # an example's base and source activations at every site
    row = _grad_row_mb(ad, seq)
    if method == "atp":
        # per example: its cached runs, its forward and backward, and (at least) the largest site's gradient
        # and delta x gradient
        fit = int(max_memory_mb // (cached + row + 2 * max(site.values()) / info.n_layers))
        if fit >= 1:
            examples = min(batch, fit)
            return examples, 1, max(max_memory_mb - examples * (cached + row), 0.0) / 2
    else:
        biggest = max(site.values()) / info.n_layers

        def ig_need(s: int) -> float:  # per example, s steps per forward: its cache, s rows and their site values
            return cached + s * (row + 3 * biggest)

        fit_steps = max((s for s in range(1, steps + 1) if batch * ig_need(s) <= max_memory_mb), default=0)
        if fit_steps:
            return batch, fit_steps, max_memory_mb
        fit = int(max_memory_mb // ig_need(1))
        if fit >= 1:
            return fit, 1, max_memory_mb
    raise TLSubmodelsError(
        f"max_memory_mb={max_memory_mb:g} is below what one example needs on this model ({seq} tokens): "
        "raise it, use shorter prompts, or set batch_size to choose the rows per forward yourself"
    )


def _by_memory(
    sites: dict[str, Kind], info: tlmodel.ModelInfo, seq: int, rows: int, max_memory_mb: float
) -> list[list[str]]:
    """Sites (hook name: kind) in groups whose gradients for ``rows`` examples fit the budget (one site at least)."""
    groups: list[list[str]] = [[]]
    used = 0.0
    for name, kind in sites.items():
        size = info.site_mb(kind, seq) * rows
        if groups[-1] and used + size > max_memory_mb:
            groups.append([])
            used = 0.0
        groups[-1].append(name)
        used += size
    return groups


def site_gradients(
    model: Any,
    task: Task,
    idx: Tensor,
    base_tokens: Tensor,
    sites: dict[str, Tensor | None],
    copies: int = 1,
    seen: dict[str, Tensor] | None = None,
) -> dict[str, Tensor]:
    """d(sum of the per-example metric / batch) / d(activation) at each site, for rows ``idx``.

    A site given a tensor has its activation replaced by it (the IG path); every site gets a
    zero-valued leaf added, whose gradient is the activation's gradient. The model's parameters
    are not differentiated. ``seen``, when given, receives each site's activation as the forward
    met it and the per-example metric under ``"metric"``.
    """
    leaves: dict[str, Tensor] = {}

    def make_hook(name: str, value: Tensor | None) -> Callable[..., Tensor]:
        def hook(act: Tensor, hook: Any = None) -> Tensor:
            if seen is not None:
                seen[name] = act.detach()
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
        if seen is not None:
            seen["metric"] = per_example.detach()
        missing = [n for n in sites if n not in leaves]
        if missing:
            raise TLSubmodelsError(f"hook points {missing} did not run in the forward pass; cannot attribute there")
        grads = torch.autograd.grad(metric, [leaves[n] for n in sites], allow_unused=True)
    return {n: torch.zeros_like(leaves[n]) if g is None else g.detach() for n, g in zip(sites, grads, strict=True)}
