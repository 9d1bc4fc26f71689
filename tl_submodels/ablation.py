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

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Literal

import torch
from jaxtyping import Int
from torch import Tensor

from tl_submodels import model as tlmodel
from tl_submodels.components import MLP, Component, Head, Kind, Neuron, parse_component
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.submodel import SubModel

Ablation = Literal["zero", "mean", "resample", "patch"]
ABLATIONS: tuple[Ablation, ...] = ("zero", "mean", "resample", "patch")
HookFn = Callable[..., Tensor]
# Reference prompts for mean / resample / patch ablation: token ids [batch, pos], or for mean
# ablation over all positions a list of them (prompts of different lengths, e.g. several tasks').
Reference = Int[Tensor, "batch pos"] | list[Tensor]


def complement(model: Any, sub: SubModel | Iterable[Component | str]) -> list[Component]:
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
            neurons = {c for c in kept if isinstance(c, Neuron) and c.layer == layer}
            if neurons:
                out += [Neuron(layer, n) for n in range(info.d_mlp or 0) if Neuron(layer, n) not in neurons]
            else:
                out.append(MLP(layer))
    return sorted(out)


def ablation_hooks(
    model: Any,
    sub: SubModel | Iterable[Component | str],
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

    def hooks(self, sub: SubModel | Iterable[Component | str], *, keep_only: bool = False) -> list[tuple[str, HookFn]]:
        """``fwd_hooks`` that ablate ``sub`` (or its complement with ``keep_only``)."""
        comps = [parse_component(c) for c in sub]
        for c in comps:
            self.info.check_component(c)
        targets = complement(self.model, comps) if keep_only else comps
        if not targets:
            return []
        tlmodel.check_model(self.model, tuple({c.kind for c in targets}), training_ok=True)
        groups: dict[tuple[Kind, int], list[Component]] = defaultdict(list)
        for c in targets:
            groups[(c.kind, c.layer)].append(c)
        names = {tlmodel.site_hook(kind, layer): (kind, layer) for kind, layer in groups}
        ref_acts = self._reference({kind for kind, _ in groups}, list(names))
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
        return self._reference(kinds, names)

    def _reference(self, kinds: set[Kind], names: list[str]) -> dict[str, Tensor]:
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


class _SiteHook:
    """The hook for one site: replaces the listed units (at their positions) by the ablation value.

    A module-level class rather than a closure, so that a type-checking import hook (jaxtyping's in
    the test suite) instruments it once at import, not once per hook built.
    """

    def __init__(
        self, kind: Kind, comps: list[Component], ablation: Ablation, ref: Tensor | None, per_position: bool, seed: int
    ) -> None:
        self.kind, self.ablation, self.ref, self.per_position, self.seed = kind, ablation, ref, per_position, seed
        self.all_pos_units = sorted({_unit(c) for c in comps if c.pos is None})
        self.pos_units = sorted({(c.pos, _unit(c)) for c in comps if c.pos is not None})
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


def _unit(c: Component) -> int:
    if isinstance(c, Head):
        return c.head
    if isinstance(c, Neuron):
        return c.neuron
    return 0


@contextmanager
def ablated(model: Any, sub: SubModel | Iterable[Component | str], **kwargs: Any) -> Iterator[Any]:
    """Run anything on ``model`` with ``sub`` ablated; hooks are removed on exit, also on error.

    Takes the keyword arguments of :func:`ablation_hooks`. Delegates to ``model.hooks``.

    Example:
        >>> with tls.ablated(model, circuit, ablation="zero"):  # doctest: +SKIP
        ...     out = model.generate(prompt, max_new_tokens=5)
    """
    hooks = ablation_hooks(model, sub, **kwargs)
    with model.hooks(fwd_hooks=hooks):
        yield model
