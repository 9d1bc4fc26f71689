"""Sub-models of a corpus without a task: which parts a network holds, found from what it predicts.

``decompose`` needs no clean/corrupt prompts. The behaviour is the model's own next-token
prediction on a corpus: for each counted prediction and each head or neuron, the effect of
ablating the component on the log-odds of the corpus' next token (:mod:`tl_submodels.tokeneffects`).

1. **Rows.** Effects are measured in log-odds, ``log p / (1 - p)``: log p saturates on confident
   predictions (the ones a model was trained for), so a component that a prediction cannot do
   without moves its log p little once p is near 1. Rows whose effects are tiny (below a tenth of
   the 99th percentile of the rows' norms: unpredictable tokens that nothing in the model helps
   with) are left out of the factorisation, and every other row is scaled to unit norm: the
   behaviours' total effects differ 20x on multitask-3l, and unscaled rows let the largest take
   every factor. Each row says which components a prediction leans on, not how much.
2. **Factors.** NMF of the rows' magnitudes, as in :func:`tl_submodels.factorize`.
3. **k**, unless given: the largest k before two factors start to be used by the same predictions.
   Past the true number of behaviours NMF splits one behaviour's predictions over two factors
   that the same rows load on; the cosine between two factors' usage columns then jumps (on
   multitask-3l at every setting tried: from <= 0.41 at k=4 to >= 0.52 at k=5). k is the last k
   before that cosine first passes ``CO_USAGE``. The held-out error of ``choose_k`` keeps falling
   on such rows (it chose k=1 there), and the factors' stability over resamples was as high at
   k=8 as at k=4.
4. **Parts.** Each factor's predictions are the rows that use it most. Its *core* is the member set
   whose ablation best separates those predictions from every other factor's (chosen by validation,
   as in ``factorize``); its *extent* grows the core in the order of the factor's loadings until
   keeping only it (everything else ablated) restores ``EXTENT_TARGET`` of the behaviour on its
   predictions. ``parts`` are the extents, ``cores`` the cores.
5. **Labels.** Each part's top contexts, the current and next tokens over-represented in its
   predictions against the whole corpus, and where in the sequences they are.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm import tqdm

from tl_submodels import model as tlmodel
from tl_submodels.ablation import Ablation, Ablator
from tl_submodels.components import Component, Kind
from tl_submodels.discovery import grow_to_target
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.factorize import refine_by_validation
from tl_submodels.nmf import nmf
from tl_submodels.submodel import SubModel
from tl_submodels.tokeneffects import Corpus, EffectMethod, Positions, PreparedCorpus, prepare_corpus, token_effects

PART_SCHEMA = "tl_submodels.part"
PART_SCHEMA_VERSION = 1
ROW_FLOOR = 0.1  # rows below this fraction of the 99th percentile of the rows' norms are not factorised
CO_USAGE = 0.5  # k stops before two factors' usage columns have a larger cosine
EXTENT_TARGET = 0.8  # keep-only faithfulness an extent reaches on its part's predictions
EVAL_PREDICTIONS = 64
CORE_SLACK = 0.05  # a core is the smallest candidate scoring within this of the best (own minus elsewhere necessity)  # predictions per part used to choose cores and extents


@dataclass(frozen=True, kw_only=True)
class PartEvaluation:
    """One part validated by ablation on the predictions that use it and on all the others.

    ``faithfulness``: keeping only the extent (the rest ablated) restores this fraction of the
    behaviour (mean log p of the next token) on the part's predictions; ``core_necessity``: ablating
    the core loses this fraction; ``necessity_elsewhere``: the largest fraction ablating the extent
    loses on another part's predictions (specificity: near 0). Loss is the mean negative log p.
    """

    part: str
    size: int
    core_size: int
    predictions: int
    faithfulness: float
    core_faithfulness: float
    core_necessity: float
    necessity_elsewhere: float
    loss_increase: float
    loss_increase_others: float
    accuracy_drop: float
    accuracy_drop_others: float


@dataclass(frozen=True, kw_only=True)
class Context:
    """One prediction shown to a person: the tokens before it, the token it predicts, how much it uses the part."""

    sequence: int
    position: int
    before: list[str]
    next: str
    usage: float

    def __str__(self) -> str:
        return f"{' '.join(self.before)} -> {self.next}"


@dataclass(frozen=True, kw_only=True)
class Decomposition:
    """Parts of what a model does on a corpus, with the predictions that use them and their validation.

    Attributes:
        parts: one SubModel per factor (its extent), named ``part-0``, ``part-1``...
        cores: the necessary core of each part (same order, also SubModels).
        labels: a short computed description of each part (tokens it predicts, after what, where).
        usage: ``[prediction, part]`` how much each counted prediction uses each part.
        usage_index: ``[prediction, 2]`` the (sequence, position) of each prediction.
        loadings: ``[part, component]`` the factor loadings (NMF's H, rows sum to 1).
        components: the columns of ``loadings``.
        evaluations: one :class:`PartEvaluation` per part.
        k_errors: the largest cosine between two factors' usage columns at each k tried (empty when given).
        tokens: the corpus as padded token ids; words: the text of each token id that occurs in it.

    Example:
        >>> dec = tls.decompose(model, tls.zoo.corpus("multitask-3l", n=128), positions="last")  # doctest: +SKIP
        >>> dec.to_frame()  # doctest: +SKIP
    """

    parts: list[SubModel]
    cores: list[SubModel]
    labels: list[str]
    usage: Float[Tensor, "prediction part"]
    usage_index: Int[Tensor, "prediction 2"]
    loadings: Float[Tensor, "part component"]
    components: list[Component]
    evaluations: list[PartEvaluation]
    k_errors: dict[int, float]
    tokens: Int[Tensor, "batch pos"]
    words: dict[int, str]
    method: str
    ablation: str
    model_shape: dict[str, int | None] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.parts]

    def _index(self, part: int | str) -> int:
        if isinstance(part, int) and not isinstance(part, bool) and 0 <= part < len(self.parts):
            return part
        if isinstance(part, str) and part in self.names:
            return self.names.index(part)
        raise TLSubmodelsError(
            f"no part {part!r}; the parts are {self.names} (or their indices 0-{len(self.parts) - 1})"
        )

    def uses(self, part: int | str) -> Tensor:
        """Bool ``[prediction]``: the predictions whose most-used part is ``part``."""
        j = self._index(part)
        return (self.usage.argmax(1) == j) & (self.usage.sum(1) > 0)

    def top_contexts(self, part: int | str, n: int = 10, *, window: int = 8) -> list[Context]:
        """The ``n`` predictions that use ``part`` most, each with ``window`` tokens before it.

        Example:
            >>> [str(c) for c in dec.top_contexts("part-0", 3)]  # doctest: +SKIP
            ['SUC w3 w1 c4 w2 = -> c5', ...]
        """
        j = self._index(part)
        order = self.usage[:, j].argsort(descending=True)[:n].tolist()
        out = []
        for i in order:
            seq, pos = (int(v) for v in self.usage_index[i])
            before = self.tokens[seq, max(0, pos + 1 - window) : pos + 1].tolist()
            out.append(
                Context(
                    sequence=seq,
                    position=pos,
                    before=[self.words.get(t, str(t)) for t in before],
                    next=self.words.get(int(self.tokens[seq, pos + 1]), str(int(self.tokens[seq, pos + 1]))),
                    usage=float(self.usage[i, j]),
                )
            )
        return out

    def rename(self, names: dict[str, str]) -> Decomposition:
        """A copy with parts (and their cores) renamed: ``dec.rename({"part-2": "induction"})``.

        Example:
            >>> dec = dec.rename({"part-0": "successor"})  # doctest: +SKIP
        """
        unknown = [n for n in names if n not in self.names]
        if unknown:
            raise TLSubmodelsError(f"no part {unknown}; the parts are {self.names}")
        new = [names.get(n, n) for n in self.names]
        if len(set(new)) != len(new):
            raise TLSubmodelsError(f"the new names collide: {new}; give every part its own name")
        return replace(
            self,
            parts=[p.renamed(m) for p, m in zip(self.parts, new, strict=True)],
            cores=[c.renamed(f"{m}-core") for c, m in zip(self.cores, new, strict=True)],
            evaluations=[replace(e, part=m) for e, m in zip(self.evaluations, new, strict=True)],
        )

    def to_frame(self) -> Any:
        """One row per part: label, sizes, predictions using it, faithfulness, specificity, loss and accuracy effects."""
        import pandas as pd

        rows = []
        for p, c, lab, ev in zip(self.parts, self.cores, self.labels, self.evaluations, strict=True):
            rows.append(
                {
                    "part": p.name,
                    "label": lab,
                    "size": len(p),
                    "core": " ".join(str(x) for x in c),
                    "predictions": ev.predictions,
                    "faithfulness": ev.faithfulness,
                    "core_necessity": ev.core_necessity,
                    "necessity_elsewhere": ev.necessity_elsewhere,
                    "loss_increase": ev.loss_increase,
                    "loss_increase_others": ev.loss_increase_others,
                    "accuracy_drop": ev.accuracy_drop,
                    "accuracy_drop_others": ev.accuracy_drop_others,
                }
            )
        return pd.DataFrame(rows)

    def plot(self) -> Any:
        """Each part's usage by position in the sequence (plotly heat map).

        Example:
            >>> dec.plot()  # doctest: +SKIP
        """
        from tl_submodels import viz

        return viz.decomposition_heatmap(self)

    def _repr_html_(self) -> str:
        from tl_submodels import viz

        rows = [
            (p.name, f"{lab} · {len(p)} members, core {len(c)}")
            for p, c, lab in zip(self.parts, self.cores, self.labels, strict=True)
        ]
        return viz.summary_html(
            f"Decomposition: {len(self.parts)} parts of {len(self.usage)} predictions ({self.method})", rows
        )

    def __repr__(self) -> str:
        parts = ", ".join(f"{p.name} ({len(p)}; {lab})" for p, lab in zip(self.parts, self.labels, strict=True))
        return f"Decomposition({len(self.parts)} parts over {len(self.usage)} predictions, {self.method}: {parts})"

    def save(self, folder: str | Path) -> Path:
        """Write the library of parts: one JSON file per part (name, label, members, core, top contexts, evaluation).

        Example:
            >>> dec.save("lib/")  # doctest: +SKIP
            >>> parts = tls.load_parts("lib/")  # doctest: +SKIP
        """
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        for j, (p, c, lab, ev) in enumerate(zip(self.parts, self.cores, self.labels, self.evaluations, strict=True)):
            data = {
                "schema": PART_SCHEMA,
                "version": PART_SCHEMA_VERSION,
                "name": p.name,
                "label": lab,
                "members": [str(x) for x in p],
                "core": [str(x) for x in c],
                "top_contexts": [str(ctx) for ctx in self.top_contexts(j, 10)],
                "evaluation": dict(ev.__dict__),
                "model": self.model_shape,
                "found_by": f"decompose ({self.method} effects, {self.ablation} ablation)",
            }
            (folder / f"{p.name}.json").write_text(json.dumps(data, indent=2) + "\n")
        return folder


def load_parts(folder: str | Path, model: Any = None) -> list[SubModel]:
    """The parts a :meth:`Decomposition.save` wrote to ``folder``, as SubModels usable everywhere.

    Args:
        folder: the library folder (one ``*.json`` per part).
        model: when given, parts saved from a model of another shape are refused.

    Raises:
        TLSubmodelsError: no such folder or no parts in it, a file of another schema version, or
            parts of a model of another shape.

    Example:
        >>> parts = tls.load_parts("lib/", model)  # doctest: +SKIP
        >>> tls.usage(model, parts, "IND w1 s3 s4 s3", reference=...)  # doctest: +SKIP
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise TLSubmodelsError(f"{folder}: no such folder; pass the folder Decomposition.save() wrote")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise TLSubmodelsError(f"{folder}: no part files (*.json) in it")
    shape = _shape(model) if model is not None else None
    out = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TLSubmodelsError(f"{f}: not valid JSON ({e})") from e
        if not isinstance(data, dict) or data.get("schema") != PART_SCHEMA:
            raise TLSubmodelsError(f"{f}: not a tl_submodels part (expected schema {PART_SCHEMA!r})")
        if data.get("version") != PART_SCHEMA_VERSION:
            raise TLSubmodelsError(
                f"{f}: part schema version {data.get('version')!r}; this tl_submodels reads version "
                f"{PART_SCHEMA_VERSION}. Decompose again with this version, or load it with the version that wrote it."
            )
        if shape is not None and data.get("model") and data["model"] != shape:
            raise TLSubmodelsError(f"{f}: saved from a model of shape {data['model']}, but this model is {shape}")
        sub = SubModel(
            components=data.get("members", []),
            name=str(data.get("name") or f.stem),
            description=str(data.get("label", "")),
        )
        if model is not None:
            sub.validate(model)
        out.append(sub)
    return out


def _shape(model: Any) -> dict[str, int | None]:
    info = tlmodel.model_info(model)
    return {
        "n_layers": info.n_layers,
        "n_heads": info.n_heads,
        "d_model": info.d_model,
        "d_mlp": info.d_mlp,
        "d_vocab": info.d_vocab,
    }


def decompose(
    model: Any,
    corpus: Corpus,
    *,
    positions: Positions = None,
    k: int | None = None,
    kinds: tuple[Kind, ...] | None = None,
    method: EffectMethod = "atp",
    ablation: Ablation = "mean",
    k_max: int = 12,
    max_memory_mb: float = 1024.0,
    checkpoint: str | Path | None = None,
    progress: bool = False,
) -> Decomposition:
    """Parts of what ``model`` does on ``corpus``, found without any task, each validated by ablation.

    Args:
        model: a TransformerLens model in eval mode.
        corpus: strings (through the model's tokenizer, BOS prepended), an int tensor ``[batch, pos]``,
            or token-id lists of different lengths (padded and masked inside).
        positions: the predictions that count: a bool ``[batch, pos]`` mask (position ``p`` predicts
            token ``p + 1``), ``"last"`` (each sequence's last prediction), or None (all).
        k: the number of parts; None chooses it (see the module docs).
        kinds: component kinds (default: heads, and neurons where the model has MLPs).
        method: ``"atp"`` (gradients: one forward per chunk, a backward per counted position) or
            ``"ablation"`` (exact: a forward per unit; small models, verification).
        ablation: ``"mean"`` (over the corpus' tokens) or ``"zero"``.
        k_max: the largest k tried when choosing it.
        max_memory_mb: memory budget of the effects' forwards and backwards.
        checkpoint: a file for the effects sweep's partial results (resumed on a rerun).
        progress: show progress bars.

    Returns:
        A :class:`Decomposition`.

    Raises:
        TLSubmodelsError: an empty corpus, words outside the vocabulary, sequences longer than the
            context, a bad ``positions`` mask, ``k`` out of range, an unknown method or ablation.

    Example:
        >>> model = tls.zoo.load("multitask-3l")
        >>> dec = tls.decompose(model, tls.zoo.corpus("multitask-3l", n=32), positions="last", k=2)
        >>> len(dec.parts)
        2
    """
    info = tlmodel.check_model(model, ())
    if ablation not in ("mean", "zero"):
        raise TLSubmodelsError(f"decompose ablates with 'mean' (over the corpus) or 'zero', got {ablation!r}")
    if method not in ("atp", "ablation"):
        raise TLSubmodelsError(f"unknown method {method!r}: choose 'atp' (gradients) or 'ablation' (exact)")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise TLSubmodelsError(f"k={k!r}: choose 1 <= k <= the number of components, or k=None to choose it")
    kinds = kinds or (("heads", "neurons") if info.has_mlps else ("heads",))
    tlmodel.check_model(model, kinds)
    prep = prepare_corpus(model, corpus, positions)
    ablator = Ablator(model, ablation=ablation, reference=prep.reference() if ablation == "mean" else None)
    fx = token_effects(
        model,
        prep,
        kinds,
        method=method,
        ablator=ablator,
        max_memory_mb=max_memory_mb,
        checkpoint=checkpoint,
        progress=progress,
    )
    mag = fx.logodds.double().abs()
    norm = mag.norm(dim=1)
    kept = norm >= ROW_FLOOR * float(norm.quantile(0.99)) if len(norm) > 1 else norm > 0
    kept &= norm > 0
    n_rows, n_comp = int(kept.sum()), mag.shape[1]
    if n_rows == 0:
        raise TLSubmodelsError("no counted prediction depends on any component: nothing to decompose")
    data = mag[kept] / norm[kept, None]
    limit = min(n_rows, n_comp)
    k_errors: dict[int, float] = {}
    if k is None:
        k, k_errors = _choose_k(data, min(k_max, limit))
    elif isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= limit:
        raise TLSubmodelsError(
            f"k={k!r} parts from {n_rows} predictions with effects and {n_comp} components: choose 1 <= k <= {limit}, "
            "or k=None to choose it"
        )
    w, h = nmf(data, k)
    scale = h.sum(1).clamp_min(1e-30)  # loadings sum to 1, so a part's usage is the effect mass it explains
    w, h = w * scale, h / scale[:, None]
    usage = torch.zeros(len(mag), k, dtype=mag.dtype)
    usage[kept] = w * norm[kept, None]  # each prediction's share of each part, times the size of its effects
    own = usage.argmax(1)
    groups = [((own == j) & kept).nonzero()[:, 0] for j in range(k)]
    probe = _Probe(model, prep, ablator, groups)
    cores, parts, evaluations = [], [], []
    for j in tqdm(range(k), desc="validating parts", disable=not progress):
        core, extent, faith = _core_and_extent(probe, j, h, fx.components)
        name = f"part-{j}"
        parts.append(
            SubModel(components=extent, name=name, description=f"decompose: factor {j} of {k} ({method} effects)")
        )
        cores.append(SubModel(components=core, name=f"{name}-core", description=f"necessary core of {name}"))
        evaluations.append(_evaluate(model, prep, ablator, fx, groups[j], name, extent, core, faith, probe, j))
    words = _words(model, prep.tokens)
    labels = [_label(prep, words, groups[j], usage[:, j]) for j in range(k)]
    return Decomposition(
        parts=parts,
        cores=cores,
        labels=labels,
        usage=usage.float(),
        usage_index=prep.index,
        loadings=h.float(),
        components=fx.components,
        evaluations=evaluations,
        k_errors=k_errors,
        tokens=prep.tokens,
        words=words,
        method=method,
        ablation=ablation,
        model_shape=_shape(model),
    )


def _choose_k(data: Tensor, k_max: int) -> tuple[int, dict[int, float]]:
    """The last k before two factors' usage columns first have a cosine above ``CO_USAGE`` (see the module docs)."""
    co: dict[int, float] = {1: 0.0}
    chosen = k_max
    for cand in range(2, k_max + 1):
        w, _ = nmf(data, cand, iters=300)
        wn = w / w.norm(dim=0, keepdim=True).clamp_min(1e-30)
        cos = wn.T @ wn
        cos.fill_diagonal_(0.0)
        co[cand] = float(cos.max())
        if co[cand] > CO_USAGE:
            chosen = cand - 1
            break
    return chosen, co


class _Probe:
    """Metrics of the parts' predictions (a sample of each part's) under ablation hooks, one forward each."""

    def __init__(self, model: Any, prep: PreparedCorpus, ablator: Ablator, groups: list[Tensor]) -> None:
        index = prep.index
        picked = []
        for g in groups:  # an even sample of each part's predictions
            step = max(1, len(g) // EVAL_PREDICTIONS)
            picked.append(g[::step][:EVAL_PREDICTIONS])
        seqs = sorted({int(index[i, 0]) for p in picked for i in p})
        self.model, self.ablator = model, ablator
        device = tlmodel.first_param_device(model)
        row = {s: r for r, s in enumerate(seqs)}
        self.inputs = prep.inputs[seqs].to(device)
        self.targets = prep.targets[seqs].to(device)
        self.where = [(torch.tensor([row[int(index[i, 0])] for i in p], dtype=torch.long), index[p, 1]) for p in picked]
        self.memo: dict[tuple[frozenset[Component], bool], Tensor] = {}
        self.full = self.metrics(frozenset(), keep_only=False)
        self.nothing = self.metrics(frozenset(), keep_only=True)

    def metrics(self, comps: frozenset[Component], *, keep_only: bool) -> Tensor:
        """Mean log p of each part's sampled predictions with ``comps`` ablated (or kept, the rest ablated)."""
        key = (comps, keep_only)
        if key not in self.memo:
            hooks = self.ablator.hooks(sorted(comps), keep_only=keep_only) if (comps or keep_only) else []
            logits = tlmodel.run_logits(self.model, self.inputs, hooks)
            lp = logits.log_softmax(-1).gather(-1, self.targets[..., None])[..., 0].cpu()
            self.memo[key] = torch.tensor(
                [float(lp[r, p].mean()) if len(r) else float("nan") for r, p in self.where], dtype=torch.float64
            )
        return self.memo[key]

    def necessity(self, comps: frozenset[Component]) -> Tensor:
        """Fraction of each part's behaviour lost with ``comps`` ablated, in [0, 1].

        The behaviour is the mean log p over the mean-ablated model's, with at least one nat of room:
        where ablating everything leaves a prediction nearly as likely (a two-way choice the mean
        model still gets half right), a smaller gap would blow small losses up. Losses past the gap
        count as the whole of it."""
        gap = (self.full - self.nothing).clamp_min(1.0)
        return ((self.full - self.metrics(comps, keep_only=False)) / gap).clamp(0.0, 1.0)

    def faithfulness(self, comps: frozenset[Component], j: int) -> float:
        """Fraction of part ``j``'s behaviour restored with only ``comps`` kept."""
        gap = max(float(self.full[j] - self.nothing[j]), 1e-6)
        return float(self.metrics(comps, keep_only=True)[j] - self.nothing[j]) / gap


def _core_and_extent(
    probe: _Probe, j: int, loadings: Tensor, components: list[Component]
) -> tuple[list[Component], list[Component], float]:
    """Part ``j``'s core (by validation: own necessity minus the most lost elsewhere) and its extent."""
    loading = loadings[j]
    exclusive = loading * loading / loadings.sum(0).clamp_min(1e-30)
    others = [i for i in range(loadings.shape[0]) if i != j and len(probe.where[i][0])]

    def score(members: frozenset[int]) -> float:
        need = probe.necessity(frozenset(components[c] for c in members))
        elsewhere = max((float(need[i]) for i in others), default=0.0)
        return float(need[j]) - elsewhere

    memo: dict[frozenset[int], float] = {}

    def scored(members: frozenset[int]) -> float:
        if members not in memo:
            memo[members] = score(members)
        return memo[members]

    order = loading.argsort(descending=True).tolist()
    top = float(loading[order[0]])
    # thresholds on the loadings, halving by sqrt 2; the smallest set within CORE_SLACK of the best score
    cands = {frozenset(order[: int((loading >= top * 2 ** (-i / 2)).sum())]) for i in range(21 if top > 0 else 0)}
    cands.add(frozenset(order[:1]))
    high = max(scored(c) for c in cands)
    best = min((c for c in cands if scored(c) >= high - CORE_SLACK), key=len)
    pool = sorted(set(exclusive.argsort(descending=True).tolist()[:32]) | best)
    best = refine_by_validation(best, pool, scored, prune_key=lambda c: float(exclusive[c]), rounds=4)
    core = [components[c] for c in sorted(best, key=lambda c: -float(loading[c]))]
    rest = [components[c] for c in order if c not in best and float(loading[c]) > 0]
    ranked = core + rest

    def faith(keep: list[Component]) -> float:
        return probe.faithfulness(frozenset(keep), j)

    extent = grow_to_target(ranked, faith, EXTENT_TARGET, start=len(core)) if len(probe.where[j][0]) else core
    return core, extent, faith(extent) if len(probe.where[j][0]) else float("nan")


def _evaluate(
    model: Any,
    prep: PreparedCorpus,
    ablator: Ablator,
    fx: Any,
    group: Tensor,
    name: str,
    extent: list[Component],
    core: list[Component],
    faith: float,
    probe: _Probe,
    j: int,
) -> PartEvaluation:
    """Loss and top-1 accuracy with the extent ablated, on the part's predictions and on every other one."""
    device = tlmodel.first_param_device(model)
    logits = tlmodel.run_logits(model, prep.inputs.to(device), ablator.hooks(extent))
    targets = prep.targets.to(device)
    lp = logits.log_softmax(-1).gather(-1, targets[..., None])[..., 0].cpu()[prep.counted]
    ok = (logits.argmax(-1) == targets).cpu()[prep.counted]
    mine = torch.zeros(len(lp), dtype=torch.bool)
    mine[group] = True

    def mean(t: Tensor, m: Tensor) -> float:
        return float(t[m].float().mean()) if bool(m.any()) else float("nan")

    need = probe.necessity(frozenset(extent))
    elsewhere = [float(need[i]) for i in range(len(need)) if i != j and len(probe.where[i][0])]
    return PartEvaluation(
        part=name,
        size=len(extent),
        core_size=len(core),
        predictions=int(mine.sum()),
        faithfulness=faith,
        core_faithfulness=probe.faithfulness(frozenset(core), j) if len(probe.where[j][0]) else float("nan"),
        core_necessity=float(probe.necessity(frozenset(core))[j]),
        necessity_elsewhere=max(elsewhere, default=0.0),
        loss_increase=mean(fx.logprob - lp, mine),
        loss_increase_others=mean(fx.logprob - lp, ~mine),
        accuracy_drop=mean(fx.correct.float() - ok.float(), mine),
        accuracy_drop_others=mean(fx.correct.float() - ok.float(), ~mine),
    )


def _words(model: Any, tokens: Tensor) -> dict[int, str]:
    tok = getattr(model, "tokenizer", None)
    ids = sorted({int(t) for t in tokens.unique()})
    if tok is None:
        return {i: str(i) for i in ids}
    return {i: tok.decode([i]) for i in ids}


def _label(prep: PreparedCorpus, words: dict[int, str], group: Tensor, usage: Tensor, top: int = 3) -> str:
    """Next and current tokens over-represented in the part's predictions, and the positions they sit at."""
    if len(group) == 0:
        return "(no prediction uses it most)"
    index = prep.index
    cur_all = prep.tokens[index[:, 0], index[:, 1]].tolist()
    nxt_all = prep.tokens[index[:, 0], index[:, 1] + 1].tolist()
    g = group.tolist()

    def over(all_tokens: list[int]) -> list[str]:
        total, n = Counter(all_tokens), len(all_tokens)
        mine = Counter(all_tokens[i] for i in g)
        lift = {t: (c / len(g)) / (total[t] / n) for t, c in mine.items() if c >= 2 or len(g) < 4}
        best = sorted(lift, key=lambda t: (-lift[t], -mine[t]))[:top]
        return [words.get(t, str(t)) for t in best if lift[t] > 1.0]

    pos = Counter(int(index[i, 1]) for i in g)
    (p, c), *_ = pos.most_common(1)
    where = f"pos {p} ({c / len(g):.0%})" if c / len(g) >= 0.5 else f"pos {min(pos)}-{max(pos)}"
    nxt, cur = over(nxt_all), over(cur_all)
    return f"-> {' '.join(nxt) or '(any)'} after {' '.join(cur) or '(any)'}, {where}"
