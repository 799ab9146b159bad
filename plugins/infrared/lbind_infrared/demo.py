"""The procedural infrared demo dataset: white-hot thermal scenes (warm bodies, hot engines and windows,
fire) over cool backgrounds, written as 8-bit greyscale PNG and JPEG files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from lbcore.image import DemoConcept, render_scene, write_image_demo

CONCEPTS = (
    DemoConcept(
        "person",
        (
            "a warm person standing in the dark",
            "a thermal image of a single person",
            "one person glowing with body heat",
            "a pedestrian walking alone at night",
            "a lone person seen by a thermal camera",
        ),
    ),
    DemoConcept(
        "car",
        (
            "a car with a hot engine and warm wheels",
            "a parked car seen by a thermal camera",
            "a car whose tyres glow with heat",
            "a car driving on the road at night",
            "a warm car on a cool street",
        ),
    ),
    DemoConcept(
        "dog",
        (
            "a dog walking on all fours",
            "a warm dog in a thermal image",
            "a dog glowing with body heat",
            "a dog standing sideways",
            "a dog with four legs and a tail",
        ),
    ),
    DemoConcept(
        "crowd",
        (
            "a crowd of people standing together",
            "a crowd of warm people",
            "a group of several pedestrians side by side",
            "many people in a thermal image",
            "a small crowd at night",
        ),
    ),
    DemoConcept(
        "building",
        (
            "a building with hot windows",
            "a building facade with warm glowing windows",
            "windows of a building leaking heat",
            "a thermal image of a building at night",
            "an apartment building with bright windows",
        ),
    ),
    DemoConcept(
        "empty road",
        (
            "an empty road with nothing warm on it",
            "a cool empty road at night",
            "an empty road with no people or cars",
            "a deserted road in a thermal image",
            "an empty cold street",
        ),
    ),
    DemoConcept(
        "fire",
        (
            "a hot campfire burning",
            "flames of a fire glowing bright",
            "a small fire in the dark",
            "a thermal image of a burning fire",
            "a bonfire giving off heat",
        ),
    ),
)


class _Canvas:
    """A temperature image in [0, 1] (white hot) with soft-edged shape painting."""

    def __init__(self, rng: np.random.Generator, test: bool) -> None:
        lo, hi = (72, 97) if test else (64, 81)  # the test split uses other (larger) image sizes
        self.h, self.w = int(rng.integers(lo, hi)), int(rng.integers(lo, hi))
        self.y, self.x = np.mgrid[0 : self.h, 0 : self.w] / max(self.h, self.w)  # unit coordinates [H, W]
        base = rng.uniform(0.12, 0.3) if test else rng.uniform(0.08, 0.25)
        slope = rng.uniform(-0.1, 0.1)
        waves = sum(
            rng.uniform(0.01, 0.03)
            * np.sin(rng.uniform(2, 8) * self.x + rng.uniform(2, 8) * self.y + rng.uniform(0, 6))
            for _ in range(3)
        )
        self.temp = base + slope * self.y + waves  # cool background with slow variation

    def ellipse(self, cy: float, cx: float, ry: float, rx: float, heat: float) -> None:
        d = np.sqrt(((self.y - cy) / ry) ** 2 + ((self.x - cx) / rx) ** 2)
        self.paint(np.clip((1.0 - d) * min(ry, rx) * 60, 0, 1), heat)

    def rect(self, top: float, left: float, bottom: float, right: float, heat: float) -> None:
        inside = np.minimum.reduce([self.y - top, bottom - self.y, self.x - left, right - self.x])
        self.paint(np.clip(inside * 60 + 0.5, 0, 1), heat)

    def paint(self, mask: np.ndarray, heat: float) -> None:
        self.temp = self.temp * (1 - mask) + heat * mask

    def finish(self, rng: np.random.Generator) -> np.ndarray:
        t = self.temp + rng.normal(0, 0.015, self.temp.shape)  # sensor noise
        return np.round(np.clip(t, 0, 1) * 255).astype(np.uint8)


def _figure(c: _Canvas, cx: float, feet: float, height: float, heat: float) -> None:
    """A standing person: head, torso, two legs."""
    c.ellipse(feet - 0.9 * height, cx, 0.07 * height, 0.06 * height, heat)
    c.rect(feet - 0.8 * height, cx - 0.11 * height, feet - 0.42 * height, cx + 0.11 * height, heat)
    for side in (-1, 1):
        c.rect(
            feet - 0.45 * height,
            cx + side * 0.06 * height - 0.035 * height,
            feet,
            cx + side * 0.06 * height + 0.035 * height,
            heat * 0.95,
        )


def _person(c: _Canvas, rng: np.random.Generator, test: bool) -> None:
    height = rng.uniform(0.55, 0.85) if test else rng.uniform(0.5, 0.8)
    _figure(c, rng.uniform(0.3, 0.7), rng.uniform(0.85, 0.98), height, rng.uniform(0.6, 0.8))


def _crowd(c: _Canvas, rng: np.random.Generator, test: bool) -> None:
    count = int(rng.integers(5, 9) if test else rng.integers(4, 9))
    for cx in np.sort(rng.uniform(0.08, 0.92, count)):
        _figure(c, cx, rng.uniform(0.75, 0.98), rng.uniform(0.25, 0.45), rng.uniform(0.6, 0.8))


def _car(c: _Canvas, rng: np.random.Generator, test: bool) -> None:
    width = rng.uniform(0.55, 0.8) if test else rng.uniform(0.5, 0.75)
    left, bottom = rng.uniform(0.05, 0.95 - width), rng.uniform(0.7, 0.85)
    body, cabin = 0.22 * width, 0.18 * width
    c.rect(bottom - body, left, bottom, left + width, rng.uniform(0.4, 0.55))  # body
    c.rect(bottom - body - cabin, left + 0.25 * width, bottom - body, left + 0.75 * width, rng.uniform(0.3, 0.4))
    front = left if rng.random() < 0.5 else left + 0.7 * width
    c.rect(bottom - body, front, bottom - 0.3 * body, front + 0.3 * width, rng.uniform(0.85, 1.0))  # engine
    for wx in (left + 0.2 * width, left + 0.8 * width):
        c.ellipse(bottom, wx, 0.1 * width, 0.1 * width, rng.uniform(0.8, 0.95))  # hot tyres


def _dog(c: _Canvas, rng: np.random.Generator, test: bool) -> None:
    size = rng.uniform(0.45, 0.65) if test else rng.uniform(0.4, 0.6)
    cx, feet = rng.uniform(0.35, 0.65), rng.uniform(0.8, 0.95)
    facing = 1 if rng.random() < 0.5 else -1
    heat = rng.uniform(0.75, 0.9)
    body_y = feet - 0.42 * size
    c.ellipse(body_y, cx, 0.13 * size, 0.36 * size, heat)  # body
    head_x, head_y = cx + facing * 0.4 * size, body_y - 0.22 * size
    c.ellipse(body_y - 0.1 * size, cx + facing * 0.3 * size, 0.12 * size, 0.07 * size, heat)  # neck
    c.ellipse(head_y, head_x, 0.1 * size, 0.1 * size, heat)  # head
    c.ellipse(head_y + 0.03 * size, head_x + facing * 0.12 * size, 0.045 * size, 0.08 * size, heat)  # snout
    c.ellipse(head_y - 0.1 * size, head_x - facing * 0.04 * size, 0.07 * size, 0.03 * size, heat * 0.9)  # ear
    c.ellipse(body_y - 0.12 * size, cx - facing * 0.42 * size, 0.12 * size, 0.03 * size, heat * 0.8)  # tail up
    for lx in (-0.28, -0.18, 0.18, 0.28):
        c.rect(body_y, cx + lx * size - 0.03 * size, feet, cx + lx * size + 0.03 * size, heat * 0.9)


def _building(c: _Canvas, rng: np.random.Generator, test: bool) -> None:
    top, left, right = rng.uniform(0.05, 0.3), rng.uniform(0.0, 0.2), rng.uniform(0.8, 1.0)
    c.rect(top, left, 1.1, right, rng.uniform(0.3, 0.4))  # facade
    rows, cols = int(rng.integers(3, 6)), int(rng.integers(3, 6))
    for i in range(rows):
        for j in range(cols):
            y0 = top + 0.05 + i * (0.9 - top) / rows
            x0 = left + 0.04 + j * (right - left) / cols
            hot = rng.random() < (0.6 if test else 0.5)
            heat = rng.uniform(0.8, 1.0) if hot else rng.uniform(0.45, 0.6)
            c.rect(y0, x0, y0 + 0.5 * (0.9 - top) / rows, x0 + 0.5 * (right - left) / cols, heat)


def _empty_road(c: _Canvas, rng: np.random.Generator, test: bool) -> None:
    horizon = rng.uniform(0.3, 0.5)
    vanish = rng.uniform(0.35, 0.65)
    below = np.clip((c.y - horizon) / (1 - horizon), 0, 1)
    road = np.abs(c.x - vanish) < below * rng.uniform(0.4, 0.6)
    c.paint(road * 0.7, c.temp.mean() + rng.uniform(0.04, 0.1))  # asphalt keeps a little heat


def _fire(c: _Canvas, rng: np.random.Generator, test: bool) -> None:
    cx, base = rng.uniform(0.35, 0.65), rng.uniform(0.75, 0.92)
    size = rng.uniform(0.3, 0.5) if test else rng.uniform(0.25, 0.45)
    glow = np.exp(-(((c.y - base + 0.3 * size) / size) ** 2 + ((c.x - cx) / (0.8 * size)) ** 2) * 2)
    c.paint(glow * 0.6, 0.65)  # the air and ground around a fire are warm too
    c.rect(base - 0.05 * size, cx - 0.4 * size, base + 0.05 * size, cx + 0.4 * size, 0.75)  # logs
    for _ in range(int(rng.integers(6, 12))):  # tongues of flame, hottest in the middle
        dx = rng.normal(0, 0.15) * size
        tall = rng.uniform(0.3, 1.0) * size
        c.ellipse(base - tall / 2, cx + dx, tall / 2, rng.uniform(0.08, 0.16) * size, rng.uniform(0.95, 1.0))


SCENES: dict[str, Callable[[_Canvas, np.random.Generator, bool], None]] = {
    "person": _person,
    "car": _car,
    "dog": _dog,
    "crowd": _crowd,
    "building": _building,
    "empty road": _empty_road,
    "fire": _fire,
}


def render(concept: DemoConcept, rng: np.random.Generator, test: bool) -> np.ndarray:
    """One white-hot scene of ``concept`` as a uint8 greyscale image [H, W]."""
    return render_scene(_Canvas(rng, test), SCENES[concept.label], rng, test)


def make_demo_data(root: Path, seed: int = 0) -> None:
    """Write the infrared demo dataset (7 classes, 40 train and 10 test images each) under ``root``; every
    third image is a JPEG, the rest PNG."""
    write_image_demo(
        root, CONCEPTS, render, seed=seed, counts={"train": 40, "test": 10}, suffixes=(".png", ".png", ".jpg")
    )
