"""The procedural video demo dataset: moving and changing shapes, written as real H.264 mp4 files.

Seven concepts, each a shape with its own motion: a ball rising, snow falling, a triangle sliding sideways,
a square outline growing, a bar spinning, a light flashing and stripes scrolling. Moving things leave a
fading trail of their last positions, so the direction of motion shows in every sampled frame; the light
is on in every third frame, so any 4 or 8 frames spread over a clip catch it both on and off. Horizontal
direction is never what tells concepts apart, because training flips frames horizontally.

Object colours, backgrounds, sizes and speeds are random per clip. The test split draws object hues
between the train split's, and sizes and speeds from other ranges, so held-out accuracy measures shape and
motion rather than palette. Captions are paraphrases per concept; ``label`` (the class name of zero-shot
prompts) is a short noun phrase. `lbind train --modality video` (demo preset, 210 steps, about a minute
on one CPU core) reaches 86-96 % held-out zero-shot top-1 over seeds 0-2.

Every clip also gets a sound track (:mod:`lbind_video.soundtrack`) and the paired manifests
``paired-{train,test}.jsonl`` caption motion and sound together, for grouped training and captioning of
``video`` + ``audio`` (``lbind train -m video -m audio --group video,audio``).

Writing needs PyAV (``av``); decord reads the files back.
"""

from __future__ import annotations

import colorsys
import math
from collections.abc import Callable
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

import numpy as np

from lbcore.manifest import write_manifest
from lbind_video.soundtrack import SOUND_CAPTIONS, SOUNDS, render_sound, write_wav

SIZE = 64  # frame side: decord 0.6 mis-strides some widths (16, 24, 48, 72, ...), 64 reads back exactly
FRAMES = 12
FPS = 8
TRAIN_PER_CONCEPT = 36
TEST_PER_CONCEPT = 10
TRAIL = (0.45, 0.22, 0.1)  # opacity of the ghosts 1, 2 and 3 frames back

CAPTIONS: dict[str, tuple[str, ...]] = {
    "rising ball": (
        "a ball moving up",
        "a ball rising upward",
        "a round ball floating up the screen",
        "a ball travelling from the bottom to the top",
        "a ball going up",
    ),
    "falling snow": (
        "snow falling down",
        "snowflakes drifting downward",
        "little white flakes falling from the sky",
        "a snowfall",
        "snow coming down",
    ),
    "sliding triangle": (
        "a triangle sliding sideways",
        "a triangle moving across the screen",
        "a triangle gliding horizontally",
        "a triangle travelling from one side to the other",
        "a triangle moving sideways",
    ),
    "growing square": (
        "a square growing larger",
        "a square frame expanding in size",
        "a small square getting bigger",
        "a square outline that grows",
        "a square becoming bigger and bigger",
    ),
    "spinning bar": (
        "a rotating bar",
        "a stick spinning around its centre",
        "a line turning in a circle",
        "a bar rotating like a propeller",
        "a spinning rod",
    ),
    "flashing light": (
        "a flashing light",
        "a light blinking on and off",
        "a lamp flickering",
        "a bright spot that keeps flashing",
        "a blinking light",
    ),
    "scrolling stripes": (
        "stripes scrolling across the screen",
        "a striped pattern sliding along",
        "moving zebra stripes",
        "bands of colour drifting past",
        "stripes moving",
    ),
}


@dataclass(frozen=True)
class Style:
    """Per-split ranges of the random generation parameters."""

    hue_offset: float  # object hues are (k / 6 + offset) for k = 0..5
    background_value: tuple[float, float]  # brightness range of the background
    radius: tuple[float, float]
    speed: tuple[float, float]  # pixels per frame for moving balls


TRAIN_STYLE = Style(hue_offset=0.0, background_value=(0.05, 0.35), radius=(7.0, 10.0), speed=(2.6, 3.6))
TEST_STYLE = Style(hue_offset=1 / 12, background_value=(0.1, 0.3), radius=(8.0, 9.5), speed=(2.4, 3.2))


def _grid() -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE].astype(np.float32)
    return yy, xx


def _disc(cy: float, cx: float, r: float) -> np.ndarray:
    """Anti-aliased filled disc, [H, W] coverage in [0, 1]."""
    yy, xx = _grid()
    return np.clip(r - np.hypot(yy - cy, xx - cx) + 0.5, 0.0, 1.0)


def _triangle(cy: float, cx: float, r: float) -> np.ndarray:
    """Filled upward equilateral-ish triangle of circumradius ``r``: the intersection of three half-planes."""
    yy, xx = _grid()
    dy, dx = yy - cy, xx - cx
    edges = [dy - r / 2]  # bottom edge: y <= cy + r / 2
    for sx in (-1.0, 1.0):  # sides: distance to the lines through the apex, leaning out by 30 degrees
        edges.append((sx * dx * math.cos(math.pi / 6) - dy * math.sin(math.pi / 6)) - r / 2)
    return np.clip(-np.maximum.reduce(edges) + 0.5, 0.0, 1.0)


def _square_outline(cy: float, cx: float, half: float, thickness: float = 2.5) -> np.ndarray:
    yy, xx = _grid()
    d = np.maximum(np.abs(yy - cy), np.abs(xx - cx))  # Chebyshev distance: squares are its level sets
    return np.clip(thickness / 2 - np.abs(d - half) + 0.5, 0.0, 1.0)


def _bar(cy: float, cx: float, angle: float, length: float, thickness: float = 3.0) -> np.ndarray:
    yy, xx = _grid()
    dy, dx = yy - cy, xx - cx
    along = dx * math.cos(angle) + dy * math.sin(angle)
    across = -dx * math.sin(angle) + dy * math.cos(angle)
    inside = np.minimum(length / 2 - np.abs(along), thickness / 2 - np.abs(across)) + 0.5
    return np.clip(inside, 0.0, 1.0)


def _with_trail(shape_at: Callable[[int], np.ndarray], t: int) -> np.ndarray:
    """Coverage at frame ``t`` plus fading ghosts of frames t-1, t-2, t-3 (where they exist)."""
    cover = shape_at(t)
    for back, alpha in enumerate(TRAIL, 1):
        if t - back >= 0:
            cover = np.maximum(cover, alpha * shape_at(t - back))
    return cover


def _palette(rng: np.random.Generator, style: Style) -> tuple[np.ndarray, np.ndarray]:
    """The shape's colour [3] and a vertical background gradient [SIZE, SIZE, 3], drawn from ``rng``."""
    hue = (int(rng.integers(6)) / 6 + style.hue_offset + rng.uniform(-0.03, 0.03)) % 1.0
    colour = np.array(colorsys.hsv_to_rgb(hue, rng.uniform(0.7, 1.0), rng.uniform(0.85, 1.0)), np.float32)
    bg_hue = rng.uniform(0, 1)
    top = np.array(colorsys.hsv_to_rgb(bg_hue, rng.uniform(0.2, 0.5), rng.uniform(*style.background_value)))
    bottom = np.array(colorsys.hsv_to_rgb(bg_hue, rng.uniform(0.2, 0.5), rng.uniform(*style.background_value)))
    ramp = np.linspace(0, 1, SIZE, dtype=np.float32)[:, None, None]
    background = ((1 - ramp) * top + ramp * bottom).astype(np.float32) * np.ones((1, SIZE, 1), np.float32)
    return colour, background


def _flashing(centre: np.ndarray, r: float, offset: int) -> list[np.ndarray]:
    """A light on every third frame (from ``offset``): any 4 or 8 frames spread over the clip see both states."""
    glow = r * 1.8
    frames = []
    for t in range(FRAMES):
        on = (t + offset) % 3 == 0
        cover = _disc(centre[0], centre[1], glow) * (0.35 if on else 0.0) + _disc(centre[0], centre[1], r)
        level = 1.0 if on else 0.2
        frames.append(np.clip(cover, 0, 1)[..., None] * level)
    return frames


def render_clip(concept: str, rng: np.random.Generator, style: Style) -> np.ndarray:
    """One clip of ``concept`` as uint8 [FRAMES, SIZE, SIZE, 3]."""
    colour, background = _palette(rng, style)
    r = rng.uniform(*style.radius)
    speed = rng.uniform(*style.speed)
    centre = SIZE / 2 + rng.uniform(-6, 6, size=2)
    travel = speed * (FRAMES - 1)
    start = SIZE / 2 - travel / 2 + rng.uniform(-3, 3)  # centred sweep, kept inside the frame

    if concept in ("rising ball", "sliding triangle"):
        # Up for the ball; either way for the triangle (training flips frames horizontally, so left and
        # right must not be told apart).
        sign = -1.0 if concept == "rising ball" else float(rng.choice([-1.0, 1.0]))

        def shape_at(t: int) -> np.ndarray:
            pos = start + speed * t if sign > 0 else SIZE - start - speed * t
            if concept == "rising ball":
                return _disc(pos, centre[1], r)
            return _triangle(centre[0], pos, 2.0 * r)
    elif concept == "falling snow":
        count = int(rng.integers(10, 17))
        ys, xs = rng.uniform(0, SIZE, count), rng.uniform(0, SIZE, count)
        flake = rng.uniform(1.5, 2.5)

        def shape_at(t: int) -> np.ndarray:
            # Flakes wrap around from the bottom to the top, so the density stays constant.
            return np.maximum.reduce([_disc((y + speed * t) % SIZE, x, flake) for y, x in zip(ys, xs, strict=True)])
    elif concept == "growing square":
        small, large = rng.uniform(3.0, 6.0), rng.uniform(17.0, 22.0)

        def shape_at(t: int) -> np.ndarray:
            return _square_outline(centre[0], centre[1], small + (large - small) * t / (FRAMES - 1))
    elif concept == "scrolling stripes":
        period, angle = rng.uniform(12.0, 18.0), rng.uniform(-0.3, 0.3)
        yy, xx = _grid()
        across = xx * math.cos(angle) + yy * math.sin(angle)  # near-vertical stripes, moving sideways
        covers = [
            np.clip(2.0 * np.sin(2 * math.pi * (across - speed * t) / period), 0.0, 1.0)[..., None]
            for t in range(FRAMES)
        ]
        return _compose(background, colour, covers, rng)
    elif concept == "spinning bar":
        step = rng.uniform(0.35, 0.5) * float(rng.choice([-1.0, 1.0]))
        phase = rng.uniform(0, math.pi)
        length = rng.uniform(30.0, 44.0)

        def shape_at(t: int) -> np.ndarray:
            return _bar(centre[0], centre[1], phase + step * t, length)
    elif concept == "flashing light":
        return _compose(background, colour, _flashing(centre, r, int(rng.integers(3))), rng)
    else:
        raise ValueError(f"unknown demo concept {concept!r}")
    frames = [_with_trail(shape_at, t)[..., None] for t in range(FRAMES)]
    return _compose(background, colour, frames, rng)


def _compose(background: np.ndarray, colour: np.ndarray, covers: list[np.ndarray], rng: np.random.Generator):
    noise = rng.normal(0, 0.02, size=(FRAMES, SIZE, SIZE, 1)).astype(np.float32)
    clip = np.stack([(1 - c) * background + c * colour for c in covers]) + noise  # [T, H, W, 3]
    return (np.clip(clip, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_mp4(path: str | Path, frames: np.ndarray, fps: int = FPS, pix_fmt: str = "yuv420p") -> Path:
    """uint8 [T, H, W, 3] -> an H.264 mp4 that decord reads back.

    ``pix_fmt`` ``yuv420p`` (the common one) needs even sides; ``yuv444p`` takes any size; ``gray`` stores
    luma only.
    """
    import av  # imported here: only writing demo data needs PyAV

    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{path}: expected uint8 frames [T, H, W, 3], got {frames.dtype} {frames.shape}")
    t, h, w, _ = frames.shape
    if t == 0 or (pix_fmt == "yuv420p" and (h % 2 or w % 2)):
        raise ValueError(f"{path}: {pix_fmt} needs at least one frame (and even sides for yuv420p), got {frames.shape}")
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, pix_fmt
        # Near-lossless and deterministic: constant quality, one thread, and no x264 assembly, whose input
        # reads stray past the frame buffer and made the bytes (not the look) vary with the heap's contents.
        stream.options = {"crf": "18", "preset": "veryfast", "threads": "1", "x264-params": "asm=0"}
        for index, pixels in enumerate(frames):
            # Converted here rather than inside encode(), and with explicit timestamps (x264's rate control
            # uses them), so equal frames give equal bytes.
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pixels), format="rgb24").reformat(format=pix_fmt)
            frame.pts, frame.time_base = index, Fraction(1, fps)
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    return path


def make_demo_data(
    root: str | Path,
    seed: int = 0,
    train_per_concept: int = TRAIN_PER_CONCEPT,
    test_per_concept: int = TEST_PER_CONCEPT,
) -> None:
    """Write ``root/{train,test}/<concept>/<n>.mp4`` with a sound track ``<n>.wav`` beside each, the manifests
    ``root/train.jsonl``, ``root/test.jsonl`` and the paired manifests ``root/paired-{train,test}.jsonl``.

    Rows are ``{"path", "captions" (3 paraphrases), "label"}``; paired rows ``{"video", "audio", "captions",
    "label"}`` caption both ("a ball going up with a beeping sound", label "rising ball with beeping"). The
    sounds come from their own random stream: the video files are those of demo version 1. Item ``n`` of the
    ``c``-th concept gets sound ``(n + c) % 4``, so every (motion, sound) pair is about equally frequent.
    Same seed, same bytes.
    """
    root = Path(root)
    for split, style, count, split_seed in (
        ("train", TRAIN_STYLE, train_per_concept, 0),
        ("test", TEST_STYLE, test_per_concept, 1),
    ):
        rng = np.random.default_rng([seed, split_seed])
        sound_rng = np.random.default_rng([seed, split_seed, 0xA0D])
        rows, paired = [], []
        for c, (concept, captions) in enumerate(CAPTIONS.items()):
            folder = concept.replace(" ", "_")
            for n in range(count):
                rel = f"{split}/{folder}/{n:03d}.mp4"
                write_mp4(root / rel, render_clip(concept, rng, style))
                chosen = [captions[i] for i in sorted(rng.choice(len(captions), size=3, replace=False))]
                rows.append({"path": rel, "captions": chosen, "label": concept})
                sound = SOUNDS[(n + c) % len(SOUNDS)]
                wav = rel[: -len(".mp4")] + ".wav"
                write_wav(root / wav, render_sound(sound, sound_rng, shift=0.1 * split_seed))
                heard = [SOUND_CAPTIONS[sound][int(sound_rng.integers(3))] for _ in chosen]
                both = [f"{v} with {a}" for v, a in zip(chosen, heard, strict=True)]
                paired.append({"video": rel, "audio": wav, "captions": both, "label": f"{concept} with {sound}"})
        write_manifest(root / f"{split}.jsonl", rows)
        write_manifest(root / f"paired-{split}.jsonl", paired)
