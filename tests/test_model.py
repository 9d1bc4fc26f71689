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
    expected = "TransformerBridge" if tls.TL_LINE == 4 else "HookedTransformer"
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
        "print(tls.TL_LINE)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tls.TL_LINE)


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
    tls.TL_LINE != 4, reason="TransformerBridge over a HuggingFace model exists on transformer-lens 4.x only"
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
