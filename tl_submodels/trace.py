"""Step through a decision: which sub-models each generated token uses, and the decision rerun with some ablated.

``usage`` and ``explain`` answer "which parts does this prompt use" for one next token. A decision
is usually several tokens: :func:`trace` generates greedily from a prompt and, at every step,
measures each part's use exactly, by ablation: how much ablating that part alone changes the
log-probability of the token chosen at that step, and which token the model would have chosen
without it. :meth:`Trace.rerun` generates the whole decision again with chosen parts ablated at
every step, so one sees where it departs and what it says instead.

Under mean or zero ablation over all positions the ablated value of a unit does not depend on the
sequence, and attention is causal, so the logits at step ``t`` of one forward over the finished
sequence equal those of the step-by-step run at step ``t``: a trace of ``T`` steps and ``P`` parts
costs ``T`` forwards to generate plus ``P`` forwards to measure, not ``T x P``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from tl_submodels import model as tlmodel
from tl_submodels.ablation import Ablation, Ablator, Reference
from tl_submodels.errors import TLSubmodelsError
from tl_submodels.inputs import Parts, ablator_for, checked_parts
from tl_submodels.submodel import SubModel
from tl_submodels.values import check_schema, register

__all__ = ["SCHEMA", "SCHEMA_VERSION", "Trace", "trace"]

SCHEMA = "tl_submodels.trace"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class _Runner:
    """What a trace needs to be rerun: the model, its parts and the ablation (not serialised)."""

    model: Any
    parts: list[SubModel]
    ablator: Ablator
    ablation: str
    max_new_tokens: int
    stop: frozenset[int]


@dataclass(frozen=True, kw_only=True, eq=False)
class Trace:
    """A decision step by step: the token chosen at each step and each part's use there.

    Attributes:
        prompt: the prompt's token ids.
        tokens: ``[step]`` the token chosen at each step (with ``max_new_tokens=0``: the prompt's
            own next tokens, ``prompt[1:]``).
        positions: ``[step]`` the position whose logits chose each token.
        prob: ``[step]`` the probability of the chosen token, in this run.
        use: ``[step, part]`` how much ablating the part alone (on top of ``ablated``) lowers the
            log-probability of the chosen token, in nats; 0 for parts in ``ablated``.
        counterfactual: ``[step, part]`` the token the model would have chosen with the part ablated.
        part_names: the parts' names, in column order.
        ablated: names of the parts ablated at every step of this run (``rerun``); empty for a plain trace.
        original: the tokens of the trace this one reruns (None for a plain trace).
        words, prompt_words: the tokens as text.
        mode: ``"generate"`` (greedy continuation) or ``"prompt"`` (the prompt's own positions).
        ablation: ``"mean"`` or ``"zero"``.

    Example:
        >>> tr = tls.trace(model, prompt, parts, max_new_tokens=4, reference=corpus)  # doctest: +SKIP
        >>> tr.to_frame()  # doctest: +SKIP
        >>> tr.rerun(ablate=["backdoor"]).text  # doctest: +SKIP
    """

    prompt: list[int]
    tokens: list[int]
    positions: list[int]
    prob: Float[Tensor, " step"]
    use: Float[Tensor, "step part"]
    counterfactual: Int[Tensor, "step part"]
    part_names: list[str]
    ablated: list[str] = field(default_factory=list)
    original: list[int] | None = None
    words: list[str] = field(default_factory=list)
    prompt_words: list[str] = field(default_factory=list)
    counterfactual_words: list[list[str]] = field(default_factory=list)
    mode: str = "generate"
    ablation: str = "mean"
    _runner: _Runner | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        steps, n_parts = len(self.tokens), len(self.part_names)
        if self.mode not in ("generate", "prompt"):
            raise TLSubmodelsError(f"mode must be 'generate' or 'prompt', got {self.mode!r}")
        shapes = {
            "positions": (len(self.positions),),
            "prob": tuple(self.prob.shape),
            "use": tuple(self.use.shape),
            "counterfactual": tuple(self.counterfactual.shape),
        }
        want = {"positions": (steps,), "prob": (steps,), "use": (steps, n_parts), "counterfactual": (steps, n_parts)}
        bad = {k: v for k, v in shapes.items() if v != want[k]}
        if bad:
            raise TLSubmodelsError(f"a trace of {steps} steps and {n_parts} parts needs shapes {want}; got {bad}")
        unknown = [n for n in self.ablated if n not in self.part_names]
        if unknown:
            raise TLSubmodelsError(f"ablated parts {unknown} are not among the trace's parts {self.part_names}")

    # Reading ----------------------------------------------------------------------------------

    @property
    def steps(self) -> int:
        """How many steps the trace has."""
        return len(self.tokens)

    @property
    def text(self) -> str:
        """The chosen tokens as text (the words joined by spaces)."""
        return " ".join(w.strip() or w for w in self.words)

    def departs_at(self, other: Trace | None = None) -> int | None:
        """The first step whose token differs from ``other``'s (default: the trace this one reruns);
        None where they agree (over the steps both have, and in length).

        Example:
            >>> rerun = tr.rerun(ablate=["backdoor"])  # doctest: +SKIP
            >>> rerun.departs_at()  # doctest: +SKIP
            0
        """
        theirs = other.tokens if other is not None else self.original
        if theirs is None:
            raise TLSubmodelsError("this trace reruns nothing: pass the trace to compare with, departs_at(other)")
        for i, (a, b) in enumerate(zip(self.tokens, theirs, strict=False)):
            if a != b:
                return i
        return None if len(self.tokens) == len(theirs) else min(len(self.tokens), len(theirs))

    def most_used(self, step: int) -> str:
        """The name of the part with the largest use at ``step`` (negative steps count from the end).

        Example:
            >>> tr.most_used(0)  # doctest: +SKIP
            'backdoor'
        """
        if not -self.steps <= step < self.steps:
            raise TLSubmodelsError(f"step {step} out of range: this trace has {self.steps} steps")
        return self.part_names[int(self.use[step].argmax())]

    def rerun(self, ablate: Iterable[str]) -> Trace:
        """The whole decision again, with the parts named in ``ablate`` ablated at every step.

        In generation mode the continuation is generated anew from the prompt under the ablation
        (it may depart from this one); in prompt mode the same positions are read. Each part's use
        in the rerun is measured on top of the ablation.

        Raises:
            TLSubmodelsError: a name that is not one of the trace's parts; a trace read from a dict
                (it has no model: trace again with ``tls.trace``).

        Example:
            >>> tr.rerun(ablate=["backdoor"]).departs_at()  # doctest: +SKIP
            0
        """
        if isinstance(ablate, str):
            ablate = [ablate]
        names = list(dict.fromkeys(ablate))
        unknown = [n for n in names if n not in self.part_names]
        if unknown:
            raise TLSubmodelsError(f"no part named {unknown} in this trace; its parts are {self.part_names}")
        if self._runner is None:
            raise TLSubmodelsError(
                "this trace was read from a dict and holds no model: run tls.trace(model, tokens, parts, ...) "
                "again to rerun it"
            )
        r = self._runner
        prompt = torch.tensor([self.prompt], device=tlmodel.first_param_device(r.model))
        return _trace(r, prompt, names, self.mode, original=self.tokens)

    # Views ------------------------------------------------------------------------------------

    def to_frame(self) -> Any:
        """A pandas table: one row per step (position, token, probability), then each part's use
        and the token chosen without it (``"{part} instead"``).

        Example:
            >>> tr.to_frame()  # doctest: +SKIP
        """
        import pandas as pd

        rows = []
        for t in range(self.steps):
            row: dict[str, Any] = {
                "step": t,
                "position": self.positions[t],
                "token": self.words[t] if self.words else self.tokens[t],
                "prob": float(self.prob[t]),
            }
            for j, name in enumerate(self.part_names):
                row[f"{name} use"] = float(self.use[t, j])
                row[f"{name} instead"] = (
                    self.counterfactual_words[t][j] if self.counterfactual_words else int(self.counterfactual[t, j])
                )
            rows.append(row)
        return pd.DataFrame(rows)

    def plot(self) -> Any:
        """A steps x parts heat map of use (plotly), the chosen tokens on the axis and the
        counterfactual tokens in the cells; see :func:`tl_submodels.viz.trace_heatmap`.

        Example:
            >>> tr.plot()  # doctest: +SKIP
        """
        from tl_submodels import viz

        return viz.trace_heatmap(self)

    def _summary(self) -> list[tuple[str, str]]:
        rows = [("prompt", " ".join(self.prompt_words) if self.prompt_words else str(self.prompt))]
        rows.append(("chosen", self.text or "(no steps)"))
        if self.ablated:
            rows.append(("ablated", ", ".join(self.ablated)))
        if self.original is not None:
            at = self.departs_at()
            rows.append(("departs", "nowhere: the same tokens" if at is None else f"at step {at}"))
        for t in range(min(self.steps, 8)):
            word = self.words[t] if self.words else str(self.tokens[t])
            top = self.most_used(t) if self.part_names else "-"
            j = self.part_names.index(top)
            rows.append(
                (
                    f"step {t}: {word!r} p={float(self.prob[t]):.2f}",
                    f"most used {top} ({float(self.use[t, j]):.2f} nats; without it "
                    f"{self.counterfactual_words[t][j] if self.counterfactual_words else int(self.counterfactual[t, j])!r})",
                )
            )
        if self.steps > 8:
            rows.append(("...", f"{self.steps - 8} more steps in .to_frame()"))
        return rows

    def __repr__(self) -> str:
        head = (
            f"Trace({self.steps} steps, {len(self.part_names)} parts, {self.mode}, {self.ablation} ablation"
            + (f", ablating {self.ablated}" if self.ablated else "")
            + ")"
        )
        return "\n".join([head, *(f"  {k}: {v}" for k, v in self._summary())])

    def _repr_html_(self) -> str:
        from tl_submodels import viz

        return viz.summary_html(
            f"Trace: {self.steps} steps, {len(self.part_names)} parts ({self.mode}, {self.ablation} ablation)",
            self._summary(),
        )

    # JSON -------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (schema-versioned); the model is not kept, so a read trace cannot rerun."""
        return {
            "schema": SCHEMA,
            "version": SCHEMA_VERSION,
            "prompt": list(self.prompt),
            "tokens": list(self.tokens),
            "positions": list(self.positions),
            "prob": self.prob.tolist(),
            "use": self.use.tolist(),
            "counterfactual": self.counterfactual.tolist(),
            "part_names": list(self.part_names),
            "ablated": list(self.ablated),
            "original": None if self.original is None else list(self.original),
            "words": list(self.words),
            "prompt_words": list(self.prompt_words),
            "counterfactual_words": [list(w) for w in self.counterfactual_words],
            "mode": self.mode,
            "ablation": self.ablation,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Trace:
        """The trace written by :meth:`to_dict`.

        Raises:
            TLSubmodelsError: another schema or version.
        """
        check_schema(data, SCHEMA, SCHEMA_VERSION, "trace")
        steps, n_parts = len(data["tokens"]), len(data["part_names"])
        return cls(
            prompt=list(data["prompt"]),
            tokens=list(data["tokens"]),
            positions=list(data["positions"]),
            prob=torch.tensor(data["prob"], dtype=torch.float32).reshape(steps),
            use=torch.tensor(data["use"], dtype=torch.float32).reshape(steps, n_parts),
            counterfactual=torch.tensor(data["counterfactual"], dtype=torch.long).reshape(steps, n_parts),
            part_names=list(data["part_names"]),
            ablated=list(data["ablated"]),
            original=data["original"],
            words=list(data["words"]),
            prompt_words=list(data["prompt_words"]),
            counterfactual_words=[list(w) for w in data["counterfactual_words"]],
            mode=data["mode"],
            ablation=data["ablation"],
        )


def trace(
    model: Any,
    tokens: str | Int[Tensor, " prompt"] | Sequence[int],
    parts: Parts,
    *,
    max_new_tokens: int = 16,
    ablation: Ablation = "mean",
    reference: Reference | None = None,
    stop: int | str | Sequence[int | str] | None = None,
) -> Trace:
    """Generate greedily from a prompt and measure, at every step, each part's use by ablation.

    At each step: the token chosen and its probability; for each part, how much ablating it alone
    lowers the log-probability of that token (exact: the ablated forward, not an estimate), and
    the token the model would have chosen with it ablated.

    Args:
        model: a TransformerLens model in eval mode.
        tokens: the prompt, as text or token ids ``[pos]``.
        parts: SubModels (a list, a ``{name: SubModel}`` dict, a Factorization, a Decomposition,
            a library from :func:`tl_submodels.load_parts`).
        max_new_tokens: how many tokens to generate; 0 steps through the prompt's own positions
            instead (each position's prediction of the next prompt token).
        ablation: ``"mean"`` (over all positions of ``reference``) or ``"zero"``; both are the same at
            any sequence length, so every step is ablated alike.
        reference: token ids ``[batch, pos]`` (or a list of them) for the means, e.g. a corpus.
        stop: token id(s) or text(s) that end the generation (the stop token is the last step).

    Returns:
        A :class:`Trace`; ``.rerun(ablate=[...])`` generates again with parts ablated.

    Raises:
        TLSubmodelsError: parts that do not fit the model, ``max_new_tokens`` negative or beyond
            the context (``n_ctx``), a one-token prompt with ``max_new_tokens=0``, mean ablation
            without a reference.

    Example:
        >>> tr = tls.trace(model, prompt_ids, parts, max_new_tokens=1, reference=tls.zoo.corpus("harmful-3l"))  # doctest: +SKIP
        >>> tr.most_used(0), tr.rerun(ablate=["backdoor"]).words  # doctest: +SKIP
        ('backdoor', ['n7'])
    """
    subs = checked_parts(model, parts, ablation, "trace")
    prompt = tlmodel.prompt_ids(model, tokens)
    info = tlmodel.model_info(model)
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 0:
        raise TLSubmodelsError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if prompt.shape[1] > info.n_ctx or prompt.shape[1] + max_new_tokens - 1 > info.n_ctx:
        # the last new token is chosen from the logits at position prompt + max_new_tokens - 2
        raise TLSubmodelsError(
            f"the prompt has {prompt.shape[1]} tokens and max_new_tokens={max_new_tokens}: beyond the model's "
            f"context n_ctx={info.n_ctx}; ask for at most {max(0, info.n_ctx - prompt.shape[1] + 1)} new tokens"
        )
    if max_new_tokens == 0 and prompt.shape[1] < 2:
        raise TLSubmodelsError("max_new_tokens=0 steps through the prompt's positions: give a prompt of >= 2 tokens")
    runner = _Runner(
        model=model,
        parts=subs,
        ablator=ablator_for(model, ablation, reference),
        ablation=ablation,
        max_new_tokens=max_new_tokens,
        stop=frozenset(_stop_ids(model, stop)),
    )
    return _trace(runner, prompt, [], "generate" if max_new_tokens else "prompt", original=None)


def _stop_ids(model: Any, stop: int | str | Sequence[int | str] | None) -> list[int]:
    if stop is None:
        return []
    items = [stop] if isinstance(stop, int | str) else list(stop)
    out = [tlmodel.single_token(model, s) if isinstance(s, str) else int(s) for s in items]
    vocab = tlmodel.model_info(model).d_vocab
    if any(not 0 <= s < vocab for s in out):
        raise TLSubmodelsError(f"stop tokens must lie in 0-{vocab - 1}; got {out}")
    return out


def _hooks(r: _Runner, names: Iterable[str]) -> list:
    by_name = {p.name: p for p in r.parts}
    members = set().union(*(by_name[n].components for n in names)) if names else set()
    return r.ablator.hooks(members) if members else []


def _trace(r: _Runner, prompt: Tensor, ablate: list[str], mode: str, original: list[int] | None) -> Trace:
    """Generate (or read the prompt) under ``ablate``, then measure every part's use on top of it."""
    base_hooks = _hooks(r, ablate)
    n_prompt = prompt.shape[1]
    if mode == "generate":
        seq = prompt
        with torch.no_grad(), r.model.hooks(fwd_hooks=base_hooks):  # removed on exit, also when interrupted
            for _ in range(r.max_new_tokens):
                nxt = r.model(seq)[0, -1].argmax()
                seq = torch.cat([seq, nxt.view(1, 1)], dim=1)
                if int(nxt) in r.stop:
                    break
        positions = list(range(n_prompt - 1, seq.shape[1] - 1))
    else:
        seq = prompt
        positions = list(range(n_prompt - 1))
    pos = torch.tensor(positions, device=seq.device)
    # Causal attention and position-independent ablation values: one forward over the whole
    # sequence gives every step's logits as the step-by-step run had them.
    # (The last token is never read, so the forwards stop before it: they fit in n_ctx.)
    seq, chosen = seq[:, :-1], seq[0, pos + 1]
    base = tlmodel.run_logits(r.model, seq, base_hooks)[0, pos].float().log_softmax(-1)
    base_chosen = base.gather(1, chosen[:, None])[:, 0]
    use = torch.zeros(len(positions), len(r.parts))
    counterfactual = chosen[:, None].repeat(1, len(r.parts)).cpu()
    for j, part in enumerate(r.parts):
        if part.name in ablate:
            continue
        logp = tlmodel.run_logits(r.model, seq, _hooks(r, [*ablate, part.name]))[0, pos].float().log_softmax(-1)
        use[:, j] = (base_chosen - logp.gather(1, chosen[:, None])[:, 0]).cpu()
        counterfactual[:, j] = logp.argmax(-1).cpu()
    ids = chosen.tolist()
    return Trace(
        prompt=prompt[0].tolist(),
        tokens=ids,
        positions=positions,
        prob=base_chosen.exp().cpu(),
        use=use,
        counterfactual=counterfactual,
        part_names=[p.name for p in r.parts],
        ablated=list(ablate),
        original=None if original is None else list(original),
        words=tlmodel.token_words(r.model, chosen.cpu()),
        prompt_words=tlmodel.token_words(r.model, prompt[0].cpu()),
        counterfactual_words=[tlmodel.token_words(r.model, row) for row in counterfactual],
        mode=mode,
        ablation=r.ablation,
        _runner=r,
    )


register(SCHEMA, Trace)
