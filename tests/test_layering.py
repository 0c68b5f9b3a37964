"""Imports go one way: app.py -> studio/ -> composition/ -> modalities/ -> modalities/checks.py (training/ beside the app).

Inside composition/, the engine (its top-level modules, methods/, importers/) never imports
the rooms built on it: evaluation/, benchmarks/ and cli/; evaluation/ never imports
benchmarks/ or cli/, and benchmarks/ never imports cli/.

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
    "modalities/checks.py": {"app", "studio", "training", "composition", "modalities", "gradio", "gradio_client"},
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


# composition/ subpackage (or "engine") -> composition subpackages it must never import
ROOMS = ("evaluation", "benchmarks", "cli")
FORBIDDEN_INSIDE = {"engine": set(ROOMS), "evaluation": {"benchmarks", "cli"}, "benchmarks": {"cli"}}


def room_of(path: Path) -> str:
    """The composition/ subpackage a module belongs to: one of ROOMS, else "engine" (``python -m composition``'s
    ``__main__.py`` is the command line's door)."""
    part = path.relative_to(REPO / "composition").parts[0]
    return "cli" if part == "__main__.py" else part if part in ROOMS else "engine"


def composition_subpackages(path: Path) -> set[tuple[str, int]]:
    """(composition subpackage, line) of every import in ``path`` that names one: ``composition.cli``,
    ``from ..evaluation import x``, ``from . import benchmarks``, ``from .cli.main import y``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = path.relative_to(REPO).parent.parts  # ("composition", "evaluation") for composition/evaluation/x.py
    found = set()
    for node in ast.walk(tree):
        names: list[tuple[str, ...]] = []
        if isinstance(node, ast.Import):
            names = [tuple(alias.name.split(".")) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                base = tuple((node.module or "").split("."))
            else:
                base = package[: len(package) - (node.level - 1)] + (tuple(node.module.split(".")) if node.module else ())
            names = [base + (alias.name,) for alias in node.names] if not node.module or node.level else [base]
        for name in names:
            if len(name) > 1 and name[0] == "composition" and name[1] in ROOMS:
                found.add((name[1], node.lineno))
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


def test_the_engine_never_imports_evaluation_benchmarks_or_the_cli():
    problems = []
    for path in modules("composition"):
        room = room_of(path)
        for name, line in composition_subpackages(path):
            if name in FORBIDDEN_INSIDE.get(room, set()):
                problems.append(f"{path.relative_to(REPO)}:{line} ({room}) imports composition.{name}")
    assert not problems, "imports against the layering inside composition/:\n" + "\n".join(sorted(problems))


def test_the_room_check_sees_relative_and_absolute_imports(tmp_path):
    """Absolute, relative, package-relative and lazy imports of a room are all found (so the test above can fail)."""
    engine = REPO / "composition" / "_layering_probe.py"
    sample = ("from .evaluation import evaluate\nfrom . import benchmarks\nimport composition.cli.entry\n\n"
              "def f():\n    from .cli.common import build_model\n\nfrom .plan import Plan\n")
    engine.write_text(sample)
    try:
        assert {n for n, _ in composition_subpackages(engine)} == {"evaluation", "benchmarks", "cli"}
        assert room_of(engine) == "engine"
    finally:
        engine.unlink()
    nested = REPO / "composition" / "evaluation" / "_layering_probe.py"
    nested.write_text("from ..cli import main\nfrom .runner import evaluate\nfrom ..plan import Plan\n")
    try:
        assert composition_subpackages(nested) == {("cli", 1), ("evaluation", 2)} and room_of(nested) == "evaluation"
    finally:
        nested.unlink()


def test_the_check_sees_imports_inside_functions(tmp_path):
    """The scanner finds a lazy import, a from-import and importlib.import_module (so the test above can fail)."""
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    from training.world import World\n    import gradio as gr\n"
                      "    importlib.import_module('studio.run')\n\nfrom . import sibling\n")
    names = {n for n, _ in imported_top_names(sample)}
    assert names == {"os", "training", "gradio", "studio"}
