"""Sound tracks of the video demo clips: four tone patterns, written as 16 kHz mono WAV files beside the mp4s.

Each demo clip gets one sound (beeping, a low hum, a rising whistle or ticking), drawn independently of what
the clip shows, and the paired manifests caption both: "a ball moving up with a beeping sound". Neither the
frames nor the sound alone tell which of the 28 (motion, sound) combinations an item is; together they do,
which is what grouped alignment (``train.groups: [[video, audio]]``) and group captioning learn from.
Pitches, rhythms and levels are random per clip; the test split draws them from ranges shifted by a tenth of
their width. Written with the standard library's ``wave`` module (no audio package needed).
"""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000
DURATION = 1.5  # seconds: the clip's 12 frames at 8 fps

SOUND_CAPTIONS: dict[str, tuple[str, ...]] = {
    "beeping": ("a beeping sound", "beeps", "a beeping noise"),
    "humming": ("a low hum", "a humming sound", "a deep hum"),
    "whistling": ("a rising whistle", "a whistle going up", "a whistling sound"),
    "ticking": ("a ticking sound", "clicks", "a clicking noise"),
}
SOUNDS = tuple(SOUND_CAPTIONS)


def _draw(rng: np.random.Generator, lo: float, hi: float, shift: float) -> float:
    offset = shift * (hi - lo)
    return float(rng.uniform(lo + offset, hi + offset))


def render_sound(sound: str, rng: np.random.Generator, shift: float = 0.0) -> np.ndarray:
    """One sound track as float32 [samples] in [-1, 1]."""
    n = int(DURATION * SAMPLE_RATE)
    t = np.arange(n) / SAMPLE_RATE
    if sound == "beeping":
        freq, on = _draw(rng, 900, 2200, shift), _draw(rng, 0.08, 0.15, shift)
        period = on + _draw(rng, 0.08, 0.16, shift)
        x = np.sin(2 * np.pi * freq * t) * ((t % period) < on)
    elif sound == "humming":
        f0 = _draw(rng, 70, 160, shift)
        x = sum(k**-1.2 * np.sin(2 * np.pi * k * f0 * t + rng.uniform(0, 6.3)) for k in range(1, 7))
    elif sound == "whistling":
        f_start = _draw(rng, 500, 900, shift)
        f_end = f_start * _draw(rng, 2.0, 3.0, shift)
        x = np.sin(2 * np.pi * np.cumsum(f_start + (f_end - f_start) * t / DURATION) / SAMPLE_RATE)
    elif sound == "ticking":
        period, decay = _draw(rng, 0.15, 0.3, shift), _draw(rng, 0.002, 0.005, shift)
        since = t % period
        x = np.exp(-since / decay) * rng.standard_normal(n)
    else:
        raise ValueError(f"unknown demo sound {sound!r}")
    x = x + 0.01 * rng.standard_normal(n)
    return (x * (rng.uniform(0.3, 0.8) / (np.abs(x).max() + 1e-9))).astype(np.float32)


def write_wav(path: str | Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    """float samples in [-1, 1] -> a 16-bit PCM mono WAV file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())
    return path
