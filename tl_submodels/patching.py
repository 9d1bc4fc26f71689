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
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import einops
import torch
from jaxtyping import Float
from torch import Tensor

from tl_submodels import model as tlmodel
from tl_submodels import stats
from tl_submodels.components import KINDS, Component, Kind, parse_component
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.fastpath import PrefixRunner, Stage
from tl_submodels.model import StandardWeights
from tl_submodels.scores import Direction, Scores, check_budget, check_scoring, metric_gap, sides
from tl_submodels.sweep import Sweep, fingerprint_model, fingerprint_task
from tl_submodels.task import Task

__all__ = ["BUDGET_FOR_CACHES", "CPU_ROWS", "FAST_TOLERANCE", "TRICKS", "PatchItem", "PatchPlan", "patch", "plan_patch"]

FAST_TOLERANCE = 1e-4
# On a CPU, forwards of more rows than this stop fitting the caches and get slower per row
# (scripts/bench_patching.py: 256 rows ran 1.6x faster than the ~2,600 a 1 GiB budget allows).
CPU_ROWS = 256
# max_memory_mb covers the whole sweep: at most this share of it for the examples' cached runs, the rest
# for the patched forwards (examples are scored in chunks when all of them do not fit).
BUDGET_FOR_CACHES = 0.5
# Switches for scripts/bench_patching.py, which measures what each skipped piece of work saves.
TRICKS = {"prefix_reuse": True, "prune_last_layer": True}


@dataclass
class _Group:
    """The patched copies of one (layer, kind): copy r patches unit ``units[r]`` where ``pos_mask[r]``."""

    layer: int
    kind: Kind
    units: Tensor  # [copies] head / neuron index (0 for an MLP)
    pos_mask: Tensor  # [copies, seq] bool
    out_index: list[tuple[int, ...]]  # where each copy's value goes in the result tensor


class PatchItem(NamedTuple):
    """One patched forward: the copies ``lo`` .. ``hi - 1`` of group ``group`` (one unit patched per copy)."""

    group: _Group
    lo: int
    hi: int


@dataclass(frozen=True, kw_only=True)
class PatchPlan:
    """What :func:`patch` will run, decided before anything runs (:func:`plan_patch`): the path, the chunks of
    examples and the rows per forward. Its :meth:`key` is what a checkpoint must match to be resumed."""

    kinds: tuple[Kind, ...]
    per_position: bool
    direction: Direction
    path: Literal["weights", "hooks"]
    chunks: tuple[tuple[int, ...], ...]  # the examples of each chunk
    rows_per_forward: int
    components: tuple[str, ...] | None  # patch only these (None: every component of kinds)

    def key(self) -> dict[str, Any]:
        """The plan as plain JSON values: a checkpoint written for another plan is refused."""
        return {
            "kinds": list(self.kinds), "per_position": self.per_position, "direction": self.direction,
            "path": self.path, "chunks": [list(c) for c in self.chunks], "rows_per_forward": self.rows_per_forward,
            "components": None if self.components is None else list(self.components),
        }  # fmt: skip


def plan_patch(
    info: tlmodel.ModelInfo,
    task: Task,
    *,
    kinds: tuple[Kind, ...],
    per_position: bool,
    direction: Direction,
    batch_size: int | None,
    max_memory_mb: float,
    weights_mb: float,
    path: Literal["weights", "hooks"],
    device_type: str,
    components: Iterable[Component | str] | None = None,
) -> PatchPlan:
    """The chunks of examples and the rows per forward of a patching sweep; runs nothing.

    Examples go in chunks whose cached runs take at most ``BUDGET_FOR_CACHES`` of the budget left after the
    fast path's weight copies (``weights_mb``); the patched forwards get the rest (at most ``CPU_ROWS`` rows
    on a CPU). Given ``batch_size``, one chunk of every example and that many rows per forward.

    Example:
        >>> plan_patch(info, task, kinds=("heads",), per_position=False, direction="denoising", batch_size=None,
        ...            max_memory_mb=1024, weights_mb=0.0, path="weights", device_type="cpu")  # doctest: +SKIP
    """
    seq, batch = task.seq_len, task.batch
    budget = max_memory_mb - weights_mb
    per_example_mb, per_row_mb = _example_mb(info, kinds, seq), info.layer_row_mb(seq)
    if batch_size is None:
        fit = int(budget * BUDGET_FOR_CACHES // per_example_mb)
        if fit < 1:
            raise TLSubmodelsError(
                f"max_memory_mb={max_memory_mb:g} is below what one example needs on this model "
                f"(~{per_example_mb / BUDGET_FOR_CACHES:.0f} MB for {seq} tokens); raise it or use shorter prompts"
            )
        chunk = min(batch, fit)
        rows_per_forward = max(1, int((budget - chunk * per_example_mb) / per_row_mb))
        if device_type == "cpu":
            rows_per_forward = min(rows_per_forward, CPU_ROWS)
    else:
        chunk, rows_per_forward = batch, batch_size
    return PatchPlan(
        kinds=tuple(kinds), per_position=per_position, direction=direction, path=path,
        chunks=tuple(tuple(range(lo, min(lo + chunk, batch))) for lo in range(0, batch, chunk)),
        rows_per_forward=rows_per_forward,
        components=None if components is None else tuple(sorted(str(c) for c in components)),
    )  # fmt: skip


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
    components: Iterable[Component | str] | None = None,
    per_example: bool = False,
    require_gap: bool = True,
    checkpoint: str | Path | None = None,
    n_boot: int | None = None,
) -> Scores:
    """Exact patching scores for every component of the given kinds.

    Args:
        model: a TransformerLens model in eval mode.
        task: the clean/corrupt prompts and metric.
        kinds: any of ``"heads"``, ``"neurons"``, ``"mlps"`` (default: every kind the model has:
            heads, and neurons and mlps where it has MLPs; with ``per_position``, heads and mlps).
        per_position: heads and MLP layers patched at one position at a time
            (``Scores.heads`` becomes ``[layer, pos, head]``, ``Scores.mlps`` ``[layer, pos]``).
        direction: ``"denoising"`` (run corrupt, patch in clean; the score is the fraction of
            the gap restored) or ``"noising"`` (run clean, patch in corrupt; the fraction destroyed).
        batch_size: rows (copies x examples) per forward; default: fit ``max_memory_mb``, and at
            most 256 on a CPU, where larger forwards run slower per row.
        max_memory_mb: memory budget of the whole sweep beyond the model's own weights, used when
            batch_size is None: the examples' cached runs take at most half of it (more examples are
            scored in chunks), the patched forwards the rest, the fast path's weight copies count too
            (measured by scripts/bench_memory.py; raises TLSubmodelsError when one example does not fit).
        progress: show a tqdm progress bar.
        fast: use the prefix-reusing forward where the model allows it (False: hooks only).
        components: patch only these (e.g. candidates from attribution); the other entries of
            the score tensors are NaN. Default: every component of ``kinds``.
        per_example: also keep each prompt's effect (``Scores.per_example``).
        n_boot: also give each score a BCa bootstrap interval over the prompts from this many resamples
            (``Scores.heads_ci``, ...; keeps ``per_example``): :meth:`Scores.with_intervals`.
        require_gap: refuse a task whose clean and corrupt metrics are equal (nothing to
            normalise by). False scores it anyway: raw metrics as usual, normalised scores NaN
            (``tls.diff`` uses this for a model that lacks the behaviour).
        checkpoint: a file to keep partial results in, written atomically after every forward; a
            rerun with the same arguments resumes from it and gives bit-identical scores. One
            written for other arguments, another model or package version is refused.

    Inside an initialised ``torch.distributed`` process group the forwards are shared out over
    the ranks and every rank returns the whole result (see :mod:`tl_submodels.sweep`).

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
    info, kinds, task = check_scoring(model, task, kinds, per_position, direction)
    check_budget(batch_size, max_memory_mb)
    if n_boot is not None:
        stats.check_n_boot(n_boot)
        per_example = True
    if components is not None and per_position:
        raise TLSubmodelsError("components= selects components over all positions; use per_position=False")
    device = tlmodel.first_param_device(model)
    # The fast path runs over the weights, so hooks the caller has on the model (e.g. inside
    # `with model.hooks(...)`) would not apply there: patch through hooks then.
    ad = tlmodel.adapter(model)
    names = _fast_names(info, kinds, ad.parallel_blocks)
    use_fast = fast and ad.causal and not ad.has_hooks() and all(n in model.hook_dict for n in names)
    # The fast path holds TL-layout copies of (at most all) the blocks' weights: only when those would take
    # at most half the budget (decided before they are made).
    if batch_size is None and ad.blocks_mb() > max_memory_mb / 2:
        use_fast = False
    weights = ad.standard_weights(task.seq_len) if use_fast else None
    plan = plan_patch(
        info, task, kinds=kinds, per_position=per_position, direction=direction, batch_size=batch_size,
        max_memory_mb=max_memory_mb, weights_mb=0.0 if weights is None else _copied_mb(model, weights),
        path="hooks" if weights is None else "weights", device_type=device.type, components=components,
    )  # fmt: skip
    raws = []
    for i, idx in enumerate(plan.chunks):
        sub = task if len(plan.chunks) == 1 else task.subset(list(idx))
        path = checkpoint if checkpoint is None or len(plan.chunks) == 1 else Path(f"{checkpoint}.examples{i}")
        raws.append(_patch_examples(model, sub, info, plan, weights, components, path, progress))
    base_each = torch.cat([r[0] for r in raws])
    source_each = torch.cat([r[1] for r in raws])
    examples = {k: torch.cat([r[2][k] for r in raws]) for k in kinds}

    base_value, source_value = float(base_each.mean()), float(source_each.mean())
    side = sides(task, direction)
    clean_value, corrupt_value = side.clean_corrupt(base_value, source_value)
    gap = metric_gap(task, clean_value, corrupt_value) if require_gap else clean_value - corrupt_value
    if not require_gap and abs(gap) <= 1e-6 * max(1.0, abs(clean_value)):
        gap = float("nan")
    raw: dict[str, Tensor | None] = {k: examples[k].mean(0) if k in examples else None for k in KINDS}

    def normalise(t: Tensor) -> Tensor:
        return side.sign * (t - base_value) / gap

    norm = {k: None if t is None else normalise(t) for k, t in raw.items()}

    # Per example, the effect is measured from that example's own unpatched run.
    def normalise_each(t: Tensor) -> Tensor:
        return side.sign * (t - base_each.view(-1, *[1] * (t.ndim - 1))) / gap

    scores = Scores(
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
        per_example={k: normalise_each(v) for k, v in examples.items()} if per_example else None,
        per_example_gap=side.sign * (source_each - base_each) / gap if per_example else None,
    )
    return scores if n_boot is None else scores.with_intervals(n_boot)


def _patch_examples(
    model: Any,
    task: Task,
    info: tlmodel.ModelInfo,
    plan: PatchPlan,
    weights: StandardWeights | None,
    components: Iterable[Component | str] | None,
    checkpoint: str | Path | None,
    progress: bool,
) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
    """Patch every component on these examples: (unpatched base metric [batch], source metric [batch],
    per kind the patched metric of each example ``[batch, *score shape]``; NaN where not patched)."""
    kinds, per_position, direction, rows_per_forward = (
        plan.kinds,
        plan.per_position,
        plan.direction,
        plan.rows_per_forward,
    )
    base_tokens, source_tokens, _ = sides(task, direction)
    n_layers, seq, batch = info.n_layers, task.seq_len, task.batch

    sites = [tlmodel.site_hook(kind, layer) for kind in kinds for layer in range(n_layers)]
    resid_names = [tlmodel.hook_resid_pre(layer) for layer in range(n_layers)]
    # Where a head's change joins the residual stream: after its layer's attention, or after the whole layer
    # where attention and MLP run in parallel (the MLP reads the block's entry: the head cannot change it).
    parallel = weights is not None and weights.parallel
    after_attn = tlmodel.hook_resid_mid if info.has_mlps and not parallel else tlmodel.hook_resid_post
    fast_names = _fast_names(info, kinds, parallel)
    # One forward over both runs (rows are independent): source rows first, then base rows.
    names = set(sites) | set(resid_names) | (set(fast_names) if weights else set())
    both_logits, both = tlmodel.run_cache(model, torch.cat([source_tokens, base_tokens]), names)
    source_logits, base_logits = both_logits[:batch], both_logits[batch:]
    source = {n: both[n][:batch] for n in sites}
    base = {n: a[batch:] for n, a in both.items()}

    base_each = task.per_example(task.final_logits(base_logits)).cpu()
    source_each = task.per_example(task.final_logits(source_logits)).cpu()
    base_value = float(base_each.mean())

    out_pos = task.out_pos  # [batch], or [batch, n] for a multi-position task (padded slots repeat a read)
    # Positions before the first clean/corrupt difference are identical in both runs (causal attention);
    # the suffix must hold every read position (the earliest over the reads, padding left out).
    ad = tlmodel.adapter(model)
    start = min(task.first_difference(), task.first_read()) if ad.causal else 0
    start = start if TRICKS["prefix_reuse"] else 0
    runner = None
    if weights is not None:

        def make_runner(rows: Tensor) -> PrefixRunner:
            return PrefixRunner(
                weights,
                [base[tlmodel.hook_k(layer)][rows, :start] for layer in range(n_layers)],
                [base[tlmodel.hook_v(layer)][rows, :start] for layer in range(n_layers)],
                start,
                out_pos[rows.to(out_pos.device)],
                prune_last=TRICKS["prune_last_layer"],
            )

        runner = make_runner(torch.arange(batch))
        post_norm = _PostNorm(runner, weights, base, start, info.has_mlps)
        # Check the weight-level forward against the model's own logits (on a few examples: the
        # arithmetic is the same for every row).
        rows = torch.arange(min(batch, 4))
        with torch.no_grad():
            check = make_runner(rows).run(base[tlmodel.hook_resid_pre(0)][rows, start:], 0, "pre")
        expected = task.final_logits(base_logits)[rows.to(base_logits.device)]
        err = float((check - expected).abs().max())
        if err > FAST_TOLERANCE * max(1.0, float(expected.abs().max())):
            warnings.warn(
                f"tl_submodels: the fast patching path differs from {ad.source}'s logits by {err:.2e}; "
                "patching through hooks instead (slower, exact).",
                stacklevel=2,
            )
            runner = None

    groups = _groups(info, kinds, per_position, start, seq)
    results = _empty_results(info, kinds, per_position, seq, base_value)
    examples = {k: base_each.view(-1, *[1] * t.ndim).expand(-1, *t.shape).clone() for k, t in results.items()}
    if components is not None:
        groups, results = _restrict(groups, results, info, kinds, components)
        examples = {k: torch.where(results[k].isnan()[None], float("nan"), v) for k, v in examples.items()}
    copies_per_forward = max(1, rows_per_forward // batch)
    items = [
        PatchItem(g, lo, min(lo + copies_per_forward, len(g.units)))
        for g in groups
        for lo in range(0, len(g.units), copies_per_forward)
    ]
    key = None
    if checkpoint is not None:
        key = {"fn": "patch", "model": fingerprint_model(model), "task": fingerprint_task(task), **plan.key(),
               "copies_per_forward": copies_per_forward, "fast": runner is not None}  # fmt: skip
    sweep = Sweep(len(items), key=key or {}, checkpoint=checkpoint, desc=f"patching {task.name}", progress=progress,
                  unit="forward")  # fmt: skip
    try:
        for i in sweep.todo():
            g, lo, hi = items[i]
            site = tlmodel.site_hook(g.kind, g.layer)
            with torch.no_grad():
                if runner is not None and weights is not None:
                    # Start right after the patched site: its effect is a known change of the residual.
                    delta = _site_delta(g, lo, hi, start, source[site] - base[site], weights)
                    if weights.ln1_post is not None:  # norms on the outputs: the change passes through them
                        delta = post_norm.added_change(g, delta, hi - lo)
                    stage: Stage = "attn" if g.kind == "heads" and not parallel else "mlp"
                    after = (after_attn if g.kind == "heads" else tlmodel.hook_resid_post)(g.layer)
                    resid = base[after][:, start:].repeat(hi - lo, 1, 1) + delta.to(base[after].device)
                    final = runner.run(resid, g.layer, stage)
                else:
                    patcher = _Patcher(g, lo, hi, batch, source[site], info.n_units(g.kind))
                    resid = base[tlmodel.hook_resid_pre(g.layer)].repeat(hi - lo, 1, 1)
                    logits = ad.forward_from(g.layer, base_tokens.repeat(hi - lo, 1), resid, [(site, patcher.hook)])
                    final = task.final_logits(logits)
            sweep.done(i, task.per_example(final).view(hi - lo, batch).cpu())
        done = sweep.gather()
    finally:
        sweep.close()
    for i, (g, lo, hi) in enumerate(items):  # in item order: the same numbers however the work was spread
        for r in range(lo, hi):
            index: tuple[Any, ...] = (slice(None), *g.out_index[r])
            examples[g.kind][index] = done[i][r - lo]
    return base_each, source_each, examples


def _groups(info: tlmodel.ModelInfo, kinds: tuple[Kind, ...], per_position: bool, start: int, seq: int) -> list[_Group]:
    """One group per (layer, kind); per position, only positions from ``start`` (earlier ones cannot change)."""
    groups = []
    for layer in range(info.n_layers):
        for kind in kinds:
            n_units = info.n_units(kind)
            if per_position:
                pairs = [(p, u) for p in range(start, seq) for u in range(n_units)]
                units = torch.tensor([u for _, u in pairs], dtype=torch.long)
                pos_mask = torch.zeros(len(pairs), seq, dtype=torch.bool)
                pos_mask[torch.arange(len(pairs)), torch.tensor([p for p, _ in pairs], dtype=torch.long)] = True
                index: list[tuple[int, ...]] = [(layer, p, u) if kind == "heads" else (layer, p) for p, u in pairs]
            else:
                units = torch.arange(n_units)
                pos_mask = torch.ones(n_units, seq, dtype=torch.bool)
                index = [(layer, u) if kind != "mlps" else (layer,) for u in range(n_units)]
            if len(units):
                groups.append(_Group(layer, kind, units, pos_mask, index))
    return groups


def _site_delta(
    g: _Group, lo: int, hi: int, start: int, diff: Tensor, w: StandardWeights
) -> Float[Tensor, "rows suffix d_model"]:
    """How patching copies ``lo:hi`` of a group changes the residual stream after the site.

    ``diff`` is source minus base activation at the site, ``[batch, pos, ...]``. A head adds
    ``dz @ W_O[h]``, a neuron ``dpost * W_out[n]``, an MLP its output difference; only at the
    copy's positions, and only from ``start`` on. Rows are copy-major.
    """
    units = g.units[lo:hi].to(diff.device)
    where = g.pos_mask[lo:hi, start:].to(diff.device, diff.dtype)  # [copies, suffix]
    diff = diff[:, start:]
    if g.kind == "heads":
        dz = einops.rearrange(diff[:, :, units], "b s c e -> c b s e") * where[:, None, :, None]
        delta = torch.einsum("cbse,ced->cbsd", dz, w.W_O[g.layer][units].to(diff.device))
    elif g.kind == "neurons":
        assert w.W_out is not None
        dpost = einops.rearrange(diff[:, :, units], "b s c -> c b s") * where[:, None, :]
        delta = dpost[..., None] * w.W_out[g.layer][units].to(diff.device)[:, None, None, :]
    else:
        delta = diff[None] * where[:, None, :, None]
    return einops.rearrange(delta, "c b s d -> (c b) s d")


class _PostNorm:
    """Patching where attention and MLP outputs are normalised before they join the residual stream (Gemma 2).

    A patch changes the raw output (a head's ``dz @ W_O[h]``, a neuron's ``dpost * W_out[n]``); what joins the
    residual is the norm of the new raw output, less what joined it unpatched (the cached residual streams'
    difference). The raw outputs of the unpatched run are recomputed from the cached ``z`` and MLP
    activations, once per layer. An MLP's own hook (``hook_mlp_out``) holds what joins the residual on both
    lines: its change needs no norm.
    """

    def __init__(self, runner: PrefixRunner, w: StandardWeights, base: dict[str, Tensor], start: int, mlps: bool):
        self.runner, self.w, self.base, self.start, self.mlps = runner, w, base, start, mlps
        self._raw: dict[tuple[str, int], tuple[Tensor, Tensor]] = {}

    def _suffix(self, name: str) -> Tensor:
        return self.base[name][:, self.start :]

    def _raw_and_added(self, kind: str, layer: int) -> tuple[Tensor, Tensor]:
        """(raw output, what joined the residual) of the unpatched run at the suffix."""
        key = (kind, layer)
        if key not in self._raw:
            w = self.w
            if kind == "heads":
                added = self._suffix(tlmodel.hook_resid_mid(layer)) - self._suffix(tlmodel.hook_resid_pre(layer))
                z = self._suffix(tlmodel.hook_z(layer))
                raw = torch.einsum("bshe,hed->bsd", z, w.W_O[layer].to(z.device)) + w.b_O[layer].to(z.device)
            else:
                assert w.W_out is not None and w.b_out is not None
                added = self._suffix(tlmodel.hook_resid_post(layer)) - self._suffix(tlmodel.hook_resid_mid(layer))
                post = self._suffix(tlmodel.hook_post(layer))
                raw = post @ w.W_out[layer].to(post.device) + w.b_out[layer].to(post.device)
            self._raw[key] = (raw, added)
        return self._raw[key]

    def added_change(self, g: Any, delta: Tensor, copies: int) -> Tensor:
        """The change of the residual stream, ``[copies x batch, suffix, d_model]``, for raw changes ``delta``."""
        if g.kind == "mlps":
            return delta
        raw, added = self._raw_and_added(g.kind, g.layer)
        norm = self.runner.post_attn if g.kind == "heads" else self.runner.post_mlp
        return norm(g.layer, raw.repeat(copies, 1, 1) + delta) - added.repeat(copies, 1, 1)


def _restrict(
    groups: list[_Group],
    results: dict[str, Tensor],
    info: tlmodel.ModelInfo,
    kinds: tuple[Kind, ...],
    components: Iterable[Component | str],
) -> tuple[list[_Group], dict[str, Tensor]]:
    """Keep only the copies that patch ``components``; mark every other result NaN."""
    wanted: set[tuple[str, int, int]] = set()
    for c in (parse_component(x) for x in components):
        info.check_component(c)
        if c.kind not in kinds:
            raise TLSubmodelsError(f"{c} is a component of kind {c.kind!r}, which kinds={kinds} does not include")
        if c.pos is not None:
            raise TLSubmodelsError(f"{c}: components= takes components over all positions (no '@pos')")
        wanted.add((c.kind, c.layer, c.index or 0))
    kept = []
    for g in groups:
        keep = torch.tensor([(g.kind, g.layer, int(u)) in wanted for u in g.units], dtype=torch.bool)
        if keep.any():
            idx = keep.nonzero()[:, 0]
            kept.append(_Group(g.layer, g.kind, g.units[idx], g.pos_mask[idx], [g.out_index[i] for i in idx.tolist()]))
    masked = {}
    for kind, t in results.items():
        patched = torch.zeros_like(t, dtype=torch.bool)
        for g in kept:
            if g.kind == kind:
                for index in g.out_index:
                    patched[index] = True
        masked[kind] = torch.where(patched, t, torch.full_like(t, float("nan")))
    return kept, masked


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

    def __init__(self, g: _Group, lo: int, hi: int, batch: int, source: Tensor, n_units: int) -> None:
        self.layer, self.kind, self.source = g.layer, g.kind, source
        unit_mask = torch.nn.functional.one_hot(g.units[lo:hi], n_units).bool()
        self.unit_mask = unit_mask.to(source.device).repeat_interleave(batch, 0)  # [rows, units]
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

    def hook(self, act: Tensor, hook: Any = None) -> Tensor:
        """A TransformerLens forward hook over all positions."""
        pos = torch.arange(act.shape[1], device=self.source.device)[None].expand(act.shape[0], -1)
        return self(act, pos)


def _fast_names(info: tlmodel.ModelInfo, kinds: tuple[Kind, ...], parallel: bool = False) -> list[str]:
    """The hook points the fast path caches: the sites, keys, values and the residual stream after each half-layer
    (after each layer only, where attention and MLP run in parallel)."""
    after_attn = tlmodel.hook_resid_mid if info.has_mlps and not parallel else tlmodel.hook_resid_post
    sites = [tlmodel.site_hook(kind, layer) for kind in kinds for layer in range(info.n_layers)]
    return sites + [
        h(layer)
        for layer in range(info.n_layers)
        for h in (tlmodel.hook_k, tlmodel.hook_v, after_attn, tlmodel.hook_resid_post)
    ]


def _copied_mb(model: Any, weights: StandardWeights) -> float:
    """Memory of the fast path's weights that are copies, not views of the model's parameters, in MB."""
    owned = {p.untyped_storage().data_ptr() for p in model.parameters()}
    total = 0
    for value in vars(weights).values():
        for t in value if isinstance(value, list | tuple) else [value]:
            if isinstance(t, Tensor) and t.untyped_storage().data_ptr() not in owned:
                total += t.numel() * t.element_size()
    return total / 2**20


def _example_mb(info: tlmodel.ModelInfo, kinds: tuple[Kind, ...], seq: int) -> float:
    """Memory one example costs before any patched forward: the cached activations of its two runs (the
    sites, the residual stream, keys and values for the fast path), the caching forward, its results, in MB."""
    # per layer: the sites, the residual stream after each half-layer and at its input, keys and values
    width = sum(info.site_mb(k, seq) for k in kinds) + info.site_mb("mlps", seq) * 3 + info.site_mb("heads", seq) * 2
    cached = info.n_layers * 2 * width
    # its patched metrics, at most: every head and MLP layer at every position, every neuron
    results = 4 * info.n_layers * (seq * (info.n_heads + 1) + (info.d_mlp or 0))
    return cached + 2 * info.layer_row_mb(seq) + results / 2**20
