"""Readers of the standard video evaluation layouts: Kinetics (classification) and MSR-VTT 1k-A (retrieval).

Each reader checks the layout up front and lists every missing file in one :class:`LayoutError`; with
``missing="skip"`` absent videos are dropped (and counted in a warning) instead, which is what partial
downloads of YouTube-sourced datasets need.

Kinetics-400/600/700, ``kinetics(root, split="val", csv=None, missing="error")``. The annotation CSV is
``csv`` (relative to ``root`` or absolute), else the first of ``root/<split>.csv``,
``root/annotations/<split>.csv``, ``root/kinetics_<split>.csv``. Two column sets are understood:

* ``path,label``: ``path`` relative to ``root``;
* the official ``label,youtube_id,time_start,time_end[,split,is_cc]``: the clip is
  ``<youtube_id>_<time_start:06d>_<time_end:06d>.<ext>`` (``ext`` one of mp4, mkv, webm) and is looked
  for in ``root/<split>/<label>/``, ``root/<split>/``, ``root/<label>/`` and ``root/``, in that order
  (``<split>`` from the row's ``split`` column, else the reader's ``split``).

The class list is every label of the CSV (sorted), present on disk or not, so accuracy is always over the
full label set.

MSR-VTT 1k-A, ``msrvtt(root, csv=None, missing="error")``: ``MSRVTT_JSFUSION_test.csv`` (columns ``key,
vid_key,video_id,sentence``; comma- or semicolon-separated; an unnamed leading index column is ignored) in
``root``, ``root/msrvtt_data`` or ``root/annotations``; the videos are ``root/videos/<video_id>.mp4`` or
``root/videos/all/<video_id>.mp4``. One retrieval item per video, with every sentence given for it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Literal

from lbcore.datasets import EvalDataset, EvalItem, LayoutError, read_csv_rows, require

log = logging.getLogger(__name__)

Missing = Literal["error", "skip"]
KINETICS_EXTENSIONS = (".mp4", ".mkv", ".webm")
OFFICIAL_KINETICS_COLUMNS = ("label", "youtube_id", "time_start", "time_end")
MSRVTT_CSV = "MSRVTT_JSFUSION_test.csv"


def _check_missing(missing: str) -> None:
    if missing not in ("error", "skip"):
        raise ValueError(f"missing must be 'error' or 'skip', got {missing!r}")


def _resolve_csv(root: Path, csv: str | Path | None, candidates: Sequence[str], dataset: str) -> Path:
    require(root, [], dataset)
    if csv is not None:
        path = Path(csv) if Path(csv).is_absolute() else root / csv
        if not path.is_file():
            raise LayoutError(f"{path}: {dataset} annotation CSV not found")
        return path
    for rel in candidates:
        if (root / rel).is_file():
            return root / rel
    raise LayoutError(f"{root}: no {dataset} annotation CSV; looked for {', '.join(candidates)} (or pass csv=...)")


def _csv_delimiter(path: Path) -> str:
    """',' or ';' by the header line (the public MSR-VTT 1k-A file exists in both forms)."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            header = f.readline()
    except OSError as err:
        raise LayoutError(f"{path}: cannot read CSV: {err.strerror or err}") from err
    return ";" if header.count(";") > header.count(",") else ","


def _split_missing(
    items: Iterable[EvalItem], unresolved: Sequence[str], missing: Missing, where: Path, dataset: str, total: int
) -> list[EvalItem]:
    kept = list(items)
    if unresolved:
        shown = "\n  ".join(unresolved[:20]) + (
            f"\n  ... and {len(unresolved) - 20} more" if len(unresolved) > 20 else ""
        )
        if missing == "error":
            raise LayoutError(
                f"{where}: {len(unresolved)} of {total} {dataset} video(s) missing (pass missing='skip' to "
                f"evaluate on the rest):\n  {shown}"
            )
        log.warning("%s: skipping %d of %d %s video(s) not found on disk", where, len(unresolved), total, dataset)
    if not kept:
        raise LayoutError(f"{where}: none of the {total} {dataset} videos listed were found")
    return kept


def kinetics(
    root: str | Path, split: str = "val", csv: str | Path | None = None, missing: Missing = "error"
) -> EvalDataset:
    """Kinetics zero-shot classification (see the module docstring for the layouts)."""
    _check_missing(missing)
    root = Path(root)
    dataset = "kinetics"
    path = _resolve_csv(root, csv, [f"{split}.csv", f"annotations/{split}.csv", f"kinetics_{split}.csv"], dataset)
    rows = read_csv_rows(path, [], dataset)
    if not rows:
        raise LayoutError(f"{path}: {dataset} CSV lists no clips")
    columns = set(rows[0])
    plain = {"path", "label"} <= columns
    if not plain and not set(OFFICIAL_KINETICS_COLUMNS) <= columns:
        raise LayoutError(
            f"{path}: {dataset} CSV needs columns path,label or {','.join(OFFICIAL_KINETICS_COLUMNS)}; "
            f"has {','.join(sorted(columns))}"
        )
    empty = [str(i) for i, row in enumerate(rows, 2) if not row["label"]]
    if empty:
        raise LayoutError(f"{path}: {dataset} rows without a label on line(s) {', '.join(empty[:20])}")
    items, unresolved = [], []
    for row in rows:
        found, wanted = _plain_path(root, row) if plain else _official_path(root, row, split)
        if found is None:
            unresolved.append(wanted)
        else:
            items.append(EvalItem(path=found, labels=(row["label"],)))
    kept = _split_missing(items, unresolved, missing, root, dataset, len(rows))
    classes = sorted({row["label"] for row in rows})
    return EvalDataset(dataset, root, "classification", kept, classes, split)


def _plain_path(root: Path, row: dict[str, str]) -> tuple[Path | None, str]:
    path = root / row["path"]
    return (path if path.is_file() else None), row["path"]


def _official_path(root: Path, row: dict[str, str], split: str) -> tuple[Path | None, str]:
    try:
        start, end = int(float(row["time_start"])), int(float(row["time_end"]))
    except ValueError as err:
        raise LayoutError(f"kinetics row {row}: time_start/time_end are not numbers") from err
    stem = f"{row['youtube_id']}_{start:06d}_{end:06d}"
    row_split = row.get("split") or split
    label = row["label"]
    folders = [root / row_split / label, root / row_split, root / label, root]
    for folder in folders:
        for ext in KINETICS_EXTENSIONS:
            if (folder / (stem + ext)).is_file():
                return folder / (stem + ext), stem
    return None, f"{stem}.mp4 (in {row_split}/{label}/, {row_split}/, {label}/ or ./)"


def msrvtt(root: str | Path, csv: str | Path | None = None, missing: Missing = "error") -> EvalDataset:
    """MSR-VTT 1k-A text-to-video retrieval (see the module docstring for the layout)."""
    _check_missing(missing)
    root = Path(root)
    dataset = "msrvtt"
    path = _resolve_csv(root, csv, [MSRVTT_CSV, f"msrvtt_data/{MSRVTT_CSV}", f"annotations/{MSRVTT_CSV}"], dataset)
    rows = read_csv_rows(path, ["video_id", "sentence"], dataset, delimiter=_csv_delimiter(path))
    if not rows:
        raise LayoutError(f"{path}: {dataset} CSV lists no videos")
    captions: dict[str, list[str]] = {}
    for lineno, row in enumerate(rows, 2):
        if not row["video_id"] or not row["sentence"]:
            raise LayoutError(f"{path}:{lineno}: empty video_id or sentence")
        captions.setdefault(row["video_id"], []).append(row["sentence"])
    items, unresolved = [], []
    for video_id, sentences in captions.items():
        candidates = [root / "videos" / f"{video_id}.mp4", root / "videos" / "all" / f"{video_id}.mp4"]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            unresolved.append(f"videos/{video_id}.mp4")
        else:
            items.append(EvalItem(path=found, captions=tuple(sentences)))
    kept = _split_missing(items, unresolved, missing, root, dataset, len(captions))
    return EvalDataset(dataset, root, "retrieval", kept, [], "test")


READERS: dict[str, Callable[..., EvalDataset]] = {"kinetics": kinetics, "msrvtt": msrvtt}
