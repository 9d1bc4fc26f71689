"""The model contract: supported models, refused objects, hook names."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from conftest import make_mlp_task
from transformer_lens import patching

import tl_submodels as tls
from tl_submodels import model as tlmodel


def test_contract_on_zoo_and_random_models(induction_model, mlp_model):
    info = tls.check_model(induction_model)
    assert (info.n_layers, info.n_heads, info.d_head, info.attn_only, info.d_mlp) == (2, 4, 16, True, None)
    info = tls.check_model(mlp_model, ("heads", "neurons", "mlps"))
    assert (info.n_layers, info.d_mlp, info.kinds()) == (3, 64, ("heads", "neurons", "mlps"))
    expected = "TransformerBridge" if tlmodel.INSTALLED_LINE == 4 else "HookedTransformer"
    assert type(induction_model).__name__ == type(mlp_model).__name__ == expected


def test_import_is_light_and_changes_nothing():
    """A fresh ``import tl_submodels`` leaves transformer_lens unimported (it takes seconds; the
    command line's errors and ``zoo list`` need none of it) and torch's grad mode and RNG as they
    were; it tells the TL line all the same (test_contract_on_zoo_and_random_models checks that
    line against the class of the models the zoo builds)."""
    code = (
        "import sys, torch; grad, rng = torch.is_grad_enabled(), torch.random.get_rng_state(); "
        "import tl_submodels as tls; "
        "assert 'transformer_lens' not in sys.modules, 'transformer_lens imported'; "
        "assert torch.is_grad_enabled() == grad and torch.equal(torch.random.get_rng_state(), rng); "
        "print(tls.model.INSTALLED_LINE)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tlmodel.INSTALLED_LINE)


def test_unsupported_objects_are_refused(induction_task):
    for obj in (object(), torch.nn.Linear(3, 3), "gpt2"):
        with pytest.raises(tls.TLSubmodelsError, match="expected a TransformerLens model"):
            tls.patch(obj, induction_task)


def test_missing_hook_is_named(induction_model):
    class Stripped:
        def __init__(self) -> None:
            self.cfg = induction_model.cfg
            self.training = False
            self.hook_dict = {k: v for k, v in induction_model.hook_dict.items() if "hook_z" not in k}

    with pytest.raises(
        tls.TLSubmodelsError, match=r"no hook point 'blocks.0.attn.hook_z'.*TransformerBridge.*HookedTransformer"
    ):
        tls.check_model(Stripped(), ("heads",))


def test_training_mode_is_refused(mlp_model, mlp_task):
    mlp_model.train()
    try:
        with pytest.raises(tls.TLSubmodelsError, match=r"training mode.*model.eval\(\)"):
            tls.patch(mlp_model, mlp_task)
    finally:
        mlp_model.eval()


def test_hook_names_exist_on_the_model(mlp_model):
    names = [
        tlmodel.hook_z(2),
        tlmodel.hook_post(1),
        tlmodel.hook_mlp_out(0),
        tlmodel.hook_resid_pre(2),
        tlmodel.hook_pattern(1),
        tlmodel.hook_k(0),
        tlmodel.hook_v(0),
    ]
    for n in names:
        assert n in mlp_model.hook_dict, n


@pytest.mark.skipif(
    tlmodel.INSTALLED_LINE != 4, reason="TransformerBridge over a HuggingFace model exists on transformer-lens 4.x only"
)
def test_bridge_over_huggingface_gpt2():
    from transformer_lens.model_bridge.sources._bridge_builder import build_bridge_from_module
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    config = GPT2Config(
        n_layer=2, n_head=4, n_embd=32, n_positions=24, vocab_size=50, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0
    )
    hf = GPT2LMHeadModel(config).eval()
    model = build_bridge_from_module(hf, "GPT2LMHeadModel", hf_config=config).eval()
    task = make_mlp_task(model)
    for fast in (True, False):
        scores = tls.patch(model, task, kinds=("heads", "mlps"), per_position=True, fast=fast)
        _, cache = model.run_with_cache(task.clean)
        ref = patching.get_act_patch_attn_head_out_by_pos(model, task.corrupt, cache, task.metric)
        assert (scores.raw_heads - ref).abs().max() <= 1e-4
        ref = patching.get_act_patch_mlp_out(model, task.corrupt, cache, task.metric)
        assert (scores.raw_mlps - ref).abs().max() <= 1e-4
    hooks = tls.ablation_hooks(model, ["L1H2", "L0N3"], ablation="mean", reference=task.corrupt)
    assert model.run_with_hooks(task.clean, fwd_hooks=hooks).shape == (6, 12, 50)


def test_the_adapter_reads_the_line_off_the_model_not_the_installed_package(induction_model, mlp_model):
    for model in (induction_model, mlp_model):
        ad = tls.adapter(model)
        assert ad.line == tlmodel.INSTALLED_LINE  # the zoo builds the installed line's class
        assert ad.source == ("TransformerBridge (native)" if ad.line == 4 else "HookedTransformer")
        assert ad.fast_path == "weights" and ad.why_hooks == "" and ad.standard_weights() is not None
        assert ad.starts_at_layer == (ad.line == 2)
        assert repr(ad).startswith(f"Adapter({ad.source}, TL {ad.line}")

    class Lookalike(torch.nn.Module):  # TL's hook names and cfg, neither line's class
        def __init__(self, inner):
            super().__init__()
            self.inner, self.cfg, self.hook_dict = inner, inner.cfg, inner.hook_dict

    ad = tls.adapter(Lookalike(mlp_model))
    assert (ad.line, ad.source, ad.starts_at_layer, ad.backward_factor) == (0, "Lookalike", False, 1.0)
    assert tls.adapter(mlp_model).W_O().shape == (3, 4, 8, 32)


def test_the_adapter_says_why_an_architecture_runs_through_hooks(mlp_model, monkeypatch):
    for flag, value, why in [
        ("positional_embedding_type", "alibi", "alibi positions"),
        ("use_qk_norm", True, "q/k norms"),
        ("attention_dir", "bidirectional", "bidirectional attention"),
        ("act_fn", "solu_ln", "activation 'solu_ln'"),
    ]:
        with monkeypatch.context() as m:
            m.setattr(mlp_model.cfg, flag, value)
            ad = tls.adapter(mlp_model)
            assert (ad.fast_path, ad.why_hooks, ad.standard_weights()) == ("hooks", why, None)


def test_no_module_outside_the_adapter_knows_the_line_or_class():
    """Only tl_submodels/model/ imports transformer_lens, names a TL line, spells a hook name, or compares a
    model's class; messages and docstrings may still mention class names."""
    import ast
    from pathlib import Path

    root = Path(tls.__file__).parent
    found = []
    for path in sorted(root.rglob("*.py")):
        if path.parent.name == "model" and path.parent.parent == root:
            continue
        tree = ast.parse(path.read_text())
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        for node in ast.walk(tree):
            where = f"{path.relative_to(root)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Import | ast.ImportFrom):
                mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                found += [f"{where} imports {m}" for m in mods if m.startswith("transformer_lens")]
            elif isinstance(node, ast.Name | ast.Attribute):
                name = node.id if isinstance(node, ast.Name) else node.attr
                if name in ("TL_LINE", "INSTALLED_LINE", "original_model", "HookedTransformer", "TransformerBridge"):
                    found.append(f"{where} uses {name}")
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
                if "blocks." in node.value or node.value in ("HookedTransformer", "TransformerBridge"):
                    found.append(f"{where} spells {node.value!r}")
            elif isinstance(node, ast.JoinedStr) and any(
                isinstance(v, ast.Constant) and str(v.value).startswith("blocks.") for v in node.values
            ):
                found.append(f"{where} spells a hook name")
    assert not found, found
