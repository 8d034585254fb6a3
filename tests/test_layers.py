"""Imports go one way: every import of frcnn_cli (function-level ones too) is read, and no
circle may join two packages or two modules, and no package may import one above it
(docs/internals.md draws the layers)."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "frcnn_cli"

# What each package may import besides itself and the shared ground (the top-level modules:
# errors, files, outputs, config, checkpoint, geometry, boxes, devices, distributed,
# progress, interrupts, recipe_files, recipe_keys) and the public API (frcnn_cli itself).
LAYERS = {
    "model": set(),
    "data": set(),
    "inference": {"data", "model"},
    "proposals": {"data", "model", "inference"},
    "evaluation": {"data", "model", "inference", "proposals"},
    "analysis": {"data", "model"},
    "engine": {"data", "model", "inference", "proposals", "evaluation"},
    "export": {"data", "model", "inference", "proposals", "evaluation"},
    "cli": {"data", "model", "inference", "proposals", "evaluation", "analysis", "engine",
            "export"},
}
# The shared ground imports no package at all; the public API imports the model.
GROUND_MAY_IMPORT = {"frcnn_cli": {"model"}, "__main__": {"cli"}}


def _name(path: Path) -> str:
    name = ".".join(path.relative_to(ROOT.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports() -> dict[str, set[str]]:
    """Module -> the frcnn_cli modules it imports, anywhere in its code."""
    modules = {_name(p): p for p in ROOT.rglob("*.py")}
    found: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        here = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = here.split(".")
                    base = ".".join(parts[:len(parts) - node.level + 1] + ([base] if base else []))
                targets = [base, *(f"{base}.{a.name}" for a in node.names)]
            else:
                continue
            found[name] |= {t for t in targets if t in modules and t != name}
    return found


def _package(module: str) -> str:
    """The package a module belongs to (``frcnn_cli.data.tiling`` -> ``data``); a top-level
    module is its own (``files``), the public API is ``frcnn_cli``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in list(graph):
        if v not in index:
            visit(v)
    return out


def test_no_circle_between_modules():
    graph = _imports()
    # a package's __init__ may name its own modules (its public API)
    graph = {m: {t for t in ts if not (t.startswith(m + ".") and m + ".__init__" not in t)}
             for m, ts in graph.items()}
    assert _circles(graph) == []


def test_no_circle_between_packages_and_each_imports_only_below_it():
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in _imports().items():
        packages[_package(module)] |= {_package(t) for t in targets} - {_package(module)}
    assert _circles(packages) == []
    subpackages = {p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file()}
    assert subpackages == set(LAYERS), "a new package needs its place in LAYERS"
    for package, imported in packages.items():
        above = imported & subpackages
        allowed = LAYERS.get(package, GROUND_MAY_IMPORT.get(package, set()))
        assert above <= allowed, f"{package} imports {sorted(above - allowed)}"


# The commands parse, call and print: a command's function body stays short; the library's
# functions stay readable on one screen.
BODY_LINES = {"cli": 40}
OTHER_BODY_LINES = 60


def _body_lines(function: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from a function's first statement after its docstring to its last."""
    body = function.body
    if (isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)):
        body = body[1:]
    return body[-1].end_lineno - body[0].lineno + 1 if body else 0


def test_function_bodies_stay_short():
    long = []
    for path in sorted(ROOT.rglob("*.py")):
        limit = BODY_LINES.get(_package(_name(path)), OTHER_BODY_LINES)
        for node in ast.walk(ast.parse(path.read_text())):
            is_function = isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
            if is_function and _body_lines(node) > limit:
                long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} "
                            f"({_body_lines(node)} lines, limit {limit})")
    assert long == [], "\n".join(long)
