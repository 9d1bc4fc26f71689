"""Property tests (hypothesis) over small random models, random sub-models and random tasks.

Each property is an invariant that must hold for every model, sub-model and task, on either
TransformerLens line: ablating nothing changes nothing, patching clean into clean changes nothing,
patching every head and MLP from clean restores the clean metric, SubModel is a set algebra, JSON
round-trips, scores do not depend on the order of the examples, and attribution is exact on a
model that is linear by construction.

A few random models are built once (cached by config and seed); hypothesis draws the model, the
sub-models, the tokens, the ablation and the permutations. The runs are derandomized, so CI sees
the same examples every time. ``TLS_PROPERTY_EXAMPLES=1000`` runs more examples per property.
"""

from __future__ import annotations

import functools
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
import torch
from conftest import MLP_CFG, hook_count, random_tl_state
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import tl_submodels as tls
from tl_submodels import MLP, Head, Neuron, Scores, SubModel
from tl_submodels import model as tlmodel
from tl_submodels.components import KINDS

PROPERTY = settings(
    max_examples=int(os.environ.get("TLS_PROPERTY_EXAMPLES", "100")),
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)

# Random models: the conftest MLP model, a smaller one, an attention-only one (all with LayerNorm).
CFGS: dict[str, dict[str, Any]] = {
    "mlp": MLP_CFG,
    "small": dict(MLP_CFG, n_layers=2, n_heads=3, d_model=16, d_head=4, d_mlp=16, d_vocab=20, n_ctx=12),
    "attn": dict(MLP_CFG, n_layers=2, d_mlp=None, attn_only=True, act_fn=None, n_ctx=12),
}
MODEL_KEYS = [(name, seed) for name in CFGS for seed in (0, 1)]
# Linear by construction: no normalisation; attention patterns and the MLP nonlinearity are
# replaced by fixed tensors through hooks (see `linear_hooks`).
LINEAR_CFGS: dict[str, dict[str, Any]] = {
    "linear-mlp": dict(
        MLP_CFG, n_layers=2, n_heads=3, d_model=16, d_head=4, d_mlp=8, d_vocab=30, n_ctx=12, normalization_type=None
    ),
    "linear-attn": dict(
        MLP_CFG, n_layers=2, n_heads=3, d_model=16, d_head=4, d_mlp=None, d_vocab=30, n_ctx=12, attn_only=True
    )
    | {"act_fn": None, "normalization_type": None},
}
LINEAR_KEYS = [(name, seed) for name in LINEAR_CFGS for seed in (0, 1)]
METRICS = ("logit_diff", "logprob", "prob", "kl")
MAX_SEQ = 8


@functools.cache
def build(key: tuple[str, int]) -> Any:
    """A random eval-mode model, built once per (config, seed): the same weights on both TL lines."""
    name, seed = key
    if name in CFGS:
        return tlmodel.build_from_tl_checkpoint(CFGS[name], random_tl_state(CFGS[name], seed=seed))
    cfg = LINEAR_CFGS[name]
    state = {k: v for k, v in random_tl_state(cfg, seed=seed).items() if ".ln" not in k and "ln_final" not in k}
    return tlmodel.build_from_tl_checkpoint(cfg, state)


def info_of(model: Any) -> tlmodel.ModelInfo:
    return tlmodel.model_info(model)


# ---------------------------------------------------------------------------------------------
# Strategies


@st.composite
def components(
    draw: st.DrawFn, info: tlmodel.ModelInfo, *, neurons: bool = True, mlps: bool = True, positions: bool = True
) -> tls.Component:
    """One component of the model: a head, a neuron or an MLP layer, optionally at one position."""
    layer = draw(st.integers(0, info.n_layers - 1))
    kinds = (
        ["heads"] + (["neurons"] if neurons and info.has_mlps else []) + (["mlps"] if mlps and info.has_mlps else [])
    )
    kind = draw(st.sampled_from(kinds))
    pos = draw(st.none() | st.integers(0, MAX_SEQ - 1)) if positions else None
    if kind == "heads":
        return Head(layer, draw(st.integers(0, info.n_heads - 1)), pos=pos)
    if kind == "neurons":
        return Neuron(layer, draw(st.integers(0, (info.d_mlp or 1) - 1)), pos=pos)
    return MLP(layer, pos=pos)


names = st.text(min_size=1, max_size=12)


@st.composite
def submodels(draw: st.DrawFn, info: tlmodel.ModelInfo, **kw: bool) -> SubModel:
    comps = draw(st.frozensets(components(info, **kw), max_size=10))
    return SubModel(components=comps, name=draw(names), description=draw(st.text(max_size=20)))


# A small model shape for the pure set-algebra laws: few components, so draws overlap often.
ALGEBRA_INFO = tlmodel.ModelInfo(
    n_layers=2, n_heads=3, d_head=4, d_model=8, d_mlp=3, d_vocab=10, n_ctx=MAX_SEQ, attn_only=False
)

MLP_INFO = tlmodel.ModelInfo(**{k: MLP_CFG[k] for k in tlmodel.ModelInfo.__dataclass_fields__ if k in MLP_CFG})


def universe(info: tlmodel.ModelInfo, *, neurons: bool = True, positions: bool = True) -> SubModel:
    """Every component the `components` strategy can draw for ``info``."""
    kinds = ("heads", "neurons", "mlps") if neurons else ("heads", "mlps")
    base = info.components(kinds)
    pos = [c.at(p) for c in base for p in range(MAX_SEQ)] if positions else []
    return SubModel(components=base + pos, name="universe")


@st.composite
def everything(draw: st.DrawFn, info: tlmodel.ModelInfo, seq: int) -> SubModel:
    """Every head and every MLP of the model, each in a randomly drawn but complete spelling.

    A head is ``L1H2`` or ``L1H2@p`` for every position ``p < seq``; an MLP is ``MLP1``, every one
    of its neurons, or both.
    """
    comps: list[tls.Component] = []
    for layer in range(info.n_layers):
        for h in range(info.n_heads):
            whole = draw(st.booleans())
            comps += [Head(layer, h)] if whole else [Head(layer, h, pos=p) for p in range(seq)]
        if info.has_mlps:
            spelling = draw(st.sampled_from(["mlp", "neurons", "both"]))
            if spelling in ("mlp", "both"):
                comps.append(MLP(layer))
            if spelling in ("neurons", "both"):
                comps += [Neuron(layer, n) for n in range(info.d_mlp or 0)]
    return SubModel(components=comps, name="everything")


def token_rows(d_vocab: int, batch: int, seq: int) -> st.SearchStrategy[torch.Tensor]:
    row = st.lists(st.integers(0, d_vocab - 1), min_size=seq, max_size=seq)
    return st.lists(row, min_size=batch, max_size=batch).map(lambda rows: torch.tensor(rows, dtype=torch.long))


@st.composite
def tokens(draw: st.DrawFn, info: tlmodel.ModelInfo, *, min_seq: int = 4) -> torch.Tensor:
    batch, seq = draw(st.integers(2, 4)), draw(st.integers(min_seq, MAX_SEQ))
    return draw(token_rows(info.d_vocab, batch, seq))


@st.composite
def tasks(
    draw: st.DrawFn,
    model: Any,
    *,
    identical: bool = False,
    same_at_read: bool = False,
    metrics: tuple[str, ...] = METRICS,
) -> tls.Task:
    """A random task: clean tokens, corrupt = clean with some positions replaced, answers, a metric.

    Every example's corrupt prompt differs from its clean one somewhere at or before the position
    the metric reads (strictly before it with ``same_at_read``), unless ``identical``.
    """
    info = info_of(model)
    clean = draw(tokens(info))
    batch, seq = clean.shape
    position = draw(st.none() | st.lists(st.integers(1, seq - 1), min_size=batch, max_size=batch))
    read = [seq - 1] * batch if position is None else position
    corrupt = clean.clone()
    if not identical:
        for i in range(batch):
            last = read[i] - 1 if same_at_read else read[i]
            must = draw(st.integers(0, last))
            others = draw(st.sets(st.integers(0, last), max_size=3))
            for p in {must} | others:
                corrupt[i, p] = (clean[i, p] + draw(st.integers(1, info.d_vocab - 1))) % info.d_vocab
    answer = draw(st.lists(st.integers(0, info.d_vocab - 1), min_size=batch, max_size=batch))
    shift = draw(st.lists(st.integers(1, info.d_vocab - 1), min_size=batch, max_size=batch))
    wrong = [(a + s) % info.d_vocab for a, s in zip(answer, shift, strict=True)]
    metric = draw(st.sampled_from(metrics))
    return tls.Task.from_tokens(
        model, clean=clean, corrupt=corrupt, answer=answer, wrong=wrong, position=position, metric=metric, name="prop"
    )


@st.composite
def references(
    draw: st.DrawFn, info: tlmodel.ModelInfo, ablation: str, batch: int, seq: int, per_position: bool
) -> torch.Tensor | list[torch.Tensor] | None:
    """Reference prompts that ``ablation`` accepts for runs of ``[batch, seq]``."""
    if ablation == "zero":
        return None
    if ablation == "mean" and not per_position and draw(st.booleans()):  # prompts of different lengths
        return draw(st.lists(token_rows(info.d_vocab, 1, draw(st.integers(1, MAX_SEQ))), min_size=1, max_size=3))
    rows = draw(st.sampled_from([1, batch])) if ablation == "patch" else draw(st.integers(1, 4))
    length = draw(st.integers(seq, MAX_SEQ)) if ablation != "mean" or per_position else draw(st.integers(1, MAX_SEQ))
    return draw(token_rows(info.d_vocab, rows, length))


@st.composite
def ablation_setups(draw: st.DrawFn) -> tuple[Any, torch.Tensor, dict[str, Any]]:
    """A model, tokens to run, and keyword arguments of `tls.ablation_hooks` valid for them."""
    model = build(draw(st.sampled_from(MODEL_KEYS)))
    info = info_of(model)
    toks = draw(tokens(info, min_seq=1))
    ablation = draw(st.sampled_from(["zero", "mean", "resample", "patch"]))
    per_position = ablation == "mean" and draw(st.booleans())
    reference = draw(references(info, ablation, toks.shape[0], toks.shape[1], per_position))
    kw = {"ablation": ablation, "reference": reference, "per_position": per_position, "seed": draw(st.integers(0, 9))}
    return model, toks, kw


@st.composite
def kinds_of(draw: st.DrawFn, info: tlmodel.ModelInfo, per_position: bool) -> tuple[str, ...]:
    """A non-empty choice of the model's kinds (no neurons per position)."""
    allowed = [k for k in info.kinds() if not (per_position and k == "neurons")]
    chosen = draw(st.sets(st.sampled_from(allowed), min_size=1))
    return tuple(k for k in allowed if k in chosen)


def logits(model: Any, toks: torch.Tensor, hooks: list | None = None) -> torch.Tensor:
    return tlmodel.run_logits(model, toks, hooks or [])


def scale(*values: float) -> float:
    return max(1.0, *(abs(v) for v in values))


# ---------------------------------------------------------------------------------------------
# Ablation


@PROPERTY
@given(setup=ablation_setups())
def test_ablating_the_empty_submodel_changes_nothing(setup):
    model, toks, kw = setup
    before, n_hooks = logits(model, toks), hook_count(model)
    empty = SubModel(name="empty")
    assert torch.equal(logits(model, toks, empty.hooks(model, **kw)), before)
    assert torch.equal(logits(model, toks, tls.ablation_hooks(model, [], **kw)), before)
    with tls.ablated(model, empty, **kw), torch.no_grad():
        assert torch.equal(model(toks), before)
    assert hook_count(model) == n_hooks


@PROPERTY
@given(setup=ablation_setups(), data=st.data())
def test_keep_only_everything_changes_nothing(setup, data):
    model, toks, kw = setup
    info = info_of(model)
    everything_ = data.draw(everything(info, toks.shape[1]))
    # Extra components (positions, neurons) inside what is kept change nothing either.
    kept = everything_ | data.draw(submodels(info))
    assert tls.complement(model, kept) == []
    before = logits(model, toks)
    assert torch.equal(logits(model, toks, kept.hooks(model, keep_only=True, **kw)), before)
    with tls.ablated(model, kept, keep_only=True, **kw), torch.no_grad():
        assert torch.equal(model(toks), before)


@PROPERTY
@given(key=st.sampled_from(MODEL_KEYS), data=st.data())
def test_patching_a_run_with_itself_changes_nothing(key, data):
    """'patch' ablation of any sub-model, from the very tokens being run, is the identity."""
    model = build(key)
    toks = data.draw(tokens(info_of(model), min_seq=1))
    sub = data.draw(submodels(info_of(model)))
    keep_only = data.draw(st.booleans())
    hooks = sub.hooks(model, ablation="patch", reference=toks, keep_only=keep_only)
    torch.testing.assert_close(logits(model, toks, hooks), logits(model, toks), atol=1e-5, rtol=0)


@PROPERTY
@given(setup=ablation_setups(), data=st.data())
def test_ablating_a_union_is_ablating_both(setup, data):
    """Hooks of A then hooks of B (nested) equal the hooks of A | B, for every ablation."""
    model, toks, kw = setup
    info = info_of(model)
    a, b = data.draw(submodels(info)), data.draw(submodels(info))
    both = tls.ablation_hooks(model, a, **kw) + tls.ablation_hooks(model, b, **kw)
    union = (a | b).hooks(model, **kw)
    torch.testing.assert_close(logits(model, toks, both), logits(model, toks, union), atol=1e-5, rtol=0)


@PROPERTY
@given(setup=ablation_setups(), data=st.data())
def test_ablating_all_neurons_of_a_layer_is_ablating_its_mlp(setup, data):
    """mlp_out = post @ W_out + b_out is affine, so mean / resample / patch values agree."""
    model, toks, kw = setup
    info = info_of(model)
    assume(info.has_mlps and kw["ablation"] != "zero")  # zeroing neurons leaves b_out; zeroing the MLP does not
    layers = data.draw(st.sets(st.integers(0, info.n_layers - 1), min_size=1))
    as_neurons = [Neuron(layer, n) for layer in layers for n in range(info.d_mlp or 0)]
    as_mlps = [MLP(layer) for layer in layers]
    a = logits(model, toks, tls.ablation_hooks(model, as_neurons, **kw))
    b = logits(model, toks, tls.ablation_hooks(model, as_mlps, **kw))
    torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# Patching


@PROPERTY
@given(key=st.sampled_from(MODEL_KEYS), data=st.data())
def test_patching_clean_into_clean_changes_nothing(key, data):
    model = build(key)
    task = data.draw(tasks(model, identical=True))
    per_position = data.draw(st.booleans())
    kinds = data.draw(kinds_of(info_of(model), per_position))
    kw = {
        "kinds": kinds,
        "per_position": per_position,
        "direction": data.draw(st.sampled_from(["denoising", "noising"])),
        "fast": data.draw(st.booleans()),
        "batch_size": data.draw(st.none() | st.integers(16, 256)),
    }
    with torch.no_grad():
        base = float(task.metric(model(task.clean)))
    with pytest.raises(tls.TLSubmodelsError, match="no gap"):
        tls.patch(model, task, **kw)
    scores = tls.patch(model, task, require_gap=False, per_example=True, **kw)
    assert scores.clean_metric == scores.corrupt_metric
    assert math.isclose(scores.clean_metric, base, rel_tol=1e-5, abs_tol=1e-5)
    for kind in kinds:
        raw = getattr(scores, f"raw_{kind}")
        torch.testing.assert_close(raw, torch.full_like(raw, base), atol=1e-5 * scale(base), rtol=0)
        assert getattr(scores, kind).isnan().all()  # normalised by a zero gap: undefined


@PROPERTY
@given(key=st.sampled_from(MODEL_KEYS), data=st.data())
def test_patching_every_head_and_mlp_from_clean_restores_the_metric(key, data):
    """Normalised effect 1: with every head and MLP output patched from the source run, the residual
    stream at the read position is the source run's (tasks whose prompts agree there), so is the metric.

    Denoising (run corrupt, patch all from clean) restores the whole gap; noising (run clean, patch
    all from corrupt) destroys the whole gap.
    """
    model = build(key)
    task = data.draw(tasks(model, same_at_read=True))
    direction = data.draw(st.sampled_from(["denoising", "noising"]))
    base, source = (task.corrupt, task.clean) if direction == "denoising" else (task.clean, task.corrupt)
    all_ = data.draw(everything(info_of(model), task.seq_len))
    with torch.no_grad():
        clean_m, corrupt_m = float(task.metric(model(task.clean))), float(task.metric(model(task.corrupt)))
        source_final = task.final_logits(model(source))
    patched = logits(model, base, tls.ablation_hooks(model, all_, ablation="patch", reference=source))
    tol = 1e-5 * scale(clean_m, corrupt_m)
    torch.testing.assert_close(task.final_logits(patched), source_final, atol=1e-4, rtol=1e-5)
    m = float(task.metric(patched))
    assert math.isclose(m, clean_m if direction == "denoising" else corrupt_m, abs_tol=tol)
    gap = clean_m - corrupt_m
    assume(abs(gap) > 1e-3)
    effect = (m - corrupt_m) / gap if direction == "denoising" else (clean_m - m) / gap
    assert math.isclose(effect, 1.0, abs_tol=tol / abs(gap))


@PROPERTY
@given(key=st.sampled_from(MODEL_KEYS), data=st.data())
def test_patch_scores_equal_a_hand_patched_run(key, data):
    """The raw score of a component is the metric of the base run with that component patched
    from the source run by `tls.ablation_hooks(..., ablation="patch")` (two independent code paths)."""
    model = build(key)
    info = info_of(model)
    task = data.draw(tasks(model))
    assume(abs(gap_of(model, task)) > 1e-3)
    per_position = data.draw(st.booleans())
    picked = data.draw(st.lists(components(info, positions=False), min_size=1, max_size=3, unique=True))
    if per_position:
        picked = [c.at(data.draw(st.integers(0, task.seq_len - 1))) for c in picked if not isinstance(c, Neuron)]
        assume(picked)
    direction = data.draw(st.sampled_from(["denoising", "noising"]))
    base, source = (task.corrupt, task.clean) if direction == "denoising" else (task.clean, task.corrupt)
    kinds = tuple(k for k in KINDS if any(c.kind == k for c in picked))
    kw = {"kinds": kinds, "direction": direction, "fast": data.draw(st.booleans())}
    if per_position:
        scores = tls.patch(model, task, per_position=True, **kw)
    else:
        scores = tls.patch(model, task, components=picked, **kw)
    for c in picked:
        hooks = tls.ablation_hooks(model, [c], ablation="patch", reference=source)
        expected = float(task.metric(logits(model, base, hooks)))
        raw = getattr(scores, f"raw_{c.kind}")
        index = (c.layer,) + ((c.pos,) if per_position else ()) + ((c.index,) if c.index is not None else ())
        assert math.isclose(float(raw[index]), expected, abs_tol=1e-4 * scale(expected)), (str(c), float(raw[index]))
        if not per_position:  # components= leaves the others unscored
            assert int(raw.isnan().logical_not().sum()) <= len(picked)


# ---------------------------------------------------------------------------------------------
# SubModel: set algebra and JSON


algebra_submodels = submodels(ALGEBRA_INFO)


@PROPERTY
@given(a=algebra_submodels, b=algebra_submodels, c=algebra_submodels)
def test_union_and_intersection_commute_and_associate(a, b, c):
    assert (a | b).components == (b | a).components
    assert (a & b).components == (b & a).components
    assert ((a | b) | c).components == (a | (b | c)).components
    assert ((a & b) & c).components == (a & (b & c)).components
    assert ((a - b) - c).components == (a - (b | c)).components
    # Plain iterables of components or strings work as the other operand.
    assert (a | [str(x) for x in b]).components == (a | b).components
    assert a.intersection(list(b)).components == (a & b).components


@PROPERTY
@given(a=algebra_submodels, b=algebra_submodels, c=algebra_submodels)
def test_union_and_intersection_distribute(a, b, c):
    assert (a & (b | c)).components == ((a & b) | (a & c)).components
    assert (a | (b & c)).components == ((a | b) & (a | c)).components
    assert (a - (b & c)).components == ((a - b) | (a - c)).components
    assert ((a | b) - c).components == ((a - c) | (b - c)).components


@PROPERTY
@given(a=algebra_submodels, b=algebra_submodels)
def test_de_morgan_relative_to_the_universe(a, b):
    u = universe(ALGEBRA_INFO)
    assert (u - (a | b)).components == ((u - a) & (u - b)).components
    assert (u - (a & b)).components == ((u - a) | (u - b)).components
    assert (u - (u - a)).components == a.components
    assert ((u - a) & a).components == frozenset()
    assert ((u - a) | a).components == u.components


@PROPERTY
@given(a=algebra_submodels, b=algebra_submodels)
def test_idempotence_identity_absorption(a, b):
    empty = SubModel(name="empty")
    assert (a | a).components == a.components == (a & a).components
    assert (a | empty).components == a.components == (a - empty).components
    assert (a & empty).components == frozenset() == (empty - a).components == (a - a).components
    assert (a | (a & b)).components == a.components == (a & (a | b)).components
    assert ((a - b) | (a & b)).components == a.components
    assert len(a | b) == len(a) + len(b) - len(a & b)
    assert all(x in a for x in a) and all(str(x) in a for x in a)
    assert list(a) == sorted(a.components)


@PROPERTY
@given(key=st.sampled_from(MODEL_KEYS), data=st.data())
def test_complement_is_a_set_complement(key, data):
    """`tls.complement` over heads and MLP layers: De Morgan, involution; with neurons: a partition of units."""
    model = build(key)
    info = info_of(model)
    u = universe(info, neurons=False, positions=False)
    a, b = (data.draw(submodels(info, neurons=False, positions=False)) for _ in range(2))

    def comp(x: SubModel) -> frozenset:
        return frozenset(tls.complement(model, x))

    assert comp(a) == (u - a).components
    assert comp(a | b) == comp(a) & comp(b)
    assert comp(a & b) == comp(a) | comp(b)
    assert comp(SubModel(components=comp(a))) == a.components
    assert tls.complement(model, a) == sorted(comp(a))

    # With neurons, what is kept and what keep_only ablates never overlap and cover every unit.
    def units(cs: Any) -> set[tuple]:
        out: set[tuple] = set()
        for c in cs:
            c = c.without_pos()
            if isinstance(c, MLP):
                out |= {("neurons", c.layer, n) for n in range(info.d_mlp or 0)}
            else:
                out.add((c.kind, c.layer, c.index))
        return out

    kept = data.draw(submodels(info))
    dropped = units(tls.complement(model, kept))
    assert not dropped & units(kept)
    everything_units = units(info.components(("heads", "mlps")))
    assert dropped | units(kept) == everything_units


@PROPERTY
@given(sub=submodels(ALGEBRA_INFO) | submodels(MLP_INFO))
def test_submodel_json_round_trip(sub):
    assert SubModel.from_dict(sub.to_dict()) == sub
    assert SubModel.from_dict(json.loads(json.dumps(sub.to_dict()))) == sub
    assert SubModel.from_dict(json.loads(json.dumps(sub.to_dict()))).to_dict() == sub.to_dict()
    with tempfile.TemporaryDirectory() as tmp:
        path = sub.save(Path(tmp) / "sub.json")
        assert SubModel.load(path) == sub
        assert SubModel.load(sub.renamed(sub.name).save(path)) == sub


floats32 = st.floats(width=32, allow_nan=True, allow_infinity=True)


@st.composite
def scores_values(draw: st.DrawFn) -> Scores:
    n_layers, n_heads, d_mlp = draw(st.integers(1, 3)), draw(st.integers(1, 3)), draw(st.integers(1, 4))
    per_position, n_pos = draw(st.booleans()), draw(st.integers(1, 3))
    allowed = [k for k in KINDS if not (per_position and k == "neurons")]
    kinds = draw(st.sets(st.sampled_from(allowed), min_size=1))
    shapes = {
        "heads": (n_layers, n_pos, n_heads) if per_position else (n_layers, n_heads),
        "neurons": (n_layers, d_mlp),
        "mlps": (n_layers, n_pos) if per_position else (n_layers,),
    }

    def tensor(shape: tuple[int, ...]) -> torch.Tensor:
        n = math.prod(shape)
        return torch.tensor(draw(st.lists(floats32, min_size=n, max_size=n)), dtype=torch.float32).view(shape)

    fields: dict[str, Any] = {}
    for kind in KINDS:
        fields[kind] = tensor(shapes[kind]) if kind in kinds else None
        fields[f"raw_{kind}"] = tensor(shapes[kind]) if kind in kinds and draw(st.booleans()) else None
    batch = draw(st.integers(1, 3))
    per_example = {k: tensor((batch, *shapes[k])) for k in sorted(kinds)} if draw(st.booleans()) else None
    return Scores(
        **fields,
        clean_metric=draw(st.floats(allow_nan=False)),
        corrupt_metric=draw(st.floats(allow_nan=False)),
        method=draw(st.sampled_from(["patch", "atp", "ig8"]) | st.text(max_size=8)),
        direction=draw(st.sampled_from(["denoising", "noising"])),
        metric=draw(st.sampled_from(METRICS) | st.text(max_size=8)),
        per_position=per_position,
        task=draw(st.text(max_size=12)),
        per_example=per_example,
    )


def assert_same_tensor(a: torch.Tensor | None, b: torch.Tensor | None) -> None:
    assert (a is None) == (b is None)
    if a is not None and b is not None:
        assert a.shape == b.shape and a.dtype == b.dtype
        assert torch.equal(a.isnan(), b.isnan())
        assert torch.equal(torch.nan_to_num(a, nan=0.0), torch.nan_to_num(b, nan=0.0))


def assert_same_scores(a: Scores, b: Scores) -> None:
    for kind in KINDS:
        assert_same_tensor(getattr(a, kind), getattr(b, kind))
        assert_same_tensor(getattr(a, f"raw_{kind}"), getattr(b, f"raw_{kind}"))
    for f in ("clean_metric", "corrupt_metric", "method", "direction", "metric", "per_position", "task"):
        assert getattr(a, f) == getattr(b, f), f
    assert (a.per_example is None) == (b.per_example is None)
    if a.per_example is not None and b.per_example is not None:
        assert a.per_example.keys() == b.per_example.keys()
        for k in a.per_example:
            assert_same_tensor(a.per_example[k], b.per_example[k])


@PROPERTY
@given(scores=scores_values())
def test_scores_json_round_trip(scores):
    back = Scores.from_dict(json.loads(json.dumps(scores.to_dict())))
    assert_same_scores(back, scores)
    assert json.dumps(back.to_dict()) == json.dumps(scores.to_dict())
    assert back.kinds == scores.kinds


# ---------------------------------------------------------------------------------------------
# Order of the examples


def assert_permuted(scores: Scores, permuted: Scores, perm: list[int]) -> None:
    """``permuted`` (scores of the task with examples in order ``perm``) equals ``scores``."""
    gap = scores.clean_metric - scores.corrupt_metric
    ref = scale(scores.clean_metric, scores.corrupt_metric)
    assert math.isclose(permuted.clean_metric, scores.clean_metric, abs_tol=1e-5 * ref)
    assert math.isclose(permuted.corrupt_metric, scores.corrupt_metric, abs_tol=1e-5 * ref)
    for kind in scores.kinds:
        raw, raw_p = getattr(scores, f"raw_{kind}"), getattr(permuted, f"raw_{kind}")
        torch.testing.assert_close(raw_p, raw, atol=1e-5 * scale(float(raw.abs().max()), ref), rtol=0)
        tol = 1e-5 * scale(float(raw.abs().max()), ref) / abs(gap)
        torch.testing.assert_close(getattr(permuted, kind), getattr(scores, kind), atol=tol, rtol=0)
        assert scores.per_example is not None and permuted.per_example is not None
        torch.testing.assert_close(permuted.per_example[kind], scores.per_example[kind][perm], atol=tol, rtol=0)


@st.composite
def permuted_tasks(draw: st.DrawFn) -> tuple[Any, tls.Task, list[int]]:
    model = build(draw(st.sampled_from(MODEL_KEYS)))
    task = draw(tasks(model))
    perm = draw(st.permutations(range(task.batch)))
    return model, task, perm


def gap_of(model: Any, task: tls.Task) -> float:
    with torch.no_grad():
        return float(task.metric(model(task.clean)) - task.metric(model(task.corrupt)))


@PROPERTY
@given(setup=permuted_tasks(), data=st.data())
def test_patch_scores_do_not_depend_on_example_order(setup, data):
    model, task, perm = setup
    assume(abs(gap_of(model, task)) > 1e-3)
    per_position = data.draw(st.booleans())
    kinds = data.draw(kinds_of(info_of(model), per_position))
    kw = {
        "kinds": kinds,
        "per_position": per_position,
        "direction": data.draw(st.sampled_from(["denoising", "noising"])),
        "fast": data.draw(st.booleans()),
        "per_example": True,
    }
    scores = tls.patch(model, task, batch_size=data.draw(st.none() | st.integers(16, 256)), **kw)
    permuted = tls.patch(model, task.subset(perm), batch_size=data.draw(st.none() | st.integers(16, 256)), **kw)
    assert_permuted(scores, permuted, perm)


@PROPERTY
@given(setup=permuted_tasks(), data=st.data())
def test_attribution_scores_do_not_depend_on_example_order(setup, data):
    model, task, perm = setup
    assume(abs(gap_of(model, task)) > 1e-3)
    per_position = data.draw(st.booleans())
    kinds = data.draw(kinds_of(info_of(model), per_position))
    kw = {
        "kinds": kinds,
        "per_position": per_position,
        "direction": data.draw(st.sampled_from(["denoising", "noising"])),
        "method": data.draw(st.sampled_from(["atp", "ig"])),
        "steps": data.draw(st.integers(1, 3)),
        "per_example": True,
    }
    scores = tls.attribute(model, task, batch_size=data.draw(st.none() | st.integers(2, 8)), **kw)
    permuted = tls.attribute(model, task.subset(perm), batch_size=data.draw(st.none() | st.integers(2, 8)), **kw)
    assert_permuted(scores, permuted, perm)


# ---------------------------------------------------------------------------------------------
# Attribution on linear models


@functools.cache
def linear_hooks(key: tuple[str, int]) -> list:
    """Hooks that make the model linear: fixed causal attention patterns, a fixed gate for the MLP.

    With no normalisation, ``pattern`` fixed and ``post = pre * gate`` (gate fixed), every
    activation is an affine function of any earlier one, and logit_diff is linear in the logits:
    the first-order estimate (AtP) and integrated gradients are exact.
    """
    cfg = LINEAR_CFGS[key[0]]
    g = torch.Generator().manual_seed(1000 + key[1])
    n, heads = cfg["n_ctx"], cfg["n_heads"]
    weights = torch.rand(cfg["n_layers"], heads, n, n, generator=g).tril() + 0.05 * torch.ones(n, n).tril()
    patterns = weights / weights.sum(-1, keepdim=True)  # [layer, head, q, k], causal, rows sum to 1

    def pattern(act: torch.Tensor, hook: Any) -> torch.Tensor:
        seq = act.shape[-1]
        p = patterns[hook.layer(), :, :seq, :seq]
        return (p / p.sum(-1, keepdim=True)).to(act.dtype).expand_as(act)

    hooks = [(tlmodel.hook_pattern(layer), pattern) for layer in range(cfg["n_layers"])]
    if not cfg["attn_only"]:
        gates = torch.randn(cfg["n_layers"], n, cfg["d_mlp"], generator=g)

        pres: dict[int, torch.Tensor] = {}

        def keep_pre(pre: torch.Tensor, hook: Any) -> torch.Tensor:
            pres[hook.layer()] = pre
            return pre

        def gate(post: torch.Tensor, hook: Any) -> torch.Tensor:
            pre = pres.pop(hook.layer())
            return pre * gates[hook.layer(), : pre.shape[1]].to(pre.dtype)

        hooks += [(f"blocks.{layer}.mlp.hook_pre", keep_pre) for layer in range(cfg["n_layers"])]
        hooks += [(tlmodel.hook_post(layer), gate) for layer in range(cfg["n_layers"])]
    return hooks


@PROPERTY
@given(key=st.sampled_from(LINEAR_KEYS), data=st.data())
def test_attribution_is_exact_on_linear_models(key, data):
    model = build(key)
    task = data.draw(tasks(model, metrics=("logit_diff",)))
    per_position = data.draw(st.booleans())
    kinds = data.draw(kinds_of(info_of(model), per_position))
    direction = data.draw(st.sampled_from(["denoising", "noising"]))
    method = data.draw(st.sampled_from(["atp", "ig"]))
    with model.hooks(fwd_hooks=linear_hooks(key)):
        assume(abs(gap_of(model, task)) > 1e-3)
        exact = tls.patch(model, task, kinds=kinds, direction=direction, per_position=per_position)
        approx = tls.attribute(
            model, task, kinds=kinds, direction=direction, per_position=per_position, method=method, steps=2
        )
    gap = exact.clean_metric - exact.corrupt_metric
    for kind in kinds:
        raw = getattr(exact, f"raw_{kind}")
        atol = 1e-4 * scale(float(raw.abs().max()), exact.clean_metric, exact.corrupt_metric)
        torch.testing.assert_close(getattr(approx, f"raw_{kind}"), raw, atol=atol, rtol=0)
        torch.testing.assert_close(getattr(approx, kind), getattr(exact, kind), atol=atol / abs(gap), rtol=0)
