"""What a user hands to usage, explain, trace and the views: one prompt, a set of parts, an ablation.

Each is turned here into what the analyses run on (token ids on the model's device, a checked list
of SubModels, an Ablator), with the errors that say what was expected.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from tl_submodels import model as tlmodel
from tl_submodels.ablation import Ablation, Ablator, Reference
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.submodel import SubModel
from tl_submodels.task import Task

__all__ = ["Parts", "ablator_for", "as_parts", "checked_parts", "looks_like_parts"]

Parts = Sequence[SubModel] | Mapping[str, SubModel] | Any  # or anything with .parts (a Factorization)


def as_parts(parts: Parts) -> list[SubModel]:
    items = parts.parts if hasattr(parts, "parts") else parts
    items = list(items.values()) if isinstance(items, Mapping) else list(items)
    if not items or not all(isinstance(p, SubModel) for p in items):
        raise TLSubmodelsError(
            "parts must be a non-empty list of SubModels, a {name: SubModel} dict, or a Factorization; "
            f"got {type(parts).__name__}"
        )
    names = [p.name for p in items]
    if len(set(names)) != len(names):
        raise TLSubmodelsError(f"parts need distinct names; got {names}. Rename with part.renamed('...')")
    return items


def looks_like_parts(x: Any) -> bool:
    """Whether ``x`` is sub-models (a SubModel, a list or dict of them, a Factorization), not a prompt."""
    if isinstance(x, SubModel) or (hasattr(x, "parts") and not isinstance(x, Task)):
        return True
    items = list(x.values()) if isinstance(x, Mapping) else x if isinstance(x, list | tuple) else []
    return bool(items) and all(isinstance(p, SubModel) for p in items)


def checked_parts(model: Any, parts: Parts, ablation: str, what: str) -> list[SubModel]:
    """The checks usage and explain share: the ablation, the model, the parts against it."""
    if ablation not in ("mean", "zero"):
        raise TLSubmodelsError(f"{what} ablates with 'mean' or 'zero', got {ablation!r}")
    tlmodel.check_model(model, ())
    subs = as_parts(parts)
    for s in subs:
        s.validate(model)
    return subs


def ablator_for(model: Any, ablation: Ablation, reference: Reference | None) -> Ablator:
    if ablation in ("resample", "patch") and reference is None:
        raise TLSubmodelsError(f"ablation={ablation!r} needs reference= token ids")
    if ablation == "mean" and reference is None:
        raise TLSubmodelsError(
            "mean ablation needs reference= prompts to take the means over (e.g. task.corrupt, or a list of "
            "several tasks' prompts); or use ablation='zero'"
        )
    return Ablator(model, ablation=ablation, reference=None if ablation == "zero" else reference)
