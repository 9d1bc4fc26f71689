"""The house: modules declare what they export, import no other module's private names, and form no
import cycles (lazy imports inside functions count: they are cycles all the same)."""

from __future__ import annotations

import ast
from pathlib import Path

import tl_submodels as tls

ROOT = Path(tls.__file__).parent


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(mods: dict[str, Path]) -> dict[str, set[str]]:
    """module -> the package modules it imports, at the top or inside functions."""

    def owner(name: str) -> str:
        while name not in mods and "." in name:
            name = name.rsplit(".", 1)[0]
        return name

    graph: dict[str, set[str]] = {m: set() for m in mods}
    for m, path in mods.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tl_submodels"):
                assert node.module is not None
                subs = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in mods]
                graph[m] |= set(subs) if subs else {owner(node.module)}
            elif isinstance(node, ast.Import):
                graph[m] |= {owner(a.name) for a in node.names if a.name.startswith("tl_submodels")}
        graph[m].discard(m)
    return graph


def test_every_module_declares_all():
    missing = [m for m, path in _modules().items() if "__all__" not in path.read_text() and m != "tl_submodels"]
    assert not missing, missing


def test_no_module_imports_another_modules_private_names():
    found = []
    for m, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("tl_submodels"):
                private = [a.name for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
                found += [f"{m} imports {node.module}.{name}" for name in private]
    assert not found, found


def test_there_are_no_import_cycles():
    graph = _imports(_modules())
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in graph[node]:
            if nxt in path:
                cycles.append(" -> ".join([*path[path.index(nxt) :], nxt]))
            elif nxt not in seen:
                seen.add(nxt)
                visit(nxt, [*path, nxt])

    for start in graph:
        seen = {start}
        visit(start, [start])
    assert not cycles, sorted(set(cycles))[:10]
