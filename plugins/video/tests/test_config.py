"""Presets, LoRA target defaults and prompt templates of the video modality."""

from __future__ import annotations

import pytest
from lbind_video.modality import VideoModality

from lbcore.errors import ConfigError

PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


def test_languagebind_preset_is_the_published_recipe() -> None:
    cfg = VideoModality.config_preset("languagebind")
    enc = cfg.encoder
    assert (enc.width, enc.depth, enc.heads, enc.patch_size, enc.mlp_ratio) == (1024, 24, 16, 14, 4.0)
    assert (cfg.image_size, cfg.num_frames, cfg.mask_ratio) == (224, 8, 0.3)
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.lora.dropout) == (16, 16.0, 0.0)
    assert cfg.lora.targets == [f"trunk.temporal_attn.{i}.{p}" for i in range(24) for p in PROJECTIONS]
    assert {"trunk.temporal_embedding", "trunk.temporal_norm", "head."} <= set(cfg.lora.trainable_extras)
    o = cfg.optim
    assert (o.lr, o.warmup_steps, o.epochs, o.batch_size) == (1e-4, 2000, 16, 640)
    assert (cfg.interpolation, cfg.antialias) == ("bilinear", False)  # pytorchvideo ShortSideScale upstream
    assert cfg.mean == (0.48145466, 0.4578275, 0.40821073)


def test_demo_preset_is_tiny() -> None:
    cfg = VideoModality.config_preset("demo")
    assert cfg.num_frames <= 8 and cfg.image_size <= 64 and cfg.encoder.width <= 64 and cfg.encoder.depth <= 2
    assert cfg.image_size % cfg.encoder.patch_size == 0


def test_lora_targets_follow_the_depth_unless_given() -> None:
    cfg = VideoModality.config_preset("languagebind", encoder={"depth": 3})
    assert cfg.lora.targets == [f"trunk.temporal_attn.{i}.{p}" for i in range(3) for p in PROJECTIONS]
    explicit = VideoModality.config_preset("languagebind", lora={"targets": ["q_proj"]})
    assert explicit.lora.targets == ["q_proj"]
    assert VideoModality.Config().lora.targets == VideoModality.config_preset("languagebind").lora.targets


def test_lora_targets_beyond_the_depth_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"temporal_attn layer\(s\) \[2, 3\]"):
        VideoModality.config_preset(
            "demo", lora={"targets": ["trunk.temporal_attn.3.q_proj", "trunk.temporal_attn.2.q_proj"]}
        )


def test_templates_are_the_80_clip_templates_for_video() -> None:
    VIDEO_TEMPLATES = VideoModality.templates
    assert len(VIDEO_TEMPLATES) == 80 and len(set(VIDEO_TEMPLATES)) == 80
    assert all(t.count("{}") == 1 for t in VIDEO_TEMPLATES)
    assert not any("photo" in t for t in VIDEO_TEMPLATES)
    assert sum("video" in t for t in VIDEO_TEMPLATES) >= 40  # every former "photo" template
    assert VIDEO_TEMPLATES[0] == "a bad video of a {}." and VIDEO_TEMPLATES[-1] == "a tattoo of the {}."
    assert VideoModality().prompts("dog")[1] == "a video of many dog."
