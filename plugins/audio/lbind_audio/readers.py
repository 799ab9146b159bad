"""Readers of the standard audio evaluation layouts -> :class:`lbcore.datasets.EvalDataset`.

Every reader checks the layout before reading anything and lists all that is missing in one
:class:`~lbcore.datasets.LayoutError`. Readers that list files in a CSV or JSON take ``missing``:
``"error"`` (default) refuses a layout whose listed audio files are not all present; ``"skip"`` evaluates
on the files present (logging how many were skipped). Relative paths are taken from ``root``.

- ``esc50``: ``meta/esc50.csv`` (filename, fold, target, category) + ``audio/<filename>``; classification.
- ``vggsound``: ``<class name>/<clip>`` folders (optionally under a split folder); classification.
- ``audioset``: a JSON list of ``{"wav": path, "labels": "/m/09x0r,/m/05zppz"}`` (or ``{"data": [...]}``)
  plus ``class_labels_indices.csv`` (index, mid, display_name); multi-label.
- ``clotho``: ``clotho_captions_evaluation.csv`` (file_name, caption_1..caption_5) + an audio folder; retrieval.
- ``audiocaps``: a CSV (audiocap_id, youtube_id, start_time, caption; rows naming the same clip merge)
  + an audio folder whose files are named ``<youtube_id>.wav`` (``file_pattern`` changes that); retrieval.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal

from lbcore.datasets import EvalDataset, EvalItem, LayoutError, folder_per_class, read_csv_rows, require
from lbind_audio.waveform import AUDIO_EXTENSIONS

log = logging.getLogger(__name__)

Missing = Literal["error", "skip"]


def _check_missing(missing: str) -> None:
    if missing not in ("error", "skip"):
        raise ValueError(f"missing={missing!r}: expected 'error' or 'skip'")


def _present_items(
    root: Path, items: list[EvalItem], listed: Sequence[str], dataset: str, missing: Missing
) -> list[EvalItem]:
    """Apply the ``missing`` policy to items whose listed file names (relative to root) are ``listed``."""
    if missing == "error":
        require(root, listed, dataset, hint="pass missing='skip' to evaluate on the files present")
        return items
    kept = [item for item in items if item.path.is_file()]
    if len(kept) < len(items):
        skipped = len(items) - len(kept)
        log.warning("%s: %s: skipping %d of %d listed audio files that are missing", root, dataset, skipped, len(items))
    if not kept:
        raise LayoutError(f"{root}: {dataset}: none of the {len(items)} listed audio files is present")
    return kept


def _int_field(row: dict[str, str], key: str, where: str) -> int:
    try:
        return int(row[key])
    except ValueError as err:
        raise LayoutError(f"{where}: column {key!r} holds {row[key]!r}, expected an integer") from err


def read_esc50(
    root: str | Path,
    fold: int | Iterable[int] | None = None,
    csv: str | Path = "meta/esc50.csv",
    audio_dir: str | Path = "audio",
    missing: Missing = "error",
) -> EvalDataset:
    """ESC-50: zero-shot classification over the categories (``_`` -> space), ordered by ``target``.

    ``fold`` selects the test fold(s) (default: all five). The class list comes from every row of ``csv``,
    so a fold or a partial download still ranks against all its classes. ``csv`` may point at a subset
    (e.g. ``meta/esc50_available.csv``), which then defines the classes too.
    """
    _check_missing(missing)
    root = Path(root)
    require(root, [csv, audio_dir], "ESC-50", hint="expected meta/esc50.csv and audio/ as in the official release")
    csv_path = root / csv
    rows = read_csv_rows(csv_path, ["filename", "fold", "target", "category"], "ESC-50")
    if not rows:
        raise LayoutError(f"{csv_path}: ESC-50 CSV has no rows")
    names: dict[int, str] = {}
    for line, row in enumerate(rows, 2):
        where = f"{csv_path}:{line}"
        row["fold"] = str(_int_field(row, "fold", where))
        target = _int_field(row, "target", where)
        category = row["category"].replace("_", " ")
        if names.setdefault(target, category) != category:
            raise LayoutError(f"{where}: target {target} is {category!r} here but {names[target]!r} above")
    folds_present = sorted({int(r["fold"]) for r in rows})
    if fold is None:
        wanted = set(folds_present)
        split = "test"
    else:
        wanted = {int(fold)} if isinstance(fold, int) else {int(f) for f in fold}
        unknown = sorted(wanted - set(folds_present))
        if unknown or not wanted:
            raise LayoutError(f"{csv_path}: ESC-50 has no fold {unknown or '(none asked)'}; folds: {folds_present}")
        split = "fold" + ",".join(str(f) for f in sorted(wanted))
    chosen = [r for r in rows if int(r["fold"]) in wanted]
    listed = [str(Path(audio_dir) / r["filename"]) for r in chosen]
    items = [
        EvalItem(root / rel, labels=(r["category"].replace("_", " "),)) for rel, r in zip(listed, chosen, strict=True)
    ]
    items = _present_items(root, items, listed, "ESC-50", missing)
    classes = [names[t] for t in sorted(names)]
    return EvalDataset("esc50", root, "classification", items, classes, split)


def read_vggsound(root: str | Path, split: str = "") -> EvalDataset:
    """VGGSound (or any audio set) stored as ``root[/split]/<class name>/<clip>``; ``_`` in names -> space."""
    dataset = folder_per_class(root, AUDIO_EXTENSIONS, "VGGSound", split)
    dataset.name = "vggsound"
    return dataset


def read_audioset(
    root: str | Path,
    annotations: str | Path = "audioset_eval.json",
    labels: str | Path = "class_labels_indices.csv",
    audio_dir: str | Path | None = None,
    missing: Missing = "error",
) -> EvalDataset:
    """AudioSet in the AST / LanguageBind style: multi-label, classes are the display names by index.

    ``annotations`` is a JSON list of ``{"wav": path, "labels": "mid,mid"}`` (a ``{"data": [...]}``
    wrapper is accepted). Annotation files written on another machine carry its absolute paths: set
    ``audio_dir`` to look every file up by its base name in that folder instead.
    """
    _check_missing(missing)
    root = Path(root)
    required = [annotations, labels] + ([audio_dir] if audio_dir is not None else [])
    require(root, required, "AudioSet", hint="expected the annotation JSON and class_labels_indices.csv")
    label_path = root / labels
    label_rows = read_csv_rows(label_path, ["index", "mid", "display_name"], "AudioSet")
    by_mid: dict[str, tuple[int, str]] = {}
    for line, row in enumerate(label_rows, 2):
        by_mid[row["mid"]] = (_int_field(row, "index", f"{label_path}:{line}"), row["display_name"])
    if not by_mid:
        raise LayoutError(f"{label_path}: AudioSet label CSV has no rows")
    entries = _read_json_entries(root / annotations)
    listed: list[str] = []
    items: list[EvalItem] = []
    unknown: set[str] = set()
    for entry in entries:
        mids = [m.strip() for m in entry["labels"].split(",") if m.strip()]
        unknown.update(m for m in mids if m not in by_mid)
        wav = Path(entry["wav"])
        rel = str(Path(audio_dir) / wav.name) if audio_dir is not None else str(wav)
        listed.append(rel)
        items.append(EvalItem(root / rel, labels=tuple(by_mid[m][1] for m in mids if m in by_mid)))
    if unknown:
        shown = ", ".join(sorted(unknown)[:20])
        raise LayoutError(f"{root / annotations}: {len(unknown)} label id(s) not in {label_path.name}: {shown}")
    items = _present_items(root, items, listed, "AudioSet", missing)
    classes = [name for _, name in sorted(by_mid.values())]
    return EvalDataset("audioset", root, "multilabel", items, classes)


def _read_json_entries(path: Path) -> list[dict[str, str]]:
    try:
        data: Any = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LayoutError(f"{path}: cannot read the AudioSet annotation JSON: {err}") from err
    if isinstance(data, dict) and "data" in data:
        data = data["data"]
    if not isinstance(data, list) or not data:
        raise LayoutError(f"{path}: expected a non-empty JSON list of {{'wav': ..., 'labels': ...}} objects")
    bad = [
        str(i)
        for i, e in enumerate(data)
        if not (isinstance(e, dict) and isinstance(e.get("wav"), str) and isinstance(e.get("labels"), str))
        or not e["labels"].strip()
    ]
    if bad:
        shown = ", ".join(bad[:20]) + (f" and {len(bad) - 20} more" if len(bad) > 20 else "")
        raise LayoutError(f"{path}: entries without a 'wav' path and a non-empty 'labels' string: {shown}")
    return data


def read_clotho(
    root: str | Path,
    captions: str | Path = "clotho_captions_evaluation.csv",
    audio_dir: str | Path = "evaluation",
    missing: Missing = "error",
) -> EvalDataset:
    """Clotho: text-to-audio retrieval, each clip with its ``caption_1`` .. ``caption_N`` (5 in Clotho)."""
    _check_missing(missing)
    root = Path(root)
    require(root, [captions, audio_dir], "Clotho", hint="expected the captions CSV and the audio folder")
    csv_path = root / captions
    rows = read_csv_rows(csv_path, ["file_name", "caption_1"], "Clotho")
    columns = sorted((k for k in rows[0] if re.fullmatch(r"caption_\d+", k)), key=lambda k: int(k[8:])) if rows else []
    merged: dict[str, list[str]] = {}
    for line, row in enumerate(rows, 2):
        texts = [row[c] for c in columns if row.get(c)]
        if not row["file_name"] or not texts:
            raise LayoutError(f"{csv_path}:{line}: Clotho row without a file name or any caption")
        merged.setdefault(row["file_name"], []).extend(texts)
    return _retrieval("clotho", root, audio_dir, merged, missing, csv_path)


def read_audiocaps(
    root: str | Path,
    captions: str | Path = "test.csv",
    audio_dir: str | Path = "audio",
    file_pattern: str = "{youtube_id}.wav",
    missing: Missing = "error",
) -> EvalDataset:
    """AudioCaps: text-to-audio retrieval. Rows that name the same audio file merge into one item.

    ``file_pattern`` maps a CSV row to its file name in ``audio_dir`` with :meth:`str.format` over the
    columns (``audiocap_id``, ``youtube_id``, ``start_time``); the default ``{youtube_id}.wav`` merges
    the five test captions of a clip.
    """
    _check_missing(missing)
    root = Path(root)
    require(root, [captions, audio_dir], "AudioCaps", hint="expected the captions CSV and the audio folder")
    csv_path = root / captions
    rows = read_csv_rows(csv_path, ["audiocap_id", "youtube_id", "start_time", "caption"], "AudioCaps")
    merged: dict[str, list[str]] = {}
    for line, row in enumerate(rows, 2):
        try:
            name = file_pattern.format(**row)
        except (KeyError, IndexError) as err:
            raise ValueError(f"file_pattern {file_pattern!r} uses {err}; the columns are {sorted(row)}") from err
        if not row["youtube_id"] or not row["caption"]:
            raise LayoutError(f"{csv_path}:{line}: AudioCaps row without a youtube_id or caption")
        merged.setdefault(name, []).append(row["caption"])
    return _retrieval("audiocaps", root, audio_dir, merged, missing, csv_path)


def _retrieval(
    name: str, root: Path, audio_dir: str | Path, merged: dict[str, list[str]], missing: Missing, csv_path: Path
) -> EvalDataset:
    if not merged:
        raise LayoutError(f"{csv_path}: {name} CSV has no rows")
    listed = [str(Path(audio_dir) / f) for f in merged]
    items = [EvalItem(root / rel, captions=tuple(caps)) for rel, caps in zip(listed, merged.values(), strict=True)]
    items = _present_items(root, items, listed, name, missing)
    return EvalDataset(name, root, "retrieval", items)
