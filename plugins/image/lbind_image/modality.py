"""The image modality: RGB pictures with CLIP preprocessing into a CLIP ViT (LanguageBind_Image's tower)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from lbcore.config import ImageConfig, deep_merge
from lbcore.image import IMAGE_DEMO_PRESET, IMAGE_EXTENSIONS, ImageLikeModality
from lbcore.release import ReleaseLayout
from lbcore.templates import IMAGENET_TEMPLATES

# LanguageBind_Image is OpenCLIP's ViT-L/14 (DataComp-XL) image tower, used as it is: LanguageBind never trained
# it, so there is no masking or LoRA recipe to follow. The optimiser entry is a placeholder for fine-tuning.
LANGUAGEBIND = {
    "image_size": 224,
    "encoder": {"width": 1024, "depth": 24, "heads": 16, "patch_size": 14},
    "mask_ratio": 0.0,
    "lora": {"rank": 0},
    "optim": {"lr": 1e-4},
}
# Tiny and trained from scratch on the procedural demo set, like the depth and infrared demos: 160 steps (about
# 12 s on one CPU core) reach 98-100 % held-out zero-shot top-1 with the MiniLM anchor (seeds 0 and 1).
DEMO = deep_merge(IMAGE_DEMO_PRESET, {})  # a copy: presets are per plugin


class RGBConfig(ImageConfig):
    """RGB input: any image (grey, RGB, RGBA, palette; 8- or 16-bit) as 3-channel RGB in [0, 1], short side
    resized (bicubic, antialiased), centre-cropped (random crop and flip when training), CLIP-normalised."""

    antialias: bool = Field(
        True,
        description=(
            "Low-pass filter before downscaling. True (default) matches the transform the weights were trained "
            "with: OpenCLIP resizes PIL images, and PIL's bicubic filter always antialiases. LanguageBind's own "
            "image processor resized tensors under torchvision 0.14, which did not antialias: set False to "
            "reproduce its inputs."
        ),
    )


class ImageModality(ImageLikeModality):
    name = "image"
    Config = RGBConfig
    presets: ClassVar = {"languagebind": LANGUAGEBIND, "demo": DEMO}
    templates = IMAGENET_TEMPLATES
    description = "RGB images (CLIP preprocessing; LanguageBind_Image is a plain CLIP vision tower)"
    extensions = IMAGE_EXTENSIONS
    releases = (ReleaseLayout("LanguageBindImage"),)  # LanguageBind_Image
    widget = "image"
    config: RGBConfig

    def example_input(self, seed: int = 0) -> np.ndarray:
        """A 72 x 88 uint8 RGB picture: a coloured disc on a tinted, noisy background."""
        rng = np.random.default_rng(seed)
        y, x = np.mgrid[0:72, 0:88]
        cy, cx, r = rng.uniform(20, 52), rng.uniform(20, 68), rng.uniform(8, 18)
        disc = ((y - cy) ** 2 + (x - cx) ** 2 < r**2)[..., None]  # [H, W, 1]
        background = rng.uniform(60, 200, 3) + rng.normal(0, 10, (72, 88, 3))
        return np.where(disc, rng.uniform(0, 255, 3), background).clip(0, 255).astype(np.uint8)

    def dataset_readers(self) -> Mapping[str, Callable[..., Any]]:
        from lbind_image.readers import read_imagefolder

        return {"imagefolder": read_imagefolder}

    def make_demo_data(self, root: Path, seed: int = 0) -> None:
        from lbind_image.demo import make_demo_data

        make_demo_data(Path(root), seed=seed)
