"""The import-flow check behind tests/test_architecture.py (docs/architecture.md).

It reads sources with `ast` (nothing is imported), maps every module to its floor and reports
imports of a floor the table does not allow, cycles between modules' module-level imports, and
imports of our own modules inside functions.
"""

from __future__ import annotations

import ast
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

# The floors: package prefix -> the floors its modules may import (besides their own). The longest
# matching prefix names a module's floor.
_UNDER_EXPORT = frozenset({"mage_fast.model", "mage_fast.data", "mage_fast.toolcall", "mage_fast.ops", "leaf"})
_UNDER_TRAIN = _UNDER_EXPORT | {"mage_fast.export", "mage_fast.export.remote"}
_LIBRARY = _UNDER_TRAIN | {"mage_fast.train", "mage_fast.shapes", "mage_fast.kernels"}
FLOORS: dict[str, frozenset[str]] = {
    "leaf": frozenset(),
    "mage_fast.kernels": frozenset({"leaf"}),
    "mage_fast.ops": frozenset({"mage_fast.kernels", "leaf"}),
    "mage_fast.model": frozenset({"mage_fast.ops", "leaf"}),
    "mage_fast.toolcall": frozenset({"leaf"}),
    "mage_fast.data": frozenset({"mage_fast.toolcall", "leaf"}),
    "mage_fast.shapes": frozenset({"mage_fast.data", "mage_fast.toolcall", "leaf"}),
    "mage_fast.export": _UNDER_EXPORT | {"mage_fast.export.remote"},
    # Shipped inside exported folders and loaded by transformers: nothing of ours.
    "mage_fast.export.remote": frozenset(),
    "mage_fast.train": _UNDER_TRAIN,
    # Operator, step and model timings, outside the package: every library floor.
    "benchmarks": _LIBRARY,
    "mage_fast.apps": _LIBRARY,
}
# Modules that import nothing of ours but the package itself (its version).
LEAVES = frozenset(
    {"mage_fast", "mage_fast.labels", "mage_fast.configtools", "mage_fast.provenance", "mage_fast.template_names"}
)


@dataclass(frozen=True)
class Import:
    """One import of our own modules: `src` imports `dst` at `line`; `in_function` when it runs at
    call time; `type_only` under `if TYPE_CHECKING:` (no runtime edge)."""

    src: str
    dst: str
    line: int
    in_function: bool
    type_only: bool


def floor_of(module: str) -> str | None:
    """The floor of a dotted module name (None: not in the table, an error for our modules)."""
    if module in LEAVES:
        return "leaf"
    parts = module.split(".")
    for n in range(len(parts), 0, -1):
        prefix = ".".join(parts[:n])
        if prefix in FLOORS and prefix != "leaf":
            return prefix
    return None


OURS = ("mage_fast", "benchmarks")


def module_files(root: str) -> dict[str, str]:
    """Dotted name -> path of every module under ROOT/mage_fast, ROOT/kernels (installed as
    mage_fast.kernels) and ROOT/benchmarks."""
    out: dict[str, str] = {}
    for folder, package in (("mage_fast", "mage_fast"), ("kernels", "mage_fast.kernels"), ("benchmarks", "benchmarks")):
        base = os.path.join(root, folder)
        for dirpath, dirnames, filenames in os.walk(base):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            rel = os.path.relpath(dirpath, base)
            pkg = package if rel == "." else package + "." + rel.replace(os.sep, ".")
            for name in sorted(filenames):
                if name.endswith(".py"):
                    out[pkg if name == "__init__.py" else f"{pkg}.{name[:-3]}"] = os.path.join(dirpath, name)
    return out


def _is_type_checking(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _targets(node: ast.AST, module: str, is_package: bool, known: Iterable[str]) -> list[str]:
    """The modules of ours an import statement loads (`from pkg import sub` names pkg.sub)."""
    known = set(known)
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name.split(".")[0] in OURS]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    if base.split(".")[0] not in OURS:
        return []
    subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
    return subs if len(subs) == len(node.names) else [base, *subs]


def imports_of(module: str, source: str, is_package: bool, known: Iterable[str]) -> list[Import]:
    """Every import of our modules in one module's source."""
    found: list[Import] = []

    def visit(node: ast.AST, in_function: bool, type_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for dst in _targets(child, module, is_package, known):
                    found.append(Import(module, dst, child.lineno, in_function, type_only))
            inner = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, inner, type_only or _is_type_checking(child))

    visit(ast.parse(source), False, False)
    return found


def all_imports(root: str) -> list[Import]:
    """The imports of every module under ROOT (see module_files)."""
    files = module_files(root)
    out: list[Import] = []
    for name, path in files.items():
        with open(path, encoding="utf-8") as f:
            out.extend(imports_of(name, f.read(), path.endswith("__init__.py"), files))
    return out


def against_flow(imports: Iterable[Import]) -> list[Import]:
    """Imports of a floor the table does not allow, or of or from a module in no floor."""
    bad = []
    for i in imports:
        src, dst = floor_of(i.src), floor_of(i.dst)
        if src is None or dst is None or (src != dst and dst not in FLOORS[src]):
            bad.append(i)
    return bad


def describe(i: Import) -> str:
    """One line naming an import and the floors on both ends."""
    where = "inside a function" if i.in_function else "at module level"
    return f"{i.src}:{i.line} ({floor_of(i.src)}) imports {i.dst} ({floor_of(i.dst)}) {where}"


def cycles(imports: Iterable[Import]) -> list[list[str]]:
    """Cycles of runtime imports, each as the modules around it (Tarjan's SCCs). Imports inside
    functions count: deferring one hides a cycle from Python, not from the design."""
    graph: dict[str, set[str]] = {}
    for i in imports:
        if not i.type_only and i.src != i.dst:
            graph.setdefault(i.src, set()).add(i.dst)
            graph.setdefault(i.dst, set())
    return [sorted(c) for c in _sccs(graph) if len(c) > 1]


def _sccs(graph: Mapping[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            out.append(comp)

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def in_function(imports: Iterable[Import]) -> list[Import]:
    """Imports of our modules that run inside a function."""
    return [i for i in imports if i.in_function]
