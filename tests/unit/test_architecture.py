"""The package's import graph has no cycle: each module sits at one stage of the data flow.

Read with :mod:`ast` over ``src/privmob``: module-level and function-level imports both
count (a lazy import is still a dependency); imports under ``if TYPE_CHECKING:`` do not
(they exist for the type checker only and never run).
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "privmob"

#: Cycles accepted for now, each with the reason. Empty: none is accepted.
KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool, known: set[str]) -> set[str]:
    """privmob modules ``module`` imports anywhere outside ``if TYPE_CHECKING:`` blocks."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    out = set()
    for name in found:
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name and name != module and name != PACKAGE:
            out.add(name)
    return out


def import_graph() -> dict[str, set[str]]:
    """Module → the privmob modules it imports (the package ``__init__`` itself left out:
    it only re-exports, and every module importing ``privmob.x`` runs it)."""
    files = {_module_name(p): p for p in (SRC / PACKAGE).rglob("*.py")}
    known = set(files)
    return {name: _imports(ast.parse(path.read_text(encoding="utf-8")), name,
                           path.name == "__init__.py", known)
            for name, path in files.items() if name != PACKAGE}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.append(w)
                if w == v:
                    break
            if len(part) > 1:
                out.append(sorted(part))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return out


def test_the_graph_reader_sees_lazy_imports_and_skips_type_checking_ones() -> None:
    src = ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from privmob.b import X\n"
           "def f():\n    from privmob.c import y\n    import privmob.d\n")
    known = {"privmob", "privmob.a", "privmob.b", "privmob.c", "privmob.d"}
    assert _imports(ast.parse(src), "privmob.a", False, known) == {"privmob.c", "privmob.d"}
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"a"}}) == [["a", "b"]]


def test_no_import_cycle_among_privmob_modules() -> None:
    found = [c for c in cycles(import_graph()) if frozenset(c) not in KNOWN_CYCLES]
    assert not found, f"import cycles among privmob modules: {found}"


#: The data flow, bottom to top (README "Architecture"). A module may import modules of its
#: own layer or of a layer below, never one above: the privacy layer knows nothing of how
#: releases are written, the release nothing of the reports drawn from it, and only the
#: pipeline (and the CLI over it) orchestrates them all.
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("foundation", ("privmob._version", "privmob.errors", "privmob.config")),
    ("stages", ("privmob.stages",)),
    ("movement", ("privmob.movement",)),
    ("engines", ("privmob.backends",)),
    ("privacy", ("privmob.privacy",)),
    ("governance", ("privmob.governance",)),
    ("release", ("privmob.release",)),
    ("report", ("privmob.report",)),
    ("pipeline", ("privmob.pipeline",)),
    ("analysis", ("privmob.analysis",)),
    ("entry points", ("privmob.synth", "privmob.cli")),
)


def layer_of(module: str) -> int:
    """Index in :data:`LAYERS` of the layer holding ``module`` (-1 when none does)."""
    for i, (_, prefixes) in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return i
    return -1


def upward_imports(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(importer, imported) pairs where the imported module sits in a higher layer."""
    return sorted((m, d) for m, deps in graph.items() for d in deps if layer_of(d) > layer_of(m))


def test_the_layer_check_catches_an_upward_import() -> None:
    graph = {"privmob.privacy.noising": {"privmob.stages.bound", "privmob.release.table"},
             "privmob.pipeline.run": {"privmob.report.html"}}
    assert upward_imports(graph) == [("privmob.privacy.noising", "privmob.release.table")]


def test_every_module_sits_in_one_layer_of_the_data_flow() -> None:
    graph = import_graph()
    assert [m for m in graph if layer_of(m) < 0] == []
    subpackages = {p.name for p in (SRC / PACKAGE).iterdir() if (p / "__init__.py").exists()}
    declared = {p.split(".")[1] for _, prefixes in LAYERS for p in prefixes}
    assert subpackages <= declared


def test_no_module_imports_one_above_it_in_the_data_flow() -> None:
    assert upward_imports(import_graph()) == []


def test_each_subpackage_says_what_it_holds() -> None:
    for init in (SRC / PACKAGE).glob("*/__init__.py"):
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc.split()) >= 12, f"{init.parent.name}/__init__.py needs a docstring"
