"""``tl-submodels trace``: step through a decision from a shell, and rerun it with parts ablated.

Kept apart from cli.py like cli_decompose.py: the steps x parts table and the rerun lines live here.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from tl_submodels.errors import TLSubmodelsError

__all__ = ["add_parser", "run"]


def add_parser(sub: Any, model_help: str) -> None:
    """Register the ``trace`` subcommand on ``sub`` (argparse subparsers)."""
    t = sub.add_parser("trace", help="step through a generated decision: each part's use at each step")
    t.add_argument("--model", required=True, help=model_help)
    t.add_argument("--prompt", required=True, help="the prompt text (the model's BOS is prepended)")
    t.add_argument("--parts", type=Path, help="a library folder of parts (decompose --out, factorize --out)")
    t.add_argument("--part", action="append", type=Path, default=[], help="a sub-model JSON file (repeatable)")
    t.add_argument("--max-new-tokens", type=int, default=16, help="tokens to generate (0: the prompt's own positions)")
    t.add_argument("--ablate", nargs="+", default=[], metavar="NAME", help="rerun with these parts ablated")
    t.add_argument(
        "--corpus",
        type=Path,
        help="text file (one sequence a line) whose activations give the means; default for a zoo model: its corpus",
    )
    t.add_argument("--ablation", default="mean", choices=["mean", "zero"])
    t.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def _reference(args: argparse.Namespace, model: Any) -> Any:
    """The token ids the means are taken over: the corpus file, or a zoo model's own corpus."""
    import torch

    import tl_submodels as tls
    from tl_submodels import cli_decompose
    from tl_submodels import model as tlmodel

    if args.ablation == "zero":
        return None
    n_ctx = tlmodel.model_info(model).n_ctx
    if args.corpus is not None:
        ids = [tlmodel.tokenize(model, text)[:n_ctx] for text in cli_decompose.read_corpus(args.corpus)]
        return [torch.tensor([row]) for row in ids]  # a list: sequences of different lengths
    if args.model in tls.zoo.list():
        return tls.zoo.corpus(args.model, n=256, seed=0)[:, :n_ctx]
    raise TLSubmodelsError(
        "mean ablation needs prompts to take the means over: pass --corpus FILE (one sequence a line), or --ablation zero"
    )


def run(args: argparse.Namespace, load: Any, dumps: Any) -> int:
    """Trace, print a steps x parts table of use, and the rerun's text beside the original."""
    from rich.console import Console
    from rich.table import Table

    import tl_submodels as tls

    console = Console(stderr=args.json)
    if args.parts is None and not args.part:
        raise TLSubmodelsError("no parts given: pass --parts FOLDER (a library) and/or --part FILE.json")
    model = load(args.model)
    parts = [*(tls.load_parts(args.parts, model) if args.parts is not None else []), *map(tls.SubModel.load, args.part)]
    tr = tls.trace(
        model,
        args.prompt,
        parts,
        max_new_tokens=args.max_new_tokens,
        ablation=args.ablation,
        reference=_reference(args, model),
    )
    rerun = tr.rerun(ablate=args.ablate) if args.ablate else None
    if args.json:
        print(dumps({"trace": tr.to_dict(), "rerun": None if rerun is None else rerun.to_dict()}, indent=2))
        return 0
    table = Table(
        title=f"{args.model}: {args.prompt!r} -> {tr.text!r}",
        caption="each cell: how much ablating the part alone lowers the log-probability of the chosen token (nats; "
        "negative: the part worked against it), and the token chosen without the part",
    )
    for col in ("step", "token", "p", *tr.part_names):
        table.add_column(col)
    for t in range(tr.steps):
        cells = [
            f"{float(tr.use[t, j]):+.2f} → {tr.counterfactual_words[t][j]}"
            + (" *" if tr.part_names[j] == tr.most_used(t) else "")
            for j in range(len(tr.part_names))
        ]
        table.add_row(str(t), tr.words[t], f"{float(tr.prob[t]):.2f}", *cells)
    console.print(table)
    console.print("* the part used most at that step")
    if rerun is not None:
        at = rerun.departs_at()
        labels = ("original", f"ablating {', '.join(args.ablate)}")
        width = max(map(len, labels)) + 1
        console.print(f"{labels[0] + ':':<{width}} {tr.text}")
        console.print(f"{labels[1] + ':':<{width}} {rerun.text}")
        console.print("the same decision" if at is None else f"departs at step {at}")
    return 0
