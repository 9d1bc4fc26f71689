"""Load a model by what a user types: a zoo name, a checkpoint folder, or a HuggingFace model name.

A checkpoint folder is what the zoo ships: ``config.json`` (HookedTransformerConfig fields),
``weights.safetensors`` (a HookedTransformer-layout state dict) and, optionally, a HuggingFace
``tokenizer.json``. It loads on both TL lines (a TransformerBridge on TL 4, a HookedTransformer on 2).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file

from tl_submodels import model as tlmodel
from tl_submodels.errors import TLSubmodelsError, did_you_mean


def load_checkpoint(folder: str | Path, *, device: str | None = None) -> Any:
    """The model saved in ``folder`` (config.json + weights.safetensors [+ tokenizer.json]), in eval mode.

    Example:
        >>> model = tls.load_checkpoint("checkpoints/my-model")  # doctest: +SKIP
    """
    folder = Path(folder)
    missing = [f for f in ("config.json", "weights.safetensors") if not (folder / f).is_file()]
    if missing:
        raise TLSubmodelsError(
            f"{folder} is not a checkpoint folder: it lacks {missing} (a folder needs config.json with "
            "HookedTransformerConfig fields and weights.safetensors with a HookedTransformer state dict)"
        )
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise TLSubmodelsError(f"{folder / 'config.json'}: not valid JSON ({e.msg})") from None
    state = load_file(folder / "weights.safetensors")
    tokenizer = None
    if (folder / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    return tlmodel.build_from_tl_checkpoint(cfg, state, device=device, tokenizer=tokenizer)


def from_pretrained(name: str, *, device: str | None = None) -> Any:
    """A HuggingFace model through TransformerLens (needs the hub or its local cache), in eval mode.

    On TL 4 ``TransformerBridge.boot_transformers(name)``, on TL 2 ``HookedTransformer.from_pretrained(name)``.

    Example:
        >>> model = tls.from_pretrained("gpt2")  # doctest: +SKIP
    """
    if tlmodel.TL_LINE == 4:
        from transformer_lens.model_bridge import TransformerBridge

        model = TransformerBridge.boot_transformers(name, device=device)
    else:
        from transformer_lens import HookedTransformer

        model = HookedTransformer.from_pretrained(name, device=device)
    model.eval()
    return model


def load_model(spec: str, *, device: str | None = None) -> Any:
    """A zoo model by name, a checkpoint folder by path, or else a HuggingFace model by name.

    Raises:
        TLSubmodelsError: when ``spec`` is none of these, with the zoo's names and the hub's reason.

    Example:
        >>> model = tls.load_model("induction-2l")  # doctest: +SKIP
    """
    from tl_submodels import zoo

    names = zoo.list()
    if spec in names:
        return zoo.load(spec, device=device)
    path = Path(spec)
    if path.is_dir():
        return load_checkpoint(path, device=device)
    if path.suffix or spec.startswith((".", "/", "~")):
        raise TLSubmodelsError(f"no checkpoint folder {spec!r}")
    try:
        return from_pretrained(spec, device=device)
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise TLSubmodelsError(
            f"unknown model {spec!r}: not a zoo model ({', '.join(names)}), not a folder, and the HuggingFace hub "
            f"could not load it ({type(e).__name__}: {reason}).{did_you_mean(spec, names)}"
        ) from None
