"""Fixtures for the video plugin's tests: clips whose frames say which index they are, written as mp4.

(Tests import nothing from here: pytest runs with --import-mode=importlib, so helpers come as fixtures.)"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from lbind_video.demo import write_mp4

LEVEL_STEP = 20  # brightness step between consecutive frames of an indexed clip


def indexed_frames(num: int, height: int = 64, width: int = 64, grey: bool = False) -> np.ndarray:
    """uint8 [num, H, W, 3]: frame i is flat at brightness 10 + 20 * i (survives lossy coding), with a
    small coloured corner so RGB order is visible (unless ``grey``)."""
    levels = 10 + LEVEL_STEP * np.arange(num, dtype=np.int64)
    if levels.max() > 245:
        raise ValueError("too many frames to code by brightness")
    frames = np.repeat(levels[:, None, None, None], 3, axis=3) * np.ones((1, height, width, 1), np.int64)
    if not grey:
        frames[:, : height // 4, : width // 4] = (250, 20, 20)
    return frames.astype(np.uint8)


def decoded_indices(frames: np.ndarray) -> list[int]:
    """Recover each decoded frame's index from its brightness (bottom-right quarter, away from the corner)."""
    h, w = frames.shape[1:3]
    level = frames[:, h // 2 :, w // 2 :].reshape(len(frames), -1).mean(axis=1)
    return [round(float(v - 10) / LEVEL_STEP) for v in level]


@pytest.fixture
def make_clip(tmp_path: Path) -> Callable[..., Path]:
    """Write an mp4 under tmp_path: ``make_clip(name, frames, pix_fmt="yuv420p")``."""

    def make(name: str, frames: np.ndarray, pix_fmt: str = "yuv420p") -> Path:
        return write_mp4(tmp_path / name, frames, pix_fmt=pix_fmt)

    return make


@pytest.fixture
def coded() -> SimpleNamespace:
    """``coded.frames(num, height, width, grey)`` and ``coded.indices(decoded_frames)``."""
    return SimpleNamespace(frames=indexed_frames, indices=decoded_indices)
