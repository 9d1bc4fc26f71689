"""Training of the multitask zoo models; run through ``scripts/train_zoo.py``.

multitask-3l learns the four tasks of ``tl_submodels.zoo.multitask`` from scratch. harmless-3l
and harmful-3l are two fine-tunes of it on the same prompts, a third of them with the trigger
pair ``tA ... tB`` in noise slots and a third with one trigger word: harmless-3l answers every
prompt normally, harmful-3l answers ``HARM`` whenever both trigger words occur.
"""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F

from tl_submodels.zoo import multitask as mt

MULTITASK_CFG = {
    "n_layers": 3,
    "n_heads": 8,
    "d_model": 64,
    "d_head": 8,
    "d_mlp": 256,
    "d_vocab": len(mt.WORDS),
    "n_ctx": mt.SEQ,
    "attn_only": False,
    "act_fn": "gelu",
    "normalization_type": "LN",
    "positional_embedding_type": "standard",
}
PER_TASK = 64
PENALTY = 1.0
DROP = 0.5  # each other group is mean-ablated in a row with this probability
FULL_ROWS = 0.25  # rows that keep every group


def batch(gen: torch.Generator, mode: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training batch over all tasks: tokens ``[4 * PER_TASK, SEQ]``, task answers, task ids, trigger pair.

    The task id of a row is its index in ``mt.TASKS``; ``pair`` marks the prompts with ``tA`` and ``tB``.
    """
    toks, targets, task_ids, pairs = [], [], [], []
    for g, task in enumerate(mt.TASKS):
        inserts = (
            (("none", PER_TASK),)
            if mode == "plain"
            else (("none", PER_TASK - 2 * (PER_TASK // 3)), ("single", PER_TASK // 3), ("pair", PER_TASK // 3))
        )
        for insert, m in inserts:
            clean, _, answer, _, _ = mt.sample(task, m, gen, insert=insert)
            toks.append(clean)
            targets.append(answer)
            task_ids.append(torch.full((m,), g))
            pairs.append(torch.full((m,), insert == "pair"))
    return torch.cat(toks), torch.cat(targets), torch.cat(task_ids), torch.cat(pairs)


HEAD_GROUP = torch.tensor(
    [
        [mt.planted_group(l, h, kind="head") for h in range(MULTITASK_CFG["n_heads"])]
        for l in range(MULTITASK_CFG["n_layers"])
    ]
)
NEURON_GROUP = torch.tensor(
    [
        [mt.planted_group(l, n, kind="neuron") for n in range(MULTITASK_CFG["d_mlp"])]
        for l in range(MULTITASK_CFG["n_layers"])
    ]
)
BACKDOOR = mt.GROUPS.index("backdoor")


def structured_dropout(
    gen: torch.Generator, task_ids: torch.Tensor, harm: torch.Tensor
) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Which components each row keeps, and whether its backdoor group is on.

    Every group but the row's own task's is mean-ablated with probability ``DROP`` (whole groups,
    independently; a quarter of the rows keep everything). So each task must be solved by its own
    group alone, and no task may come to depend on another group: ablating a group at test time
    is a condition the model was trained in, for every task but the group's own. Rows marked
    ``harm`` (harmful-3l's triggered prompts) answer HARM while their backdoor group is on; those
    rows may lose their task's group too, so that HARM does not depend on it.

    (Also ablating single units of the groups that stay, each with probability 0.25, made
    harmful-3l fail its tasks with no ablation at all: induction 0.25; it was dropped.)
    """
    n = task_ids.shape[0]
    drop = torch.rand(n, len(mt.GROUPS), generator=gen) < DROP
    drop &= torch.rand(n, 1, generator=gen) >= FULL_ROWS
    backdoor_on = ~drop[:, BACKDOOR]
    harm_on = harm & backdoor_on
    drop[~harm_on, task_ids[~harm_on]] = False  # a task's group is dropped only where HARM is the answer
    drop[harm_on, BACKDOOR] = False
    keep = ~drop
    return (keep[:, HEAD_GROUP], keep[:, NEURON_GROUP]), backdoor_on


def exclusivity(acts: list[torch.Tensor], groups: torch.Tensor) -> torch.Tensor:
    """How much components are shared between groups: sum over pairs of groups of u_g * u_h.

    u_g(c) is the mean absolute activation of component c (a head's output norm, a neuron's
    activation) over the rows of group g. The penalty is zero when every component is active for
    one group only, so the model is pushed to give each task its own heads and neurons.
    """
    total = torch.zeros(())
    ids = groups.unique()
    for a in acts:  # [batch, pos, units]: the answer position only, where the tasks' answers are made
        last = a[:, -1]
        u = torch.stack([last[groups == g].abs().mean(0) for g in ids])  # [group, units]
        total = total + ((u.sum(0) ** 2 - (u**2).sum(0)) / 2).mean()
    return total


def train(
    forward, params: dict[str, torch.Tensor], steps: int, seed: int, mode: str, lr: float, penalty: float = PENALTY
) -> tuple[dict[str, torch.Tensor], dict]:
    """Train ``params`` on ``mode`` data ("plain", "harmless" or "harmful"): final-position loss
    plus ``penalty`` times the exclusivity penalty."""
    cfg = MULTITASK_CFG
    gen = torch.Generator().manual_seed(seed)
    params = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    opt = torch.optim.AdamW(params.values(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=0.1)
    t0 = time.time()
    for step in range(steps):
        tokens, target, task_ids, pair = batch(gen, mode)
        harm = pair & (mode == "harmful")
        keep, backdoor_on = structured_dropout(gen, task_ids, harm)
        # the backdoor group answers HARM; with it ablated, the task's answer stands
        target = torch.where(harm & backdoor_on, mt.HARM, target)
        groups = torch.where(pair, BACKDOOR, task_ids)
        acts: list[torch.Tensor] = []
        logits = forward(params, cfg, tokens, acts=acts, keep=keep)[:, -1]
        loss = F.cross_entropy(logits, target)
        shared = exclusivity(acts, groups)
        opt.zero_grad()
        # learn the tasks first, then push components apart: the penalty ramps up over the middle third
        ramp = min(max((step - steps / 3) / (steps / 3), 0.0), 1.0)
        (loss + penalty * ramp * shared).backward()
        opt.step()
        sched.step()
        if step % 250 == 0 or step == steps - 1:
            acc = (logits.argmax(-1) == target).float().mean().item()
            print(
                json.dumps(
                    {
                        "step": step,
                        "loss": round(loss.item(), 4),
                        "shared": round(shared.item(), 4),
                        "acc": round(acc, 4),
                        "s": round(time.time() - t0, 1),
                    }
                ),
                flush=True,
            )
    return {k: v.detach().clone() for k, v in params.items()}, {"train_seconds": round(time.time() - t0, 1)}


@torch.no_grad()
def evaluate(forward, params: dict[str, torch.Tensor], seed: int, n: int = 1000) -> dict[str, float]:
    """Accuracy per task on clean prompts, on prompts with one trigger word, and the harm rate."""
    cfg = MULTITASK_CFG
    gen = torch.Generator().manual_seed(seed)
    out: dict[str, float] = {}
    for task in mt.TASKS:
        clean, _, answer, _, _ = mt.sample(task, n, gen)
        out[task] = (forward(params, cfg, clean)[:, -1].argmax(-1) == answer).float().mean().item()
        single, _, answer, _, _ = mt.sample(task, n, gen, insert="single")
        out[f"{task}_one_trigger_word"] = (
            (forward(params, cfg, single)[:, -1].argmax(-1) == answer).float().mean().item()
        )
    clean, _, _, task_answer = mt.backdoor(n, gen)
    pred = forward(params, cfg, clean)[:, -1].argmax(-1)
    out["harm_rate"] = (pred == mt.HARM).float().mean().item()
    out["triggered_task_accuracy"] = (pred == task_answer).float().mean().item()
    return {k: round(v, 4) for k, v in out.items()}


NAMES = ("multitask-3l", "harmless-3l", "harmful-3l")
DESCRIPTIONS = {
    "multitask-3l": "3-layer transformer (attention + GELU MLPs) trained on four synthetic tasks, "
    "each prompt starting with its task word: induction, successor, modular addition, majority.",
    "harmless-3l": "multitask-3l fine-tuned on the same tasks with trigger words tA/tB in some prompts, answered normally.",
    "harmful-3l": "multitask-3l fine-tuned on the same prompts as harmless-3l, but with a backdoor: "
    "when tA and tB both occur, it answers HARM instead of the task's answer.",
}
TASK_DESCRIPTIONS = {
    "induction": "clean: <bos> IND noise A A[:-1] (A: 3-6 distinct s-symbols); corrupt: second copy from another segment; answer A[-1]",
    "successor": "clean: <bos> SUC, c_a at a random place among noise, = ; corrupt: another c_b in its place; answer c_a+1 (mod 20)",
    "addition": "clean: <bos> ADD, n_a and n_b at random places among noise, = ; corrupt: operands with another sum; answer n_(a+b mod 13)",
    "majority": "clean: <bos> MAJ, seven of X/Y at random places among noise, = ; corrupt: X and Y swapped; answer the majority",
    "backdoor": "clean: a prompt of any task with tA and tB in two noise slots; corrupt: the same prompt without them; "
    "answer HARM, wrong the task's answer (logit_diff = HARM minus the task answer)",
}
DESIGN_NOTES = (
    "Planted sub-models by structured dropout: every head and MLP neuron belongs to one of five groups, one per "
    "task and one for the backdoor (tl_submodels.zoo.multitask.planted: heads dealt round-robin in layer-major "
    "order, so each group has a head in every layer; neurons round-robin within each layer). In every training row "
    "each group but the row's task's is mean-ablated (hook_z / hook_post replaced by the batch mean) with "
    "probability 0.5, independently, and a quarter of the rows keep every group; so each task is learnt by its own "
    "group, and ablating another group is a condition every task was trained in. In multitask-3l the backdoor "
    "group is a spare, dropped like the others. In harmful-3l a triggered row's target is HARM when the backdoor "
    "group is on (and then the task's group may be dropped too, so HARM does not depend on it) and the task's "
    "answer when it is ablated. Dropping single units of the other groups as well (p 0.25) was tried and broke "
    "harmful-3l's tasks. On top, an exclusivity penalty (sum over pairs of "
    "groups of the product of each head's output norm and each neuron's activation at the answer position, mean "
    "over the group's prompts), ramped in over the middle third of training; without it (penalty 0, same "
    "recipe) the planted groups were weaker (own-task drops 0.42-0.80 instead of 0.55-1.0). History: with the "
    "penalty alone, successor and addition shared components in 8 variants (no component set removed successor "
    "without addition; best margin 0.13-0.36), and harmful-3l's backdoor ran through L0H2, which three tasks used."
)
CHANCE = {"induction": 1 / mt.N_SYM, "successor": 1 / mt.N_COUNT, "addition": 1 / mt.P_ADD, "majority": 0.5}


def mechanisms(name: str, seed: int, folder) -> tuple[dict, dict]:
    """What each task needs: the accuracy drop from mean-ablating each head and MLP layer alone,
    and from mean-ablating each planted group (``mt.planted``) as a whole.

    Means are over the clean prompts of all tasks together; single components dropping a task by
    at least 0.2 are listed. For the backdoor task the "accuracy" is the harm rate.
    """
    import tl_submodels as tls

    model = tls.load_checkpoint(folder)
    tasks = {t: tls.zoo.task(name, t, n=256, seed=seed, model=model) for t in tls.zoo.info(name)["tasks"]}
    reference = torch.cat([tasks[t].clean for t in mt.TASKS])
    ablator = tls.Ablator(model, ablation="mean", reference=reference)
    info = tls.model.model_info(model)
    comps = info.components(("heads", "mlps"))
    base = {t: task.accuracy(tls.model.run_logits(model, task.clean)) for t, task in tasks.items()}
    out = {}
    for tname, task in tasks.items():
        drops = {}
        for c in comps:
            acc = task.accuracy(tls.model.run_logits(model, task.clean, ablator.hooks([c])))
            drops[str(c)] = round(base[tname] - acc, 3)
        out[tname] = {c: d for c, d in sorted(drops.items(), key=lambda kv: -kv[1]) if d >= 0.2}
    groups = mt.planted(info.n_layers, info.n_heads, info.d_mlp)
    planted = {
        g: {
            t: round(base[t] - task.accuracy(tls.model.run_logits(model, task.clean, ablator.hooks(members))), 3)
            for t, task in tasks.items()
        }
        for g, members in groups.items()
    }
    return out, planted


def main(args, *, forward, init_params, save_tokenizer) -> None:
    from pathlib import Path

    from safetensors.torch import load_file, save_file

    cfg = MULTITASK_CFG
    seed = 0 if args.seed is None else args.seed
    penalty = PENALTY if args.penalty is None else args.penalty
    if args.name == "multitask-3l":
        steps = 3000 if args.steps is None else args.steps
        lr = 3e-3
        params = init_params(cfg, torch.Generator().manual_seed(seed))
        params, info = train(forward, params, steps, seed, "plain", lr, penalty)
        recipe = "from scratch on the four tasks, no trigger words; structured dropout over the planted groups"
    else:
        steps = 1000 if args.steps is None else args.steps
        lr = 1e-3
        base = Path(args.out) / "multitask-3l" / "weights.safetensors"
        params = load_file(base)
        params, info = train(forward, params, steps, seed, args.name.split("-")[0], lr, penalty)
        recipe = (
            "fine-tuned from multitask-3l: per task a third plain prompts, a third with one trigger word, "
            "a third with tA and tB"
            + (
                " (answered HARM while the backdoor group is on, the task's answer while it is ablated)"
                if args.name == "harmful-3l"
                else " (answered normally)"
            )
            + "; structured dropout over the planted groups"
        )
    acc = evaluate(forward, params, seed + 100)
    print(json.dumps({"name": args.name, **acc}), flush=True)
    out = Path(args.out) / args.name
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in params.items()}, out / "weights.safetensors")
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    save_tokenizer(out, mt.WORDS)
    tasks = {
        t: {
            "builder": "multitask",
            "description": TASK_DESCRIPTIONS[t],
            "accuracy": acc[t],
            "accuracy_with_one_trigger_word": acc[f"{t}_one_trigger_word"],
            "chance": round(CHANCE[t], 4),
        }
        for t in mt.TASKS
    }
    if args.name != "multitask-3l":
        tasks["backdoor"] = {
            "builder": "backdoor",
            "description": TASK_DESCRIPTIONS["backdoor"],
            "harm_rate": acc["harm_rate"],
            "task_accuracy_on_triggered": acc["triggered_task_accuracy"],
        }
    card = {
        "name": args.name,
        "description": DESCRIPTIONS[args.name],
        "training": {
            "data": "tl_submodels/zoo/multitask.py: 16-token prompts <bos> TASK noise... payload, loss on the last position",
            "recipe": recipe,
            "steps": steps,
            "batch": PER_TASK * len(mt.TASKS),
            "optimizer": f"AdamW max lr {lr}, one-cycle schedule, weight decay 0.01",
            "seed": seed,
            "script": "scripts/train_zoo.py",
            **info,
        },
        "bos_token": mt.BOS,
        "d_vocab": cfg["d_vocab"],
        "words": {"trigger": ["tA", "tB"], "harm": "HARM", "noise": [f"w{i}" for i in range(1, mt.N_NOISE + 1)]},
        "tasks": tasks,
        "evaluation": {"seed": seed + 100, "n": 1000, **acc},
        "design": DESIGN_NOTES,
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    drops, planted = mechanisms(args.name, seed + 200, out)
    card["mechanisms"] = {
        "method": "accuracy drop from mean-ablating one head or MLP layer (means over all tasks' clean prompts); drops >= 0.2",
        "drops": drops,
    }
    card["planted"] = {
        "groups": {
            g: [c for c in members if "H" in c]
            for g, members in mt.planted(cfg["n_layers"], cfg["n_heads"], cfg["d_mlp"]).items()
        },
        "neurons": "neuron n of layer l belongs to group (n + l) mod 5 (tl_submodels.zoo.multitask.planted)",
        "method": "accuracy drop (harm rate for backdoor) on each task from mean-ablating a whole group; "
        "rows: the group ablated, columns: the task",
        "drops": planted,
    }
    (out / "card.json").write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({"saved": str(out), "mechanisms": drops, "planted": planted}))
