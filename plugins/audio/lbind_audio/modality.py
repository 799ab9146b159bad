"""The audio modality: 16 kHz Kaldi fbank, three chunks as channels, ViT over the (mel x time) image.

``preprocess`` takes a path (WAV/FLAC/OGG/MP3 via soundfile), ``(waveform, sample_rate)``, a Hugging Face
style ``{"array": ..., "sampling_rate": ...}`` mapping, or a bare array/tensor taken to be at
``config.sample_rate``; see :mod:`lbind_audio.waveform` for the details and :mod:`lbind_audio.spectrogram`
for the features.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import Field, model_validator

from lbcore.config import ModalityConfig
from lbcore.errors import check_finite
from lbcore.modality import Modality
from lbcore.nn import PatchStem2d
from lbcore.release import ReleaseLayout, vision_count
from lbind_audio import readers
from lbind_audio.augment import AudioAugmentConfig, augment_waveform, mask_spectrogram
from lbind_audio.demo import write_demo_dataset
from lbind_audio.spectrogram import log_mel_chunks
from lbind_audio.waveform import AUDIO_EXTENSIONS, load_waveform

LANGUAGEBIND = {
    "encoder": {"width": 1024, "depth": 24, "heads": 16, "patch_size": 14},
    "mask_ratio": 0.1,
    "lora": {"rank": 16, "alpha": 16.0, "targets": ["q_proj", "k_proj", "v_proj", "out_proj"]},
    "optim": {"lr": 1e-3, "warmup_steps": 2000, "epochs": 16, "batch_size": 1024},
}
# LanguageBind_Audio_FT: the fully fine-tuned checkpoint reads 112 mel bins (593 positions) and has no LoRA.
LANGUAGEBIND_FT = {**LANGUAGEBIND, "mel_bins": 112, "lora": {"rank": 0}}
# Small enough to train from scratch on 2 CPU cores in about a minute on the demo dataset (1-3 s clips):
# 32 x 192 log-mel image (1.92 s), 8 x 8 patches -> 4 x 24 = 96 tokens.
DEMO = {
    "mel_bins": 32,
    "target_length": 192,
    "encoder": {"width": 64, "depth": 2, "heads": 4, "patch_size": 8},
    "mask_ratio": 0.1,
    "lora": {"rank": 0},
    "optim": {"lr": 1e-3, "warmup_steps": 20, "epochs": 20, "batch_size": 32},
    # Measured on a recording-disjoint split of real clips: benchmarks/audio_aug.py, benchmarks/RESULTS.md.
    # Milder than the SpecAugment paper's: 20 epochs of the synthetic demo set lose 11 points of top-1 with
    # 2 x 6 bins, 2 x 24 frames and +-6 dB (benchmarks/RESULTS.md).
    "augment": {
        "gain_db": 3.0,
        "time_shift": 0.1,
        "freq_masks": 1,
        "freq_mask_width": 4,
        "time_masks": 1,
        "time_mask_width": 12,
    },
}


class SpectrogramRelease(ReleaseLayout):
    """A LanguageBind audio release: its tower was resized to the (mel bins x frames) log-mel image, so the
    position embedding's grid follows ``num_mel_bins`` and ``target_length``, not ``image_size``."""

    def grid(self, vision_config: Mapping[str, Any], source: str = "<vision_config>") -> tuple[int, int]:
        patch = vision_count(vision_config, "patch_size", source)
        mel_bins = vision_count(vision_config, "num_mel_bins", source)
        frames = vision_count(vision_config, "target_length", source)
        return mel_bins // patch, frames // patch


# LanguageBind_Audio and LanguageBind_Audio_FT: vision_config fields -> AudioConfig fields.
LANGUAGEBIND_RELEASE = SpectrogramRelease(
    "LanguageBindAudio",
    settings={
        "num_mel_bins": "mel_bins",
        "target_length": "target_length",
        "audio_mean": "mean",
        "audio_std": "std",
        "audio_sample_rate": "sample_rate",
    },
    required=("num_mel_bins", "target_length"),  # they decide the patch grid
    carries_image_size=False,
)


class AudioConfig(ModalityConfig):
    """Audio input: Kaldi-compatible log-mel filterbank, three chunks stacked as channels."""

    sample_rate: int = Field(
        16000, gt=0, description="Audio is resampled to this rate (Hz); bare in-memory arrays are taken to be at it."
    )
    channels: Literal["mix", "first"] = Field(
        "mix",
        description=(
            "How multi-channel audio becomes mono: 'mix' averages the channels, 'first' keeps channel 0 "
            "(LanguageBind's loader). Identical for mono files."
        ),
    )
    mel_bins: int = Field(126, gt=0, description="Mel filterbank bins (126; 112 for LanguageBind_Audio_FT).")
    target_length: int = Field(
        1036, gt=0, description="Frames per chunk at a 10 ms shift (1036 frames ~ 10.4 s); shorter clips are tiled."
    )
    mean: float = Field(-4.2677393, description="Normalisation: (x - mean) / (2 * std).")
    std: float = Field(4.5689974, gt=0, description="Normalisation: (x - mean) / (2 * std).")
    augment: AudioAugmentConfig = Field(
        default_factory=AudioAugmentConfig,
        description=(
            "Training-time augmentation (gain, time shift, SpecAugment masks; see lbind_audio.augment). Off by "
            "default and in the languagebind preset (upstream has none); on in the demo preset."
        ),
    )

    @model_validator(mode="after")
    def _fits_one_patch(self) -> AudioConfig:
        patch = self.encoder.patch_size
        if self.mel_bins < patch or self.target_length < patch:
            raise ValueError(
                f"a {self.mel_bins} x {self.target_length} log-mel image is smaller than one {patch} x {patch} patch"
            )
        return self


class AudioModality(Modality):
    name = "audio"
    Config = AudioConfig
    presets: ClassVar = {"languagebind": LANGUAGEBIND, "languagebind_ft": LANGUAGEBIND_FT, "demo": DEMO}
    templates = ("a sound of {}.",)  # LanguageBind's, for sound events (ESC-50, AudioSet, VGGSound)
    # Spoken words and phrases (e.g. keyword spotting): `lbind eval --templates speech`.
    template_sets: ClassVar = {
        "speech": (
            "a person saying {}.",
            "someone saying the word {}.",
            "a recording of a voice saying {}.",
            "the spoken word {}.",
            "a person speaking: {}.",
        )
    }
    description = "Audio clips as log-mel spectrograms (Kaldi fbank, three chunks as channels)"
    extensions = AUDIO_EXTENSIONS
    releases = (LANGUAGEBIND_RELEASE,)
    demo_version = "1"
    widget = "audio"

    config: AudioConfig

    def preprocess(self, item: Any, train: bool = False) -> torch.Tensor:
        """Audio -> ``[3, mel_bins, target_length]`` float32; deterministic unless ``train`` (random chunk starts
        and ``config.augment``, drawn from torch's global generator)."""
        cfg = self.config
        source = str(item) if isinstance(item, (str, os.PathLike)) else None
        wave = load_waveform(item, cfg.sample_rate, cfg.channels)  # [samples] at cfg.sample_rate
        augment = train and cfg.augment.enabled
        if augment:
            wave = augment_waveform(wave, cfg.augment)
        features = log_mel_chunks(
            wave,
            cfg.sample_rate,
            cfg.mel_bins,
            cfg.target_length,
            cfg.mean,
            cfg.std,
            train=train,
            source=source,
        )
        # Finite samples can still overflow the filterbank's power (samples near 1e20 square to infinity).
        check_finite(features, source, "log-mel features (the samples overflow float32 power)")
        return mask_spectrogram(features, cfg.augment) if augment else features

    def example_input(self, seed: int = 0) -> np.ndarray:
        """Two seconds of a random tone plus a little noise, at ``config.sample_rate``."""
        rng = np.random.default_rng(seed)
        rate = self.config.sample_rate
        t = np.arange(rate * 2) / rate
        tone = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t)
        return (tone + 0.01 * rng.standard_normal(t.size)).astype(np.float32)

    def build_stem(self) -> PatchStem2d:
        """Patches of the (mel x time) image: grid (mel_bins // patch, target_length // patch)."""
        cfg = self.config
        return PatchStem2d(3, cfg.encoder.width, cfg.encoder.patch_size, (cfg.mel_bins, cfg.target_length))

    def dataset_readers(self) -> Mapping[str, Callable[..., Any]]:
        return {
            "esc50": readers.read_esc50,
            "vggsound": readers.read_vggsound,
            "audioset": readers.read_audioset,
            "clotho": readers.read_clotho,
            "audiocaps": readers.read_audiocaps,
        }

    def make_demo_data(self, root: Path, seed: int = 0) -> None:
        """Procedural sound concepts as 16 kHz mono 16-bit WAVs plus train/test manifests (see lbind_audio.demo)."""
        write_demo_dataset(Path(root), seed=seed)
