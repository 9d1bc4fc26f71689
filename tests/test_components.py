"""Component ids: parse/print round-trip, order, errors."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import tl_submodels as tls
from tl_submodels import MLP, Head, Neuron, parse_component
from tl_submodels.components import forward_order


@pytest.mark.parametrize("text", ["L1H3", "L0N17", "MLP2", "L12H0@5", "L3N4095@0", "MLP0@31"])
def test_round_trip(text):
    c = parse_component(text)
    assert str(c) == text
    assert parse_component(str(c)) == c
    assert eval(repr(c), {"Head": Head, "Neuron": Neuron, "MLP": MLP}) == c


def test_kinds_and_fields():
    assert parse_component("L1H3") == Head(1, 3)
    assert parse_component("L0N17") == Neuron(0, 17)
    assert parse_component("MLP2") == MLP(2)
    assert parse_component("L1H3@4") == Head(1, 3, pos=4) != Head(1, 3)
    assert Head(1, 3).at(4).without_pos() == Head(1, 3)
    assert {Head(1, 3).kind, Neuron(0, 1).kind, MLP(0).kind} == {"heads", "neurons", "mlps"}


def test_forward_order():
    cs = [parse_component(s) for s in ["L1H0", "MLP0", "L0N3", "L0H2", "L0H1", "L0N1"]]
    assert [str(c) for c in sorted(cs)] == ["L0H1", "L0H2", "MLP0", "L0N1", "L0N3", "L1H0"]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from("HNM"), st.integers(0, 3), st.integers(0, 5), st.none() | st.integers(0, 4))))
def test_forward_order_key_sorts_as_the_components_compare(specs):
    """``forward_order`` (the hot paths' key) gives sorted()'s order, and both follow (layer, kind, index, position)
    read off the public fields; ``unit`` is the head or neuron index, 0 for a whole MLP."""
    cs = [
        (Head(layer, i, pos=pos) if k == "H" else Neuron(layer, i, pos=pos) if k == "N" else MLP(layer, pos=pos))
        for k, layer, i, pos in specs
    ]
    kind_order = {"heads": 0, "mlps": 1, "neurons": 2}
    oracle = sorted(cs, key=lambda c: (c.layer, kind_order[c.kind], c.index or 0, -1 if c.pos is None else c.pos))
    assert sorted(cs) == sorted(cs, key=forward_order) == oracle
    for c in cs:
        assert c.unit == (c.index if c.index is not None else 0)
        assert c.without_pos() == type(c)(*([c.layer] if c.index is None else [c.layer, c.index]))


@pytest.mark.parametrize("bad", ["L1X3", "H3", "l1h3", "MLP", "L1H", "L-1H2", "L1H3@", "", "L1H3 L2H4"])
def test_parse_errors(bad):
    with pytest.raises(tls.TLSubmodelsError, match="cannot parse component"):
        parse_component(bad)


@pytest.mark.ill_typed
def test_constructor_errors():
    with pytest.raises(tls.TLSubmodelsError, match="non-negative"):
        Head(-1, 0)
    with pytest.raises(tls.TLSubmodelsError, match="non-negative"):
        Neuron(0, 1.5)  # type: ignore[arg-type]
    with pytest.raises(tls.TLSubmodelsError, match="expected a component string"):
        parse_component(3)  # type: ignore[arg-type]
