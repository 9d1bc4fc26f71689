"""What the CLI prints beside its tables: a legend of each number, a note where a value leaves [0, 1],
and what was found, in words (checked against a zoo model's card where the card names the circuit).
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DIFF_LEGEND",
    "ESTIMATE_LEGEND",
    "EVALUATION_LEGEND",
    "FACTORIZE_LEGEND",
    "SCORE_LEGEND",
    "frame_interval",
    "in_words",
    "outside_unit_notes",
    "with_interval",
]


def with_interval(value: float, interval: tuple[float, float] | None, spec: str = ".2f") -> str:
    """A value for a table cell, with its interval in brackets where it has one.

    Example:
        >>> with_interval(0.912, (0.88, 0.94))
        '0.91 [0.88, 0.94]'
    """
    cell = format(value, spec)
    return cell if interval is None else f"{cell} [{format(interval[0], spec)}, {format(interval[1], spec)}]"


def frame_interval(row: dict[str, Any], name: str, spec: str = ".2f") -> str:
    """:func:`with_interval` of a ``to_frame`` row's ``name`` and its ``name_low``/``name_high`` columns.

    Example:
        >>> frame_interval({"faithfulness": 0.9, "faithfulness_low": 0.85, "faithfulness_high": 0.93}, "faithfulness")
        '0.90 [0.85, 0.93]'
    """
    low, high = row.get(f"{name}_low"), row.get(f"{name}_high")
    if low is None or high is None or low != low or high != high:  # NaN: no interval
        return with_interval(row[name], None, spec)
    return with_interval(row[name], (float(low), float(high)), spec)


SCORE_LEGEND = (
    "score: the share of the clean-corrupt metric gap restored when only this component's clean activation is "
    "patched into the corrupt run (1: all of it; below 0 or above 1 where components interact); raw metric: the "
    "metric of that patched run"
)
ESTIMATE_LEGEND = (
    "score: the gradient estimate (AtP or integrated gradients) of the share of the clean-corrupt metric gap that "
    "patching the component restores; exact patching (--method patch) measures it"
)
FACTORIZE_LEGEND = (
    "size: members of the part (core: its necessary members); faithfulness: the share of its task's metric kept "
    "with only the part; necessity: the share lost ablating it; accuracy drop: on its task, and the largest on any "
    "other task (near 0: the part is specific)"
)
DIFF_LEGEND = (
    "effect b - a: how much more the component's ablation moves the task's metric in model b than in a (metric "
    "units); / task gap: the same over the task's clean-corrupt gap, the value the rows are ranked by"
)
EVALUATION_LEGEND = (
    "faithfulness: the share of the metric (above the all-ablated baseline) kept when only the circuit runs; "
    "necessity: the share lost when the circuit alone is ablated; accuracy: top-1 on the task's clean prompts with "
    "the whole model, only the circuit kept, and the circuit ablated"
)


def outside_unit_notes(ev: Any) -> list[str]:
    """A sentence for each of faithfulness and necessity that lies outside [0, 1], saying what it means.

    Example:
        >>> outside_unit_notes(tls.evaluate(model, circuit, task))  # doctest: +SKIP
        ['faithfulness 1.30 > 1: the circuit alone does better on the metric than the whole model ...']
    """
    notes = []
    for name, value, what in (
        ("faithfulness", ev.faithfulness, "the circuit alone"),
        ("necessity", ev.necessity, "ablating the circuit"),
    ):
        if value > 1.0:
            more = (
                "does better on the metric than the whole model (the rest of the model was working against it)"
                if name == "faithfulness"
                else "costs more than ablating everything (the rest of the model, without it, pushes the other way)"
            )
            notes.append(f"{name} {value:.2f} > 1: {what} {more}.")
        elif value < 0.0:
            less = "does worse than ablating every component" if name == "faithfulness" else "improves the metric"
            notes.append(f"{name} {value:.2f} < 0: {what} {less}.")
    return notes


def in_words(model_name: str, task_name: str, circuit: Any, ev: Any) -> str:
    """What was found, in a sentence, checked against the zoo model's card where it names the circuit.

    Example:
        >>> in_words("induction-2l", "induction", circuit, ev)  # doctest: +SKIP
        'Found: the circuit of induction is L0H0 L1H0 L1H1 L1H2 L1H3 ... as the model card says ...'
    """
    from tl_submodels import zoo

    members = " ".join(str(c) for c in circuit)
    found = (
        f"Found: the circuit of {task_name} is {members} ({len(circuit)} components); keeping only it keeps "
        f"{ev.faithfulness:.0%} of the metric and {ev.accuracy_kept:.0%} accuracy"
    )
    truth = zoo.info(model_name).get("ground_truth", {}) if model_name in zoo.list() else {}
    roles = {k: v for k, v in truth.items() if k.endswith("_heads") and isinstance(v, list)}
    if not roles:
        return found + "."
    named = {str(c) for c in circuit}
    said = "; ".join(f"{role.replace('_', ' ')} {' '.join(heads)}" for role, heads in roles.items())
    missing = sorted({h for heads in roles.values() for h in heads} - named)
    extra = sorted(named - {h for heads in roles.values() for h in heads})
    if not missing and not extra:
        return f"{found}: the {said}, as the model card says."
    return (
        f"{found}. The model card names the {said}"
        + (f"; missing here: {' '.join(missing)}" if missing else "")
        + (f"; also here: {' '.join(extra)}" if extra else "")
        + "."
    )
