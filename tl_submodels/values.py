"""Results as values: every result type round-trips through JSON with a schema name and version.

A result class inherits :class:`Value` and gets ``to_dict`` (strict JSON: tensors as dtype, shape
and flat data, with NaN as null and infinities as "inf"/"-inf"; a non-finite number alone, components,
tuples and int-keyed dicts tagged; nested results, sub-models included, as their own dicts) and ``from_dict``, which refuses data of another schema or version with a message that says
which versions were involved and what to do.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar, TypeVar

import torch
from torch import Tensor

from tl_submodels.components import Component, parse_component
from tl_submodels.errors import TLSubmodelsError

__all__ = ["Value", "decode", "encode", "register"]

V = TypeVar("V", bound="Value")
# schema name -> the class that reads it (Value subclasses register themselves; SubModel and Trace by hand)
_READERS: dict[str, Any] = {}


def register(schema: str, cls: Any) -> None:
    """Let :func:`decode` read nested dicts of ``schema`` with ``cls.from_dict``."""
    _READERS[schema] = cls


def _number(x: float) -> Any:
    return x if math.isfinite(x) else None if math.isnan(x) else str(x)


def _unnumber(x: Any) -> Any:
    return float("nan") if x is None else float(x) if isinstance(x, str) else x


def encode(x: Any) -> Any:
    """``x`` as strict JSON: tensors, components, tuples and dicts with non-string keys tagged so that
    :func:`decode` gives them back; nested results (a registered schema's ``to_dict``) as their own dicts."""
    if isinstance(x, bool) or x is None or isinstance(x, int | str):
        return x
    if isinstance(x, float):  # a non-finite number is tagged: null or a string alone would not read back as a float
        return x if math.isfinite(x) else {"__float__": str(x)}
    if isinstance(x, Tensor):
        flat = x.detach().cpu().flatten().tolist()
        data = [_number(v) for v in flat] if x.dtype.is_floating_point else flat
        return {"__tensor__": str(x.dtype).removeprefix("torch."), "shape": list(x.shape), "data": data}
    if isinstance(x, Component):
        return {"__component__": str(x)}
    if hasattr(x, "to_dict") and not isinstance(x, type):
        data = x.to_dict()
        if isinstance(data, dict) and data.get("schema") in _READERS:  # a nested result: its own dict, schema and all
            return data
    if isinstance(x, tuple) and hasattr(x, "_fields"):  # a NamedTuple: its fields, by name
        return {"__record__": type(x).__name__, **{k: encode(v) for k, v in zip(x._fields, x, strict=True)}}
    if isinstance(x, tuple):
        return {"__tuple__": [encode(v) for v in x]}
    if isinstance(x, list):
        return [encode(v) for v in x]
    if isinstance(x, dict):
        if all(isinstance(k, str) and not k.startswith("__") for k in x):
            return {k: encode(v) for k, v in x.items()}
        return {"__pairs__": [[encode(k), encode(v)] for k, v in x.items()]}
    raise TLSubmodelsError(f"cannot write a {type(x).__name__} as JSON")


def decode(x: Any) -> Any:
    """The inverse of :func:`encode`."""
    if isinstance(x, list):
        return [decode(v) for v in x]
    if not isinstance(x, dict):
        return x
    if "__tensor__" in x:
        dtype = getattr(torch, x["__tensor__"])
        data = [_unnumber(v) for v in x["data"]] if dtype.is_floating_point else x["data"]
        return torch.tensor(data, dtype=dtype).reshape(x["shape"])
    if "__float__" in x:
        return float(x["__float__"])
    if "__component__" in x:
        return parse_component(x["__component__"])
    if isinstance(x.get("schema"), str) and x["schema"] in _READERS:
        return _READERS[x["schema"]].from_dict(x)
    if "__record__" in x:
        reader = _READERS.get(f"record:{x['__record__']}")
        fields = {k: decode(v) for k, v in x.items() if k != "__record__"}
        return reader(**fields) if reader is not None else fields
    if "__tuple__" in x:
        return tuple(decode(v) for v in x["__tuple__"])
    if "__pairs__" in x:
        return {decode(k): decode(v) for k, v in x["__pairs__"]}
    return {k: decode(v) for k, v in x.items()}


def check_schema(data: Any, schema: str, version: int, what: str) -> None:
    """Refuse ``data`` unless it is a dict of ``schema`` at ``version``, saying what was found and what to do."""
    if not isinstance(data, dict) or data.get("schema") != schema:
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise TLSubmodelsError(f"not a tl_submodels {what}: expected schema {schema!r}, got {found!r}")
    if data.get("version") != version:
        raise TLSubmodelsError(
            f"this {what} was written with schema {schema!r} version {data.get('version')!r}; this tl_submodels "
            f"reads version {version}. Compute it again with this version, or read it with the version that wrote it."
        )


class Value:
    """Mixin of the frozen result dataclasses: ``to_dict``/``from_dict`` with a schema name and version.

    ``SCHEMA_VERSION`` goes up whenever a field changes meaning or shape; fields named in ``NOT_SAVED``
    (caches, live objects) are left out and must have defaults.

    Example:
        >>> ev = tls.evaluate(model, circuit, task)  # doctest: +SKIP
        >>> tls.Evaluation.from_dict(json.loads(json.dumps(ev.to_dict()))) == ev  # doctest: +SKIP
        True
    """

    SCHEMA_VERSION: ClassVar[int] = 1
    NOT_SAVED: ClassVar[tuple[str, ...]] = ()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        register(cls.schema(), cls)

    @classmethod
    def schema(cls) -> str:
        return f"tl_submodels.{cls.__name__}"

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types only (``json.dumps`` takes it as it is), with ``schema`` and ``version``."""
        out: dict[str, Any] = {"schema": self.schema(), "version": self.SCHEMA_VERSION}
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            if f.name not in self.NOT_SAVED:
                out[f.name] = encode(getattr(self, f.name))
        return out

    @classmethod
    def from_dict(cls: type[V], data: dict[str, Any]) -> V:
        """Read what :meth:`to_dict` wrote; refuses another schema or version (TLSubmodelsError)."""
        check_schema(data, cls.schema(), cls.SCHEMA_VERSION, cls.__name__)
        names = {f.name for f in dataclasses.fields(cls)} - set(cls.NOT_SAVED)  # type: ignore[arg-type]
        missing = sorted(n for n in names if n not in data and _required(cls, n))
        if missing:
            raise TLSubmodelsError(f"{cls.__name__} data lacks {missing}")
        return cls(**{n: decode(data[n]) for n in names if n in data})


def _required(cls: Any, name: str) -> bool:
    f = cls.__dataclass_fields__[name]
    return f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
