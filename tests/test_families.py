"""Every model family a TransformerLens user opens, tiny and random, built offline: on TL 4 a
TransformerBridge over the HuggingFace model, on TL 2 a HookedTransformer converted from it (rotary,
RMS norm, gated MLPs, GQA/MQA, parallel attention, Gemma 2's soft caps and local attention).

For each family: patching of heads, neurons and MLPs equals a plain-hook oracle (and TL's own head
patching); AtP equals autograd through the same hooks; zero-ablating a head equals zeroing its output
weights in the HuggingFace model; find_circuit, attribute_edges and generation under ablation run, and
greedy generation under ablation equals the step-by-step argmax of the hooked forward.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from families import FAMILIES, TL4_ONLY, small_task, tiny_hf_model, word_tokenizer
from transformer_lens import patching

import tl_submodels as tls
from tl_submodels import model as tlmodel
from tl_submodels.ablation import AblatedRuns, Ablator
from tl_submodels.model import Adapter

TOL = 1e-4
# family -> why exact runs go through hooks ("" where they run over the weights), per TransformerLens line: the
# README's family table
WHY_HOOKS = dict.fromkeys(FAMILIES, "") | (
    {
        "gptj": "rotary positions the bridge does not show (no hook_cos)",
        "falcon": "its bridge's fused query/key/value weights do not reproduce its forward",
    }
    if tlmodel.INSTALLED_LINE == 4
    else {}
)
ON_THIS_LINE = [f for f in FAMILIES if tlmodel.INSTALLED_LINE == 4 or f not in TL4_ONLY]
# family -> (the attention output projection of layer {l} in the HF model, whether its weight is [in, out])
OUT_PROJ = {
    "gpt2": ("transformer.h.{l}.attn.c_proj", True),  # Conv1D
    "gpt_neox": ("gpt_neox.layers.{l}.attention.dense", False),
    "llama": ("model.layers.{l}.self_attn.o_proj", False),
    "opt": ("model.decoder.layers.{l}.self_attn.out_proj", False),
    "gptj": ("transformer.h.{l}.attn.out_proj", False),
    "qwen2": ("model.layers.{l}.self_attn.o_proj", False),
    "mistral": ("model.layers.{l}.self_attn.o_proj", False),
    "gemma2": ("model.layers.{l}.self_attn.o_proj", False),
    "falcon": ("transformer.h.{l}.self_attention.dense", False),
}


def _save(hf_model: torch.nn.Module, folder: Path) -> Path:
    hf_model.save_pretrained(folder)
    word_tokenizer().save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def family_model(tmp_path_factory):
    """``family_model(family)``: (the TL model loaded from a saved folder, the HF model), once a module."""
    made: dict[str, tuple] = {}

    def get(family: str):
        if family not in made:
            hf_model = tiny_hf_model(family)
            folder = _save(hf_model, tmp_path_factory.mktemp("family") / family)
            made[family] = tls.load_model(str(folder)), hf_model
        return made[family]

    return get


def _units(model, kind: str) -> list[tuple[str, int, int | None]]:
    """(hook name, layer, unit) of every component of ``kind``."""
    info = tls.check_model(model, (kind,))
    return [
        (tlmodel.site_hook(kind, layer), layer, unit)
        for layer in range(info.n_layers)
        for unit in ([None] if kind == "mlps" else range(info.n_units(kind)))
    ]


def _counting(fn, calls: list):
    def counted(*args, **kwargs):
        calls.append(1)
        return fn(*args, **kwargs)

    return counted


def _replace(unit: int | None, value: torch.Tensor):
    def hook(act, hook=None):
        act = act.clone()
        if unit is None:
            act[:] = value
        else:
            act[:, :, unit] = value[:, :, unit]
        return act

    return hook


@pytest.mark.parametrize("family", ON_THIS_LINE)
def test_patching_equals_plain_hooks(family, family_model, monkeypatch):
    model, _ = family_model(family)
    task = small_task(model)
    kinds = ("heads", "neurons", "mlps")
    assert tls.adapter(model).why_hooks == WHY_HOOKS[family]
    model(task.clean)  # a forward first: HuggingFace installs its own hooks then, which must not count as a user's
    hooked = []  # the hooked forwards patch runs: none where the fast path is taken
    monkeypatch.setattr(Adapter, "forward_from", _counting(Adapter.forward_from, hooked))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the fast path, where it applies, agrees with the model: no fallback
        scores = tls.patch(model, task, kinds=kinds)
        by_pos = tls.patch(model, task, kinds="heads", per_position=True)
    assert (len(hooked) == 0) == (WHY_HOOKS[family] == ""), len(hooked)
    monkeypatch.undo()
    slow = tls.patch(model, task, kinds="heads", per_position=True, fast=False)
    assert (by_pos.raw_heads - slow.raw_heads).abs().max() <= TOL
    names = {tlmodel.site_hook(k, layer) for k in kinds for layer in range(model.cfg.n_layers)}
    _, clean = tlmodel.run_cache(model, task.clean, names)
    for kind in kinds:
        oracle = torch.tensor(
            [
                float(task.metric(tlmodel.run_logits(model, task.corrupt, [(name, _replace(unit, clean[name]))])))
                for name, _, unit in _units(model, kind)
            ]
        )
        ours = getattr(scores, f"raw_{kind}").flatten()
        assert (ours - oracle).abs().max() <= TOL, (kind, (ours - oracle).abs().max())
    spread = scores.raw_heads.max() - scores.raw_heads.min()
    assert spread > 1e-3  # the components matter: the comparison means something
    # TransformerLens' own head patching
    _, cache = model.run_with_cache(task.clean)
    ref = patching.get_act_patch_attn_head_out_all_pos(model, task.corrupt, cache, task.metric)
    assert (scores.raw_heads - ref).abs().max() <= TOL


@pytest.mark.parametrize("family", ON_THIS_LINE)
def test_atp_equals_autograd_through_the_same_hooks(family, family_model):
    model, _ = family_model(family)
    task = small_task(model)
    kinds = ("heads", "neurons", "mlps")
    scores = tls.attribute(model, task, method="atp", kinds=kinds)
    names = [tlmodel.site_hook(k, layer) for k in kinds for layer in range(model.cfg.n_layers)]
    _, clean = tlmodel.run_cache(model, task.clean, names)
    acts: dict[str, torch.Tensor] = {}
    leaves: dict[str, torch.Tensor] = {}

    def keeper(name: str):
        def keep(act, hook):  # act + a zero leaf: the leaf's gradient is the activation's
            acts[name] = act.detach()
            leaves[name] = torch.zeros_like(act, requires_grad=True)
            return act + leaves[name]

        return keep

    with torch.enable_grad():
        logits = model.run_with_hooks(task.corrupt, fwd_hooks=[(n, keeper(n)) for n in names])
        task.metric(logits).backward()
    corrupt_metric = float(task.metric(logits.detach()))
    for kind in kinds:
        oracle = []
        for layer in range(model.cfg.n_layers):
            name = tlmodel.site_hook(kind, layer)
            effect = (clean[name] - acts[name]) * leaves[name].grad
            # heads [b, p, head, d_head] -> [head]; neurons [b, p, d_mlp] -> [d_mlp]; an MLP [b, p, d_model] -> []
            oracle.append(
                effect.sum((0, 1, 3)) if kind == "heads" else effect.sum((0, 1)) if kind == "neurons" else effect.sum()
            )
        ours = getattr(scores, f"raw_{kind}") - corrupt_metric
        torch.testing.assert_close(ours, torch.stack(oracle), atol=TOL, rtol=1e-3)
    model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("family", ON_THIS_LINE)
def test_zero_ablating_a_head_equals_zeroing_its_output_weights(family, family_model, tmp_path):
    model, _ = family_model(family)
    layer, head, d_head = 1, 1, model.cfg.d_head
    edited = tiny_hf_model(family)
    path, transposed = OUT_PROJ[family]
    weight = edited.get_submodule(path.format(l=layer)).weight
    with torch.no_grad():
        cols = slice(head * d_head, (head + 1) * d_head)
        (weight[cols] if transposed else weight[:, cols]).zero_()
    oracle_model = tls.load_model(str(_save(edited, tmp_path / "edited")))
    tokens = small_task(model).clean
    hooks = tls.ablation_hooks(model, [f"L{layer}H{head}"], ablation="zero")
    ablated = tlmodel.run_logits(model, tokens, hooks)
    expected = tlmodel.run_logits(oracle_model, tokens)
    assert (ablated - expected).abs().max() <= TOL
    assert (ablated - tlmodel.run_logits(model, tokens)).abs().max() > 1e-3  # the head mattered


@pytest.mark.parametrize("family", ON_THIS_LINE)
def test_search_edges_and_generation_under_ablation_run(family, family_model):
    model, _ = family_model(family)
    task = small_task(model)
    circuit = tls.find_circuit(model, task, target=0.8, kinds=("heads", "mlps"))
    assert len(circuit) >= 1
    if family in ("gptj", "falcon") and tlmodel.INSTALLED_LINE == 4:  # one norm shared by attention and MLP
        with pytest.raises(tls.TLSubmodelsError, match="parallel from one shared norm"):
            tls.attribute_edges(model, task)
    elif family == "gemma2":  # norms after attention and MLP: a head's share of the layer's output is no sum
        with pytest.raises(tls.TLSubmodelsError, match="normalises each attention and MLP output"):
            tls.attribute_edges(model, task)
    else:  # the edges out of each writer add up to its AtP node score
        edges = tls.attribute_edges(model, task)
        nodes = tls.attribute(model, task, method="atp", kinds=("heads", "mlps"))
        for i, writer in enumerate(edges.writers):
            c = tls.parse_component(writer)
            node = nodes.raw_heads[c.layer, c.head] if c.kind == "heads" else nodes.raw_mlps[c.layer]
            assert float(torch.nansum(edges.raw[i])) == pytest.approx(float(node) - nodes.corrupt_metric, abs=TOL)
        n_kv = getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
        if edges.granularity == "qkv":  # GQA: one k and one v reader per key-value head
            assert sum(r.startswith("L1") and r.endswith(".k") for r in edges.readers) == n_kv
    prompt = task.clean[:1, :5]
    # Without TL's KV cache: TL 4.3's bridges over GPT-2, Llama, Qwen2 and Mistral generate other tokens with
    # it than their own forward (and HuggingFace's generate) give, hooks or not.
    with tls.ablated(model, circuit, ablation="mean", reference=task.corrupt):
        out = model.generate(
            prompt, max_new_tokens=3, do_sample=False, verbose=False, use_past_kv_cache=False, stop_at_eos=False
        )
    hooks = tls.ablation_hooks(model, circuit, ablation="mean", reference=task.corrupt)
    tokens = prompt
    for _ in range(3):  # greedy decoding by hand under the same hooks: the oracle
        nxt = tlmodel.run_logits(model, tokens, hooks)[:, -1].argmax(-1, keepdim=True)
        tokens = torch.cat([tokens, nxt], dim=1)
    assert torch.equal(out.cpu(), tokens.cpu())


@pytest.mark.parametrize("family", ON_THIS_LINE)
def test_ablated_runs_take_the_path_the_table_says_with_the_hooked_numbers(family, family_model):
    """The ablated forwards of find_circuit, evaluate, factorize and decompose (AblatedRuns) run over the weights
    where the README's table says so, and give the hooked forward's logits (zero and mean ablation, keep-only)."""
    model, _ = family_model(family)
    task = small_task(model)
    ablator = Ablator(model, ablation="mean", reference=task.corrupt)
    sets = [["L0H1", "L1N3"], ["L1N5", "MLP1"], ["L1H0"]]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the weight-level forward agrees with the hooked one: no fallback
        runs = AblatedRuns(model, ablator, [task])
        got = [runs.finals(s)[0] for s in sets] + [runs.finals(["L0H0", "L1H1"], keep_only=True)[0]]
    assert (runs.weights is not None) == (WHY_HOOKS[family] == "")
    for s, logits in zip([*sets, None], got, strict=True):
        hooks = ablator.hooks(s) if s is not None else ablator.hooks(["L0H0", "L1H1"], keep_only=True)
        expected = task.final_logits(tlmodel.run_logits(model, task.clean, hooks))
        assert (logits - expected).abs().max() <= TOL * max(1.0, float(expected.abs().max())), s
