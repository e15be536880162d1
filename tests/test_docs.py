"""The docs stay in step with the code: every `make` target README and docs/ name exists, every
relative link resolves, and every section a benchmark writes its table into is marked in
docs/benchmarks.md (a missing marker would append the table at the end of the file instead)."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
DOCS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
sys.path.insert(0, str(REPO_ROOT / "benchmarks"))

from speed.sections import MARKERS  # noqa: E402


def make_targets() -> set[str]:
    text = (REPO_ROOT / "Makefile").read_text()
    return set(re.findall(r"^([a-z][a-z0-9-]*):", text, flags=re.MULTILINE))


def named_targets(text: str) -> set[str]:
    """`make X` inside code: command lines and inline code, not prose such as "make sure"."""
    code = "\n".join(re.findall(r"```.*?```|`[^`\n]+`", text, flags=re.DOTALL))
    return set(re.findall(r"(?<![\w./-])make ([a-z][a-z0-9-]*)", code))


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_every_make_target_a_doc_names_exists(doc: Path) -> None:
    missing = named_targets(doc.read_text()) - make_targets()
    assert not missing, f"{doc.name} names make targets the Makefile lacks: {sorted(missing)}"


def test_readme_names_its_two_commands() -> None:
    named = named_targets((REPO_ROOT / "README.md").read_text())
    assert {"demo", "test"} <= named


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: path.name)
def test_relative_links_resolve(doc: Path) -> None:
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", doc.read_text())
    broken = [link for link in links if "://" not in link and not (doc.parent / link).exists()]
    assert not broken, f"{doc.name} links to missing files: {broken}"


def test_every_benchmark_section_is_marked_in_benchmarks_md() -> None:
    text = (REPO_ROOT / "docs" / "benchmarks.md").read_text()
    for key, (begin, end) in MARKERS.items():
        assert text.count(begin) == 1 and text.count(end) == 1, key
        assert text.index(begin) < text.index(end), key


def section_keys(node: ast.expr) -> set[str]:
    """The literal keys an argument can take: a string, or either branch of `a if ... else b`."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return section_keys(node.body) | section_keys(node.orelse)
    return set()


def test_the_sections_benchmarks_write_are_known() -> None:
    """Each script's literal `write_section(path, key, body)` keys: a key missing from MARKERS raises
    KeyError only after a run of minutes (or of a lent GPU's budget)."""
    sources = [*(REPO_ROOT / "benchmarks").glob("*.py"), *(REPO_ROOT / "benchmarks" / "speed").glob("*.py")]
    written: set[str] = set()
    for source in sources:
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "write_section":
                written |= section_keys(node.args[1])
    assert {"precision", "precision-gpu", "variants-gpu", "tune", "overhead"} <= written, sorted(written)
    assert written <= set(MARKERS), sorted(written - set(MARKERS))
