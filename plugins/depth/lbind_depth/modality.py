"""The depth modality: decoded metres, clipped and scaled to [0, 1], as 3 channels; CLIP preprocessing; ViT."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import Field, model_validator

from lbcore.config import ImageConfig, deep_merge
from lbcore.errors import check_finite
from lbcore.image import IMAGE_DEMO_PRESET, ImageLikeModality, is_path, normalize, resize_crop
from lbcore.release import ReleaseLayout
from lbcore.templates import imagenet_templates
from lbind_depth.encoding import DepthEncoding, decode_depth, read_depth_file
from lbind_depth.readers import DEPTH_EXTENSIONS

LANGUAGEBIND = {
    "image_size": 224,
    "encoding": "mm_png",
    "max_depth": 10.0,
    "encoder": {"width": 1024, "depth": 24, "heads": 16, "patch_size": 14},
    "mask_ratio": 0.5,
    "lora": {"rank": 2, "alpha": 16.0, "targets": ["q_proj", "k_proj", "v_proj", "out_proj"]},
    "optim": {"lr": 5e-4, "warmup_steps": 200, "epochs": 1, "batch_size": 1024},
}
# Tiny and trained from scratch on the procedural demo set: full training (no LoRA: there are no pretrained
# weights to adapt) and no token masking, which only slows learning at 36 tokens; about 170 steps in all.
DEMO = deep_merge(IMAGE_DEMO_PRESET, {})  # a copy: presets are per plugin


class DepthConfig(ImageConfig):
    """Depth input: decoded to metres, clipped to [min_depth, max_depth], divided by max_depth, repeated to
    ``in_chans`` channels, then resized, cropped and normalised like an image.

    Pixels without a reading (0 in the integer encodings) decode to 0 m and so become ``min_depth`` after
    the clip, as in LanguageBind: the encoder sees holes as the nearest possible surface, which is what the
    published weights were trained on."""

    encoding: DepthEncoding = Field(
        "mm_png",
        description=(
            "How the input stores depth: 'mm_png' uint16 millimetres (LanguageBind, NYU-D); 'sunrgbd' SUN "
            "RGB-D bit-rotated uint16 mm; 'tum' uint16 metres x 5000; 'metres_npy' float metres in a .npy; "
            "'nyu_disparity' raw NYU Kinect disparity (little-endian .pgm), metres = 351.3 / (1092.5 - raw)."
        ),
    )
    min_depth: float = Field(0.01, gt=0, description="Lower clip in metres; pixels without a reading end here.")
    max_depth: float = Field(10.0, gt=0, description="Upper clip in metres; clipped depth is divided by it.")

    @model_validator(mode="after")
    def _clip_range(self) -> DepthConfig:
        if self.min_depth >= self.max_depth:
            raise ValueError(f"min_depth ({self.min_depth}) must be below max_depth ({self.max_depth})")
        return self


class DepthModality(ImageLikeModality):
    name = "depth"
    Config = DepthConfig
    presets: ClassVar = {"languagebind": LANGUAGEBIND, "demo": DEMO}
    templates = imagenet_templates("depth photo")
    description = "Depth maps (16-bit millimetre PNG by default; see the 'encoding' field)"
    extensions = DEPTH_EXTENSIONS
    # LanguageBind_Depth: the depth its maps were clipped to and scaled by.
    releases = (ReleaseLayout("LanguageBindDepth", settings={"max_depth": "max_depth"}),)
    widget = "image"
    preprocessed_channels = None  # depth is repeated to in_chans channels
    config: DepthConfig

    def preprocess(self, item: Any, train: bool = False) -> torch.Tensor:
        """A depth file or array (stored values, per ``config.encoding``) -> [in_chans, S, S]."""
        cfg = self.config
        if is_path(item):
            metres = decode_depth(read_depth_file(item, cfg.encoding), cfg.encoding, source=item)
        else:
            raw = item.detach().cpu().numpy() if isinstance(item, torch.Tensor) else np.asarray(item)
            metres = decode_depth(raw, cfg.encoding)
        check_finite(metres, item if is_path(item) else None, "depth values")
        x = torch.from_numpy(metres).clamp(cfg.min_depth, cfg.max_depth) / cfg.max_depth  # [H, W] in (0, 1]
        # Resizing one channel and repeating it equals resizing the repeated channels, at a third of the cost.
        x = resize_crop(x[None], cfg, train=train)  # [1, S, S]
        return normalize(x.expand(cfg.in_chans, -1, -1), cfg)

    def example_input(self, seed: int = 0) -> np.ndarray:
        """A 72 x 96 uint16 millimetre map: a tilted plane with noise (what mm_png decoding expects)."""
        rng = np.random.default_rng(seed)
        rows = np.linspace(0.0, 1.0, 72)[:, None]
        plane = 1500 + 4000 * rows * rng.uniform(0.5, 1.5) + np.zeros((1, 96))
        return (plane + rng.normal(0, 30, plane.shape)).clip(1, 65535).astype(np.uint16)

    def dataset_readers(self) -> Mapping[str, Callable[..., Any]]:
        from lbind_depth.readers import read_nyud, read_nyud_json

        return {"nyud": read_nyud, "nyud_json": read_nyud_json}

    def make_demo_data(self, root: Path, seed: int = 0) -> None:
        from lbind_depth.demo import make_demo_data

        make_demo_data(Path(root), seed=seed)
