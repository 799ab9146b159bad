"""The infrared modality: any image as 3-channel RGB, CLIP preprocessing, ViT encoder."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from lbcore.config import ImageConfig, deep_merge
from lbcore.image import IMAGE_DEMO_PRESET, IMAGE_EXTENSIONS, ImageLikeModality
from lbcore.release import ReleaseLayout
from lbcore.templates import IMAGENET_TEMPLATES

LANGUAGEBIND = {
    "image_size": 224,
    "encoder": {"width": 1024, "depth": 24, "heads": 16, "patch_size": 14},
    "mask_ratio": 0.5,
    "lora": {"rank": 2, "alpha": 16.0, "targets": ["q_proj", "k_proj", "v_proj", "out_proj"]},
    "optim": {"lr": 1e-4, "warmup_steps": 200, "epochs": 1, "batch_size": 1024},
}
# Tiny and trained from scratch on the procedural demo set: full training (no LoRA: there are no pretrained
# weights to adapt) and no token masking, which only slows learning at 36 tokens; about 260 steps in all.
DEMO = deep_merge(IMAGE_DEMO_PRESET, {"optim": {"epochs": 30}})


class InfraredConfig(ImageConfig):
    """Infrared (thermal) input: any image (grey, RGB, RGBA, palette; 8- or 16-bit) made 3-channel RGB in
    [0, 1] (grey repeated, alpha dropped, 16-bit divided by 65535), then resized, cropped and normalised."""


class InfraredModality(ImageLikeModality):
    name = "infrared"
    Config = InfraredConfig
    presets: ClassVar = {"languagebind": LANGUAGEBIND, "demo": DEMO}
    templates = IMAGENET_TEMPLATES
    description = "Thermal (infrared) images, any channel count or bit depth"
    extensions = IMAGE_EXTENSIONS
    releases = (ReleaseLayout("LanguageBindThermal"),)  # LanguageBind_Thermal
    widget = "image"
    config: InfraredConfig

    def example_input(self, seed: int = 0) -> np.ndarray:
        """An 80 x 96 uint8 greyscale frame: a warm blob on a cool noisy background."""
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:80, 0:96]
        cy, cx = rng.uniform(20, 60), rng.uniform(20, 76)
        blob = 150 * np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * 12.0**2))
        return (60 + blob + rng.normal(0, 8, blob.shape)).clip(0, 255).astype(np.uint8)

    def dataset_readers(self) -> Mapping[str, Callable[..., Any]]:
        from lbind_infrared.readers import read_flir, read_llvip

        return {"llvip": read_llvip, "flir": read_flir}

    def make_demo_data(self, root: Path, seed: int = 0) -> None:
        from lbind_infrared.demo import make_demo_data

        make_demo_data(Path(root), seed=seed)
