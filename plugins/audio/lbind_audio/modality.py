"""The audio modality: 16 kHz Kaldi fbank, three chunks as channels, ViT over the (mel x time) image."""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi
from pydantic import Field

from lbcore.config import ModalityConfig
from lbcore.errors import InputError
from lbcore.modality import Modality
from lbcore.nn import PatchStem2d

LANGUAGEBIND = {
    "encoder": {"width": 1024, "depth": 24, "heads": 16, "patch_size": 14},
    "mask_ratio": 0.1,
    "lora": {"rank": 16},
    "optim": {"lr": 1e-3, "warmup_steps": 2000, "epochs": 16, "batch_size": 1024},
}
DEMO = {
    "mel_bins": 32,
    "target_length": 256,
    "encoder": {"width": 64, "depth": 2, "heads": 4, "patch_size": 8},
    "mask_ratio": 0.1,
    "optim": {"lr": 1e-3, "warmup_steps": 20, "epochs": 10, "batch_size": 32},
}


class AudioConfig(ModalityConfig):
    """Audio input: Kaldi-compatible log-mel filterbank, three chunks stacked as channels."""

    sample_rate: int = Field(16000, gt=0, description="Audio is resampled to this rate (Hz).")
    mel_bins: int = Field(126, gt=0, description="Mel filterbank bins (126; 112 for Audio_FT).")
    target_length: int = Field(1036, gt=0, description="Frames per chunk (10 ms shift: 1036 ~ 10.4 s).")
    mean: float = Field(-4.2677393, description="Normalisation: (x - mean) / (2 * std).")
    std: float = Field(4.5689974, gt=0, description="Normalisation: (x - mean) / (2 * std).")


class AudioModality(Modality):
    name = "audio"
    Config = AudioConfig
    presets: ClassVar = {"languagebind": LANGUAGEBIND, "demo": DEMO}
    templates = ("a sound of {}.",)
    description = "Audio clips as log-mel spectrograms"

    def preprocess(self, item: Any, train: bool = False) -> torch.Tensor:
        cfg = self.config
        wave = torch.as_tensor(np.asarray(item), dtype=torch.float32)
        if wave.dim() == 2:  # [channels, samples] -> mono
            wave = wave.mean(0)
        if wave.dim() != 1 or wave.numel() < 400:
            raise InputError(None, f"waveform of shape {tuple(wave.shape)}", "a 1-D signal of >= 400 samples")
        wave = wave - wave.mean()
        fbank = kaldi.fbank(
            wave[None],
            htk_compat=True,
            sample_frequency=cfg.sample_rate,
            use_energy=False,
            window_type="hanning",
            num_mel_bins=cfg.mel_bins,
            dither=0.0,
            frame_shift=10,
            frame_length=25,
        )  # [frames, mel]
        n, target = fbank.shape[0], cfg.target_length
        if n <= target:
            reps = -(-target // n)
            chunk = fbank.repeat(reps, 1)[:target]
            chunks = [chunk, chunk, chunk]
        else:
            ranges = np.array_split(np.arange(n - target + 1), 3)
            if train:
                starts = [int(np.random.choice(r)) for r in ranges]
            else:
                starts = [int(ranges[0][0]), int(ranges[1][len(ranges[1]) // 2]), int(ranges[2][-1])]
            chunks = [fbank[s : s + target] for s in starts]
        x = torch.stack(chunks).transpose(1, 2)  # [3, frames, mel] -> [3, mel, frames]
        return (x - cfg.mean) / (2 * cfg.std)

    def example_input(self, seed: int = 0) -> np.ndarray:
        rng = np.random.default_rng(seed)
        t = np.arange(16000 * 2) / 16000
        return (0.3 * np.sin(2 * np.pi * rng.uniform(200, 2000) * t) + 0.01 * rng.standard_normal(t.size)).astype(
            np.float32
        )

    def build_stem(self):
        cfg = self.config
        return PatchStem2d(3, cfg.encoder.width, cfg.encoder.patch_size, (cfg.mel_bins, cfg.target_length))
