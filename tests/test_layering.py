"""The folders are the architecture: each layer imports only the layers below it.

Read from the import statements of every module with ``ast`` (no import is executed), so a new module that
breaks the rule fails here with a line naming the file, the import and what that layer may import.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "onnxprune"

#: layer -> the layers it may import (besides itself). ``top`` is pipeline, config, cli, __init__, __main__.
ALLOWED: dict[str, set[str]] = {
    "core": set(),
    "structured": {"core"},
    "sparse": {"core"},
    "runtime": {"core"},
    "recovery": {"core", "structured", "sparse", "runtime"},
    "report": {"core", "structured", "sparse", "runtime", "recovery"},
    "top": {"core", "structured", "sparse", "runtime", "recovery", "report", "top"},
}
LAYERS = set(ALLOWED) - {"top"}


def layer_of_module(dotted: str) -> str:
    """``onnxprune.core.io`` -> ``core``; anything not in a layer folder (pipeline, config, cli) -> ``top``."""
    parts = dotted.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "top"


def layer_of_file(path: Path, root: Path = PACKAGE) -> str:
    rel = path.relative_to(root).parts
    return rel[0] if len(rel) > 1 and rel[0] in LAYERS else "top"


def imported_modules(tree: ast.AST) -> list[tuple[int, str]]:
    """Every ``onnxprune...`` module a file imports, with the line (``from onnxprune import x`` -> ``onnxprune.x``)."""
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.split(".")[0] == "onnxprune"]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "onnxprune":
                found += [(node.lineno, f"onnxprune.{a.name}") for a in node.names]
            elif node.module.split(".")[0] == "onnxprune":
                found.append((node.lineno, node.module))
        elif isinstance(node, ast.ImportFrom) and node.level:
            raise AssertionError(f"line {node.lineno}: relative import; use absolute imports")
    return found


def layering_violations(root: Path = PACKAGE) -> list[str]:
    problems = []
    for path in sorted(root.rglob("*.py")):
        here = layer_of_file(path, root)
        for line, module in imported_modules(ast.parse(path.read_text(), str(path))):
            there = layer_of_module(module)
            if there != here and there not in ALLOWED[here]:
                problems.append(f"{path.relative_to(root.parent)}:{line}: {here}/ imports {module} ({there}/); "
                                f"{here}/ may import only {sorted(ALLOWED[here]) or 'nothing else of onnxprune'}")
    return problems


def test_every_import_goes_down_the_layers() -> None:
    assert layering_violations() == []


def test_checker_catches_an_upward_import(tmp_path: Path) -> None:
    """The check itself can fail: a core module importing structured is named, with the line."""
    (tmp_path / "core").mkdir()
    (tmp_path / "core" / "bad.py").write_text("import os\n\nfrom onnxprune.structured.plan import PrunePlan\n")
    (tmp_path / "runtime").mkdir()
    (tmp_path / "runtime" / "worse.py").write_text("from onnxprune import pipeline\n")
    (tmp_path / "recovery").mkdir()
    (tmp_path / "recovery" / "fine.py").write_text("from onnxprune.runtime.session import create_session\n")
    problems = layering_violations(tmp_path)
    assert len(problems) == 2
    assert problems[0].startswith(f"{tmp_path.name}/core/bad.py:3: core/ imports onnxprune.structured.plan")
    assert "runtime/worse.py:1: runtime/ imports onnxprune.pipeline (top/)" in problems[1]


@pytest.mark.parametrize("path", sorted(p for p in PACKAGE.rglob("*.py") if p.parent.name != "core"),
                         ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_module_outside_core_exceeds_800_lines(path: Path) -> None:
    assert len(path.read_text().splitlines()) <= 800, f"{path}: split it by responsibility"
