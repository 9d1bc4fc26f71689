"""The ``tl-submodels`` command: the package's main jobs from a shell.

Exit codes: 0 success, 1 the analysis failed, 2 bad input (one line on stderr, no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, NoReturn

from tl_submodels import cli_decompose, cli_trace
from tl_submodels.cli_words import (
    DIFF_LEGEND,
    ESTIMATE_LEGEND,
    EVALUATION_LEGEND,
    FACTORIZE_LEGEND,
    SCORE_LEGEND,
    frame_interval,
    in_words,
    outside_unit_notes,
    with_interval,
)
from tl_submodels.errors import TLSubmodelsError

__all__ = ["MODEL_HELP", "TASK_HELP", "main"]

MODEL_HELP = (
    "a zoo model name (`tl-submodels zoo list`), a checkpoint folder (config.json + weights.safetensors in "
    "HookedTransformer layout [+ tokenizer.json]), a HuggingFace folder as save_pretrained writes it (config.json "
    "+ model.safetensors or pytorch_model.bin [+ tokenizer files]; loads offline), or a HuggingFace model name "
    "(loaded through TransformerLens; needs the hub or its local cache)"
)
TASK_HELP = "a task of the zoo model, or a JSONL file of {clean, corrupt, answer, wrong} rows (repeatable)"


class _Parser(argparse.ArgumentParser):
    """argparse with the package's exit convention: bad input is one line on stderr and exit code 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"tl-submodels: error: {message} (see `{self.prog} --help`)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="tl-submodels", description="Find and validate the sub-models a TransformerLens model uses.")
    sub = p.add_subparsers(dest="command", required=True)

    zoo = sub.add_parser("zoo", help="the bundled tiny trained models")
    zsub = zoo.add_subparsers(dest="zoo_command", required=True)
    zlist = zsub.add_parser("list", help="names of the zoo models")
    zlist.add_argument("--json", action="store_true", help="machine-readable output on stdout")
    zinfo = zsub.add_parser("info", help="a zoo model's card")
    zinfo.add_argument("name")
    zcorpus = zsub.add_parser("corpus", help="a zoo model's training-like corpus as text, one sequence a line")
    zcorpus.add_argument("name")
    zcorpus.add_argument("--n", type=int, default=64, help="sequences (default 64)")
    zcorpus.add_argument("--seed", type=int, default=0)

    d = sub.add_parser("discover", help="score components by exact patching and find a circuit for a task")
    d.add_argument("--model", required=True, help=MODEL_HELP)
    d.add_argument("--task", required=True, help="a task of the zoo model, or a JSONL file of task rows")
    d.add_argument("--n", type=int, default=64, help="number of examples (default 64)")
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--target", type=float, default=0.9, help="faithfulness to reach (default 0.9)")
    d.add_argument("--ablation", default="mean", choices=["zero", "mean", "resample"])
    d.add_argument("--top", type=int, default=10, help="how many top components to print")
    d.add_argument("--baselines", type=int, default=0, help="compare with this many random circuits of its size")
    d.add_argument(
        "--holdout", type=float, default=None, help="fraction of prompts kept out of the search, to check on"
    )
    d.add_argument("--out", type=Path, help="write the circuit as JSON here")
    d.add_argument("--json", action="store_true", help="machine-readable output on stdout")

    sc = sub.add_parser("scores", help="score every component for a task (exact patching or attribution)")
    sc.add_argument("--model", required=True, help=MODEL_HELP)
    sc.add_argument("--task", required=True, help="a task of the zoo model, or a JSONL file of task rows")
    sc.add_argument("--method", default="patch", choices=["patch", "atp", "ig"], help="default: exact patching")
    sc.add_argument("--kinds", default=None, help="comma-separated: heads,neurons,mlps (default: all the model has)")
    sc.add_argument("--direction", default="denoising", choices=["denoising", "noising"])
    sc.add_argument("--n", type=int, default=64, help="number of examples of a zoo task (default 64)")
    sc.add_argument("--seed", type=int, default=0)
    sc.add_argument("--top", type=int, default=10, help="how many top components to print")
    sc.add_argument("--n-boot", type=int, default=None, help="bootstrap resamples for 95%% intervals (e.g. 1000)")
    sc.add_argument("--out", type=Path, help="write all scores as JSON here (Scores.from_dict reads it)")
    sc.add_argument("--json", action="store_true", help="machine-readable output on stdout")

    task_help = TASK_HELP
    f = sub.add_parser("factorize", help="factor the components into sub-models across tasks (NMF, validated)")
    f.add_argument("--model", required=True, help=MODEL_HELP)
    f.add_argument("--task", required=True, action="append", help=task_help)
    f.add_argument("--n", type=int, default=64, help="examples per zoo task (default 64)")
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--k", type=int, default=None, help="number of sub-models (default: chosen by cross-validation)")
    f.add_argument("--method", "--scorer", dest="method", default="patch", choices=["patch", "atp", "ig"])
    f.add_argument("--out", type=Path, help="write each sub-model as JSON into this folder")
    f.add_argument("--json", action="store_true", help="machine-readable output on stdout")

    e = sub.add_parser("explain", help="top predictions for a prompt with each sub-model ablated")
    e.add_argument("--model", required=True, help=MODEL_HELP)
    e.add_argument("--prompt", required=True, help="the prompt text (the model's BOS is prepended)")
    e.add_argument("--part", required=True, action="append", type=Path, help="a sub-model JSON file (repeatable)")
    e.add_argument(
        "--reference", required=True, action="append", help="task(s) whose corrupt prompts give the means: " + task_help
    )
    e.add_argument("--k", type=int, default=5, help="predictions to list (default 5)")
    e.add_argument("--n", type=int, default=64, help="examples per zoo reference task (default 64)")
    e.add_argument("--json", action="store_true", help="machine-readable output on stdout")

    df = sub.add_parser("diff", help="components and sub-models whose effects differ between two models")
    df.add_argument("--model-a", required=True, help=MODEL_HELP)
    df.add_argument("--model-b", required=True, help="the same, a model of the same architecture")
    df.add_argument(
        "--task", required=True, action="append", help="a task of model b's zoo card, or a JSONL file (repeatable)"
    )
    df.add_argument("--n", type=int, default=64, help="examples per zoo task (default 64)")
    df.add_argument("--seed", type=int, default=0)
    df.add_argument("--top", type=int, default=10, help="how many differing components to print")
    df.add_argument("--json", action="store_true", help="machine-readable output on stdout")

    cli_decompose.add_parser(sub, MODEL_HELP)
    cli_trace.add_parser(sub, MODEL_HELP)

    r = sub.add_parser("report", help="one offline HTML report: scores, sub-models, usage, attention, graph")
    r.add_argument("--model", required=True, help=MODEL_HELP)
    r.add_argument("--task", required=True, action="append", help=task_help)
    r.add_argument(
        "--part",
        action="append",
        type=Path,
        help="a sub-model JSON file (repeatable). Default: tls.factorize's specific sub-models for several tasks, "
        "tls.find_circuit's circuit for one",
    )
    r.add_argument("--factorize", action="store_true", help="report tls.factorize's sub-models (also for one task)")
    r.add_argument("--circuits", action="store_true", help="report one tls.find_circuit circuit per task")
    r.add_argument("--prompt", help="the prompt for usage and attention (default: the first task's first prompt)")
    r.add_argument("--ablation", default="mean", choices=["mean", "zero"])
    r.add_argument("--n", type=int, default=64, help="examples per zoo task (default 64)")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--out", type=Path, required=True, help="the HTML file to write")
    r.add_argument("--json", action="store_true", help="machine-readable output on stdout")
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
        commands = {
            "discover": _discover,
            "scores": _scores,
            "factorize": _factorize,
            "explain": _explain,
            "diff": _diff,
            "report": _report,
            "decompose": lambda a: cli_decompose.run(a, _load, _dumps),
            "trace": lambda a: cli_trace.run(a, _load, _dumps),
        }
        command = commands[args.command]
        return command(args)
    except TLSubmodelsError as e:
        print(f"tl-submodels: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # the analysis itself failed
        print(f"tl-submodels: analysis failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


def _zoo(args: argparse.Namespace) -> int:
    from tl_submodels import zoo

    if args.zoo_command == "list":
        if args.json:
            print(_dumps(zoo.list()))
        for name in [] if args.json else zoo.list():
            print(name)
    elif args.zoo_command == "corpus":  # text without the BOS, which decompose and trace prepend
        zoo.info(args.name)  # an unknown name: the clear error, before any loading
        model = zoo.load(args.name)
        bos = getattr(model.tokenizer, "bos_token_id", None)
        for row in zoo.corpus(args.name, n=args.n, seed=args.seed).tolist():
            print(" ".join(model.tokenizer.convert_ids_to_tokens(row[1:] if row and row[0] == bos else row)))
    else:
        print(_dumps(zoo.info(args.name), indent=2))
    return 0


def _discover(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    import tl_submodels as tls

    console = Console(stderr=args.json)
    with console.status(f"loading {args.model}"):
        model = _load(args.model)
        (task,) = _tasks(args.model, model, [args.task], args.n, args.seed)
    from tl_submodels.discovery import split_prompts

    # with --holdout the scores and the search see only the rest of the prompts; the circuit is checked on those
    search = task if args.holdout is None else split_prompts(task, args.holdout, args.seed)[0]
    scores = tls.patch(model, search, progress=True)
    if args.holdout is None:
        circuit = tls.find_circuit(
            model, task, target=args.target, ablation=args.ablation, scores=scores, progress=True
        )
    else:  # find_circuit scores its own part again (it takes no scores with a holdout)
        circuit = tls.find_circuit(model, task, target=args.target, ablation=args.ablation, holdout=args.holdout,
                                   seed=args.seed, progress=True)  # fmt: skip
    ev = tls.evaluate(model, circuit, search, ablation=args.ablation, baselines=args.baselines)
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
        print(_dumps(out, indent=2))
        return 0
    table = Table(
        title=f"top components: {args.model} / {args.task} (exact patching, {scores.direction}, {scores.metric})",
        caption=SCORE_LEGEND,
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
    ev_table = Table(
        title=f"evaluation ({args.ablation} ablation; [95% bootstrap interval over the prompts])",
        caption=EVALUATION_LEGEND,
    )
    for col in ("faithfulness", "necessity", "size", "accuracy full", "accuracy kept", "accuracy ablated"):
        ev_table.add_column(col, justify="right")
    ev_table.add_row(
        with_interval(ev.faithfulness, ev.faithfulness_ci, ".3f"),
        with_interval(ev.necessity, ev.necessity_ci, ".3f"),
        str(ev.size),
        with_interval(ev.accuracy_full, ev.accuracy_full_ci, ".2f"),
        with_interval(ev.accuracy_kept, ev.accuracy_kept_ci, ".2f"),
        with_interval(ev.accuracy_ablated, ev.accuracy_ablated_ci, ".2f"),
    )
    console.print(ev_table)
    if ev.baselines is not None:
        console.print(
            f"against {len(ev.baselines.faithfulness)} random circuits of its size: its faithfulness beats "
            f"{ev.baseline_percentile:.1f}% of them (their median {float(ev.baselines.faithfulness.median()):.3f})"
        )
    if circuit.evidence is not None and circuit.evidence.holdout is not None:
        held = circuit.evidence.holdout
        console.print(
            f"held out: faithfulness {with_interval(held.faithfulness, held.faithfulness_ci, '.3f')} on "
            f"{circuit.evidence.held_out} prompts the search did not see"
        )
    for note in outside_unit_notes(ev):
        console.print(note)
    console.print(in_words(args.model, task.name, circuit, ev))
    if args.out:
        console.print(f"wrote {args.out}")
    return 0


def _tasks(model_name: str, model: Any, specs: list[str], n: int, seed: int) -> list[Any]:
    """Zoo tasks by name, or JSONL files of {clean, corrupt, answer, wrong} rows (named by the file's stem)."""
    import tl_submodels as tls

    out = []
    for spec in specs:
        path = Path(spec)
        if spec.endswith(".jsonl") or path.is_file():
            out.append(_jsonl_task(model, path))
        elif model_name not in tls.zoo.list():
            raise TLSubmodelsError(
                f"--task {spec!r}: zoo tasks belong to zoo models, and {model_name!r} is not one; "
                "give a JSONL file of {clean, corrupt, answer, wrong} rows (schema in the README)"
            )
        else:
            out.append(tls.zoo.task(model_name, spec, n=n, seed=seed, model=model))
    return out


def _jsonl_task(model: Any, path: Path) -> Any:
    """A Task from a JSONL file of {clean, corrupt, answer[, wrong][, position]} rows (cli_tasks.py; README)."""
    from tl_submodels.cli_tasks import jsonl_task

    return jsonl_task(model, path)


def _load(spec: str) -> Any:
    from tl_submodels.loading import load_model

    return load_model(spec)


def _factorize(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    import tl_submodels as tls

    console = Console(stderr=args.json)
    model = _load(args.model)
    tasks = _tasks(args.model, model, args.task, args.n, args.seed)
    f = tls.factorize(model, tasks, k=args.k, method=args.method, progress=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        for p in f.parts:
            p.save(args.out / f"{p.name}.json")
        (args.out / "factorization.json").write_text(_dumps(f.to_dict()))  # tls.Factorization.from_dict reads it
    frame = f.to_frame()
    if args.json:
        print(_dumps({"k": len(f.parts), "k_errors": f.k_errors, "k_error_se": f.k_error_se, "purity": f.purity,
                          "parts": frame.to_dict(orient="records")}, indent=2))  # fmt: skip
        return 0
    table = Table(
        title=f"sub-models of {args.model} ({args.method} effects, NMF k={len(f.parts)}, purity {f.purity:.2f})",
        caption=FACTORIZE_LEGEND,
    )
    for col in (
        "part",
        "size",
        "core",
        "faithfulness",
        "necessity",
        "accuracy drop",
        "max drop elsewhere",
        "components",
    ):
        table.add_column(col)
    for r in frame.to_dict(orient="records"):
        comps = r["components"] if len(r["components"]) < 60 else r["components"][:57] + "..."
        table.add_row(r["part"], str(r["size"]), str(r["core_size"]), frame_interval(r, "faithfulness"),
                      frame_interval(r, "necessity"), f"{r['accuracy_drop']:.2f}",
                      f"{r['max_accuracy_drop_elsewhere']:.2f}", comps)  # fmt: skip
    console.print(table)
    if args.out:
        console.print(f"wrote {len(f.parts)} sub-models to {args.out}")
    return 0


def _explain(args: argparse.Namespace) -> int:
    import tl_submodels as tls

    model = _load(args.model)
    parts = [tls.SubModel.load(p) for p in args.part]
    reference = [t.corrupt for t in _tasks(args.model, model, args.reference, args.n, 0)]
    ex = tls.explain(model, args.prompt, parts, k=args.k, reference=reference)
    if args.json:
        print(_dumps(ex.to_dict(), indent=2))  # tls.Explanation.from_dict reads it
        return 0
    print(ex)
    return 0


def _diff(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    import tl_submodels as tls

    console = Console(stderr=args.json)
    a, b = _load(args.model_a), _load(args.model_b)
    tasks = _tasks(args.model_b, b, args.task, args.n, args.seed)
    d = tls.diff(a, b, tasks, progress=True)
    top = [{"component": str(c), "task": t, "effect_b_minus_a": v} for c, t, v in d.ranking[: args.top]]
    if args.json:
        print(_dumps({"top": top, "parts": d.to_frame().to_dict(orient="records"), "diff": d.to_dict()}, indent=2))
        return 0
    table = Table(title=f"components whose effects differ: {args.model_b} minus {args.model_a}", caption=DIFF_LEGEND)
    for col in ("component", "task", "effect b - a", "/ task gap"):
        table.add_column(col)
    for c, t, v in d.ranking[: args.top]:
        table.add_row(str(c), t, f"{v:+.3f}", f"{v / d.gaps[t]:+.3f}")
    console.print(table)
    console.print(d.to_frame().to_string(index=False) if d.parts else "no validated sub-model differs")
    return 0


def _scores(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.table import Table

    import tl_submodels as tls

    console = Console(stderr=args.json)
    model = _load(args.model)
    (task,) = _tasks(args.model, model, [args.task], args.n, args.seed)
    kinds = None if args.kinds is None else tuple(k.strip() for k in args.kinds.split(",") if k.strip())
    if args.method == "patch":
        scores = tls.patch(model, task, kinds=kinds, direction=args.direction, progress=True, n_boot=args.n_boot)
    else:
        scores = tls.attribute(
            model, task, method=args.method, kinds=kinds, direction=args.direction, progress=True, n_boot=args.n_boot
        )
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(_dumps(scores.to_dict()))
    frame = scores.to_frame().set_index("component")
    top: list[dict[str, Any]] = [{"component": str(c), "score": v} for c, v in scores.top(args.top)]
    if scores.n_boot:
        for row in top:
            row |= {
                "ci_low": float(frame.loc[row["component"], "ci_low"]),
                "ci_high": float(frame.loc[row["component"], "ci_high"]),
            }
    if args.json:
        out = {"model": args.model, "task": task.name, "method": scores.method, "direction": scores.direction,
               "clean_metric": scores.clean_metric, "corrupt_metric": scores.corrupt_metric, "top": top}  # fmt: skip
        print(_dumps(out, indent=2))
        return 0
    table = Table(
        title=f"top components: {args.model} / {task.name} ({scores.method}, {scores.direction})",
        caption=SCORE_LEGEND if scores.method == "patch" else ESTIMATE_LEGEND,
    )
    table.add_column("component")
    table.add_column("score", justify="right")
    if scores.n_boot:
        table.add_column(f"{scores.ci_level:.0%} interval", justify="right")
    for row in top:
        cells = [str(row["component"]), f"{row['score']:+.3f}"]
        if scores.n_boot:
            cells.append(f"[{row['ci_low']:+.3f}, {row['ci_high']:+.3f}]")
        table.add_row(*cells)
    console.print(table)
    console.print(f"clean metric {scores.clean_metric:.3f}, corrupt metric {scores.corrupt_metric:.3f}")
    if args.out:
        console.print(f"wrote {args.out}")
    return 0


def _report(args: argparse.Namespace) -> int:
    import tl_submodels as tls

    if args.part and args.factorize:
        raise TLSubmodelsError("give --part files or --factorize, not both")
    model = _load(args.model)
    tasks = _tasks(args.model, model, args.task, args.n, args.seed)
    parts: Any = [tls.SubModel.load(p) for p in args.part] if args.part else None
    if args.factorize:
        parts = tls.factorize(model, tasks, ablation=args.ablation, progress=True)
    card = args.model if args.model in tls.zoo.list() else None
    if args.circuits and (args.part or args.factorize):
        raise TLSubmodelsError("--circuits is the sub-models' source like --part and --factorize: give one of them")
    if args.circuits:
        parts = [tls.find_circuit(model, t, ablation=args.ablation, name=t.name) for t in tasks]
    title = f"tl_submodels report: {args.model} on {', '.join(t.name for t in tasks)}"
    rep = tls.report(model, tasks, parts=parts, prompt=args.prompt, card=card, ablation=args.ablation, title=title,
                     progress=True)  # fmt: skip
    path = rep.save(args.out)
    size = path.stat().st_size
    if args.json:
        print(_dumps({"path": str(path), "bytes": size, "sections": [k for k, _, _ in rep.sections]}))
    else:
        print(f"wrote {path} ({size / 1e6:.1f} MB): open it in a browser, no network needed")
    return 0


def _dumps(obj: Any, indent: int | None = None) -> str:
    """Strict JSON for ``--json`` (NaN becomes null, infinities "inf"/"-inf", as jq and other parsers need)."""
    from tl_submodels.scores import json_safe

    return json.dumps(json_safe(obj), indent=indent, allow_nan=False, default=str)


if __name__ == "__main__":
    sys.exit(main())
