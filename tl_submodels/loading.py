"""Load a model by what a user types: a zoo name, a folder, or a HuggingFace model name.

Two kinds of folder load on both TL lines. A checkpoint folder is what the zoo ships:
``config.json`` (HookedTransformerConfig fields), ``weights.safetensors`` (a HookedTransformer-layout
state dict) and, optionally, a HuggingFace ``tokenizer.json``. A HuggingFace folder is what
``save_pretrained`` writes: ``config.json`` (with ``model_type``), ``model.safetensors`` or
``pytorch_model.bin`` (or their shards) and, optionally, tokenizer files. On TL 4 it becomes a
``TransformerBridge`` over the HuggingFace model; on TL 2 a ``HookedTransformer`` converted from it
(weights unprocessed, like ``from_pretrained_no_processing``) and checked against the HuggingFace
model's own logits. Either way nothing is downloaded.

What a spec means is decided locally first: a zoo name, an existing folder, a path that does not
exist, a near-miss of a zoo name; only what is none of these is tried on the HuggingFace hub.
"""

from __future__ import annotations

import itertools
import json
import re
from pathlib import Path
from typing import Any, Literal

from tl_submodels.errors import TLSubmodelsError, did_you_mean
from tl_submodels.model import build

__all__ = [
    "FOLDERS",
    "HF_WEIGHTS",
    "TOKENIZER_FILES",
    "folder_format",
    "from_pretrained",
    "load_checkpoint",
    "load_model",
]

HF_WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
TOKENIZER_FILES = tuple(
    "tokenizer.json tokenizer_config.json tokenizer.model vocab.json vocab.txt spiece.model".split()
)
FOLDERS = (
    "a checkpoint folder (config.json with HookedTransformerConfig fields + weights.safetensors with a "
    "HookedTransformer state dict) or a HuggingFace folder as save_pretrained writes it (config.json with "
    "model_type + model.safetensors or pytorch_model.bin)"
)
_HUB_ID = re.compile(r"(?:[\w.-]+/)?[\w.-]+")  # what the hub accepts as a repo id: "gpt2", "org/name"
_FILE_SUFFIXES = {".json", ".jsonl", ".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".txt", ".npz", ".gguf"}


def load_checkpoint(folder: str | Path, *, device: str | None = None) -> Any:
    """The model saved in ``folder`` (config.json + weights.safetensors [+ tokenizer.json]), in eval mode.

    Args:
        folder: a checkpoint folder, as the zoo's.
        device: where the weights go (default: TransformerLens' choice).

    Raises:
        TLSubmodelsError: when a file is missing, config.json is not valid JSON, or the weights do not fit it.

    Example:
        >>> model = tls.load_checkpoint("checkpoints/my-model")  # doctest: +SKIP
    """
    return build.from_checkpoint(Path(folder), device=device)


def folder_format(folder: str | Path) -> Literal["checkpoint", "huggingface"]:
    """Which kind of model folder ``folder`` is: the zoo's ``"checkpoint"`` or a ``"huggingface"`` one.

    Args:
        folder: an existing folder.

    Returns:
        ``"checkpoint"`` where it holds weights.safetensors or a config.json of HookedTransformerConfig
        fields; ``"huggingface"`` where its config.json names a ``model_type`` (or ``architectures``)
        and HuggingFace weights lie beside it.

    Raises:
        TLSubmodelsError: when it is neither, or a HuggingFace config.json has no weights beside it.

    Example:
        >>> folder_format("checkpoints/gpt2-finetuned")  # doctest: +SKIP
        'huggingface'
    """
    folder = Path(folder)
    if (folder / "weights.safetensors").is_file():
        return "checkpoint"
    cfg = build.read_config(folder) if (folder / "config.json").is_file() else None
    if cfg is not None and ("model_type" in cfg or "architectures" in cfg):
        if not any((folder / f).is_file() for f in HF_WEIGHTS):
            raise TLSubmodelsError(
                f"{folder} holds a HuggingFace config.json ({build.hf_family(cfg)}) but no weights: it needs one of "
                f"{list(HF_WEIGHTS)}, as save_pretrained writes them"
            )
        return "huggingface"
    if cfg is not None and "n_layers" in cfg:
        return "checkpoint"  # load_checkpoint names the missing weights.safetensors
    lacks = "config.json and weights" if cfg is None else "weights, and config.json names no model_type"
    raise TLSubmodelsError(
        f"{folder} is not a checkpoint folder nor a HuggingFace folder: it lacks {lacks}; give {FOLDERS}"
    )


def from_pretrained(name: str, *, device: str | None = None) -> Any:
    """A HuggingFace model through TransformerLens, in eval mode: a hub name, or a folder saved locally.

    A hub name needs the hub or its local cache: on TL 4 ``TransformerBridge.boot_transformers(name)``, on
    TL 2 ``HookedTransformer.from_pretrained(name)``. A folder (as ``save_pretrained`` writes it, or a
    checkpoint folder) loads offline, as ``load_model`` loads it.

    Args:
        name: a HuggingFace model name (``"gpt2"``, ``"EleutherAI/pythia-70m"``) or a folder.
        device: where the weights go (default: TransformerLens' choice).

    Returns:
        A ``TransformerBridge`` on TL 4, a ``HookedTransformer`` on TL 2.

    Raises:
        TLSubmodelsError: for a folder of a kind or architecture this TransformerLens cannot load.

    Example:
        >>> model = tls.from_pretrained("gpt2")  # doctest: +SKIP
    """
    folder = Path(name).expanduser()
    if name.strip() and folder.is_dir():
        return _load_folder(folder, device=device)
    return build.from_hub(name, device=device)


def load_model(spec: str, *, device: str | None = None) -> Any:
    """A zoo model by name, a checkpoint or HuggingFace folder by path, or else a HuggingFace model by name.

    Everything but a hub name is decided locally and at once: a path that does not exist, or a name
    close to a zoo name, is refused without asking the hub.

    Args:
        spec: a zoo name (``tls.zoo.list()``), a folder, or a HuggingFace model name.
        device: where the weights go (default: TransformerLens' choice).

    Returns:
        The model in eval mode: a ``TransformerBridge`` on TL 4, a ``HookedTransformer`` on TL 2.

    Raises:
        TLSubmodelsError: when ``spec`` is none of these (with the zoo's names and the closest ones),
            a folder of neither kind, an architecture this TransformerLens cannot load, or a hub name
            the hub (or its local cache) could not give.

    Example:
        >>> model = tls.load_model("induction-2l")  # doctest: +SKIP
        >>> model = tls.load_model("checkpoints/my-gpt2")  # a save_pretrained folder  # doctest: +SKIP
    """
    from tl_submodels import zoo

    names = zoo.list()
    if spec in names:
        return zoo.load(spec, device=device)
    if not spec.strip():
        raise TLSubmodelsError(
            f"empty model name: give a zoo model ({', '.join(names)}), a folder, or a HuggingFace name"
        )
    path = Path(spec).expanduser()
    if path.is_dir():
        return _load_folder(path, device=device)
    if path.exists():
        raise TLSubmodelsError(f"{spec!r} is a file; a model is a folder: {FOLDERS}")
    if _looks_like_path(spec):
        where = "" if path.is_absolute() else f" (in {Path.cwd()})"
        raise TLSubmodelsError(
            f"no checkpoint folder or HuggingFace folder {spec!r}{where}; load_model takes a zoo model "
            f"({', '.join(names)}), a folder, or a HuggingFace name.{did_you_mean(spec, [*names, *_siblings(spec)])}"
        )
    near = did_you_mean(spec, names)
    if near and "/" not in spec:
        raise TLSubmodelsError(f"unknown model {spec!r}: not a zoo model ({', '.join(names)}) nor a folder.{near}")
    try:
        return from_pretrained(spec, device=device)
    except Exception as e:
        raise TLSubmodelsError(
            f"unknown model {spec!r}: not a zoo model ({', '.join(names)}) nor a folder, so it was tried as a "
            f"HuggingFace model name, which needs the HuggingFace hub or its local cache, and that failed "
            f"({type(e).__name__}: {build.first_line(e)}).{near}"
        ) from None


# ---------------------------------------------------------------------------------------------
# What a spec is.


def _looks_like_path(spec: str) -> bool:
    """Whether ``spec`` can only mean a path: no hub repo id looks like it, or its first folder exists here."""
    if spec.startswith((".", "/", "~", "\\")) or spec.endswith(("/", "\\")) or "--" in spec or ".." in spec:
        return True
    if Path(spec).suffix.lower() in _FILE_SUFFIXES or not _HUB_ID.fullmatch(spec):
        return True
    return "/" in spec and Path(spec.split("/")[0]).is_dir()


def _siblings(spec: str) -> list[str]:
    """The folders beside where ``spec`` points, spelled as the user spelled the parent (did-you-mean)."""
    stripped = spec.rstrip("/\\")
    name = Path(stripped).name
    prefix, parent = stripped[: len(stripped) - len(name)], Path(stripped).expanduser().parent
    try:
        return [prefix + p.name for p in itertools.islice(parent.iterdir(), 1000) if p.is_dir()]
    except OSError:
        return []


def _load_folder(folder: Path, *, device: str | None) -> Any:
    if folder_format(folder) == "checkpoint":
        return load_checkpoint(folder, device=device)
    return build.from_hf_folder(folder, build.read_config(folder), _local_tokenizer(folder), device=device)


def _local_tokenizer(folder: Path) -> Any:
    """The tokenizer saved in ``folder``, or None where it holds no tokenizer files."""
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        return None
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    saved_class = None
    if (folder / "tokenizer_config.json").is_file():
        try:
            saved_class = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
        except (json.JSONDecodeError, AttributeError):
            pass  # AutoTokenizer reports it
    # A plain tokenizer.json saved as such loads as such: transformers 5's AutoTokenizer swaps in the model
    # type's own class for some types (Qwen2Tokenizer for qwen2), which reads a word-level vocabulary as nothing.
    generic = saved_class in ("PreTrainedTokenizerFast", "TokenizersBackend") and (folder / "tokenizer.json").is_file()
    try:
        if not generic:
            return AutoTokenizer.from_pretrained(str(folder))
        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
        if tokenizer.bos_token is None:
            return tokenizer
        # TransformerLens reloads a tokenizer lacking add_bos_token through AutoTokenizer, so the swap above
        return PreTrainedTokenizerFast.from_pretrained(str(folder), add_bos_token=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise TLSubmodelsError(
            f"{folder}: its tokenizer files could not be loaded ({type(e).__name__}: {build.first_line(e)}); fix them, or remove "
            "them to load the model without a tokenizer (tasks then come from token ids: Task.from_tokens)"
        ) from None
