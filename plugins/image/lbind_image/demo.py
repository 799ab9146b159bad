"""The procedural image demo dataset: simple coloured scenes (shapes, a sunset, stripes, a checkerboard, a
starry sky) that a sentence-embedding anchor tells apart, written as RGB PNG and JPEG files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from lbcore.image import DemoConcept, render_scene, write_image_demo

CONCEPTS = (
    DemoConcept(
        "red circle",
        (
            "a red circle on a plain background",
            "a round red disc",
            "a single red circle",
            "a red ball shape in the picture",
            "a bright red round dot",
        ),
    ),
    DemoConcept(
        "blue square",
        (
            "a blue square on a plain background",
            "a single blue square",
            "a blue box shape with four equal sides",
            "a solid blue square tile",
            "a square painted blue",
        ),
    ),
    DemoConcept(
        "green triangle",
        (
            "a green triangle on a plain background",
            "a single green triangle",
            "a green shape with three corners",
            "a solid green triangle pointing up",
            "a triangle painted green",
        ),
    ),
    DemoConcept(
        "sunset",
        (
            "a sunset sky fading from orange to purple",
            "the sun setting over the horizon",
            "an orange evening sky at sunset",
            "a warm sunset gradient",
            "a glowing sun going down at dusk",
        ),
    ),
    DemoConcept(
        "stripes",
        (
            "a pattern of parallel stripes",
            "a striped pattern in two colours",
            "colourful stripes across the picture",
            "evenly spaced straight stripes",
            "a texture of repeating bands",
        ),
    ),
    DemoConcept(
        "checkerboard",
        (
            "a black and white checkerboard",
            "a chessboard pattern of squares",
            "a checkered grid of dark and light tiles",
            "alternating black and white squares",
            "a checkerboard texture",
        ),
    ),
    DemoConcept(
        "starry night",
        (
            "a starry night sky",
            "small white stars on a dark blue sky",
            "stars shining in the night",
            "a dark sky full of stars",
            "the night sky with many tiny stars",
        ),
    ),
)


class _Canvas:
    """An RGB image in [0, 1] with soft-edged shape painting."""

    def __init__(self, rng: np.random.Generator, test: bool) -> None:
        lo, hi = (72, 97) if test else (64, 81)  # the test split uses other (larger) image sizes
        self.h, self.w = int(rng.integers(lo, hi)), int(rng.integers(lo, hi))
        self.y, self.x = np.mgrid[0 : self.h, 0 : self.w] / max(self.h, self.w)  # unit coordinates [H, W]
        # A pale, slightly tinted background with a gentle shading.
        tint = rng.uniform(0.6, 0.95, 3) if test else rng.uniform(0.55, 0.9, 3)
        shade = rng.uniform(-0.1, 0.1) * (self.y - 0.5)
        self.rgb = np.clip(tint[None, None] + shade[..., None], 0, 1)  # [H, W, 3]

    def soft(self, inside: np.ndarray) -> np.ndarray:
        """Signed distance (positive inside, unit coordinates) -> coverage in [0, 1] over about a pixel."""
        return np.clip(inside * max(self.h, self.w) + 0.5, 0, 1)

    def paint(self, mask: np.ndarray, colour: np.ndarray) -> None:
        self.rgb = self.rgb * (1 - mask[..., None]) + np.asarray(colour)[None, None] * mask[..., None]

    def finish(self, rng: np.random.Generator) -> np.ndarray:
        noisy = self.rgb + rng.normal(0, 0.02, self.rgb.shape)  # sensor noise
        return np.round(np.clip(noisy, 0, 1) * 255).astype(np.uint8)


def _jitter(rng: np.random.Generator, colour: tuple[float, float, float], amount: float = 0.08) -> np.ndarray:
    return np.clip(np.asarray(colour) + rng.uniform(-amount, amount, 3), 0, 1)


def _size(rng: np.random.Generator, test: bool) -> float:
    return rng.uniform(0.2, 0.32) if test else rng.uniform(0.15, 0.3)


def _circle(c: _Canvas, rng: np.random.Generator, test: bool) -> None:
    r = _size(rng, test)
    cy, cx = rng.uniform(r + 0.05, 0.95 - r), rng.uniform(r + 0.05, 0.95 - r)
    c.paint(c.soft(r - np.sqrt((c.y - cy) ** 2 + (c.x - cx) ** 2)), _jitter(rng, (0.85, 0.1, 0.1)))


def _square(c: _Canvas, rng: np.random.Generator, test: bool) -> None:
    half = _size(rng, test)
    cy, cx = rng.uniform(half + 0.05, 0.95 - half), rng.uniform(half + 0.05, 0.95 - half)
    angle = rng.uniform(-0.3, 0.3)  # a slight tilt, radians
    u = (c.x - cx) * np.cos(angle) + (c.y - cy) * np.sin(angle)
    v = -(c.x - cx) * np.sin(angle) + (c.y - cy) * np.cos(angle)
    c.paint(c.soft(half - np.maximum(np.abs(u), np.abs(v))), _jitter(rng, (0.1, 0.2, 0.85)))


def _triangle(c: _Canvas, rng: np.random.Generator, test: bool) -> None:
    half = _size(rng, test) * 1.2
    cy, cx = rng.uniform(half + 0.02, 0.98 - half), rng.uniform(half + 0.02, 0.98 - half)
    top, bottom = cy - half, cy + half * 0.8
    # Inside the upright triangle: below the apex, above the base and within both slanted sides.
    slope = (bottom - top) / half
    inside = np.minimum.reduce(
        [bottom - c.y, (c.y - top) / slope - (c.x - cx), (c.y - top) / slope + (c.x - cx)]
    ) / np.sqrt(1 + 1 / slope**2)
    c.paint(c.soft(np.minimum(inside, bottom - c.y)), _jitter(rng, (0.1, 0.7, 0.15)))


def _sunset(c: _Canvas, rng: np.random.Generator, test: bool) -> None:
    t = np.clip(c.y / c.y.max(), 0, 1)[..., None]  # 0 at the top, 1 at the bottom
    sky = _jitter(rng, (0.35, 0.15, 0.5)) * (1 - t) + _jitter(rng, (1.0, 0.55, 0.15)) * t
    c.rgb = sky
    horizon = rng.uniform(0.7, 0.85)
    cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.18)
    c.paint(c.soft(r - np.sqrt((c.y - horizon) ** 2 + (c.x - cx) ** 2)), _jitter(rng, (1.0, 0.85, 0.3), 0.05))
    c.paint(c.soft(c.y - horizon), _jitter(rng, (0.2, 0.1, 0.15), 0.05))  # dark ground below the horizon


def _stripes(c: _Canvas, rng: np.random.Generator, test: bool) -> None:
    angle = rng.uniform(0, np.pi)
    period = rng.uniform(0.1, 0.2) if test else rng.uniform(0.08, 0.18)
    phase = (c.x * np.cos(angle) + c.y * np.sin(angle)) / period + rng.uniform(0, 1)
    band = c.soft((np.abs((phase % 1.0) - 0.5) - 0.25) * period)  # half of every period
    first, second = rng.uniform(0, 1, 3), rng.uniform(0, 1, 3)
    second = np.where(np.abs(first - second).max() < 0.4, 1 - first, second)  # keep the two colours apart
    c.rgb = first[None, None] * (1 - band[..., None]) + second[None, None] * band[..., None]


def _checkerboard(c: _Canvas, rng: np.random.Generator, test: bool) -> None:
    cell = rng.uniform(0.1, 0.18) if test else rng.uniform(0.08, 0.16)
    oy, ox = rng.uniform(0, cell, 2)
    parity = (np.floor((c.y + oy) / cell) + np.floor((c.x + ox) / cell)) % 2  # [H, W] in {0, 1}
    dark, light = rng.uniform(0.0, 0.15), rng.uniform(0.85, 1.0)
    c.rgb = np.repeat((dark + (light - dark) * parity)[..., None], 3, axis=-1)


def _starry_night(c: _Canvas, rng: np.random.Generator, test: bool) -> None:
    t = (c.y / c.y.max())[..., None]
    c.rgb = _jitter(rng, (0.02, 0.04, 0.2), 0.03) * (1 - t) + _jitter(rng, (0.05, 0.1, 0.3), 0.03) * t
    for _ in range(int(rng.integers(25, 50) if test else rng.integers(20, 45))):
        sy, sx, r = rng.uniform(0, c.y.max()), rng.uniform(0, c.x.max()), rng.uniform(0.006, 0.015)
        c.paint(c.soft(r - np.sqrt((c.y - sy) ** 2 + (c.x - sx) ** 2)), _jitter(rng, (0.95, 0.95, 0.85), 0.05))


SCENES: dict[str, Callable[[_Canvas, np.random.Generator, bool], None]] = {
    "red circle": _circle,
    "blue square": _square,
    "green triangle": _triangle,
    "sunset": _sunset,
    "stripes": _stripes,
    "checkerboard": _checkerboard,
    "starry night": _starry_night,
}


def render(concept: DemoConcept, rng: np.random.Generator, test: bool) -> np.ndarray:
    """One scene of ``concept`` as a uint8 RGB image [H, W, 3]."""
    return render_scene(_Canvas(rng, test), SCENES[concept.label], rng, test)


def make_demo_data(root: Path, seed: int = 0) -> None:
    """Write the image demo dataset (7 classes, 40 train and 10 test images each) under ``root``; every third
    image is a JPEG, the rest PNG."""
    write_image_demo(
        root, CONCEPTS, render, seed=seed, counts={"train": 40, "test": 10}, suffixes=(".png", ".png", ".jpg")
    )
