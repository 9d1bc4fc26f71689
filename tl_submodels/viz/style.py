"""What every picture shares: colours, the figure frame, input checks and the HTML summary table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import plotly.graph_objects as go
import torch
from torch import Tensor

from tl_submodels.errors import TLSubmodelsError
from tl_submodels.summary import summary_html

__all__ = ["PALETTE", "summary_html"]  # summary_html lives in tl_submodels.summary (no plotting import)

# Colour-blind-safe qualitative palette (Okabe-Ito) for sub-models; shared nodes are grey.
PALETTE = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#D55E00", "#56B4E9", "#F0E442", "#000000"]
SHARED = "#999999"
DIVERGING = "RdBu"


def figure(title: str, **layout: Any) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, template="plotly_white", margin={"l": 60, "r": 20, "t": 50, "b": 50}, **layout)
    return fig


def to_numpy(t: Tensor) -> Any:
    return t.detach().float().cpu().numpy()


def diverging_heatmap(z: Tensor, x: list, y: list, hover: str, label: str | None = "score") -> go.Heatmap:
    """A heat map of signed values centred on 0, symmetric about it (NaN, i.e. not scored, left blank)."""
    bound = float(torch.nan_to_num(z.abs(), nan=0.0).max()) or 1.0
    return go.Heatmap(
        z=to_numpy(z), x=x, y=y, colorscale=DIVERGING, zmid=0.0, zmin=-bound, zmax=bound,
        colorbar={"title": label} if label else None, showscale=label is not None, hovertemplate=hover,
    )  # fmt: skip


def need_scores(scores: Any, kind: str) -> Tensor:
    t = getattr(scores, kind, None)
    if t is None:
        raise TLSubmodelsError(
            f"these scores have no {kind} (kinds scored: {list(scores.kinds)}); score them with kinds=(..., {kind!r})"
        )
    return t


def _is_submodel(x: Any) -> bool:
    """A SubModel, recognised by what it has (viz imports no result module: they import viz for .plot())."""
    return hasattr(x, "components") and hasattr(x, "name") and hasattr(x, "validate")


def as_submodels(parts: Any) -> list[Any]:
    """The SubModels in ``parts``: one SubModel, a list or dict of them, or anything with ``.parts``."""
    if _is_submodel(parts):
        return [parts]
    items = parts.parts if hasattr(parts, "parts") else parts
    items = list(items.values()) if isinstance(items, Mapping) else list(items)
    if not items or not all(_is_submodel(p) for p in items):
        raise TLSubmodelsError(
            f"expected a SubModel, a list or dict of SubModels, or a Factorization; got {type(parts).__name__}"
        )
    return items
