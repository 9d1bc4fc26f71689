"""Short summaries of results: the text ``repr`` and the notebook ``_repr_html_`` of every result object.

A result's repr says what it is, how many, and the top few, in a few lines; the full content is in
its ``.to_frame()``. Kept free of plotting imports so that printing a result stays cheap.
"""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import Any

__all__ = ["MAX_ITEMS", "listed", "summary_html", "summary_text"]

MAX_ITEMS = 8  # items a summary row lists before "... (n more)"


def listed(items: Iterable[Any], limit: int = MAX_ITEMS) -> str:
    """The first ``limit`` items joined by spaces, then how many more there are.

    Example:
        >>> listed(range(12), 3)
        '0 1 2 ... (9 more)'
    """
    items = [str(x) for x in items]
    if len(items) <= limit:
        return " ".join(items) or "(none)"
    return " ".join(items[:limit]) + f" ... ({len(items) - limit} more)"


def summary_text(title: str, rows: Sequence[tuple[str, Any]]) -> str:
    """A title line and ``key: value`` lines: the ``__repr__`` of the result objects.

    Example:
        >>> print(summary_text("Scores", [("top", "L1H0 +0.61")]))
        Scores
          top: L1H0 +0.61
    """
    return "\n".join([title, *(f"  {k}: {v}" for k, v in rows)])


def summary_html(title: str, rows: Sequence[tuple[str, Any]]) -> str:
    """A small two-column HTML table: the ``_repr_html_`` of the result objects (no scripts, works offline).

    Example:
        >>> print(summary_html("Scores", [("top", "L1H0")]))
        <div><b>Scores</b><table><tr><th style='text-align:left'>top</th><td>L1H0</td></tr></table></div>
    """
    body = "".join(
        f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
        for k, v in rows
    )
    return f"<div><b>{html.escape(title)}</b><table>{body}</table></div>"
