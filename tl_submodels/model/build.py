"""Building models: the only place that knows which TransformerLens line is installed.

A model is built by the installed line (TL 4: ``TransformerBridge``; TL 2: ``HookedTransformer``) from
a HookedTransformer-layout checkpoint (the zoo), a HuggingFace folder, or a hub name. Once built,
everything else asks the model's own :class:`~tl_submodels.model.adapter.Adapter`.
"""

from __future__ import annotations

import importlib.util
import json
import tempfile
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import Tensor

from tl_submodels.errors import TLSubmodelsError

__all__ = [
    "INSTALLED_LINE", "build_from_tl_checkpoint", "first_line", "from_checkpoint", "from_hf_folder", "from_hub",
    "hf_family", "read_config", "tl_version",
]  # fmt: skip


def _installed_line() -> int:
    """4 where the installed transformer-lens has ``model_bridge`` (``TransformerBridge``), else 2.

    Found by looking for the subpackage, not by importing it: importing transformer_lens takes
    seconds, and ``import tl_submodels`` (the command line's errors, ``zoo list``) needs none of it.
    """
    spec = importlib.util.find_spec("transformer_lens")
    folders = (spec.submodule_search_locations or []) if spec is not None else []
    return 4 if any((Path(folder) / "model_bridge").is_dir() for folder in folders) else 2


INSTALLED_LINE = _installed_line()


def build_from_tl_checkpoint(
    cfg: dict[str, Any], state_dict: dict[str, Tensor], device: str | None = None, tokenizer: Any = None
) -> Any:
    """Build an eval-mode model from a HookedTransformer-layout state dict, on either TL line.

    On TL 4 this is ``TransformerBridge.boot_native`` plus ``convert_tl_checkpoint``; on TL 2 a
    ``HookedTransformer``. Used by the zoo.
    """
    if INSTALLED_LINE == 4:
        from transformer_lens.model_bridge import TransformerBridge
        from transformer_lens.utilities.tl_checkpoint_conversion import convert_tl_checkpoint

        bridge: Any = TransformerBridge  # boot_native is attached at run time, out of mypy's sight
        model = bridge.boot_native(dict(cfg, seed=0), device=device, tokenizer=tokenizer)
        model.load_state_dict(convert_tl_checkpoint(state_dict, model.cfg), strict=True)
    else:
        from transformer_lens import HookedTransformer, HookedTransformerConfig

        model = HookedTransformer(HookedTransformerConfig(**cfg, device=device or "cpu"), tokenizer=tokenizer)
        result = model.load_state_dict(state_dict, strict=False)
        stray = [k for k in result.missing_keys if not k.endswith((".mask", ".IGNORE"))]
        if stray or result.unexpected_keys:
            raise TLSubmodelsError(
                f"checkpoint does not match the config: missing {stray}, unexpected {result.unexpected_keys}"
            )
    model.eval()
    return model


def from_checkpoint(folder: Path, *, device: str | None = None) -> Any:
    """The model saved in a checkpoint folder (config.json + weights.safetensors [+ tokenizer.json]), in eval mode.

    Raises:
        TLSubmodelsError: when a file is missing, config.json is not valid JSON, or the weights do not fit it.
    """
    folder = Path(folder)
    missing = [f for f in ("config.json", "weights.safetensors") if not (folder / f).is_file()]
    if missing:
        raise TLSubmodelsError(
            f"{folder} is not a checkpoint folder: it lacks {missing} (a folder needs config.json with "
            "HookedTransformerConfig fields and weights.safetensors with a HookedTransformer state dict)"
        )
    cfg = read_config(folder)
    state = load_file(folder / "weights.safetensors")
    tokenizer = None
    if (folder / "tokenizer.json").is_file():
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast.from_pretrained(str(folder))
    return build_from_tl_checkpoint(cfg, state, device=device, tokenizer=tokenizer)


def read_config(folder: Path) -> dict[str, Any]:
    """``folder/config.json`` as a dict, refused clearly when it is not a JSON object."""
    try:
        cfg = json.loads((folder / "config.json").read_text())
    except json.JSONDecodeError as e:
        raise TLSubmodelsError(f"{folder / 'config.json'}: not valid JSON ({e.msg})") from None
    if not isinstance(cfg, dict):
        raise TLSubmodelsError(f"{folder / 'config.json'}: expected a JSON object, got {type(cfg).__name__}")
    return cfg


def from_hub(name: str, *, device: str | None = None) -> Any:
    """A HuggingFace hub model through the installed TransformerLens, in eval mode (needs the hub or its
    cache): TL 4 ``TransformerBridge.boot_transformers(name)``, TL 2 ``HookedTransformer.from_pretrained(name)``."""
    if INSTALLED_LINE == 4:
        from transformer_lens.model_bridge import TransformerBridge

        model = TransformerBridge.boot_transformers(name, device=device)
    else:
        from transformer_lens import HookedTransformer

        model = HookedTransformer.from_pretrained(name, device=device)
    model.eval()
    return model


def from_hf_folder(folder: Path, hf_cfg: dict[str, Any], tokenizer: Any, *, device: str | None = None) -> Any:
    """The HuggingFace model saved in ``folder`` through the installed TransformerLens, in eval mode, offline.

    On TL 4 a ``TransformerBridge`` over the HuggingFace model; on TL 2 a ``HookedTransformer`` converted
    from it (weights unprocessed) and checked against the HuggingFace model's own logits.

    Raises:
        TLSubmodelsError: for an architecture this TransformerLens cannot load (or converts wrongly).
    """
    if INSTALLED_LINE == 4:
        model = _bridge_from_folder(folder, hf_cfg, tokenizer, device)
    else:
        model = _hooked_from_folder(folder, hf_cfg, tokenizer, device)
    model.eval()
    return model


def hf_family(hf_cfg: dict[str, Any]) -> str:
    """The architecture a HuggingFace config names (``LlamaForCausalLM``), else its model_type."""
    arch = hf_cfg.get("architectures") or [None]
    return str(arch[0] or hf_cfg.get("model_type") or "unknown architecture")


def first_line(e: Exception) -> str:
    """An exception's message, cut to one line for a one-line error."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:200]


def tl_version() -> str:
    return f"transformer-lens {version('transformer-lens')}"


def _device(model: Any) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


_NO_PROCESSING = (
    "fold_ln center_writing_weights center_unembed fold_value_biases refactor_factored_attn_matrices".split()
)
_LOAD_ERRORS = (OSError, ValueError, KeyError, AttributeError, NotImplementedError, RuntimeError, TypeError)


def _refused(folder: Path, hf_cfg: dict[str, Any], e: Exception) -> TLSubmodelsError:
    line = "transformer-lens 4 (TransformerBridge) loads more architectures" if INSTALLED_LINE == 2 else "see its docs"
    return TLSubmodelsError(
        f"{tl_version()} cannot load the {hf_family(hf_cfg)} model in {folder} ({type(e).__name__}: {first_line(e)}); {line}"
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

    family = hf_family(hf_cfg)
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
        ours = model(tokens.to(_device(model))).float().cpu()
        theirs = hf_model(tokens.to(_device(hf_model))).logits.float().cpu()
    gap = (ours - theirs).abs().max().item()
    if not gap <= 1e-3 * max(1.0, theirs.abs().max().item()):
        raise TLSubmodelsError(
            f"{tl_version()} converts the {hf_family(hf_cfg)} model in {folder} wrongly: its logits differ from the "
            f"HuggingFace model's by up to {gap:.3g} (its config sets an option TransformerLens 2 does not "
            "convert); transformer-lens 4 runs the HuggingFace model itself (TransformerBridge)"
        )
