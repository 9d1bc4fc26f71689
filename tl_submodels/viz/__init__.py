"""Pictures of everything the package computes: plotly charts and circuitsvis views.

Every function returns a figure (``plotly.graph_objects.Figure``) or a circuitsvis render
object and never displays it: the last expression of a notebook cell shows it, ``fig.write_html``
saves it, and :func:`tl_submodels.report` puts it in an offline HTML file. plotly and circuitsvis
are imported only here.

Example:
    >>> scores = tls.patch(model, task)  # doctest: +SKIP
    >>> tls.viz.scores_heatmap(scores)  # or scores.plot()  # doctest: +SKIP
"""

from tl_submodels.viz.charts import (
    decomposition_heatmap,
    diff_heatmap,
    evaluation_bars,
    explanation_bars,
    membership,
    mlp_bars,
    neuron_strips,
    overlap,
    plot_scores,
    plot_usage,
    scores_heatmap,
    trace_heatmap,
    usage_heatmap,
    usage_positions,
)
from tl_submodels.viz.graph import circuit_graph, plot_submodel
from tl_submodels.viz.style import PALETTE, summary_html
from tl_submodels.viz.views import attention_patterns, usage_tokens

__all__ = [
    "PALETTE",
    "attention_patterns",
    "circuit_graph",
    "decomposition_heatmap",
    "diff_heatmap",
    "evaluation_bars",
    "explanation_bars",
    "membership",
    "mlp_bars",
    "neuron_strips",
    "overlap",
    "plot_scores",
    "plot_submodel",
    "plot_usage",
    "scores_heatmap",
    "summary_html",
    "trace_heatmap",
    "usage_heatmap",
    "usage_positions",
    "usage_tokens",
]
