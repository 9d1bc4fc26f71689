"""Ablation hooks: replace components' activations by zero, a mean, a resample or a patch.

The primary output is a plain TransformerLens ``fwd_hooks`` list, so it works with
``model.run_with_hooks(tokens, fwd_hooks=hooks)``, ``with model.hooks(fwd_hooks=hooks)``,
``model.run_with_cache`` under those hooks, and generation. :func:`ablated` is a context manager
over ``model.hooks``, so TransformerLens' own nesting and cleanup apply.

Zero and (all-position) mean ablation do not depend on the sequence length, so they work for any
prompt and during generation. Per-position means, resampling, patching and position components
(``L1H3@5``) take values position by position from a reference run and need runs no longer than
it. A hook sees positions relative to its input, so under key-value-cached generation (each step
sees one new token) use those only with ``use_past_kv_cache=False``.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict, defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from tl_submodels import model as tlmodel
from tl_submodels.components import MLP, Component, Kind, Neuron, forward_order, parse_component
from tl_submodels.errors import TLSubmodelsError

__all__ = [
    "ABLATIONS",
    "CACHE_MB",
    "FAST_TOLERANCE",
    "AblatedRuns",
    "Ablation",
    "Ablator",
    "HookFn",
    "Reference",
    "ablated",
    "ablation_hooks",
    "complement",
    "layer_ablations",
]

Ablation = Literal["zero", "mean", "resample", "patch"]
ABLATIONS: tuple[Ablation, ...] = ("zero", "mean", "resample", "patch")
HookFn = Callable[..., Tensor]
# Reference prompts for mean / resample / patch ablation: token ids [batch, pos], or for mean
# ablation over all positions a list of them (prompts of different lengths, e.g. several tasks').
Reference = Int[Tensor, "batch pos"] | list[Tensor]


def complement(model: Any, sub: Iterable[Component | str]) -> list[Component]:
    """Every component of the model outside ``sub``: the part that ``keep_only`` ablates.

    Heads not in ``sub``; for each layer's MLP: nothing if ``MLP{l}`` is kept, the other neurons if
    some of its neurons are kept, else the whole ``MLP{l}``.

    Example:
        >>> [str(c) for c in complement(model, ["L0H0", "L0H1", "L0H2", "L1H0"])]  # doctest: +SKIP
        ['L0H3', 'L1H1', 'L1H2', 'L1H3']
    """
    info = tlmodel.model_info(model)
    kept = {parse_component(c).without_pos() for c in sub}
    out: list[Component] = [c for c in info.components(("heads",)) if c not in kept]
    if info.has_mlps:
        for layer in range(info.n_layers):
            if MLP(layer) in kept:
                continue
            neurons = {c.unit for c in kept if isinstance(c, Neuron) and c.layer == layer}
            if neurons:
                out += [n for n in _layer_neurons(layer, info.d_mlp or 0) if n.unit not in neurons]
            else:
                out.append(MLP(layer))
    return sorted(out, key=forward_order)


@lru_cache(maxsize=256)
def _layer_neurons(layer: int, d_mlp: int) -> tuple[Neuron, ...]:
    """Every neuron of one layer, built once (keep-only runs take the complement of a set for every forward)."""
    return tuple(Neuron(layer, n) for n in range(d_mlp))


def ablation_hooks(
    model: Any,
    sub: Iterable[Component | str],
    *,
    ablation: Ablation = "zero",
    reference: Reference | None = None,
    per_position: bool = False,
    seed: int = 0,
    keep_only: bool = False,
) -> list[tuple[str, HookFn]]:
    """Forward hooks that ablate the components of ``sub`` (or everything else, ``keep_only``).

    Args:
        model: a TransformerLens model.
        sub: a SubModel or components / strings (``"L1H3"``, ``"L0N17"``, ``"MLP2"``, ``"L1H3@5"``).
        ablation: ``"zero"``; ``"mean"`` over all positions of ``reference`` (per position with
            ``per_position=True``); ``"resample"``: the activation of a random reference prompt
            (seeded) at the same position; ``"patch"``: the reference run's activation, row for
            row (reference batch equal to the run's, or 1).
        reference: token ids ``[batch, pos]`` for mean, resample and patch; for mean ablation
            over all positions also a list of them (prompts of different lengths).
        per_position: mean per position instead of over all positions.
        seed: the resample seed; a forward with the same inputs resamples the same rows.
        keep_only: ablate the complement of ``sub`` instead (see :func:`complement`).

    Returns:
        ``[(hook_name, hook_fn), ...]`` for ``fwd_hooks``.

    Raises:
        TLSubmodelsError: unknown ablation, missing reference, components out of range.

    Example:
        >>> hooks = tls.ablation_hooks(model, ["L1H0", "L1H1"], ablation="mean", reference=task.corrupt)  # doctest: +SKIP
        >>> logits = model.run_with_hooks(task.clean, fwd_hooks=hooks)  # doctest: +SKIP
    """
    return Ablator(model, ablation=ablation, reference=reference, per_position=per_position, seed=seed).hooks(
        sub, keep_only=keep_only
    )


class Ablator:
    """Ablation hooks for many sub-models of one model, with the reference run computed once.

    :func:`ablation_hooks` builds one of these per call; keep one yourself to ablate many
    sub-models against the same reference (as ``find_circuit`` does) without rerunning it.

    Example:
        >>> ablator = tls.Ablator(model, ablation="mean", reference=task.corrupt)  # doctest: +SKIP
        >>> hooks = ablator.hooks(["L1H0"], keep_only=True)  # doctest: +SKIP
    """

    def __init__(
        self,
        model: Any,
        *,
        ablation: Ablation = "zero",
        reference: Reference | None = None,
        per_position: bool = False,
        seed: int = 0,
    ) -> None:
        if ablation not in ABLATIONS:
            raise TLSubmodelsError(f"unknown ablation {ablation!r}: choose from {ABLATIONS}")
        refs: list[Tensor] = []
        if ablation != "zero":
            if reference is None:
                raise TLSubmodelsError(
                    f"ablation={ablation!r} needs reference=token ids [batch, pos] (e.g. task.corrupt)"
                )
            refs = (
                [torch.as_tensor(r) for r in reference]
                if isinstance(reference, list | tuple)
                else [torch.as_tensor(reference)]
            )
            if not refs or any(r.ndim != 2 for r in refs):
                raise TLSubmodelsError(
                    f"reference must be token ids [batch, pos] (or, for mean ablation, a list of them); got "
                    f"{[list(r.shape) for r in refs]}"
                )
            if len(refs) > 1 and (ablation != "mean" or per_position):
                raise TLSubmodelsError(
                    "a list of references (prompts of different lengths) works for mean ablation over all "
                    f"positions only; ablation={ablation!r}, per_position={per_position}. Pass one [batch, pos] tensor."
                )
        self.model, self.ablation, self.refs = model, ablation, refs
        self.per_position, self.seed = per_position, seed
        self.info = tlmodel.model_info(model)
        for r in refs:
            if r.dtype.is_floating_point or r.dtype == torch.bool:
                raise TLSubmodelsError(f"reference must be integer token ids, got dtype {r.dtype}")
            if r.numel() and (int(r.min()) < 0 or int(r.max()) >= self.info.d_vocab):
                bad = int(r[(r < 0) | (r >= self.info.d_vocab)][0])
                raise TLSubmodelsError(
                    f"reference holds token id {bad}, outside the model's vocabulary (d_vocab={self.info.d_vocab}, "
                    f"ids 0-{self.info.d_vocab - 1}): pass token ids of this model's tokenizer"
                )
        too_long = [int(r.shape[1]) for r in refs if r.shape[1] > self.info.n_ctx]
        if too_long:
            raise TLSubmodelsError(
                f"reference prompts of {too_long[0]} tokens are longer than the model's context n_ctx={self.info.n_ctx}: "
                f"cut them (reference[:, :{self.info.n_ctx}])"
            )
        self._ref_acts: dict[str, Tensor] = {}
        self._checked: set[Component] = set()  # components already checked against the model

    def targets(self, sub: Iterable[Component | str], *, keep_only: bool = False) -> list[Component]:
        """The components that ablating ``sub`` (or keeping only it) replaces, checked against the model.

        Example:
            >>> [str(c) for c in Ablator(model).targets(["L0H0"])]  # doctest: +SKIP
            ['L0H0']
        """
        comps = [c if isinstance(c, Component) else parse_component(c) for c in sub]
        for c in comps:
            if c not in self._checked:
                self.info.check_component(c)
                self._checked.add(c)
        return complement(self.model, comps) if keep_only else comps

    def hooks(self, sub: Iterable[Component | str], *, keep_only: bool = False) -> list[tuple[str, HookFn]]:
        """``fwd_hooks`` that ablate ``sub`` (or its complement with ``keep_only``)."""
        targets = self.targets(sub, keep_only=keep_only)
        if not targets:
            return []
        tlmodel.check_model(self.model, tuple({c.kind for c in targets}), training_ok=True)
        groups: dict[tuple[Kind, int], list[Component]] = defaultdict(list)
        for c in targets:
            groups[(c.kind, c.layer)].append(c)
        names = {tlmodel.site_hook(kind, layer): (kind, layer) for kind, layer in groups}
        ref_acts = self.reference_activations({kind for kind, _ in groups}, list(names))
        return [
            (
                name,
                _SiteHook(kind, groups[(kind, layer)], self.ablation, ref_acts.get(name), self.per_position, self.seed),
            )
            for name, (kind, layer) in names.items()
        ]

    def values(self, names: list[str]) -> dict[str, Tensor]:
        """What each named site's units become under zero or all-position mean ablation: a tensor
        that broadcasts over ``[batch, pos]`` (a 0-d zero, or the site's mean activation).

        Example:
            >>> Ablator(model, ablation="mean", reference=task.corrupt).values(["blocks.0.attn.hook_z"])  # doctest: +SKIP
        """
        if self.ablation == "zero":
            return {n: torch.zeros(()) for n in names}
        if self.ablation != "mean" or self.per_position:
            raise TLSubmodelsError(
                f"values() holds one value per unit for zero or all-position mean ablation; this ablator is "
                f"{self.ablation!r}{' per position' if self.per_position else ''}"
            )
        kinds = {self.info.site_kind(n) for n in names}
        return self.reference_activations(kinds, names)

    def reference_activations(self, kinds: set[Kind], names: list[str]) -> dict[str, Tensor]:
        """The reference run's activations (means, for mean ablation) at ``names``, computed once."""
        if not self.refs:
            return {}
        if any(n not in self._ref_acts for n in names):
            # Every head and MLP site at once (neurons when asked), so later calls need no new forward.
            kinds = kinds | ({"heads", "mlps"} if self.info.has_mlps else {"heads"})
            wanted = set(names) | {tlmodel.site_hook(k, layer) for k in kinds for layer in range(self.info.n_layers)}
            wanted -= set(self._ref_acts)
            device = tlmodel.first_param_device(self.model)
            runs = [tlmodel.run_cache(self.model, r.to(device), wanted)[1] for r in self.refs]
            if self.ablation == "mean" and not self.per_position:  # the mean over every token of every reference
                n_tokens = sum(r.numel() for r in self.refs)
                acts = {n: torch.stack([run[n].sum((0, 1)) for run in runs]).sum(0) / n_tokens for n in wanted}
            elif self.ablation == "mean":
                acts = {n: a.mean(0) for n, a in runs[0].items()}
            else:
                acts = runs[0]
            self._ref_acts.update(acts)
        return {n: self._ref_acts[n] for n in names}


FAST_TOLERANCE = 1e-4  # the weight-level forward's largest logit difference from the model's, relative
CACHE_MB = 1024  # AblatedRuns keeps every layer's unablated residual stream when it fits in this


class AblatedRuns:
    """The read logits of some tasks' clean prompts with many component sets ablated in turn, fast.

    Searches that validate sets by ablation (``factorize``, ``diff``) run the same prompts again
    and again. This runs them once unablated and keeps each layer's residual stream; an ablated
    run then starts at the first layer the set touches. Where the model is a plain pre-norm
    transformer (:meth:`tl_submodels.model.Adapter.standard_weights`) and the ablation is zero or
    all-position mean, it runs over the weights instead of through hooks, with the last layer
    only at the positions the tasks read; the first ablated run is checked against the hooked
    one (and the unablated against the model's own logits), and any difference above 1e-4
    switches to hooks for good. Tasks whose prompts have the same length share a forward.

    Example:
        >>> runs = AblatedRuns(model, Ablator(model, ablation="mean", reference=task.corrupt), [task])  # doctest: +SKIP
        >>> runs.accuracies(["L1H0"])  # doctest: +SKIP
        [0.25]
    """

    def __init__(self, model: Any, ablator: Ablator, tasks: list[Any], *, max_rows: int = 512) -> None:
        self.model, self.ablator, self.tasks, self.info = model, ablator, list(tasks), ablator.info
        self.max_rows = max_rows
        device = tlmodel.first_param_device(model)
        self.adapter = ad = tlmodel.adapter(model)
        fast = ablator.ablation in ("zero", "mean") and not ablator.per_position and ad.causal and not ad.has_hooks()
        self.weights = ad.standard_weights(max(t.seq_len for t in self.tasks)) if fast and self.tasks else None
        self._checked = self.weights is None
        n_layers = self.info.n_layers
        tokens = sum(t.batch * t.seq_len for t in self.tasks)
        self.layers = list(range(n_layers)) if tokens * self.info.d_model * n_layers * 4 / 2**20 <= CACHE_MB else [0]
        names = [tlmodel.hook_resid_pre(layer) for layer in self.layers]
        # per task: its read logits and residual streams, unablated (one forward per task: done once)
        self._full: list[Tensor] = []
        self._resid: list[dict[int, Tensor]] = []
        for t in self.tasks:
            logits, cache = tlmodel.run_cache(model, t.clean.to(device), names)
            self._full.append(t.final_logits(logits))
            self._resid.append({layer: cache[n] for layer, n in zip(self.layers, names, strict=True)})
        self._views: dict[tuple[int, ...], _View] = {}
        self._plan(list(range(len(self.tasks))))  # checks the weight-level forward against the model's logits

    def finals(
        self, sub: Iterable[Component | str], *, keep_only: bool = False, only: Iterable[int] | None = None
    ) -> list[Tensor]:
        """Each task's read logits (``Task.final_logits`` of its clean run) with ``sub`` ablated (or
        everything but ``sub``, ``keep_only``); ``only``: those tasks' (by index), in that order.

        Example:
            >>> runs.finals(["L1H0"], only=[0])[0].shape  # doctest: +SKIP
            torch.Size([64, 74])
        """
        wanted = list(range(len(self.tasks))) if only is None else list(only)
        targets = self.ablator.targets(sub, keep_only=keep_only)
        if not targets:
            return [self._full[i] for i in wanted]
        first = min(c.layer for c in targets)
        start = max(layer for layer in self.layers if layer <= first)
        ablate = self._ablate(targets) if self.weights is not None else None
        out: dict[int, Tensor] = {}
        for v in self._plan(sorted(set(wanted))):
            finals = None
            if ablate is not None and v.runner is not None:
                with torch.no_grad():
                    finals = v.run(frozenset(targets), ablate)
                if not self._checked:  # the first ablated run: the weight-level forward against the hooked one
                    self._checked = True
                    if not _close(finals, self._hooked(v, targets, start)):
                        warnings.warn(
                            "tl_submodels: the weight-level ablated forward differs from the hooked one on "
                            f"{self.adapter.source}; running ablations through hooks instead (slower, exact).",
                            stacklevel=2,
                        )
                        self.weights, ablate, finals = None, None, None
            if finals is None:
                finals = self._hooked(v, targets, start)
            out.update(zip(v.index, finals.split(v.sizes), strict=True))
        return [out[i] for i in wanted]

    def metrics(self, sub: Iterable[Component | str], **kwargs: Any) -> list[float]:
        """Each task's metric with ``sub`` ablated (takes the arguments of :meth:`finals`)."""
        wanted = list(range(len(self.tasks)) if kwargs.get("only") is None else kwargs["only"])
        return [
            float(self.tasks[i].per_example(f).mean()) for i, f in zip(wanted, self.finals(sub, **kwargs), strict=True)
        ]

    def accuracies(self, sub: Iterable[Component | str], **kwargs: Any) -> list[float]:
        """Each task's top-1 accuracy with ``sub`` ablated (takes the arguments of :meth:`finals`)."""
        wanted = list(range(len(self.tasks)) if kwargs.get("only") is None else kwargs["only"])
        return [self.tasks[i].read_accuracy(f) for i, f in zip(wanted, self.finals(sub, **kwargs), strict=True)]

    def _plan(self, wanted: list[int]) -> list[_View]:
        """The forwards that run the ``wanted`` tasks: tasks with prompts of one length and reads of
        one shape share one, up to ``max_rows`` rows, for zero and mean ablation (views are kept: a search
        asks for the same ones)."""
        by_shape: dict[tuple[int, ...], list[int]] = defaultdict(list)
        alone = self.ablator.ablation in ("resample", "patch")  # values drawn or taken row by row: one task a run
        for i in wanted:
            t = self.tasks[i]
            by_shape[(t.seq_len, t.out_pos.shape[1] if t.out_pos.ndim == 2 else 0, i if alone else -1)].append(i)
        plan = []
        for members in by_shape.values():
            chunk: list[int] = []
            for i in [*members, -1]:
                if chunk and (i < 0 or sum(self.tasks[c].batch for c in chunk) + self.tasks[i].batch > self.max_rows):
                    key = tuple(chunk)
                    if key not in self._views:
                        self._views[key] = _View(self, chunk)
                        if self.weights is not None and not self._views[key].check():
                            self.weights, self._checked = None, True
                    plan.append(self._views[key])
                    chunk = []
                if i >= 0:
                    chunk.append(i)
        return plan

    def _ablate(self, targets: list[Component]) -> dict[int, Any]:
        """The weight-level forward's ablation: per layer, which units become which values."""
        return layer_ablations(self.ablator, targets, tlmodel.first_param_device(self.model))

    def _hooked(self, v: _View, targets: list[Component], start: int) -> Tensor:
        logits = self.adapter.forward_from(start, v.tokens, v.resid(start), self.ablator.hooks(targets))
        return torch.cat([t.final_logits(lg) for t, lg in zip(v.tasks, logits.split(v.sizes), strict=True)])


def layer_ablations(ablator: Ablator, targets: list[Component], device: torch.device) -> dict[int, Any]:
    """What ``targets`` ablated by ``ablator`` (zero or all-position mean) are in a weight-level forward
    (:class:`tl_submodels.fastpath.PrefixRunner`): per layer, a ``LayerAblation`` of units and their values.

    Example:
        >>> ab = Ablator(tls.zoo.load("induction-2l"), ablation="zero")
        >>> sorted(layer_ablations(ab, ab.targets(["L1H0", "L0H2"]), torch.device("cpu")))
        [0, 1]
    """
    from tl_submodels.fastpath import LayerAblation

    by_layer: dict[int, dict[Kind, list[int]]] = defaultdict(lambda: defaultdict(list))
    for c in targets:
        by_layer[c.layer][c.kind].append(c.unit)
    values = ablator.values([tlmodel.site_hook(kind, layer) for layer, ks in by_layer.items() for kind in ks])
    out = {}
    for layer, ks in by_layer.items():  # no closures here: see task._tile
        v = {kind: values[tlmodel.site_hook(kind, layer)].to(device) for kind in ks}
        heads, neurons = ks.get("heads"), ks.get("neurons")
        out[layer] = LayerAblation(
            heads=None if heads is None else torch.tensor(heads, device=device),
            head_values=None if heads is None else _of_units(v["heads"], heads),
            neurons=None if neurons is None else torch.tensor(neurons, device=device),
            neuron_values=None if neurons is None else _of_units(v["neurons"], neurons),
            mlp_value=v.get("mlps"),
        )
    return out


def _of_units(values: Tensor, units: list[int]) -> Tensor:
    """The ablation values of ``units`` (a 0-d zero stands for every unit)."""
    return values if values.ndim == 0 else values[units]


def _close(a: Tensor, b: Tensor) -> bool:
    return float((a - b).abs().max()) <= FAST_TOLERANCE * max(1.0, float(b.abs().max()))


class _View:
    """Some tasks of an :class:`AblatedRuns` run in one forward: their prompts stacked, and for the
    weight-level forward the residual streams of recent runs, so that a set that differs from one
    of them only from some layer on starts there (after that layer's attention where only MLP
    units differ there)."""

    def __init__(self, runs: AblatedRuns, index: list[int]) -> None:
        from tl_submodels.fastpath import PrefixRunner

        self.runs, self.index = runs, index
        self.tasks = [runs.tasks[i] for i in index]
        self.sizes = [t.batch for t in self.tasks]
        device = tlmodel.first_param_device(runs.model)
        self.tokens = torch.cat([t.clean for t in self.tasks]).to(device)
        self._resid: dict[int, Tensor] = {}
        self.runner = None
        self.anchors: OrderedDict[frozenset[Component], tuple[dict[tuple[int, Any], Tensor], Tensor]] = OrderedDict()
        self.keep = 1
        if runs.weights is not None:
            out_pos = torch.cat([t.out_pos for t in self.tasks]).to(device)
            n_layers = runs.info.n_layers
            self.runner = PrefixRunner(runs.weights, [None] * n_layers, [None] * n_layers, 0, out_pos)
            run_mb = 2 * n_layers * self.tokens.numel() * runs.info.d_model * 4 / 2**20
            self.keep = int(max(2, min(16, CACHE_MB // max(run_mb, 1e-9))))

    def resid(self, layer: int) -> Tensor:
        if layer not in self._resid:
            self._resid[layer] = torch.cat([self.runs._resid[i][layer] for i in self.index])
        return self._resid[layer]

    def check(self) -> bool:
        """The unablated weight-level run (kept as the first anchor) equals the model's own logits."""
        assert self.runner is not None
        capture: dict[tuple[int, Any], Tensor] = {}
        with torch.no_grad():
            finals = self.runner.run(self.resid(0), 0, "pre", {}, capture=capture)
        self.anchors[frozenset()] = (capture, finals)
        return _close(finals, torch.cat([self.runs._full[i] for i in self.index]))

    def run(self, targets: frozenset[Component], ablate: dict[int, Any]) -> Tensor:
        """The read logits with ``targets`` ablated, continued from the recent run it shares the most layers with."""
        assert self.runner is not None
        best: tuple[int, frozenset[Component], tuple[int, Any]] | None = None
        for kept in self.anchors:
            differ = targets ^ kept
            if not differ:
                self.anchors.move_to_end(kept)
                return self.anchors[kept][1]
            layer = min(c.layer for c in differ)
            heads = any(c.layer == layer and c.kind == "heads" for c in differ)
            start = (layer, "pre" if heads or self.runner.parallel else "attn")
            if best is None or _rank(start) > best[0]:
                best = (_rank(start), kept, start)
        assert best is not None
        rank, kept, (layer, stage) = best
        resids = self.anchors[kept][0]
        capture = {k: t for k, t in resids.items() if _rank(k) <= rank}  # the same as the anchor's up to the start
        last = layer == self.runs.info.n_layers - 1 and stage == "attn"
        finals = self.runner.run(resids[(layer, stage)], layer, stage, ablate, capture=capture, read_only=last)
        self.anchors[targets] = (capture, finals)
        while len(self.anchors) > self.keep:  # the oldest goes; the unablated run stays
            oldest = next(k for k in self.anchors if k)
            del self.anchors[oldest]
        return finals


def _rank(point: tuple[int, Any]) -> int:
    """Order of points in the forward: a layer's entry, then after its attention."""
    return 2 * point[0] + (point[1] == "attn")


class _SiteHook:
    """The hook for one site: replaces the listed units (at their positions) by the ablation value.

    A module-level class rather than a closure, so that a type-checking import hook (jaxtyping's in
    the test suite) instruments it once at import, not once per hook built.
    """

    def __init__(
        self, kind: Kind, comps: list[Component], ablation: Ablation, ref: Tensor | None, per_position: bool, seed: int
    ) -> None:
        self.kind, self.ablation, self.ref, self.per_position, self.seed = kind, ablation, ref, per_position, seed
        self.all_pos_units = sorted({c.unit for c in comps if c.pos is None})
        self.pos_units = sorted({(c.pos, c.unit) for c in comps if c.pos is not None})
        self._masks: dict[tuple[int, int, torch.device], Tensor] = {}

    def value_for(self, act: Tensor) -> Tensor:
        """What the ablated units become in this run (broadcastable against ``act``)."""
        ref, ablation = self.ref, self.ablation
        batch, seq = act.shape[:2]
        if ablation == "zero" or ref is None:
            return act.new_zeros(())
        if ablation == "mean" and not self.per_position:
            return ref.to(act.device, act.dtype)
        ref_len = ref.shape[0] if ablation == "mean" else ref.shape[1]
        if seq > ref_len:
            raise TLSubmodelsError(
                f"{ablation} ablation{' (per position)' if ablation == 'mean' else ''} takes values position by position "
                f"from the reference, which has {ref_len} positions, but this run has {seq}. "
                "Use a longer reference, or ablation='mean' / 'zero', which work at any length."
            )
        if ablation == "mean":
            return ref[:seq].to(act.device, act.dtype)
        if ablation == "resample":
            gen = torch.Generator().manual_seed(self.seed)
            rows = torch.randint(int(ref.shape[0] or 1), (batch,), generator=gen)
            return ref[rows, :seq].to(act.device, act.dtype)
        if ref.shape[0] not in (1, batch):
            raise TLSubmodelsError(
                f"patch ablation: the reference has {ref.shape[0]} rows but the run has {batch}; pass one per row, or 1"
            )
        return ref[:, :seq].to(act.device, act.dtype)

    def mask(self, seq: int, n_units: int, device: torch.device) -> Tensor:
        """Which (position, unit) entries are ablated, shaped to broadcast against the site's activation."""
        key = (seq, n_units, device)
        if key not in self._masks:
            # A normal tensor even when first built under inference mode (generation), so that a later
            # run with gradients can use it.
            with torch.inference_mode(False):
                mask = torch.zeros(seq, n_units, dtype=torch.bool, device=device)
                if self.all_pos_units:
                    mask[:, self.all_pos_units] = True
                for pos, unit in self.pos_units:
                    if pos < seq:
                        mask[pos, unit] = True
            # heads: [1, seq, head, 1] over d_head; neurons: [1, seq, neuron]; mlps: [1, seq, 1] over d_model
            self._masks[key] = mask[None, :, :, None] if self.kind == "heads" else mask[None]
        return self._masks[key]

    def __call__(self, act: Tensor, hook: Any = None) -> Tensor:
        n_units = 1 if self.kind == "mlps" else act.shape[2]
        return torch.where(self.mask(act.shape[1], n_units, act.device), self.value_for(act), act)


@contextmanager
def ablated(model: Any, sub: Iterable[Component | str], **kwargs: Any) -> Iterator[Any]:
    """Run anything on ``model`` with ``sub`` ablated; hooks are removed on exit, also on error.

    Takes the keyword arguments of :func:`ablation_hooks`. Delegates to ``model.hooks``.

    Example:
        >>> with tls.ablated(model, circuit, ablation="zero"):  # doctest: +SKIP
        ...     out = model.generate(prompt, max_new_tokens=5)
    """
    hooks = ablation_hooks(model, sub, **kwargs)
    with model.hooks(fwd_hooks=hooks):
        yield model
