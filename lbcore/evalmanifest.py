"""Evaluation manifests: JSONL (or CSV) rows whose media paths are relative to the manifest.

A manifest serves one modality or several (paired rows):

* single modality: ``{"path": "a.wav", "label": "dog"}`` (zero-shot classification over the distinct labels;
  a list of labels makes it multi-label, scored by mAP) or ``{"path": "a.wav", "captions": ["...", "..."]}``
  (retrieval both ways; ``"caption"`` for one). Rows with both are classified unless the task says retrieval.
* paired: one key per modality instead of ``path``, e.g. ``{"video": "a.mp4", "depth": "a.png", "label":
  "kitchen"}``. Row i of every modality is one item seen through several sensors. Such a manifest serves
  *fused* zero-shot (each modality's logits, then their average, as LanguageBind's Table 6) and *emergent*
  retrieval between two modalities that never saw each other in training, only the text anchor (``<a>_to_<b>``:
  the rank of each item's partner among all items of the other modality). Keys that are not a modality of the
  evaluation are ignored.

This is the evaluation side of the manifest formats; training manifests are read by :mod:`lbcore.data`.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from lbcore.data import ManifestError
from lbcore.datasets import EvalDataset, EvalItem
from lbcore.errors import EvaluationError

__all__ = ["RESERVED_KEYS", "TaskChoice", "read_eval_manifest"]

RESERVED_KEYS = frozenset({"path", "label", "labels", "caption", "captions", "id", "split"})
TaskChoice = Literal["auto", "classification", "retrieval"]


@dataclass
class _Row:
    paths: dict[str, Any]  # column ("" for a single "path") -> path as written
    labels: tuple[str, ...]
    multi: bool  # the label was given as a list
    captions: tuple[str, ...]
    where: str


def _strings(value: Any, key: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise ManifestError(f"{where}: {key!r} must be a non-empty string or a list of non-empty strings")
    return tuple(items)


def _row(record: Mapping[str, Any], where: str) -> _Row:
    if "path" in record:
        paths: dict[str, Any] = {"": record["path"]}
    else:
        paths = {k: v for k, v in record.items() if k not in RESERVED_KEYS}
    label = record.get("label", record.get("labels"))
    return _Row(
        paths,
        _strings(label, "label", where),
        isinstance(label, list),
        _strings(record.get("captions", record.get("caption")), "captions", where),
        where,
    )


def _read_rows(manifest: Path) -> list[_Row]:
    if not manifest.is_file():
        raise ManifestError(f"{manifest}: manifest not found")
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"{manifest}: cannot read the manifest: {err}") from err
    rows: list[_Row] = []
    if manifest.suffix.lower() == ".csv":
        # One row per caption; rows naming the same media merge their captions (as in training manifests).
        merged: dict[tuple[tuple[str, Any], ...], _Row] = {}
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for lineno, record in enumerate(reader, 2):
            record = {k.strip(): (v or "").strip() for k, v in record.items() if k and (v or "").strip()}
            row = _row(record, f"{manifest}:{lineno}")
            key = tuple(sorted(row.paths.items()))
            if key in merged:
                merged[key].captions += row.captions
            else:
                merged[key] = row
        rows = list(merged.values())
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{manifest}:{lineno}: not valid JSON: {err.msg}") from err
            if not isinstance(record, dict):
                raise ManifestError(f"{manifest}:{lineno}: expected a JSON object")
            rows.append(_row(record, f"{manifest}:{lineno}"))
    if not rows:
        raise ManifestError(f"{manifest}: manifest lists no items")
    return rows


def _listing(wheres: Sequence[str], limit: int = 10) -> str:
    return ", ".join(wheres[:limit]) + (f" and {len(wheres) - limit} more" if len(wheres) > limit else "")


def _resolve_task(rows: Sequence[_Row], task: TaskChoice, manifest: Path) -> str:
    unlabelled = [r.where for r in rows if not r.labels]
    uncaptioned = [r.where for r in rows if not r.captions]
    if task == "auto":
        if not unlabelled:
            task = "classification"
        elif len(unlabelled) == len(rows):
            task = "retrieval"
        else:
            raise ManifestError(
                f"{manifest}: some rows have a 'label' and others do not ({_listing(unlabelled)}); label every row "
                "for classification, or evaluate retrieval over the captions (task 'retrieval')"
            )
    if task == "classification":
        if unlabelled:
            raise ManifestError(
                f"{manifest}: classification needs a 'label' on every row; missing: {_listing(unlabelled)}"
            )
        return "multilabel" if any(r.multi for r in rows) else "classification"
    if task == "retrieval":
        if uncaptioned:
            raise ManifestError(
                f"{manifest}: retrieval needs 'captions' on every row; missing: {_listing(uncaptioned)}"
            )
        return "retrieval"
    raise EvaluationError(f"unknown task {task!r}: expected auto, classification or retrieval")


def read_eval_manifest(
    manifest: str | Path, modalities: Sequence[str], task: TaskChoice = "auto", *, pairs_only: bool = False
) -> dict[str, EvalDataset]:
    """Read an evaluation manifest (see the module docs) into one aligned :class:`EvalDataset` per modality.

    A manifest with a ``path`` per row serves exactly one modality; a paired manifest must have a key for every
    modality asked for. Every media file is checked up front and all missing ones are listed in one error.
    """
    manifest = Path(manifest)
    if not modalities:
        raise EvaluationError("read_eval_manifest: no modality named")
    rows = _read_rows(manifest)
    plain = ["" in r.paths for r in rows]
    if any(plain) and not all(plain):
        raise ManifestError(
            f"{manifest}: mixes rows with a 'path' and paired rows (one key per modality); use one form throughout"
        )
    if all(plain):
        if len(modalities) != 1:
            raise EvaluationError(
                f"{manifest}: rows name one 'path', but {' and '.join(modalities)} need a paired manifest with one "
                f'key per modality, e.g. {{"{modalities[0]}": "x", "{modalities[1]}": "y", "label": "..."}}'
            )
        columns = {modalities[0]: ""}
    else:
        columns = {m: m for m in modalities}
    problems = [
        f"{r.where}: no {m!r} path" if col not in r.paths else f"{r.where}: {m!r} is not a path string"
        for r in rows
        for m, col in columns.items()
        if not isinstance(r.paths.get(col), str) or not r.paths[col].strip()
    ]
    if problems:
        raise ManifestError(f"{manifest}: {len(problems)} problem(s): " + "; ".join(problems[:10]))
    resolved = "retrieval" if pairs_only else _resolve_task(rows, task, manifest)
    base = manifest.parent
    wanted = sorted({os.path.normpath(base / r.paths[c]) for r in rows for c in columns.values()})
    missing = [p for p in wanted if not Path(p).is_file()]
    if missing:
        shown = "\n  ".join(missing[:50]) + (f"\n  ... and {len(missing) - 50} more" if len(missing) > 50 else "")
        raise ManifestError(f"{manifest}: {len(missing)} media file(s) missing:\n  {shown}")
    classes = sorted({label for r in rows for label in r.labels}) if resolved != "retrieval" else []
    out = {}
    for modality, col in columns.items():
        items = [
            EvalItem(
                Path(os.path.normpath(base / r.paths[col])),
                r.labels if resolved != "retrieval" else (),
                r.captions,
            )
            for r in rows
        ]
        out[modality] = EvalDataset(manifest.name, base, resolved, items, classes, split=manifest.stem)  # type: ignore[arg-type]
    return out
