"""Evaluation datasets: the item types readers return, and layout checks shared by every reader.

A reader takes a dataset root, validates the layout up front (listing everything missing at once) and
returns an :class:`EvalDataset`. Plugins expose theirs through ``Modality.dataset_readers()``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from lbcore.errors import LbindError

Task = Literal["classification", "multilabel", "retrieval"]


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
