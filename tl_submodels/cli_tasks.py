"""JSONL task files for the ``tl-submodels`` command: one example a line, checked line by line.

A line is ``{"clean": ..., "corrupt": ..., "answer": ..., "wrong": ...}`` (``wrong`` optional),
the answer read at the prompt's last token; or, to read several positions, ``"answer"`` (and
``"wrong"``) lists of words with ``"position"``, the list of token positions they are read at
(BOS is position 0). Every error names the file and the line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tl_submodels.errors import TLSubmodelsError
from tl_submodels.task import Task

__all__ = ["jsonl_task"]


def jsonl_task(model: Any, path: Path) -> Task:
    """A Task from a JSONL file of {clean, corrupt, answer[, wrong][, position]} rows (schema in the README).

    ``answer`` (and ``wrong``) is a word read at the prompt's last token, or a list of words read at the
    token positions listed in ``position`` (BOS is position 0). With ``wrong`` on every line the metric is
    ``logit_diff``; with it on none, ``loss`` (the mean log-probability of the answers).

    Raises:
        TLSubmodelsError: naming the file and line: malformed JSON, a missing or mistyped field, a word
            outside the vocabulary, answers and positions of different lengths, a position past the prompt.

    Example:
        >>> task = jsonl_task(model, Path("span.jsonl"))  # doctest: +SKIP
        >>> task.multi_position  # doctest: +SKIP
        True
    """
    if not path.is_file():
        raise TLSubmodelsError(f"task file {path} does not exist")
    rows: list[dict[str, Any]] = []
    first_line: dict[bool, int] = {}  # the first line with (True) and without (False) a wrong token
    for i, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TLSubmodelsError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        rows.append(_row(model, row, f"{path}:{i}"))
        first_line.setdefault("wrong" in rows[-1], i)
    if not rows:
        raise TLSubmodelsError(f"{path}: no rows")
    if len(first_line) == 2:
        raise TLSubmodelsError(
            f'{path}:{max(first_line.values())}: "wrong" is on some lines and not on others (line '
            f"{min(first_line.values())}): give it on every line (metric logit_diff) or on none (metric loss)"
        )
    metric = "logit_diff" if "wrong" in rows[0] else "loss"
    clean, corrupt = [r["clean"] for r in rows], [r["corrupt"] for r in rows]
    if all(r["position"] is None for r in rows):  # one answer per line, read at its last token
        wrong = [r["wrong"] for r in rows] if metric == "logit_diff" else None
        answer = [r["answer"] for r in rows]
        return Task.from_prompts(
            model, clean=clean, corrupt=corrupt, answer=answer, wrong=wrong, metric=metric, name=path.stem
        )

    def listed(r: dict[str, Any], k: str) -> list[Any]:
        return r[k] if isinstance(r[k], list) else [r[k]]

    return Task.from_prompts(
        model,
        clean=clean,
        corrupt=corrupt,
        answer=[listed(r, "answer") for r in rows],
        wrong=[listed(r, "wrong") for r in rows] if metric == "logit_diff" else None,
        position=[r["position"] if r["position"] is not None else [r["last"]] for r in rows],
        metric=metric,
        name=path.stem,
    )


def _row(model: Any, row: Any, where: str) -> dict[str, Any]:
    """One JSONL task row checked against the model's vocabulary, the errors naming the line (``where``)."""
    from tl_submodels import model as tlmodel

    if not isinstance(row, dict) or any(not isinstance(row.get(k), str) for k in ("clean", "corrupt")):
        raise TLSubmodelsError(
            f"{where}: each line needs string fields clean and corrupt, answer (a word, or a list of words with "
            '"position"), and optionally wrong'
        )
    answer, wrong, position = row.get("answer"), row.get("wrong"), row.get("position")
    words = answer if isinstance(answer, list) else [answer]
    if not words or any(not isinstance(a, str) for a in words):
        raise TLSubmodelsError(f"{where}: answer must be a word, or a non-empty list of words; got {answer!r}")
    if position is not None:
        if not isinstance(position, list) or any(isinstance(p, bool) or not isinstance(p, int) for p in position):
            raise TLSubmodelsError(f"{where}: position must be a list of token positions (integers); got {position!r}")
        if not isinstance(answer, list):
            raise TLSubmodelsError(
                f'{where}: "position": {position} needs "answer" as a list of as many words, one read at each position'
            )
        if len(position) != len(answer):
            raise TLSubmodelsError(
                f"{where}: {len(answer)} answers but {len(position)} positions: give one position per answer"
            )
    elif isinstance(answer, list):
        raise TLSubmodelsError(
            f'{where}: a list of answers needs "position": [...], the token position each one is read at '
            "(counted from 0, the BOS included)"
        )
    if wrong is not None:
        wrongs = wrong if isinstance(wrong, list) else [wrong]
        if isinstance(wrong, list) != isinstance(answer, list) or any(not isinstance(w, str) for w in wrongs):
            raise TLSubmodelsError(
                f"{where}: wrong must be shaped like answer (a word, or a list of words); got {wrong!r}"
            )
        if len(wrongs) != len(words):
            raise TLSubmodelsError(
                f"{where}: {len(words)} answers but {len(wrongs)} wrong tokens: give one wrong word per answer, "
                'or leave "wrong" out on every line'
            )
    out: dict[str, Any] = {"clean": row["clean"], "corrupt": row["corrupt"], "answer": answer, "position": position}
    if wrong is not None:
        out["wrong"] = wrong
    for k in ("clean", "corrupt", "answer", "wrong"):
        if k not in out:
            continue
        try:  # the model's vocabulary, line by line, so that the error names the line
            if k in ("answer", "wrong"):
                for w in out[k] if isinstance(out[k], list) else [out[k]]:
                    tlmodel.single_token(model, w)
            else:
                out[f"{k}_ids"] = tlmodel.tokenize(model, out[k])
        except TLSubmodelsError as e:
            raise TLSubmodelsError(f"{where}: {k}: {e}") from None
    out["last"] = len(out.pop("clean_ids")) - 1
    out.pop("corrupt_ids")
    for p in position or []:
        if not 0 <= p <= out["last"]:
            raise TLSubmodelsError(
                f"{where}: position {p} is past the prompt's last token ({out['last']}: clean is {out['last'] + 1} "
                "tokens, its BOS included)"
                if p > 0
                else f"{where}: position {p}: positions count the prompt's tokens from 0 (its BOS)"
            )
    return out
