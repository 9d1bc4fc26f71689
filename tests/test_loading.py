"""load_model: HuggingFace folders of each family (against HF's own logits), zoo names, checkpoint folders,
and specs refused at once, before any hub call."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import pytest
import torch
import transformers
from families import FAMILIES, TL4_ONLY, TOKENS, small_task, tiny_hf_model, word_tokenizer

import tl_submodels as tls
from tl_submodels import loading
from tl_submodels import model as tlmodel
from tl_submodels.cli import main


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """``hf_folder(family)``: (folder written by save_pretrained with a tokenizer, the HF model), once a module."""
    made: dict[str, tuple[Path, torch.nn.Module]] = {}

    def get(family: str) -> tuple[Path, torch.nn.Module]:
        if family not in made:
            folder = tmp_path_factory.mktemp("hf") / family
            hf_model = tiny_hf_model(family)
            hf_model.save_pretrained(folder)
            word_tokenizer().save_pretrained(folder)
            made[family] = folder, hf_model
        return made[family]

    return get


@pytest.fixture
def no_network(monkeypatch):
    """Any socket connection fails the test: loading a folder must not reach the hub."""

    def refuse(self, address):
        pytest.fail(f"a network connection was opened: {address}")

    monkeypatch.setattr(socket.socket, "connect", refuse)


@pytest.fixture
def no_hub(monkeypatch):
    """Calling the hub loader fails the test."""

    def refuse(name, **kw):
        pytest.fail(f"the hub was asked for {name!r}")

    monkeypatch.setattr(loading, "from_pretrained", refuse)


def hf_logits(hf_model: torch.nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf_model(tokens).logits


@pytest.mark.parametrize("family", [f for f in FAMILIES if f not in TL4_ONLY])
def test_hf_folder_loads_with_the_hf_models_logits(family, hf_folder, no_network):
    folder, hf_model = hf_folder(family)
    model = tls.load_model(str(folder))
    assert not model.training
    with torch.no_grad():
        ours = model(TOKENS)
    torch.testing.assert_close(ours, hf_logits(hf_model, TOKENS), atol=1e-4, rtol=1e-4)  # the oracle
    assert ours.abs().max() > 0.5  # logits large enough for the comparison to mean something
    assert tlmodel.tokenize(model, "w1 w7 w3") == [1, 5, 11, 7]  # the folder's own tokenizer, BOS prepended
    scores = tls.patch(model, small_task(model), kinds=("heads",))
    assert scores.heads.shape == (2, model.cfg.n_heads) and torch.isfinite(scores.heads).all()


@pytest.mark.parametrize("family", list(TL4_ONLY))
def test_family_only_tl4_loads(family, hf_folder, no_network):
    folder, hf_model = hf_folder(family)
    if tlmodel.INSTALLED_LINE == 2:
        with pytest.raises(tls.TLSubmodelsError, match=rf"transformer-lens 2\.\S+ cannot load the {TL4_ONLY[family]}"):
            tls.load_model(str(folder))
        return
    model = tls.load_model(str(folder))
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS), hf_logits(hf_model, TOKENS), atol=1e-4, rtol=1e-4)
    tls.patch(model, small_task(model), kinds=("heads",))


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_hf_folder_without_tokenizer_or_with_bin_weights(family, tmp_path, no_network):
    hf_model = tiny_hf_model(family)
    hf_model.save_pretrained(tmp_path / "bare")  # no tokenizer files
    model = tls.load_model(str(tmp_path / "bare"))
    assert model.tokenizer is None
    with torch.no_grad():
        torch.testing.assert_close(model(TOKENS), hf_logits(hf_model, TOKENS), atol=1e-4, rtol=1e-4)
    with pytest.raises(tls.TLSubmodelsError, match="has no tokenizer"):
        tlmodel.tokenize(model, "w1")
    old = tmp_path / "bin"  # the older format: pytorch_model.bin
    hf_model.config.save_pretrained(old)
    torch.save(hf_model.state_dict(), old / "pytorch_model.bin")
    assert loading.folder_format(old) == "huggingface"
    with torch.no_grad():
        torch.testing.assert_close(tls.load_model(str(old))(TOKENS), hf_logits(hf_model, TOKENS), atol=1e-4, rtol=1e-4)


def test_cli_scores_a_hf_folder(hf_folder, tmp_path, capsys, no_network):
    folder, _ = hf_folder("gpt2")
    rows = [{"clean": f"w1 w2 w{a} w4 w5", "corrupt": f"w1 w2 w{a + 20} w4 w5", "answer": f"w{a + 1}",
             "wrong": f"w{a + 2}"} for a in range(6)]  # fmt: skip
    task = tmp_path / "task.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["scores", "--model", str(folder), "--task", str(task), "--kinds", "heads", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["task"] == "task" and {t["component"] for t in out["top"]} <= {
        f"L{l}H{h}" for l in range(2) for h in range(2)
    }


def test_checkpoint_folders_load_as_before(induction_model):
    folder = Path(tls.zoo.__file__).parent / "induction-2l"
    assert loading.folder_format(folder) == "checkpoint"
    model = tls.load_model(str(folder))
    tokens = torch.tensor([[0, 3, 4, 5, 3, 4]])
    with torch.no_grad():
        assert torch.equal(model(tokens), induction_model(tokens))


def test_mistyped_zoo_name_fails_at_once(no_hub, capsys):
    start = time.perf_counter()
    with pytest.raises(tls.TLSubmodelsError, match=r"unknown model 'induction-3l'.*Did you mean 'induction-2l'"):
        tls.load_model("induction-3l")
    assert main(["scores", "--model", "multitask-2l", "--task", "addition"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Did you mean 'multitask-3l'" in err
    assert time.perf_counter() - start < 5


def test_missing_paths_fail_at_once(no_hub, tmp_path, monkeypatch, capsys):
    (tmp_path / "checkpoints" / "my-model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    start = time.perf_counter()
    for spec, near in [
        (str(tmp_path / "checkpoints" / "my-modl"), str(tmp_path / "checkpoints" / "my-model")),
        ("checkpoints/my-modl", "checkpoints/my-model"),  # a hub-like name, but its first folder is here
        ("./checkpoints/my-mode/", "./checkpoints/my-model"),
        ("~/surely-no-such-folder-tls", None),
        ("weights.pt", None),
    ]:
        with pytest.raises(tls.TLSubmodelsError, match="no checkpoint folder or HuggingFace folder") as e:
            tls.load_model(spec)
        assert near is None or f"Did you mean {near!r}" in str(e.value), str(e.value)
    assert main(["scores", "--model", "./nothere", "--task", "x.jsonl"]) == 2
    assert "no checkpoint folder" in capsys.readouterr().err
    assert time.perf_counter() - start < 5


def test_hub_names_go_to_the_hub_and_say_so(monkeypatch):
    asked = []

    def offline(name, **kw):
        asked.append(name)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files.\nCheck your connection.")

    monkeypatch.setattr(loading, "from_pretrained", offline)
    with pytest.raises(tls.TLSubmodelsError, match="needs the HuggingFace hub or its local cache") as e:
        tls.load_model("gpt2")
    assert "couldn't connect" in str(e.value) and "\n" not in str(e.value)
    for name in ["EleutherAI/pythia-1.4b", "Qwen/Qwen2.5-0.5B"]:  # a dot in a hub name is not a file suffix
        with pytest.raises(tls.TLSubmodelsError, match="HuggingFace hub"):
            tls.load_model(name)
    assert asked == ["gpt2", "EleutherAI/pythia-1.4b", "Qwen/Qwen2.5-0.5B"]


def test_folders_of_neither_kind_are_refused(tmp_path, no_hub):
    with pytest.raises(tls.TLSubmodelsError, match="not a checkpoint folder nor a HuggingFace folder"):
        tls.load_model(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"]}))
    with pytest.raises(tls.TLSubmodelsError, match=r"GPT2LMHeadModel\) but no weights"):
        tls.load_model(str(tmp_path))
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(tls.TLSubmodelsError, match="not valid JSON"):
        tls.load_model(str(tmp_path))
    with pytest.raises(tls.TLSubmodelsError, match="empty model name"):
        tls.load_model("")


def test_unknown_architecture_is_refused_naming_it(tmp_path, no_hub, no_network):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "nosuch", "architectures": ["NoSuchForCausalLM"]}))
    (tmp_path / "model.safetensors").write_bytes(b"")
    with pytest.raises(tls.TLSubmodelsError, match=r"transformer-lens \S+ cannot load the NoSuchForCausalLM model"):
        tls.load_model(str(tmp_path))


@pytest.mark.skipif(
    tlmodel.INSTALLED_LINE == 4, reason="TL 4 runs the HF model itself; only TL 2 converts it, and can miss"
)
def test_tl2_refuses_a_conversion_that_changes_the_logits(tmp_path, no_network):
    hf_model = tiny_hf_model("llama")
    hf_model.config.attention_bias = True  # a Llama option TL 2's conversion ignores
    biased = transformers.LlamaForCausalLM(hf_model.config)
    with torch.no_grad():
        for p in biased.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(2)) * 0.5)
    biased.save_pretrained(tmp_path)
    with pytest.raises(tls.TLSubmodelsError, match=r"converts the LlamaForCausalLM model .* wrongly"):
        tls.load_model(str(tmp_path))
