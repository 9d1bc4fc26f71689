"""The model adapter: what tl_submodels needs of a model, and the one place that knows TL lines.

tl_submodels works with any object that has TransformerLens' hook names and a ``cfg`` with
``n_layers, n_heads, d_head, d_model, d_mlp``: transformer-lens 4.x ``TransformerBridge`` (native or
over a HuggingFace model) and transformer-lens 2.x ``HookedTransformer``. The package is split in
four: :mod:`.hooks` spells every hook name, :mod:`.info` reads and checks the cfg, :mod:`.adapter`
decides per model object what differs between the lines (start/stop at a layer, unembedding, TL-layout
weights, reader flags, memory factors, the fast path), and :mod:`.build` builds models by the installed
line. No other module of tl_submodels tests a line or a model class.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_submodels.errors import TLSubmodelsError
from tl_submodels.model.adapter import Adapter, StandardWeights, adapter
from tl_submodels.model.build import INSTALLED_LINE, build_from_tl_checkpoint
from tl_submodels.model.hooks import (
    component_hook,
    hook_attn_reads,
    hook_k,
    hook_mlp_in,
    hook_mlp_out,
    hook_pattern,
    hook_post,
    hook_resid_mid,
    hook_resid_post,
    hook_resid_pre,
    hook_split_input,
    hook_v,
    hook_z,
    site_hook,
)
from tl_submodels.model.info import EXPECTED, ModelInfo, check_model, model_info

__all__ = [
    "EXPECTED", "INSTALLED_LINE", "Adapter", "ModelInfo", "StandardWeights", "adapter", "build_from_tl_checkpoint",
    "check_model", "component_hook", "first_param_device", "hook_attn_reads", "hook_k", "hook_mlp_in",
    "hook_mlp_out", "hook_pattern", "hook_post", "hook_resid_mid", "hook_resid_post", "hook_resid_pre",
    "hook_split_input", "hook_v", "hook_z", "model_info", "pad_token_id", "prompt_ids", "run_cache", "run_logits",
    "single_token", "site_hook", "token_words", "tokenize",
]  # fmt: skip


def first_param_device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


def tokenize(model: Any, text: str, *, prepend_bos: bool = True) -> list[int]:
    """Token ids of ``text`` through the model's tokenizer, never cut to ``n_ctx`` (callers check the length)."""
    if getattr(model, "tokenizer", None) is None:
        raise TLSubmodelsError(
            f"{type(model).__name__} has no tokenizer, so prompts cannot be tokenized; "
            "build the task from token ids with Task.from_tokens(model, clean=..., corrupt=..., answer=...)"
        )
    ids = [int(t) for t in model.to_tokens(text, prepend_bos=prepend_bos, truncate=False)[0].tolist()]
    unk, unk_text = getattr(model.tokenizer, "unk_token_id", None), getattr(model.tokenizer, "unk_token", None)
    if unk is not None and unk in ids and (not unk_text or unk_text not in text):
        raise TLSubmodelsError(
            f"{text!r} holds a word outside the tokenizer's vocabulary (it reads as {unk_text!r}); "
            "check the spelling of the prompt"
        )
    return ids


def single_token(model: Any, text: str) -> int:
    """The id of ``text``, which must be exactly one token."""
    ids = tokenize(model, text, prepend_bos=False)
    if len(ids) != 1:
        raise TLSubmodelsError(f"answer {text!r} is {len(ids)} tokens {ids}; answers must be single tokens")
    return ids[0]


def pad_token_id(model: Any) -> int:
    tok = getattr(model, "tokenizer", None)
    for attr in ("pad_token_id", "eos_token_id", "bos_token_id"):
        value = getattr(tok, attr, None) if tok is not None else None
        if value is not None:
            return int(value)
    return 0


def run_logits(
    model: Any, tokens: Int[Tensor, "batch pos"], fwd_hooks: list | None = None
) -> Float[Tensor, "batch pos d_vocab"]:
    """Logits of a (hooked) forward without gradients."""
    with torch.no_grad():
        if fwd_hooks:
            return model.run_with_hooks(tokens, fwd_hooks=fwd_hooks)
        return model(tokens)


def run_cache(model: Any, tokens: Int[Tensor, "batch pos"], names: Iterable[str]) -> tuple[Tensor, dict[str, Tensor]]:
    """Logits and the named activations of one forward, without gradients."""
    wanted = set(names)
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens, names_filter=lambda n: n in wanted)
    return logits, {n: cache[n] for n in wanted}


def prompt_ids(model: Any, tokens: str | Tensor | Sequence[int]) -> Tensor:
    """One prompt as ``[1, pos]`` token ids on the model's device."""
    ids = torch.tensor([tokenize(model, tokens)]) if isinstance(tokens, str) else torch.as_tensor(tokens)
    if ids.ndim == 2 and ids.shape[0] == 1:
        ids = ids[0]
    if ids.ndim != 1 or ids.numel() == 0 or ids.dtype.is_floating_point:
        raise TLSubmodelsError(f"tokens must be one prompt: a string or token ids [pos]; got shape {list(ids.shape)}")
    info = model_info(model)
    if ids.min() < 0 or ids.max() >= info.d_vocab:
        raise TLSubmodelsError(f"token ids must lie in 0-{info.d_vocab - 1} (d_vocab={info.d_vocab})")
    if ids.numel() > info.n_ctx:
        raise TLSubmodelsError(
            f"the prompt is {ids.numel()} tokens long; the model reads at most n_ctx={info.n_ctx}: shorten it"
        )
    return ids.long()[None].to(first_param_device(model))


def token_words(model: Any, ids: Tensor) -> list[str]:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return [str(int(i)) for i in ids]
    return [tok.decode([int(i)]) for i in ids]
