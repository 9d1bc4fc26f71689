"""Attribution (AtP, integrated gradients) against TransformerLens, exact patching and invariants."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import assert_same_weights, hook_count, make_mlp_task, random_tl_state, weights_snapshot

import tl_submodels as tls
from tl_submodels import attribution
from tl_submodels import model as tlmodel

LINEAR_CFG = {
    "n_layers": 2,
    "n_heads": 3,
    "d_model": 24,
    "d_head": 8,
    "d_mlp": None,
    "d_vocab": 50,
    "n_ctx": 24,
    "attn_only": True,
    "act_fn": None,
    "normalization_type": None,
    "positional_embedding_type": "standard",
}


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.flatten().argsort().argsort().double()
    rb = b.flatten().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


@pytest.mark.skipif(
    tlmodel.INSTALLED_LINE != 4, reason="transformer_lens.tools.analysis.attribution_patching is TL 4 only"
)
def test_atp_equals_transformer_lens_attribution_patch(mlp_model, mlp_task):
    from transformer_lens.tools.analysis.attribution_patching import attribution_patch

    ours = tls.attribute(mlp_model, mlp_task, method="atp", kinds=("heads", "mlps"), per_position=True)
    gap = ours.clean_metric - ours.corrupt_metric
    reference: dict = {}
    for i in range(mlp_task.batch):  # TL averages per-example scores; our metric is the batch mean
        one = mlp_task.subset([i])
        result = attribution_patch(mlp_model, one.clean, one.corrupt, one.metric)
        for node, value in result.node_scores.items():
            reference[node] = reference.get(node, 0.0) + value / mlp_task.batch
    compared = 0
    for node, value in reference.items():
        if node.kind == "attn_head_out":
            mine = ours.heads[node.layer, node.position, node.head] * gap
        elif node.kind == "mlp_out":
            mine = ours.mlps[node.layer, node.position] * gap
        else:
            continue
        assert float(mine) == pytest.approx(value, abs=1e-4)
        compared += 1
    assert compared == 3 * 12 * 5


@pytest.mark.parametrize("direction", ["denoising", "noising"])
def test_atp_is_exact_on_a_linear_model(direction):
    """No normalisation and attention patterns frozen by a hook: the metric is linear in every head."""
    state = {k: v for k, v in random_tl_state(LINEAR_CFG, seed=3).items() if ".ln" not in k and "ln_final" not in k}
    model = tlmodel.build_from_tl_checkpoint(LINEAR_CFG, state)
    task = make_mlp_task(model, seq=10, diff_at=4)
    frozen = {}
    _, cache = model.run_with_cache(task.corrupt)
    for layer in range(2):
        frozen[layer] = cache[f"blocks.{layer}.attn.hook_pattern"]

    def freeze(pattern, hook):
        ref = frozen[hook.layer()]
        return ref.repeat(pattern.shape[0] // ref.shape[0], 1, 1, 1)

    hooks = [(f"blocks.{layer}.attn.hook_pattern", freeze) for layer in range(2)]
    with model.hooks(fwd_hooks=hooks):
        exact = tls.patch(model, task, kinds="heads", direction=direction, per_position=True)
        atp = tls.attribute(model, task, method="atp", kinds="heads", direction=direction, per_position=True)
        ig = tls.attribute(model, task, method="ig", kinds="heads", direction=direction, per_position=True, steps=3)
    torch.testing.assert_close(atp.heads, exact.heads, atol=1e-4, rtol=0)
    torch.testing.assert_close(atp.raw_heads, exact.raw_heads, atol=1e-4, rtol=0)
    # Linear in every head, so no interactions: IG equals exact patching per component at any number of steps.
    torch.testing.assert_close(ig.heads, exact.heads, atol=1e-4, rtol=0)


def test_ig_completeness_improves_with_steps(induction_model, induction_task):
    """IG scores of one site sum to the effect of patching the whole site, closer as steps grow."""
    model, task = induction_model, induction_task
    layer1 = [f"L1H{h}" for h in range(4)]
    hooks = tls.ablation_hooks(model, layer1, ablation="patch", reference=task.clean)
    with torch.no_grad():
        whole = float(task.metric(model.run_with_hooks(task.corrupt, fwd_hooks=hooks)))
        target = whole - float(task.metric(model(task.corrupt)))
    errors = []
    for steps in (1, 2, 4, 16):
        ig = tls.attribute(model, task, method="ig", kinds="heads", steps=steps)
        total = float(ig.heads[1].sum()) * (ig.clean_metric - ig.corrupt_metric)
        errors.append(abs(total - target))
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 0.02 * abs(target)


@pytest.mark.parametrize("which", ["induction", "mlp"])
def test_ig_ranks_like_exact_patching(which, request):
    model, task = request.getfixturevalue(f"{which}_model"), request.getfixturevalue(f"{which}_task")
    kinds = ("heads",) if which == "induction" else ("heads", "neurons", "mlps")
    exact = tls.patch(model, task, kinds=kinds)
    ig = tls.attribute(model, task, method="ig", kinds=kinds, steps=16)
    atp = tls.attribute(model, task, method="atp", kinds=kinds)
    for kind in kinds:
        rho_ig = spearman(getattr(exact, kind), getattr(ig, kind))
        rho_atp = spearman(getattr(exact, kind), getattr(atp, kind))
        assert rho_ig >= 0.8, (kind, rho_ig, rho_atp)


ZOO_TASKS = [(name, task) for name in tls.zoo.list() for task in tls.zoo.info(name)["tasks"]]


def site_patch_effects(model, task) -> list[float]:
    """Exact effect on the metric of patching each whole site (every head of a layer's hook_z, every
    neuron of a layer's mlp.hook_post) from clean into corrupt, with plain TransformerLens hooks."""
    info = tlmodel.model_info(model)
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(info.n_layers)]
    if info.has_mlps:
        names += [f"blocks.{layer}.mlp.hook_post" for layer in range(info.n_layers)]
    with torch.no_grad():
        _, clean = model.run_with_cache(task.clean, names_filter=lambda n: n in names)
        base = float(task.metric(model(task.corrupt)))
        effects = []
        for n in names:
            patched = model.run_with_hooks(task.corrupt, fwd_hooks=[(n, lambda act, hook, n=n: clean[n])])
            effects.append(float(task.metric(patched)) - base)
        return effects


@pytest.mark.parametrize(("name", "task_name"), ZOO_TASKS)
def test_ig_converges_to_exact_site_patching_on_every_zoo_task(name, task_name, zoo_model):
    """More IG steps bring every site's summed scores monotonically closer to exact patching of that site.

    This is the exact patching IG integrates: it moves all components of a site together, so it
    converges to the site's patch (completeness), not to each component patched alone (see below).
    """
    model = zoo_model(name)
    task = tls.zoo.task(name, task_name, n=32, seed=0, model=model)
    info = tlmodel.model_info(model)
    kinds = ("heads", "neurons") if info.has_mlps else ("heads",)
    target = torch.tensor(site_patch_effects(model, task))
    errors = []
    for steps in (1, 2, 4, 8, 16):
        ig = tls.attribute(model, task, method="ig", kinds=kinds, steps=steps)
        gap = ig.clean_metric - ig.corrupt_metric
        sums = torch.cat([getattr(ig, kind).flatten(1).sum(1) for kind in kinds]) * gap
        errors.append(float((sums - target).abs().sum() / abs(gap)))
    assert errors == sorted(errors, reverse=True), f"{name} {task_name}: L1 error / gap by steps {errors}"
    assert errors[-1] < 0.02, f"{name} {task_name}: L1 error / gap by steps {errors}"


# Every task of every zoo model. On the addition tasks IG's ranking of the components whose own
# effect is tiny does not follow exact patching (measured with 32 prompts: Spearman 0.66 on
# multitask-3l, 0.75 on harmful-3l, 0.70 on harmless-3l; heads alone 0.63-0.80) although the few
# that matter are close (the top three heads of multitask-3l: IG 0.43, 0.43, 0.12 of the gap,
# exact 0.44, 0.56, 0.12). IG moves every component of a layer together from corrupt to
# clean, so each component's score is its share of the whole layer's patch, interactions
# included; exact patching moves one alone. 701 of the 768 neurons and 18 of the 24 heads have
# exact effects below 0.1% of the gap on addition (the mod-13 sum is computed jointly), and there
# those interaction shares decide the ranking. It is not prompt noise alone: on multitask-3l
# addition with 512 prompts, exact patching agrees with itself on other prompts at 0.84 (0.42 with
# 32), while IG against exact stays at 0.67-0.70 and atp reaches 0.92. IG does converge, monotonically,
# to exact patching of each whole site (test above). Kept as strict xfails, not a lower threshold.
IG_RANKS_APART = {("multitask-3l", "addition"), ("harmful-3l", "addition"), ("harmless-3l", "addition")}


@pytest.mark.parametrize(
    ("name", "task_name"),
    [
        pytest.param(
            *pair,
            marks=pytest.mark.xfail(pair in IG_RANKS_APART, strict=True, reason="interaction-dominated (see above)"),
        )
        for pair in ZOO_TASKS
    ],
)
def test_ig_ranks_like_exact_patching_on_every_zoo_task(name, task_name, zoo_model):
    """Spearman correlation of IG (16 steps) with exact patching over all heads and neurons together."""
    model = zoo_model(name)
    task = tls.zoo.task(name, task_name, n=32, seed=0, model=model)
    kinds = ("heads", "neurons") if tlmodel.model_info(model).has_mlps else ("heads",)
    exact = tls.patch(model, task, kinds=kinds)
    ig = tls.attribute(model, task, method="ig", kinds=kinds, steps=16)
    atp = tls.attribute(model, task, method="atp", kinds=kinds)

    def flat(scores: tls.Scores) -> torch.Tensor:
        return torch.cat([getattr(scores, kind).flatten() for kind in kinds])

    rho_ig, rho_atp = spearman(flat(exact), flat(ig)), spearman(flat(exact), flat(atp))
    assert rho_ig >= 0.8, f"{name} {task_name}: Spearman with exact patching: IG {rho_ig:.3f}, atp {rho_atp:.3f}"


def test_batching_and_chunks_agree(mlp_model, mlp_task):
    a = tls.attribute(mlp_model, mlp_task, method="atp", kinds=("heads", "neurons"))
    b = tls.attribute(mlp_model, mlp_task, method="atp", kinds=("heads", "neurons"), batch_size=2)
    torch.testing.assert_close(a.heads, b.heads, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.neurons, b.neurons, atol=1e-5, rtol=0)
    c = tls.attribute(mlp_model, mlp_task, method="ig", kinds="heads", steps=4)
    d = tls.attribute(mlp_model, mlp_task, method="ig", kinds="heads", steps=4, batch_size=6)
    torch.testing.assert_close(c.heads, d.heads, atol=1e-5, rtol=0)


def test_model_state_untouched(mlp_model, mlp_task):
    snap, hooks = weights_snapshot(mlp_model), hook_count(mlp_model)
    flags = [p.requires_grad for p in mlp_model.parameters()]
    for method in ("atp", "ig"):
        tls.attribute(mlp_model, mlp_task, method=method, kinds=("heads", "neurons", "mlps"), steps=2)
    assert all(p.grad is None for p in mlp_model.parameters())
    assert [p.requires_grad for p in mlp_model.parameters()] == flags
    assert hook_count(mlp_model) == hooks
    assert_same_weights(mlp_model, snap)


def test_frozen_model_still_attributes(mlp_model, mlp_task):
    for p in mlp_model.parameters():
        p.requires_grad_(False)
    try:
        frozen = tls.attribute(mlp_model, mlp_task, kinds="heads")
    finally:
        for p in mlp_model.parameters():
            p.requires_grad_(True)
    torch.testing.assert_close(frozen.heads, tls.attribute(mlp_model, mlp_task, kinds="heads").heads)


@pytest.mark.ill_typed
def test_bad_input(mlp_model, mlp_task):
    with pytest.raises(tls.TLSubmodelsError, match="unknown attribution method 'eap'"):
        tls.attribute(mlp_model, mlp_task, method="eap")  # type: ignore[arg-type]
    with pytest.raises(tls.TLSubmodelsError, match="steps must be a positive"):
        tls.attribute(mlp_model, mlp_task, method="ig", steps=0)


def test_per_example_and_memory_budget(mlp_model, mlp_task):
    kinds = ("heads", "neurons", "mlps")
    for method in ("atp", "ig"):
        s = tls.attribute(mlp_model, mlp_task, method=method, kinds=kinds, per_example=True, steps=4)
        for kind in kinds:
            torch.testing.assert_close(s.per_example[kind].mean(0), getattr(s, kind), atol=1e-5, rtol=0)
        perm = [5, 4, 3, 2, 1, 0]
        t = tls.attribute(mlp_model, mlp_task.subset(perm), method=method, kinds=kinds, per_example=True, steps=4)
        torch.testing.assert_close(t.per_example["neurons"], s.per_example["neurons"].flip(0), atol=1e-4, rtol=1e-5)
    loose = {m: tls.attribute(mlp_model, mlp_task, method=m, kinds=kinds, steps=4) for m in ("atp", "ig")}
    # rows chosen by the caller and a budget smaller than one site's gradients: one site per backward pass
    tight = tls.attribute(mlp_model, mlp_task, kinds=kinds, batch_size=1, max_memory_mb=1e-6)
    # a budget that fits about two examples at once: the examples go in chunks (and "ig" one step per forward)
    info, seq = tlmodel.model_info(mlp_model), mlp_task.seq_len
    site = [info.site_mb(k, seq) for k in kinds]
    two = 2.5 * (2 * info.n_layers * sum(site) + attribution._grad_row_mb(tls.adapter(mlp_model), seq) + 2 * max(site))
    plan = {
        m: attribution.plan_attribution(tls.adapter(mlp_model), mlp_task, kinds=kinds, method=m, per_position=False,
                                        direction="denoising", steps=4, batch_size=None, max_memory_mb=two)
        for m in ("atp", "ig")
    }  # fmt: skip
    assert len(plan["atp"].chunks[0]) == 2 and (len(plan["ig"].chunks[0]), plan["ig"].steps_per_forward) == (2, 1)
    assert all(isinstance(i, attribution.AtPItem) for i in plan["atp"].items)
    assert all(isinstance(i, attribution.IGItem) for i in plan["ig"].items) and len(plan["ig"].items) == 3 * 3 * 4 * 3
    chunked = {m: tls.attribute(mlp_model, mlp_task, method=m, kinds=kinds, steps=4, max_memory_mb=two) for m in plan}
    for kind in kinds:
        torch.testing.assert_close(getattr(tight, kind), getattr(loose["atp"], kind), atol=1e-5, rtol=0)
        for m in plan:
            torch.testing.assert_close(getattr(chunked[m], kind), getattr(loose[m], kind), atol=1e-5, rtol=0)
    with pytest.raises(tls.TLSubmodelsError, match="below what one example needs"):
        tls.attribute(mlp_model, mlp_task, kinds=kinds, max_memory_mb=1e-6)


def flags(model):
    return {f: bool(getattr(model.cfg, f, False)) for f in ("use_split_qkv_input", "use_hook_mlp_in", "use_attn_in")}


@pytest.mark.parametrize("which", ["induction", "mlp"])
def test_edges_out_of_a_writer_add_up_to_its_node_score(which, request):
    model, task = request.getfixturevalue(f"{which}_model"), request.getfixturevalue(f"{which}_task")
    before, hooks = flags(model), hook_count(model)
    edges = tls.attribute_edges(model, task)
    assert flags(model) == before and hook_count(model) == hooks
    expected = "qkv" if tlmodel.INSTALLED_LINE == 2 else "layer"  # TL 4 native bridges cannot split q/k/v inputs
    assert edges.granularity == expected
    nodes = tls.attribute(model, task, method="atp")
    gap = nodes.clean_metric - nodes.corrupt_metric
    for i, writer in enumerate(edges.writers):
        c = tls.parse_component(writer)
        node = nodes.heads[c.layer, c.head] if c.kind == "heads" else nodes.mlps[c.layer]
        assert float(torch.nansum(edges.raw[i])) == pytest.approx(float(node) * gap, abs=1e-4), writer
    # only later components read a writer's output
    assert torch.isnan(edges.scores[edges.writers.index("L1H0"), edges.readers.index(edges.readers[0])])
    assert abs(edges.top(1)[0][2]) == pytest.approx(float(torch.nan_to_num(edges.scores).abs().max()))
    # unreachable edges (a reader before its writer: NaN) are never listed, even when k asks for every edge
    reachable = int((~edges.scores.isnan()).sum())
    assert reachable < edges.scores.numel()
    listed = edges.top(edges.scores.numel())
    assert len(listed) == reachable and not any(math.isnan(v) for _, _, v in listed)


@pytest.mark.skipif(
    tlmodel.INSTALLED_LINE != 4, reason="TL 4's attribution_patch and the HF-backed bridge are TL 4 only"
)
def test_edges_equal_transformer_lens_on_a_gpt2_bridge():
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
    from transformer_lens.tools.analysis.attribution_patching import EdgeAttributionConfig, attribution_patch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_head=4, n_embd=32, n_positions=24, vocab_size=50, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    model = build_bridge_from_module(GPT2LMHeadModel(config).eval(), "GPT2LMHeadModel", hf_config=config).eval()
    task = make_mlp_task(model, n=3, seq=8, diff_at=3)
    ours = tls.attribute_edges(model, task)
    assert ours.granularity == "qkv"
    reference: dict = {}
    for i in range(task.batch):
        one = task.subset([i])
        result = attribution_patch(model, one.clean, one.corrupt, one.metric, EdgeAttributionConfig(granularity="edge"))
        for (u, v), value in result.edge_scores.items():
            if u.kind == "embed":
                continue
            w = f"L{u.layer}H{u.head}" if u.kind == "attn_head_out" else f"MLP{u.layer}"
            if v.kind in ("q_input", "k_input", "v_input"):
                r = f"L{v.layer}H{v.head}.{v.kind[0]}"
            else:
                r = "logits" if v.kind == "logits" else f"MLP{v.layer}"
            reference[(w, r)] = reference.get((w, r), 0.0) + value / task.batch
    assert len(reference) > 50
    for (w, r), value in reference.items():
        mine = float(ours.raw[ours.writers.index(w), ours.readers.index(r)])
        assert mine == pytest.approx(value, abs=1e-4), (w, r)
