"""benchmarks/RESULTS.md, one section per benchmark: each writer replaces its own section and leaves the rest."""

from __future__ import annotations

from pathlib import Path

RESULTS = Path(__file__).with_name("RESULTS.md")


def replace_section(heading: str, text: str, path: Path = RESULTS) -> Path:
    """Put ``text`` (which starts with the line ``heading``) in place of the section under ``heading``: from
    that heading line to the next line that starts with ``#``; appended when the file has no such section.
    Sections therefore hold no sub-headings."""
    if not text.startswith(heading):
        raise ValueError(f"the section text must start with its heading {heading!r}")
    old = path.read_text(encoding="utf-8") if path.is_file() else ""
    lines = old.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip("\n") == heading), None)
    body = text.rstrip("\n") + "\n"
    if start is None:
        new = (old.rstrip("\n") + "\n\n" if old.strip() else "") + body
    else:
        end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("#")), len(lines))
        rest = "".join(lines[end:])
        new = "".join(lines[:start]) + body + ("\n" + rest if rest else "")
    path.write_text(new, encoding="utf-8")
    return path


def publish(heading: str, text: str, write: bool, path: Path = RESULTS) -> None:
    """Print a benchmark's section and, with ``write``, put it in place of its section of ``path``."""
    print(text)
    if write:
        print(f"wrote {replace_section(heading, text, path)}")
