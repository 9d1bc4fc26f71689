"""Exact activation patching of every head, neuron and MLP layer, batched.

Denoising (run corrupt, patch in clean) and noising (run clean, patch in corrupt), as
TransformerLens' ``patching`` functions, but many patches per forward: the batch is replicated
once per patched component, each copy patching a different one. Runs start at the patched layer
from the cached residual stream, reuse the keys and values of the positions before the first
clean/corrupt difference (identical in both runs under causal attention), and in the last layer
compute only the positions the metric reads. That fast path runs over the model's weights
(fastpath.py) and is checked against the model's own logits on every call; models it does not
cover are patched through hooks, still batched.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from tl_submodels import model as tlmodel
from tl_submodels.components import Kind, check_kinds
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.fastpath import PrefixRunner
from tl_submodels.scores import Direction, Scores
from tl_submodels.task import Task

FAST_TOLERANCE = 1e-4


@dataclass
class _Group:
    """The patched copies of one (layer, kind): copy r patches ``units[r]`` at ``positions[r]``."""

    layer: int
    kind: Kind
    unit_mask: Tensor  # [copies, units] bool
    pos_mask: Tensor  # [copies, seq] bool
    out_index: list[tuple[int, ...]]  # where each copy's value goes in the result tensor


def patch(
    model: Any,
    task: Task,
    *,
    kinds: tuple[Kind, ...] | Kind | None = None,
    per_position: bool = False,
    direction: Direction = "denoising",
    batch_size: int | None = None,
    max_memory_mb: float = 1024.0,
    progress: bool = False,
    fast: bool = True,
) -> Scores:
    """Exact patching scores for every component of the given kinds.

    Args:
        model: a TransformerLens model in eval mode.
        task: the clean/corrupt prompts and metric.
        kinds: any of ``"heads"``, ``"neurons"``, ``"mlps"`` (default: heads, and mlps where the
            model has MLPs).
        per_position: heads and MLP layers patched at one position at a time
            (``Scores.heads`` becomes ``[layer, pos, head]``, ``Scores.mlps`` ``[layer, pos]``).
        direction: ``"denoising"`` (run corrupt, patch in clean; the score is the fraction of
            the gap restored) or ``"noising"`` (run clean, patch in corrupt; the fraction destroyed).
        batch_size: rows (copies x examples) per forward; default: fit ``max_memory_mb``.
        max_memory_mb: activation memory budget per forward, used when batch_size is None.
        progress: show a tqdm progress bar.
        fast: use the prefix-reusing forward where the model allows it (False: hooks only).

    Returns:
        Scores with normalised effects and the raw metric of each patched run.

    Raises:
        TLSubmodelsError: bad kinds, a model that lacks a hook point, a metric with no
            clean-corrupt gap, a metric that returns NaN.

    Example:
        >>> model = tls.zoo.load("induction-2l")
        >>> task = tls.zoo.task("induction-2l", "induction", n=16)
        >>> scores = tls.patch(model, task, kinds="heads")
        >>> scores.heads.shape
        torch.Size([2, 4])
    """
    info = tlmodel.check_model(model, ())
    kinds = check_kinds(kinds if kinds is not None else info.kinds())
    tlmodel.check_model(model, kinds)
    if direction not in ("denoising", "noising"):
        raise TLSubmodelsError(f"direction must be 'denoising' or 'noising', got {direction!r}")
    if per_position and "neurons" in kinds:
        raise TLSubmodelsError(
            "per_position=True covers heads and mlps; score neurons over all positions (per_position=False)"
        )
    if task.d_vocab != info.d_vocab:
        raise TLSubmodelsError(
            f"task {task.name!r} was built for d_vocab={task.d_vocab}, the model has d_vocab={info.d_vocab}"
        )
    device = tlmodel.first_param_device(model)
    task = task.to(device)
    base_tokens, source_tokens = (task.corrupt, task.clean) if direction == "denoising" else (task.clean, task.corrupt)
    n_layers, seq, batch = info.n_layers, task.seq_len, task.batch

    sites = [tlmodel.site_hook(kind, layer) for kind in kinds for layer in range(n_layers)]
    resid_names = [tlmodel.hook_resid_pre(layer) for layer in range(n_layers)]
    kv_names = [h(layer) for layer in range(n_layers) for h in (tlmodel.hook_k, tlmodel.hook_v)]
    source_logits, source = tlmodel.run_cache(model, source_tokens, sites)
    use_fast = fast and tlmodel.is_attention_causal(model)
    weights = tlmodel.standard_weights(model) if use_fast else None
    base_names = resid_names + (kv_names if weights is not None and all(n in model.hook_dict for n in kv_names) else [])
    base_logits, base = tlmodel.run_cache(model, base_tokens, base_names)

    base_value = float(task.metric(base_logits))
    source_value = float(task.metric(source_logits))
    clean_value, corrupt_value = (source_value, base_value) if direction == "denoising" else (base_value, source_value)
    gap = clean_value - corrupt_value
    if abs(gap) <= 1e-6 * max(1.0, abs(clean_value)):
        raise TLSubmodelsError(
            f"the metric {task.metric_name!r} is {clean_value:.4g} on both clean and corrupt prompts, so there is no "
            "gap to restore. Check that the corrupt prompts remove what the answer depends on."
        )

    out_pos = task.out_pos
    # Positions before the first clean/corrupt difference are identical in both runs (causal attention).
    start = min(task.first_difference(), int(out_pos.min())) if tlmodel.is_attention_causal(model) else 0
    runner = None
    if weights is not None and len(base) == len(base_names) and len(base_names) > len(resid_names):
        runner = PrefixRunner(
            weights,
            [base[tlmodel.hook_k(layer)][:, :start] for layer in range(n_layers)],
            [base[tlmodel.hook_v(layer)][:, :start] for layer in range(n_layers)],
            start,
            seq,
            out_pos,
        )
        with torch.no_grad():
            check = runner.run(base[tlmodel.hook_resid_pre(0)][:, start:], 0)
        expected = task.final_logits(base_logits)
        err = float((check - expected).abs().max())
        if err > FAST_TOLERANCE * max(1.0, float(expected.abs().max())):
            warnings.warn(
                f"tl_submodels: the fast patching path differs from {type(model).__name__}'s logits by {err:.2e}; "
                "patching through hooks instead (slower, exact).",
                stacklevel=2,
            )
            runner = None

    groups = _groups(info, kinds, per_position, start, seq)
    results = _empty_results(info, kinds, per_position, seq, base_value)
    rows_per_forward = batch_size or _rows_for_budget(info, seq - (start if runner else 0), max_memory_mb)
    copies_per_forward = max(1, rows_per_forward // batch)
    n_chunks = sum(-(-g.unit_mask.shape[0] // copies_per_forward) for g in groups)
    bar = tqdm(total=n_chunks, desc=f"patching {task.name}", disable=not progress, unit="forward")
    try:
        for g in groups:
            for lo in range(0, g.unit_mask.shape[0], copies_per_forward):
                hi = min(lo + copies_per_forward, g.unit_mask.shape[0])
                patcher = _Patcher(g, lo, hi, batch, source[tlmodel.site_hook(g.kind, g.layer)])
                with torch.no_grad():
                    if runner is not None:
                        resid = base[tlmodel.hook_resid_pre(g.layer)][:, start:].repeat(hi - lo, 1, 1)
                        final = runner.run(resid, g.layer, patcher.at_site)
                    else:
                        resid = base[tlmodel.hook_resid_pre(g.layer)].repeat(hi - lo, 1, 1)
                        hooks = [(tlmodel.site_hook(g.kind, g.layer), patcher.hook)]
                        logits = tlmodel.forward_from(model, g.layer, base_tokens.repeat(hi - lo, 1), resid, hooks)
                        final = task.final_logits(logits)
                values = task.per_example(final).view(hi - lo, batch).mean(1)
                for r, v in zip(range(lo, hi), values.tolist(), strict=True):
                    results[g.kind][g.out_index[r]] = v
                bar.update(1)
    finally:
        bar.close()

    raw = {k: results.get(k) for k in ("heads", "neurons", "mlps")}
    norm = {
        k: None if t is None else ((t - corrupt_value) / gap if direction == "denoising" else (clean_value - t) / gap)
        for k, t in raw.items()
    }
    return Scores(
        heads=norm["heads"],
        neurons=norm["neurons"],
        mlps=norm["mlps"],
        raw_heads=raw["heads"],
        raw_neurons=raw["neurons"],
        raw_mlps=raw["mlps"],
        clean_metric=clean_value,
        corrupt_metric=corrupt_value,
        method="patch",
        direction=direction,
        metric=task.metric_name,
        per_position=per_position,
        task=task.name,
    )


def _groups(info: tlmodel.ModelInfo, kinds: tuple[Kind, ...], per_position: bool, start: int, seq: int) -> list[_Group]:
    """One group per (layer, kind); per position, only positions from ``start`` (earlier ones cannot change)."""
    groups = []
    for layer in range(info.n_layers):
        for kind in kinds:
            units = info.n_units(kind)
            if per_position:
                pairs = [(p, u) for p in range(start, seq) for u in range(units)]
                unit_mask = torch.zeros(len(pairs), units, dtype=torch.bool)
                pos_mask = torch.zeros(len(pairs), seq, dtype=torch.bool)
                for r, (p, u) in enumerate(pairs):
                    unit_mask[r, u] = True
                    pos_mask[r, p] = True
                index: list[tuple[int, ...]] = [(layer, p, u) if kind == "heads" else (layer, p) for p, u in pairs]
            else:
                unit_mask = torch.eye(units, dtype=torch.bool)
                pos_mask = torch.ones(units, seq, dtype=torch.bool)
                index = [(layer, u) if kind != "mlps" else (layer,) for u in range(units)]
            if unit_mask.shape[0]:
                groups.append(_Group(layer, kind, unit_mask, pos_mask, index))
    return groups


def _empty_results(
    info: tlmodel.ModelInfo, kinds: tuple[Kind, ...], per_position: bool, seq: int, base_value: float
) -> dict[str, Tensor]:
    """Result tensors prefilled with the unpatched metric (exact for positions that cannot change)."""
    shapes: dict[str, tuple[int, ...]] = {
        "heads": (info.n_layers, seq, info.n_heads) if per_position else (info.n_layers, info.n_heads),
        "neurons": (info.n_layers, info.d_mlp or 0),
        "mlps": (info.n_layers, seq) if per_position else (info.n_layers,),
    }
    return {k: torch.full(shapes[k], base_value) for k in kinds}


class _Patcher:
    """Writes the source run's activations into copies ``lo:hi`` of a group.

    Rows are copy-major (row ``c * batch + b`` is copy ``c`` of example ``b``); copy ``c`` gets
    the source value of its unit at its positions and keeps its own activation elsewhere.
    """

    def __init__(self, g: _Group, lo: int, hi: int, batch: int, source: Tensor) -> None:
        self.layer, self.kind, self.source = g.layer, g.kind, source
        self.unit_mask = g.unit_mask[lo:hi].to(source.device).repeat_interleave(batch, 0)  # [rows, units]
        self.pos_mask = g.pos_mask[lo:hi].to(source.device).repeat_interleave(batch, 0)  # [rows, seq]
        self.example = torch.arange(batch, device=source.device).repeat(hi - lo)  # [rows]

    def __call__(self, act: Tensor, pos: Tensor) -> Tensor:
        """``act`` [rows, p, ...] at absolute positions ``pos`` [rows, p]; written on ``act``'s device."""
        pos = pos.to(self.source.device)
        src = self.source[self.example[:, None], pos]
        mask = self.pos_mask.gather(1, pos)[..., None]  # [rows, p, 1]
        if self.kind != "mlps":
            mask = mask & self.unit_mask[:, None, :]  # [rows, p, units]
        if self.kind == "heads":
            mask = mask[..., None]
        return torch.where(mask.to(act.device), src.to(act.device, act.dtype), act)

    def at_site(self, layer: int, kind: Kind, act: Tensor, pos: Tensor) -> Tensor:
        """The fast path's callback: edit only this group's site."""
        return self(act, pos) if (layer, kind) == (self.layer, self.kind) else act

    def hook(self, act: Tensor, hook: Any = None) -> Tensor:
        """A TransformerLens forward hook over all positions."""
        pos = torch.arange(act.shape[1], device=act.device)[None].expand(act.shape[0], -1)
        return self(act, pos)


def _rows_for_budget(info: tlmodel.ModelInfo, seq: int, max_memory_mb: float) -> int:
    """Rows per forward that keep the main activations of one forward under the budget."""
    per_row = (
        4
        * max(seq, 1)
        * (8 * info.d_model + 4 * info.n_heads * info.d_head + 2 * info.n_heads * max(seq, 1) + 3 * (info.d_mlp or 0))
    )
    return max(1, int(max_memory_mb * 2**20 // per_row))
