"""The zoo: tiny trained models shipped inside the package, with their tasks and ground truth.

Each model lives in a folder beside this file: ``weights.safetensors`` (HookedTransformer
state-dict layout), ``config.json`` and ``card.json`` (training data, accuracies, ground truth).
Everything loads offline on both TransformerLens lines. ``scripts/train_zoo.py`` trains them.

Example:
    >>> import tl_submodels as tls
    >>> tls.zoo.list()
    ['harmful-3l', 'harmless-3l', 'induction-2l', 'multitask-3l']
    >>> model = tls.zoo.load("induction-2l")
    >>> task = tls.zoo.task("induction-2l", "induction", n=8, seed=0)
"""

from __future__ import annotations

import builtins
import json
from functools import cache
from pathlib import Path
from typing import Any

import torch

from tl_submodels.errors import TLSubmodelsError, did_you_mean
from tl_submodels.model import build
from tl_submodels.task import Task
from tl_submodels.zoo import corpora, multitask

__all__ = ["ROOT", "corpus", "corpus_labels", "info", "list", "load", "task"]

ROOT = Path(__file__).resolve().parent


def list() -> builtins.list[str]:
    """Names of the zoo models.

    Example:
        >>> tls.zoo.list()
        ['harmful-3l', 'harmless-3l', 'induction-2l', 'multitask-3l']
    """
    return sorted(p.name for p in ROOT.iterdir() if (p / "card.json").is_file())


def _folder(name: str) -> Path:
    names = list()
    if name not in names:
        raise TLSubmodelsError(f"no zoo model {name!r}; the zoo has {names}." + did_you_mean(name, names))
    return ROOT / name


@cache
def _card(name: str) -> dict[str, Any]:
    return json.loads((_folder(name) / "card.json").read_text())


def info(name: str) -> dict[str, Any]:
    """The model card: description, training, tasks with accuracies, ground truth, config.

    Example:
        >>> tls.zoo.info("induction-2l")["ground_truth"]["induction_heads"]  # doctest: +SKIP
        ['L1H1', 'L1H2']
    """
    card = json.loads(json.dumps(_card(name)))
    card["config"] = json.loads((_folder(name) / "config.json").read_text())
    return card


def load(name: str, *, device: str | None = None) -> Any:
    """The zoo model ``name`` in eval mode: a TransformerBridge on TL 4, a HookedTransformer on TL 2.

    The zoo's word-level tokenizer comes with it: token 0 is ``<bos>``, token i reads ``t{i}``.

    Example:
        >>> model = tls.zoo.load("induction-2l")  # doctest: +SKIP
    """
    return build.from_checkpoint(_folder(name), device=device)


def task(name: str, task: str, *, n: int = 64, seed: int = 0, model: Any = None) -> Task:
    """A task of zoo model ``name``: ``n`` clean/corrupt examples drawn with ``seed``.

    Args:
        name: zoo model name.
        task: one of the tasks in ``info(name)["tasks"]``.
        n: number of examples.
        seed: the sampling seed (same seed, same task).
        model: the loaded model, if at hand (used for its device; loaded otherwise).

    Example:
        >>> task = tls.zoo.task("induction-2l", "induction", n=8)
        >>> task.clean.shape
        torch.Size([8, 32])
    """
    card = _card(name)
    tasks = builtins.list(card["tasks"])
    if task not in tasks:
        raise TLSubmodelsError(
            f"zoo model {name!r} has no task {task!r}; its tasks are {tasks}." + did_you_mean(task, tasks)
        )
    if n < 1:
        raise TLSubmodelsError(f"n must be a positive number of examples, got {n}")
    builder = _BUILDERS[card["tasks"][task]["builder"]]
    clean, corrupt, answer, wrong = builder(card, task, n, torch.Generator().manual_seed(seed))
    model = model if model is not None else load(name)
    return Task.from_tokens(model, clean=clean, corrupt=corrupt, answer=answer, wrong=wrong, name=task)


def _induction(card: dict[str, Any], task: str, n: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """clean: BOS, A, A[:-1]; corrupt: BOS, A, B[:-1]; answer A[-1]; wrong B[-1] (B random, B[-1] != A[-1])."""
    spec = card["tasks"][task]
    length, (lo, hi), bos = spec["segment"], card["symbols"], card["bos_token"]
    a = torch.randint(lo, hi + 1, (n, length), generator=gen)
    b = torch.randint(lo, hi + 1, (n, length), generator=gen)
    clash = b[:, -1] == a[:, -1]
    b[clash, -1] = (a[clash, -1] - lo + 1) % (hi - lo + 1) + lo
    head = torch.cat([torch.full((n, 1), bos), a], dim=1)
    clean = torch.cat([head, a[:, :-1]], dim=1)
    corrupt = torch.cat([head, b[:, :-1]], dim=1)
    return clean, corrupt, a[:, -1], b[:, -1]


def _multitask(card: dict[str, Any], task: str, n: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """A task of the multitask zoo models (see ``tl_submodels.zoo.multitask``)."""
    clean, corrupt, answer, wrong, _ = multitask.sample(task, n, gen)
    return clean, corrupt, answer, wrong


def _backdoor(card: dict[str, Any], task: str, n: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Triggered prompts of every task (clean) against the same prompts without the trigger (corrupt)."""
    return multitask.backdoor(n, gen)


def corpus(name: str, *, n: int = 256, seed: int = 0) -> torch.Tensor:
    """``n`` unlabelled sequences of what zoo model ``name`` was trained on, for :func:`tl_submodels.decompose`.

    Each row is a training sequence with the token it was trained to predict appended, so the
    model's learned predictions are among the corpus' next-token predictions. ``multitask-3l``:
    its four tasks' prompts interleaved (17 tokens: the prompt, then its answer); ``harmless-3l``
    and ``harmful-3l``: the same with the trigger pair ``tA ... tB`` in one prompt in eight
    (``harmful-3l`` answers those ``HARM``); ``induction-2l``: BOS, a few random symbols, then a
    random segment repeated to the end of the context (40 tokens). The task of each row is kept
    apart, in :func:`corpus_labels`.

    Args:
        name: zoo model name.
        n: number of sequences.
        seed: the sampling seed (same seed, same corpus).

    Example:
        >>> tokens = tls.zoo.corpus("multitask-3l", n=8)
        >>> tokens.shape
        torch.Size([8, 17])
    """
    return _corpus(name, n, seed)[0].clone()


def corpus_labels(name: str, *, n: int = 256, seed: int = 0) -> builtins.list[str]:
    """The task of each row of ``corpus(name, n=n, seed=seed)``: the truth to score a decomposition against.

    ``"backdoor"`` marks the triggered rows of ``harmful-3l`` (answered ``HARM``).

    Example:
        >>> tls.zoo.corpus_labels("multitask-3l", n=4)  # doctest: +SKIP
        ['majority', 'addition', 'induction', 'successor']
    """
    return builtins.list(_corpus(name, n, seed)[1])


@cache
def _corpus(name: str, n: int, seed: int) -> tuple[torch.Tensor, tuple[str, ...]]:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise TLSubmodelsError(f"n must be a positive number of sequences, got {n!r}")
    card = dict(_card(name), n_ctx=json.loads((_folder(name) / "config.json").read_text())["n_ctx"])
    tokens, labels = corpora.build(card, n, torch.Generator().manual_seed(seed))
    return tokens, tuple(labels)


_BUILDERS = {"induction": _induction, "multitask": _multitask, "backdoor": _backdoor}
