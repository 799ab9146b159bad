"""benchmarks/resultsfile.py: a benchmark's --write replaces its own section of RESULTS.md and nothing else."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SPEC = importlib.util.spec_from_file_location(
    "resultsfile", Path(__file__).resolve().parents[1] / "benchmarks" / "resultsfile.py"
)
assert SPEC is not None and SPEC.loader is not None
resultsfile = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(resultsfile)

BEFORE = "# Results\n\nintro\n\n## A\n\nold a\n\n## B\n\nkept b\n\n# Store\n\nkept store\n"


def test_a_section_is_replaced_and_the_others_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(BEFORE)
    resultsfile.replace_section("## A", "## A\n\nnew a\nline 2\n", path)
    assert path.read_text() == BEFORE.replace("old a\n", "new a\nline 2\n")


def test_a_missing_section_is_appended(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(BEFORE)
    resultsfile.replace_section("## C", "## C\n\nc\n", path)
    assert path.read_text() == BEFORE + "\n## C\n\nc\n"
    resultsfile.replace_section("## C", "## C\n\nc again\n", path)  # the last section: replaced to the end
    assert path.read_text() == BEFORE + "\n## C\n\nc again\n"


def test_text_must_start_with_its_heading(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="heading"):
        resultsfile.replace_section("## A", "no heading\n", tmp_path / "RESULTS.md")
