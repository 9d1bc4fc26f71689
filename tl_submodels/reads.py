"""What a Task reads from a run: its answers and read positions, and the built-in metrics over them.

An example reads one position (``answer``, ``wrong``, ``position`` of shape ``[batch]``) or
several (``[batch, n]``, padded with -1 where an example reads fewer). The built-in metrics are
computed at every read position and averaged over each example's reads; with one read per
example that is the metric of that read, computed exactly as before multi-position tasks existed.
Kept apart from task.py, which builds and validates the Task that uses these.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_submodels.errors import TLSubmodelsError

__all__ = [
    "METRICS",
    "PAD",
    "as_tokens",
    "builtin_metric",
    "check_reads",
    "check_token_ids",
    "mean_over_reads",
    "metric_values",
    "pad_ragged",
]

METRICS = ("logit_diff", "prob", "logprob", "loss", "kl")
PAD = -1  # marks the unused read slots of an example that reads fewer positions than others


def as_tokens(x: Any, what: str) -> Tensor:
    """Integer token ids (or positions) as a long tensor; floats and booleans are refused."""
    t = torch.as_tensor(x)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TLSubmodelsError(f"{what} must be integer token ids, got dtype {t.dtype}")
    return t.long()


def pad_ragged(x: Any, what: str) -> Tensor:
    """Token ids or positions as a tensor: ``[batch]`` from a flat list, ``[batch, n]`` from nested lists.

    Rows of different lengths are padded with -1 at the end; in a nested list a bare number is
    a row of one.

    Example:
        >>> pad_ragged([[5, 6], [7]], "position").tolist()
        [[5, 6], [7, -1]]
    """
    if isinstance(x, Tensor) or isinstance(x, str) or not isinstance(x, Sequence):
        return as_tokens(x, what)
    items = list(x)
    if not any(_is_row(r) for r in items):
        return as_tokens(items, what)
    rows = [_row(r, what) for r in items]
    width = max(len(r) for r in rows)
    return torch.tensor([r + [PAD] * (width - len(r)) for r in rows], dtype=torch.long).reshape(len(rows), width)


def _row(r: Any, what: str) -> list[int]:
    """One example's ids: a bare number is a row of one; an empty list, a row of none."""
    if not _is_row(r):
        return [int(as_tokens(r, what))]
    if not isinstance(r, Tensor) and len(r) == 0:
        return []
    t = as_tokens(r if isinstance(r, Tensor) else list(r), what)
    if t.ndim != 1:
        raise TLSubmodelsError(
            f"{what}: each example's entry must be a number or a flat list; got shape {list(t.shape)}"
        )
    return t.tolist()


def _is_row(r: Any) -> bool:
    return (isinstance(r, Sequence) and not isinstance(r, str)) or (isinstance(r, Tensor) and r.ndim > 0)


def check_reads(
    answer: Tensor, wrong: Tensor | None, position: Tensor | None, batch: int, seq: int
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """``answer``, ``wrong`` and ``position`` checked against each other and the prompts' ``[batch, seq]``.

    One read per example: each is ``[batch]`` (a scalar is broadcast), as it always was. Several:
    ``answer`` is ``[batch, n]``, ``position`` must be given with the same shape, ``wrong`` too
    where given; -1 pads the unused slots, in the same places in all three; each example reads at
    least one position. Token ranges are checked by the Task.

    Raises:
        TLSubmodelsError: saying what was expected, what was got and what to do.
    """
    answer = _per_example(answer, "answer", batch)
    if answer.ndim == 1:
        out: list[Tensor | None] = []
        for name, t in (("wrong", wrong), ("position", position)):
            if t is not None:
                t = _per_example(t, name, batch)
                if t.ndim == 2:
                    raise TLSubmodelsError(
                        f"{name} is {list(t.shape)}, several reads per example, but answer is {list(answer.shape)}, "
                        "one per example: position and answer (and wrong) must have the same shape; for several "
                        "read positions per example give answer (and wrong) as [batch, n] too"
                    )
            out.append(t)
        wrong, position = out
        if position is not None and (position.min() < 0 or position.max() >= seq):
            raise TLSubmodelsError(f"position must index the sequence (0-{seq - 1}); got {position.tolist()}")
        return answer, wrong, position
    n = answer.shape[1]
    if position is None:
        raise TLSubmodelsError(
            f"answer is {list(answer.shape)}, several answers per example, but no position says where each is read: "
            "pass position= of the same shape (the position whose logits predict each answer, -1 where answer is -1)"
        )
    for name, t in (("position", position), ("wrong", wrong)):
        if t is not None and t.shape != answer.shape:
            raise TLSubmodelsError(
                f"position and answer (and wrong) must have the same shape [batch, n] = [{batch}, {n}]: answer "
                f"{list(answer.shape)}, {name} {list(t.shape)}. Give one position (and one wrong token) per answer, "
                "padded with -1 where an example reads fewer"
            )
    reads = answer != PAD
    for name, t in (("position", position), ("wrong", wrong)):
        if t is not None and not torch.equal(t != PAD, reads):
            i = int((reads != (t != PAD)).any(1).nonzero()[0])
            raise TLSubmodelsError(
                f"answer and {name} must be padded (-1) in the same places: example {i} has answer "
                f"{answer[i].tolist()} and {name} {t[i].tolist()}. Pad only the slots an example does not read"
            )
    empty = (~reads.any(1)).nonzero()[:, 0]
    if len(empty):
        raise TLSubmodelsError(
            f"example {int(empty[0])} reads no position (its answers are all -1 padding): give every example at "
            "least one answer and position, or leave the example out (Task.subset)"
        )
    valid = position[reads]
    if valid.min() < 0 or valid.max() >= seq:
        bad = int(valid[(valid < 0) | (valid >= seq)][0])
        raise TLSubmodelsError(
            f"position must index the sequence (0-{seq - 1}), with -1 only as padding; got {bad} in {position.tolist()}"
        )
    return answer, wrong, position


def _per_example(t: Tensor, name: str, batch: int) -> Tensor:
    """A scalar broadcast to ``[batch]``; a ``[batch]`` or ``[batch, n]`` tensor as it is; else refused."""
    if t.ndim == 0:
        return t.expand(batch).clone()
    if t.ndim == 1 and t.shape != (batch,):
        raise TLSubmodelsError(f"{name} must have one entry per example, shape [{batch}]; got {list(t.shape)}")
    if t.ndim == 2 and (t.shape[0] != batch or t.shape[1] == 0):
        raise TLSubmodelsError(
            f"{name} must have one row of reads per example, shape [{batch}, n] with n >= 1; got {list(t.shape)}"
        )
    if t.ndim > 2:
        raise TLSubmodelsError(
            f"{name} must be [batch] (one read per example) or [batch, n] (several); got {list(t.shape)}"
        )
    return t


def check_token_ids(d_vocab: int, d_vocab_out: int | None, **ids: Tensor | None) -> None:
    """Every token id (``-1`` padding of answers and wrong tokens left out) inside the vocabulary;
    answers and wrong tokens also among the unembedding's ``d_vocab_out`` outputs (None: ``d_vocab``).

    Raises:
        TLSubmodelsError: naming the field, the id and the range.
    """
    for name, t in ids.items():
        if t is None:
            continue
        if name in ("answer", "wrong") and t.ndim == 2:
            t = t[t != PAD]  # -1 padding is no token
        if t.min() < 0 or t.max() >= d_vocab:
            bad = t[(t < 0) | (t >= d_vocab)][0].item()
            raise TLSubmodelsError(
                f"{name} holds token id {bad}, outside the model's vocabulary (d_vocab={d_vocab}, ids 0-{d_vocab - 1})"
            )
        outputs = d_vocab_out or d_vocab
        if name in ("answer", "wrong") and t.max() >= outputs:
            raise TLSubmodelsError(
                f"{name} holds token id {t.max().item()}, but the model's unembedding has only d_vocab_out="
                f"{outputs} outputs (ids 0-{outputs - 1}): an answer must be a token the model can predict"
            )


def builtin_metric(
    name: str,
    read_logits: Float[Tensor, "rows d_vocab"] | Float[Tensor, "rows n d_vocab"],
    answer: Int[Tensor, " rows"] | Int[Tensor, "rows n"],
    wrong: Int[Tensor, " rows"] | Int[Tensor, "rows n"] | None,
    reference: Float[Tensor, "rows d_vocab"] | Float[Tensor, "rows n d_vocab"] | None,
    reads: Bool[Tensor, "rows n"],
) -> Float[Tensor, " rows"]:
    """The built-in metric of each row: at its one read, or averaged over its reads (``[rows, n]`` answers).

    Example:
        >>> builtin_metric("loss", torch.zeros(1, 2, 4), torch.tensor([[1, -1]]), None, None,
        ...                torch.tensor([[True, False]]))
        tensor([-1.3863])
    """
    if answer.ndim == 1:
        return metric_values(name, read_logits, answer, wrong, reference)
    # padded slots read token 0, then are left out of the mean
    wrong = None if wrong is None else wrong.clamp(min=0)
    return mean_over_reads(metric_values(name, read_logits, answer.clamp(min=0), wrong, reference), reads)


def metric_values(
    name: str,
    logits: Float[Tensor, "*reads d_vocab"],
    answer: Int[Tensor, "*reads"],
    wrong: Int[Tensor, "*reads"] | None,
    reference: Float[Tensor, "*reads d_vocab"] | None,
) -> Float[Tensor, "*reads"]:
    """The built-in metric ``name`` at every read: logits ``[..., d_vocab]`` -> ``[...]``.

    ``logit_diff``: answer minus wrong logit; ``prob``, ``logprob``: of the answer; ``loss``: the
    log-probability of the answer (the negative of the language-model loss, so higher is better;
    :func:`mean_over_reads` averages it into the mean log-probability of an example's targets);
    ``kl``: KL divergence of these logits from ``reference``'s distribution.

    Example:
        >>> metric_values("logprob", torch.zeros(2, 4), torch.tensor([1, 2]), None, None)
        tensor([-1.3863, -1.3863])
    """
    logits = logits.float()
    if name == "logit_diff":
        if wrong is None:
            raise TLSubmodelsError("metric 'logit_diff' needs wrong tokens: pass wrong=..., or use metric='logprob'")
        return _take(logits, answer) - _take(logits, wrong)
    if name == "prob":
        return _take(logits.softmax(-1), answer)
    if name in ("logprob", "loss"):
        return _take(logits.log_softmax(-1), answer)
    if name == "kl":
        if reference is None:
            raise TLSubmodelsError("metric 'kl' needs the clean run's logits: build the task with Task.from_tokens")
        ref_logp = reference.float().log_softmax(-1)
        return (ref_logp.exp() * (ref_logp - logits.log_softmax(-1))).sum(-1)
    raise TLSubmodelsError(f"unknown metric {name!r}: choose from {METRICS} or pass a callable")


def _take(t: Tensor, ids: Tensor) -> Tensor:
    return t.gather(-1, ids[..., None])[..., 0]


def mean_over_reads(values: Float[Tensor, "rows n"], reads: Bool[Tensor, "rows n"]) -> Float[Tensor, " rows"]:
    """Each row's mean over its read slots (padding left out, whatever its value).

    Example:
        >>> mean_over_reads(torch.tensor([[1.0, 3.0], [2.0, 9.0]]), torch.tensor([[True, True], [True, False]]))
        tensor([2., 2.])
    """
    kept = torch.where(reads, values, torch.zeros_like(values))
    return kept.sum(1) / reads.sum(1).to(values.dtype)
