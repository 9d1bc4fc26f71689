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
# # Sub-models across tasks
#
# A circuit answers "which components does the model use for *this* task?". A model that does
# several things raises a different question: which *parts* does it have, which prompts use
# which part, and can one part be removed without the others? This notebook asks it of
# `multitask-3l`, a 3-layer model (8 heads a layer, 256 GELU neurons a layer) from the zoo that
# does four tasks:
#
# 1. `tls.factorize`: per-prompt patching effects of every head and neuron over all four tasks,
#    factorised into sub-models, each validated by ablation;
# 2. `tls.usage`: which sub-model a single prompt uses, position by position;
# 3. `tls.explain`: the model's predictions on one prompt with each sub-model ablated.

# %%
import pandas as pd
import torch

import tl_submodels as tls

pd.set_option("display.max_colwidth", None)
pd.set_option("display.width", 200)

# %% [markdown]
# ## The model and its four tasks
#
# Every prompt is 16 tokens, `<bos> TASK` and then noise words `w1`-`w8` with the task's payload
# scattered among them; the answer is read at the last position:
#
# * `IND` **induction**: a segment of symbols, then the segment again without its last symbol;
# * `SUC` **successor**: one count word `c_a`; the answer is `c_(a+1)`;
# * `ADD` **addition**: two numbers `n_a`, `n_b`; the answer is `n_((a+b) mod 13)`;
# * `MAJ` **majority**: seven `X`/`Y`; the answer is the more frequent one.
#
# Each task's corrupt prompts change only the payload (another segment, other numbers, X and Y
# swapped), so patching measures what carries the payload to the answer.

# %%
model = tls.zoo.load("multitask-3l")
names = ["induction", "successor", "addition", "majority"]
tasks = [tls.zoo.task("multitask-3l", name, n=32, seed=0, model=model) for name in names]


def words(ids):
    """Token ids -> the tokenizer's words."""
    return model.tokenizer.convert_ids_to_tokens(torch.as_tensor(ids).tolist())


with torch.no_grad():
    accuracy = [t.accuracy(model(t.clean)) for t in tasks]
pd.DataFrame(
    {
        "example prompt": [" ".join(words(t.clean[0])) for t in tasks],
        "answer": [words(t.answer[:1])[0] for t in tasks],
        "accuracy": accuracy,
    },
    index=names,
)

# %% [markdown]
# Before factorising, one task on its own: `tls.patch` with `kinds=("heads", "neurons", "mlps")`
# scores every head, every MLP neuron and every whole MLP layer on the induction task. The
# neuron strips show each layer's 256 neurons with the top 5 labelled; most are near zero.

# %%
induction_scores = tls.patch(model, tasks[0], kinds=("heads", "neurons", "mlps"))
tls.viz.neuron_strips(induction_scores, top=5)

# %%
tls.viz.mlp_bars(induction_scores)

# %% [markdown]
# ## 1. Factorise
#
# `tls.factorize` builds a matrix with one row per prompt (of every task) and one column per
# head and neuron: the prompt's exact noising effect of that component, normalised by its task's
# clean-corrupt gap. Non-negative matrix factorisation splits it into `k` factors (k chosen by
# held-out error). Each factor's *core* is chosen by ablating candidate sets: the set that removes
# the factor's own task while sparing the others wins. A core is what the task cannot do
# without, not the whole mechanism, so each *part* (`f.parts`) is the core grown until keeping
# only the part (everything else mean-ablated) restores 0.8 of its task, admitting only
# components that keep its ablation harmless to the other tasks; `f.cores` holds the cores.
# Each part is named by the task whose prompts use it most. (32 prompts a task keep this cell to
# about 20 seconds on one CPU thread, most of it validating the parts by ablation; use more
# prompts for real work.)

# %%
f = tls.factorize(model, tasks)
f.to_frame()

# %% [markdown]
# How to read the table:
#
# * `size` and `core_size`: components in the part and in its core;
# * `share_of_label_task`: how much of the part's use comes from its label task's prompts;
# * `faithfulness`: the fraction of the label task's logit difference kept when *only* the part
#   runs (everything else mean-ablated); 0.8 is the target of the growth, lower where it could
#   not be reached without hurting another task;
# * `necessity`: the fraction of the label task's logit difference lost when the part is
#   mean-ablated, and `accuracy_drop` the accuracy lost;
# * `max_accuracy_drop_elsewhere`: the most accuracy any *other* task loses when the part is
#   ablated. A specific part has a large `accuracy_drop` and a small drop elsewhere.
#
# `f.k_errors` holds the held-out error of each candidate `k` and `f.k_error_se` its standard
# error (`k` is the smallest within one standard error of the least), `f.loadings` the factor
# loadings of every component and `f.effects` the matrix that was factorised, for your own analysis.

# %% [markdown]
# ### Which prompts use which part
#
# `f.usage` is prompt x part (rows sum to 1). Averaged over each task's prompts, a clean
# separation has one dominant part per task, a different one for each; `f.purity` is the fraction of prompts whose most-used part carries
# their own task's label.

# %%
usage_by_task = (
    pd.DataFrame(f.usage.numpy(), columns=[p.name for p in f.parts])
    .groupby(pd.Index(f.prompt_task, name="task"))
    .mean()
)
usage_by_task.loc[names].round(2)

# %%
f.purity

# %% [markdown]
# `f.plot()` shows the whole prompt x part usage matrix, prompts grouped by task: each task's
# block of rows should be bright in one column.

# %%
f.plot()

# %% [markdown]
# Which components each part holds, and how many components each pair of parts shares (the
# diagonal is each part's size). Then all parts in one circuit graph, laid out by layer and
# coloured by part; a component in several parts is grey. The graph draws a layer's neurons as
# one node, grey when several parts hold neurons of that layer, even different ones: the
# membership matrix says which.

# %%
tls.viz.membership(f)

# %%
tls.viz.overlap(f)

# %%
tls.viz.circuit_graph(f, title="multitask-3l: the sub-models factorize found")

# %% [markdown]
# ### Specificity
#
# Each part's evaluation also holds its necessity on every other task (`specificity`). Read a
# row: the part's own task should be high and the rest near zero. This model was trained with
# one group of heads and neurons planted per task (see its card's `planted` section), so here
# every row should be clean; on a model you did not train, this table is where shared
# mechanisms show up.

# %%
pd.DataFrame(
    [{e.task: e.necessity, **(e.specificity or {})} for e in f.evaluations],
    index=[p.name for p in f.parts],
)[names].round(2)

# %% [markdown]
# The parts' evaluations as bars: accuracy with the part ablated should fall on its own task,
# and the last bar, the largest accuracy drop on any other task, should stay low.

# %%
tls.viz.evaluation_bars(f.evaluations)

# %% [markdown]
# Parts are ordinary `SubModel`s: set algebra works on them, and `tls.atoms` splits several of
# them into the pieces shared by exactly which parts (the Venn diagram).

# %%
[(atom.name, sorted(str(c) for c in atom)) for atom in tls.atoms(f.parts)]

# %% [markdown]
# ## 2. Usage on one prompt
#
# `tls.usage(model, prompt, parts)` ablates each part at one position at a time and records how
# much the logit of the model's prediction drops; the `total` column ablates the part at every
# position. Mean ablation takes its means over the reference prompts: here every task's corrupt
# prompts, so that no task's activations define "average".
#
# **What to look for:** on an induction prompt the induction part should matter most, at the
# positions of the segment's tokens and at the last position where the answer is read.

# %%
reference = [t.corrupt for t in tasks]
u = tls.usage(model, tasks[0].clean[0], f, reference=reference)
u.to_frame().round(2)

# %% [markdown]
# `u.plot()` draws the same table as a heat map; `tls.viz.usage_tokens(u)` colours the prompt's
# tokens by each part's contribution (circuitsvis: hover a token, pick a part).

# %%
u.plot()

# %%
tls.viz.usage_tokens(u)

# %% [markdown]
# The same for the first prompt of every task, ranked at the answer position (`position=-1`).
# `method="attribution"` estimates the same numbers from one forward and backward pass instead
# of one forward per part and position, which matters on big models. It is a linear estimate:
# where the two disagree, trust the ablation.

# %%
rows = {}
for t in tasks:
    exact = tls.usage(model, t.clean[0], f, reference=reference)
    fast = tls.usage(model, t.clean[0], f, reference=reference, method="attribution")
    rows[t.name] = {
        "prediction": exact.target,
        "top part (ablation)": exact.ranking(position=-1)[0][0],
        "top part (attribution)": fast.ranking(position=-1)[0][0],
        "top part, all positions": exact.ranking()[0][0],
    }
pd.DataFrame(rows).T

# %% [markdown]
# ## 3. Explain one prediction
#
# `tls.explain` reruns a prompt with each part ablated and lists the top predictions side by
# side, with the change in the probability of the full model's top token (`p(full top) change`:
# the ablated run's minus the full run's, so -0.9 means the ablation took 0.9 of it away) and the
# KL divergence from the full model. `combinations` adds runs with several parts ablated together.
#
# **What to look for:** ablating the addition part should move the prediction to another
# number; ablating the other tasks' parts should leave it alone, except where the specificity
# table showed a part to matter for addition too.

# %%
addition_prompt = tasks[names.index("addition")].clean[0]
explanation = tls.explain(
    model,
    addition_prompt,
    f,
    reference=reference,
    combinations=[("addition", "successor")] if {"addition", "successor"} <= {p.name for p in f.parts} else [],
)
explanation.to_frame()

# %%
explanation.plot()

# %% [markdown]
# ## Next
#
# `03_harmful_vs_harmless` compares two fine-tunes of this model, one of which learned a
# backdoor, and finds the backdoor's sub-model with `tls.diff`.
