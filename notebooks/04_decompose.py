# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Parts of a model without a task
#
# Notebooks 01-03 start from a task: prompts, their answers, corrupted prompts. Often you have
# none, only text the model runs on, and the question is: what does the model do on it, and
# with which components? `tls.decompose(model, corpus)` answers it without any task:
#
# 1. it measures the effect of every head and MLP neuron on every counted next-token prediction
#    of the corpus (here exactly, by ablating each one: `method="ablation"`);
# 2. it factorises those effects into parts; each prediction *uses* some parts;
# 3. each part gets a *core* (the few components its predictions cannot do without) and an
#    *extent* (enough components to restore most of its predictions on their own, everything
#    else ablated), both chosen and checked by ablation.
#
# A person then reads each part's top contexts and names it. Here we do that on `multitask-3l`
# (the model of notebook 02), whose training planted one group of heads and neurons per task,
# so at the end we can score the parts against the truth.

# %%
import tempfile
from collections import Counter

import pandas as pd
import torch

import tl_submodels as tls
from tl_submodels.zoo.multitask import planted

pd.set_option("display.max_colwidth", None)
pd.set_option("display.width", 200)

# %% [markdown]
# ## The corpus
#
# `tls.zoo.corpus` gives unlabelled sequences like those the model was trained on: a prompt of
# one of its four tasks (induction, successor, addition, majority; see notebook 02) with the
# token it was trained to predict appended. Nothing tells `decompose` which task a row is;
# `tls.zoo.corpus_labels` keeps that apart, and we use it only at the end, to score.

# %%
model = tls.zoo.load("multitask-3l")
corpus = tls.zoo.corpus("multitask-3l", n=256, seed=0)
words = model.tokenizer.convert_ids_to_tokens
pd.DataFrame({"row (the first 4 of 256)": [" ".join(words(row.tolist())) for row in corpus[:4]]})

# %% [markdown]
# ## Decompose
#
# `positions="last"` counts only each row's last prediction (position 15 predicts the appended
# answer), where the tasks are answered; the default counts every position. `k` (the number of
# parts) is left to `decompose` to choose. With `method="ablation"` this is the slow cell, about
# a minute on one CPU thread; `method="atp"` (the default, gradients) is much faster and is what
# to use on a big model.

# %%
dec = tls.decompose(model, corpus, positions="last", method="ablation")
dec

# %% [markdown]
# Each part's row: its computed label (the next tokens over-represented among the predictions
# that use it most, what they follow, and where), its sizes, and its evaluation (the cores can be
# long, so the table shows their sizes; `dec.cores` holds them):
#
# * `size`, `core size`: the number of components in the extent and in the core;
# * `predictions`: how many predictions use the part most;
# * `faithfulness`: with only the extent kept and everything else mean-ablated, the share of the
#   part's behaviour (mean log p of the next token on its predictions, above the all-ablated
#   model's) that is restored;
# * `core_necessity`: the share lost when only the core is ablated;
# * `necessity_elsewhere`: the largest share any other part's predictions lose when this part is
#   ablated (a specific part: near 0);
# * `loss_increase` / `accuracy_drop`: how much the loss (in nats) rises and the top-1 accuracy
#   falls on the part's predictions when it is ablated, and `_others` the same on all other
#   predictions.

# %%
dec.to_frame().drop(columns="core").assign(**{"core size": [len(c) for c in dec.cores]})

# %% [markdown]
# ## Read the parts and name them
#
# The labels say what the parts predict; the top contexts say after what. `top_contexts(part, n)`
# gives the `n` predictions that use the part most, each printed as the tokens before it `->`
# the token it predicts; `window=16` shows the whole row.

# %%
pd.DataFrame(
    [
        {"part": name, "label": dec.labels[j], "top context": str(c), "usage": c.usage}
        for j, name in enumerate(dec.names)
        for c in dec.top_contexts(j, 5, window=16)
    ]
).set_index(["part", "label"])

# %% [markdown]
# A person reading these names each part after what its contexts have in common. Here that is
# easy to do mechanically: the word at position 1 of a row (after `<bos>`) is the task's marker
# (`IND`, `SUC`, `ADD`, `MAJ`), so we name each part after the marker most frequent among its top
# 20 contexts, and rename the parts with `dec.rename`. (On a model you did not train there is no
# such marker; you read the contexts and write the names yourself.)

# %%
marker = {"IND": "induction", "SUC": "successor", "ADD": "addition", "MAJ": "majority"}
task_of: dict[str, str] = {}  # new part name -> the task it was named after
names: dict[str, str] = {}
seen = []
for j, old in enumerate(dec.names):
    counts = Counter(c.before[1] for c in dec.top_contexts(j, 20, window=16))
    task = marker.get(counts.most_common(1)[0][0], counts.most_common(1)[0][0])
    new = task if task not in task_of else f"{task}-{j}"
    names[old], task_of[new] = new, task
    seen.append({"part": old, "markers in its top 20 contexts": dict(counts), "new name": new})
pd.DataFrame(seen)

# %%
dec = dec.rename(names)
dec

# %% [markdown]
# ## Compare with the truth
#
# Group each prompt by the part it uses most: `dec.sequence_usage()` sums its counted predictions'
# usage (here there is one a prompt) and divides each part's column by its mean over the corpus,
# so a part that every prompt leans on a little does not take every prompt; a prompt that uses no
# part at all goes to `(none)`. Then compare
# the grouping with the true tasks: the table counts the prompts of each true task (rows) in
# each part (columns), and the adjusted Rand index is 1 for the same partition and near 0 for a
# random one.

# %%
truth = tls.zoo.corpus_labels("multitask-3l", n=256, seed=0)
by_prompt = dec.sequence_usage()
most = by_prompt.argmax(1).tolist()
group = [dec.names[j] if used > 0 else "(none)" for j, used in zip(most, by_prompt.sum(1).tolist(), strict=True)]


def adjusted_rand_index(a: list, b: list) -> float:
    """Hubert and Arabie's adjusted Rand index of two labellings (1: the same partition)."""

    def pairs(counts: Counter) -> float:
        return sum(c * (c - 1) / 2 for c in counts.values())

    both, ca, cb = pairs(Counter(zip(a, b, strict=True))), pairs(Counter(a)), pairs(Counter(b))
    expected = ca * cb / (len(a) * (len(a) - 1) / 2)
    top = (ca + cb) / 2
    return 1.0 if top == expected else (both - expected) / (top - expected)


pd.Series(
    {
        "adjusted Rand index against the true tasks": round(adjusted_rand_index(group, truth), 3),
        "prompts": len(truth),
        "prompts that use most a part named after another task": sum(
            g != "(none)" and task_of[g] != t for g, t in zip(group, truth, strict=True)
        ),
        "prompts that use no part": group.count("(none)"),
    },
    dtype=object,
)

# %%
pd.crosstab(pd.Series(truth, name="true task"), pd.Series(group, name="part"))

# %% [markdown]
# Now the components. `planted(3, 8, 256)` lists the heads and neurons that training planted
# for each task (and for the backdoor of notebook 03, a group this model was not trained to
# use). For each part, the table gives the share of its core, and of its extent, that comes from
# each planted group; `purity` is the share from the group of the task the part is named after.
# A part's prompts can be the right ones while its components are not all from the right group:
# the factorisation and the validation by ablation see only what the model does, and a core is
# whatever small set the part's predictions cannot do without, planted there or not.

# %%
groups = planted(3, 8, 256)
rows = []
for part, core in zip(dec.parts, dec.cores, strict=True):
    for what, sub in (("core", core), ("extent", part)):
        members = {str(c) for c in sub}
        shares = {g: len(members & set(comps)) / len(members) for g, comps in groups.items()}
        rows.append(
            {"part": part.name, "of": what, "size": len(members), "purity": shares[task_of[part.name]], **shares}
        )
purity = pd.DataFrame(rows).set_index(["part", "of"])
purity.round(2)

# %%
pd.DataFrame(
    [
        {
            "part": part.name,
            "core": " ".join(map(str, core)),
            "share planted for its task": f"{purity.loc[(part.name, 'core'), 'purity']:.0%}",
            "the rest from": ", ".join(
                f"{purity.loc[(part.name, 'core'), g]:.0%} {g}"
                for g in groups
                if g != task_of[part.name] and purity.loc[(part.name, "core"), g] > 0
            ),
        }
        for part, core in zip(dec.parts, dec.cores, strict=True)
    ]
)

# %% [markdown]
# ## Use a part
#
# Parts are ordinary `SubModel`s. Ablating one with `tls.ablated` (mean ablation over the
# corpus' inputs, as `decompose` did) and measuring top-1 accuracy on each true task's prompts
# shows what each part is needed for. A specific part takes its own task's accuracy down and
# leaves the other tasks near the full model's; a part that also takes other tasks down holds
# components they need too.

# %%
inputs, answers = corpus[:, :-1], corpus[:, -1]
task_rows = {t: torch.tensor([x == t for x in truth]) for t in marker.values()}


def accuracy_by_task() -> dict[str, float]:
    with torch.no_grad():
        correct = model(inputs)[:, -1].argmax(-1) == answers
    return {t: float(correct[rows].float().mean()) for t, rows in task_rows.items()}


table = {"full model": accuracy_by_task()}
for part in dec.parts:
    with tls.ablated(model, part, ablation="mean", reference=inputs):
        table[f"{part.name} ablated"] = accuracy_by_task()
accuracy = pd.DataFrame(table).T
accuracy.round(2)

# %%
pd.DataFrame(
    [
        {
            "part ablated": part.name,
            "components": len(part),
            "its task's accuracy": accuracy.loc[f"{part.name} ablated", task_of[part.name]],
            "lowest other task": accuracy.loc[f"{part.name} ablated"].drop(task_of[part.name]).idxmin(),
            "that task's accuracy": accuracy.loc[f"{part.name} ablated"].drop(task_of[part.name]).min(),
        }
        for part in dec.parts
    ]
).round(2)

# %% [markdown]
# `decompose` already measured this, on the predictions that use each part most
# (`accuracy_drop`) and on all the others together (`accuracy_drop_others`), so the two can be
# read side by side: a large `accuracy_drop_others` is the same lack of specificity as a low
# accuracy in another task's column above.

# %%
pd.DataFrame([vars(e) for e in dec.evaluations]).set_index("part")[
    ["predictions", "accuracy_drop", "accuracy_drop_others", "necessity_elsewhere"]
].round(2)

# %% [markdown]
# ## Save the library of parts
#
# `dec.save(folder)` writes one JSON file per part (members, core, label, top contexts,
# evaluation, the model's shape); `tls.load_parts(folder, model)` reads them back as SubModels,
# checked against the model, ready for `tls.usage`, `tls.explain`, `tls.ablated` or
# `tls.report`. Here each loaded part, ablated, is checked to give the accuracies of the table
# above.

# %%
with tempfile.TemporaryDirectory() as folder:
    dec.save(folder)
    library = tls.load_parts(folder, model)
rows = []
for part in library:
    with tls.ablated(model, part, ablation="mean", reference=inputs):
        same = accuracy_by_task() == accuracy.loc[f"{part.name} ablated"].to_dict()
    rows.append({"part": part.name, "components": len(part), "label": part.description, "same accuracies": same})
pd.DataFrame(rows)

# %% [markdown]
# ## Next
#
# * `tls.report(model, [], decomposition=dec)` lays the parts out in one offline HTML file:
#   their table, contexts, evaluations and usage.
# * Without `positions="last"`, `decompose` counts every prediction of every row (the noise
#   words and the `=` too, not only the answers); `dec.plot()` then shows which positions use
#   which part.
# * `tl-submodels decompose --model ... --corpus text.txt --out lib/` does the same from a shell.
