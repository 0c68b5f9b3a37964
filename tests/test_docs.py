"""The generated tables of docs/*.md match the JSON that holds their figures (docs/generate.py)."""
import importlib.util
import json
import shutil
from pathlib import Path

DOCS = Path(__file__).resolve().parent.parent / "docs"


def _generator():
    spec = importlib.util.spec_from_file_location("docs_generate", DOCS / "generate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_generated_table_matches_its_json(capsys):
    assert _generator().main(["--check"]) == 0, capsys.readouterr().err


def test_every_doc_has_generated_tables_and_every_table_name_is_known():
    generate = _generator()
    names = [m.group(2) for path in DOCS.glob("*.md") for m in generate.MARKER.finditer(path.read_text(encoding="utf-8"))]
    assert names and set(names) <= set(generate.TABLES)
    assert set(generate.TABLES) <= set(names), "a table function no doc uses"


def _copy(tmp_path, page: str) -> Path:
    """docs/data and one page, copied: the other pages' state cannot affect the test."""
    docs = tmp_path / "docs"
    shutil.copytree(DOCS / "data", docs / "data")
    shutil.copy(DOCS / page, docs / page)
    return docs


def test_check_fails_and_names_the_table_when_a_figure_changes(tmp_path, capsys):
    docs = _copy(tmp_path, "bundled-experts.md")
    data = docs / "data" / "heldout-seed90210.json"
    result = json.loads(data.read_text(encoding="utf-8"))
    result["experts"]["image"]["accuracy"]["overall"] = 0.123
    data.write_text(json.dumps(result), encoding="utf-8")

    generate = _generator()
    assert generate.main(["--check", "--docs", str(docs)]) == 1
    err = capsys.readouterr().err
    assert "docs/bundled-experts.md: table 'heldout-seed90210' differs" in err
    assert err.count("differs") == 1, err

    # Rewriting puts the new figure in the doc, and the check passes again.
    assert generate.main(["--docs", str(docs)]) == 0
    assert "**0.123**" in (docs / "bundled-experts.md").read_text(encoding="utf-8")
    assert generate.main(["--check", "--docs", str(docs)]) == 0


def test_check_fails_when_an_edit_lands_inside_a_generated_table(tmp_path, capsys):
    docs = _copy(tmp_path, "merge-methods.md")
    page = docs / "merge-methods.md"
    text = page.read_text(encoding="utf-8")
    start = text.index("<!-- generated:methods-cost -->")
    page.write_text(text[:start] + text[start:].replace("| `ties` |", "| `ties` (hand-edited) |", 1), encoding="utf-8")
    assert _generator().main(["--check", "--docs", str(docs)]) == 1
    err = capsys.readouterr().err
    assert "docs/merge-methods.md: table 'methods-cost' differs" in err and err.count("differs") == 1, err
