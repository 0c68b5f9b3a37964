"""Imports go one way: app.py -> studio/ -> composition/ -> modalities/ -> checks.py (training/ beside the app).

Checked statically over every import statement of every module, including imports inside
functions (a lazy import is still a dependency), so no layer can reach up.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# package -> top-level names it must never import
FORBIDDEN = {
    "checks.py": {"app", "studio", "training", "composition", "modalities", "gradio", "gradio_client"},
    "modalities": {"app", "studio", "training", "composition", "gradio", "gradio_client"},
    "composition": {"app", "studio", "training", "gradio", "gradio_client"},
    "studio": {"app", "training", "gradio", "gradio_client"},
    "training": {"app", "studio", "gradio", "gradio_client"},
}


def imported_top_names(path: Path) -> set[tuple[str, int]]:
    """(top-level module, line) of every absolute import in ``path``; relative imports stay in their package."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {(alias.name.split(".")[0], node.lineno) for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add((node.module.split(".")[0], node.lineno))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            if node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str):
                found.add((node.args[0].value.split(".")[0], node.lineno))
    return found


def modules(package: str) -> list[Path]:
    root = REPO / package
    return [root] if root.is_file() else sorted(root.rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_no_layer_imports_upwards(package):
    problems = []
    for path in modules(package):
        for name, line in imported_top_names(path):
            if name in FORBIDDEN[package]:
                problems.append(f"{path.relative_to(REPO)}:{line} imports {name}")
    assert not problems, "imports against the layering:\n" + "\n".join(sorted(problems))


def test_the_check_sees_imports_inside_functions(tmp_path):
    """The scanner finds a lazy import, a from-import and importlib.import_module (so the test above can fail)."""
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    from training.world import World\n    import gradio as gr\n"
                      "    importlib.import_module('studio.run')\n\nfrom . import sibling\n")
    names = {n for n, _ in imported_top_names(sample)}
    assert names == {"os", "training", "gradio", "studio"}
