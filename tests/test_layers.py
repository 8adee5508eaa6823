"""The folder tree is the flow: no import cycles, and no import from a lower layer into a higher one.

The import graph of ``pipeline/`` and ``plugins/`` is computed with :mod:`ast` from every import
statement (module level, inside functions, and under ``TYPE_CHECKING`` alike), so a deferred
import cannot hide an arrow that runs backwards. ``docs/architecture.md`` shows the same table.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

# Lowest first. A module may import its own package and any package of a *lower* rank; packages
# of the same rank are peers and never import each other. The flow (ingress -> spool ->
# delivery -> egress -> events) runs downwards: a stage imports the stages it hands work to.
LAYERS: list[tuple[str, ...]] = [
    ("pipeline.contract",),  # hookspecs, verdicts, context, message, the Plugin base
    ("pipeline.config", "pipeline.storage"),  # settings; how databases are opened
    ("pipeline", "pipeline.toolkit", "pipeline.ports"),  # the public facade and toolkit; typed ports
    ("pipeline.chain", "pipeline.accounts"),  # chain machinery; credentials
    ("pipeline.spool", "pipeline.egress", "pipeline.events"),  # stages that others hand work to
    ("pipeline.ingress", "pipeline.delivery", "pipeline.tracking", "pipeline.milter", "pipeline.api"),  # the front stages
    ("pipeline.app", "pipeline.html", "pipeline.tokens", "pipeline.testing"),  # composition root, CLI, shims
]

# Built-in plugins are written against the public API only: what a third-party plugin can use.
PLUGIN_IMPORTS = ("pipeline", "pipeline.toolkit")

# Arrows that exist today and are being removed. The test fails when one disappears and is
# still listed here, so the list only shrinks.
KNOWN: set[tuple[str, str]] = set()
KNOWN_CYCLES: list[list[str]] = []


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def project_modules() -> dict[str, Path]:
    files = sorted((ROOT / "pipeline").rglob("*.py")) + sorted((ROOT / "plugins").rglob("*.py"))
    return {module_name(p): p for p in files if "__pycache__" not in p.parts}


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> Iterator[tuple[str, int]]:
    """(imported project module, line) for every import statement anywhere in the file."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in ("pipeline", "plugins"):
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] not in ("pipeline", "plugins"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                yield (sub if sub in modules else target), node.lineno


def import_graph(extra: dict[str, Path] | None = None) -> dict[str, dict[str, int]]:
    """``extra`` adds modules (name -> file) as if they were in the tree, without writing into it."""
    modules = project_modules() | (extra or {})
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges = graph.setdefault(name, {})
        for target, line in imports_of(name, path, modules):
            if target != name:
                edges.setdefault(target, line)
    return graph


def layer_of(module: str) -> tuple[int, str] | None:
    """(rank, package) of the longest layer prefix that owns ``module``."""
    best: tuple[int, str] | None = None
    for rank, packages in enumerate(LAYERS):
        for package in packages:
            if module == package or module.startswith(package + "."):
                if best is None or len(package) > len(best[1]):
                    best = (rank, package)
    return best


def violations(graph: dict[str, dict[str, int]]) -> list[tuple[str, str, str]]:
    """Every arrow that breaks the layering: (importer, imported, why)."""
    found = []
    for source, edges in graph.items():
        for target, line in edges.items():
            where = f"line {line}"
            if source.startswith("plugins"):
                if target.startswith("pipeline") and not any(
                    target == allowed or target.startswith("pipeline.toolkit.") for allowed in PLUGIN_IMPORTS
                ):
                    found.append((source, target, f"{where}: a built-in plugin imports a non-public module"))
                continue
            if target.startswith("plugins"):
                found.append((source, target, f"{where}: the core imports a built-in plugin"))
                continue
            src, dst = layer_of(source), layer_of(target)
            if src is None or dst is None:
                found.append((source, target, f"{where}: module outside every layer (add it to LAYERS)"))
                continue
            if src[1] == dst[1]:
                continue
            if dst[0] >= src[0]:
                kind = "a peer" if dst[0] == src[0] else "a higher layer"
                found.append((source, target, f"{where}: {src[1]} imports {kind} ({dst[1]})"))
    return found


def cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iteratively)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    result: list[list[str]] = []
    counter = 0
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(graph.get(root, {})))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in graph:
                    continue
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, {}))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))
    return result


def test_no_import_cycles() -> None:
    assert sorted(cycles(import_graph())) == KNOWN_CYCLES


def test_no_import_runs_against_the_layers() -> None:
    found = violations(import_graph())
    unexpected = [v for v in found if (v[0], v[1]) not in KNOWN]
    assert unexpected == [], "\n".join(f"{s} -> {t}: {why}" for s, t, why in unexpected)


def test_known_back_arrows_are_still_there() -> None:
    """Keeps KNOWN honest: an arrow that was removed must leave the list too."""
    present = {(s, t) for s, t, _ in violations(import_graph())}
    assert KNOWN - present == set()


def test_every_module_belongs_to_a_layer() -> None:
    missing = [m for m in project_modules() if not m.startswith("plugins") and layer_of(m) is None]
    assert missing == []


@pytest.mark.parametrize(
    ("source", "code", "expected"),
    [
        ("pipeline/spool/_probe.py", "from pipeline.ingress import replies\n", "a higher layer"),
        ("pipeline/ingress/_probe.py", "def f():\n    from pipeline.delivery import scheduler\n", "a peer"),
        (
            "pipeline/contract/_probe.py",
            "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pipeline.config import Config\n",
            "a higher layer",
        ),
        ("plugins/_probe.py", "from pipeline.events import bounces\n", "non-public"),
        ("pipeline/events/_probe.py", "import plugins.campaign_tag\n", "built-in plugin"),
    ],
)
def test_a_back_import_is_caught(tmp_path: Path, source: str, code: str, expected: str) -> None:
    """The checker itself: a deliberately added back-import (module, function or TYPE_CHECKING level).

    The probe is written to ``tmp_path`` and read as if it lived at ``source``, so parallel runs never
    see each other's probes in the tree."""
    probe = tmp_path / "_probe.py"
    probe.write_text(code)
    name = module_name(ROOT / source)
    found = [why for s, _, why in violations(import_graph({name: probe})) if s == name]
    assert any(expected in why for why in found), found


def test_a_cycle_is_caught() -> None:
    graph = {"pipeline.a": {"pipeline.b": 1}, "pipeline.b": {"pipeline.c": 1}, "pipeline.c": {"pipeline.a": 1}}
    assert cycles(graph) == [["pipeline.a", "pipeline.b", "pipeline.c"]]
