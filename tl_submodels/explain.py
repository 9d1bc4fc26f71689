"""Use sub-models on one prompt: which ones it uses, position by position, and what ablating them changes.

``usage`` measures, for each sub-model and each position of a prompt, how much the sub-model's
components at that position contribute to the prediction: exactly, by ablating them there
(one forward per sub-model and position), or fast, by attribution (one forward and backward:
``(activation - ablation value) . d metric / d activation``, summed over the sub-model's
components). ``explain`` reruns the prompt with each sub-model ablated and lists the top
predictions side by side, with the probability moved and the KL divergence from the full model.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, cast

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_submodels import model as tlmodel
from tl_submodels.ablation import Ablation, Ablator, Reference
from tl_submodels.components import Head, Neuron, forward_order
from tl_submodels.errors import TLSubmodelsError, renamed
from tl_submodels.inputs import Parts, ablator_for, checked_parts, looks_like_parts
from tl_submodels.submodel import SubModel
from tl_submodels.summary import MAX_ITEMS, listed, summary_html, summary_text
from tl_submodels.task import Task
from tl_submodels.values import Value, register

__all__ = ["Explanation", "Prediction", "Run", "Usage", "explain", "usage"]


@dataclass(frozen=True, kw_only=True)
class Usage(Value):
    """How much each sub-model contributes at each position of one prompt.

    ``values[i, p]``: the drop in the target token's logit at the last position when sub-model
    ``i`` is ablated at position ``p`` only (exact), or its attribution estimate. ``totals[i]``:
    the same with the sub-model ablated at every position (for attribution, the sum over positions).

    Example:
        >>> u = tls.usage(model, "IND w1 s3 s4 s5 s3 s4", parts, reference=task.corrupt)  # doctest: +SKIP
        >>> u.ranking()[0]  # doctest: +SKIP
        ('induction', 7.9)
    """

    values: Float[Tensor, "part pos"]
    totals: Float[Tensor, " part"]
    parts: list[str]
    tokens: list[str]
    target: str
    target_id: int
    method: str
    ablation: str

    def ranking(self, position: int | None = None) -> list[tuple[str, float]]:
        """Parts by contribution, largest first: at ``position`` (e.g. -1, the answer position), or in total."""
        col = self.totals if position is None else self.values[:, position]
        order = col.argsort(descending=True).tolist()
        return [(self.parts[i], float(col[i])) for i in order]

    def plot(self) -> Any:
        """A sub-model x position heat map of the contributions (plotly); see :func:`tl_submodels.viz.usage_positions`.

        Example:
            >>> tls.usage(model, prompt, parts, reference=ref).plot()  # doctest: +SKIP
        """
        from tl_submodels import viz

        return viz.usage_positions(self)

    def _summary(self) -> tuple[str, list[tuple[str, str]]]:
        return (
            f"Usage of {len(self.parts)} parts over {len(self.tokens)} positions ({self.method}, {self.ablation} ablation)",
            [
                ("prompt", listed(self.tokens, 16)),
                ("target", repr(self.target)),
                ("ranking", ", ".join(f"{n} {v:+.2f}" for n, v in self.ranking()[:5])),
                ("all", ".to_frame(); picture: .plot()"),
            ],
        )

    def __repr__(self) -> str:
        return summary_text(*self._summary())

    def _repr_html_(self) -> str:
        return summary_html(*self._summary())

    def to_frame(self) -> Any:
        """A pandas table: one row per part, one column per position (``"3:s4"``), and the total."""
        import pandas as pd

        cols = [f"{i}:{t}" for i, t in enumerate(self.tokens)]
        frame = pd.DataFrame(self.values.numpy(), index=self.parts, columns=cols)
        frame["total"] = self.totals.numpy()
        return frame


def _behaviour(
    model: Any, tokens: str | Tensor | Sequence[int] | Task, reference: Reference | None, target: int | str | None
) -> tuple[Tensor, Callable[[Tensor], Tensor], Reference | None, str, int]:
    """What usage and explain read: the prompts, the objective of a run's logits (a scalar), the
    reference for the means, and the target's label and id (-1 for a task's metric)."""
    if isinstance(tokens, Task):
        task = tokens.to(tlmodel.first_param_device(model))
        if task.d_vocab != tlmodel.model_info(model).d_vocab:
            raise TLSubmodelsError(f"task {task.name!r} was built for d_vocab={task.d_vocab}, not this model's")
        if target is not None:
            raise TLSubmodelsError("target= is for one prompt; a task's metric names its own answers")
        return (
            task.clean,
            task.metric,
            task.corrupt if reference is None else reference,
            f"{task.name} ({task.metric_name})",
            -1,
        )
    prompt = tlmodel.prompt_ids(model, tokens)
    full = tlmodel.run_logits(model, prompt)[0, -1]
    tid = int(full.argmax()) if target is None else _target(model, target)
    return prompt, lambda logits: logits[0, -1, tid], reference, tlmodel.token_words(model, torch.tensor([tid]))[0], tid


def usage(
    model: Any,
    tokens: str | Int[Tensor, " pos"] | Sequence[int] | Task | Parts,
    parts: Parts,
    *,
    method: Literal["ablation", "attribution"] = "ablation",
    ablation: Ablation = "mean",
    reference: Reference | None = None,
    target: int | str | None = None,
) -> Usage:
    """Each sub-model's contribution at each position of one prompt to the predicted token.

    Given a :class:`Task` instead of a prompt, the contribution to the task's metric over all its
    clean prompts (averaged over the examples and, for a task that reads several positions, over
    its reads); positions are labelled by the first prompt's tokens, and the means default to
    ``task.corrupt``.

    Args:
        model: a TransformerLens model in eval mode.
        tokens: the prompt, as text or token ids ``[pos]``; or a Task.
        parts: SubModels (a list, a ``{name: SubModel}`` dict, or a Factorization). The order
            ``usage(model, parts, tokens)`` of earlier versions still works, with a DeprecationWarning.
        method: ``"ablation"`` (exact: one forward per part and position) or ``"attribution"``
            (one forward and backward).
        ablation: ``"mean"`` (over ``reference``) or ``"zero"``.
        reference: prompts for the means (e.g. ``task.corrupt``, or a list of several tasks').
        target: the token whose logit is explained (default: the model's top prediction).

    Returns:
        A :class:`Usage`.

    Example:
        >>> u = tls.usage(model, prompt_ids, parts, reference=[t.corrupt for t in tasks])  # doctest: +SKIP
        >>> u.to_frame()  # doctest: +SKIP
    """
    if method not in ("ablation", "attribution"):
        raise TLSubmodelsError(f"unknown method {method!r}: choose 'ablation' or 'attribution'")
    if looks_like_parts(tokens) and not looks_like_parts(parts):
        renamed("usage(model, parts, tokens)", "usage(model, tokens, parts), as explain and trace take them")
        tokens, parts = parts, tokens
    subs = checked_parts(model, parts, ablation, "usage")
    prompt, objective, reference, label, tid = _behaviour(model, cast(Any, tokens), reference, target)
    seq = prompt.shape[1]
    ablator = ablator_for(model, ablation, reference)
    if method == "ablation":

        def value(hooks: list) -> float:
            return float(objective(tlmodel.run_logits(model, prompt, hooks)))

        base = value([])
        values = torch.zeros(len(subs), seq)
        totals = torch.zeros(len(subs))
        for i, s in enumerate(subs):
            totals[i] = base - value(ablator.hooks(s))
            for p in range(seq):
                values[i, p] = base - value(ablator.hooks([c.at(p) for c in s]))
    else:
        values = _attribution(model, subs, prompt, objective, ablator)
        totals = values.sum(1)
    return Usage(
        values=values,
        totals=totals,
        parts=[s.name for s in subs],
        tokens=tlmodel.token_words(model, prompt[0]),
        target=label,
        target_id=tid,
        method=method,
        ablation=ablation,
    )


def _target(model: Any, target: int | str) -> int:
    tid = tlmodel.single_token(model, target) if isinstance(target, str) else int(target)
    d_vocab = tlmodel.model_info(model).d_vocab
    if not 0 <= tid < d_vocab:
        raise TLSubmodelsError(f"target token {tid} is outside the vocabulary (0-{d_vocab - 1})")
    return tid


def _attribution(
    model: Any, subs: list[SubModel], prompt: Tensor, objective: Callable[[Tensor], Tensor], ablator: Ablator
) -> Tensor:
    """(activation - ablation value) . gradient of the objective, per part and position (summed over the prompts)."""
    comps = sorted({c.without_pos() for s in subs for c in s}, key=forward_order)
    sites = sorted({tlmodel.site_hook(c.kind, c.layer) for c in comps})
    ref = ablator.reference_activations({c.kind for c in comps}, sites) if ablator.refs else {}
    acts: dict[str, Tensor] = {}
    leaves: dict[str, Tensor] = {}

    def keeper(name: str) -> Any:  # by our name: TL 4 calls hooks with its own (aliased) hook names
        def keep(act: Tensor, hook: Any) -> Tensor:
            # act + a zero leaf: the leaf's gradient is the total gradient at this site, through
            # every later component (detaching here would cut the paths through later sites)
            acts[name] = act.detach()
            leaves[name] = torch.zeros_like(act, requires_grad=True)
            return act + leaves[name]

        return keep

    with torch.enable_grad():
        logits = model.run_with_hooks(prompt, fwd_hooks=[(n, keeper(n)) for n in sites])
        grads = dict(zip(sites, torch.autograd.grad(objective(logits), [leaves[n] for n in sites]), strict=True))
    out = torch.zeros(len(subs), prompt.shape[1])
    for i, s in enumerate(subs):
        for c in s:
            name = tlmodel.site_hook(c.kind, c.layer)
            a, g = acts[name], grads[name]
            base = ref[name].to(a.device, a.dtype) if name in ref else torch.zeros((), device=a.device)
            d = ((a - base) * g).sum(0)  # [pos, ...], over the prompts
            if isinstance(c, Head):
                contrib = d[:, c.head].sum(-1)
            elif isinstance(c, Neuron):
                contrib = d[:, c.neuron]
            else:
                contrib = d.sum(-1)
            if c.pos is None:
                out[i] += contrib.cpu()
            else:
                out[i, c.pos] += float(contrib[c.pos])
    return out


class Prediction(NamedTuple):
    """One of a run's top next-token predictions."""

    token: str
    prob: float


register("record:Prediction", Prediction)


@dataclass(frozen=True, kw_only=True)
class Run(Value):
    """One run of an :class:`Explanation`: the part ablated (``"full"``: none) and what the model then predicts.

    ``run["kl"]`` reads a field as the dict rows of earlier versions did.
    """

    ablated: str
    top: list[Prediction]
    p_full_top: float  # the probability of the full model's top token in this run
    moved: float  # p_full_top minus the full model's: negative when the ablation takes probability from it
    kl: float  # KL divergence from the full model's distribution (mean over the reads)
    metric: float | None = None  # the task's metric and accuracy (explain of a Task)
    accuracy: float | None = None

    def __getitem__(self, key: str) -> Any:
        if key not in self.__dataclass_fields__ or (key in ("metric", "accuracy") and getattr(self, key) is None):
            raise KeyError(key)
        return getattr(self, key)

    def __contains__(self, key: str) -> bool:
        return key in self.__dataclass_fields__ and getattr(self, key) is not None


@dataclass(frozen=True, kw_only=True)
class Explanation(Value):
    """The top next-token predictions of the full model and with each sub-model ablated.

    ``rows[0]`` is the full model; each row (a :class:`Run`) has the ablated part's name, its top-k
    ``Prediction(token, prob)``, the probability of the full model's top token, how much it moved
    (``moved``: ablated minus full, so negative when the ablation takes probability from it; the
    ``p(full top) change`` column of ``to_frame()``),
    and the KL divergence from the full model's distribution.

    Example:
        >>> ex = tls.explain(model, prompt, parts, reference=ref)  # doctest: +SKIP
        >>> print(ex)  # doctest: +SKIP
    """

    rows: list[Run]
    tokens: list[str]
    ablation: str

    def top(self, name: str = "full") -> str:
        """The top prediction of the run ``name`` ("full" or a part's name)."""
        for r in self.rows:
            if r.ablated == name:
                return r.top[0].token
        raise TLSubmodelsError(f"no run {name!r}; the runs are {[r.ablated for r in self.rows]}")

    def plot(self) -> Any:
        """The top prediction's probability in each run, with its KL (plotly); see :func:`tl_submodels.viz.explanation_bars`.

        Example:
            >>> tls.explain(model, prompt, parts, reference=ref).plot()  # doctest: +SKIP
        """
        from tl_submodels import viz

        return viz.explanation_bars(self)

    def _repr_html_(self) -> str:
        return str(self.to_frame().to_html())

    def to_frame(self) -> Any:
        import pandas as pd

        k = len(self.rows[0].top)
        return pd.DataFrame(
            [
                {
                    "ablated": r.ablated,
                    **{f"#{i + 1}": f"{t} ({p:.2f})" for i, (t, p) in enumerate(r.top[:k])},
                    "p(full top)": r.p_full_top,
                    "p(full top) change": r.moved,  # negative: the ablation took probability from it
                    "kl": r.kl,
                    **{key: r[key] for key in ("metric", "accuracy") if key in r},
                }
                for r in self.rows
            ]
        )

    def __str__(self) -> str:
        return self.to_frame().to_string(index=False)

    def __repr__(self) -> str:
        runs = [(r.ablated, r.top[0].token, r.kl) for r in self.rows]
        return summary_text(
            f"Explanation of {listed(self.tokens, 12)!r} ({self.ablation} ablation, {len(self.rows) - 1} runs ablated)",
            [(name, f"top {top!r}, KL {kl:.3f}") for name, top, kl in runs[:MAX_ITEMS]]
            + ([("...", f"{len(runs) - MAX_ITEMS} more in .to_frame()")] if len(runs) > MAX_ITEMS else []),
        )


def explain(
    model: Any,
    tokens: str | Int[Tensor, " pos"] | Sequence[int] | Task,
    parts: Parts,
    *,
    k: int = 5,
    ablation: Ablation = "mean",
    reference: Reference | None = None,
    combinations: Iterable[Iterable[str]] = (),
) -> Explanation:
    """Rerun a prompt with each sub-model (or combination) ablated; top-k predictions side by side.

    Given a :class:`Task` instead of a prompt, every run is over all its clean prompts: each row
    also has the task's ``metric`` and ``accuracy`` (averaged over the examples and, for a task
    that reads several positions, over its reads), ``kl`` is the mean over every read, and the
    top-k predictions are those at the first example's first read. The means default to
    ``task.corrupt``.

    Args:
        model: a TransformerLens model in eval mode.
        tokens: the prompt, as text or token ids ``[pos]``; or a Task.
        parts: SubModels (a list, a ``{name: SubModel}`` dict, or a Factorization).
        k: how many predictions to list.
        ablation: ``"mean"`` (over ``reference``) or ``"zero"``.
        reference: prompts for the means (e.g. ``task.corrupt``).
        combinations: extra runs ablating several parts together, by name (``[("a", "b")]``).

    Example:
        >>> ex = tls.explain(model, prompt, [backdoor], reference=task.corrupt)  # doctest: +SKIP
        >>> ex.top("full"), ex.top("backdoor")  # doctest: +SKIP
        ('HARM', 'n7')
    """
    subs = checked_parts(model, parts, ablation, "explain")
    by_name = {s.name: s for s in subs}
    runs = [(s.name, s) for s in subs]
    for combo in combinations:
        names = list(combo)
        missing = [n for n in names if n not in by_name]
        if missing:
            raise TLSubmodelsError(f"combination {names}: no part {missing}; the parts are {list(by_name)}")
        union = SubModel(components=set().union(*(by_name[n].components for n in names)), name="+".join(names))
        runs.append((union.name, union))
    vocab = tlmodel.model_info(model).d_vocab
    if not 1 <= k <= vocab:
        raise TLSubmodelsError(f"k must be in 1-{vocab}, got {k}")
    task = None
    if isinstance(tokens, Task):
        task = tokens.to(tlmodel.first_param_device(model))
        if task.d_vocab != tlmodel.model_info(model).d_vocab:
            raise TLSubmodelsError(f"task {task.name!r} was built for d_vocab={task.d_vocab}, not this model's")
        prompt, reference = task.clean, task.corrupt if reference is None else reference
    else:
        prompt = tlmodel.prompt_ids(model, tokens)
    ablator = ablator_for(model, ablation, reference)

    def read(hooks: list) -> tuple[Tensor, Tensor, dict[str, float]]:
        """Log-probabilities at every read ``[reads, d_vocab]`` (the first is shown), their weights, the task's numbers."""
        logits = tlmodel.run_logits(model, prompt, hooks)
        if task is None:
            return logits[0, -1:].float().log_softmax(-1), torch.ones(1), {}
        at = task.final_logits(logits).float().log_softmax(-1)
        flat = at.reshape(-1, at.shape[-1])  # [batch * n, d_vocab] (n = 1 for one read an example)
        w = task.reads.float()
        weight = (w / w.sum(1, keepdim=True) / task.batch).flatten().to(at.device)  # each example weighs 1/batch
        return flat, weight, {"metric": float(task.metric(logits)), "accuracy": task.accuracy(logits)}

    unablated = read([])
    full, weight, _ = unablated
    top_id = int(full[0].argmax())
    rows = []
    for name, sub in [("full", None), *runs]:
        logp, _, numbers = unablated if sub is None else read(ablator.hooks(sub))
        probs = logp[0].exp()
        top = probs.topk(k)
        kl = ((full.exp() * (full - logp)).sum(-1) * weight.to(full.device)).sum()  # mean over the reads
        rows.append(
            Run(
                ablated=name,
                top=[
                    Prediction(w, float(p))
                    for w, p in zip(tlmodel.token_words(model, top.indices.cpu()), top.values.tolist(), strict=True)
                ],
                p_full_top=float(probs[top_id]),
                moved=float(probs[top_id] - full[0, top_id].exp()),
                kl=float(kl),
                **numbers,
            )
        )
    return Explanation(rows=rows, tokens=tlmodel.token_words(model, prompt[0]), ablation=ablation)
