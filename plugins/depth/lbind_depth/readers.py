"""Readers of the depth evaluation datasets (zero-shot scene classification on NYU-D)."""

from __future__ import annotations

import json
import logging
from pathlib import Path, PurePosixPath

from lbcore.datasets import EvalDataset, EvalItem, LayoutError, folder_per_class, require

log = logging.getLogger(__name__)

# The 10 scene classes of the NYU-D zero-shot benchmark (ImageBind's and LanguageBind's), "others" included.
NYUD_CLASSES = (
    "bathroom",
    "bedroom",
    "bookstore",
    "classroom",
    "dining room",
    "home office",
    "kitchen",
    "living room",
    "office",
    "others",
)
DEPTH_EXTENSIONS = (".png", ".pgm", ".npy")


def read_nyud(root: str | Path, split: str = "") -> EvalDataset:
    """NYU-D as one folder per scene class: ``root[/split]/<class>/*.png`` (``living_room`` or ``living room``).

    Every one of the 10 benchmark classes must be there; the depth files are read with the modality's
    ``encoding`` (``mm_png`` for the LanguageBind/ImageBind copy)."""
    dataset = folder_per_class(root, DEPTH_EXTENSIONS, "NYU-D", split=split)
    missing = [c.replace(" ", "_") for c in NYUD_CLASSES if c not in dataset.classes]
    if missing:
        raise LayoutError(
            f"{Path(root) / split if split else root}: NYU-D lacks class folder(s) {', '.join(missing)}; "
            f"expected one folder per class: {', '.join(c.replace(' ', '_') for c in NYUD_CLASSES)}"
        )
    extra = sorted(set(dataset.classes) - set(NYUD_CLASSES))
    if extra:
        log.info("%s: NYU-D has extra class folder(s) beyond the benchmark's 10: %s", root, ", ".join(extra))
    dataset.name = "nyud"
    return dataset


def read_nyud_json(root: str | Path, split: str = "val", annotations: str | Path | None = None) -> EvalDataset:
    """NYU-D through the scene-label JSON lists ``NYU-Depth-v2_{train,val}.json`` over a SUN RGB-D tree.

    Each row has ``image_path``, ``depth_path`` (relative to ``root``, e.g.
    ``kv1/NYUdata/NYU0001/depth_bfx/NYU0001.png``) and ``benchmark_label`` (one of the 10 classes). Some rows
    point ``depth_path`` at a ``*_disparity.pt`` pickle, which is never loaded: the PNG beside it, named
    after the image, is used instead. These are SUN RGB-D PNGs: evaluate with encoding ``sunrgbd``.
    ``annotations`` overrides the JSON file (default ``root/NYU-Depth-v2_<split>.json``)."""
    root = Path(root)
    ann = Path(annotations) if annotations is not None else root / f"NYU-Depth-v2_{split}.json"
    require(root, [], "NYU-D (JSON layout)")
    if not ann.is_file():
        raise LayoutError(f"{ann}: NYU-D scene-label JSON not found (expected NYU-Depth-v2_{split}.json in {root})")
    try:
        rows = json.loads(ann.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise LayoutError(f"{ann}: cannot read the NYU-D scene-label JSON: {err}") from err
    if not isinstance(rows, list) or not rows:
        raise LayoutError(f"{ann}: expected a non-empty JSON list of objects")
    items, bad = [], []
    for i, row in enumerate(rows):
        if not isinstance(row, dict) or not all(k in row for k in ("image_path", "depth_path", "benchmark_label")):
            bad.append(str(i))
            continue
        items.append(EvalItem(path=root / depth_png_path(row), labels=(str(row["benchmark_label"]).replace("_", " "),)))
    if bad:
        shown = ", ".join(bad[:10]) + (f" and {len(bad) - 10} more" if len(bad) > 10 else "")
        raise LayoutError(f"{ann}: row(s) {shown} lack image_path, depth_path or benchmark_label")
    require(root, [item.path.relative_to(root) for item in items], "NYU-D (JSON layout)")
    classes = sorted({item.labels[0] for item in items})
    return EvalDataset("nyud", root, "classification", items, classes, split)


def depth_png_path(row: dict) -> str:
    """The depth PNG of one JSON row, relative to the root: ``depth_path``, or the PNG beside a ``.pt`` one."""
    depth = PurePosixPath(str(row["depth_path"]))
    if depth.suffix.lower() == ".png":
        return str(depth)
    return str(depth.with_name(PurePosixPath(str(row["image_path"])).stem + ".png"))
