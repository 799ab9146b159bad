"""The video modality: uniformly spread frames, CLIP preprocessing per frame, space-time ViT encoder."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field
from torch import nn

from lbcore.config import ImageConfig
from lbcore.errors import InputError
from lbcore.image import image_stem, resize_crop_normalize
from lbcore.modality import Modality
from lbcore.nn import ViTEncoder

LANGUAGEBIND = {
    "encoder": {"width": 1024, "depth": 24, "heads": 16, "patch_size": 14},
    "mask_ratio": 0.3,
    "lora": {"rank": 16},
    "optim": {"lr": 1e-4, "warmup_steps": 2000, "epochs": 16, "batch_size": 640},
}
DEMO = {
    "image_size": 64,
    "num_frames": 4,
    "encoder": {"width": 64, "depth": 2, "heads": 4, "patch_size": 8},
    "mask_ratio": 0.3,
    "optim": {"lr": 1e-3, "warmup_steps": 20, "epochs": 10, "batch_size": 32},
}


class VideoConfig(ImageConfig):
    """Video input: frames sampled uniformly over the whole clip, each preprocessed like an image."""

    num_frames: int = Field(8, gt=0, description="Frames sampled at linspace(0, n - 1, num_frames).")


class FrameMeanEncoder(nn.Module):
    """Per-frame ViT, frame embeddings averaged. [B, 3, T, H, W] -> [B, E]."""

    def __init__(self, image_encoder: ViTEncoder) -> None:
        super().__init__()
        self.image = image_encoder

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)  # [B*T, 3, H, W]
        return self.image(frames).view(b, t, -1).mean(1)


class VideoModality(Modality):
    name = "video"
    Config = VideoConfig
    presets: ClassVar = {"languagebind": LANGUAGEBIND, "demo": DEMO}
    templates = ("a video of a {}.", "a video of the {}.")
    description = "Video clips"

    def preprocess(self, item: Any, train: bool = False) -> torch.Tensor:
        arr = np.asarray(item)
        if arr.ndim != 4 or arr.shape[-1] != 3:
            raise InputError(None, f"video array of shape {arr.shape}", "T x H x W x 3 uint8 frames")
        idx = np.linspace(0, arr.shape[0] - 1, self.config.num_frames).round().astype(int)
        frames = torch.from_numpy(arr[idx]).permute(0, 3, 1, 2).float() / 255.0  # [T, 3, H, W]
        x = resize_crop_normalize(frames, self.config, train=train)
        return x.transpose(0, 1)  # [3, T, H, W]

    def example_input(self, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, size=(10, 48, 64, 3), dtype=np.uint8)

    def build_stem(self):
        return image_stem(self.config)

    def build_encoder(self, embed_dim: int) -> nn.Module:
        return FrameMeanEncoder(super().build_encoder(embed_dim))
