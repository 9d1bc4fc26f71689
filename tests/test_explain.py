"""usage and explain against hand-written hooks and TransformerLens' own forward."""

from __future__ import annotations

import pytest
import torch
from conftest import hook_count, make_mlp_task

import tl_submodels as tls

PARTS = [
    tls.SubModel(components=["L1H2", "L2H0"], name="heads"),
    tls.SubModel(components=["L0N3", "L0N7", "MLP2"], name="mlp"),
]


def zero_hooks(part, pos=None):
    """Hand-written zero ablation of a part (optionally at one position): the oracle."""
    hooks = []
    for c in part:
        sl = slice(None) if pos is None else pos
        if isinstance(c, tls.Head):

            def f(act, hook, h=c.head, sl=sl):
                act[:, sl, h] = 0.0
                return act

            hooks.append((f"blocks.{c.layer}.attn.hook_z", f))
        elif isinstance(c, tls.Neuron):

            def f(act, hook, n=c.neuron, sl=sl):
                act[:, sl, n] = 0.0
                return act

            hooks.append((f"blocks.{c.layer}.mlp.hook_post", f))
        else:

            def f(act, hook, sl=sl):
                act[:, sl] = 0.0
                return act

            hooks.append((f"blocks.{c.layer}.hook_mlp_out", f))
    return hooks


@pytest.fixture(scope="module")
def prompt(mlp_model):
    return make_mlp_task(mlp_model, n=1, seq=8).clean[0]


def test_usage_exact_equals_hand_written_ablation(mlp_model, prompt):
    before = hook_count(mlp_model)
    u = tls.usage(mlp_model, prompt, PARTS, ablation="zero")
    assert hook_count(mlp_model) == before
    with torch.no_grad():
        full = mlp_model(prompt[None])[0, -1]
        tid = int(full.argmax())
        for i, part in enumerate(PARTS):
            for p in range(len(prompt)):
                out = mlp_model.run_with_hooks(prompt[None], fwd_hooks=zero_hooks(part, p))[0, -1, tid]
                assert u.values[i, p] == pytest.approx(float(full[tid] - out), abs=1e-4)
            out = mlp_model.run_with_hooks(prompt[None], fwd_hooks=zero_hooks(part))[0, -1, tid]
            assert u.totals[i] == pytest.approx(float(full[tid] - out), abs=1e-4)
    assert u.target_id == tid and u.parts == ["heads", "mlp"] and len(u.tokens) == len(prompt)
    assert u.ranking()[0][1] == pytest.approx(float(u.totals.max()))
    assert list(u.to_frame().columns)[-1] == "total"


def test_usage_attribution_is_gradient_times_activation(mlp_model, prompt):
    u = tls.usage(mlp_model, prompt, PARTS[:1], method="attribution", ablation="zero", target=3)
    store = {}
    names = ["blocks.1.attn.hook_z", "blocks.2.attn.hook_z"]

    def keep(name):
        def f(act, hook):
            act.retain_grad()
            store[name] = act
            return act

        return f

    with torch.enable_grad():
        logits = mlp_model.run_with_hooks(prompt[None], fwd_hooks=[(n, keep(n)) for n in names])
        logits[0, -1, 3].backward()
    expect = sum((store[n] * store[n].grad)[0, :, h].sum(-1) for n, h in zip(names, (2, 0), strict=True))
    torch.testing.assert_close(u.values[0], expect.detach(), atol=1e-5, rtol=1e-4)
    mlp_model.zero_grad(set_to_none=True)
    # both methods report one value per part and position
    exact = tls.usage(mlp_model, prompt, PARTS[:1], ablation="zero", target=3)
    assert exact.values.shape == u.values.shape


def test_explain_matches_hand_written_runs(mlp_model, prompt):
    ex = tls.explain(mlp_model, prompt, PARTS, ablation="zero", k=3, combinations=[("heads", "mlp")])
    assert [r["ablated"] for r in ex.rows] == ["full", "heads", "mlp", "heads+mlp"]
    with torch.no_grad():
        full = mlp_model(prompt[None])[0, -1].log_softmax(-1)
        both = PARTS[0] | PARTS[1]
        for row, part in zip(ex.rows[1:], [*PARTS, both], strict=True):
            logp = mlp_model.run_with_hooks(prompt[None], fwd_hooks=zero_hooks(part))[0, -1].log_softmax(-1)
            top = logp.exp().topk(3)
            assert [p for _, p in row["top"]] == pytest.approx(top.values.tolist(), abs=1e-5)
            assert row["kl"] == pytest.approx(float((full.exp() * (full - logp)).sum()), abs=1e-5)
            t = int(full.argmax())
            assert row["moved"] == pytest.approx(float(logp[t].exp() - full[t].exp()), abs=1e-5)
    assert ex.rows[0]["kl"] == pytest.approx(0.0, abs=1e-6) and ex.rows[0]["moved"] == 0.0
    # the table names the sign: the ablated run's probability of the full top token minus the full run's
    assert ex.to_frame()["p(full top) change"].tolist() == [r["moved"] for r in ex.rows]
    assert "heads+mlp" in str(ex)


def test_usage_and_explain_bad_input(mlp_model, prompt):
    with pytest.raises(tls.TLSubmodelsError, match="reference"):
        tls.usage(mlp_model, prompt, PARTS, ablation="mean")
    with pytest.raises(tls.TLSubmodelsError, match="non-empty list of SubModels"):
        tls.usage(mlp_model, prompt, [], ablation="zero")
    with pytest.raises(tls.TLSubmodelsError, match="distinct names"):
        tls.explain(mlp_model, prompt, [PARTS[0], PARTS[0]], ablation="zero")
    with pytest.raises(tls.TLSubmodelsError, match="no part"):
        tls.explain(mlp_model, prompt, PARTS, ablation="zero", combinations=[("heads", "nope")])
    with pytest.raises(tls.TLSubmodelsError, match="out of range"):
        tls.usage(mlp_model, prompt, [tls.SubModel(components=["L9H0"], name="x")], ablation="zero")


@pytest.mark.ill_typed
def test_usage_refuses_a_batch(mlp_model):
    with pytest.raises(tls.TLSubmodelsError, match="one prompt"):
        tls.usage(mlp_model, PARTS, torch.zeros(2, 3, dtype=torch.long), ablation="zero")


def test_usage_takes_tokens_then_parts_and_still_reads_the_old_order(mlp_model, prompt):
    new = tls.usage(mlp_model, prompt, PARTS, ablation="zero")
    with pytest.warns(DeprecationWarning, match=r"usage\(model, parts, tokens\) is now usage\(model, tokens, parts\)"):
        old = tls.usage(mlp_model, PARTS, prompt, ablation="zero")
    assert torch.equal(new.values, old.values) and new.parts == old.parts
