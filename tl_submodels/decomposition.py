"""The result of :func:`tl_submodels.decompose`: parts, their contexts and evaluations, and the library of parts on disk."""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_submodels import model as tlmodel
from tl_submodels.components import Component
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.submodel import SCHEMA as SUBMODEL_SCHEMA
from tl_submodels.submodel import SubModel
from tl_submodels.values import Value

__all__ = [
    "PART_SCHEMA",
    "PART_SCHEMA_VERSION",
    "Context",
    "Decomposition",
    "PartEvaluation",
    "load_parts",
    "model_shape",
]

PART_SCHEMA = "tl_submodels.part"
PART_SCHEMA_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class PartEvaluation(Value):
    """One part validated by ablation on the predictions that use it and on all the others.

    ``faithfulness``: keeping only the extent (the rest ablated) restores this fraction of the
    behaviour (mean log p of the next token) on the part's predictions; ``core_necessity``: ablating
    the core loses this fraction; ``necessity_elsewhere``: the largest fraction ablating the extent
    loses on another part's predictions (specificity: near 0). Loss is the mean negative log p.
    ``*_ci``: BCa bootstrap intervals over the corpus' sequences (a sequence's predictions are
    resampled together), at ``ci_level``.
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
    faithfulness_ci: tuple[float, float] | None = None
    loss_increase_ci: tuple[float, float] | None = None
    accuracy_drop_ci: tuple[float, float] | None = None
    ci_level: float = 0.95


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
class Decomposition(Value):
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
        holdout_evaluations: with ``decompose(..., holdout=f)``, each part evaluated the same way on the
            fraction ``f`` of the sequences that finding it never saw (their predictions assigned to parts
            by the loadings found on the rest); ``usage`` and the rest are of the other sequences.
        stability: with ``decompose(..., stability=n)``, one :class:`tl_submodels.discovery.Stability` per
            part: how often each member is in the part's best-matching part over ``n`` reruns on bootstrap
            resamples of the sequences, and the Jaccard overlaps.
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
    holdout_evaluations: list[PartEvaluation] | None = None
    stability: list[Any] | None = None  # discovery.Stability per part (decompose(..., stability=n))

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

    def sequence_usage(self, *, relative: bool = True) -> Float[Tensor, "sequence part"]:
        """How much each corpus sequence uses each part: its counted predictions' usage summed.

        With ``relative`` (the default) each part's column is divided by its mean over the
        sequences, so a sequence's largest entry is the part it uses *more than a typical sequence
        does*. Read which behaviour a whole sequence is with it: counted over every position, a
        part that many predictions lean on a little (the tokens after a prompt's first word, say)
        otherwise outweighs the part its answer needs (on multitask-3l's corpus, sequences grouped
        by their largest summed use match the tasks with adjusted Rand index 0.53; relative, 1.0).

        Example:
            >>> dec.sequence_usage().argmax(1)  # doctest: +SKIP
            tensor([2, 0, 3, ...])
        """
        out = torch.zeros(len(self.tokens), len(self.parts), dtype=self.usage.dtype)
        out.index_add_(0, self.usage_index[:, 0], self.usage)
        if relative:
            out = out / out.mean(0, keepdim=True).clamp_min(1e-30)
        return out

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
            stability=self.stability,
            holdout_evaluations=None
            if self.holdout_evaluations is None
            else [replace(e, part=m) for e, m in zip(self.holdout_evaluations, new, strict=True)],
        )

    def to_frame(self) -> Any:
        """One row per part: label, sizes, predictions using it, faithfulness, specificity, loss and accuracy effects."""
        import pandas as pd

        from tl_submodels.evaluate import interval_columns

        rows = []
        none: list[PartEvaluation | None] = [None] * len(self.parts)
        held = list(self.holdout_evaluations) if self.holdout_evaluations else none
        for p, c, lab, ev, out in zip(self.parts, self.cores, self.labels, self.evaluations, held, strict=True):
            row = {
                "part": p.name,
                "label": lab,
                "size": len(p),
                "core": " ".join(str(x) for x in c),
                "predictions": ev.predictions,
                "faithfulness": ev.faithfulness,
                **interval_columns("faithfulness", ev.faithfulness_ci),
                "core_necessity": ev.core_necessity,
                "necessity_elsewhere": ev.necessity_elsewhere,
                "loss_increase": ev.loss_increase,
                **interval_columns("loss_increase", ev.loss_increase_ci),
                "loss_increase_others": ev.loss_increase_others,
                "accuracy_drop": ev.accuracy_drop,
                **interval_columns("accuracy_drop", ev.accuracy_drop_ci),
                "accuracy_drop_others": ev.accuracy_drop_others,
            }
            if self.stability is not None:
                row["stability_jaccard"] = self.stability[self.parts.index(p)].mean_jaccard
            if out is not None:
                row |= {
                    "holdout_faithfulness": out.faithfulness,
                    **interval_columns("holdout_faithfulness", out.faithfulness_ci),
                    "holdout_accuracy_drop": out.accuracy_drop,
                }
            rows.append(row)
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

    Sub-model files written by :meth:`SubModel.save` (``tl-submodels factorize --out``) are read too.

    Args:
        folder: the library folder (one ``*.json`` per part).
        model: when given, parts saved from a model of another shape are refused.

    Raises:
        TLSubmodelsError: no such folder or no parts in it, a file of another schema version, or
            parts of a model of another shape.

    Example:
        >>> parts = tls.load_parts("lib/", model)  # doctest: +SKIP
        >>> tls.usage(model, "IND w1 s3 s4 s3", parts, reference=...)  # doctest: +SKIP
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise TLSubmodelsError(f"{folder}: no such folder; pass the folder Decomposition.save() wrote")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise TLSubmodelsError(f"{folder}: no part files (*.json) in it")
    shape = model_shape(model) if model is not None else None
    out = []
    for f in files:
        try:
            data = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TLSubmodelsError(f"{f}: not valid JSON ({e})") from e
        if isinstance(data, dict) and data.get("schema") == SUBMODEL_SCHEMA:  # SubModel.save (factorize --out)
            try:
                sub = SubModel.from_dict(data)
            except TLSubmodelsError as e:
                raise TLSubmodelsError(f"{f}: {e}") from None
            out.append(sub.validate(model) if model is not None else sub)
            continue
        if not isinstance(data, dict) or data.get("schema") != PART_SCHEMA:
            raise TLSubmodelsError(
                f"{f}: not a tl_submodels part (expected schema {PART_SCHEMA!r}, or {SUBMODEL_SCHEMA!r} from SubModel.save)"
            )
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


def model_shape(model: Any) -> dict[str, int | None]:
    """The shape a library of parts records and checks: layers, heads, widths, vocabulary."""
    info = tlmodel.model_info(model)
    return {
        "n_layers": info.n_layers,
        "n_heads": info.n_heads,
        "d_model": info.d_model,
        "d_mlp": info.d_mlp,
        "d_vocab": info.d_vocab,
    }
