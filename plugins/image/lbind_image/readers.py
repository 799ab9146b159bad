"""Readers of image classification layouts for zero-shot evaluation."""

from __future__ import annotations

from pathlib import Path

from lbcore.datasets import EvalDataset, folder_per_class
from lbcore.image import IMAGE_EXTENSIONS


def read_imagefolder(root: str | Path, split: str = "") -> EvalDataset:
    """torchvision's ImageFolder layout: ``root[/split]/<class>/**/<image>``; the folder names are the class
    names (underscores read as spaces)."""
    dataset = folder_per_class(root, IMAGE_EXTENSIONS, "ImageFolder", split=split)
    dataset.name = "imagefolder"
    return dataset
