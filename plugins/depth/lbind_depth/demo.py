"""The procedural depth demo dataset: small indoor scenes ray-cast through a pinhole camera, written as
16-bit millimetre PNGs with sensor-like noise and holes (0 = no reading)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from lbcore.image import DemoConcept, write_image_demo

CONCEPTS = (
    DemoConcept(
        "wall",
        (
            "a flat wall seen straight on",
            "a blank wall right in front of the camera",
            "a plain flat wall filling the whole view",
            "an empty wall facing the viewer",
            "a smooth flat wall up close",
        ),
    ),
    DemoConcept(
        "corridor",
        (
            "a long corridor stretching into the distance",
            "looking down a narrow corridor",
            "an empty corridor with walls on both sides",
            "a corridor seen from one end",
            "a long straight corridor in a building",
        ),
    ),
    DemoConcept(
        "staircase",
        (
            "a staircase rising away from the camera",
            "a flight of stairs going up",
            "the steps of a staircase climbing upwards",
            "looking up a staircase",
            "a set of stairs leading to the next floor",
        ),
    ),
    DemoConcept(
        "ball",
        (
            "a ball in front of a wall",
            "a round ball floating before a wall",
            "a single ball close to the camera",
            "a big ball with a wall behind it",
            "a ball hanging in the air in a room",
        ),
    ),
    DemoConcept(
        "open floor",
        (
            "an open floor sloping away into the distance",
            "a wide empty floor stretching far away",
            "a bare open floor seen from above",
            "an empty open floor with nothing on it",
            "the floor receding towards the horizon",
        ),
    ),
    DemoConcept(
        "table",
        (
            "a table standing in a room",
            "a table with four legs in front of a wall",
            "a small table on the floor of a room",
            "a room with a table in the middle",
            "a table seen from the front",
        ),
    ),
    DemoConcept(
        "doorway",
        (
            "an open doorway in a wall",
            "a doorway leading into another room",
            "a wall with an open door in it",
            "looking through a doorway",
            "a doorway with a room behind it",
        ),
    ),
)


class _Camera:
    """Pinhole camera at the origin: x right, y down, z forward; floor at y = height."""

    def __init__(self, rng: np.random.Generator, test: bool) -> None:
        lo, hi = (72, 97) if test else (64, 81)  # the test split uses other (larger) image sizes
        self.h, self.w = int(rng.integers(lo, hi)), int(rng.integers(lo, hi))
        focal = self.w * rng.uniform(0.7, 0.95)
        v, u = np.mgrid[0 : self.h, 0 : self.w] + 0.5
        rays = np.stack([(u - self.w / 2) / focal, (v - self.h / 2) / focal, np.ones_like(u)], axis=-1)  # [H, W, 3]
        self.camera_rays = rays  # camera frame, z = 1: the ray parameter t is the z-depth
        self.rays = rays
        self.height = rng.uniform(1.2, 1.6)

    def turn(self, pitch_deg: float, yaw_deg: float = 0.0) -> None:
        """Rotate the view: positive pitch looks down (y is down), positive yaw looks right."""
        p, y = np.radians(pitch_deg), np.radians(yaw_deg)
        pitch = np.array([[1, 0, 0], [0, np.cos(p), np.sin(p)], [0, -np.sin(p), np.cos(p)]])
        yaw = np.array([[np.cos(y), 0, np.sin(y)], [0, 1, 0], [-np.sin(y), 0, np.cos(y)]])
        self.rays = self.camera_rays @ (yaw @ pitch).T  # world-frame directions [H, W, 3]


def _plane(rays: np.ndarray, normal: tuple[float, float, float], offset: float) -> np.ndarray:
    """Ray parameter of the hit with {p : normal . p = offset}; inf where missed."""
    denom = rays @ np.asarray(normal, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = offset / denom
    return np.where(t > 1e-6, t, np.inf)


def _box(rays: np.ndarray, lo: tuple[float, ...], hi: tuple[float, ...]) -> np.ndarray:
    """Ray parameter of the entry into the axis-aligned box [lo, hi] (slab method); inf where missed."""
    r = np.where(np.abs(rays) < 1e-9, 1e-9, rays)
    t1, t2 = np.asarray(lo) / r, np.asarray(hi) / r  # [H, W, 3] each
    near, far = np.minimum(t1, t2).max(-1), np.maximum(t1, t2).min(-1)
    return np.where((far >= near) & (near > 1e-6), near, np.inf)


def _sphere(rays: np.ndarray, centre: tuple[float, float, float], radius: float) -> np.ndarray:
    c = np.asarray(centre)
    a = (rays * rays).sum(-1)
    b = rays @ c
    disc = b * b - a * (c @ c - radius * radius)
    t = (b - np.sqrt(np.maximum(disc, 0))) / a
    return np.where((disc >= 0) & (t > 1e-6), t, np.inf)


def _wall(cam: _Camera, rng: np.random.Generator, test: bool) -> list[np.ndarray]:
    cam.turn(rng.uniform(-8, 8), rng.uniform(-12, 12))
    dist = rng.uniform(1.0, 3.5) if test else rng.uniform(0.8, 4.5)
    return [_plane(cam.rays, (0, 0, 1), dist)]


def _corridor(cam: _Camera, rng: np.random.Generator, test: bool) -> list[np.ndarray]:
    cam.turn(rng.uniform(-5, 5), rng.uniform(-6, 6))
    width = rng.uniform(1.6, 2.6) if test else rng.uniform(1.2, 2.2)
    x = rng.uniform(-0.25, 0.25) * width
    end = rng.uniform(9, 15)
    return [
        _plane(cam.rays, (1, 0, 0), -width / 2 - x),
        _plane(cam.rays, (1, 0, 0), width / 2 - x),
        _plane(cam.rays, (0, 1, 0), cam.height),
        _plane(cam.rays, (0, 1, 0), cam.height - rng.uniform(2.4, 3.0)),
        _plane(cam.rays, (0, 0, 1), end),
    ]


def _staircase(cam: _Camera, rng: np.random.Generator, test: bool) -> list[np.ndarray]:
    cam.turn(-rng.uniform(5, 20), rng.uniform(-8, 8))
    start = rng.uniform(1.0, 2.0) if test else rng.uniform(0.6, 1.6)
    rise, run = rng.uniform(0.15, 0.2), rng.uniform(0.25, 0.35)
    half = rng.uniform(1.0, 2.5)
    count = int(rng.integers(8, 14))
    steps = [
        _box(cam.rays, (-half, cam.height - (k + 1) * rise, start + k * run), (half, cam.height, 30.0))
        for k in range(count)
    ]
    back = start + count * run + rng.uniform(0.5, 2.0)
    walls = [_plane(cam.rays, (1, 0, 0), -half), _plane(cam.rays, (1, 0, 0), half), _plane(cam.rays, (0, 0, 1), back)]
    return [*steps, *walls, _plane(cam.rays, (0, 1, 0), cam.height)]


def _ball(cam: _Camera, rng: np.random.Generator, test: bool) -> list[np.ndarray]:
    cam.turn(rng.uniform(-5, 5), rng.uniform(-8, 8))
    z = rng.uniform(1.3, 2.6) if test else rng.uniform(1.0, 2.2)
    radius = rng.uniform(0.2, 0.5) * z / 1.6
    centre = (rng.uniform(-0.3, 0.3) * z, rng.uniform(-0.2, 0.2) * z, z)
    return [_sphere(cam.rays, centre, radius), _plane(cam.rays, (0, 0, 1), z + rng.uniform(1.5, 4.0))]


def _open_floor(cam: _Camera, rng: np.random.Generator, test: bool) -> list[np.ndarray]:
    cam.turn(rng.uniform(15, 35) if test else rng.uniform(10, 30), rng.uniform(-15, 15))
    return [_plane(cam.rays, (0, 1, 0), cam.height)]  # no far wall: rays over the horizon get no reading


def _table(cam: _Camera, rng: np.random.Generator, test: bool) -> list[np.ndarray]:
    cam.turn(rng.uniform(15, 30), rng.uniform(-8, 8))
    z = rng.uniform(1.3, 2.3) if test else rng.uniform(1.0, 2.0)
    x, half_w, depth = rng.uniform(-0.3, 0.3), rng.uniform(0.5, 0.9), rng.uniform(0.6, 1.0)
    top = cam.height - rng.uniform(0.7, 0.8)
    parts = [_box(cam.rays, (x - half_w, top, z), (x + half_w, top + 0.05, z + depth))]
    for lx in (x - half_w, x + half_w - 0.06):
        for lz in (z, z + depth - 0.06):
            parts.append(_box(cam.rays, (lx, top, lz), (lx + 0.06, cam.height, lz + 0.06)))
    wall = z + depth + rng.uniform(1.0, 3.0)
    return [*parts, _plane(cam.rays, (0, 1, 0), cam.height), _plane(cam.rays, (0, 0, 1), wall)]


def _doorway(cam: _Camera, rng: np.random.Generator, test: bool) -> list[np.ndarray]:
    cam.turn(rng.uniform(-8, 3), rng.uniform(-8, 8))
    z = rng.uniform(1.8, 3.2) if test else rng.uniform(1.4, 2.8)
    x, half = rng.uniform(-0.4, 0.4), rng.uniform(0.4, 0.6)
    top = cam.height - rng.uniform(2.0, 2.2)
    thick = (z, z + 0.12)
    return [
        _box(cam.rays, (-20, -20, thick[0]), (x - half, cam.height, thick[1])),  # wall left of the door
        _box(cam.rays, (x + half, -20, thick[0]), (20, cam.height, thick[1])),  # right of it
        _box(cam.rays, (x - half, -20, thick[0]), (x + half, top, thick[1])),  # above it
        _plane(cam.rays, (0, 1, 0), cam.height),
        _plane(cam.rays, (0, 0, 1), z + rng.uniform(3.0, 6.0)),  # the far wall of the next room
    ]


SCENES: dict[str, Callable[[_Camera, np.random.Generator, bool], list[np.ndarray]]] = {
    "wall": _wall,
    "corridor": _corridor,
    "staircase": _staircase,
    "ball": _ball,
    "open floor": _open_floor,
    "table": _table,
    "doorway": _doorway,
}


def render(concept: DemoConcept, rng: np.random.Generator, test: bool) -> np.ndarray:
    """One scene of ``concept`` as a uint16 millimetre map [H, W] with noise and holes (0 = no reading)."""
    cam = _Camera(rng, test)
    depth = np.minimum.reduce(SCENES[concept.label](cam, rng, test))  # z-depth in metres [H, W]; inf = miss
    depth = depth * (1 + rng.normal(0, 0.004, depth.shape))  # range noise grows with distance, as on a sensor
    holes = (rng.random(depth.shape) < 0.01) | ~np.isfinite(depth) | (depth > 20.0)
    mm = np.where(holes, 0.0, np.round(depth * 1000.0))
    return mm.clip(0, 65535).astype(np.uint16)


def make_demo_data(root: Path, seed: int = 0) -> None:
    """Write the depth demo dataset (7 scene classes, 40 train and 10 test maps each) under ``root``."""
    write_image_demo(root, CONCEPTS, render, seed=seed, counts={"train": 40, "test": 10}, suffixes=(".png",))
