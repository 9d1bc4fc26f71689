"""The one exception type of tl_submodels.

Kept in its own module so every stage can raise it without importing the package root.
"""

from __future__ import annotations

import difflib
import warnings
from collections.abc import Iterable

__all__ = ["TLSubmodelsError", "did_you_mean", "renamed"]


class TLSubmodelsError(ValueError):
    """Bad input or an unsupported model, with a message that says what to do.

    Example:
        >>> import tl_submodels as tls
        >>> try:
        ...     tls.parse_component("L1X3")
        ... except tls.TLSubmodelsError as e:
        ...     print("refused")
        refused
    """


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """' Did you mean X?' for the closest candidate names, or '' when none is close."""
    close = difflib.get_close_matches(name, list(candidates), n=3, cutoff=0.6)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def renamed(old: str, new: str, *, stacklevel: int = 3) -> None:
    """Warn that ``old`` (an argument name or value) is now spelled ``new``; it keeps working for now."""
    warnings.warn(
        f"{old} is now {new} (one word per idea across tl_submodels); {old} will go",
        DeprecationWarning,
        stacklevel=stacklevel,
    )
