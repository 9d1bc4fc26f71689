"""The work loop the sweeps share: resumable from a checkpoint file, sharded over torch.distributed ranks.

A sweep (``patch``, ``attribute``, and ``factorize`` through them) is a list of independent work
items: chunks of components, or of examples. :class:`Sweep` hands a rank the items that are its
own and not yet in the checkpoint, records each result as it comes (the checkpoint is rewritten
atomically: a temporary file, then ``os.replace``, so an interrupted write leaves the previous
file whole), and at the end gathers every item's result on every rank. The caller combines the
results in item order, so the numbers do not depend on how the items were spread or resumed.

A checkpoint is keyed by what determines its results: the function, its arguments, a hash of the
model's weights and of the task, and the package version. A checkpoint written under another key
is refused, never mixed in.

Inside an initialised process group (``torchrun``, ``torch.distributed.init_process_group``) rank
``r`` of ``w`` takes items ``r, r + w, ...``; with a checkpoint, each rank keeps its own file
(``PATH.rank{r}-of-{w}``).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from tl_submodels.errors import TLSubmodelsError

__all__ = ["FORMAT", "Sweep", "distributed", "fingerprint_model", "fingerprint_task"]

FORMAT = "tl_submodels.checkpoint/1"


def distributed() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, or ``(0, 1)`` without one."""
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def fingerprint_model(model: Any) -> str:
    """A hash of the model's class, config and every parameter and buffer (names, shapes, values)."""
    h = hashlib.sha256(type(model).__name__.encode())
    cfg = getattr(model, "cfg", None)
    for field in ("n_layers", "n_heads", "d_head", "d_model", "d_mlp", "d_vocab", "n_ctx", "act_fn"):
        h.update(repr(getattr(cfg, field, None)).encode())
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(repr((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def fingerprint_task(task: Any) -> str:
    """A hash of a task's tokens, answers, positions (one or several per example) and metric."""
    h = hashlib.sha256(repr((task.name, task.metric_name, task.d_vocab)).encode())
    fn = getattr(task, "metric_fn", None)
    if fn is not None:  # a custom metric: its code identity (a changed function body changes the hash)
        code = getattr(fn, "__code__", None)
        h.update((getattr(fn, "__qualname__", repr(fn)) + repr(code.co_code if code else None)).encode())
    for t in (task.clean, task.corrupt, task.answer, task.wrong, task.position, task.clean_logits):
        if t is not None:
            h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    if getattr(task, "multi_position", False):  # several reads per example: their [batch, n] layout too
        h.update(repr(("reads", tuple(task.answer.shape))).encode())
    return h.hexdigest()


class Sweep:
    """Items ``0 .. n_items-1`` of one sweep: this rank's share, minus what the checkpoint holds.

    Example:
        >>> sweep = Sweep(n, checkpoint=path, key={"fn": "patch", ...})  # doctest: +SKIP
        >>> for i in sweep.todo():  # doctest: +SKIP
        ...     sweep.done(i, compute(i))
        >>> results = sweep.gather()  # {item: result} on every rank  # doctest: +SKIP
    """

    def __init__(
        self,
        n_items: int,
        *,
        key: dict[str, Any],
        checkpoint: str | Path | None = None,
        desc: str = "",
        progress: bool = False,
        unit: str = "it",
    ) -> None:
        from tl_submodels.version import __version__

        self.n_items = n_items
        self.rank, self.world = distributed()
        self.key = {**key, "n_items": n_items, "world": self.world, "version": __version__}
        self.path: Path | None = None
        self.results: dict[int, Any] = {}
        if checkpoint is not None:
            path = Path(checkpoint)
            self.path = path if self.world == 1 else path.with_name(f"{path.name}.rank{self.rank}-of-{self.world}")
            self.results = self._load()
        self.mine = [i for i in range(n_items) if i % self.world == self.rank]
        self.bar = tqdm(
            total=len(self.mine), initial=sum(i in self.results for i in self.mine), desc=desc, disable=not progress
        )
        self.bar.unit = unit

    def _load(self) -> dict[int, Any]:
        assert self.path is not None
        if not self.path.exists():
            return {}
        try:
            data = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise TLSubmodelsError(
                f"checkpoint {self.path} cannot be read ({type(e).__name__}); delete it to start the sweep afresh"
            ) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise TLSubmodelsError(f"{self.path} is not a tl_submodels checkpoint; pass another checkpoint= path")
        theirs = data.get("key", {})
        differ = sorted(k for k in set(theirs) | set(self.key) if theirs.get(k) != self.key.get(k))
        if differ:
            raise TLSubmodelsError(
                f"checkpoint {self.path} was written by another sweep (it differs in: {', '.join(differ)}); "
                "rerun with the same arguments, model and package version, or delete it / pass another path"
            )
        return dict(data["results"])

    def todo(self) -> Iterable[int]:
        """This rank's items that the checkpoint does not hold, in order."""
        return [i for i in self.mine if i not in self.results]

    def done(self, item: int, result: Any) -> None:
        """Record an item's result (tensors, numbers, lists, dicts) and, with a checkpoint, save all so far."""
        self.results[item] = result
        self.bar.update(1)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
            torch.save({"format": FORMAT, "key": self.key, "results": self.results}, tmp)
            os.replace(tmp, self.path)

    def gather(self) -> dict[int, Any]:
        """Every item's result, on every rank (an all-gather over the process group when there is one)."""
        self.bar.close()
        mine = {i: r for i, r in self.results.items() if i % self.world == self.rank}
        if self.world > 1:
            everyone: list[Any] = [None] * self.world
            torch.distributed.all_gather_object(everyone, mine)
            merged: dict[int, Any] = {}
            for part in everyone:
                merged |= part
            mine = merged
        missing = [i for i in range(self.n_items) if i not in mine]
        if missing:  # cannot happen unless a rank skipped work: never return a partial result
            raise TLSubmodelsError(f"sweep incomplete: items {missing[:5]} have no result")
        return mine

    def close(self) -> None:
        self.bar.close()
