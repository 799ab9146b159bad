"""The IMU modality: six-channel inertial recordings (3-axis accelerometer + 3-axis gyroscope) of a wearable.

Rendered from lbind's modality-plugin template (``lbind new-modality imu``) and completed. A recording (.npy,
.csv or an array; see :mod:`lbind_imu.signal` for the layouts) is converted to SI units, resampled to
``sample_rate`` on a uniform grid (from its time column, or from ``input_rate``), normalised per channel and
cropped or padded to ``window`` steps: a [6, window] tensor. The stem is :class:`lbcore.nn.PatchStem1d` (non-
overlapping windows of ``patch_size`` steps through a bias-free Conv1d, a 1 x window/patch token grid) and the
encoder is lbind's default ViT trunk + CLIP head; nothing IMU-specific is needed past the stem.

Training-time augmentation (only when ``train``): a random crop, a random rotation of the sensor frame
(the same rotation for the accelerometer and the gyroscope: a watch worn at a slightly different angle), and
a random gain.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from lbcore.config import ModalityConfig
from lbcore.modality import Modality
from lbcore.nn import PatchStem1d
from pydantic import Field, model_validator

from lbind_imu.signal import CHANNELS, fit_window, load_recording, normalise, random_rotation, resample

G = 9.80665  # m/s^2 per g

# LanguageBind has no IMU encoder; this preset applies its recipe (a ViT-L trunk: width 1024, 24 blocks,
# 16 heads; AdamW lr 5e-4 with 200 warm-up steps, batch 1024; token masking 0.5 as for depth and infrared)
# to ImageBind's IMU tokenisation (10 s at 200 Hz = 2000 steps in patches of 8 -> 250 tokens). The Conv1d
# stem has no pretrained weights, so the whole encoder trains (LoRA rank 0) from scratch.
LANGUAGEBIND: dict[str, Any] = {
    "sample_rate": 200.0,
    "input_rate": 200.0,
    "window": 2000,
    "encoder": {"width": 1024, "depth": 24, "heads": 16, "patch_size": 8},
    "mask_ratio": 0.5,
    "lora": {"rank": 0},
    "optim": {"lr": 5e-4, "warmup_steps": 200, "epochs": 1, "batch_size": 1024},
}
# Small enough to train from scratch on a laptop CPU in about a minute on the demo data: 5.12 s at 25 Hz =
# 128 steps in patches of 8 -> 16 tokens of width 64.
DEMO: dict[str, Any] = {
    "sample_rate": 25.0,
    "input_rate": 50.0,
    "window": 128,
    "encoder": {"width": 64, "depth": 2, "heads": 4, "patch_size": 8},
    "mask_ratio": 0.0,
    "lora": {"rank": 0},
    "optim": {"lr": 2e-3, "weight_decay": 0.05, "warmup_steps": 10, "epochs": 20, "batch_size": 32},
}


class ImuConfig(ModalityConfig):
    """Input settings of the IMU modality: units, rates, window, normalisation and augmentation."""

    accel_unit: Literal["m/s^2", "g"] = Field(
        "m/s^2", description="Unit of the accelerometer columns of the inputs; g is converted to m/s^2 (x 9.80665)."
    )
    gyro_unit: Literal["rad/s", "deg/s"] = Field(
        "rad/s", description="Unit of the gyroscope columns of the inputs; deg/s is converted to rad/s."
    )
    sample_rate: float = Field(
        200.0, gt=0, description="Hz the encoder sees: every recording is resampled to it (anti-aliased when lower)."
    )
    input_rate: float = Field(
        200.0,
        gt=0,
        description=(
            "Hz of inputs without a time column ([T, 6] arrays and files); inputs with one use their timestamps, "
            "and an (array, rate) pair its own rate."
        ),
    )
    window: int = Field(
        2000,
        gt=0,
        description=(
            "Steps (at sample_rate) fed to the encoder: a longer recording is cropped (centred at eval, at random "
            "when training), a shorter one padded with zeros after normalisation."
        ),
    )
    mean: tuple[float, float, float, float, float, float] = Field(
        (0.0, 0.0, 0.0, 0.0, 0.0, 0.0),
        description="Per-channel mean (ax, ay, az in m/s^2, gx, gy, gz in rad/s) subtracted before the encoder.",
    )
    std: tuple[float, float, float, float, float, float] = Field(
        (G, G, G, 2.0, 2.0, 2.0),
        description=(
            "Per-channel divisor after the mean. Fixed, not per recording: how hard a wrist moves tells running "
            "from sitting still. One value per sensor keeps a rotated sensor frame on the same scale."
        ),
    )
    rotate_degrees: float = Field(
        15.0, ge=0, le=180, description="Training only: rotate the sensor frame about a random axis by up to this."
    )
    scale_jitter: float = Field(
        0.1, ge=0, lt=1, description="Training only: multiply the readings by a random factor in [1 - s, 1 + s]."
    )

    @model_validator(mode="after")
    def _consistent(self) -> ImuConfig:
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be positive, got {self.std}")
        if self.window < self.encoder.patch_size:
            raise ValueError(f"window ({self.window}) is shorter than one patch ({self.encoder.patch_size})")
        return self


class ImuModality(Modality):
    name = "imu"
    Config = ImuConfig
    presets: ClassVar = {"languagebind": LANGUAGEBIND, "demo": DEMO}
    templates = (
        "{}.",
        "a person {}.",
        "motion sensor data of {}.",
        "a smartwatch recording of someone {}.",
        "the accelerometer and gyroscope readings of {}.",
    )
    description = "Wearable inertial measurements: 3-axis accelerometer (m/s^2) + 3-axis gyroscope (rad/s)"
    demo_version = "1"  # bump when demo.py's output changes: it keys the cached demo dataset
    extensions = (".npy", ".csv")  # the recordings load_recording reads

    config: ImuConfig

    def preprocess(self, item: Any, train: bool = False) -> torch.Tensor:
        """A recording (path, [T, 6|7] array or (array, rate)) -> float32 [6, window]."""
        cfg = self.config
        rec = load_recording(item, cfg.input_rate)
        x = torch.from_numpy(resample(rec, cfg.sample_rate).T.copy())  # [T', 6] -> [6, T'] float64
        x[:3] *= G if cfg.accel_unit == "g" else 1.0
        x[3:] *= np.pi / 180.0 if cfg.gyro_unit == "deg/s" else 1.0
        if train:
            # One rotation for both sensors: [3, 3] @ [3, T'] each.
            rotation = random_rotation(cfg.rotate_degrees)
            x = torch.cat([rotation @ x[:3], rotation @ x[3:]])
            x = x * (1.0 + cfg.scale_jitter * (2.0 * float(torch.rand(())) - 1.0))
        x = normalise(x.float(), cfg.mean, cfg.std)
        return fit_window(x, cfg.window, train=train)

    def example_input(self, seed: int = 0) -> np.ndarray:
        """One of the demo activities (by ``seed``) as a float32 [T, 6] array at ``input_rate``, 1.25 windows
        long (so preprocessing crops)."""
        from lbind_imu.demo import CONCEPTS, synthesize

        cfg = self.config
        duration = 1.25 * cfg.window / cfg.sample_rate
        label = CONCEPTS[seed % len(CONCEPTS)].label
        _, readings = synthesize(label, np.random.default_rng(seed), cfg.input_rate, duration)
        return readings.astype(np.float32)

    def build_stem(self) -> PatchStem1d:
        """Non-overlapping windows of ``patch_size`` steps -> tokens [B, window // patch_size, width]."""
        cfg = self.config
        return PatchStem1d(len(CHANNELS), cfg.encoder.width, cfg.encoder.patch_size, cfg.window)

    def make_demo_data(self, root: Path, seed: int = 0) -> None:
        """Seven wrist-worn activities as .npy/.csv recordings plus train/test manifests (see lbind_imu.demo)."""
        from lbind_imu.demo import write_demo_dataset

        write_demo_dataset(Path(root), seed=seed)
