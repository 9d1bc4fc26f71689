"""SubModel: a named, frozen set of components, with set algebra, JSON and ablation hooks.

A sub-model is what discovery returns and what ablation, evaluation and the reports consume.
It is a plain value: no reference to a model, so one sub-model can be applied to several models
of the same architecture.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_submodels.components import Component, forward_order, parse_component
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.summary import listed, summary_html
from tl_submodels.values import check_schema, decode, register

__all__ = ["SCHEMA", "SCHEMA_VERSION", "SubModel"]

SCHEMA = "tl_submodels.submodel"
SCHEMA_VERSION = 1


@dataclass(frozen=True, init=False, repr=False)
class SubModel:
    """A named set of heads, neurons and MLP layers.

    Args:
        components: components or their strings (``"L1H3"``, ``"L0N17"``, ``"MLP2"``), any iterable
            (positional or keyword).
        name: a label.
        description: free text (how it was found, what it does).
        evidence: how its search was checked (:class:`tl_submodels.discovery.Evidence`, set by
            ``find_circuit(..., holdout=, stability=)``), or None.

    Example:
        >>> a = SubModel(components=["L0H1", "L1H2"], name="a")
        >>> b = SubModel(components=["L1H2", "MLP0"], name="b")
        >>> [str(c) for c in a & b], len(a | b)
        (['L1H2'], 3)
    """

    components: frozenset[Component]
    name: str
    description: str
    # how the search that found it was checked (a discovery.Evidence: find_circuit(..., holdout=,
    # stability=)); not part of its identity (equality ignores it) and set algebra drops it
    evidence: Any = field(default=None, compare=False)

    def __init__(
        self,
        components: Iterable[Component | str] | Component = (),
        *,
        name: str = "submodel",
        description: str = "",
        evidence: Any = None,
    ) -> None:
        raw: Any = components
        if isinstance(raw, str | Component):
            raw = [raw]
        try:
            items = frozenset(parse_component(c) for c in raw)
        except TypeError as e:
            raise TLSubmodelsError(f"components must be an iterable of components or strings, got {raw!r}") from e
        if not isinstance(name, str) or not name:
            raise TLSubmodelsError(f"name must be a non-empty string, got {name!r}")
        object.__setattr__(self, "components", items)
        object.__setattr__(self, "name", name)
        object.__setattr__(self, "description", description)
        object.__setattr__(self, "evidence", evidence)

    @classmethod
    def of(cls, sub: SubModel | Iterable[Component | str] | Component | str, name: str = "submodel") -> SubModel:
        """``sub`` itself if it is a SubModel, else a SubModel of the components given (what every
        function that takes one sub-model accepts).

        Example:
            >>> len(SubModel.of(["L0H0", "L1H2"]))
            2
        """
        return sub if isinstance(sub, SubModel) else cls(sub, name=name)

    def plot(self) -> Any:
        """This sub-model as a node-only circuit graph (plotly); see :func:`tl_submodels.viz.circuit_graph`.

        Example:
            >>> SubModel(components=["L0H1", "L1H2"], name="a").plot()  # doctest: +SKIP
        """
        from tl_submodels import viz

        return viz.plot_submodel(self)

    def _repr_html_(self) -> str:
        return summary_html(
            f"SubModel {self.name} ({len(self.components)} components)",
            [
                ("components", " ".join(str(c) for c in sorted(self.components, key=forward_order)) or "(empty)"),
                ("description", self.description or "-"),
                *([] if self.evidence is None else self.evidence.rows()),
            ],
        )

    def __repr__(self) -> str:
        described = f", description={self.description[:80]!r}" if self.description else ""
        return f"SubModel({self.name!r}, {len(self.components)} components: {listed(sorted(self.components, key=forward_order), 12)}{described})"

    # Set algebra -------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Component]:
        return iter(sorted(self.components, key=forward_order))

    def __len__(self) -> int:
        return len(self.components)

    def __contains__(self, item: object) -> bool:
        if isinstance(item, str | Component):
            return parse_component(item) in self.components
        return False

    def union(self, other: SubModel | Iterable[Component | str], name: str | None = None) -> SubModel:
        """Components in either."""
        o = _as_submodel(other)
        return SubModel(components=self.components | o.components, name=name or f"({self.name} | {o.name})")

    def intersection(self, other: SubModel | Iterable[Component | str], name: str | None = None) -> SubModel:
        """Components in both."""
        o = _as_submodel(other)
        return SubModel(components=self.components & o.components, name=name or f"({self.name} & {o.name})")

    def difference(self, other: SubModel | Iterable[Component | str], name: str | None = None) -> SubModel:
        """Components in this one and not the other."""
        o = _as_submodel(other)
        return SubModel(components=self.components - o.components, name=name or f"({self.name} - {o.name})")

    __or__ = union
    __and__ = intersection
    __sub__ = difference

    def renamed(self, name: str) -> SubModel:
        return SubModel(components=self.components, name=name, description=self.description, evidence=self.evidence)

    def validate(self, model: Any) -> SubModel:
        """Raise if a component is not in ``model`` (layer, head or neuron out of range)."""
        from tl_submodels.model import model_info

        info = model_info(model)
        for c in self:
            info.check_component(c)
        return self

    # Use ---------------------------------------------------------------------------------------

    def hooks(self, model: Any, **kwargs: Any) -> list[tuple[str, Any]]:
        """TransformerLens ``fwd_hooks`` that ablate this sub-model (see :func:`tl_submodels.ablation_hooks`).

        Example:
            >>> hooks = circuit.hooks(model, ablation="mean", reference=task.corrupt)  # doctest: +SKIP
            >>> logits = model.run_with_hooks(task.clean, fwd_hooks=hooks)  # doctest: +SKIP
        """
        from tl_submodels.ablation import ablation_hooks

        return ablation_hooks(model, self, **kwargs)

    # JSON --------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        out = {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "name": self.name,
            "description": self.description,
            "components": [str(c) for c in self],
        }
        if self.evidence is not None:  # optional: files without it read as before
            out["evidence"] = self.evidence.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: Any) -> SubModel:
        """Inverse of :meth:`to_dict`; refuses other schemas and versions."""
        check_schema(data, SCHEMA, SCHEMA_VERSION, "sub-model")
        if not isinstance(data.get("components"), list):
            raise TLSubmodelsError("sub-model JSON needs a 'components' list of strings such as 'L1H3'")
        evidence = data.get("evidence")
        return cls(
            components=data["components"],
            name=data.get("name") or "submodel",
            description=data.get("description", ""),
            evidence=None if evidence is None else decode(evidence),
        )

    def save(self, path: str | Path) -> Path:
        """Write JSON to ``path``."""
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | Path) -> SubModel:
        """Read a sub-model JSON file.

        Raises:
            TLSubmodelsError: when the file is missing, not JSON, or of another schema or version.
        """
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise TLSubmodelsError(f"{path}: no such file") from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TLSubmodelsError(f"{path}: not valid JSON ({e}); is the file corrupt or truncated?") from e
        try:
            return cls.from_dict(data)
        except TLSubmodelsError as e:
            raise TLSubmodelsError(f"{path}: {e}") from e

    def __str__(self) -> str:
        return f"{self.name}: {{{', '.join(str(c) for c in self)}}}"


def _as_submodel(x: SubModel | Iterable[Component | str]) -> SubModel:
    return x if isinstance(x, SubModel) else SubModel(components=frozenset(parse_component(c) for c in x), name="set")


register(SCHEMA, SubModel)  # a SubModel nested in a result (a part, a circuit) reads back through its own format
