"""The models users load, in the benchmarks: random HuggingFace models of nine families, loaded the way
TransformerLens tells users to (``tls.load_model`` of a saved folder: on TL 4 a ``TransformerBridge``
over the HuggingFace model, as ``boot_transformers`` builds it; on TL 2 a converted ``HookedTransformer``).

Shapes (8 layers, d_model 512, 1000-token vocabulary, random weights with ``initializer_range`` 0.05 so
that components have visible effects):

- ``gpt2``: 8 heads, MLP 2048, learned positions, LayerNorm, GELU.
- ``llama``: 8 query / 2 key-value heads, gated SiLU MLP 1408, rotary, RMS norm.
- ``gemma2``: 8 query / 4 key-value heads of 64, gated MLP 1408, soft caps, sliding window 16 on every
  other layer, norms after attention and MLP.
- ``neox``: 8 heads, MLP 2048, rotary on a quarter of each head (Pythia), parallel attention and MLP.
- ``opt``: 8 heads, ReLU MLP 2048, learned positions. ``qwen2``: as ``llama`` (biased q/k/v).
  ``mistral``: as ``llama`` with one key-value head (MQA). ``gptj``: 8 heads, rotary on 16 of 64 dims in
  adjacent pairs, parallel attention and MLP, one norm. ``falcon``: 8 query heads, one key-value head,
  parallel, one norm (TL 4 only: TL 2 has no conversion).

Used by ``bench_patching.py --families`` and ``bench_attribution.py --families``.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import torch
import transformers

import tl_submodels as tls

VOCAB = 1000
COMMON = {"vocab_size": VOCAB, "initializer_range": 0.05, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
SHAPES: dict[str, tuple[str, str, dict[str, Any]]] = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_layer": 8, "n_head": 8, "n_embd": 512, "n_positions": 64}),
    "llama": (
        "LlamaConfig",
        "LlamaForCausalLM",
        {"num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 512,
         "intermediate_size": 1408, "max_position_embeddings": 64},
    ),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {"num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 64,
         "hidden_size": 512, "intermediate_size": 1408, "max_position_embeddings": 64, "sliding_window": 16,
         "query_pre_attn_scalar": 64},
    ),
    "neox": (
        "GPTNeoXConfig",
        "GPTNeoXForCausalLM",
        {"num_hidden_layers": 8, "num_attention_heads": 8, "hidden_size": 512, "intermediate_size": 2048,
         "max_position_embeddings": 64, "rotary_pct": 0.25},
    ),
    "opt": (
        "OPTConfig",
        "OPTForCausalLM",
        {"num_hidden_layers": 8, "num_attention_heads": 8, "hidden_size": 512, "ffn_dim": 2048,
         "word_embed_proj_dim": 512, "max_position_embeddings": 64},
    ),
    "qwen2": (
        "Qwen2Config",
        "Qwen2ForCausalLM",
        {"num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 2, "hidden_size": 512,
         "intermediate_size": 1408, "max_position_embeddings": 64},
    ),
    "mistral": (
        "MistralConfig",
        "MistralForCausalLM",
        {"num_hidden_layers": 8, "num_attention_heads": 8, "num_key_value_heads": 1, "hidden_size": 512,
         "intermediate_size": 1408, "max_position_embeddings": 64, "sliding_window": None},
    ),
    "gptj": (
        "GPTJConfig",
        "GPTJForCausalLM",
        {"n_layer": 8, "n_head": 8, "n_embd": 512, "n_positions": 64, "rotary_dim": 16},
    ),
    "falcon": (
        "FalconConfig",
        "FalconForCausalLM",
        {"num_hidden_layers": 8, "num_attention_heads": 8, "hidden_size": 512},
    ),
}  # fmt: skip


def load(family: str) -> Any:
    """A random model of ``family``'s shape, saved and loaded with ``tls.load_model`` (weights seeded)."""
    config_cls, model_cls, fields = SHAPES[family]
    config = getattr(transformers, config_cls)(**COMMON, **fields)
    torch.manual_seed(0)
    hf = getattr(transformers, model_cls)(config).eval()
    with tempfile.TemporaryDirectory(prefix=f"tls-bench-{family}-") as folder:
        hf.save_pretrained(folder)
        model = tls.load_model(str(Path(folder)))
    model.eval()
    return model


def task(model: Any, batch: int = 16, seq: int = 32, diff_at: int = 16, seed: int = 1) -> tls.Task:
    """Random clean prompts; corrupt ones equal up to ``diff_at``; a logit difference between random tokens."""
    g = torch.Generator().manual_seed(seed)
    clean = torch.randint(2, VOCAB, (batch, seq), generator=g)
    corrupt = clean.clone()
    corrupt[:, diff_at:] = torch.randint(2, VOCAB, (batch, seq - diff_at), generator=g)
    answer = torch.randint(2, VOCAB, (batch,), generator=g)
    wrong = (answer - 2 + 1 + torch.randint(0, VOCAB - 3, (batch,), generator=g)) % (VOCAB - 2) + 2
    return tls.Task.from_tokens(model, clean=clean, corrupt=corrupt, answer=answer, wrong=wrong, name="random")
