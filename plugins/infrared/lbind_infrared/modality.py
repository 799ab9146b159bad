"""The infrared modality: any image read as 3-channel, CLIP preprocessing, ViT encoder."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch

from lbcore.config import ImageConfig
from lbcore.errors import InputError
from lbcore.image import image_stem, resize_crop_normalize
from lbcore.modality import Modality

LANGUAGEBIND = {
    "encoder": {"width": 1024, "depth": 24, "heads": 16, "patch_size": 14},
    "mask_ratio": 0.5,
    "lora": {"rank": 2},
    "optim": {"lr": 1e-4, "warmup_steps": 200, "epochs": 1, "batch_size": 1024},
}
DEMO = {
    "image_size": 64,
    "encoder": {"width": 64, "depth": 2, "heads": 4, "patch_size": 8},
    "mask_ratio": 0.5,
    "optim": {"lr": 1e-3, "warmup_steps": 20, "epochs": 10, "batch_size": 32},
}


class InfraredConfig(ImageConfig):
    """Infrared input: an image of any channel count, made 3-channel."""


class InfraredModality(Modality):
    name = "infrared"
    Config = InfraredConfig
    presets: ClassVar = {"languagebind": LANGUAGEBIND, "demo": DEMO}
    templates = ("a photo of a {}.", "a thermal photo of a {}.")
    description = "Thermal (infrared) images"

    def preprocess(self, item: Any, train: bool = False) -> torch.Tensor:
        arr = np.asarray(item)
        if arr.ndim == 2:
            arr = arr[:, :, None]
        if arr.ndim != 3 or arr.shape[2] not in (1, 3, 4):
            raise InputError(None, f"array of shape {arr.shape}", "H x W, H x W x 1, 3 or 4")
        x = torch.from_numpy(np.ascontiguousarray(arr[:, :, :3])).permute(2, 0, 1).float() / 255.0
        if x.shape[0] == 1:
            x = x.expand(3, -1, -1)
        return resize_crop_normalize(x, self.config, train=train)

    def example_input(self, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, size=(80, 96), dtype=np.uint8)

    def build_stem(self):
        return image_stem(self.config)
