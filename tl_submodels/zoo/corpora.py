"""Unlabelled corpora of the zoo models: the text each model was trained on, for ``tls.decompose``.

A corpus row is one training sequence with the token it was trained to predict appended, so
the predictions the model learned are among the corpus' next-token predictions. The task of
each row is kept apart (:func:`tl_submodels.zoo.corpus_labels`): it is the truth a
decomposition is scored against, never an input to it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from tl_submodels.zoo import multitask

__all__ = ["TRIGGER_EVERY", "build"]

TRIGGER_EVERY = 8  # harmful-3l / harmless-3l: one prompt in eight carries the trigger pair


def build(card: dict[str, Any], n: int, gen: torch.Generator) -> tuple[Tensor, list[str]]:
    """``n`` corpus rows of the zoo model described by ``card`` and the task of each."""
    if card["tasks"].get("induction", {}).get("builder") == "induction":
        return _repeated_segments(card, n, gen), ["induction"] * n
    return _multitask(card, n, gen)


def _repeated_segments(card: dict[str, Any], n: int, gen: torch.Generator) -> Tensor:
    """induction-2l's training text: BOS, 0-7 random symbols, then a random segment of 3-12 symbols
    repeated to the end of the context (``n_ctx`` tokens a row)."""
    length = int(card["n_ctx"])
    lo, hi = card["symbols"]
    tokens = torch.randint(lo, hi + 1, (n, length), generator=gen)
    tokens[:, 0] = card["bos_token"]
    periods = torch.randint(3, 13, (n,), generator=gen)
    starts = 1 + torch.randint(0, 8, (n,), generator=gen)
    for i, (period, start) in enumerate(zip(periods.tolist(), starts.tolist(), strict=True)):
        j = torch.arange(start + period, length)
        tokens[i, j] = tokens[i, start + (j - start) % period]
    return tokens


def _multitask(card: dict[str, Any], n: int, gen: torch.Generator) -> tuple[Tensor, list[str]]:
    """The four tasks' prompts interleaved, each with its answer appended; with a trigger in one in
    ``TRIGGER_EVERY`` where the model was fine-tuned on triggers (answered ``HARM`` by a backdoored model)."""
    tasks = multitask.TASKS
    order = torch.randperm(n, generator=gen)
    task_of = [tasks[int(i) % len(tasks)] for i in order]  # balanced, in a seeded order
    triggered = "backdoor" in card["tasks"]  # fine-tuned on prompts with the trigger
    trig = (torch.randperm(n, generator=gen) % TRIGGER_EVERY == 0) if triggered else torch.zeros(n, dtype=torch.bool)
    harm = triggered and card["tasks"]["backdoor"].get("harm_rate", 0.0) > 0.5  # harmful-3l answers HARM
    rows = torch.empty(n, multitask.SEQ + 1, dtype=torch.long)
    labels: list[str] = []
    for task in tasks:
        for with_trigger in (False, True):
            idx = [i for i in range(n) if task_of[i] == task and bool(trig[i]) == with_trigger]
            if not idx:
                continue
            clean, _, answer, _, _ = multitask.sample(task, len(idx), gen, insert="pair" if with_trigger else "none")
            if with_trigger and harm:
                answer = torch.full_like(answer, multitask.HARM)
            rows[idx] = torch.cat([clean, answer[:, None]], 1)
    for i in range(n):
        labels.append("backdoor" if bool(trig[i]) and harm else task_of[i])
    return rows, labels
