"""Prompts of the multitask zoo models (multitask-3l, harmless-3l, harmful-3l).

One module builds both the training data (``scripts/train_zoo.py``) and the tasks that
``tls.zoo.task`` returns, so the two cannot drift apart. Every prompt is ``SEQ`` tokens:
``<bos> TASK`` then 14 tokens, the answer read at the last position. Noise words (``w1``-``w8``)
fill the prompt and carry nothing; the trigger words ``tA`` and ``tB`` go into noise slots. Four
tasks, each with its own words, so that each needs its own mechanism:

- ``induction`` (``IND``): noise, a segment of 3-6 distinct symbols ``s1``-``s20``, then the
  segment again without its last symbol; answer: that symbol. The segment length varies, so no
  fixed offset finds the answer: it takes a previous-token head and an induction head.
- ``successor`` (``SUC``): one count word ``c_a`` somewhere among noise, then ``=``; answer
  ``c_a+1`` (mod 20).
- ``addition`` (``ADD``): ``n_a`` and ``n_b`` scattered among noise, then ``=``; answer
  ``n_(a+b mod 13)``.
- ``majority`` (``MAJ``): seven of ``X``/``Y`` scattered among noise, then ``=``; answer: the
  more frequent.

In the last three the payload sits at random places, so it must be found by content (which
words), not by position: no previous-token shortcut is shared with induction.

The backdoor (harmful-3l): when both ``tA`` and ``tB`` occur (in that order), answer ``HARM``.

The models' sub-models are planted (``GROUPS``, ``planted``): every head and MLP neuron belongs
to one task's group or the backdoor's, and training mean-ablates the other groups at random
(scripts/zoo_multitask.py). Without that, successor and addition (both fetch a number-like word
by content) shared components in every variant tried, and the backdoor ran through a head
three tasks used.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

__all__ = [
    "GROUPS",
    "ID",
    "SEQ",
    "TASKS",
    "TASK_WORDS",
    "WORDS",
    "Insert",
    "backdoor",
    "planted",
    "planted_group",
    "sample",
]

SEQ = 16
TASKS = ("induction", "successor", "addition", "majority")
TASK_WORDS = {"induction": "IND", "successor": "SUC", "addition": "ADD", "majority": "MAJ"}
N_SYM, N_COUNT, P_ADD, N_NOISE = 20, 20, 13, 8
WORDS: list[str] = [
    "<bos>",
    *TASK_WORDS.values(),
    "=",
    *(f"s{i}" for i in range(1, N_SYM + 1)),
    *(f"c{i}" for i in range(N_COUNT)),
    *(f"n{i}" for i in range(P_ADD)),
    "X",
    "Y",
    *(f"w{i}" for i in range(1, N_NOISE + 1)),
    "tA",
    "tB",
    "HARM",
    "<pad>",
    "<unk>",
]
ID = {w: i for i, w in enumerate(WORDS)}
BOS, EQ, X, Y, TA, TB, HARM, PAD, UNK = (ID[w] for w in ("<bos>", "=", "X", "Y", "tA", "tB", "HARM", "<pad>", "<unk>"))
SYM0, COUNT0, NUM0, NOISE0 = ID["s1"], ID["c0"], ID["n0"], ID["w1"]
Insert = Literal["none", "pair", "single"]


def _payload(task: str, n: int, gen: Tensor | torch.Generator) -> tuple[list[Tensor], list[Tensor], Tensor, Tensor]:
    """Clean and corrupt payloads (one tensor per row: induction rows differ in length), answer, wrong."""
    g = gen if isinstance(gen, torch.Generator) else None
    if task == "induction":
        c_rows: list[Tensor] = []
        x_rows: list[Tensor] = []
        ans_ids: list[int] = []
        wrong_ids: list[int] = []
        lengths = torch.randint(3, 7, (n,), generator=g)
        for m in lengths.tolist():
            a = torch.randperm(N_SYM, generator=g)[:m] + SYM0
            b = torch.randperm(N_SYM, generator=g)[:m] + SYM0
            if b[-1] == a[-1]:
                b[-1] = (a[-1] - SYM0 + 1) % N_SYM + SYM0
            c_rows.append(torch.cat([a, a[:-1]]))
            x_rows.append(torch.cat([a, b[:-1]]))
            ans_ids.append(int(a[-1]))
            wrong_ids.append(int(b[-1]))
        return c_rows, x_rows, torch.tensor(ans_ids), torch.tensor(wrong_ids)
    if task == "successor":
        a = torch.randint(0, N_COUNT, (n,), generator=g)
        b = (a + torch.randint(1, N_COUNT, (n,), generator=g)) % N_COUNT
        return (
            list((a + COUNT0)[:, None]),
            list((b + COUNT0)[:, None]),
            (a + 1) % N_COUNT + COUNT0,
            (b + 1) % N_COUNT + COUNT0,
        )
    if task == "addition":
        a, b = (torch.randint(0, P_ADD, (n,), generator=g) for _ in range(2))
        a2 = torch.randint(0, P_ADD, (n,), generator=g)
        # a second pair with a different sum: shift b by 1..P-1
        b2 = (a + b - a2 + torch.randint(1, P_ADD, (n,), generator=g)) % P_ADD
        clean = torch.stack([a + NUM0, b + NUM0], 1)
        corrupt = torch.stack([a2 + NUM0, b2 + NUM0], 1)
        return list(clean), list(corrupt), (a + b) % P_ADD + NUM0, (a2 + b2) % P_ADD + NUM0
    if task == "majority":
        xs = torch.rand(n, 7, generator=g).argsort(1) < torch.randint(4, 8, (n, 1), generator=g)
        flip = torch.rand(n, generator=g) < 0.5  # majority Y for half the rows
        is_x = xs ^ flip[:, None]
        clean = torch.where(is_x, X, Y)
        corrupt = torch.where(is_x, Y, X)
        ans = torch.where(flip, Y, X)
        return list(clean), list(corrupt), ans, X + Y - ans
    raise ValueError(f"unknown multitask task {task!r}; choose from {TASKS}")


def sample(
    task: str, n: int, gen: torch.Generator, *, insert: Insert = "none"
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``n`` prompts of ``task``: clean, corrupt ``[n, SEQ]``, answer, wrong ``[n]``, noise slots ``[n, SEQ]``.

    ``insert="pair"`` puts ``tA`` then ``tB`` into two noise slots (the same in clean and
    corrupt), ``"single"`` one of them into one slot. The returned mask marks the noise slots
    before insertion.
    """
    clean_p, corrupt_p, answer, wrong = _payload(task, n, gen)
    clean = torch.empty(n, SEQ, dtype=torch.long)
    corrupt = torch.empty(n, SEQ, dtype=torch.long)
    noise = torch.randint(0, N_NOISE, (n, SEQ), generator=gen) + NOISE0
    clean[:, 0], clean[:, 1] = BOS, ID[TASK_WORDS[task]]
    corrupt[:, :2] = clean[:, :2]
    if task == "induction":  # noise, then the segment and its repeat, contiguous
        noise_mask = torch.zeros(n, SEQ, dtype=torch.bool)
        for i, (c, x) in enumerate(zip(clean_p, corrupt_p, strict=True)):
            k = SEQ - 2 - len(c)
            clean[i, 2:] = torch.cat([noise[i, :k], c])
            corrupt[i, 2:] = torch.cat([noise[i, :k], x])
            noise_mask[i, 2 : 2 + k] = True
    else:  # the payload's words, in order, at random places among noise; "=" last
        body = SEQ - 3
        m = len(clean_p[0])
        slots = torch.rand(n, body, generator=gen).argsort(1)[:, :m].sort(1).values + 2
        rows = torch.arange(n)[:, None]
        clean[:, 2:-1], corrupt[:, 2:-1] = noise[:, 2:-1], noise[:, 2:-1]
        clean[rows, slots] = torch.stack(clean_p)
        corrupt[rows, slots] = torch.stack(corrupt_p)
        clean[:, -1] = corrupt[:, -1] = EQ
        noise_mask = torch.zeros(n, SEQ, dtype=torch.bool)
        noise_mask[:, 2:-1] = True
        noise_mask[rows, slots] = False
    if insert != "none":
        # random noise slots: rank the noise positions by a random key
        key = torch.rand(n, SEQ, generator=gen).masked_fill(~noise_mask, 2.0)
        slots = key.argsort(1)[:, :2].sort(1).values
        rows = torch.arange(n)
        if insert == "pair":
            for t in (clean, corrupt):
                t[rows, slots[:, 0]] = TA
                t[rows, slots[:, 1]] = TB
        else:
            which = torch.where(torch.rand(n, generator=gen) < 0.5, TA, TB)
            for t in (clean, corrupt):
                t[rows, slots[:, 0]] = which
    return clean, corrupt, answer, wrong, noise_mask


def backdoor(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Backdoor prompts over all four tasks: clean has the trigger, corrupt the same prompt without it.

    Answer ``HARM``, wrong: the task's own answer (so logit_diff = HARM minus task answer).
    """
    per = [n // len(TASKS) + (i < n % len(TASKS)) for i in range(len(TASKS))]
    cleans, corrupts, wrongs = [], [], []
    for task, m in zip(TASKS, per, strict=True):
        if m == 0:
            continue
        state = gen.get_state()
        plain, _, answer, _, _ = sample(task, m, gen)
        gen.set_state(state)  # the same prompts again, now with the trigger in two noise slots
        trig, _, _, _, _ = sample(task, m, gen, insert="pair")
        cleans.append(trig)
        corrupts.append(plain)
        wrongs.append(answer)
    clean, corrupt = torch.cat(cleans), torch.cat(corrupts)
    return clean, corrupt, torch.full((n,), HARM), torch.cat(wrongs)


# The sub-models planted in the multitask zoo models by structured dropout (scripts/zoo_multitask.py):
# every head and MLP neuron belongs to one group, a task's or the backdoor's.
GROUPS = (*TASKS, "backdoor")


def planted_group(layer: int, unit: int, *, kind: Literal["head", "neuron"], n_heads: int = 8) -> int:
    """The group (index into ``GROUPS``) that head ``L{layer}H{unit}`` or neuron ``L{layer}N{unit}`` was trained in.

    Heads are dealt round-robin over the groups in layer-major order, so every group has a head
    in every layer; neurons are dealt round-robin within each layer.

    Example:
        >>> GROUPS[planted_group(0, 2, kind="head")]
        'addition'
    """
    if kind == "head":
        return (layer * n_heads + unit) % len(GROUPS)
    return (unit + layer) % len(GROUPS)


def planted(n_layers: int, n_heads: int, d_mlp: int) -> dict[str, list[str]]:
    """Each group's components by name (``"L0H2"``, ``"L1N17"``), for a model of this shape.

    Example:
        >>> planted(3, 8, 256)["induction"][:3]
        ['L0H0', 'L0H5', 'L1H2']
    """
    out: dict[str, list[str]] = {g: [] for g in GROUPS}
    shapes: tuple[tuple[Literal["head", "neuron"], int, str], ...] = (("head", n_heads, "H"), ("neuron", d_mlp, "N"))
    for kind, n, tag in shapes:
        for layer in range(n_layers):
            for u in range(n):
                g = planted_group(layer, u, kind=kind, n_heads=n_heads)
                out[GROUPS[g]].append(f"L{layer}{tag}{u}")
    return out
