"""Manifests: JSONL or CSV files listing media (path relative to the manifest) and their captions.

JSONL: one object per line, ``{"path": "a/b.wav", "captions": ["...", "..."], "label": "optional"}``
(``"caption": "..."`` is accepted for a single caption). CSV: columns ``path`` and ``caption`` (one row per
caption; rows with the same path are merged) and optionally ``label``.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from lbcore.errors import LbindError


class ManifestError(LbindError):
    """A manifest is malformed or names files that do not exist."""


@dataclass(frozen=True)
class ManifestEntry:
    path: Path  # absolute
    captions: tuple[str, ...]
    label: str | None = None


def read_manifest(manifest: str | Path, check_files: bool = True) -> list[ManifestEntry]:
    """Parse a manifest; with ``check_files``, list every missing media file in one error."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ManifestError(f"{manifest}: manifest not found")
    base = manifest.parent
    if manifest.suffix.lower() == ".csv":
        entries = _read_csv(manifest, base)
    else:
        entries = _read_jsonl(manifest, base)
    if not entries:
        raise ManifestError(f"{manifest}: manifest lists no media")
    if check_files:
        missing = [str(e.path) for e in entries if not e.path.is_file()]
        if missing:
            shown = "\n  ".join(missing[:50]) + (f"\n  ... and {len(missing) - 50} more" if len(missing) > 50 else "")
            raise ManifestError(f"{manifest}: {len(missing)} of {len(entries)} media file(s) missing:\n  {shown}")
    return entries


def _read_jsonl(manifest: Path, base: Path) -> list[ManifestEntry]:
    entries = []
    for lineno, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{manifest}:{lineno}: not valid JSON: {err.msg}") from err
        if not isinstance(row, dict) or "path" not in row:
            raise ManifestError(f"{manifest}:{lineno}: expected an object with a 'path' key")
        captions = row.get("captions", row.get("caption"))
        if isinstance(captions, str):
            captions = [captions]
        if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
            raise ManifestError(f"{manifest}:{lineno}: expected 'captions' as a non-empty list of strings")
        entries.append(ManifestEntry((base / row["path"]).resolve(), tuple(captions), row.get("label")))
    return entries


def _read_csv(manifest: Path, base: Path) -> list[ManifestEntry]:
    merged: dict[str, tuple[list[str], str | None]] = {}
    with open(manifest, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames or "caption" not in reader.fieldnames:
            raise ManifestError(f"{manifest}: CSV manifest needs 'path' and 'caption' columns")
        for lineno, row in enumerate(reader, 2):
            if not row["path"] or not (row["caption"] or "").strip():
                raise ManifestError(f"{manifest}:{lineno}: empty path or caption")
            caps, _label = merged.setdefault(row["path"], ([], row.get("label") or None))
            caps.append(row["caption"])
    return [ManifestEntry((base / p).resolve(), tuple(c), lab) for p, (c, lab) in merged.items()]


def write_manifest(manifest: str | Path, rows: Iterable[dict]) -> Path:
    """Write JSONL rows (``path`` relative to the manifest's folder), atomically."""
    manifest = Path(manifest)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_suffix(manifest.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(manifest)
    return manifest
