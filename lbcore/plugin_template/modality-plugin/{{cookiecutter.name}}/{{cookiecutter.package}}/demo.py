"""The procedural demo dataset: six signal shapes a sentence model tells apart, written as real files.

TODO(plugin): replace the concepts and their generators with ones from your modality (what a recording of
each concept looks like), with several paraphrased captions each. Keep what makes the demo useful: the
output depends on ``seed`` only, and the test split is drawn with other parameters than the training split,
so held-out accuracy measures generalisation rather than memorised files.

Layout written under ``root``::

    train/<concept>_<i>.npy|.csv   test/<concept>_<i>.npy|.csv    [T, channels], .npy and .csv alternate
    train.jsonl  test.jsonl                                        {"path", "captions", "label"}
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lbcore.manifest import write_manifest

COUNTS = {"train": 40, "test": 10}  # files per concept and split
CAPTIONS_PER_ITEM = 3


@dataclass(frozen=True)
class Concept:
    """One demo class: its label (the zero-shot class name) and caption paraphrases."""

    label: str
    captions: tuple[str, ...]


CONCEPTS = (
    Concept(
        "sine wave",
        (
            "a smooth sine wave",
            "a slow regular oscillation",
            "a gentle wave going up and down",
            "a smooth periodic wave",
        ),
    ),
    Concept(
        "square wave",
        (
            "a square wave jumping between two levels",
            "a signal switching on and off",
            "a blocky wave with sharp steps",
            "a signal flipping between high and low",
        ),
    ),
    Concept(
        "noise",
        (
            "random noise",
            "a noisy signal with no pattern",
            "static hiss without structure",
            "pure random fluctuations",
        ),
    ),
    Concept(
        "spikes",
        (
            "a quiet signal with sharp spikes",
            "isolated sudden peaks",
            "short bursts on a flat line",
            "a few sharp spikes now and then",
        ),
    ),
    Concept(
        "ramp",
        (
            "a steadily rising ramp",
            "a signal climbing slowly",
            "a value that keeps increasing",
            "a gradual upward slope",
        ),
    ),
    Concept(
        "flat line",
        (
            "a flat line",
            "a constant signal that does not change",
            "nothing happening, a steady level",
            "a still, unchanging signal",
        ),
    ),
)


def _sine(rng: np.random.Generator, t: np.ndarray, test: bool) -> np.ndarray:
    period = rng.uniform(30, 60) if test else rng.uniform(20, 50)  # in time steps
    return np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi))


def _square(rng: np.random.Generator, t: np.ndarray, test: bool) -> np.ndarray:
    period = rng.uniform(30, 60) if test else rng.uniform(20, 50)
    return np.sign(np.sin(2 * np.pi * t / period + rng.uniform(0, 2 * np.pi)))


def _noise(rng: np.random.Generator, t: np.ndarray, test: bool) -> np.ndarray:
    return rng.standard_normal(t.shape) * (rng.uniform(0.6, 1.0) if test else rng.uniform(0.4, 0.8))


def _spikes(rng: np.random.Generator, t: np.ndarray, test: bool) -> np.ndarray:
    out = np.zeros(t.shape)
    count = int(rng.integers(4, 9) if test else rng.integers(3, 7))
    for centre in rng.uniform(0, t.shape[0], size=count):
        out += rng.uniform(2.0, 3.0) * np.exp(-0.5 * ((t - centre) / 1.5) ** 2)
    return out


def _ramp(rng: np.random.Generator, t: np.ndarray, test: bool) -> np.ndarray:
    slope = rng.uniform(1.5, 2.5) if test else rng.uniform(1.0, 2.0)
    return slope * (t / t.shape[0] - 0.5) * 2


def _flat(rng: np.random.Generator, t: np.ndarray, test: bool) -> np.ndarray:
    return np.full(t.shape, rng.uniform(-0.5, 0.5))


GENERATORS: dict[str, Callable[[np.random.Generator, np.ndarray, bool], np.ndarray]] = {
    "sine wave": _sine,
    "square wave": _square,
    "noise": _noise,
    "spikes": _spikes,
    "ramp": _ramp,
    "flat line": _flat,
}


def generate(concept: Concept, rng: np.random.Generator, channels: int, test: bool) -> np.ndarray:
    """One recording of ``concept``: float32 [T, channels]. The test split is longer and noisier."""
    length = int(rng.integers(200, 260) if test else rng.integers(160, 220))
    t = np.arange(length, dtype=np.float64)
    columns = [GENERATORS[concept.label](rng, t, test) for _ in range(channels)]
    signal = np.stack(columns, axis=1)  # [T, C]
    signal += rng.normal(0.0, 0.08 if test else 0.05, signal.shape)  # sensor noise
    return signal.astype(np.float32)


def write_signal(path: Path, signal: np.ndarray) -> None:
    """Write [T, C] as .npy, or as .csv with a header row ch0, ch1, ..."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".npy":
        np.save(path, signal)
    else:
        header = ",".join(f"ch{c}" for c in range(signal.shape[1]))
        np.savetxt(path, signal, delimiter=",", header=header, comments="", fmt="%.6g")


def write_demo_dataset(root: Path, channels: int = 3, seed: int = 0) -> dict[str, Path]:
    """Write every split under ``root`` and return the manifests by split. Each (split, concept) pair has
    its own generator seeded from ``seed``, so the output depends on ``seed`` (and ``channels``) alone."""
    manifests = {}
    for split_index, (split, count) in enumerate(COUNTS.items()):
        rows = []
        for concept_index, concept in enumerate(CONCEPTS):
            rng = np.random.default_rng([seed, split_index, concept_index])
            stem = concept.label.replace(" ", "_")
            for i in range(count):
                rel = f"{split}/{stem}_{i:03d}{'.npy' if i % 2 == 0 else '.csv'}"
                write_signal(root / rel, generate(concept, rng, channels, test=split != "train"))
                picked = sorted(rng.choice(len(concept.captions), size=CAPTIONS_PER_ITEM, replace=False))
                rows.append({"path": rel, "captions": [concept.captions[j] for j in picked], "label": concept.label})
        manifests[split] = write_manifest(root / f"{split}.jsonl", rows)
    return manifests
