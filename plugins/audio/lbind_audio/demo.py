"""The procedural audio demo dataset: eight synthetic sound concepts written as real 16 kHz WAV files.

Each concept (a low hum, beeping, a siren, rain, a ticking clock, chirping birds, knocking, wind) is a small
synthesiser whose parameters (pitch, rhythm, brightness, duration, level, background noise) are drawn per
clip, and a handful of paraphrased captions. The two splits differ in more than their seeds: test clips
are longer, noisier (lower SNR), and draw every synthesis parameter from a range shifted by a tenth of its
width, so held-out accuracy measures generalisation to unseen pitches and rhythms, not memorised clips.

Layout written under ``root``::

    train/<concept>_<i>.wav  test/<concept>_<i>.wav     16 kHz, mono, 16-bit PCM, 1-3 s
    train.jsonl  test.jsonl                              {"path", "captions": [3 paraphrases], "label"}
"""

from __future__ import annotations

import io
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from lbcore.manifest import write_manifest

log = logging.getLogger(__name__)

SAMPLE_RATE = 16000
CAPTIONS_PER_CLIP = 3


@dataclass(frozen=True)
class SplitSpec:
    """How one split is drawn: clip count per concept, duration and noise ranges, parameter shift."""

    name: str
    clips_per_concept: int
    duration: tuple[float, float]  # seconds
    snr_db: tuple[float, float]  # signal-to-background-noise ratio of the clip
    shift: float  # every synthesis range [lo, hi] moves to [lo + shift * (hi - lo), hi + shift * (hi - lo)]


SPLITS = (
    SplitSpec("train", 40, (1.0, 2.6), (30.0, 45.0), 0.0),
    SplitSpec("test", 10, (1.4, 3.0), (25.0, 40.0), 0.1),
)


class Draw:
    """Parameter sampler of one split: uniform draws from ranges shifted by the split's ``shift``."""

    def __init__(self, rng: np.random.Generator, shift: float) -> None:
        self.rng = rng
        self.shift = shift

    def __call__(self, lo: float, hi: float) -> float:
        offset = self.shift * (hi - lo)
        return float(self.rng.uniform(lo + offset, hi + offset))

    def count(self, lo: int, hi: int) -> int:
        """An integer in [lo, hi] (shifted like the other draws, then rounded)."""
        return round(self(lo, hi))


Synth = Callable[[Draw, int], np.ndarray]  # (sampler, number of samples) -> waveform [samples]


def _time(n: int) -> np.ndarray:
    return np.arange(n) / SAMPLE_RATE


def _band_noise(rng: np.random.Generator, n: int, lo: float, hi: float) -> np.ndarray:
    """White noise restricted to [lo, hi] Hz with an FFT mask, unit RMS."""
    size = 1 << max(0, n - 1).bit_length()  # a power of two: FFTs of arbitrary (prime-rich) lengths are slow
    spectrum = np.fft.rfft(rng.standard_normal(size))
    freqs = np.fft.rfftfreq(size, 1 / SAMPLE_RATE)
    spectrum[(freqs < lo) | (freqs > hi)] = 0
    x = np.fft.irfft(spectrum, size)[:n]
    return x / (np.sqrt(np.mean(x**2)) + 1e-12)


def _place(out: np.ndarray, event: np.ndarray, start: int) -> None:
    """Add ``event`` into ``out`` at sample ``start``, clipped at the end of ``out``."""
    if 0 <= start < out.size:
        end = min(out.size, start + event.size)
        out[start:end] += event[: end - start]


def _damped(freq: float, decay_s: float, length_s: float, phase: float = 0.0) -> np.ndarray:
    t = _time(int(length_s * SAMPLE_RATE))
    return np.sin(2 * np.pi * freq * t + phase) * np.exp(-t / decay_s)


def low_hum(d: Draw, n: int) -> np.ndarray:
    t = _time(n)
    f0, tilt = d(55, 150), d(0.8, 1.6)
    drift = 1 + 0.004 * np.sin(2 * np.pi * d(0.1, 0.5) * t)  # slow pitch wander of a mains/engine hum
    phase = 2 * np.pi * f0 * np.cumsum(drift) / SAMPLE_RATE
    x = sum(k**-tilt * np.sin(k * phase + d.rng.uniform(0, 2 * np.pi)) for k in range(1, 9))
    return x * (1 + d(0.05, 0.2) * np.sin(2 * np.pi * d(0.3, 2.0) * t))


def beeping(d: Draw, n: int) -> np.ndarray:
    freq, length = d(800, 2500), d(0.1, 0.3)
    period = length + d(0.1, 0.35)
    drive = d(0.5, 3.0)  # tanh drive: from a pure tone to a buzzy square-ish beep
    beep = np.tanh(drive * np.sin(2 * np.pi * freq * _time(int(length * SAMPLE_RATE)))) / np.tanh(drive)
    ramp = 80  # 5 ms on/off ramps avoid clicks
    beep[:ramp] *= np.linspace(0, 1, ramp)
    beep[-ramp:] *= np.linspace(1, 0, ramp)
    out = np.zeros(n)
    for start in np.arange(d(0.0, 0.2), n / SAMPLE_RATE, period):
        _place(out, beep, int(start * SAMPLE_RATE))
    return out


def siren(d: Draw, n: int) -> np.ndarray:
    t = _time(n)
    f_lo = d(450, 800)
    f_hi = f_lo * d(1.6, 2.6)
    rate = 1 / d(0.6, 1.6)  # wails per second
    sweep = 0.5 - 0.5 * np.cos(2 * np.pi * rate * t + d.rng.uniform(0, 2 * np.pi))  # 0..1
    phase = 2 * np.pi * np.cumsum(f_lo + (f_hi - f_lo) * sweep) / SAMPLE_RATE
    return np.sin(phase) + d(0.1, 0.4) * np.sin(2 * phase) + d(0.05, 0.2) * np.sin(3 * phase)


def rain(d: Draw, n: int) -> np.ndarray:
    hiss = _band_noise(d.rng, n, d(800, 2000), d(6000, 7900)) * d(0.3, 0.6)
    out = hiss
    drops = d.rng.poisson(d(30, 120) * n / SAMPLE_RATE)
    for start in d.rng.integers(0, n, drops):
        splash = d.rng.standard_normal(int(d(0.002, 0.006) * SAMPLE_RATE))
        splash *= np.exp(-np.arange(splash.size) / (0.25 * splash.size)) * d.rng.uniform(0.5, 2.0)
        _place(out, splash, int(start))
    return out


def clock_tick(d: Draw, n: int) -> np.ndarray:
    period, freq, decay = d(0.2, 0.5), d(2000, 5000), d(0.002, 0.006)
    tick, tock = _damped(freq, decay, 0.04), 0.8 * _damped(0.8 * freq, decay, 0.04)
    out = np.zeros(n)
    for i, start in enumerate(np.arange(d(0.0, 0.15), n / SAMPLE_RATE, period)):
        _place(out, tick if i % 2 == 0 else tock, int(start * SAMPLE_RATE))
    return out


def chirping_birds(d: Draw, n: int) -> np.ndarray:
    out = np.zeros(n)
    base, rate, spacing = d(3500, 6000), d(1.5, 4.0), d(0.05, 0.09)
    for trill_start in np.sort(d.rng.uniform(-0.2, n / SAMPLE_RATE, max(1, d.rng.poisson(rate * n / SAMPLE_RATE)))):
        # A trill: a few fast chirps, each a steep glide with a warble, like a small songbird.
        glide = d(2000, 5000) * d.rng.choice([-1.0, 1.0])
        for k in range(d.count(2, 5)):
            length = d(0.03, 0.07)
            t = _time(int(length * SAMPLE_RATE))
            freq = base * d.rng.uniform(0.9, 1.1) + glide * (t / length - 0.5) + 200 * np.sin(2 * np.pi * 35 * t)
            chirp = np.sin(2 * np.pi * np.cumsum(freq) / SAMPLE_RATE) * np.sin(np.pi * t / length) ** 2
            _place(out, chirp * d.rng.uniform(0.5, 1.0), int((trill_start + k * spacing) * SAMPLE_RATE))
    return out


def knocking(d: Draw, n: int) -> np.ndarray:
    out = np.zeros(n)
    body, wood, decay = d(70, 180), d(300, 700), d(0.015, 0.04)
    knock = _damped(body, decay, 0.12) + 0.5 * _damped(wood, decay / 2, 0.12)
    knock[:80] += _band_noise(d.rng, 80, 100, 2000) * 0.3  # the knuckle's dull impact transient
    gap = d(0.12, 0.25)
    t = d(0.0, 0.2)
    while t < n / SAMPLE_RATE:
        for _ in range(d.count(2, 5)):
            _place(out, knock * d.rng.uniform(0.7, 1.0), int(t * SAMPLE_RATE))
            t += gap * d.rng.uniform(0.9, 1.1)
        t += d(0.4, 0.9)  # pause between groups of knocks
    return out


def wind(d: Draw, n: int) -> np.ndarray:
    t = _time(n)
    rumble = _band_noise(d.rng, n, 30, d(1000, 2500))
    gusts = 1 + d(0.4, 0.8) * np.sin(2 * np.pi * d(0.2, 0.7) * t + d.rng.uniform(0, 2 * np.pi))
    whistle_centre = d(500, 1200)
    whistle = _band_noise(d.rng, n, whistle_centre * 0.95, whistle_centre * 1.05) * d(0.05, 0.2)
    return (rumble + whistle) * gusts


@dataclass(frozen=True)
class Concept:
    label: str  # the class name used in zero-shot prompts ("a sound of {label}.")
    synth: Synth
    captions: tuple[str, ...]


CONCEPTS = (
    Concept(
        "low hum",
        low_hum,
        (
            "a steady low hum",
            "a deep constant droning hum",
            "a low electrical hum that never changes",
            "the monotonous drone of a machine humming",
            "a continuous low pitched buzzing hum",
            "an engine idling with a deep steady hum",
        ),
    ),
    Concept(
        "beeping",
        beeping,
        (
            "short high pitched electronic beeps",
            "a device beeping repeatedly",
            "a series of sharp high beeps",
            "a microwave beeping several times",
            "the repeated beep beep beep of a machine",
            "an electronic timer beeping",
        ),
    ),
    Concept(
        "siren",
        siren,
        (
            "a siren wailing up and down",
            "an emergency siren rising and falling in pitch",
            "the wail of a police siren",
            "an ambulance siren sweeping in pitch",
            "a loud siren howling",
            "a siren whose pitch rises and falls",
        ),
    ),
    Concept(
        "rain",
        rain,
        (
            "steady rain falling",
            "the hiss of heavy rain",
            "rain pouring down on a roof",
            "a downpour with raindrops splashing",
            "rainfall pattering continuously",
            "the noise of a rainstorm",
        ),
    ),
    Concept(
        "clock tick",
        clock_tick,
        (
            "a clock ticking",
            "the steady tick tock of a clock",
            "a mechanical clock ticking in a quiet room",
            "regular ticking of a wall clock",
            "a watch ticking rhythmically",
            "tick tock tick tock of a clock",
        ),
    ),
    Concept(
        "chirping birds",
        chirping_birds,
        (
            "birds chirping",
            "a small bird tweeting",
            "songbirds chirping and singing",
            "birds twittering in the trees",
            "a bird singing short melodic chirps",
            "several birds chirping outside",
        ),
    ),
    Concept(
        "knocking",
        knocking,
        (
            "someone knocking on a door",
            "knocks on a wooden door",
            "a person rapping on a door several times",
            "loud knocking on wood",
            "a series of knocks at the door",
            "knuckles knocking on a door",
        ),
    ),
    Concept(
        "wind",
        wind,
        (
            "wind blowing",
            "a strong wind howling",
            "gusts of wind whooshing",
            "the low rumble of wind blowing outside",
            "wind gusting and whistling",
            "a breezy wind rushing past",
        ),
    ),
)


def render_clip(concept: Concept, draw: Draw, split: SplitSpec) -> np.ndarray:
    """One clip of ``concept``: synthesised, over white background noise at a random SNR, peak-normalised
    to a random level."""
    n = int(draw.rng.uniform(*split.duration) * SAMPLE_RATE)
    x = concept.synth(draw, n)
    signal_rms = np.sqrt(np.mean(x**2)) + 1e-12
    x = x + signal_rms * 10 ** (-draw.rng.uniform(*split.snr_db) / 20) * draw.rng.standard_normal(n)
    x = x * (draw.rng.uniform(0.3, 0.9) / np.abs(x).max())
    return x.astype(np.float32)


def _write_wav(path: Path, wave: np.ndarray) -> None:
    """16-bit PCM WAV. Encoded in memory first: libsndfile fsyncs on close, which costs more than the audio."""
    buffer = io.BytesIO()
    sf.write(buffer, wave, SAMPLE_RATE, format="WAV", subtype="PCM_16")
    path.write_bytes(buffer.getvalue())


def write_demo_dataset(root: Path, seed: int = 0) -> None:
    """Write every split's WAV files and manifest under ``root`` (deterministic by ``seed``)."""
    root = Path(root)
    for split_index, split in enumerate(SPLITS):
        rows = []
        (root / split.name).mkdir(parents=True, exist_ok=True)
        for concept_index, concept in enumerate(CONCEPTS):
            # One independent stream per (seed, split, concept): splits never share a random draw.
            rng = np.random.default_rng([seed, split_index, concept_index])
            draw = Draw(rng, split.shift)
            slug = concept.label.replace(" ", "_")
            for i in range(split.clips_per_concept):
                rel = f"{split.name}/{slug}_{i:03d}.wav"
                _write_wav(root / rel, render_clip(concept, draw, split))
                picks = rng.choice(len(concept.captions), CAPTIONS_PER_CLIP, replace=False)
                rows.append({"path": rel, "captions": [concept.captions[j] for j in picks], "label": concept.label})
        write_manifest(root / f"{split.name}.jsonl", rows)
        log.info("audio demo: wrote %d %s clips under %s", len(rows), split.name, root)
