"""The depth modality: millimetre depth -> clipped metres -> 3 channels, CLIP preprocessing, ViT encoder."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field

from lbcore.config import ImageConfig
from lbcore.errors import InputError
from lbcore.image import image_stem, resize_crop_normalize
from lbcore.modality import Modality

LANGUAGEBIND = {
    "encoder": {"width": 1024, "depth": 24, "heads": 16, "patch_size": 14},
    "mask_ratio": 0.5,
    "lora": {"rank": 2},
    "optim": {"lr": 5e-4, "warmup_steps": 200, "epochs": 1, "batch_size": 1024},
}
DEMO = {
    "image_size": 64,
    "encoder": {"width": 64, "depth": 2, "heads": 4, "patch_size": 8},
    "mask_ratio": 0.5,
    "optim": {"lr": 1e-3, "warmup_steps": 20, "epochs": 10, "batch_size": 32},
}


class DepthConfig(ImageConfig):
    """Depth input: millimetres in, metres clipped to [min_depth, max_depth] and divided by max_depth."""

    min_depth: float = Field(0.01, gt=0, description="Lower clip, metres.")
    max_depth: float = Field(10.0, gt=0, description="Upper clip, metres; depth is divided by it.")


class DepthModality(Modality):
    name = "depth"
    Config = DepthConfig
    presets: ClassVar = {"languagebind": LANGUAGEBIND, "demo": DEMO}
    templates = ("a depth photo of a {}.", "a depth photo of the {}.")
    description = "Depth maps (millimetre PNG by default)"

    def preprocess(self, item: Any, train: bool = False) -> torch.Tensor:
        arr = np.asarray(item)
        if arr.ndim != 2:
            raise InputError(None, f"depth array of shape {arr.shape}", "a single-channel H x W map in mm")
        metres = torch.from_numpy(arr.astype(np.float32)) / 1000.0
        cfg = self.config
        x = metres.clamp(cfg.min_depth, cfg.max_depth) / cfg.max_depth
        return resize_crop_normalize(x.expand(3, -1, -1), cfg, train=train)

    def example_input(self, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.integers(300, 9000, size=(72, 96), dtype=np.uint16)

    def build_stem(self):
        return image_stem(self.config)
