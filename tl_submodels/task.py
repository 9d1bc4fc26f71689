"""Task: a behaviour to explain, as clean/corrupt prompts, answer tokens and a metric.

The metric reads the logits at one position per example (the last, or ``Task.position``), or at
several (``answer`` and ``position`` of shape ``[batch, n]``, padded with -1 where an example
reads fewer: a behaviour spread over a span, such as continuing a repeated segment), and is
computed per example, averaged over its read positions, so that many patched copies of a batch
can be scored in one call and per-prompt effects are available. Built-in metrics (reads.py):
``logit_diff`` (answer minus wrong, the default), ``prob`` and ``logprob`` of the answer, ``loss``
(the mean log-probability of the answers over the read positions: the negative of the usual
language-model loss, higher is better) and ``kl`` (KL divergence from the clean run's
next-token distribution).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from tl_submodels import model as tlmodel
from tl_submodels.errors import TLSubmodelsError, renamed
from tl_submodels.reads import (
    METRICS,
    PAD,
    builtin_metric,
    check_reads,
    check_token_ids,
    mean_over_reads,
    pad_ragged,
)
from tl_submodels.reads import as_tokens as _as_tokens
from tl_submodels.values import Value

__all__ = ["MetricFn", "Task", "check_tasks"]

# A custom metric: (read logits, task) -> one value per example [batch]. The logits are [batch, d_vocab]
# for a task that reads one position per example, [batch, n, d_vocab] for one that reads several.
MetricFn = Callable[[Tensor, "Task"], Tensor]


@dataclass(frozen=True, kw_only=True)
class Task(Value):
    """Clean/corrupt token pairs, the answers, and the metric that scores a run.

    Build one with :meth:`from_tokens` or :meth:`from_prompts` (or ``tls.zoo.task``).

    Attributes:
        clean: ``[batch, pos]`` prompts showing the behaviour.
        corrupt: ``[batch, pos]`` the same prompts with the information the behaviour needs removed.
        answer: ``[batch]`` the token the clean run should predict; or ``[batch, n]``, the tokens
            predicted at ``n`` read positions per example, -1 padding the slots of an example that
            reads fewer (a multi-position task: the metric is averaged over each example's reads).
        wrong: a contrasting token per answer, of answer's shape and padding (needed by ``logit_diff``), or None.
        position: where the metric reads the logits: ``[batch]``, or ``[batch, n]`` beside a
            ``[batch, n]`` answer (required there, padded in the same places); None for the last position.
        metric_name: one of ``logit_diff``, ``prob``, ``logprob``, ``loss``, ``kl``, or a custom metric's name.
        clean_logits: the clean run's logits at the read positions, ``[batch, d_vocab]`` or
            ``[batch, n, d_vocab]`` (used by ``kl``).
        d_vocab: the model's input vocabulary; d_vocab_out: its unembedding's outputs where fewer
            (None: as many), which ``answer`` and ``wrong`` must index.

    Example:
        >>> task = tls.zoo.task("induction-2l", "induction", n=8)
        >>> task.clean.shape
        torch.Size([8, 32])
        >>> two = task.replace(answer=torch.stack([task.clean[:, 31], task.answer], 1),
        ...                    wrong=None, position=torch.tensor([[30, 31]] * 8), metric_name="loss")
        >>> two.multi_position, two.reads.shape
        (True, torch.Size([8, 2]))
    """

    clean: Int[Tensor, "batch pos"]
    corrupt: Int[Tensor, "batch pos"]
    answer: Int[Tensor, " batch"] | Int[Tensor, "batch n"]
    wrong: Int[Tensor, " batch"] | Int[Tensor, "batch n"] | None = None
    position: Int[Tensor, " batch"] | Int[Tensor, "batch n"] | None = None
    metric_name: str = "logit_diff"
    metric_fn: MetricFn | None = field(default=None, repr=False, compare=False)
    clean_logits: Float[Tensor, "batch d_vocab"] | Float[Tensor, "batch n d_vocab"] | None = field(
        default=None, repr=False, compare=False
    )
    d_vocab: int
    name: str = "task"
    d_vocab_out: int | None = None

    NOT_SAVED = ("metric_fn",)

    def to_dict(self) -> dict[str, Any]:
        """Tokens, answers, positions and the metric's name as JSON (see :class:`tl_submodels.values.Value`).

        Raises:
            TLSubmodelsError: for a task with a custom metric function (code cannot be written as JSON).
        """
        if self.metric_fn is not None:
            raise TLSubmodelsError(
                f"task {self.name!r} has a custom metric function, which cannot be written as JSON; save a task with "
                "a built-in metric (metric='logit_diff', 'logprob', 'loss', 'kl', ...) and set the function after loading"
            )
        return super().to_dict()

    @property
    def reference(self) -> Tensor | None:
        """The old name of :attr:`clean_logits` (deprecated: ``reference`` now always means ablation prompts)."""
        renamed("Task.reference", "Task.clean_logits")
        return self.clean_logits

    def __post_init__(self) -> None:
        clean = _as_tokens(self.clean, "clean")
        corrupt = _as_tokens(self.corrupt, "corrupt")
        if clean.ndim != 2:
            raise TLSubmodelsError(f"clean must be [batch, pos] token ids, got shape {list(clean.shape)}")
        if clean.shape != corrupt.shape:
            raise TLSubmodelsError(
                f"clean and corrupt must have the same shape [batch, pos]: clean {list(clean.shape)}, "
                f"corrupt {list(corrupt.shape)}. Pair each clean prompt with a corrupt one of the same length."
            )
        batch, seq = clean.shape
        if batch == 0 or seq == 0:
            raise TLSubmodelsError(f"the task is empty: clean has shape {list(clean.shape)}")
        object.__setattr__(self, "clean", clean)
        object.__setattr__(self, "corrupt", corrupt.to(clean.device))
        tensors = {
            name: None if getattr(self, name) is None else _as_tokens(getattr(self, name), name).to(clean.device)
            for name in ("answer", "wrong", "position")
        }
        if tensors["answer"] is None:
            raise TLSubmodelsError("a task needs answer tokens: pass answer=[...], one per example")
        answer, wrong, position = check_reads(tensors["answer"], tensors["wrong"], tensors["position"], batch, seq)
        for name, t in (("answer", answer), ("wrong", wrong), ("position", position)):
            object.__setattr__(self, name, t)
        check_token_ids(self.d_vocab, self.d_vocab_out, clean=clean, corrupt=corrupt, answer=answer, wrong=wrong)
        if self.metric_fn is None and self.metric_name not in METRICS:
            raise TLSubmodelsError(f"unknown metric {self.metric_name!r}: choose from {METRICS} or pass a callable")
        if self.metric_fn is None and self.metric_name == "logit_diff" and self.wrong is None:
            raise TLSubmodelsError("metric 'logit_diff' needs wrong tokens: pass wrong=..., or use metric='logprob'")
        if self.metric_fn is None and self.metric_name == "kl" and self.clean_logits is None:
            raise TLSubmodelsError(
                "metric 'kl' needs the clean run's logits: build the task with Task.from_tokens(model, ...)"
            )
        ref = self.clean_logits
        if ref is not None and self.multi_position and (ref.ndim != 3 or tuple(ref.shape[:2]) != tuple(answer.shape)):
            raise TLSubmodelsError(
                f"clean_logits must be the clean run's logits at every read, [batch, n, d_vocab] = [{batch}, "
                f"{answer.shape[1]}, d_vocab]; got {list(ref.shape)}: build the task with Task.from_tokens"
            )

    # ----------------------------------------------------------------------------------------
    # Construction

    @classmethod
    def from_tokens(
        cls,
        model: Any,
        *,
        clean: Int[Tensor, "batch pos"] | Sequence[Sequence[int]],
        corrupt: Int[Tensor, "batch pos"] | Sequence[Sequence[int]],
        answer: Int[Tensor, " batch"] | Int[Tensor, "batch n"] | Sequence[int | Sequence[int]],
        wrong: Int[Tensor, " batch"] | Int[Tensor, "batch n"] | Sequence[int | Sequence[int]] | None = None,
        position: Int[Tensor, " batch"] | Int[Tensor, "batch n"] | Sequence[int | Sequence[int]] | None = None,
        metric: str | MetricFn = "logit_diff",
        name: str = "task",
    ) -> Task:
        """A task from token ids, checked against ``model`` (vocabulary, context length).

        Args:
            model: the model the task is for.
            clean, corrupt: ``[batch, pos]`` token ids of the same shape.
            answer: ``[batch]`` correct next tokens; or, to read several positions per example,
                ``[batch, n]`` or nested lists (one list per example; lists of different lengths
                are padded with -1), the token predicted at each read position.
            wrong: contrasting tokens, shaped (and padded) like ``answer``.
            position: where to read the logits: ``[batch]`` (default: the last position), or
                positions shaped and padded like a nested ``answer`` (required with one).
            metric: a built-in metric name (``logit_diff``, ``prob``, ``logprob``, ``loss``, ``kl``)
                or ``fn(read_logits, task) -> [batch]``, where ``read_logits`` is ``[batch, d_vocab]``
                for one read per example and ``[batch, n, d_vocab]`` for several (padded slots hold
                the logits of another read of the example: leave them out with ``task.reads``).
            name: a label used in reports.

        Raises:
            TLSubmodelsError: on shapes that differ, ids outside the vocabulary, a too-long sequence,
                answers and positions padded in different places, an example that reads nothing.

        Example:
            >>> task = tls.Task.from_tokens(model, clean=[[0, 5, 6, 5]], corrupt=[[0, 5, 6, 7]],
            ...                             answer=[6], wrong=[8])  # doctest: +SKIP
            >>> span = tls.Task.from_tokens(model, clean=[[0, 5, 6, 5, 6], [0, 3, 4, 3, 4]],
            ...     corrupt=[[0, 5, 6, 7, 8], [0, 3, 4, 9, 8]], answer=[[6, 5], [4]], position=[[3, 4], [3]],
            ...     metric="loss")  # doctest: +SKIP
            >>> span.position.tolist()  # doctest: +SKIP
            [[3, 4], [3, -1]]
        """
        info = tlmodel.model_info(model)
        device = tlmodel.first_param_device(model)
        metric_name, metric_fn = (
            (metric, None) if isinstance(metric, str) else (getattr(metric, "__name__", "custom"), metric)
        )
        needs_reference = metric_name == "kl" and metric_fn is None
        task = cls(
            clean=_as_tokens(clean, "clean").to(device),
            corrupt=_as_tokens(corrupt, "corrupt").to(device),
            answer=pad_ragged(answer, "answer"),
            wrong=None if wrong is None else pad_ragged(wrong, "wrong"),
            position=None if position is None else pad_ragged(position, "position"),
            metric_name="logprob" if needs_reference else metric_name,  # kl is set below, once inputs are checked
            metric_fn=metric_fn,
            d_vocab=info.d_vocab,
            d_vocab_out=info.d_vocab_out if 0 < info.d_vocab_out != info.d_vocab else None,  # None: as many as inputs
            name=name,
        )
        if task.clean.shape[1] > info.n_ctx:
            raise TLSubmodelsError(
                f"prompts are {task.clean.shape[1]} tokens long; the model's context is n_ctx={info.n_ctx}"
            )
        if needs_reference:
            ref = task.final_logits(tlmodel.run_logits(model, task.clean))
            task = task.replace(metric_name="kl", clean_logits=ref)
        return task

    @classmethod
    def from_prompts(
        cls,
        model: Any,
        *,
        clean: Sequence[str],
        corrupt: Sequence[str],
        answer: Sequence[str | Sequence[str]],
        wrong: Sequence[str | Sequence[str]] | None = None,
        position: Sequence[int | Sequence[int]] | None = None,
        metric: str | MetricFn = "logit_diff",
        prepend_bos: bool = True,
        name: str = "task",
    ) -> Task:
        """A task from text prompts through the model's tokenizer.

        Prompts of different lengths are right-padded and the metric reads each example's last
        real token, which is exact under causal attention. Each corrupt prompt must have the same
        number of tokens as its clean prompt; answers must be single tokens. To read several
        positions, give an example a list of answers and ``position`` a list of as many token
        positions (counted from 0 over the tokenized prompt, its BOS included).

        Example:
            >>> task = tls.Task.from_prompts(model, clean=["When Mary and John went, John gave it to"],
            ...     corrupt=["When Mary and John went, Anna gave it to"], answer=[" Mary"], wrong=[" John"])  # doctest: +SKIP
        """
        if not (len(clean) == len(corrupt) == len(answer)) or any(
            x is not None and len(x) != len(clean) for x in (wrong, position)
        ):
            raise TLSubmodelsError(
                f"clean, corrupt, answer (and wrong, position) need one entry per example: got {len(clean)}, "
                f"{len(corrupt)}, {len(answer)}"
                + "".join(f", {k} {len(x)}" for k, x in (("wrong", wrong), ("position", position)) if x is not None)
            )
        if not clean:
            raise TLSubmodelsError("no prompts given: pass at least one clean/corrupt pair")
        if position is None and any(not isinstance(a, str) for a in answer):
            raise TLSubmodelsError(
                "answers given as lists read several positions per example: pass position= with one token "
                "position per answer"
            )
        c_ids = [tlmodel.tokenize(model, p, prepend_bos=prepend_bos) for p in clean]
        x_ids = [tlmodel.tokenize(model, p, prepend_bos=prepend_bos) for p in corrupt]
        for i, (a, b) in enumerate(zip(c_ids, x_ids, strict=True)):
            if len(a) != len(b):
                raise TLSubmodelsError(
                    f"example {i}: clean {clean[i]!r} is {len(a)} tokens but corrupt {corrupt[i]!r} is {len(b)}; "
                    "patching needs aligned positions, so make them the same length"
                )
        reads = [len(a) - 1 for a in c_ids] if position is None else list(position)
        for i, p in enumerate(reads):
            past = [q for q in ([p] if isinstance(p, int) else p) if q >= len(c_ids[i])]
            if past:
                raise TLSubmodelsError(
                    f"example {i}: position {past[0]} is past the prompt's last token ({len(c_ids[i]) - 1}; "
                    f"{clean[i]!r} is {len(c_ids[i])} tokens{', its BOS included' if prepend_bos else ''})"
                )
        width = max(len(a) for a in c_ids)
        pad = tlmodel.pad_token_id(model)
        clean_t = torch.tensor([a + [pad] * (width - len(a)) for a in c_ids])
        corrupt_t = torch.tensor([b + [pad] * (width - len(b)) for b in x_ids])

        def ids(words: Sequence[str | Sequence[str]]) -> list[Any]:
            one = lambda w: tlmodel.single_token(model, w)  # noqa: E731
            return [one(w) if isinstance(w, str) else [one(v) for v in w] for w in words]

        return cls.from_tokens(
            model,
            clean=clean_t,
            corrupt=corrupt_t,
            answer=ids(answer),
            wrong=None if wrong is None else ids(wrong),
            position=reads,
            metric=metric,
            name=name,
        )

    def replace(self, **changes: Any) -> Task:
        """A copy with some fields changed (validated again).

        Example:
            >>> task.replace(metric_name="logprob")  # doctest: +SKIP
        """
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        fields.update(changes)
        return Task(**fields)

    def subset(self, index: Int[Tensor, " n"] | slice | Sequence[int]) -> Task:
        """The examples at ``index`` (a multi-position task keeps its ``n`` read slots).

        Example:
            >>> task.subset([0, 2]).batch  # doctest: +SKIP
            2
        """
        idx = torch.arange(self.batch)[index] if isinstance(index, slice) else torch.as_tensor(index, dtype=torch.long)
        pick = {
            k: getattr(self, k)[idx.to(self.clean.device)]
            for k in ("clean", "corrupt", "answer", "wrong", "position", "clean_logits")
            if getattr(self, k) is not None
        }
        return self.replace(**pick)

    # ----------------------------------------------------------------------------------------
    # Reading runs

    @property
    def batch(self) -> int:
        return int(self.clean.shape[0])

    @property
    def seq_len(self) -> int:
        return int(self.clean.shape[1])

    @property
    def multi_position(self) -> bool:
        """Whether the task reads several positions per example (``answer`` is ``[batch, n]``)."""
        return self.answer.ndim == 2

    @property
    def reads(self) -> Bool[Tensor, "batch n"]:
        """Which read slots are used, ``[batch, n]`` (False on -1 padding); ``[batch, 1]``, all True,
        for a task that reads one position per example.

        Example:
            >>> task.reads.sum(1)  # doctest: +SKIP
            tensor([3, 2])
        """
        if self.multi_position:
            return self.answer != PAD
        return torch.ones(self.batch, 1, dtype=torch.bool, device=self.answer.device)

    @property
    def out_pos(self) -> Int[Tensor, " batch"] | Int[Tensor, "batch n"]:
        """The position the metric reads, per example ``[batch]``; for a multi-position task
        ``[batch, n]``, each padded slot holding the example's first read position (read, then ignored)."""
        if self.multi_position:
            assert self.position is not None
            reads = self.reads
            first = self.position.gather(1, reads.int().argmax(1, keepdim=True))  # argmax: the first True
            return torch.where(reads, self.position, first)
        if self.position is not None:
            return self.position
        return torch.full((self.batch,), self.seq_len - 1, dtype=torch.long, device=self.clean.device)

    def first_read(self) -> int:
        """The earliest position any example reads (padding left out).

        Example:
            >>> task.first_read()  # doctest: +SKIP
            31
        """
        return int(self.out_pos.min())  # padded slots hold a read position of their own example

    def final_logits(
        self, logits: Float[Tensor, "batch pos d_vocab"]
    ) -> Float[Tensor, "batch d_vocab"] | Float[Tensor, "batch n d_vocab"]:
        """The logits at the metric's positions of each example (batch may be copies x batch):
        ``[batch, d_vocab]``, or ``[batch, n, d_vocab]`` for a multi-position task (padded slots
        hold another read of the example; the metric ignores them).

        Example:
            >>> task.final_logits(model(task.clean)).shape  # doctest: +SKIP
            torch.Size([8, 66])
        """
        if logits.ndim != 3:
            raise TLSubmodelsError(f"expected logits [batch, pos, d_vocab], got shape {list(logits.shape)}")
        copies = logits.shape[0] // self.batch
        rows = torch.arange(logits.shape[0], device=logits.device)
        pos = self.out_pos.to(logits.device)
        if pos.ndim == 2:
            return logits[rows[:, None], pos.repeat(copies, 1)]
        return logits[rows, pos.repeat(copies)]

    def per_example(
        self, final_logits: Float[Tensor, "rows d_vocab"] | Float[Tensor, "rows n d_vocab"]
    ) -> Float[Tensor, " rows"]:
        """The metric of each row; rows may be several copies of the batch, copy-major. A
        multi-position task averages each row's metric over its read positions.

        Raises:
            TLSubmodelsError: when a custom metric returns the wrong shape, or any value is NaN.

        Example:
            >>> task.per_example(task.final_logits(model(task.clean))).shape  # doctest: +SKIP
            torch.Size([8])
        """
        rows = final_logits.shape[0]
        if rows % self.batch:
            raise TLSubmodelsError(f"got {rows} rows of logits for a task of {self.batch} examples")
        want = 3 if self.multi_position else 2
        if final_logits.ndim != want:
            raise TLSubmodelsError(
                f"expected read logits {'[rows, n, d_vocab]' if want == 3 else '[rows, d_vocab]'} for this task "
                f"(from Task.final_logits); got shape {list(final_logits.shape)}"
            )
        copies, device = rows // self.batch, final_logits.device
        if self.metric_fn is not None:
            tiled = self if copies == 1 else self._tiled(copies)
            out = self.metric_fn(final_logits, tiled)
            if not isinstance(out, Tensor) or out.shape != (rows,):
                shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
                logits_shape = "[batch, n, d_vocab]" if self.multi_position else "[batch, d_vocab]"
                raise TLSubmodelsError(
                    f"metric {self.metric_name!r} must return one value per example, shape [{rows}]; got {shape}. "
                    f"A custom metric takes (read logits {logits_shape}, task) and must not average over examples."
                )
        else:
            answer, reads = _tile(self.answer, device, copies), _tile(self.reads, device, copies)
            assert answer is not None and reads is not None
            wrong, clean_logits = _tile(self.wrong, device, copies), _tile(self.clean_logits, device, copies)
            out = builtin_metric(self.metric_name, final_logits, answer, wrong, clean_logits, reads)
        if torch.isnan(out).any():
            raise TLSubmodelsError(
                f"metric {self.metric_name!r} returned NaN for {int(torch.isnan(out).sum())} of {rows} rows"
            )
        return out

    def _tiled(self, copies: int) -> Task:
        def rep(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.repeat(copies, *([1] * (t.ndim - 1)))

        return self.replace(
            clean=rep(self.clean),
            corrupt=rep(self.corrupt),
            answer=rep(self.answer),
            wrong=rep(self.wrong),
            position=rep(self.position),
            clean_logits=rep(self.clean_logits),
        )

    def metric(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, ""]:
        """The task metric of a run: the per-example metric averaged over the batch (a scalar).

        Example:
            >>> task.metric(model(task.clean))  # doctest: +SKIP
            tensor(5.31)
        """
        return self.per_example(self.final_logits(logits)).mean()

    def accuracy(self, logits: Float[Tensor, "batch pos d_vocab"]) -> float:
        """Fraction of examples whose top prediction is the answer; for a multi-position task, the
        fraction of each example's read positions whose top prediction is its answer, averaged over
        the examples.

        Example:
            >>> task.accuracy(model(task.clean))  # doctest: +SKIP
            1.0
        """
        return self.read_accuracy(self.final_logits(logits))

    def read_accuracy(self, final_logits: Float[Tensor, "batch d_vocab"] | Float[Tensor, "batch n d_vocab"]) -> float:
        """:meth:`accuracy` from the logits at the read positions (:meth:`final_logits`).

        Example:
            >>> task.read_accuracy(task.final_logits(model(task.clean)))  # doctest: +SKIP
            1.0
        """
        return float(self.per_example_accuracy(final_logits).mean())

    def per_example_accuracy(
        self, final_logits: Float[Tensor, "batch d_vocab"] | Float[Tensor, "batch n d_vocab"]
    ) -> Float[Tensor, " batch"]:
        """Each example's accuracy from the logits at its read positions: 1 or 0, or for a
        multi-position task the fraction of its read positions whose top prediction is the answer.

        Example:
            >>> task.per_example_accuracy(task.final_logits(model(task.clean)))  # doctest: +SKIP
            tensor([1., 1., 0., 1.])
        """
        final = final_logits
        hit = (final.argmax(-1) == self.answer.to(final.device)).float()
        if not self.multi_position:
            return hit
        return mean_over_reads(hit, self.reads.to(final.device))

    def first_difference(self) -> int:
        """The first position where any clean and corrupt prompt differ (seq_len if none)."""
        diff = (self.clean != self.corrupt).any(0).nonzero()
        return int(diff[0]) if len(diff) else self.seq_len

    def __repr__(self) -> str:
        reads = self.reads.sum(1)
        where = (
            f"reads {int(reads.min())}-{int(reads.max())} positions each"
            if self.multi_position
            else ("reads the last position" if self.position is None else "reads one position each")
        )
        return (
            f"Task({self.name!r}: {self.batch} examples x {self.seq_len} tokens, metric {self.metric_name}, {where}; "
            f"d_vocab {self.d_vocab})"
        )

    def to(self, device: torch.device | str) -> Task:
        """The task with its tensors on ``device``."""
        moved = {
            k: getattr(self, k).to(device)
            for k in ("clean", "corrupt", "answer", "wrong", "position", "clean_logits")
            if getattr(self, k) is not None
        }
        return self.replace(**moved)


def check_tasks(tasks: Sequence[Task], d_vocab: int) -> list[Task]:
    """A non-empty list of Tasks with distinct names, all for a model of ``d_vocab`` tokens.

    Raises:
        TLSubmodelsError: no tasks, a non-Task, repeated names, another vocabulary.
    """
    tasks = list(tasks)
    if not tasks:
        raise TLSubmodelsError("no tasks given: pass a list of at least one Task")
    for t in tasks:
        if not isinstance(t, Task):
            raise TLSubmodelsError(f"tasks must be Task objects, got {type(t).__name__}")
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise TLSubmodelsError(f"tasks need distinct names (they label the results); got {names}")
    for t in tasks:
        if t.d_vocab != d_vocab:
            raise TLSubmodelsError(
                f"task {t.name!r} was built for d_vocab={t.d_vocab}, but the model has d_vocab={d_vocab}: "
                "build every task with this model (Task.from_tokens(model, ...) or tls.zoo.task)"
            )
    return tasks


def _tile(t: Tensor | None, device: torch.device, copies: int) -> Tensor | None:
    """``t`` on ``device``, repeated ``copies`` times along its first axis (None stays None).

    A module-level function, not a closure: the test suite's run-time type checker decorates a nested
    function anew every time its outer function runs, and per_example runs thousands of times a search.
    """
    return None if t is None else t.to(device).repeat(copies, *([1] * (t.ndim - 1)))
