"""The house (issue 14): every module of evomerge stands on a floor and imports only modules on its
own floor or below, and no modules import each other in a cycle.

Imports are read with ``ast``, at the top of a module and inside functions alike (a lazy import
is still an import). A package in the table stands for all of its modules.
"""

from __future__ import annotations

import ast
from itertools import pairwise
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "evomerge"

# Floors, bottom to top (README, "Layout").
FLOORS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ground", ("evomerge", "evomerge.errors", "evomerge.cache", "evomerge.textfile", "evomerge.safe_yaml",
                "evomerge.schedule", "evomerge.recipe", "evomerge.result", "evomerge.pareto", "evomerge.strict_json")),
    ("components", ("evomerge.merge", "evomerge.space", "evomerge.strategies", "evomerge.evaluate",
                    "evomerge.store", "evomerge.hfmodel", "evomerge.zoo", "evomerge.zoo_scaled")),
    ("runner", ("evomerge.runner",)),
    ("api", ("evomerge.api", "evomerge.demo", "evomerge.dashboard")),
    ("cli", ("evomerge.cli", "evomerge.cli_base", "evomerge.cli_runs", "evomerge.plot")),
)
# Packages of the components floor that stand on the ground floor alone (no sideways imports):
# strategies are built from plain values (the runner binds search spaces to them).
GROUND_ONLY = ("evomerge.merge", "evomerge.strategies", "evomerge.store")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: dict[str, Path]) -> dict[str, int]:
    """evomerge modules that ``name`` imports, each with the line of its first import."""

    def resolve(target: str) -> str | None:
        while target and target not in known:
            target = target.rpartition(".")[0]
        return target or None

    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: dict[str, int] = {}
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x, from ..y import z
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in known]
        else:
            continue
        for target in targets:
            if target.split(".")[0] != "evomerge":
                continue
            module = resolve(target)
            if module is not None and module != name:
                out.setdefault(module, node.lineno)
    return out


def _floor(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (floor, length of the matching entry): the longest entry wins
    for i, (_, entries) in enumerate(FLOORS):
        for entry in entries:
            inside = module == entry or (entry != "evomerge" and module.startswith(entry + "."))
            if inside and (best is None or len(entry) > best[1]):
                best = (i, len(entry))
    return None if best is None else best[0]


def _graph() -> tuple[dict[str, Path], dict[str, dict[str, int]]]:
    known = _modules()
    graph = {}
    for name, path in known.items():
        try:
            graph[name] = _imports(name, path, known)
        except FileNotFoundError:  # a probe file another test wrote and removed meanwhile
            continue
    return known, graph


def _where(known: dict[str, Path], module: str, line: int) -> str:
    return f"{known[module].relative_to(REPO)}:{line}"


def test_every_module_has_a_floor() -> None:
    known, graph = _graph()
    imported = {t for edges in graph.values() for t in edges}
    # a module that neither imports evomerge nor is imported by it (e.g. a lint probe) is not part of the house
    missing = [m for m in graph if _floor(m) is None and (graph[m] or m in imported)]
    assert not missing, f"modules on no floor (add them to FLOORS in {Path(__file__).name}): {missing}"


def test_no_module_imports_a_higher_floor() -> None:
    known, graph = _graph()
    bad = []
    for module, edges in sorted(graph.items()):
        here = _floor(module)
        for target, line in sorted(edges.items()):
            there = _floor(target)
            if here is not None and there is not None and there > here:
                bad.append(f"{_where(known, module, line)}: {module} ({FLOORS[here][0]} floor) imports "
                           f"{target} ({FLOORS[there][0]} floor)")
    assert not bad, "upward imports:\n  " + "\n  ".join(bad)


def test_ground_standing_packages_import_only_the_ground_floor() -> None:
    known, graph = _graph()
    bad = []
    for package in GROUND_ONLY:
        for module, edges in sorted(graph.items()):
            if module != package and not module.startswith(package + "."):
                continue
            for target, line in sorted(edges.items()):
                own = target == package or target.startswith(package + ".")
                if not own and _floor(target) != 0:
                    bad.append(f"{_where(known, module, line)}: {module} imports {target} "
                               f"({package} stands on the ground floor alone)")
    assert not bad, "sideways imports:\n  " + "\n  ".join(bad)


def test_no_import_cycles() -> None:
    known, graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if root in state:
            continue
        path: list[tuple[str, list[str]]] = [(root, sorted(graph[root]))]
        state[root] = 1
        while path:
            module, todo = path[-1]
            if not todo:
                state[module] = 2
                path.pop()
                continue
            nxt = todo.pop()
            if nxt not in graph or state.get(nxt) == 2:
                continue
            if state.get(nxt) == 1:
                chain = [m for m, _ in path]
                cycle = chain[chain.index(nxt):] + [nxt]
                steps = [f"{_where(known, a, graph[a][b])}: {a} imports {b}" for a, b in pairwise(cycle)]
                raise AssertionError("import cycle:\n  " + "\n  ".join(steps))
            state[nxt] = 1
            path.append((nxt, sorted(graph[nxt])))
