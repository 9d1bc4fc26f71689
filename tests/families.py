"""Tiny random HuggingFace causal LMs of every family TransformerLens loads, built offline (no hub), and a
word-level tokenizer for them: shared by test_loading.py and test_families.py."""

from __future__ import annotations

import torch
import transformers
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel

import tl_submodels as tls

V = 64  # vocabulary: <unk> <bos> <eos> <pad> w0 .. w59
SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
         "max_position_embeddings": 32}  # fmt: skip
# family -> (config class, model class, config fields): tiny, random, built offline. Options a converter could
# miss are set off their defaults: GQA/MQA, Llama's rope_theta, Gemma 2's sliding window (4 < 8 tokens).
FAMILIES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 32}),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", {**SIZES, "rotary_pct": 0.5}),
    "llama": ("LlamaConfig", "LlamaForCausalLM", {**SIZES, "num_key_value_heads": 2, "rope_theta": 500000.0}),
    "opt": ("OPTConfig", "OPTForCausalLM", {**SIZES, "ffn_dim": 64, "word_embed_proj_dim": 32}),
    "gptj": (
        "GPTJConfig",
        "GPTJForCausalLM",
        {"n_layer": 2, "n_head": 2, "n_embd": 32, "n_positions": 32, "rotary_dim": 8},
    ),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {**SIZES, "num_key_value_heads": 2}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {**SIZES, "num_key_value_heads": 1, "sliding_window": None}),
    "gemma2": (
        "Gemma2Config",
        "Gemma2ForCausalLM",
        {**SIZES, "num_key_value_heads": 2, "head_dim": 8, "sliding_window": 4},
    ),
    "falcon": (
        "FalconConfig",
        "FalconForCausalLM",
        {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4},
    ),
}
# TransformerLens 2 has no conversion of these; on TL 2 their folders are refused, naming the family
TL4_ONLY = {"falcon": "FalconForCausalLM"}
TOKENS = torch.tensor([[1, 5, 9, 12, 7, 30, 5, 9], [1, 40, 41, 6, 6, 17, 22, 3]])


def word_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer of the ``w0 .. w59`` vocabulary, built offline."""
    vocab = {"<unk>": 0, "<bos>": 1, "<eos>": 2, "<pad>": 3} | {f"w{i}": i + 4 for i in range(V - 4)}
    tok = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<bos>", eos_token="<eos>", pad_token="<pad>"
    )


def tiny_hf_model(family: str) -> torch.nn.Module:
    """A random HF causal LM of ``family``, weights large enough that logits are O(1), in eval mode."""
    config_cls, model_cls, fields = FAMILIES[family]
    config = getattr(transformers, config_cls)(vocab_size=V, bos_token_id=1, eos_token_id=2, pad_token_id=3, **fields)
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(config)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.2)
    return model.eval()


def small_task(model) -> tls.Task:
    """Four prompts of eight tokens, corrupted from position 3 on, random answers: a task any family can score."""
    g = torch.Generator().manual_seed(0)
    clean = torch.randint(4, V, (4, 8), generator=g)
    clean[:, 0] = 1
    corrupt = clean.clone()
    corrupt[:, 3:] = torch.randint(4, V, (4, 5), generator=g)
    answer = torch.randint(4, V, (4,), generator=g)
    return tls.Task.from_tokens(
        model, clean=clean, corrupt=corrupt, answer=answer, wrong=(answer + 1 - 4) % (V - 4) + 4
    )
