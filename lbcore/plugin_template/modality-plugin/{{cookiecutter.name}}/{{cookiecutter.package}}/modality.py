"""The {{ cookiecutter.name }} modality: {{ cookiecutter.description }}.

As rendered, this is a working 1-D multichannel signal modality: a [T, channels] signal (file or array) is
normalised per channel, cropped or padded to a fixed window, cut into non-overlapping patches by
:class:`lbcore.nn.PatchStem1d` and encoded by the core ViT trunk and CLIP head. It already passes the
contract battery (tests/test_contract.py) and trains on its own demo data (demo.py).

Places to fill in are marked ``TODO(plugin)``:

1. ``{{ cookiecutter.class_prefix }}Config``: your input settings (each field with a description).
2. ``preprocess``: file or array -> the encoder's input tensor (deterministic unless ``train``).
3. ``build_stem`` (or ``build_encoder``): PatchStem1d for signals; ``lbcore.image.image_stem`` for
   image-like input; your own stem with a ``grid_size`` attribute otherwise.
4. ``templates``: zero-shot prompts, each with ``{}`` where the class name goes.
5. ``LANGUAGEBIND`` / ``DEMO``: the full-size recipe and the tiny CPU preset.
6. ``example_input`` and ``make_demo_data`` (demo.py): small generated inputs and a procedural dataset.
7. ``extensions`` (the file suffixes ``preprocess`` reads) and, if your modality has published weights,
   ``releases`` (see :mod:`lbcore.release`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from lbcore.config import ModalityConfig
from lbcore.modality import Modality
from lbcore.nn import PatchStem1d
from pydantic import Field, model_validator

from {{ cookiecutter.package }}.signal import fit_window, load_signal, normalise

# TODO(plugin): the full-size recipe. LanguageBind's encoders are ViT-L/14 towers (width 1024, 24 blocks,
# 16 heads) trained with AdamW (betas 0.9/0.98, weight decay 0.2), warm-up then cosine, batch 1024. A new
# stem has no pretrained weights, so this preset trains the whole encoder (LoRA rank 0).
LANGUAGEBIND: dict[str, Any] = {
    "channels": 3,
    "window": 1024,
    "encoder": {"width": 1024, "depth": 24, "heads": 16, "patch_size": 16},
    "mask_ratio": 0.5,
    "lora": {"rank": 0},
    "optim": {"lr": 5e-4, "warmup_steps": 200, "epochs": 1, "batch_size": 1024},
}
# TODO(plugin): small enough to train from scratch on a laptop CPU in about a minute on the demo data:
# a 128-step window in patches of 8 -> 16 tokens of width 64.
DEMO: dict[str, Any] = {
    "channels": 3,
    "window": 128,
    "encoder": {"width": 64, "depth": 2, "heads": 4, "patch_size": 8},
    "mask_ratio": 0.0,
    "lora": {"rank": 0},
    "optim": {"lr": 2e-3, "weight_decay": 0.05, "warmup_steps": 10, "epochs": 20, "batch_size": 32},
}


class {{ cookiecutter.class_prefix }}Config(ModalityConfig):
    """Input settings of the {{ cookiecutter.name }} modality.

    TODO(plugin): add your own settings; every field needs a description (the contract battery checks it).
    """

    channels: int = Field(3, gt=0, description="Channels of the signal: columns of a [T, channels] input.")
    window: int = Field(
        1024,
        gt=0,
        description=(
            "Time steps fed to the encoder: a longer signal is cropped (centred at eval, at random when training), "
            "a shorter one is padded with zeros after normalisation."
        ),
    )
    mean: tuple[float, ...] | None = Field(
        None, description="Per-channel mean subtracted before the encoder (None: 0 for every channel)."
    )
    std: tuple[float, ...] | None = Field(
        None, description="Per-channel standard deviation the signal is divided by (None: 1 for every channel)."
    )
    scale_jitter: float = Field(
        0.1, ge=0, lt=1, description="Training only: the signal is multiplied by a random factor in [1 - s, 1 + s]."
    )

    @model_validator(mode="after")
    def _consistent(self) -> {{ cookiecutter.class_prefix }}Config:
        for field in ("mean", "std"):
            values = getattr(self, field)
            if values is not None and len(values) != self.channels:
                raise ValueError(f"{field} has {len(values)} entries but channels is {self.channels}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.window < self.encoder.patch_size:
            raise ValueError(f"window ({self.window}) is shorter than one patch ({self.encoder.patch_size})")
        return self


class {{ cookiecutter.class_prefix }}Modality(Modality):
    name = "{{ cookiecutter.name }}"
    Config = {{ cookiecutter.class_prefix }}Config
    presets: ClassVar = {"languagebind": LANGUAGEBIND, "demo": DEMO}
    # TODO(plugin): zero-shot prompt templates; a class name such as "sine wave" fills the braces.
    templates = (
        "a recording of {}.",
        "the {{ cookiecutter.name.replace('_', ' ') }} signal of {}.",
        "{}.",
    )
    description = "{{ cookiecutter.description }}"
    demo_version = "1"  # bump when demo.py's output changes: it keys the cached demo dataset
    # TODO(plugin): the lower-case file suffixes preprocess reads (tools such as `lbind embed` pick files by them).
    extensions = (".npy", ".csv")
    # A published checkpoint of this modality (config.json model_type, vision_config settings carried into
    # Config) is declared with lbcore.release.ReleaseLayout: releases = (ReleaseLayout("MyRelease", ...),).

    config: {{ cookiecutter.class_prefix }}Config

    def preprocess(self, item: Any, train: bool = False) -> torch.Tensor:
        """A .npy/.csv file or an array [T, channels] -> float32 [channels, window].

        TODO(plugin): your loading and preprocessing. Random augmentation only when ``train``, drawn from
        torch's global generator (the trainer seeds it per sample).
        """
        cfg = self.config
        signal = torch.from_numpy(load_signal(item, cfg.channels).T.copy())  # [T, C] -> [C, T]
        if train and cfg.scale_jitter > 0:
            signal = signal * (1.0 + cfg.scale_jitter * (2.0 * float(torch.rand(())) - 1.0))
        channels = cfg.channels
        signal = normalise(signal, cfg.mean or (0.0,) * channels, cfg.std or (1.0,) * channels)
        return fit_window(signal, cfg.window, train=train)  # [C, window]

    def example_input(self, seed: int = 0) -> np.ndarray:
        """A [1.5 * window, channels] float32 array: a sine per channel plus noise (longer than the window,
        so preprocessing crops). TODO(plugin): something shaped like your real inputs."""
        rng = np.random.default_rng(seed)
        cfg = self.config
        t = np.arange(cfg.window * 3 // 2)[:, None]  # [T, 1]
        freq = rng.uniform(0.005, 0.05, size=(1, cfg.channels))
        phase = rng.uniform(0, 2 * np.pi, size=(1, cfg.channels))
        wave = np.sin(2 * np.pi * freq * t + phase)  # [T, C]
        return (wave + 0.05 * rng.standard_normal(wave.shape)).astype(np.float32)

    def build_stem(self) -> PatchStem1d:
        """Non-overlapping windows of ``patch_size`` steps -> tokens [B, window // patch_size, width].

        TODO(plugin): ``lbcore.image.image_stem(cfg)`` for image-like input, or your own module that maps
        the batch to tokens [B, N, width] and has a ``grid_size`` (rows, columns) attribute.
        """
        cfg = self.config
        return PatchStem1d(cfg.channels, cfg.encoder.width, cfg.encoder.patch_size, cfg.window)

    def make_demo_data(self, root: Path, seed: int = 0) -> None:
        """The procedural demo dataset (see demo.py) as real files plus train/test manifests under ``root``."""
        from {{ cookiecutter.package }}.demo import write_demo_dataset

        write_demo_dataset(Path(root), channels=self.config.channels, seed=seed)
