"""Evaluation datasets: the item types readers return, layout checks shared by every reader, and the reader of
evaluation manifests.

A reader takes a dataset root, validates the layout up front (listing everything missing at once) and
returns an :class:`EvalDataset`. Plugins expose theirs through ``Modality.dataset_readers()``.

:func:`read_eval_manifest` reads a manifest (the rules are :mod:`lbcore.manifest`'s) as evaluation data:

* plain rows (``path``) serve one modality: ``{"path": "a.wav", "label": "dog"}`` (zero-shot classification
  over the distinct labels; a list of labels makes it multi-label, scored by mAP) or ``{"path": "a.wav",
  "captions": ["...", "..."]}`` (retrieval both ways). Rows with both are classified unless the task says
  retrieval.
* paired rows (one key per modality, e.g. ``{"video": "a.mp4", "depth": "a.png", "label": "kitchen"}``): row i
  of every modality is one item seen through several sensors. They serve *fused* zero-shot (each modality's
  logits, then their average, as LanguageBind's Table 6) and *emergent* retrieval between two modalities that
  never saw each other in training (``<a>_to_<b>``: the rank of each item's partner among all items of the
  other modality). Keys that are not a modality of the evaluation are ignored.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lbcore.errors import EvaluationError, LbindError
from lbcore.manifest import PATH, Manifest, ManifestError

__all__ = [
    "EvalDataset",
    "EvalItem",
    "LayoutError",
    "Task",
    "TaskChoice",
    "folder_per_class",
    "read_csv_rows",
    "read_eval_manifest",
    "require",
]

Task = Literal["classification", "multilabel", "retrieval"]
TaskChoice = Literal["auto", "classification", "retrieval"]


class LayoutError(LbindError):
    """A dataset folder does not have the expected layout."""


@dataclass(frozen=True)
class EvalItem:
    """One media file with its class labels (classification) or captions (retrieval)."""

    path: Path
    labels: tuple[str, ...] = ()
    captions: tuple[str, ...] = ()


@dataclass
class EvalDataset:
    name: str
    root: Path
    task: Task
    items: list[EvalItem]
    classes: list[str] = field(default_factory=list)
    split: str = "test"

    def __len__(self) -> int:
        return len(self.items)


def require(root: Path, relpaths: Iterable[str | Path], dataset: str, hint: str = "") -> None:
    """Raise one :class:`LayoutError` listing every required path missing under ``root``."""
    root = Path(root)
    if not root.is_dir():
        raise LayoutError(f"{root}: {dataset} root folder does not exist{'; ' + hint if hint else ''}")
    missing = [str(p) for p in relpaths if not (root / p).exists()]
    if missing:
        shown = ", ".join(missing[:20]) + (f" and {len(missing) - 20} more" if len(missing) > 20 else "")
        raise LayoutError(
            f"{root}: {dataset} layout is missing {len(missing)} path(s): {shown}{'; ' + hint if hint else ''}"
        )


def read_csv_rows(path: Path, required: Sequence[str], dataset: str, delimiter: str = ",") -> list[dict[str, str]]:
    """Read a CSV with a header, checking that the required columns exist."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            header = [h.strip() for h in (reader.fieldnames or [])]
            missing = [c for c in required if c not in header]
            if missing:
                raise LayoutError(f"{path}: {dataset} CSV lacks column(s) {', '.join(missing)}; has {header}")
            return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except OSError as err:
        raise LayoutError(f"{path}: cannot read {dataset} CSV: {err.strerror or err}") from err


def folder_per_class(root: str | Path, extensions: Sequence[str], dataset: str, split: str = "") -> EvalDataset:
    """``root[/split]/<class name>/<file>``: every sub-folder is a class, every matching file an item."""
    base = Path(root) / split if split else Path(root)
    require(Path(root), [split] if split else [], dataset)
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions}
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not classes:
        raise LayoutError(f"{base}: {dataset} expects one sub-folder per class, found none")
    items = []
    empty = []
    for cls in classes:
        files = sorted(p for p in (base / cls).rglob("*") if p.is_file() and p.suffix.lower() in exts)
        if not files:
            empty.append(cls)
        items.extend(EvalItem(path=f, labels=(cls.replace("_", " "),)) for f in files)
    if empty:
        raise LayoutError(
            f"{base}: {dataset} class folder(s) without {'/'.join(sorted(exts))} files: {', '.join(empty)}"
        )
    return EvalDataset(
        dataset, Path(root), "classification", items, [c.replace("_", " ") for c in classes], split or "test"
    )


# ------------------------------------------------------------------------------------------- eval manifests
def _listing(wheres: Sequence[str], limit: int = 10) -> str:
    return ", ".join(wheres[:limit]) + (f" and {len(wheres) - limit} more" if len(wheres) > limit else "")


def _eval_task(manifest: Manifest, task: TaskChoice) -> Task:
    """The task a manifest's rows serve: ``task``, or in ``auto`` classification when every row is labelled."""
    rows = range(len(manifest))
    unlabelled = [manifest.where(i) for i in rows if not manifest.labels(i)]
    if task == "auto":
        if not unlabelled:
            task = "classification"
        elif len(unlabelled) == len(manifest):
            task = "retrieval"
        else:
            raise ManifestError(
                f"{manifest.source}: some rows have a 'label' and others do not ({_listing(unlabelled)}); label "
                "every row for classification, or evaluate retrieval over the captions (task 'retrieval')"
            )
    if task == "classification":
        if unlabelled:
            raise ManifestError(
                f"{manifest.source}: classification needs a 'label' on every row; missing: {_listing(unlabelled)}"
            )
        return "multilabel" if any(manifest.multilabel(i) for i in rows) else "classification"
    if task == "retrieval":
        uncaptioned = [manifest.where(i) for i in rows if not manifest.captions(i)]
        if uncaptioned:
            raise ManifestError(
                f"{manifest.source}: retrieval needs 'captions' on every row; missing: {_listing(uncaptioned)}"
            )
        return "retrieval"
    raise EvaluationError(f"unknown task {task!r}: expected auto, classification or retrieval")


def _eval_paths(manifest: Manifest, modalities: Sequence[str]) -> dict[str, list[Path]]:
    """Each modality's file per row; one error lists every row without one."""
    if not manifest.paired and len(modalities) != 1:
        raise EvaluationError(
            f"{manifest.source}: rows name one 'path', but {' and '.join(modalities)} need a paired manifest with "
            f'one key per modality, e.g. {{"{modalities[0]}": "x", "{modalities[1]}": "y", "label": "..."}}'
        )
    paths: dict[str, list[Path]] = {}
    problems: list[str] = []
    for modality in modalities:
        try:
            paths[modality] = manifest.paths(manifest.column_for(modality))
        except ManifestError as err:
            problems.append(str(err))
    if problems:
        raise ManifestError("\n".join(problems))
    return paths


def read_eval_manifest(
    manifest: str | Path, modalities: Sequence[str], task: TaskChoice = "auto", *, pairs_only: bool = False
) -> dict[str, EvalDataset]:
    """Read an evaluation manifest (see the module docs) into one aligned :class:`EvalDataset` per modality.

    A manifest with a ``path`` per row serves exactly one modality; a paired manifest must have a key for every
    modality asked for, on every row. Every media file is checked up front and all missing ones are listed in
    one error. ``pairs_only``: the rows are pairs for emergent retrieval (no labels or captions needed).
    """
    if not modalities:
        raise EvaluationError("read_eval_manifest: no modality named")
    parsed = Manifest.read(manifest)
    paths = _eval_paths(parsed, modalities)
    resolved: Task = "retrieval" if pairs_only else _eval_task(parsed, task)
    parsed.check_files(PATH if not parsed.paired else m for m in modalities)
    rows = range(len(parsed))
    classes = sorted({label for i in rows for label in parsed.labels(i)}) if resolved != "retrieval" else []
    source = parsed.source
    out = {}
    for modality, files in paths.items():
        items = [
            EvalItem(files[i], parsed.labels(i) if resolved != "retrieval" else (), parsed.captions(i)) for i in rows
        ]
        out[modality] = EvalDataset(source.name, parsed.base, resolved, items, classes, split=source.stem)
    return out
