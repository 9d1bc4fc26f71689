"""One self-contained HTML report of an analysis, readable offline.

``tls.report(model, tasks, parts=...)`` computes what a colleague needs to judge the sub-models:
the model card, each task's scores, the sub-models with their evaluations, the prompt x sub-model
usage (for a Factorization), one prompt's usage by position, the predictions with each sub-model
ablated, the attention patterns of each sub-model's heads and the circuit graph; with
``decomposition=`` also the parts :func:`tl_submodels.decompose` found on a corpus (their labels,
cores, top contexts, evaluations and usage), with or without tasks. ``.save(path)``
writes one file with plotly.js and the circuitsvis bundle inlined once each (never a CDN link), so
the file opens with no network.
"""

from __future__ import annotations

import datetime
import functools
import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import circuitsvis
import plotly.graph_objects as go
import plotly.offline
import torch
from circuitsvis.utils.render import RenderedHTML
from jaxtyping import Int
from torch import Tensor
from tqdm import tqdm

from tl_submodels import model as tlmodel
from tl_submodels import viz
from tl_submodels.ablation import Ablation
from tl_submodels.components import Head, Kind
from tl_submodels.decomposition import Decomposition, model_shape
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.task import Task, check_tasks
from tl_submodels.trace import Trace, trace

__all__ = ["TOP_CONTEXTS", "TRACE_STEPS", "Report", "report"]

_CSS = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; color: #222; }
section { border-top: 1px solid #ddd; padding-top: 0.5em; margin-top: 1.5em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: right; }
th { background: #f4f4f4; }
pre { background: #f7f7f7; padding: 0.5em; overflow-x: auto; font-size: 0.85em; }
.note { color: #555; font-size: 0.9em; }
ol.contexts code { white-space: pre; }
"""

TOP_CONTEXTS = 5  # predictions shown per part in the decomposition section
TRACE_STEPS = 8  # tokens the report generates when it traces its prompt (fewer where n_ctx ends first)


@functools.cache
def _circuitsvis_bundle() -> str:
    """The circuitsvis browser bundle that ``RenderedHTML.local_src`` inlines into every view."""
    path = Path(circuitsvis.__file__).parent / "dist" / "cdn" / "iife.js"
    return path.read_text(encoding="utf-8").replace("</script>", "")


@dataclass
class Report:
    """An HTML report: a title and sections of HTML fragments; ``.save(path)`` writes one offline file.

    Example:
        >>> rep = tls.report(model, [task], parts=[circuit])  # doctest: +SKIP
        >>> rep.save("report.html")  # doctest: +SKIP
    """

    title: str
    sections: list[tuple[str, str, str]] = field(default_factory=list)  # (id, heading, html)

    def add(self, key: str, heading: str, *blocks: Any) -> None:
        """Append a section; blocks are HTML strings, plotly figures, circuitsvis renders or DataFrames."""
        parts = []
        for block in blocks:
            if isinstance(block, go.Figure):
                parts.append(block.to_html(full_html=False, include_plotlyjs=False, config={"displaylogo": False}))
            elif isinstance(block, RenderedHTML):
                # the shared bundle is inlined once in <head>; each view keeps only its render call
                parts.append(f"<div class='cv'>{block.local_src.replace(_circuitsvis_bundle(), '')}</div>")
            elif hasattr(block, "to_html"):
                parts.append(block.to_html(index=False, float_format=lambda v: f"{v:.3f}"))
            else:
                parts.append(str(block))
        self.sections.append((key, heading, "\n".join(parts)))

    @property
    def html(self) -> str:
        """The whole document as one string."""
        toc = "".join(f"<li><a href='#{k}'>{html.escape(h)}</a></li>" for k, h, _ in self.sections)
        body = "".join(
            f"<section id='{k}' data-section='{k}'><h2>{html.escape(h)}</h2>{content}</section>"
            for k, h, content in self.sections
        )
        return (
            "<!DOCTYPE html><html><head><meta charset='utf-8'>"
            f"<title>{html.escape(self.title)}</title><style>{_CSS}</style>"
            f"<script type='text/javascript'>{plotly.offline.get_plotlyjs()}</script>"
            f"<script type='text/javascript'>{_circuitsvis_bundle()}</script>"
            f"</head><body><h1>{html.escape(self.title)}</h1><ul>{toc}</ul>{body}</body></html>"
        )

    def save(self, path: str | Path) -> Path:
        """Write the report to ``path`` (one self-contained HTML file) and return the path.

        Example:
            >>> tls.report(model, [task]).save("out/report.html")  # doctest: +SKIP
        """
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.html, encoding="utf-8")
        return path

    def _repr_html_(self) -> str:
        items = ", ".join(h for _, h, _ in self.sections)
        return viz.summary_html(f"Report: {self.title}", [("sections", items), ("open it", ".save('report.html')")])

    def __repr__(self) -> str:
        size = sum(len(body) for _, _, body in self.sections)
        return (
            f"Report({self.title!r}: {len(self.sections)} sections ({', '.join(k for k, _, _ in self.sections)}), "
            f"{size / 1e6:.1f} MB of HTML; .save('report.html') writes it)"
        )


def _card_section(model: Any, card: dict[str, Any] | str | None) -> str:
    rows = tlmodel.adapter(model).describe()
    out = viz.summary_html("Architecture", list(rows.items()))
    if isinstance(card, str):
        from tl_submodels import zoo

        card = zoo.info(card)
    if card:
        out += f"<p>{html.escape(str(card.get('description', '')))}</p>"
        tasks = card.get("tasks") or {}
        if tasks:
            task_rows = "".join(
                f"<tr><td>{html.escape(name)}</td><td>{t.get('accuracy', t.get('harm_rate', ''))}</td>"
                f"<td style='text-align:left'>{html.escape(str(t.get('description', '')))}</td></tr>"
                for name, t in tasks.items()
            )
            out += f"<table><tr><th>task</th><th>accuracy</th><th>prompts</th></tr>{task_rows}</table>"
        shown = {k: v for k, v in card.items() if k not in ("config", "words")}
        out += (
            "<details><summary>The full model card (JSON)</summary>"
            f"<pre>{html.escape(json.dumps(shown, indent=2, default=str))}</pre></details>"
        )
    return out


def _interval(ci: tuple[float, float] | None) -> str:
    return "" if ci is None else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def _decomposition_blocks(dec: Decomposition) -> list[Any]:
    """The decomposition section: the parts table, a legend of its numbers, each part's contexts, the usage map."""
    frame = dec.to_frame()
    frame.insert(3, "core size", [len(c) for c in dec.cores])
    blocks: list[Any] = [
        f"<p>{len(dec.parts)} part{'s' if len(dec.parts) != 1 else ''} of what the model does on a corpus of "
        f"{len(dec.tokens)} sequences ({len(dec.usage)} next-token predictions counted), found without any task: "
        f"{dec.method} effects of every component on every prediction, factorised; each part validated by "
        f"{dec.ablation} ablation. A part's <i>predictions</i> are those that use it most.</p>",
        frame,
        "<ul class='note'>"
        "<li><b>faithfulness</b>: with only the part kept and every other component ablated, the share of the "
        "gap between the all-ablated and the full model (mean log p of the next token on the part's predictions) "
        "that is restored; 1 is all of it, above 1 the part alone does better than the whole model, below 0 "
        "worse than ablating everything.</li>"
        "<li><b>core_necessity</b>: the share of that behaviour lost when only the core is ablated (0 to 1; 1: "
        "the part's predictions fail without the core).</li>"
        "<li><b>necessity_elsewhere</b>: the largest share any other part's predictions lose when this part is "
        "ablated (0 to 1; near 0 means the part is specific).</li>"
        "<li><b>loss_increase</b>: how much the mean loss (negative log p of the next token, in nats) rises on "
        "the part's predictions when the part is ablated; not a share, so it can exceed 1, and it is negative "
        "where ablating the part helps; <b>loss_increase_others</b>: the same on all other predictions.</li>"
        "<li><b>accuracy_drop</b>: how much top-1 accuracy falls on the part's predictions when it is ablated "
        "(-1 to 1; negative where ablating it helps); <b>accuracy_drop_others</b>: the same on all other "
        "predictions. NaN: no prediction uses the part most.</li>"
        "<li><b>_low</b>, <b>_high</b>: the ends of a 95% BCa bootstrap interval over the corpus' sequences.</li>"
        "</ul>",
    ]
    for j, (p, c, lab) in enumerate(zip(dec.parts, dec.cores, dec.labels, strict=True)):
        top = dec.top_contexts(j, TOP_CONTEXTS)
        contexts = "".join(
            f"<li><code>{html.escape(str(ctx))}</code> <span class='note'>(sequence {ctx.sequence}, position "
            f"{ctx.position}, usage {ctx.usage:.3f})</span></li>"
            for ctx in top
        )
        blocks.append(
            f"<h3>{html.escape(p.name)}</h3><p>{html.escape(lab)}</p>"
            f"<p class='note'>{len(p)} members: {html.escape(' '.join(str(x) for x in p))}<br>"
            f"core ({len(c)}): {html.escape(' '.join(str(x) for x in c))}</p>"
            f"<p>The {len(top)} predictions that use it most (tokens before <code>-&gt;</code> the next "
            f"token):</p><ol class='contexts'>{contexts}</ol>"
        )
    blocks.append(viz.decomposition_heatmap(dec))
    return blocks


def _trace_blocks(traces: list[Trace]) -> list[Any]:
    """Each trace: its prompt and decision (and, for a rerun, where it departs), the heat map, the table."""
    blocks: list[Any] = [
        "<p class='note'><b>use</b>: how much ablating the part alone lowers the log-probability of the token "
        "chosen at that step, in nats (0: the part does not matter there; negative: the part worked against "
        "that token); <b>instead</b>: the token the model would have chosen with the part ablated.</p>"
    ]
    for tr in traces:
        what = f"<p>Prompt <code>{html.escape(' '.join(tr.prompt_words))}</code> &rarr; <code>{html.escape(tr.text)}</code>"
        if tr.ablated:
            at = tr.departs_at()
            what += f" with <b>{html.escape(', '.join(tr.ablated))}</b> ablated at every step; " + (
                "the same decision as without." if at is None else f"it departs from the original at step {at}."
            )
        blocks += [what + "</p>", tr.plot(), tr.to_frame()]
    return blocks


def report(
    model: Any,
    tasks: Sequence[Task],
    *,
    parts: Any = None,
    decomposition: Decomposition | None = None,
    prompt: str | Int[Tensor, " pos"] | Sequence[int] | None = None,
    card: dict[str, Any] | str | None = None,
    ablation: Ablation = "mean",
    kinds: tuple[Kind, ...] | None = None,
    edges: bool = True,
    title: str | None = None,
    traces: Sequence[Trace] = (),
    progress: bool = False,
) -> Report:
    """Compute and lay out the whole analysis of ``model`` on ``tasks`` as an offline HTML report.

    Args:
        model: a TransformerLens model in eval mode.
        tasks: the behaviours (one or more Tasks over the model's vocabulary); may be empty when a
            ``decomposition`` is given, and the report then has only the model card and the decomposition.
        parts: sub-models to report: a Factorization (its parts, evaluations and usage are used), a list or
            ``{name: SubModel}`` dict, or a Decomposition's parts (evaluated on ``tasks`` like a list);
            default: for several tasks, :func:`tls.factorize`'s sub-models (each specific to its task,
            what a reader should see first; whole circuits mostly share the components every task
            needs), for one task its circuit from :func:`tls.find_circuit`.
        decomposition: a :class:`Decomposition` from :func:`tls.decompose` on this model: adds a section
            with each part's label, size, core, top contexts and evaluation (computed by ``decompose``,
            with its own ablation), a legend of those numbers, and the parts' usage by position.
        prompt: the prompt for usage, predictions and attention patterns; default the first clean prompt
            of the first task.
        card: a model card dict or a zoo model's name; default: only the architecture is shown.
        ablation: how sub-models are ablated in evaluations, usage and predictions (``"mean"`` over all
            tasks' clean and corrupt prompts, or ``"zero"``).
        kinds: the component kinds to score and find circuits over; default heads and MLP layers (neurons
            on request: ``("heads", "neurons")``).
        edges: draw the circuit graph's edges from :func:`tls.attribute_edges` on the first task.
        title: the report's title.
        traces: :class:`Trace` s to show (e.g. a decision and its ``rerun(ablate=[...])``); with tasks, the
            report also traces its prompt's next tokens through the sub-models.
        progress: show a tqdm bar over the steps.

    Raises:
        TLSubmodelsError: an unknown ablation, no tasks (and no decomposition), sub-models the model
            lacks, or a ``decomposition`` that is not a Decomposition of a model of this shape.

    Example:
        >>> model = tls.zoo.load("induction-2l")  # doctest: +SKIP
        >>> task = tls.zoo.task("induction-2l", "induction")  # doctest: +SKIP
        >>> tls.report(model, [task], card="induction-2l").save("report.html")  # doctest: +SKIP
        >>> dec = tls.decompose(model, tls.zoo.corpus("induction-2l", n=16), method="ablation")  # doctest: +SKIP
        >>> tls.report(model, [], decomposition=dec, card="induction-2l").save("parts.html")  # doctest: +SKIP
    """
    from tl_submodels.discovery import find_circuit
    from tl_submodels.edges import attribute_edges
    from tl_submodels.evaluate import evaluate
    from tl_submodels.explain import explain, usage
    from tl_submodels.factorize import Factorization, factorize
    from tl_submodels.inputs import as_parts
    from tl_submodels.patching import patch

    if ablation not in ("mean", "zero"):
        raise TLSubmodelsError(f"report ablates with 'mean' or 'zero', got {ablation!r}")
    info = tlmodel.check_model(model, ())
    traces = list(traces)
    if any(not isinstance(t, Trace) for t in traces):
        raise TLSubmodelsError(
            f"traces= takes Trace objects from tls.trace(...) (or their .rerun); got {[type(t).__name__ for t in traces]}"
        )
    if decomposition is not None:
        if not isinstance(decomposition, Decomposition):
            raise TLSubmodelsError(
                "decomposition= takes a Decomposition from tls.decompose(model, corpus); got "
                f"{type(decomposition).__name__}. Pass a Factorization or a list of SubModels as parts= instead"
            )
        shape = model_shape(model)
        if decomposition.model_shape and decomposition.model_shape != shape:
            raise TLSubmodelsError(
                f"the decomposition was computed on a model of shape {decomposition.model_shape}, but this model "
                f"is {shape}; pass the model it was computed on"
            )
        for part in decomposition.parts:
            part.validate(model)
        if not tasks:
            if parts is not None or prompt is not None:
                raise TLSubmodelsError(
                    "parts= and prompt= are reported on tasks, and no tasks were given; give tasks, or leave "
                    "them out to report only the decomposition"
                )
            return _decomposition_report(model, decomposition, card, title, traces)
    tasks = check_tasks(tasks, info.d_vocab)
    kinds = kinds or tuple(k for k in ("heads", "mlps") if k in info.kinds())
    reference = [t for task in tasks for t in (task.clean, task.corrupt)] if ablation == "mean" else None
    factorization = parts if isinstance(parts, Factorization) else None
    steps = tqdm(total=6 if decomposition is None else 7, desc="report", disable=not progress)

    rep = Report(
        title=title or f"tl_submodels report: {_model_name(model, card)} on {', '.join(t.name for t in tasks)}"
    )
    rep.add("card", "Model", _card_section(model, card))
    if decomposition is not None:
        rep.add("decomposition", _decomposition_heading(decomposition), *_decomposition_blocks(decomposition))
        steps.update()

    all_scores = []
    blocks: list[Any] = []
    for task in tasks:
        scores = patch(model, task, kinds=kinds)
        all_scores.append(scores)
        blocks += [f"<h3>{html.escape(task.name)}</h3>", scores.plot()]
        if scores.mlps is not None:
            blocks.append(viz.mlp_bars(scores))
        top = ", ".join(f"{c} {v:+.2f}" for c, v in scores.top(8))
        blocks.append(f"<p class='note'>Top components: {html.escape(top)}</p>")
    rep.add("scores", "Scores (exact activation patching, denoising)", *blocks)
    steps.update()

    if parts is None and len(tasks) > 1:  # specific sub-models: what a reader should see first
        factorization = factorize(model, tasks, ablation=ablation, reference=reference)
        how = (
            "The sub-models are tls.factorize's: each prompt's per-component effects, factored across the tasks "
            "and each factor grown into a whole sub-model while its ablation stays specific to its own task."
        )
    elif parts is None:
        how = (
            "The sub-model is tls.find_circuit's circuit of the task: the fewest components, by patching score, "
            "that keep 0.9 of the metric with everything else ablated (pass parts= to report your own)."
        )
    else:
        how = "The sub-models are the ones given to the report (parts=)."
    if factorization is not None:
        subs = list(factorization.parts)
    elif parts is None:
        subs = [
            find_circuit(model, t, ablation=ablation, kinds=kinds, scores=s, name=t.name)
            for t, s in zip(tasks, all_scores, strict=True)
        ]
    else:
        subs = as_parts(parts)
    for s in subs:
        s.validate(model)
    steps.update()

    if factorization is not None:
        evaluations = list(factorization.evaluations)
    else:
        by_name = {t.name: t for t in tasks}
        evaluations = []
        for s in subs:
            own = by_name.get(s.name, tasks[0])
            others = [t for t in tasks if t is not own]
            evaluations.append(evaluate(model, s, own, ablation=ablation, reference=reference, others=others))
    table = [
        {
            "sub-model": s.name,
            "size": len(s),
            "task": ev.task,
            "faithfulness": ev.faithfulness,
            "faithfulness 95%": _interval(ev.faithfulness_ci),
            "necessity": ev.necessity,
            "necessity 95%": _interval(ev.necessity_ci),
            "accuracy drop": ev.accuracy_full - ev.accuracy_ablated,
            "largest drop elsewhere": max((ev.accuracy_drop_elsewhere or {}).values(), default=0.0),
            "components": " ".join(str(c) for c in sorted(s)),
        }
        for s, ev in zip(subs, evaluations, strict=True)
    ]
    import pandas as pd

    sub_blocks: list[Any] = [
        f"<p>{html.escape(how)}</p>",
        pd.DataFrame(table),
        "<ul class='note'>"
        "<li><b>faithfulness</b>: with only the sub-model kept (every other component ablated), the share of the "
        "task's metric, above the all-ablated baseline, that remains; above 1 the sub-model alone does better than "
        "the whole model.</li>"
        "<li><b>necessity</b>: the share lost when only the sub-model is ablated (above 1: more than ablating "
        "everything).</li>"
        "<li><b>95%</b>: a BCa bootstrap interval over the task's prompts (the error bars below): where another "
        "sample of prompts like these would put the value.</li>"
        "<li><b>accuracy drop</b> and <b>largest drop elsewhere</b>: top-1 accuracy lost on its own task and on "
        "the worst other task when it is ablated. Read them together: a sub-model that is faithful and necessary "
        "but also has a large drop elsewhere holds components every task needs (shared machinery), not a "
        "sub-model of its task alone.</li></ul>",
        viz.evaluation_bars(evaluations),
    ]
    if len(subs) > 1:
        sub_blocks += [viz.membership(subs), viz.overlap(subs)]
    if factorization is not None:
        sub_blocks.append(viz.usage_heatmap(factorization))
    rep.add("submodels", f"Sub-models ({ablation} ablation)", *sub_blocks)
    steps.update()

    ids = tasks[0].clean[0] if prompt is None else prompt
    u = usage(model, ids, subs, ablation=ablation, reference=reference)
    ex = explain(model, ids, subs, ablation=ablation, reference=reference)
    rep.add(
        "usage",
        "One prompt: sub-model usage by position, and the prediction with each ablated",
        f"<p>Prompt: <code>{html.escape(' '.join(u.tokens))}</code></p>",
        viz.usage_positions(u),
        viz.usage_tokens(u),
        ex.to_frame(),
        viz.explanation_bars(ex),
    )
    prompt_ids = torch.as_tensor(tlmodel.tokenize(model, ids) if isinstance(ids, str) else ids)
    new_tokens = max(0, min(TRACE_STEPS, info.n_ctx - prompt_ids.shape[-1] + 1))
    prompt_trace = trace(model, prompt_ids, subs, max_new_tokens=new_tokens, ablation=ablation, reference=reference)
    rep.add("trace", "Step by step: the sub-models each generated token uses", *_trace_blocks([prompt_trace, *traces]))
    steps.update()

    attention: list[Any] = []
    for s in subs:
        if any(isinstance(c, Head) for c in s):
            attention += [f"<h3>{html.escape(s.name)}</h3>", viz.attention_patterns(model, ids, s)]
    if not attention:
        attention = ["<p class='note'>No sub-model has attention heads.</p>"]
    rep.add("attention", "Attention patterns of each sub-model's heads on the prompt", *attention)
    steps.update()

    graph_edges = attribute_edges(model, tasks[0]) if edges else None
    note = f"Edges: attribution patching on {tasks[0].name}." if edges else "Node-only graph."
    rep.add(
        "graph",
        "Circuit graph",
        viz.circuit_graph(subs, scores=all_scores[0], edges=graph_edges),
        f"<p class='note'>{note}</p>",
    )
    steps.update()
    steps.close()
    _add_about(rep)
    return rep


def _model_name(model: Any, card: dict[str, Any] | str | None) -> str:
    """What the title calls the model: the card's name, else the config's model name, else its class."""
    if isinstance(card, str):
        return card
    if isinstance(card, dict) and card.get("name"):
        return str(card["name"])
    name = getattr(getattr(model, "cfg", None), "model_name", None)
    return str(name) if name and name != "custom" else tlmodel.adapter(model).source


def _decomposition_heading(dec: Decomposition) -> str:
    return f"Parts found on a corpus without tasks (tls.decompose: {dec.method} effects, {dec.ablation} ablation)"


def _decomposition_report(
    model: Any, dec: Decomposition, card: dict[str, Any] | str | None, title: str | None, traces: list[Trace]
) -> Report:
    """The report of a decomposition alone: the model card, the decomposition, the traces given, the versions."""
    rep = Report(title=title or f"tl_submodels report: {_model_name(model, card)}, {len(dec.parts)} parts of a corpus")
    rep.add("card", "Model", _card_section(model, card))
    rep.add("decomposition", _decomposition_heading(dec), *_decomposition_blocks(dec))
    if traces:
        rep.add("trace", "Step by step: the parts each generated token uses", *_trace_blocks(traces))
    _add_about(rep)
    return rep


def _add_about(rep: Report) -> None:
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    from tl_submodels.version import __version__

    rep.add("about", "About", f"<p class='note'>tl_submodels {__version__}, torch {torch.__version__}, {stamp}.</p>")
