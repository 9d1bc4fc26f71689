"""``tl-submodels decompose``: the parts of what a model does on a corpus, from a shell.

Kept apart from cli.py (past ~400 lines): the corpus file format and the parts table live here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from tl_submodels.cli_words import frame_interval
from tl_submodels.errors import TLSubmodelsError

__all__ = ["add_parser", "read_corpus", "run"]


def add_parser(sub: Any, model_help: str) -> None:
    """Register the ``decompose`` subcommand on ``sub`` (argparse subparsers)."""
    d = sub.add_parser("decompose", help="parts of what a model does on a corpus, without any task")
    d.add_argument("--model", required=True, help=model_help)
    d.add_argument(
        "--corpus",
        required=True,
        type=Path,
        help="a text file, one sequence a line (the model's BOS is prepended), or JSONL with a 'text' field",
    )
    d.add_argument("--positions", choices=["all", "last"], default="all", help="predictions that count (default all)")
    d.add_argument("--k", type=int, default=None, help="number of parts (default: chosen, see tls.decompose)")
    d.add_argument("--method", default="atp", choices=["atp", "ablation"], help="default: atp (gradients)")
    d.add_argument("--contexts", type=int, default=3, help="top contexts to print per part (default 3)")
    d.add_argument("--out", type=Path, help="write the library of parts (one JSON per part) into this folder")
    d.add_argument("--json", action="store_true", help="machine-readable output on stdout")


def read_corpus(path: Path) -> list[str]:
    """Sequences of a corpus file: plain text (one a line, blank lines skipped) or JSONL with a ``text`` field.

    Example:
        >>> read_corpus(Path("corpus.txt"))  # doctest: +SKIP
        ['IND w1 s3 s4 s3 s4', ...]
    """
    try:
        lines = path.read_text().splitlines()
    except FileNotFoundError:
        raise TLSubmodelsError(f"{path}: no such corpus file") from None
    except UnicodeDecodeError as e:
        raise TLSubmodelsError(f"{path}: not a text file ({e})") from None
    out = []
    jsonl = path.suffix == ".jsonl"
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if not jsonl:
            out.append(line.strip())
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise TLSubmodelsError(f"{path}:{i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise TLSubmodelsError(f"{path}:{i}: each JSONL line needs a string field 'text'")
        out.append(row["text"])
    if not out:
        raise TLSubmodelsError(f"{path}: the corpus is empty")
    return out


def run(args: argparse.Namespace, load: Any, dumps: Any) -> int:
    """Decompose, print each part's label, size, core, faithfulness and top contexts; write the library."""
    from rich.console import Console
    from rich.table import Table

    import tl_submodels as tls
    from tl_submodels import model as tlmodel

    console = Console(stderr=args.json)
    texts = read_corpus(args.corpus)
    model = load(args.model)
    lines = []
    for i, text in enumerate(texts, 1):
        try:
            lines.append(tlmodel.tokenize(model, text))
        except TLSubmodelsError as e:
            raise TLSubmodelsError(f"{args.corpus}:{i}: {e}") from None
    dec = tls.decompose(
        model,
        lines,
        positions="last" if args.positions == "last" else None,
        k=args.k,
        method=args.method,
        progress=True,
    )
    if args.out:
        dec.save(args.out)
    frame = dec.to_frame()
    contexts = {p.name: [str(c) for c in dec.top_contexts(j, args.contexts)] for j, p in enumerate(dec.parts)}
    if args.json:
        rows = frame.to_dict(orient="records")
        for r in rows:
            r["top_contexts"] = contexts[r["part"]]
        print(dumps({"k": len(dec.parts), "k_errors": dec.k_errors, "method": dec.method, "parts": rows}, indent=2))
        return 0
    table = Table(
        title=f"parts of {args.model} on {args.corpus.name} ({len(dec.usage)} predictions, {dec.method} effects)",
        caption="faithfulness: share of the part's predictions (mean log p) restored keeping only the part, the rest "
        "mean-ablated [95% bootstrap interval over the sequences]; core necessity: share lost ablating its core (0-1); elsewhere: the most any other part's "
        "predictions lose with the part ablated (specific: near 0)",
    )
    for col in ("part", "label", "size", "core", "faithfulness", "core necessity", "elsewhere", "top contexts"):
        table.add_column(col)
    for r in frame.to_dict(orient="records"):
        core = r["core"] if len(r["core"]) < 40 else r["core"][:37] + "..."
        table.add_row(r["part"], r["label"], str(r["size"]), core, frame_interval(r, "faithfulness"),
                      f"{r['core_necessity']:.2f}", f"{r['necessity_elsewhere']:.2f}",
                      "\n".join(contexts[r["part"]]))  # fmt: skip
    console.print(table)
    if args.out:
        console.print(f"wrote {len(dec.parts)} parts to {args.out} (tls.load_parts reads them)")
    return 0
