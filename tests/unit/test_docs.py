"""The docs promise what the tests check: every test docs/assurance.md names exists.

docs/assurance.md is where a reviewer goes to find the test behind each promise; a renamed
or deleted test would leave a promise that nothing checks while the page still says it is.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ASSURANCE = ROOT / "docs" / "assurance.md"


def _test_names(path: Path) -> set[str]:
    """Names of the test functions in one test module (module level and in classes)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in ast.walk(tree)
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            and node.name.startswith("test_")}


def _references(page: str) -> list[tuple[str, str]]:
    """(module path, test name or pattern) for every test a table row names.

    A row may name ``tests/x.py::test_a`` and then ``::test_b`` for the same module."""
    refs: list[tuple[str, str]] = []
    for line in page.splitlines():
        module = ""
        for ref in re.findall(r"`([^`]+)`", line):
            if ref.startswith("tests/"):
                module, _, name = ref.partition("::")
                refs.append((module, name))
            elif ref.startswith("::") and module:
                refs.append((module, ref[2:]))
    return refs


def _missing(refs: list[tuple[str, str]]) -> list[str]:
    missing = []
    for module, name in refs:
        path = ROOT / module
        if not path.exists():
            missing.append(module)
            continue
        if not name or path.is_dir():
            continue
        # "test_x[case]" names a parametrised case; "test_x_*" any test with that prefix
        base = name.split("[", 1)[0]
        names = _test_names(path)
        found = (any(n.startswith(base.rstrip("*")) for n in names) if base.endswith("*")
                 else base in names)
        if not found:
            missing.append(f"{module}::{name}")
    return missing


def test_assurance_names_only_tests_that_exist() -> None:
    refs = _references(ASSURANCE.read_text(encoding="utf-8"))
    assert len(refs) > 50, "the assurance page lists the tests behind its promises"
    assert not _missing(refs), "docs/assurance.md names tests that do not exist"


def test_the_check_catches_renamed_tests_and_modules() -> None:
    page = ("| a | `tests/unit/test_docs.py::test_assurance_names_only_tests_that_exist`, "
            "`::test_renamed_long_ago`, `::test_the_check_*` |\n"
            "| b | `tests/unit/test_gone.py` |\n")
    assert _missing(_references(page)) == ["tests/unit/test_docs.py::test_renamed_long_ago",
                                           "tests/unit/test_gone.py"]


DOC_PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
             *sorted((ROOT / "notebooks").glob("*.ipynb")), ROOT / "benchmarks" / "README.md"]


def _resolve(dotted: str) -> bool:
    """Whether ``privmob.a.b.c`` names something: the longest importable module prefix,
    then attributes. A function bound over a submodule of the same name fails here."""
    import importlib

    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj: object = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(obj, name):
                return False
            obj = getattr(obj, name)
        return True
    return False


def test_module_paths_named_in_the_docs_resolve() -> None:
    """Every ``privmob.x.y`` path a page names exists as written (a renamed module or a
    function shadowing its module would send a reader to nothing)."""
    found = {m for page in DOC_PAGES
             for m in re.findall(r"\bprivmob(?:\.[A-Za-z_][A-Za-z0-9_]*)+", page.read_text(encoding="utf-8"))}
    # file names (privmob.toml, privmob.jsonl) and globs (privmob.backends._*) are not paths
    found = {m for m in found if not m.endswith((".toml", ".key", ".py", ".md", ".jsonl", "_"))}
    assert found, "the pages name no privmob paths: the scan is broken"
    assert sorted(m for m in found if not _resolve(m)) == []
    assert not _resolve("privmob.flows.exact_flows")  # the function is not the module
