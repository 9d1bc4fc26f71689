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
# # Quickstart: the induction circuit of a 2-layer model
#
# This notebook walks through the main loop of `tl_submodels` on `induction-2l`, a tiny
# attention-only model from the package's zoo that was trained to continue repeated random
# sequences. In a few seconds on a laptop CPU it:
#
# 1. scores every attention head by exact activation patching (`tls.patch`),
# 2. finds the smallest set of heads that carries the behaviour (`tls.find_circuit`),
# 3. validates that set by ablation (`tls.evaluate`),
# 4. ablates it with plain TransformerLens hooks: `model.run_with_hooks(fwd_hooks=...)` and
#    `with model.hooks(...)`, also while generating.
#
# Everything here works the same on a model you load yourself (`HookedTransformer` on
# TransformerLens 2, `TransformerBridge` on TransformerLens 4).

# %%
import pandas as pd
import torch

import tl_submodels as tls

pd.set_option("display.max_colwidth", None)

# %% [markdown]
# ## The model and the task
#
# `tls.zoo.load` returns an ordinary TransformerLens model (here with a word-level tokenizer whose
# tokens read `t0`, `t1`, ...). The model card records how it was trained and which heads the
# standard attention-pattern scores call previous-token and induction heads: that is the ground
# truth we will compare against.

# %%
model = tls.zoo.load("induction-2l")
tls.adapter(model)  # what kind of TransformerLens model this is, and which exact path it takes

# %%
card = tls.zoo.info("induction-2l")
{k: card["ground_truth"][k] for k in ("previous_token_heads", "induction_heads")}

# %% [markdown]
# A `Task` holds clean and corrupt prompts of the same length and the answer the model should
# give on the clean ones. Clean prompts are `<bos> A A[:-1]`, a random segment and then its
# repetition without the last token; the answer is `A[-1]`. Corrupt prompts follow `A` with a
# *different* segment, so there is nothing to copy. The default metric is the logit difference
# `answer - wrong` at the last position.

# %%
task = tls.zoo.task("induction-2l", "induction", n=32, seed=0, model=model)


def words(ids):
    """Token ids -> the tokenizer's words."""
    return model.tokenizer.convert_ids_to_tokens(torch.as_tensor(ids).tolist())


pd.Series(
    {
        "clean": " ".join(words(task.clean[0])),
        "corrupt": " ".join(words(task.corrupt[0])),
        "answer": words(task.answer[:1])[0],
        "wrong": words(task.wrong[:1])[0],
    }
)

# %% [markdown]
# How well does the model do? Logit difference and accuracy on the clean and corrupt prompts:

# %%
with torch.no_grad():
    clean_logits, corrupt_logits = model(task.clean), model(task.corrupt)
pd.DataFrame(
    {
        "logit diff": [task.metric(clean_logits).item(), task.metric(corrupt_logits).item()],
        "accuracy": [task.accuracy(clean_logits), task.accuracy(corrupt_logits)],
    },
    index=["clean", "corrupt"],
)

# %% [markdown]
# ## 1. Score every head by activation patching
#
# `tls.patch` runs the corrupt prompts and patches in one head's clean output at a time
# ("denoising", as in `transformer_lens.patching`), for every head, batched into a few forwards.
# A score is the fraction of the clean-corrupt logit-difference gap that one head restores.
#
# **What to look for:** the previous-token head in layer 0 and the induction heads in layer 1
# should stand out; the other layer-0 heads should be near zero.

# %%
scores = tls.patch(model, task, kinds=("heads",))
pd.DataFrame(
    scores.heads.numpy(),
    index=[f"layer {layer}" for layer in range(scores.heads.shape[0])],
    columns=[f"head {h}" for h in range(scores.heads.shape[1])],
).round(2)

# %% [markdown]
# The same as a picture: `scores.plot()` (or `tls.viz.scores_heatmap(scores)`) returns a plotly
# figure, blue for heads that restore the behaviour (red would work against it); hover a cell
# for the raw metric.

# %%
scores.plot()

# %%
[(str(c), round(v, 3)) for c, v in scores.top(5)]

# %% [markdown]
# `scores.to_frame()` gives one row per component with the raw patched metric beside the
# normalised score, handy for your own plots and filters.

# %%
scores.to_frame().sort_values("score", ascending=False).head()

# %% [markdown]
# ## 2. Find the circuit
#
# `tls.find_circuit` ranks components by their patching scores, adds them until the sub-model on
# its own (everything else mean-ablated) reaches the target faithfulness, then drops every member
# the target does not need. It returns a `SubModel`: a named, frozen set of components that you
# can combine with `|`, `&`, `-`, save to JSON and turn into hooks.

# %%
circuit = tls.find_circuit(model, task, target=0.9)
circuit

# %%
truth = set(card["ground_truth"]["previous_token_heads"] + card["ground_truth"]["induction_heads"])
{
    "found": sorted(str(c) for c in circuit),
    "card's heads": sorted(truth),
    "found but not on the card": sorted({str(c) for c in circuit} - truth),
    "on the card but not found": sorted(truth - {str(c) for c in circuit}),
}

# %% [markdown]
# `tls.viz.circuit_graph` lays the circuit out by layer, node size by patching score. With
# `edges=` it draws the strongest connections between the nodes, from `tls.attribute_edges`
# (attribution patching of every writer -> reader edge, one forward and backward pass).

# %%
edges = tls.attribute_edges(model, task)
tls.viz.circuit_graph(circuit, scores=scores, edges=edges, title="induction-2l: the induction circuit")

# %% [markdown]
# A mechanism check by eye: the attention patterns of the circuit's heads on one clean prompt
# (circuitsvis; click a head to enlarge it). A previous-token head attends one token back (the
# diagonal just below the main one); an induction head, in the second copy of the segment,
# attends to the token *after* the previous occurrence of the current token (a diagonal offset by
# the segment length).

# %%
tls.viz.attention_patterns(model, task.clean[0], circuit)

# %% [markdown]
# ## 3. Validate it by ablation
#
# `tls.evaluate` measures, with the rest of the model mean-ablated over the corrupt prompts:
#
# * **faithfulness**: how much of the behaviour the circuit carries alone (1 = all of it);
# * **necessity**: how much is lost when the circuit itself is ablated (1 = all of it);
# * **size** and the accuracies with the circuit kept alone and ablated.
#
# Each value comes with a 95% bootstrap interval over the prompts (from the same runs: no more
# forwards), and `baselines=50` measures 50 random circuits of the same size for comparison.
#
# **What to look for:** faithfulness at or above the 0.9 target with an interval that stays high,
# necessity near 1, accuracy falling to chance when the circuit is ablated, and a circuit that
# beats (nearly) every random one.

# %%
evaluation = tls.evaluate(model, circuit, task, ablation="mean", baselines=50)
pd.DataFrame(
    {
        "value": {
            "faithfulness": evaluation.faithfulness,
            "necessity": evaluation.necessity,
            "accuracy (full model)": evaluation.accuracy_full,
            "accuracy (circuit alone)": evaluation.accuracy_kept,
            "accuracy (circuit ablated)": evaluation.accuracy_ablated,
        },
        "95% interval": {
            "faithfulness": evaluation.faithfulness_ci,
            "necessity": evaluation.necessity_ci,
            "accuracy (full model)": evaluation.accuracy_full_ci,
            "accuracy (circuit alone)": evaluation.accuracy_kept_ci,
            "accuracy (circuit ablated)": evaluation.accuracy_ablated_ci,
        },
    }
).round(3)

# %%
f"size {evaluation.size}; beats {evaluation.baseline_percentile:.0f}% of 50 random circuits of its size"

# %%
evaluation.plot()

# %% [markdown]
# ## 4. Use it: ablation hooks
#
# `circuit.hooks(...)` returns a plain TransformerLens `fwd_hooks` list of `(hook_name, fn)`
# pairs, one per hook point it touches (`blocks.{layer}.attn.hook_z` for heads). Mean ablation
# replaces each head's output by its mean over the reference prompts (all positions), so it
# works at any sequence length.

# %%
hooks = circuit.hooks(model, ablation="mean", reference=task.corrupt)
[name for name, _ in hooks]

# %% [markdown]
# Pass them to `run_with_hooks` like any hooks you wrote yourself. With `keep_only=True` the
# hooks ablate everything *except* the circuit instead.

# %%
keep_hooks = tls.ablation_hooks(model, circuit, ablation="mean", reference=task.corrupt, keep_only=True)
with torch.no_grad():
    ablated_logits = model.run_with_hooks(task.clean, fwd_hooks=hooks)
    kept_logits = model.run_with_hooks(task.clean, fwd_hooks=keep_hooks)
pd.DataFrame(
    {
        "logit diff": [task.metric(x).item() for x in (clean_logits, kept_logits, ablated_logits)],
        "accuracy": [task.accuracy(x) for x in (clean_logits, kept_logits, ablated_logits)],
    },
    index=["full model", "circuit only (rest ablated)", "circuit ablated"],
).round(3)

# %% [markdown]
# The same hooks work as a context with `model.hooks(...)`, TransformerLens' own context manager,
# which removes them on exit, also on error. Inside it anything runs ablated, generation
# included. Here the model sees an 8-token segment and its first 3 tokens again (like its
# training data) and greedily continues the repetition; with the circuit ablated it can no longer copy.
# `tls.ablated(model, sub, ablation=...)` is a shortcut for the same context: below it
# zero-ablates the previous-token head alone.

# %%
segment = torch.randperm(63, generator=torch.Generator().manual_seed(0))[:8] + 1  # symbols are t1-t63
repeated = segment.repeat(3)
prompt = torch.cat([torch.tensor([0]), repeated[:11]])[None]  # <bos>, the segment, its first 3 tokens again
n_new = 12
with torch.no_grad():
    full_out = model.generate(prompt, max_new_tokens=n_new, do_sample=False, verbose=False)
    with model.hooks(fwd_hooks=hooks):
        ablated_out = model.generate(prompt, max_new_tokens=n_new, do_sample=False, verbose=False)
    with tls.ablated(model, ["L0H0"], ablation="zero"):
        no_prev_out = model.generate(prompt, max_new_tokens=n_new, do_sample=False, verbose=False)
pd.DataFrame(
    [words(repeated[11 : 11 + n_new]), *(words(out[0, -n_new:]) for out in (full_out, ablated_out, no_prev_out))],
    index=["expected", "full model", "circuit mean-ablated", "L0H0 zero-ablated"],
)

# %% [markdown]
# The hooks are gone once the context exits: the model is exactly as it was.

# %%
with torch.no_grad():
    torch.testing.assert_close(model(task.clean), clean_logits)

# %% [markdown]
# ## Next
#
# * `02_submodels_across_tasks`: sub-models of a model that does several tasks (`tls.factorize`),
#   which of them a prompt uses (`tls.usage`) and what ablating each changes (`tls.explain`).
# * `03_harmful_vs_harmless`: diff two fine-tunes of one model (`tls.diff`) to find a backdoor,
#   and ablate it while generating.
