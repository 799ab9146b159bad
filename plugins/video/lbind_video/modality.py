"""The video modality: frames spread over the whole clip, CLIP preprocessing per frame, space-time ViT encoder."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator
from torch import nn

from lbcore.config import EncoderConfig, ImageConfig
from lbcore.datasets import EvalDataset
from lbcore.image import ImageLikeModality, resize_crop_normalize
from lbcore.nn import SpaceTimeEncoder, temporal_lora_targets
from lbcore.release import ReleaseLayout
from lbcore.templates import imagenet_templates
from lbind_video.frames import VIDEO_EXTENSIONS, frames_to_float, is_path, read_video_frames, sample_array_frames

# Trained besides the LoRA adapters: class token, post-LayerNorm and projection (every modality), and the
# temporal embeddings and temporal LayerNorms (LanguageBind's video recipe trains the temporal parts; the
# temporal attention itself gets the adapters).
VIDEO_TRAINABLE_EXTRAS = ["trunk.class_embedding", "head.", "trunk.temporal_embedding", "trunk.temporal_norm"]

LANGUAGEBIND: dict[str, Any] = {
    "image_size": 224,
    "num_frames": 8,
    "decode": "exact",  # the frames the published weights saw
    "encoder": {"width": 1024, "depth": 24, "heads": 16, "patch_size": 14},
    "mask_ratio": 0.3,
    # lora.targets default to the temporal attention of every layer (VideoConfig fills them in from depth).
    "lora": {"rank": 16, "alpha": 16.0},
    "optim": {"lr": 1e-4, "warmup_steps": 2000, "epochs": 16, "batch_size": 640},
}
# Tiny enough for CPUs: 30 epochs of the 252-clip demo set (210 steps, about a minute on one core) reach
# 86-96 % held-out zero-shot top-1 with the MiniLM anchor (seeds 0-2).
DEMO: dict[str, Any] = {
    "image_size": 64,
    "num_frames": 4,
    "encoder": {"width": 64, "depth": 2, "heads": 4, "patch_size": 8},
    "mask_ratio": 0.3,
    "optim": {"lr": 2e-3, "weight_decay": 0.05, "warmup_steps": 20, "epochs": 30, "batch_size": 32},
}

_TEMPORAL_TARGET = re.compile(r"(?:^|\.)temporal_attn\.(\d+)\.")


class VideoConfig(ImageConfig):
    """Video input: frames sampled uniformly over the whole clip, each preprocessed like an image.

    The resize defaults follow LanguageBind's video pipeline (pytorchvideo's ``ShortSideScale``: bilinear,
    no antialiasing), which differs from its image pipeline (bicubic).
    """

    num_frames: int = Field(
        8, gt=0, description="Frames per clip, at floor(linspace(0, n - 1, num_frames)) over the whole clip."
    )
    interpolation: Literal["bicubic", "bilinear", "nearest"] = Field(
        "bilinear",
        description="Resampling filter of the short-side resize; 'bilinear' as LanguageBind's video loader.",
    )
    antialias: bool = Field(
        False, description="Antialias when downscaling frames; off as in LanguageBind (F.interpolate, no filter)."
    )
    decode_threads: int | None = Field(
        None,
        ge=0,
        description=(
            "Decoding threads per clip (null: lbind's thread policy, lbcore.threads.decoder_threads(): one "
            "per DataLoader worker; 0: the decoder's choice)."
        ),
    )
    decode: Literal["exact", "fast"] = Field(
        "exact",
        description=(
            "'exact': the sampled frames decoded at their stored size (skipping the frames no other frame "
            "needs; decord's frames bit for bit), then resized in torch: the frames LanguageBind's decord + torch "
            "pipeline gives (the default, and what converted LanguageBind checkpoints were trained on). "
            "'fast': the decoder also scales the frames to the short side while "
            "converting them to RGB (ffmpeg's scaler), so the large frames of HD clips never reach torch: "
            "several times faster on large clips; pixels differ from 'exact' by a few grey levels on average "
            "(benchmarks/RESULTS.md, preprocessing)."
        ),
    )

    @model_validator(mode="before")
    @classmethod
    def _temporal_lora_defaults(cls, data: Any) -> Any:
        """Without explicit LoRA targets / trainable extras, use the video recipe's for this depth."""
        if not isinstance(data, Mapping):
            return data
        lora = data.get("lora")
        if lora is not None and not isinstance(lora, Mapping):
            return data  # a LoraConfig instance: explicit
        encoder = data.get("encoder") or {}
        depth = encoder.depth if isinstance(encoder, EncoderConfig) else encoder.get("depth", EncoderConfig().depth)
        lora = dict(lora or {})
        lora.setdefault("targets", temporal_lora_targets(int(depth)))
        lora.setdefault("trainable_extras", list(VIDEO_TRAINABLE_EXTRAS))
        return {**data, "lora": lora}

    @model_validator(mode="after")
    def _targets_exist(self) -> VideoConfig:
        beyond = sorted(
            {int(m.group(1)) for t in self.lora.targets if (m := _TEMPORAL_TARGET.search(t))}
            - set(range(self.encoder.depth))
        )
        if beyond:
            raise ValueError(
                f"lora.targets name temporal_attn layer(s) {beyond} but encoder.depth is {self.encoder.depth}; "
                "drop lora.targets to get the temporal attention of every layer"
            )
        return self


class VideoModality(ImageLikeModality):
    name = "video"
    Config = VideoConfig
    presets: ClassVar = {"languagebind": LANGUAGEBIND, "demo": DEMO}
    templates = imagenet_templates("video")  # the 80 CLIP templates, "photo" -> "video"
    description = "Video clips (decord): frames spread over the clip, space-time ViT"
    extensions = VIDEO_EXTENSIONS
    # LanguageBind_Video and LanguageBind_Video_FT: the frame count the temporal tensors were trained on.
    releases = (ReleaseLayout("LanguageBindVideo", settings={"num_frames": "num_frames"}),)
    demo_version = "2"  # 2: sound tracks and paired video+audio manifests
    widget = "video"

    config: VideoConfig

    def preprocess(self, item: Any, train: bool = False) -> torch.Tensor:
        """A video file, or frames [T, H, W, C] / [T, H, W] (uint8, or float in [0, 1]) -> float32
        [3, num_frames, image_size, image_size].

        Frames at floor(linspace(0, n - 1, num_frames)); short side resized (by the decoder when
        ``config.decode`` is 'fast'), centre crop and CLIP normalisation. With ``train``, one random crop position and one coin-flip horizontal flip shared by
        all frames of the clip.
        """
        cfg = self.config
        if is_path(item):
            short_side = cfg.image_size if cfg.decode == "fast" else None
            frames = read_video_frames(item, cfg.num_frames, threads=cfg.decode_threads, short_side=short_side)
            source = item
        else:
            frames = sample_array_frames(item, cfg.num_frames)
            source = None
        x = frames_to_float(frames, source)  # [T, 3, H, W] in [0, 1]
        x = resize_crop_normalize(x, cfg, train=train)  # one crop/flip for the whole [T, 3, S, S] stack
        return x.transpose(0, 1).contiguous()  # [3, T, S, S]

    def example_input(self, seed: int = 0) -> np.ndarray:
        """A random clip of 10 frames of 48 x 64 RGB (uint8)."""
        rng = np.random.default_rng(seed)
        return rng.integers(0, 256, size=(10, 48, 64, 3), dtype=np.uint8)

    def build_encoder(self, embed_dim: int) -> nn.Module:
        cfg = self.config
        return SpaceTimeEncoder(self.build_stem(), cfg.encoder, embed_dim, cfg.num_frames, mask_ratio=cfg.mask_ratio)

    def dataset_readers(self) -> Mapping[str, Callable[..., EvalDataset]]:
        from lbind_video.datasets import READERS

        return dict(READERS)

    def make_demo_data(self, root: Path, seed: int = 0) -> None:
        from lbind_video.demo import make_demo_data

        make_demo_data(root, seed=seed)
