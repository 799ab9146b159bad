"""The procedural IMU demo dataset: seven activities of a person wearing a wrist sensor (a smartwatch).

Each activity is a small motion model: the wrist's linear acceleration, a swing of the forearm about one
axis (arm swing while walking, waving, a rocking torso on a bicycle), and how the watch sits on the arm (the
forearm hanging, raised, resting on a lap or on a handlebar). From these the generator computes what the
sensor reads: specific force (acceleration minus gravity) and angular rate, both in the watch's own frame,
plus sensor noise and bias. Every motion parameter (step rate, swing amplitude, impact strength...) is drawn
per recording.

The splits differ in more than their seeds: test recordings are longer, noisier, sampled at 60 Hz with
jittery timestamps instead of 50 Hz, worn at larger angles, and draw every motion parameter from a range
shifted by a tenth of its width, so held-out accuracy measures generalisation, not memorised recordings.

Layout written under ``root`` (both file kinds hold a first column ``time`` in seconds, then ax..gz)::

    train/<activity>_<i>.npy|.csv   test/<activity>_<i>.npy|.csv   float [T, 7]; .npy and .csv alternate
    train.jsonl  test.jsonl                                          {"path", "captions": [3], "label"}
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from lbcore.manifest import write_manifest

from lbind_imu.signal import CHANNELS

G = 9.80665  # standard gravity, m/s^2
CAPTIONS_PER_ITEM = 3


@dataclass(frozen=True)
class Concept:
    """One activity: its label (the zero-shot class name) and caption paraphrases."""

    label: str
    captions: tuple[str, ...]


CONCEPTS = (
    Concept(
        "walking",
        (
            "a person walking at a steady pace",
            "someone strolling down the street",
            "a relaxed walk on foot",
            "a person taking a walk, arms swinging gently",
            "walking along a path",
        ),
    ),
    Concept(
        "running",
        (
            "a person running fast",
            "someone jogging with pounding footsteps",
            "a runner out for a run",
            "running at a quick pace",
            "a person sprinting down the road",
        ),
    ),
    Concept(
        "jumping",
        (
            "a person jumping up and down",
            "someone hopping in place again and again",
            "repeated jumps into the air",
            "jumping on the spot",
            "a person doing jumping exercises",
        ),
    ),
    Concept(
        "sitting still",
        (
            "a person sitting still",
            "someone resting quietly in a chair",
            "sitting down without moving",
            "a person seated and motionless",
            "resting on a sofa, hands in the lap",
        ),
    ),
    Concept(
        "climbing stairs",
        (
            "a person climbing stairs",
            "someone walking up a staircase",
            "going up a flight of steps",
            "climbing the stairs to the next floor",
            "a person stepping up the stairs one by one",
        ),
    ),
    Concept(
        "waving a hand",
        (
            "a person waving a hand",
            "someone waving goodbye",
            "waving hello to a friend",
            "a raised hand waving from side to side",
            "a person waving at someone across the street",
        ),
    ),
    Concept(
        "cycling",
        (
            "a person riding a bicycle",
            "someone cycling along a road",
            "pedalling a bike",
            "a bike ride with hands on the handlebar",
            "a cyclist riding through town",
        ),
    ),
)


@dataclass(frozen=True)
class SplitSpec:
    """How one split is drawn."""

    name: str
    per_concept: int
    rate: float  # Hz of the written recordings
    duration: tuple[float, float]  # seconds
    time_jitter: float  # timestamp noise, as a fraction of the sampling period
    mount_jitter: float  # degrees: how far the watch may sit from its nominal angle on the arm
    noise: float  # multiplies the sensor noise
    shift: float  # every motion range [lo, hi] moves to [lo + shift * (hi - lo), hi + shift * (hi - lo)]


SPLITS = (
    SplitSpec("train", 40, 50.0, (6.0, 7.0), 0.0, 15.0, 1.0, 0.0),
    SplitSpec("test", 10, 60.0, (7.0, 8.0), 0.1, 25.0, 1.5, 0.1),
)


class Draw:
    """Uniform draws from ranges shifted by the split's ``shift`` (see :class:`SplitSpec`)."""

    def __init__(self, rng: np.random.Generator, shift: float = 0.0) -> None:
        self.rng = rng
        self.shift = shift

    def __call__(self, lo: float, hi: float) -> float:
        offset = self.shift * (hi - lo)
        return float(self.rng.uniform(lo + offset, hi + offset))


@dataclass
class Motion:
    """What the wrist does: linear acceleration (world frame: x forward, y left, z up; m/s^2, [T, 3]), a
    swing of the forearm by ``swing`` radians [T] about the world axis ``swing_axis``, and the watch's
    nominal pitch on the arm (degrees: +90 points the forearm down, -90 up, 0 level)."""

    accel: np.ndarray
    swing_axis: tuple[float, float, float]
    swing: np.ndarray
    pitch: float


def _rotation(axis: tuple[float, float, float] | np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotations by ``angle`` [T] radians about a fixed unit ``axis``: [T, 3, 3] (Rodrigues' formula)."""
    a = np.asarray(axis, dtype=np.float64)
    a = a / np.linalg.norm(a)
    k = np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])
    angle = np.asarray(angle, dtype=np.float64)[:, None, None]  # [T, 1, 1]
    return np.eye(3) + np.sin(angle) * k + (1.0 - np.cos(angle)) * (k @ k)


def _pulses(t: np.ndarray, period: float, duty: float, phase: float) -> np.ndarray:
    """Vertical specific force of periodic ground contacts: a half-sine during each contact (``duty`` of the
    period) and zero in flight, with a peak chosen so that it averages to G over a period, as it must for a
    body that on average neither rises nor falls."""
    cycle = ((t / period + phase) % 1.0) / duty  # contact while < 1
    peak = G * math.pi / (2.0 * duty)
    return np.where(cycle < 1.0, peak * np.sin(np.pi * np.clip(cycle, 0.0, 1.0)), 0.0)


def _arm_swing(
    t: np.ndarray, freq: float, amplitude_deg: float, phase: float, lever: float
) -> tuple[np.ndarray, np.ndarray]:
    """A pendulum-like arm swing: the angle [T] and the forward acceleration of the wrist, lever * d2(angle)/dt2
    [T] (``lever``: metres from the wrist to the pivot, shorter for a bent arm)."""
    w = 2 * math.pi * freq
    angle = math.radians(amplitude_deg) * np.sin(w * t + phase)
    return angle, -lever * w * w * angle


def walking(t: np.ndarray, d: Draw) -> Motion:
    step = d(1.6, 2.1)  # steps per second; the arms swing once per stride (two steps)
    swing, forward = _arm_swing(t, step / 2, d(15, 30), d(0, 2 * math.pi), lever=0.4)
    bounce = d(1.5, 3.0)
    vertical = bounce * (np.sin(2 * math.pi * step * t) + 0.3 * np.sin(4 * math.pi * step * t + d(0, 2 * math.pi)))
    lateral = d(0.3, 0.8) * np.sin(math.pi * step * t + d(0, 2 * math.pi))
    return Motion(np.stack([forward, lateral, vertical], 1), (0.0, 1.0, 0.0), swing, pitch=80.0)


def running(t: np.ndarray, d: Draw) -> Motion:
    step = d(2.6, 3.2)
    swing, forward = _arm_swing(t, step / 2, d(30, 50), d(0, 2 * math.pi), lever=0.25)
    damping = d(0.5, 0.8)  # the arm softens the foot strikes
    vertical = damping * (_pulses(t, 1 / step, d(0.35, 0.45), d(0, 1)) - G)
    lateral = d(0.5, 1.5) * np.sin(math.pi * step * t + d(0, 2 * math.pi))
    return Motion(np.stack([forward, lateral, vertical], 1), (0.0, 1.0, 0.0), swing, pitch=20.0)


def jumping(t: np.ndarray, d: Draw) -> Motion:
    period = d(0.6, 0.9)
    phase = d(0, 1)
    vertical = d(0.8, 1.0) * (_pulses(t, period, d(0.35, 0.5), phase) - G)  # near free fall between landings
    swing = math.radians(d(20, 45)) * np.sin(2 * math.pi * (t / period + phase))  # arms swing with each jump
    forward = d(0.2, 0.6) * np.sin(2 * math.pi * t / period + d(0, 2 * math.pi))
    return Motion(np.stack([forward, np.zeros_like(t), vertical], 1), (0.0, 1.0, 0.0), swing, pitch=80.0)


def sitting_still(t: np.ndarray, d: Draw) -> Motion:
    breathing = d(0.05, 0.15) * np.sin(2 * math.pi * d(0.2, 0.33) * t)
    drift = math.radians(d(0.5, 2.0)) * np.sin(2 * math.pi * d(0.02, 0.08) * t + d(0, 2 * math.pi))
    accel = np.stack([np.zeros_like(t), np.zeros_like(t), breathing], 1)
    return Motion(accel, (1.0, 0.0, 0.0), drift, pitch=0.0)


def climbing_stairs(t: np.ndarray, d: Draw) -> Motion:
    step = d(1.2, 1.6)  # slower than walking, with a strong push up on every step
    swing, forward = _arm_swing(t, step / 2, d(8, 18), d(0, 2 * math.pi), lever=0.4)
    phase = 2 * math.pi * step * t + d(0, 2 * math.pi)
    vertical = d(2.5, 4.5) * (np.sin(phase) + 0.5 * np.sin(2 * phase) + 0.25 * np.sin(3 * phase))  # lopsided push
    forward = 0.5 * forward + d(0.5, 1.0) * np.sin(phase + 1.0)
    return Motion(np.stack([forward, np.zeros_like(t), vertical], 1), (0.0, 1.0, 0.0), swing, pitch=70.0)


def waving_a_hand(t: np.ndarray, d: Draw) -> Motion:
    freq = d(1.5, 2.5)
    angle = math.radians(d(20, 35)) * np.sin(2 * math.pi * freq * t + d(0, 2 * math.pi))  # side to side
    lateral = -0.1 * (2 * math.pi * freq) ** 2 * angle  # the watch turns about the forearm, 0.1 m off its axis
    accel = np.stack([np.zeros_like(t), lateral, np.zeros_like(t)], 1)
    return Motion(accel, (1.0, 0.0, 0.0), angle, pitch=-80.0)  # forearm raised: the swing is about x


def cycling(t: np.ndarray, d: Draw, rng: np.random.Generator) -> Motion:
    cadence = d(1.0, 1.5)
    rocking = math.radians(d(2, 5)) * np.sin(2 * math.pi * cadence * t + d(0, 2 * math.pi))
    # Road vibration: white noise band-passed to roughly 4-15 Hz by a difference of moving averages.
    raw = rng.standard_normal((t.size, 3))
    rate = (t.size - 1) / (t[-1] - t[0])
    short, long = max(1, round(rate / 15)), max(2, round(rate / 4))
    band = _smooth(raw, short) - _smooth(raw, long)
    band *= d(0.6, 1.5) / (band.std() + 1e-9)
    speed_changes = d(0.1, 0.4) * np.sin(2 * math.pi * d(0.05, 0.2) * t + d(0, 2 * math.pi))
    accel = band + np.stack([speed_changes, np.zeros_like(t), np.zeros_like(t)], 1)
    return Motion(accel, (1.0, 0.0, 0.0), rocking, pitch=30.0)


def _smooth(x: np.ndarray, width: int) -> np.ndarray:
    kernel = np.ones(width) / width
    return np.stack([np.convolve(x[:, c], kernel, mode="same") for c in range(x.shape[1])], 1)


MOTIONS: dict[str, Callable[[np.ndarray, Draw, np.random.Generator], Motion]] = {
    "walking": lambda t, d, rng: walking(t, d),
    "running": lambda t, d, rng: running(t, d),
    "jumping": lambda t, d, rng: jumping(t, d),
    "sitting still": lambda t, d, rng: sitting_still(t, d),
    "climbing stairs": lambda t, d, rng: climbing_stairs(t, d),
    "waving a hand": lambda t, d, rng: waving_a_hand(t, d),
    "cycling": cycling,
}


def sense(t: np.ndarray, motion: Motion, rng: np.random.Generator, mount_jitter: float, noise: float) -> np.ndarray:
    """What the watch reads: float64 [T, 6] = specific force (m/s^2) and angular rate (rad/s) in its frame."""
    pitch = math.radians(motion.pitch + rng.uniform(-mount_jitter, mount_jitter))
    roll = math.radians(rng.uniform(-mount_jitter, mount_jitter))
    yaw = math.radians(rng.uniform(-mount_jitter, mount_jitter))
    one = np.ones(1)
    mount = (_rotation((0, 0, 1), yaw * one) @ _rotation((0, 1, 0), pitch * one) @ _rotation((1, 0, 0), roll * one))[0]
    orientation = _rotation(motion.swing_axis, motion.swing) @ mount  # watch frame -> world frame, [T, 3, 3]
    force = motion.accel + np.array([0.0, 0.0, G])  # an accelerometer at rest reads +G upwards
    rate = np.gradient(motion.swing, t)[:, None] * np.asarray(motion.swing_axis, dtype=np.float64)  # world, [T, 3]
    # Into the watch frame: v_watch = orientation^T v_world, per time step.
    acc = np.einsum("tji,tj->ti", orientation, force)
    gyro = np.einsum("tji,tj->ti", orientation, rate)
    acc += rng.normal(0, 0.08 * noise, acc.shape) + rng.normal(0, 0.1, 3)  # white noise + a per-recording bias
    gyro += rng.normal(0, 0.015 * noise, gyro.shape) + rng.normal(0, 0.01, 3)
    return np.concatenate([acc, gyro], axis=1)


def synthesize(
    label: str, rng: np.random.Generator, rate: float, duration: float, split: SplitSpec = SPLITS[0]
) -> tuple[np.ndarray, np.ndarray]:
    """One recording of activity ``label``: times [T] (seconds from 0) and readings float64 [T, 6]."""
    n = int(duration * rate)
    t = np.arange(n) / rate
    if split.time_jitter:
        t = t + rng.uniform(-split.time_jitter, split.time_jitter, n) / rate  # still increasing: jitter < period / 2
        t -= t[0]
    motion = MOTIONS[label](t, Draw(rng, split.shift), rng)
    return t, sense(t, motion, rng, split.mount_jitter, split.noise)


def write_recording(path: Path, times: np.ndarray, readings: np.ndarray) -> None:
    """Write [T, 7] = time, ax..gz: .npy (float32) or .csv with a header row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    table = np.concatenate([times[:, None], readings], axis=1)
    if path.suffix == ".npy":
        np.save(path, table.astype(np.float32))
    else:
        np.savetxt(path, table, delimiter=",", header=",".join(("time", *CHANNELS)), comments="", fmt="%.6g")


def write_demo_dataset(root: Path, seed: int = 0) -> dict[str, Path]:
    """Write both splits under ``root`` and return the manifests by split. Each (split, activity) pair has its
    own generator seeded from ``seed``, so the output depends on ``seed`` alone."""
    manifests = {}
    for split_index, split in enumerate(SPLITS):
        rows = []
        for concept_index, concept in enumerate(CONCEPTS):
            rng = np.random.default_rng([seed, split_index, concept_index])
            stem = concept.label.replace(" ", "_")
            for i in range(split.per_concept):
                rel = f"{split.name}/{stem}_{i:03d}{'.npy' if i % 2 == 0 else '.csv'}"
                times, readings = synthesize(concept.label, rng, split.rate, rng.uniform(*split.duration), split)
                write_recording(root / rel, times, readings)
                picked = sorted(rng.choice(len(concept.captions), size=CAPTIONS_PER_ITEM, replace=False))
                rows.append({"path": rel, "captions": [concept.captions[j] for j in picked], "label": concept.label})
        manifests[split.name] = write_manifest(root / f"{split.name}.jsonl", rows)
    return manifests
