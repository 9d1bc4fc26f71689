"""Models split across devices: every hook writes on the device of the activation it is given.

This machine has no second device, so the activation is moved to PyTorch's ``meta`` device (shapes, no
data): a hook that wrote a tensor from another device (the reference, the source run, a mask made on the
CPU) into it would raise "Expected all tensors to be on the same device".
"""

from __future__ import annotations

import pytest
import torch

import tl_submodels as tls
from tl_submodels import attribution, patching
from tl_submodels import model as tlmodel

SUB = ["L0H1", "L1H0@3", "L1N5", "MLP0"]


@pytest.mark.parametrize(
    ("ablation", "per_position"),
    [("zero", False), ("mean", False), ("mean", True), ("resample", False), ("patch", False)],
)
def test_ablation_hooks_write_on_the_activations_device(mlp_model, mlp_task, ablation, per_position):
    reference = None if ablation == "zero" else mlp_task.corrupt
    hooks = tls.ablation_hooks(mlp_model, SUB, ablation=ablation, reference=reference, per_position=per_position)
    _, acts = tlmodel.run_cache(mlp_model, mlp_task.clean, [name for name, _ in hooks])
    for name, fn in hooks:
        out = fn(acts[name].to("meta"), None)
        assert out.device.type == "meta" and out.shape == acts[name].shape, name
        assert fn(acts[name], None).device == acts[name].device


def test_the_patchers_write_on_the_activations_device(mlp_model, mlp_task):
    info = tlmodel.model_info(mlp_model)
    kinds = ("heads", "neurons", "mlps")
    groups = patching._groups(info, kinds, False, 0, mlp_task.seq_len)
    _, source = tlmodel.run_cache(mlp_model, mlp_task.clean, {tlmodel.site_hook(g.kind, g.layer) for g in groups})
    for g in groups:
        act = source[tlmodel.site_hook(g.kind, g.layer)]
        n_units = act.shape[2] if g.kind != "mlps" else 1
        patcher = patching._Patcher(g, 0, 1, mlp_task.batch, act, n_units)
        out = patcher.hook(act.to("meta"))
        assert out.device.type == "meta" and out.shape == act.shape, (g.kind, g.layer)


def test_attribution_leaves_live_on_the_activations_device(mlp_model, mlp_task):
    """The IG path writes an interpolated value held on the CPU into the activation's device."""
    name = tlmodel.site_hook("heads", 0)
    _, acts = tlmodel.run_cache(mlp_model, mlp_task.corrupt, [name])
    seen: dict[str, torch.Tensor] = {}
    hooks: list = []

    class Recorder:
        def hooks(self, fwd_hooks):
            hooks.extend(fwd_hooks)
            raise StopIteration  # only the hook functions are wanted, not a forward

    with pytest.raises(StopIteration):
        attribution.site_gradients(Recorder(), mlp_task, torch.arange(mlp_task.batch), mlp_task.corrupt,
                               {name: acts[name]}, seen=seen)  # fmt: skip
    (hook_name, fn), = hooks  # fmt: skip
    out = fn(acts[name].to("meta"), None)
    assert hook_name == name and out.device.type == "meta" and out.requires_grad
