"""Fixtures for the audio plugin's tests: synthetic signals and modality instances.

(Tests import nothing from here: pytest runs with --import-mode=importlib, so helpers come as fixtures.)"""

from __future__ import annotations

import wave
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from lbind_audio.modality import AudioModality


def _signal(seconds: float, rate: int = 16000, seed: int = 0, channels: int = 0) -> np.ndarray:
    """Float32 test audio: a tone sweeping 200 Hz -> 3 kHz over the clip (so every chunk differs), a
    500 Hz tone and broadband noise, peak about 0.8. ``channels`` > 0 gives [channels, samples] with an
    independent noise draw per channel."""
    rng = np.random.default_rng(seed)
    n = round(seconds * rate)
    t = np.arange(n) / rate
    freq = 200 + 2800 * t / max(seconds, 1e-9)
    sweep = 0.4 * np.sin(2 * np.pi * np.cumsum(freq) / rate)
    base = sweep + 0.2 * np.sin(2 * np.pi * 500 * t)
    shape = (max(channels, 1), n)
    x = base + 0.1 * rng.standard_normal(shape)
    x = (0.8 * x / np.abs(x).max()).astype(np.float32)
    return x if channels else x[0]


@pytest.fixture
def signal() -> Callable[..., np.ndarray]:
    """``signal(seconds, rate=16000, seed=0, channels=0)`` -> float32 [samples] (or [channels, samples])."""
    return _signal


@pytest.fixture(scope="module")
def languagebind() -> AudioModality:
    """The full LanguageBind input recipe (126 bins x 1036 frames); the encoder is not built."""
    return AudioModality(AudioModality.config_preset("languagebind"))


@pytest.fixture(scope="module")
def demo() -> AudioModality:
    """The demo preset's input recipe (32 bins x 192 frames) without its training augmentation, so that a training
    input differs from the evaluation one only by its random chunks (augmentation: test_audio_augment.py)."""
    off = {"gain_db": 0.0, "time_shift": 0.0, "freq_mask_width": 0, "time_mask_width": 0}
    return AudioModality(AudioModality.config_preset("demo", augment=off))


def _decode_pcm_wav(path: str | Path) -> np.ndarray:
    """Independent decoder (stdlib ``wave`` + numpy) of PCM WAV -> float32 [channels, samples], scaled as
    soundfile scales (full scale = 2 ** (bits - 1); 8-bit WAV is unsigned around 128)."""
    with wave.open(str(path), "rb") as w:
        width, channels, raw = w.getsampwidth(), w.getnchannels(), w.readframes(w.getnframes())
    if width == 1:
        x = (np.frombuffer(raw, np.uint8).astype(np.float64) - 128) / 128
    elif width == 2:
        x = np.frombuffer(raw, "<i2") / 32768
    elif width == 3:  # little-endian 24-bit: the three bytes go to the top of an int32, shifted back down
        b = np.frombuffer(raw, np.uint8).reshape(-1, 3).astype(np.int32)
        x = ((b[:, 0] << 8 | b[:, 1] << 16 | b[:, 2] << 24) >> 8) / 2**23
    else:
        raise ValueError(f"{path}: {8 * width}-bit WAV not handled by the test decoder")
    return x.reshape(-1, channels).T.astype(np.float32)  # interleaved frames -> [channels, samples]


@pytest.fixture
def decode_pcm_wav() -> Callable[[str | Path], np.ndarray]:
    return _decode_pcm_wav
