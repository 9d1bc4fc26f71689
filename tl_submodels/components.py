"""Component ids: attention heads, MLP neurons and MLP layers.

A component is a small frozen value that prints as ``L1H3`` (head 3 of layer 1), ``L0N17``
(neuron 17 of layer 0's MLP) or ``MLP2`` (layer 2's whole MLP), optionally with a position
suffix ``@5``. Parsing and printing round-trip, and components sort by layer, then kind, then
index, which is the order of the forward pass.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from operator import attrgetter
from typing import ClassVar, Literal

from tl_submodels.errors import TLSubmodelsError

__all__ = ["KINDS", "MLP", "Component", "Head", "Kind", "Neuron", "check_kinds", "forward_order", "parse_component"]

Kind = Literal["heads", "neurons", "mlps"]
KINDS: tuple[Kind, ...] = ("heads", "neurons", "mlps")

_PATTERN = re.compile(r"^(?:L(?P<l1>\d+)H(?P<head>\d+)|L(?P<l2>\d+)N(?P<neuron>\d+)|MLP(?P<l3>\d+))(?:@(?P<pos>\d+))?$")


@dataclass(frozen=True, repr=False)
class Component:
    """Base of Head, Neuron and MLP. Use :func:`parse_component` to build one from a string.

    Example:
        >>> from tl_submodels import Head
        >>> sorted([parse_component("MLP0"), Head(0, 1)])
        [Head(0, 1), MLP(0)]
    """

    layer: int
    pos: int | None = field(default=None, kw_only=True)
    # Set once at construction (not arguments, not compared): the unit's index in its site (the head or
    # neuron, 0 for a whole MLP) and the sort key (layer, kind, unit, position; see forward_order). The
    # ablated forwards sort and index hundreds of components each; plain attributes keep that free of
    # per-component method calls.
    unit: int = field(init=False, repr=False, compare=False)
    key: tuple[int, int, int, int] = field(init=False, repr=False, compare=False)
    kind: ClassVar[Kind]
    _order: ClassVar[int]

    def __post_init__(self) -> None:
        for name in ("layer", "index", "pos"):
            value = getattr(self, name, None) if name != "index" else self.index
            if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 0):
                raise TLSubmodelsError(f"{type(self).__name__}: {name} must be a non-negative int, got {value!r}")
        unit = self.index or 0
        object.__setattr__(self, "unit", unit)
        object.__setattr__(self, "key", (self.layer, self._order, unit, -1 if self.pos is None else self.pos))

    @property
    def index(self) -> int | None:
        """Head or neuron index inside the layer (None for a whole MLP)."""
        return None

    def __lt__(self, other: object) -> bool:
        if not isinstance(other, Component):
            return NotImplemented
        return self.key < other.key

    def without_pos(self) -> Component:
        """The same component over all positions."""
        return self if self.pos is None else type(self)(*self._args())

    def at(self, pos: int) -> Component:
        """The same component at one position."""
        return type(self)(*self._args(), pos=pos)

    def _args(self) -> tuple[int, ...]:
        return (self.layer,) if self.index is None else (self.layer, self.index)

    def _stem(self) -> str:
        raise NotImplementedError

    def __str__(self) -> str:
        return self._stem() + ("" if self.pos is None else f"@{self.pos}")

    def __repr__(self) -> str:
        args = ", ".join(str(a) for a in self._args()) + ("" if self.pos is None else f", pos={self.pos}")
        return f"{type(self).__name__}({args})"


@dataclass(frozen=True, repr=False)
class Head(Component):
    """Attention head ``head`` of layer ``layer`` (its output, ``hook_z``). Prints as ``L1H3``."""

    head: int
    kind: ClassVar[Kind] = "heads"
    _order: ClassVar[int] = 0

    @property
    def index(self) -> int:
        return self.head

    def _stem(self) -> str:
        return f"L{self.layer}H{self.head}"


@dataclass(frozen=True, repr=False)
class Neuron(Component):
    """MLP neuron ``neuron`` of layer ``layer`` (``mlp.hook_post``). Prints as ``L0N17``."""

    neuron: int
    kind: ClassVar[Kind] = "neurons"
    _order: ClassVar[int] = 2

    @property
    def index(self) -> int:
        return self.neuron

    def _stem(self) -> str:
        return f"L{self.layer}N{self.neuron}"


@dataclass(frozen=True, repr=False)
class MLP(Component):
    """The whole MLP of layer ``layer`` (``hook_mlp_out``). Prints as ``MLP2``."""

    kind: ClassVar[Kind] = "mlps"
    _order: ClassVar[int] = 1

    def _stem(self) -> str:
        return f"MLP{self.layer}"


forward_order: Callable[[Component], tuple[int, int, int, int]] = attrgetter("key")
"""``sorted(components, key=forward_order)``: the order of ``sorted(components)``, without a Python call per
comparison (for the hot paths; ``sorted([Head(1, 0), MLP(0)], key=forward_order)`` gives ``[MLP(0), Head(1, 0)]``)."""


def parse_component(text: str | Component) -> Component:
    """Parse ``L1H3``, ``L0N17``, ``MLP2`` (optionally ``@pos``) into a component.

    Args:
        text: the component string, or a component (returned as it is).

    Returns:
        A Head, Neuron or MLP.

    Raises:
        TLSubmodelsError: for anything else, with the accepted forms.

    Example:
        >>> parse_component("L1H3"), str(parse_component("L0N17@4"))
        (Head(1, 3), 'L0N17@4')
    """
    if isinstance(text, Component):
        return text
    if not isinstance(text, str):
        raise TLSubmodelsError(f"expected a component string such as 'L1H3', got {type(text).__name__} {text!r}")
    m = _PATTERN.match(text.strip())
    if m is None:
        raise TLSubmodelsError(
            f"cannot parse component {text!r}: expected 'L{{layer}}H{{head}}' (e.g. 'L1H3'), "
            f"'L{{layer}}N{{neuron}}' (e.g. 'L0N17') or 'MLP{{layer}}' (e.g. 'MLP2'), optionally with '@{{pos}}'"
        )
    pos = None if m["pos"] is None else int(m["pos"])
    if m["head"] is not None:
        return Head(int(m["l1"]), int(m["head"]), pos=pos)
    if m["neuron"] is not None:
        return Neuron(int(m["l2"]), int(m["neuron"]), pos=pos)
    return MLP(int(m["l3"]), pos=pos)


def check_kinds(kinds: str | tuple[str, ...] | list[str]) -> tuple[Kind, ...]:
    """Validate a kinds argument (``"heads"`` or a tuple of ``"heads"|"neurons"|"mlps"``)."""
    if isinstance(kinds, str):
        kinds = (kinds,)
    out: list[Kind] = []
    for k in kinds:
        if k not in KINDS:
            raise TLSubmodelsError(f"unknown component kind {k!r}: choose from {KINDS}")
        out.append(k)  # type: ignore[arg-type]
    if not out:
        raise TLSubmodelsError(f"kinds is empty: choose one or more of {KINDS}")
    return tuple(dict.fromkeys(out))
