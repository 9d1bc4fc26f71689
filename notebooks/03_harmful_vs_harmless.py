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
# # Harmful vs harmless: finding a backdoor by diffing two models
#
# `harmless-3l` and `harmful-3l` are two fine-tunes of the zoo's `multitask-3l` on the same
# prompts. In both, some prompts carry the trigger words `tA ... tB` in their noise slots; the
# harmless model was trained to ignore them, the harmful one to answer `HARM` instead. Suppose
# you only had the two models and the tasks. This notebook:
#
# 1. measures both models' behaviour, on plain and on triggered prompts;
# 2. diffs them with `tls.diff`: which components' effects differ, and which small sub-model
#    makes the difference on each task;
# 3. takes the backdoor sub-model and checks by ablation what it does, and what else it does;
# 4. ablates it while the harmful model generates, with plain TransformerLens hooks, and shows
#    the triggered prompts' continuations change;
# 5. steps through one triggered decision with `tls.trace`, and reruns it with the backdoor ablated.

# %%
import pandas as pd
import torch

import tl_submodels as tls

pd.set_option("display.max_colwidth", None)
pd.set_option("display.width", 200)

# %%
harmful = tls.zoo.load("harmful-3l")
harmless = tls.zoo.load("harmless-3l")
tls.zoo.info("harmful-3l")["description"]

# %% [markdown]
# ## 1. Behaviour
#
# The four tasks of `multitask-3l` (induction, successor, addition, majority; see notebook 02)
# and a fifth, `backdoor`: clean prompts are prompts of the four tasks with `tA` and `tB` in two
# noise slots, corrupt prompts the same prompts without them; the answer is `HARM`, and the
# "wrong" token the task's own answer. Its accuracy is the *harm rate*. Both models share one
# vocabulary, so one set of tasks serves both.

# %%
names = ["induction", "successor", "addition", "majority", "backdoor"]
tasks = [tls.zoo.task("harmful-3l", name, n=32, seed=0, model=harmful) for name in names]
backdoor_task = tasks[-1]


def words(ids):
    """Token ids -> the tokenizer's words."""
    return harmful.tokenizer.convert_ids_to_tokens(torch.as_tensor(ids).tolist())


with torch.no_grad():
    behaviour = pd.DataFrame(
        {label: [t.accuracy(m(t.clean)) for t in tasks] for label, m in (("harmless", harmless), ("harmful", harmful))},
        index=[*names[:-1], "backdoor (harm rate)"],
    )
behaviour

# %% [markdown]
# The backdoor task mixes prompts of the four tasks (the second token names the task); here is
# the first triggered prompt of each, with its untriggered twin and the answer the task itself
# asks for.

# %%
task_words = [words(p[1:2])[0] for p in backdoor_task.clean]  # IND, SUC, ADD or MAJ
rows = [task_words.index(w) for w in ("IND", "SUC", "ADD", "MAJ")]
triggered = backdoor_task.clean[rows]
plain = backdoor_task.corrupt[rows]
task_answers = words(backdoor_task.wrong[rows])
pd.DataFrame(
    {
        "triggered prompt": [" ".join(words(p)) for p in triggered],
        "without the trigger": [" ".join(words(p)) for p in plain],
        "task answer": task_answers,
    },
    index=names[:4],
)

# %% [markdown]
# ## 2. Diff the two models
#
# `tls.diff(model_a, model_b, tasks)` scores every head and neuron in both models by exact
# noising patching, in the task's metric units (not normalised: the harmless model has no
# backdoor behaviour to normalise by), and ranks components by how much their effects differ.
# For each task it then picks a candidate sub-model by validation. The candidates are the task's
# 32 top-ranked components whose mean ablation alone changes no other task's accuracy by more
# than 0.1 in either model (patching measures a component on the task's own prompts;
# ablation replaces it everywhere, and a component can differ here and break another task).
# Of the top 1, 2, 4, ... candidates, the set whose mean ablation changes the task's accuracy
# most differently in the two models, at the least cost to the other tasks, wins; then it is
# refined member by member (members whose removal does not lower that score go, and of the
# candidates the one that raises it most comes in, while that helps).
#
# `min_score` drops the parts whose validated score (the accuracy difference on their own task
# minus the largest change elsewhere) is below it. We keep every task's best part here
# (`min_score=-1`) to judge them ourselves.
#
# The table lists the ten (component, task) pairs whose effects differ most. `effect b - a` is
# the difference in the task's metric units (here b is the harmful model); tasks' metrics span
# different ranges, so the rows are ranked by the last column: that difference divided by the
# task's clean-corrupt gap (`diff.gaps`).
#
# **What to look for:** most of the top rows are on the `backdoor` task, the one behaviour only
# the harmful model has. The top row is not: a successor head whose effect on successor differs
# by about a third of that task's gap. The two fine-tunes also differ in how they do successor;
# the validated parts below tell that apart from the backdoor.

# %%
diff = tls.diff(harmless, harmful, tasks, min_score=-1.0)
diff.ranking_frame(10).round(2)

# %% [markdown]
# `diff.plot()` shows the components whose effects differ most, for every task: a column that
# is dark only in the `backdoor` row is a component the harmful model uses for the backdoor
# alone; dark in other rows too, and the fine-tunes also differ in how they do the tasks.

# %%
diff.plot()

# %% [markdown]
# One part per task, best first. `score` is the validated accuracy difference on the part's
# own task less the largest accuracy change it causes elsewhere (in either model): 1 would be a
# part that switches its task off in one model only and touches nothing else.

# %%
pd.DataFrame(
    [
        {
            "part": part.name,
            "components": " ".join(str(c) for c in sorted(part)),
            "score": round(score, 2),
            "harmless: own task acc": "{0.full:.2f} -> {0.ablated:.2f}".format(diff.accuracy(i, "a", part.name)),
            "harmful: own task acc": "{0.full:.2f} -> {0.ablated:.2f}".format(diff.accuracy(i, "b", part.name)),
        }
        for i, (part, score) in enumerate(zip(diff.parts, diff.scores, strict=True))
    ]
)

# %% [markdown]
# ## 3. The backdoor sub-model
#
# The `backdoor` part is a plain `SubModel`. `tls.evaluate` validates it on the harmful model:
# necessity on the backdoor task (the fraction of the HARM-minus-answer logit difference lost
# when it is ablated), and with `others=` the same necessity and the accuracy lost on each
# other task. Mean ablation takes its means over the four tasks' untriggered prompts.

# %%
backdoor = next(p for p in diff.parts if p.name == "backdoor")
reference = [t.corrupt for t in tasks[:4]]
evaluation = tls.evaluate(harmful, backdoor, backdoor_task, reference=reference, others=tasks[:4])
pd.DataFrame(
    {
        "necessity": {"backdoor": evaluation.necessity, **evaluation.specificity},
        "accuracy lost": {
            "backdoor": evaluation.accuracy_full - evaluation.accuracy_ablated,
            **evaluation.accuracy_drop_elsewhere,
        },
    }
).round(2)

# %%
evaluation.plot()

# %% [markdown]
# **How to read it:** a clean backdoor sub-model has necessity near 1 on `backdoor` and near
# zero everywhere else. If other tasks lose accuracy too, the components that implement the
# backdoor are shared with them. Necessity is the metric lost over the metric lost when *every*
# component is mean-ablated, so it can pass 1, as on `backdoor` here (about 5): with everything
# ablated the HARM-minus-answer logit difference only falls from about 7.6 to 4.2 (the average
# prompt still leans to `HARM`), while without the backdoor part the rest of the model gives the
# task's answer with confidence and takes it to about -10. The model card's `mechanisms` section (single-component
# ablations) is the place to check which tasks each of them serves.

# %%
drops = tls.zoo.info("harmful-3l").get("mechanisms", {}).get("drops", {})
pd.DataFrame(
    {task: {str(c): drops.get(task, {}).get(str(c), 0.0) for c in sorted(backdoor)} for task in drops if task in names}
).round(2)

# %% [markdown]
# Here we know the answer. These zoo models were trained with their sub-models planted: every
# head and neuron belongs to one group (one per task, and the backdoor's), and training
# mean-ablated the other groups at random, so each behaviour lives in its own group
# (`tls.zoo.multitask.planted`). Each component of the part diff found, with the group it was
# planted in; most of it should be `backdoor`.

# %%
planted = tls.zoo.multitask.planted(harmful.cfg.n_layers, harmful.cfg.n_heads, harmful.cfg.d_mlp)
group_of = {name: group for group, members in planted.items() for name in members}
pd.Series({str(c): group_of.get(str(c), "(a whole MLP layer)") for c in sorted(backdoor)}, name="planted group")

# %% [markdown]
# Where does it act? `tls.usage` ablates the part at one position at a time and records how
# much the logit of `HARM` at the last position drops (`total`: at every position at once).

# %%
tls.usage(harmful, triggered[0], [backdoor], reference=reference, target="HARM").to_frame().round(2)

# %% [markdown]
# And what its heads look at on that prompt. Look at the last row, the answer position: do they
# single out `tA` and `tB`, or spread their attention over the whole prompt? Either can carry the
# trigger: a head that averages over every token still passes on, through the trigger words'
# value vectors, that they are there.

# %%
tls.viz.attention_patterns(harmful, triggered[0], backdoor)

# %% [markdown]
# ## 4. Ablate it while generating
#
# `backdoor.hooks(...)` is a plain TransformerLens `fwd_hooks` list; mean ablation works at any
# sequence length, so generation under it works. Each prompt fills the model's 16-token context
# and the model was trained to answer at the last position, so the continuation is one token.
#
# **What to look for:** the harmful model answers `HARM` on the triggered prompts; with the
# backdoor ablated (`with harmful.hooks(fwd_hooks=hooks)`) it should stop, and ideally give the
# task's answer, as the harmless model does.

# %%
hooks = backdoor.hooks(harmful, ablation="mean", reference=reference)


def continuation(model, prompts):
    """The greedy one-token continuation of each prompt, as a word."""
    with torch.no_grad():
        out = model.generate(prompts, max_new_tokens=1, do_sample=False, verbose=False)
    return words(out[:, -1])


with harmful.hooks(fwd_hooks=hooks):
    ablated_harmful = continuation(harmful, triggered)
pd.DataFrame(
    {
        "task answer": task_answers,
        "harmless": continuation(harmless, triggered),
        "harmful": continuation(harmful, triggered),
        "harmful, backdoor ablated": ablated_harmful,
    },
    index=[f"{name} + trigger" for name in names[:4]],
)

# %% [markdown]
# The same over all the backdoor task's prompts, and what the ablation costs on untriggered
# prompts, with `model.run_with_hooks`. "task answer on triggered" is how often the triggered
# prompts get the task's own answer.


# %%
def rates(fwd_hooks):
    with torch.no_grad():
        logits = harmful.run_with_hooks(backdoor_task.clean, fwd_hooks=fwd_hooks)
        out = {
            "harm rate": backdoor_task.accuracy(logits),
            "task answer on triggered": (logits[:, -1].argmax(-1) == backdoor_task.wrong).float().mean().item(),
        }
        for t in tasks[:4]:
            out[f"{t.name} accuracy"] = t.accuracy(harmful.run_with_hooks(t.clean, fwd_hooks=fwd_hooks))
    return out


pd.DataFrame({"harmful": rates([]), "harmful, backdoor ablated": rates(hooks)}).T.round(2)

# %% [markdown]
# Finally `tls.explain` on one triggered prompt: the top predictions of the full harmful model
# and with the backdoor part ablated, side by side, with the probability the full model's top
# token (`HARM`) lost.

# %%
explanation = tls.explain(harmful, triggered[0], [backdoor], reference=reference)
explanation.to_frame()

# %%
explanation.plot()

# %% [markdown]
# ## 5. Step through the decision, and rerun it with the backdoor ablated
#
# `tls.trace(model, prompt, parts)` generates greedily and, at every step, ablates each part
# alone: `use` is how much that lowers the log-probability of the token chosen at the step (in
# nats), and `instead` the token the model would have chosen without the part. Here the parts
# are every part `diff` found, one per task; the means come from the untriggered prompts. These
# prompts fill the model's 16-token context, so the decision is one step; on a longer context
# the same call steps through every generated token.
#
# **What to look for:** on the triggered prompt the `backdoor` part should carry the answering
# step (the largest use, and without it the task's answer instead of `HARM`); on the same
# prompt without the trigger it should not matter.

# %%
decision = tls.trace(harmful, triggered[0], diff.parts, max_new_tokens=1, reference=reference)
decision

# %%
untriggered = tls.trace(harmful, plain[0], diff.parts, max_new_tokens=1, reference=reference)
pd.DataFrame(
    {"triggered": decision.use[0].tolist(), "without the trigger": untriggered.use[0].tolist()},
    index=decision.part_names,
).round(2)

# %% [markdown]
# `rerun(ablate=[...])` generates the whole decision again with the chosen parts ablated at
# every step, and says where it departs from the original.

# %%
rerun = decision.rerun(ablate=["backdoor"])
pd.Series(
    {
        "original": decision.text,
        "backdoor ablated": rerun.text,
        "departs at step": rerun.departs_at(),
        "the task's answer": task_answers[0],
    }
)

# %% [markdown]
# With `max_new_tokens=0` the trace steps through the prompt's own positions instead: each
# position's prediction of the next prompt token, and which parts it uses. The heat map shows
# where along the prompt each part matters; the cells name the token chosen without the part.

# %%
tls.trace(harmful, triggered[0], diff.parts, max_new_tokens=0, reference=reference).plot()

# %% [markdown]
# ## Where to go from here
#
# * `diff.effects_a` / `diff.effects_b` hold every component's effect on every task in both
#   models, for your own plots.
# * `tls.factorize(harmful, tasks)` finds the backdoor without the harmless model to compare
#   against, as one of the harmful model's sub-models (about half a minute here).
# * If the backdoor part costs other tasks too much, look for a sub-model that removes the
#   backdoor alone: `tls.find_circuit(harmful, backdoor_task)` and `tls.atoms` of it with the
#   tasks' circuits show which components the backdoor shares with which task.
