"""Readers of the infrared evaluation datasets (zero-shot classification on LLVIP and FLIR crops)."""

from __future__ import annotations

from pathlib import Path

from lbcore.datasets import EvalDataset, LayoutError, folder_per_class
from lbcore.image import IMAGE_EXTENSIONS

LLVIP_CLASSES = ("background", "person")


def read_llvip(root: str | Path, split: str = "") -> EvalDataset:
    """LLVIP crops, one folder per class: ``root[/split]/background/*.jpg`` and ``root[/split]/person/*.jpg``
    (a ``people`` folder is accepted for ``person``). Any other folder is a layout error: LLVIP has two classes."""
    base = Path(root) / split if split else Path(root)
    folders = {p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")} if base.is_dir() else set()
    missing = [c for c in ("background",) if c not in folders]
    if not folders & {"person", "people"}:
        missing.append("person")
    extra = sorted(folders - {"background", "person", "people"})
    if missing or extra or not base.is_dir():
        problems = []
        if not base.is_dir():
            problems.append("the folder does not exist")
        if missing:
            problems.append(f"missing class folder(s) {', '.join(missing)}")
        if extra:
            problems.append(f"unexpected folder(s) {', '.join(extra)}")
        raise LayoutError(
            f"{base}: LLVIP layout: {'; '.join(problems)} (expected exactly background/ and person/ with images)"
        )
    dataset = folder_per_class(root, IMAGE_EXTENSIONS, "LLVIP", split=split)
    dataset.name = "llvip"
    return dataset


def read_flir(root: str | Path, split: str = "") -> EvalDataset:
    """FLIR (v1 or v2: only the root differs) crops, one folder per class: ``root[/split]/<class>/*.jpg``."""
    dataset = folder_per_class(root, IMAGE_EXTENSIONS, "FLIR", split=split)
    dataset.name = "flir"
    return dataset
