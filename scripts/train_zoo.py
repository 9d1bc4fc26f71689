"""Train the zoo models that ship inside tl_submodels (deterministic, CPU).

The models are small enough to train on a laptop CPU in minutes. Parameters are kept in
TransformerLens' HookedTransformer state-dict layout (``blocks.0.attn.W_Q`` ...), so the saved
safetensors load into a TL 2.x ``HookedTransformer`` as they are and into a TL 4.x
``TransformerBridge`` through ``convert_tl_checkpoint`` (``tl_submodels.zoo.load`` does both).

Usage:
    python scripts/train_zoo.py induction-2l [--steps 4000] [--out tl_submodels/zoo]
    python scripts/train_zoo.py multitask-3l      # then harmless-3l and harmful-3l, fine-tunes of it
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import zoo_multitask  # scripts/ is on sys.path when this file runs
from safetensors.torch import save_file

ZOO = Path(__file__).resolve().parents[1] / "tl_submodels" / "zoo"

INDUCTION_CFG = {
    "n_layers": 2,
    "n_heads": 4,
    "d_model": 64,
    "d_head": 16,
    "d_mlp": None,
    "d_vocab": 66,  # <bos>, 63 symbols, <pad>, <unk> (the last two never occur in training)
    "n_ctx": 40,
    "attn_only": True,
    "act_fn": None,
    "normalization_type": "LN",
    "positional_embedding_type": "standard",
}
BOS = 0
N_SYMBOLS = 63  # ids 1-63 print as t1-t63
PAD, UNK = 64, 65


def init_params(cfg: dict, gen: torch.Generator) -> dict[str, torch.Tensor]:
    """HookedTransformer-layout parameters, GPT-2 style init (std 0.02)."""
    L, H, D, E, V, C = (cfg[k] for k in ("n_layers", "n_heads", "d_model", "d_head", "d_vocab", "n_ctx"))

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=gen) * 0.02

    p = {"embed.W_E": normal(V, D), "pos_embed.W_pos": normal(C, D)}
    for l in range(L):
        b = f"blocks.{l}."
        p[b + "ln1.w"], p[b + "ln1.b"] = torch.ones(D), torch.zeros(D)
        for n in "QKV":
            p[b + f"attn.W_{n}"] = normal(H, D, E)
            p[b + f"attn.b_{n}"] = torch.zeros(H, E)
        p[b + "attn.W_O"] = normal(H, E, D) / math.sqrt(2 * L)
        p[b + "attn.b_O"] = torch.zeros(D)
        if not cfg["attn_only"]:
            M = cfg["d_mlp"]
            p[b + "ln2.w"], p[b + "ln2.b"] = torch.ones(D), torch.zeros(D)
            p[b + "mlp.W_in"], p[b + "mlp.b_in"] = normal(D, M), torch.zeros(M)
            p[b + "mlp.W_out"], p[b + "mlp.b_out"] = normal(M, D) / math.sqrt(2 * L), torch.zeros(D)
    p["ln_final.w"], p["ln_final.b"] = torch.ones(D), torch.zeros(D)
    p["unembed.W_U"] = normal(D, V)
    p["unembed.b_U"] = torch.zeros(V)
    return p


def layer_norm(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    x = x - x.mean(-1, keepdim=True)
    return x / (x.pow(2).mean(-1, keepdim=True) + eps).sqrt() * w + b


def forward(
    p: dict[str, torch.Tensor],
    cfg: dict,
    tokens: torch.Tensor,
    return_patterns: bool = False,
    acts: list[torch.Tensor] | None = None,
    keep: tuple[torch.Tensor, torch.Tensor] | None = None,
):
    """Transformer forward (GELU MLPs unless attention-only), numerically the same as TL's HookedTransformer.

    ``acts``, if given, collects each layer's head output norms ``[batch, pos, head]`` and MLP
    neuron activations ``[batch, pos, d_mlp]`` (for the multitask models' exclusivity penalty).
    ``keep``, if given, is a pair of boolean masks, heads ``[batch, layer, head]`` and neurons
    ``[batch, layer, d_mlp]``: a component that is not kept is mean-ablated in that row (its
    ``hook_z`` / ``hook_post`` replaced by its mean over the batch and positions, as
    ``tls.Ablator(ablation="mean")`` does), the multitask models' structured dropout.
    """
    S = tokens.shape[1]
    x = p["embed.W_E"][tokens] + p["pos_embed.W_pos"][:S]
    mask = torch.ones(S, S, dtype=torch.bool).tril()
    patterns = []
    for l in range(cfg["n_layers"]):
        b = f"blocks.{l}."
        h = layer_norm(x, p[b + "ln1.w"], p[b + "ln1.b"])
        q, k, v = (torch.einsum("bpd,hde->bphe", h, p[b + f"attn.W_{n}"]) + p[b + f"attn.b_{n}"] for n in "QKV")
        scores = torch.einsum("bqhe,bkhe->bhqk", q, k) / math.sqrt(cfg["d_head"])
        pattern = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        patterns.append(pattern)
        z = torch.einsum("bhqk,bkhe->bqhe", pattern, v)
        if keep is not None:
            z = torch.where(keep[0][:, None, l, :, None], z, z.mean((0, 1), keepdim=True).detach())
        if acts is not None:
            acts.append(torch.einsum("bqhe,hed->bqhd", z, p[b + "attn.W_O"]).norm(dim=-1))
        x = x + torch.einsum("bqhe,hed->bqd", z, p[b + "attn.W_O"]) + p[b + "attn.b_O"]
        if not cfg["attn_only"]:
            h = layer_norm(x, p[b + "ln2.w"], p[b + "ln2.b"])
            post = F.gelu(h @ p[b + "mlp.W_in"] + p[b + "mlp.b_in"])
            if keep is not None:
                post = torch.where(keep[1][:, None, l], post, post.mean((0, 1), keepdim=True).detach())
            if acts is not None:
                acts.append(post)
            x = x + post @ p[b + "mlp.W_out"] + p[b + "mlp.b_out"]
    x = layer_norm(x, p["ln_final.w"], p["ln_final.b"])
    logits = x @ p["unembed.W_U"] + p["unembed.b_U"]
    return (logits, patterns) if return_patterns else logits


def induction_batch(batch: int, cfg: dict, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """BOS, 0-7 random tokens, then a random segment of 3-12 tokens repeated to the end of the context.

    The period and the start vary per sequence, so no fixed offset or absolute position predicts
    the next token: the model must find the previous occurrence of the current token and copy
    what followed it, which is the previous-token + induction head circuit. (Repeating one segment
    right after BOS instead let a trial model learn a positional shortcut with no such heads.)
    Returns tokens and a mask of the positions whose next token is predictable.
    """
    C = cfg["n_ctx"]
    tokens = torch.randint(1, N_SYMBOLS + 1, (batch, C), generator=gen)
    tokens[:, 0] = BOS
    predictable = torch.zeros(batch, C, dtype=torch.bool)
    periods = torch.randint(3, 13, (batch,), generator=gen)
    starts = 1 + torch.randint(0, 8, (batch,), generator=gen)
    for i, (n, s) in enumerate(zip(periods.tolist(), starts.tolist(), strict=True)):
        j = torch.arange(s + n, C)
        tokens[i, j] = tokens[i, s + (j - s) % n]
        predictable[i, s + n - 1 : C - 1] = True
    return tokens, predictable


def train_induction(steps: int, seed: int) -> tuple[dict[str, torch.Tensor], dict]:
    cfg = INDUCTION_CFG
    gen = torch.Generator().manual_seed(seed)
    params = init_params(cfg, gen)
    for t in params.values():
        t.requires_grad_(True)
    opt = torch.optim.AdamW(params.values(), lr=1e-3, weight_decay=0.0)
    t0 = time.time()
    for step in range(steps):
        tokens, predictable = induction_batch(64, cfg, gen)
        logits = forward(params, cfg, tokens)
        loss = F.cross_entropy(logits[:, :-1].reshape(-1, cfg["d_vocab"]), tokens[:, 1:].reshape(-1), reduction="none")
        loss = loss.view(64, -1)
        # all positions train (the model must learn that unrepeated tokens are unpredictable);
        # the induction positions carry the signal.
        total = loss.mean()
        opt.zero_grad()
        total.backward()
        opt.step()
        if step % 500 == 0 or step == steps - 1:
            ind = loss[predictable[:, :-1]].mean().item()
            print(
                json.dumps(
                    {
                        "step": step,
                        "loss": round(total.item(), 4),
                        "induction_loss": round(ind, 4),
                        "s": round(time.time() - t0, 1),
                    }
                ),
                flush=True,
            )
    return {k: v.detach().clone() for k, v in params.items()}, {"train_seconds": round(time.time() - t0, 1)}


def head_scores(params: dict[str, torch.Tensor], cfg: dict, seed: int) -> dict[str, list[list[float]]]:
    """Standard attention scores on repeated random tokens: BOS + R + R (R of length n).

    previous-token score: mean attention from position i to i-1;
    induction score: mean attention from a token in the second copy to the token after its first
    occurrence (offset n-1 back); both averaged over the second copy.
    """
    gen = torch.Generator().manual_seed(seed)
    n = (cfg["n_ctx"] - 1) // 2
    rand = torch.randint(1, N_SYMBOLS + 1, (128, n), generator=gen)
    tokens = torch.cat([torch.full((128, 1), BOS), rand, rand], dim=1)
    with torch.no_grad():
        _, patterns = forward(params, cfg, tokens, return_patterns=True)
    q = torch.arange(n + 1, 2 * n + 1)  # positions of the second copy
    prev, ind = [], []
    for pat in patterns:  # [batch, head, q, k]
        prev.append(pat[:, :, q, q - 1].mean((0, 2)).tolist())
        ind.append(pat[:, :, q, q - n + 1].mean((0, 2)).tolist())
    return {"previous_token": prev, "induction": ind}


def induction_accuracy(params: dict[str, torch.Tensor], cfg: dict, seed: int, n: int = 16) -> float:
    """Top-1 accuracy of the zoo's induction task (clean prompts: BOS, A, A[:-1] -> A[-1])."""
    gen = torch.Generator().manual_seed(seed)
    seg = torch.randint(1, N_SYMBOLS + 1, (512, n), generator=gen)
    tokens = torch.cat([torch.full((512, 1), BOS), seg, seg[:, :-1]], dim=1)
    with torch.no_grad():
        logits = forward(params, cfg, tokens)
    return (logits[:, -1].argmax(-1) == seg[:, -1]).float().mean().item()


def save_tokenizer(folder: Path, words: list[str] | None = None) -> None:
    """A word-level tokenizer: ``<bos>`` (0, prepended to every prompt), the words, ``<pad>``, ``<unk>``.

    ``words`` lists every token in id order (default: induction-2l's ``<bos>``, ``t1``-``t63``,
    ``<pad>``, ``<unk>``).

    Saved beside the weights so the zoo models read text prompts, print tokens and generate on
    both TL lines. Padding has its own id: TL 2 masks pad tokens in generate, so a pad equal to
    BOS would change the model's output.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    if words is None:
        words = ["<bos>", *(f"t{i}" for i in range(1, N_SYMBOLS + 1)), "<pad>", "<unk>"]
    vocab = {w: i for i, w in enumerate(words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", vocab["<bos>"])])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<bos>", pad_token="<pad>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    # transformers 5 writes its own class name; name the class every version knows.
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("name", choices=["induction-2l", *zoo_multitask.NAMES])
    ap.add_argument("--steps", type=int, default=None, help="default: 4000 (induction-2l), see zoo_multitask.py")
    # Seed 1 is the shipped model: one previous-token head, four induction heads. Seed 0 gave two
    # previous-token heads (L0H2 0.95, L0H3 0.85), the second redundant: find_circuit reached 0.9
    # faithfulness without it, so "the circuit contains every ground-truth head" failed there.
    ap.add_argument("--seed", type=int, default=None, help="default: 1 (induction-2l), 0 (multitask models)")
    ap.add_argument("--out", type=Path, default=ZOO)
    ap.add_argument("--penalty", type=float, default=None, help="multitask models' exclusivity penalty (default 1.0)")
    ap.add_argument("--tokenizer-only", action="store_true", help="only (re)write the tokenizer files")
    args = ap.parse_args()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)  # bit-for-bit reproducible: reductions do not depend on the thread count
    if args.name in zoo_multitask.NAMES:
        if args.tokenizer_only:
            save_tokenizer(args.out / args.name, zoo_multitask.mt.WORDS)
            return
        zoo_multitask.main(args, forward=forward, init_params=init_params, save_tokenizer=save_tokenizer)
        return
    if args.tokenizer_only:
        save_tokenizer(args.out / args.name)
        return
    args.steps = 4000 if args.steps is None else args.steps
    args.seed = 1 if args.seed is None else args.seed
    torch.manual_seed(args.seed)

    params, info = train_induction(args.steps, args.seed)
    cfg = INDUCTION_CFG
    scores = head_scores(params, cfg, seed=args.seed + 1)
    threshold = 0.4
    truth = {
        kind: sorted(f"L{l}H{h}" for l, row in enumerate(s) for h, v in enumerate(row) if v > threshold)
        for kind, s in scores.items()
    }
    acc = induction_accuracy(params, cfg, seed=args.seed + 2)
    out = args.out / args.name
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in params.items()}, out / "weights.safetensors")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_tokenizer(out)
    card = {
        "name": args.name,
        "description": "2-layer attention-only transformer trained to continue repeated random segments.",
        "training": {
            "data": "BOS, 0-7 random symbols, then a random segment of 3-12 symbols (ids 1-63) repeated to 40 tokens",
            "steps": args.steps,
            "batch": 64,
            "optimizer": "AdamW lr 1e-3 constant, no weight decay",
            "seed": args.seed,
            "script": "scripts/train_zoo.py",
            **info,
        },
        "bos_token": BOS,
        "d_vocab": cfg["d_vocab"],
        "symbols": [1, N_SYMBOLS],
        "tasks": {
            "induction": {
                "description": "clean: BOS, A (16 tokens), A[:15]; corrupt: BOS, A, B[:15] (B random); answer A[15], wrong B[15]",
                "builder": "induction",
                "segment": 16,
                "accuracy": round(acc, 4),
                "chance": round(1 / N_SYMBOLS, 4),
            }
        },
        "ground_truth": {
            "previous_token_heads": truth["previous_token"],
            "induction_heads": truth["induction"],
            "threshold": threshold,
            "scores": {k: [[round(v, 4) for v in row] for row in s] for k, s in scores.items()},
            "method": "mean attention on BOS + R + R: prev-token i->i-1, induction i->i-n+1, over the second copy",
        },
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({"saved": str(out), "accuracy": acc, **truth}))


if __name__ == "__main__":
    main()
