"""Shared fixtures: the zoo model, a random model with MLPs (same weights on both TL lines)."""

from __future__ import annotations

import os

import pytest
import torch

import tl_submodels as tls
from tl_submodels import model as tlmodel

# Under pytest-xdist (make test runs one worker per core) the workers share the cores: each takes
# its share of torch's threads instead of all of them.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"])))

MLP_CFG = {
    "n_layers": 3,
    "n_heads": 4,
    "d_model": 32,
    "d_head": 8,
    "d_mlp": 64,
    "d_vocab": 50,
    "n_ctx": 24,
    "attn_only": False,
    "act_fn": "gelu_new",
    "normalization_type": "LN",
    "positional_embedding_type": "standard",
}


def random_tl_state(cfg: dict, seed: int = 0, std: float = 0.3) -> dict[str, torch.Tensor]:
    """Random weights in HookedTransformer layout (large enough std for nonlinear effects)."""
    g = torch.Generator().manual_seed(seed)
    L, H, D, E, V, C = (cfg[k] for k in ("n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx"))
    M = cfg["d_mlp"]

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * std

    s = {
        "embed.W_E": r(V, D),
        "pos_embed.W_pos": r(C, D),
        "ln_final.w": 1 + r(D) / 3,
        "ln_final.b": r(D) / 3,
        "unembed.W_U": r(D, V),
        "unembed.b_U": r(V),
    }
    for l in range(L):
        b = f"blocks.{l}."
        s |= {b + "ln1.w": 1 + r(D) / 3, b + "ln1.b": r(D) / 3}
        for n in "QKV":
            s[b + f"attn.W_{n}"] = r(H, D, E)
            s[b + f"attn.b_{n}"] = r(H, E)
        s |= {b + "attn.W_O": r(H, E, D), b + "attn.b_O": r(D)}
        if not cfg["attn_only"]:
            s |= {
                b + "ln2.w": 1 + r(D) / 3,
                b + "ln2.b": r(D) / 3,
                b + "mlp.W_in": r(D, M),
                b + "mlp.b_in": r(M),
                b + "mlp.W_out": r(M, D),
                b + "mlp.b_out": r(D),
            }
    return s


@pytest.fixture(scope="session")
def induction_model():
    return tls.zoo.load("induction-2l")


@pytest.fixture(scope="session")
def induction_task(induction_model):
    return tls.zoo.task("induction-2l", "induction", n=32, seed=0, model=induction_model)


@pytest.fixture(scope="session")
def mlp_state():
    return random_tl_state(MLP_CFG)


@pytest.fixture(scope="session")
def mlp_model(mlp_state):
    """A random model with MLPs: a TransformerBridge (boot_native) on TL 4, a HookedTransformer on TL 2."""
    return tlmodel.build_from_tl_checkpoint(MLP_CFG, mlp_state)


def make_mlp_task(model, n: int = 6, seq: int = 12, diff_at: int = 5, seed: int = 0, **kw) -> tls.Task:
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, MLP_CFG["d_vocab"], (n, seq), generator=g)
    corrupt = clean.clone()
    corrupt[:, diff_at:] = torch.randint(0, MLP_CFG["d_vocab"], (n, seq - diff_at), generator=g)
    answer = torch.randint(0, MLP_CFG["d_vocab"], (n,), generator=g)
    wrong = (answer + 1) % MLP_CFG["d_vocab"]
    return tls.Task.from_tokens(model, clean=clean, corrupt=corrupt, answer=answer, wrong=wrong, name="random", **kw)


@pytest.fixture(scope="session")
def mlp_task(mlp_model):
    return make_mlp_task(mlp_model)


def hook_count(model) -> int:
    """Forward/backward hooks currently registered on the model's hook points."""
    return sum(len(hp._forward_hooks) + len(hp._backward_hooks) for hp in model.hook_dict.values())


def weights_snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_same_weights(model, snapshot) -> None:
    now = model.state_dict()
    assert now.keys() == snapshot.keys()
    for k, v in snapshot.items():
        assert torch.equal(now[k], v), k


@pytest.fixture(scope="session")
def zoo_model():
    """``zoo_model(name)``: a zoo model, loaded once per session."""
    loaded: dict[str, object] = {}

    def get(name: str):
        if name not in loaded:
            loaded[name] = tls.zoo.load(name)
        return loaded[name]

    return get
