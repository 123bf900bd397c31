"""Check the core's layering: no import runs upward, and no import cycle.

    python tools/check_layers.py            # exit 1 and one line per violation

Every import of a ``datapipe`` module counts, also inside functions and ``if TYPE_CHECKING:``.
A module may import modules of its own layer or of a lower one; within a layer, imports must not
form a cycle. The layers, bottom up, are the ``LAYERS`` list below; a module not matched by any
pattern is reported too, so a new module has to be placed on purpose.
"""

from __future__ import annotations

import ast
import fnmatch
import sys
from pathlib import Path
from typing import Dict, List, Set

ROOT = Path(__file__).resolve().parent.parent / "packages" / "datapipe-core"

LAYERS: List[List[str]] = [
    # foundations: no datapipe imports but each other
    ["datapipe", "datapipe.errors", "datapipe.settings", "datapipe.types", "datapipe.keyset", "datapipe.hashing",
     "datapipe.store.json_codec"],
    # what a run is told, who listens, and what it reports back
    ["datapipe.run_config", "datapipe.run_callback", "datapipe.run_stats", "datapipe.run_result"],
    ["datapipe.sql", "datapipe.sql.*"],  # connections, rows and key filters, bulk writes, schema checks
    ["datapipe.store", "datapipe.store.table_store", "datapipe.store.database", "datapipe.store.filedir",
     "datapipe.store.pandas", "datapipe.store.vectors", "datapipe.meta", "datapipe.meta.*"],  # side by side
    ["datapipe.datatable"],  # a table = store + metadata, and the unit of work
    ["datapipe.executor", "datapipe.executor.*"],
    ["datapipe.compute"],  # catalog, pipeline, ComputeStep and its lifecycle, run_steps
    ["datapipe.step", "datapipe.step.*"],
    # edges: user interfaces, plugins, test support
    ["datapipe.progress", "datapipe.tracing", "datapipe.hookspecs", "datapipe.plugins", "datapipe.builtins",
     "datapipe.cli", "datapipe.ui", "datapipe.ui.*", "datapipe.testing", "datapipe.testing.*", "datapipe.tests",
     "datapipe.tests.*",
     "datapipe.store.tests", "datapipe.store.tests.*"],
]
SIDE_BY_SIDE = [("datapipe.store", "datapipe.meta")]  # packages of one layer that must not import each other


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def layer_of(module: str) -> int:
    for n, patterns in enumerate(LAYERS):
        if any(fnmatch.fnmatchcase(module, p) for p in patterns):
            return n
    return -1


def imports_of(path: Path, known: Set[str]) -> Set[str]:
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: List[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            if name in known:
                found.add(name)
    return found


def find_cycle(graph: Dict[str, Set[str]]) -> List[str]:
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> List[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def _crosses_sides(module: str, target: str) -> bool:
    for a, b in SIDE_BY_SIDE:
        for src, dst in ((a, b), (b, a)):
            test_support = target.startswith("datapipe.store.tests")
            if module.startswith(src) and target.startswith(dst + ".") and not test_support:
                return True
    return False


def check() -> List[str]:
    files = {module_name(p): p for p in (ROOT / "datapipe").rglob("*.py")}
    known = set(files)
    graph = {m: imports_of(p, known) - {m} for m, p in files.items()}
    problems = []
    for module in sorted(graph):
        mine = layer_of(module)
        if mine < 0:
            problems.append(f"{module}: not placed in any layer (add it to LAYERS in tools/check_layers.py)")
            continue
        for target in sorted(graph[module]):
            theirs = layer_of(target)
            if target == "datapipe":
                continue
            if theirs > mine:
                problems.append(f"{module} imports {target}: upward (layer {mine} -> {theirs})")
            if _crosses_sides(module, target):
                problems.append(f"{module} imports {target}: store and meta sit side by side")
    cycle = find_cycle(graph)
    if cycle:
        problems.append("import cycle: " + " -> ".join(cycle))
    return problems


if __name__ == "__main__":
    found = check()
    for line in found:
        print(line)
    print(f"layers: {len(found)} problem(s)")
    sys.exit(1 if found else 0)
