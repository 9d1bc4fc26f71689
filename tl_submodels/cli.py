"""The ``tl-submodels`` command: the package's main jobs from a shell.

Exit codes: 0 success, 1 the analysis failed, 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from tl_submodels.errors import TLSubmodelsError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="tl-submodels", description="Find and validate the sub-models a TransformerLens model uses."
    )
    sub = p.add_subparsers(dest="command", required=True)

    zoo = sub.add_parser("zoo", help="the bundled tiny trained models")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True)
    zsub.add_parser("list", help="names of the zoo models")
    zinfo = zsub.add_parser("info", help="a zoo model's card")
    zinfo.add_argument("name")

    d = sub.add_parser("discover", help="score components by exact patching and find a circuit for a task")
    d.add_argument("--model", required=True, help="a zoo model name (see `tl-submodels zoo list`)")
    d.add_argument("--task", required=True, help="a task of that zoo model")
    d.add_argument("--n", type=int, default=64, help="number of examples (default 64)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--target", type=float, default=0.9, help="faithfulness to reach (default 0.9)")
    d.add_argument("--ablation", default="mean", choices=["zero", "mean", "resample"])
    d.add_argument("--top", type=int, default=10, help="how many top components to print")
    d.add_argument("--out", type=Path, help="write the circuit as JSON here")
    d.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``tl-submodels`` console script.

    Example:
        $ tl-submodels discover --model induction-2l --task induction --out circuit.json
    """
    args = _parser().parse_args(argv)
    try:
        if args.command == "zoo":
            return _zoo(args)
        return _discover(args)
    except TLSubmodelsError as e:
        print(f"tl-submodels: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the analysis itself failed
        print(f"tl-submodels: analysis failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def _zoo(args: argparse.Namespace) -> int:
    from tl_submodels import zoo

    if args.zoo_command == "list":
        for name in zoo.list():
            print(name)
    else:
        print(json.dumps(zoo.info(args.name), indent=2))
    return 0


def _discover(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    import tl_submodels as tls

    console = Console(stderr=args.json)
    with console.status(f"loading {args.model}"):
        model = tls.zoo.load(args.model)
        task = tls.zoo.task(args.model, args.task, n=args.n, seed=args.seed, model=model)
    scores = tls.patch(model, task, progress=True)
    circuit = tls.find_circuit(model, task, target=args.target, ablation=args.ablation, scores=scores, progress=True)
    ev = tls.evaluate(model, circuit, task, ablation=args.ablation)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        circuit.save(args.out)
    if args.json:
        out: dict[str, Any] = {
            "model": args.model,
            "task": args.task,
            "top": [{"component": str(c), "score": v} for c, v in scores.top(args.top)],
            "circuit": circuit.to_dict(),
            "evaluation": ev.to_dict(),
        }
        print(json.dumps(out, indent=2))
        return 0
    table = Table(
        title=f"top components: {args.model} / {args.task} (exact patching, {scores.direction}, {scores.metric})"
    )
    table.add_column("component")
    table.add_column("score", justify="right")
    table.add_column("raw metric", justify="right")
    raw = scores.to_frame().set_index("component")["raw"]
    for c, v in scores.top(args.top):
        table.add_row(str(c), f"{v:+.3f}", f"{raw[str(c)]:.3f}")
    console.print(table)
    console.print(f"clean metric {scores.clean_metric:.3f}, corrupt metric {scores.corrupt_metric:.3f}")
    console.print(f"[bold]circuit[/bold] ({len(circuit)} components): {', '.join(str(c) for c in circuit)}")
    ev_table = Table(title=f"evaluation ({args.ablation} ablation)")
    for col in ("faithfulness", "necessity", "size", "accuracy full", "accuracy kept", "accuracy ablated"):
        ev_table.add_column(col, justify="right")
    ev_table.add_row(
        f"{ev.faithfulness:.3f}",
        f"{ev.necessity:.3f}",
        str(ev.size),
        f"{ev.accuracy_full:.3f}",
        f"{ev.accuracy_kept:.3f}",
        f"{ev.accuracy_ablated:.3f}",
    )
    console.print(ev_table)
    if args.out:
        console.print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
