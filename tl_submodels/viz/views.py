"""circuitsvis views: attention patterns of a sub-model's heads, tokens coloured by sub-model usage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from circuitsvis.attention import attention_heads
from circuitsvis.tokens import colored_tokens_multi
from circuitsvis.utils.render import RenderedHTML
from jaxtyping import Int
from torch import Tensor

from tl_submodels import model as tlmodel
from tl_submodels.components import Head, parse_component
from tl_submodels.errors import TLSubmodelsError

__all__ = ["attention_patterns", "usage_tokens"]


def attention_patterns(model: Any, tokens: str | Int[Tensor, " pos"] | Sequence[int], part: Any) -> RenderedHTML:
    """Attention patterns of a sub-model's heads on one prompt (circuitsvis ``attention_heads``).

    ``part`` is a SubModel or an iterable of heads / strings (``["L1H2", "L0H3"]``).

    Example:
        >>> tls.viz.attention_patterns(model, "IND w1 s3 s4 s5 s3 s4", circuit)  # doctest: +SKIP
    """
    members = [parse_component(c) if isinstance(c, str) else c for c in part]
    info = tlmodel.model_info(model)
    for c in members:
        info.check_component(c)
    heads = sorted({Head(c.layer, c.head) for c in members if isinstance(c, Head)})
    if not heads:
        name = getattr(part, "name", "the sub-model")
        raise TLSubmodelsError(f"{name!r} has no attention heads to show; it holds {sorted(members)}")
    ids = tlmodel.prompt_ids(model, tokens)
    names = {tlmodel.hook_pattern(layer) for layer in {h.layer for h in heads}}
    _, cache = tlmodel.run_cache(model, ids, names)
    pattern = torch.stack([cache[tlmodel.hook_pattern(h.layer)][0, h.head] for h in heads])
    return attention_heads(
        attention=pattern.detach().float().cpu(),
        tokens=tlmodel.token_words(model, ids[0]),
        attention_head_names=[str(h) for h in heads],
    )


def usage_tokens(usage: Any) -> RenderedHTML:
    """The prompt's tokens coloured by each sub-model's contribution (circuitsvis ``colored_tokens_multi``).

    Hover a token for every sub-model's value; click a sub-model's name to colour by it.

    Example:
        >>> tls.viz.usage_tokens(tls.usage(model, prompt, parts, reference=ref))  # doctest: +SKIP
    """
    if not hasattr(usage, "values") or not hasattr(usage, "tokens"):
        raise TLSubmodelsError(f"usage_tokens needs a Usage (from tls.usage); got {type(usage).__name__}")
    return colored_tokens_multi(list(usage.tokens), usage.values.T.detach().float().cpu(), list(usage.parts))
