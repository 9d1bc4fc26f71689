"""Task: a behaviour to explain, as clean/corrupt prompts, answer tokens and a metric.

The metric reads the logits at one position per example (the last, or ``Task.position``) and is
computed per example, so that many patched copies of a batch can be scored in one call and
per-prompt effects are available. Built-in metrics: ``logit_diff`` (answer minus wrong, the
default), ``prob`` and ``logprob`` of the answer, and ``kl`` (KL divergence from the clean run's
next-token distribution).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_submodels import model as tlmodel
from tl_submodels.errors import TLSubmodelsError

# A custom metric: (final-position logits [batch, d_vocab], task) -> one value per example [batch].
MetricFn = Callable[[Tensor, "Task"], Tensor]
METRICS = ("logit_diff", "prob", "logprob", "kl")


def _as_tokens(x: Any, what: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise TLSubmodelsError(f"{what} must be integer token ids, got dtype {t.dtype}")
    return t.long()


@dataclass(frozen=True, kw_only=True)
class Task:
    """Clean/corrupt token pairs, the answers, and the metric that scores a run.

    Build one with :meth:`from_tokens` or :meth:`from_prompts` (or ``tls.zoo.task``).

    Attributes:
        clean: ``[batch, pos]`` prompts showing the behaviour.
        corrupt: ``[batch, pos]`` the same prompts with the information the behaviour needs removed.
        answer: ``[batch]`` the token the clean run should predict.
        wrong: ``[batch]`` a contrasting token (needed by ``logit_diff``), or None.
        position: ``[batch]`` where the metric reads the logits; None for the last position.
        metric_name: one of ``logit_diff``, ``prob``, ``logprob``, ``kl``, or a custom metric's name.
        reference: ``[batch, d_vocab]`` the clean run's final logits (used by ``kl``).
        d_vocab: the model's input vocabulary; d_vocab_out: its unembedding's outputs where fewer
            (None: as many), which ``answer`` and ``wrong`` must index.

    Example:
        >>> task = tls.zoo.task("induction-2l", "induction", n=8)
        >>> task.clean.shape
        torch.Size([8, 32])
    """

    clean: Int[Tensor, "batch pos"]
    corrupt: Int[Tensor, "batch pos"]
    answer: Int[Tensor, " batch"]
    wrong: Int[Tensor, " batch"] | None = None
    position: Int[Tensor, " batch"] | None = None
    metric_name: str = "logit_diff"
    metric_fn: MetricFn | None = field(default=None, repr=False, compare=False)
    reference: Float[Tensor, "batch d_vocab"] | None = field(default=None, repr=False, compare=False)
    d_vocab: int
    name: str = "task"
    d_vocab_out: int | None = None

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
        for name in ("answer", "wrong", "position"):
            value = getattr(self, name)
            if value is None:
                continue
            t = _as_tokens(value, name).to(clean.device)
            if t.ndim == 0:
                t = t.expand(batch).clone()
            if t.shape != (batch,):
                raise TLSubmodelsError(f"{name} must have one entry per example, shape [{batch}]; got {list(t.shape)}")
            object.__setattr__(self, name, t)
        for name in ("clean", "corrupt", "answer", "wrong"):
            t = getattr(self, name)
            if t is not None and (t.min() < 0 or t.max() >= self.d_vocab):
                bad = t[(t < 0) | (t >= self.d_vocab)][0].item()
                raise TLSubmodelsError(
                    f"{name} holds token id {bad}, outside the model's vocabulary (d_vocab={self.d_vocab}, ids 0-{self.d_vocab - 1})"
                )
        outputs = self.d_vocab_out or self.d_vocab
        for name in ("answer", "wrong"):
            t = getattr(self, name)
            if t is not None and t.max() >= outputs:
                raise TLSubmodelsError(
                    f"{name} holds token id {t.max().item()}, but the model's unembedding has only d_vocab_out="
                    f"{outputs} outputs (ids 0-{outputs - 1}): an answer must be a token the model can predict"
                )
        if self.position is not None and (self.position.min() < 0 or self.position.max() >= seq):
            raise TLSubmodelsError(f"position must index the sequence (0-{seq - 1}); got {self.position.tolist()}")
        if self.metric_fn is None and self.metric_name not in METRICS:
            raise TLSubmodelsError(f"unknown metric {self.metric_name!r}: choose from {METRICS} or pass a callable")
        if self.metric_fn is None and self.metric_name == "logit_diff" and self.wrong is None:
            raise TLSubmodelsError("metric 'logit_diff' needs wrong tokens: pass wrong=..., or use metric='logprob'")
        if self.metric_fn is None and self.metric_name == "kl" and self.reference is None:
            raise TLSubmodelsError(
                "metric 'kl' needs the clean run's logits: build the task with Task.from_tokens(model, ...)"
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
        answer: Int[Tensor, " batch"] | Sequence[int],
        wrong: Int[Tensor, " batch"] | Sequence[int] | None = None,
        position: Int[Tensor, " batch"] | Sequence[int] | None = None,
        metric: str | MetricFn = "logit_diff",
        name: str = "task",
    ) -> Task:
        """A task from token ids, checked against ``model`` (vocabulary, context length).

        Args:
            model: the model the task is for.
            clean, corrupt: ``[batch, pos]`` token ids of the same shape.
            answer: ``[batch]`` correct next tokens; wrong: ``[batch]`` contrasting tokens.
            position: ``[batch]`` where to read the logits (default: the last position).
            metric: a built-in metric name or ``fn(final_logits [batch, d_vocab], task) -> [batch]``.
            name: a label used in reports.

        Raises:
            TLSubmodelsError: on shapes that differ, ids outside the vocabulary, a too-long sequence.

        Example:
            >>> task = tls.Task.from_tokens(model, clean=[[0, 5, 6, 5]], corrupt=[[0, 5, 6, 7]],
            ...                             answer=[6], wrong=[8])  # doctest: +SKIP
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
            answer=_as_tokens(answer, "answer"),
            wrong=None if wrong is None else _as_tokens(wrong, "wrong"),
            position=None if position is None else _as_tokens(position, "position"),
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
            task = task.replace(metric_name="kl", reference=ref)
        return task

    @classmethod
    def from_prompts(
        cls,
        model: Any,
        *,
        clean: Sequence[str],
        corrupt: Sequence[str],
        answer: Sequence[str],
        wrong: Sequence[str] | None = None,
        metric: str | MetricFn = "logit_diff",
        prepend_bos: bool = True,
        name: str = "task",
    ) -> Task:
        """A task from text prompts through the model's tokenizer.

        Prompts of different lengths are right-padded and the metric reads each example's last
        real token, which is exact under causal attention. Each corrupt prompt must have the same
        number of tokens as its clean prompt; answers must be single tokens.

        Example:
            >>> task = tls.Task.from_prompts(model, clean=["When Mary and John went, John gave it to"],
            ...     corrupt=["When Mary and John went, Anna gave it to"], answer=[" Mary"], wrong=[" John"])  # doctest: +SKIP
        """
        if not (len(clean) == len(corrupt) == len(answer)) or (wrong is not None and len(wrong) != len(clean)):
            raise TLSubmodelsError(
                f"clean, corrupt, answer (and wrong) need one entry per example: got {len(clean)}, {len(corrupt)}, "
                f"{len(answer)}" + ("" if wrong is None else f", {len(wrong)}")
            )
        if not clean:
            raise TLSubmodelsError("no prompts given: pass at least one clean/corrupt pair")
        c_ids = [tlmodel.tokenize(model, p, prepend_bos=prepend_bos) for p in clean]
        x_ids = [tlmodel.tokenize(model, p, prepend_bos=prepend_bos) for p in corrupt]
        for i, (a, b) in enumerate(zip(c_ids, x_ids, strict=True)):
            if len(a) != len(b):
                raise TLSubmodelsError(
                    f"example {i}: clean {clean[i]!r} is {len(a)} tokens but corrupt {corrupt[i]!r} is {len(b)}; "
                    "patching needs aligned positions, so make them the same length"
                )
        width = max(len(a) for a in c_ids)
        pad = tlmodel.pad_token_id(model)
        clean_t = torch.tensor([a + [pad] * (width - len(a)) for a in c_ids])
        corrupt_t = torch.tensor([b + [pad] * (width - len(b)) for b in x_ids])
        return cls.from_tokens(
            model,
            clean=clean_t,
            corrupt=corrupt_t,
            answer=[tlmodel.single_token(model, a) for a in answer],
            wrong=None if wrong is None else [tlmodel.single_token(model, w) for w in wrong],
            position=[len(a) - 1 for a in c_ids],
            metric=metric,
            name=name,
        )

    def replace(self, **changes: Any) -> Task:
        """A copy with some fields changed (validated again)."""
        fields = {k: getattr(self, k) for k in self.__dataclass_fields__}
        fields.update(changes)
        return Task(**fields)

    def subset(self, index: Int[Tensor, " n"] | slice | Sequence[int]) -> Task:
        """The examples at ``index``."""
        idx = torch.arange(self.batch)[index] if isinstance(index, slice) else torch.as_tensor(index, dtype=torch.long)
        pick = {
            k: getattr(self, k)[idx.to(self.clean.device)]
            for k in ("clean", "corrupt", "answer", "wrong", "position", "reference")
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
    def out_pos(self) -> Int[Tensor, " batch"]:
        """The position the metric reads, per example."""
        if self.position is not None:
            return self.position
        return torch.full((self.batch,), self.seq_len - 1, dtype=torch.long, device=self.clean.device)

    def final_logits(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, "batch d_vocab"]:
        """The logits at the metric's position of each example (batch may be copies x batch)."""
        if logits.ndim != 3:
            raise TLSubmodelsError(f"expected logits [batch, pos, d_vocab], got shape {list(logits.shape)}")
        copies = logits.shape[0] // self.batch
        pos = self.out_pos.to(logits.device).repeat(copies)
        return logits[torch.arange(logits.shape[0], device=logits.device), pos]

    def per_example(self, final_logits: Float[Tensor, "rows d_vocab"]) -> Float[Tensor, " rows"]:
        """The metric of each row; rows may be several copies of the batch, copy-major.

        Raises:
            TLSubmodelsError: when a custom metric returns the wrong shape, or any value is NaN.
        """
        rows = final_logits.shape[0]
        if rows % self.batch:
            raise TLSubmodelsError(f"got {rows} rows of logits for a task of {self.batch} examples")
        copies = rows // self.batch

        def tile(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.to(final_logits.device).repeat(copies, *([1] * (t.ndim - 1)))

        if self.metric_fn is not None:
            tiled = self if copies == 1 else self._tiled(copies)
            out = self.metric_fn(final_logits, tiled)
            if not isinstance(out, Tensor) or out.shape != (rows,):
                shape = list(out.shape) if isinstance(out, Tensor) else type(out).__name__
                raise TLSubmodelsError(
                    f"metric {self.metric_name!r} must return one value per example, shape [{rows}]; got {shape}. "
                    "A custom metric takes (final_logits [batch, d_vocab], task) and must not average."
                )
        else:
            answer = tile(self.answer)
            assert answer is not None
            logits = final_logits.float()
            if self.metric_name == "logit_diff":
                wrong = tile(self.wrong)
                assert wrong is not None
                out = logits.gather(1, answer[:, None])[:, 0] - logits.gather(1, wrong[:, None])[:, 0]
            elif self.metric_name == "prob":
                out = logits.softmax(-1).gather(1, answer[:, None])[:, 0]
            elif self.metric_name == "logprob":
                out = logits.log_softmax(-1).gather(1, answer[:, None])[:, 0]
            else:  # kl
                ref = tile(self.reference)
                assert ref is not None
                ref_logp = ref.float().log_softmax(-1)
                out = (ref_logp.exp() * (ref_logp - logits.log_softmax(-1))).sum(-1)
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
            reference=rep(self.reference),
        )

    def metric(self, logits: Float[Tensor, "batch pos d_vocab"]) -> Float[Tensor, ""]:
        """The task metric of a run: the per-example metric averaged over the batch (a scalar).

        Example:
            >>> task.metric(model(task.clean))  # doctest: +SKIP
            tensor(5.31)
        """
        return self.per_example(self.final_logits(logits)).mean()

    def accuracy(self, logits: Float[Tensor, "batch pos d_vocab"]) -> float:
        """Fraction of examples whose top prediction is the answer."""
        final = self.final_logits(logits)
        return float((final.argmax(-1) == self.answer.to(final.device)).float().mean())

    def first_difference(self) -> int:
        """The first position where any clean and corrupt prompt differ (seq_len if none)."""
        diff = (self.clean != self.corrupt).any(0).nonzero()
        return int(diff[0]) if len(diff) else self.seq_len

    def to(self, device: torch.device | str) -> Task:
        """The task with its tensors on ``device``."""
        moved = {
            k: getattr(self, k).to(device)
            for k in ("clean", "corrupt", "answer", "wrong", "position", "reference")
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
