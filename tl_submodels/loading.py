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
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any, Literal

from safetensors.torch import load_file

from tl_submodels import model as tlmodel
from tl_submodels.errors import TLSubmodelsError, did_you_mean

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
    folder = Path(folder)
    missing = [f for f in ("config.json", "weights.safetensors") if not (folder / f).is_file()]
    if missing:
        raise TLSubmodelsError(
            f"{folder} is not a checkpoint folder: it lacks {missing} (a folder needs config.json with "
            "HookedTransformerConfig fields and weights.safetensors with a HookedTransformer state dict)"
        )
    cfg = _read_config(folder)
    state = load_file(folder / "weights.safetensors")
    tokenizer = None
    if (folder / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    return tlmodel.build_from_tl_checkpoint(cfg, state, device=device, tokenizer=tokenizer)


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
    cfg = _read_config(folder) if (folder / "config.json").is_file() else None
    if cfg is not None and ("model_type" in cfg or "architectures" in cfg):
        if not any((folder / f).is_file() for f in HF_WEIGHTS):
            raise TLSubmodelsError(
                f"{folder} holds a HuggingFace config.json ({_family(cfg)}) but no weights: it needs one of "
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
    if tlmodel.TL_LINE == 4:
        from transformer_lens.model_bridge import TransformerBridge

        model = TransformerBridge.boot_transformers(name, device=device)
    else:
        from transformer_lens import HookedTransformer

        model = HookedTransformer.from_pretrained(name, device=device)
    model.eval()
    return model


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
            f"({type(e).__name__}: {_first_line(e)}).{near}"
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


def _read_config(folder: Path) -> dict[str, Any]:
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise TLSubmodelsError(f"{folder / 'config.json'}: not valid JSON ({e.msg})") from None
    if not isinstance(cfg, dict):
        raise TLSubmodelsError(f"{folder / 'config.json'}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def _family(hf_cfg: dict[str, Any]) -> str:
    """The architecture a HuggingFace config names (``LlamaForCausalLM``), else its model_type."""
    arch = hf_cfg.get("architectures") or [None]
    return str(arch[0] or hf_cfg.get("model_type") or "unknown architecture")


def _first_line(e: Exception) -> str:
    """An exception's message, cut to one line for a one-line error."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def _tl() -> str:
    return f"transformer-lens {version('transformer-lens')}"


def _load_folder(folder: Path, *, device: str | None) -> Any:
    if folder_format(folder) == "checkpoint":
        return load_checkpoint(folder, device=device)
    hf_cfg = _read_config(folder)
    tokenizer = _local_tokenizer(folder)
    if tlmodel.TL_LINE == 4:
        model = _bridge_from_folder(folder, hf_cfg, tokenizer, device)
    else:
        model = _hooked_from_folder(folder, hf_cfg, tokenizer, device)
    model.eval()
    return model


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
            f"{folder}: its tokenizer files could not be loaded ({type(e).__name__}: {_first_line(e)}); fix them, or remove "
            "them to load the model without a tokenizer (tasks then come from token ids: Task.from_tokens)"
        ) from None


# ---------------------------------------------------------------------------------------------
# A HuggingFace folder on each line.

_NO_PROCESSING = (
    "fold_ln center_writing_weights center_unembed fold_value_biases refactor_factored_attn_matrices".split()
)
_LOAD_ERRORS = (OSError, ValueError, KeyError, AttributeError, NotImplementedError, RuntimeError, TypeError)


def _refused(folder: Path, hf_cfg: dict[str, Any], e: Exception) -> TLSubmodelsError:
    line = "transformer-lens 4 (TransformerBridge) loads more architectures" if tlmodel.TL_LINE == 2 else "see its docs"
    return TLSubmodelsError(
        f"{_tl()} cannot load the {_family(hf_cfg)} model in {folder} ({type(e).__name__}: {_first_line(e)}); {line}"
    )


def _bridge_from_folder(folder: Path, hf_cfg: dict[str, Any], tokenizer: Any, device: str | None) -> Any:
    """TL 4: a TransformerBridge over the folder's HuggingFace model, read from the folder alone."""
    from transformer_lens.model_bridge import TransformerBridge

    try:
        # boot_transformers reads config and weights from a local folder; given a tokenizer, it asks for none
        model = TransformerBridge.boot_transformers(
            str(folder), device=device, tokenizer=tokenizer if tokenizer is not None else _placeholder_tokenizer()
        )
    except _LOAD_ERRORS as e:
        raise _refused(folder, hf_cfg, e) from None
    if tokenizer is None:
        model.tokenizer = None  # the folder has none: prompts are refused clearly (model.tokenize)
    return model


def _placeholder_tokenizer() -> Any:
    """A one-word tokenizer for boot_transformers, which would otherwise build one from the folder (and fail)."""
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel({"<unk>": 0}, unk_token="<unk>")), unk_token="<unk>"
    )


def _hooked_from_folder(folder: Path, hf_cfg: dict[str, Any], tokenizer: Any, device: str | None) -> Any:
    """TL 2: a HookedTransformer converted from the folder's HuggingFace model (unprocessed weights).

    TL 2 picks a config by official model name; a local folder has none, so the config comes from
    TL's own HF-config conversion (``convert_hf_model_config``, given a folder) and the weights from
    ``get_pretrained_state_dict(..., hf_model=)``. The result is checked against the HF model's logits.
    """
    import torch
    from transformer_lens import HookedTransformer, HookedTransformerConfig
    from transformer_lens import loading_from_pretrained as tl_loading
    from transformers import AutoModelForCausalLM

    try:
        hf_model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
        cfg_dict = _tl2_config(hf_cfg, hf_model.config)
        cfg_dict |= {
            "model_name": folder.name,
            "init_weights": False,
            "dtype": torch.float32,
            "device": device,
            "n_devices": 1,
            "tokenizer_name": None,  # the tokenizer comes from the folder, or there is none: no hub
            "from_checkpoint": False,
            "d_vocab": hf_model.config.vocab_size,
        }
        cfg_dict.setdefault("default_prepend_bos", True)
        cfg = HookedTransformerConfig.from_dict(cfg_dict)
        state = tl_loading.get_pretrained_state_dict(str(folder), cfg, hf_model, dtype=torch.float32)
        model = HookedTransformer(cfg, tokenizer, move_to_device=False)
        model.load_and_process_state_dict(state, **dict.fromkeys(_NO_PROCESSING, False))  # HF's own numbers
    except _LOAD_ERRORS as e:
        raise _refused(folder, hf_cfg, e) from None
    model.move_model_modules_to_device()
    model.eval()
    _check_same_logits(model, hf_model, folder, hf_cfg)
    return model


def _tl2_config(hf_cfg: dict[str, Any], hf_config: Any) -> dict[str, Any]:
    """HookedTransformerConfig fields for a local HF config, by TL 2's own conversion where it has one."""
    from transformer_lens import loading_from_pretrained as tl_loading

    family = _family(hf_cfg)
    if family == "Gemma2ForCausalLM":  # TL 2 knows Gemma 2 only by official name
        return _gemma2_config(hf_config)
    cfg = dict(hf_cfg)
    if cfg.get("model_type") == "gpt2":
        cfg.setdefault("n_ctx", cfg.get("n_positions", 1024))  # TL 2 reads n_ctx, which recent configs drop
    # convert_hf_model_config takes a folder, but picks Llama/Gemma by the substring in its path: a clean one
    with tempfile.TemporaryDirectory(prefix="tls-config-") as tmp:
        (Path(tmp) / "config.json").write_text(json.dumps(cfg))
        cfg_dict: dict[str, Any] = tl_loading.convert_hf_model_config(tmp)
    if family in ("GPT2LMHeadModel", "GPTJForCausalLM") and getattr(hf_config, "n_inner", None):
        cfg_dict["d_mlp"] = hf_config.n_inner  # TL 2 assumes 4 * d_model
    if family == "LlamaForCausalLM":
        cfg_dict["rotary_base"] = getattr(hf_config, "rope_theta", 10000.0)  # TL 2 assumes 10000
    return cfg_dict


def _gemma2_config(c: Any) -> dict[str, Any]:
    """TL 2's Gemma 2 config (as for google/gemma-2-2b), with the sizes read from the HF config."""
    tl = "d_model d_head n_heads d_mlp n_layers n_ctx eps d_vocab act_fn rotary_base n_key_value_heads window_size"
    hf = (
        "hidden_size head_dim num_attention_heads intermediate_size num_hidden_layers max_position_embeddings "
        "rms_norm_eps vocab_size hidden_activation rope_theta num_key_value_heads sliding_window"
    )
    flags = "use_attn_scale use_local_attn gated_mlp final_rms use_normalization_before_and_after"
    return (
        {t: getattr(c, h) for t, h in zip(tl.split(), hf.split(), strict=True)}
        | dict.fromkeys(flags.split(), True)
        | {
            "normalization_type": "RMS",
            "positional_embedding_type": "rotary",
            "attn_scale": c.query_pre_attn_scalar**0.5,  # HF scales scores by query_pre_attn_scalar, not d_head
            "attn_types": ["local" if t == "sliding_attention" else "global" for t in c.layer_types],
            "attn_scores_soft_cap": c.attn_logit_softcapping or -1.0,
            "output_logits_soft_cap": c.final_logit_softcapping or -1.0,
            "original_architecture": "Gemma2ForCausalLM",
        }
    )


def _check_same_logits(model: Any, hf_model: Any, folder: Path, hf_cfg: dict[str, Any]) -> None:
    """Refuse a TL 2 conversion whose logits differ from the HF model's (a config option TL 2 ignores)."""
    import torch

    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, model.cfg.d_vocab, (1, min(8, model.cfg.n_ctx)), generator=g)
    with torch.no_grad():
        ours = model(tokens.to(tlmodel.first_param_device(model))).float().cpu()
        theirs = hf_model(tokens.to(tlmodel.first_param_device(hf_model))).logits.float().cpu()
    gap = (ours - theirs).abs().max().item()
    if not gap <= 1e-3 * max(1.0, theirs.abs().max().item()):
        raise TLSubmodelsError(
            f"{_tl()} converts the {_family(hf_cfg)} model in {folder} wrongly: its logits differ from the "
            f"HuggingFace model's by up to {gap:.3g} (its config sets an option TransformerLens 2 does not "
            "convert); transformer-lens 4 runs the HuggingFace model itself (TransformerBridge)"
        )
