"""Image-like input shared by every image-like modality (RGB, depth, infrared, video frames).

Reading: :func:`read_image` turns a file into its raw pixel array (dtype kept: uint8, uint16 or float32) with
typed errors; :func:`to_rgb_float` turns any such array into a 3-channel float tensor in [0, 1].
Preprocessing: :func:`resize_crop_normalize` resizes the short side, crops a square (centre at eval; random
position and flip only when training) and normalises per channel. :func:`image_stem` is the matching stem.

Bounded cost: whatever the input's shape, the work after decoding is bounded by the output size. A file whose
header declares more than ``PIL.Image.MAX_IMAGE_PIXELS`` pixels (about 89 megapixels by default) is refused
before it is decoded, and an input longer than ``MAX_ASPECT_RATIO`` (4:1) is first centre-cropped to 4:1 along
its long side, so the resized intermediate is at most ``image_size x 4 * image_size`` per channel (a 1 x 100000
strip would otherwise become 224 x 22 400 000 pixels). Inputs up to 4:1 are resized exactly as before.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image, UnidentifiedImageError
from torchvision.transforms import InterpolationMode

from lbcore.config import ImageConfig, ModalityConfig
from lbcore.errors import ConfigError, InputError, check_media_file
from lbcore.manifest import write_manifest
from lbcore.modality import Modality
from lbcore.nn import PatchStem2d

log = logging.getLogger(__name__)

_INTERP = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm", ".pnm")
IMAGE_FORMATS = "an image file Pillow can read (PNG, JPEG, PGM, TIFF, ...)"
PIXEL_TYPES = "uint8, uint16, bool or float in [0, 1], shaped H x W or H x W x C with C in 1..4"

# The demo preset image-like plugins share: tiny and trained from scratch on a procedural demo set (no LoRA:
# there are no pretrained weights to adapt; no token masking, which only slows learning at 36 tokens).
IMAGE_DEMO_PRESET: dict[str, Any] = {
    "image_size": 48,
    "encoder": {"width": 64, "depth": 2, "heads": 4, "patch_size": 8},
    "mask_ratio": 0.0,
    "lora": {"rank": 0},
    "optim": {"lr": 2e-3, "weight_decay": 0.05, "warmup_steps": 10, "epochs": 20, "batch_size": 32},
}
MAX_ASPECT_RATIO = 4
"""Inputs longer than this (long side / short side) are centre-cropped to it before resizing (bounded memory)."""

# Modes Pillow hands back whose array is already what we want to return.
_DIRECT_MODES = {"L", "LA", "RGB", "RGBA", "F"}
_SIXTEEN_BIT_MODES = {"I;16", "I;16L", "I;16B", "I;16N"}


def is_path(item: Any) -> bool:
    """True for a str or os.PathLike (what preprocessors read from disk); False for arrays and tensors."""
    return isinstance(item, (str, os.PathLike))


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image file into its raw pixel array, keeping the bit depth.

    Returns ``H x W`` for single-channel images and ``H x W x C`` otherwise: grey (``L``) and 1-bit files
    as uint8 ``H x W``; grey + alpha as uint8 ``H x W x 2``; RGB / RGBA as uint8 ``H x W x 3 / 4``; palette
    files expanded to RGB (RGBA when the palette has transparency); 16-bit files (``I;16`` PNG, and
    Pillow's 32-bit ``I`` mode, which is how it widens 16-bit PGM/PNG data) as uint16 ``H x W``; 32-bit float
    (``F``) as float32; any other mode (CMYK, YCbCr, ...) converted to RGB. Only the first frame of
    multi-frame files is read.

    Raises :class:`InputError` naming the file when it is missing, empty, not an image, truncated or holds
    32-bit integers outside 0..65535.
    """
    path = Path(path)
    check_media_file(path, IMAGE_FORMATS)
    try:
        with Image.open(path) as img:
            _check_pixel_count(img, path)
            img.load()
            return _pixels(img, path)
    except UnidentifiedImageError as err:
        raise InputError(path, "not an image: Pillow cannot identify the file's format", IMAGE_FORMATS) from err
    except Image.DecompressionBombError as err:
        raise InputError(path, f"image too large to decode safely: {err}", IMAGE_FORMATS) from err
    except (OSError, SyntaxError, EOFError, ValueError) as err:
        # Pillow reports a cut-off file as OSError("image file is truncated ..."), a broken chunk as SyntaxError.
        raise InputError(path, f"truncated or corrupt image data ({err})", IMAGE_FORMATS) from err


def _check_pixel_count(img: Image.Image, path: Path) -> None:
    """Refuse, from the header alone, an image with more than ``Image.MAX_IMAGE_PIXELS`` pixels (Pillow only
    warns below twice that), so that a tiny file declaring huge dimensions is never decoded."""
    limit = Image.MAX_IMAGE_PIXELS
    width, height = img.size
    if limit is not None and width * height > limit:
        raise InputError(
            path,
            f"{width} x {height} pixels ({width * height:,}) is more than the {limit:,} lbind decodes",
            "an image of at most PIL.Image.MAX_IMAGE_PIXELS pixels",
        )


def _pixels(img: Image.Image, path: Path) -> np.ndarray:
    mode = img.mode
    if mode in _DIRECT_MODES:
        return np.array(img)
    if mode in _SIXTEEN_BIT_MODES:
        return np.array(img).astype(np.uint16)  # also turns big-endian I;16B into native order
    if mode == "I":
        arr = np.array(img)
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise InputError(
                path,
                f"32-bit integer pixels span {arr.min()}..{arr.max()}, beyond 16 bits",
                "8- or 16-bit integer pixels",
            )
        return arr.astype(np.uint16)
    if mode == "1":
        return np.array(img.convert("L"))
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or "transparency" in img.info
        return np.array(img.convert("RGBA" if has_alpha else "RGB"))
    log.debug("%s: converting Pillow mode %s to RGB", path, mode)
    return np.array(img.convert("RGB"))


def _unit_float(arr: np.ndarray, source: str | os.PathLike[str] | None) -> np.ndarray:
    """Pixels -> float32 in [0, 1]: uint8 / 255, uint16 / 65535, bool as 0/1, float checked to lie in [0, 1]."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if arr.dtype == np.bool_:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.isfinite(out).all():
            raise InputError(source, "float pixels include NaN or infinity", PIXEL_TYPES)
        lo, hi = float(out.min()), float(out.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(source, f"float pixels span {lo:g}..{hi:g}", PIXEL_TYPES)
        return out
    raise InputError(source, f"unsupported pixel type {arr.dtype}", PIXEL_TYPES)


def to_unit_float(arr: np.ndarray | torch.Tensor, source: str | os.PathLike[str] | None = None) -> torch.Tensor:
    """A pixel array (``H x W`` or ``H x W x C``, C in 1..4) -> float32 tensor [c, H, W] in [0, 1] with c = 1
    for grey (grey + alpha keeps the grey) and c = 3 for colour (alpha dropped); uint16 is scaled by 65535 and
    uint8 by 255. ``source`` names the file in errors. The tensor keeps the array's channels-last memory layout
    (not contiguous for colour): converting is one pass, and torch resizes such tensors faster, to the same
    values. Resizing the one grey channel and repeating it after (see :meth:`ImageLikeModality.preprocess`)
    gives the values :func:`to_rgb_float` + resizing gives, for a third of the work."""
    if isinstance(arr, torch.Tensor):
        arr = arr.detach().cpu().numpy()
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[:, :, None]  # [H, W] -> [H, W, 1]
    if arr.ndim != 3 or not 1 <= arr.shape[2] <= 4:
        raise InputError(source, f"pixel array of shape {tuple(arr.shape)}", PIXEL_TYPES)
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InputError(source, f"image with no pixels (shape {tuple(arr.shape)})", PIXEL_TYPES)
    colour = arr[:, :, :1] if arr.shape[2] <= 2 else arr[:, :, :3]  # drop alpha: [H, W, 1 or 3]
    if colour.dtype == np.uint8:
        # Straight to float in the pixels' own (channels-last) layout: one pass, no transposing copy, the
        # values numpy's uint8 / 255 gives (one IEEE division either way).
        return torch.from_numpy(np.ascontiguousarray(colour)).permute(2, 0, 1).float().div_(255.0)
    return torch.from_numpy(np.ascontiguousarray(_unit_float(colour, source))).permute(2, 0, 1)


def to_rgb_float(arr: np.ndarray | torch.Tensor, source: str | os.PathLike[str] | None = None) -> torch.Tensor:
    """A pixel array (``H x W`` or ``H x W x C``, C in 1..4) -> float32 tensor [3, H, W] in [0, 1].

    Grey is repeated to three channels, alpha is dropped (grey + alpha keeps the grey), uint16 is scaled by
    65535 and uint8 by 255. ``source`` names the file in errors.
    """
    x = to_unit_float(arr, source)
    return x.repeat(3, 1, 1) if x.shape[0] == 1 else x.contiguous()  # grey -> [3, H, W]


def load_unit(item: str | os.PathLike[str] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """A file path or a pixel array -> float32 tensor [1 or 3, H, W] in [0, 1] (see :func:`to_unit_float`)."""
    if is_path(item):
        return to_unit_float(read_image(item), source=item)
    return to_unit_float(item)


def load_rgb(item: str | os.PathLike[str] | np.ndarray | torch.Tensor) -> torch.Tensor:
    """A file path or a pixel array -> float32 tensor [3, H, W] in [0, 1] (see :func:`to_rgb_float`)."""
    if is_path(item):
        return to_rgb_float(read_image(item), source=item)
    return to_rgb_float(item)


def write_image(path: str | os.PathLike[str], arr: np.ndarray, quality: int = 95) -> Path:
    """Write a uint8 (grey, grey + alpha, RGB, RGBA) or uint16 single-channel array as PNG/JPEG/... by suffix.

    16-bit data is written as a 16-bit greyscale PNG; JPEG takes uint8 grey or RGB only.
    """
    path = Path(path)
    arr = np.asarray(arr)
    if arr.dtype == np.uint16:
        if arr.ndim != 2:
            raise ValueError(f"{path}: uint16 images must be single-channel H x W, got shape {arr.shape}")
        img = Image.fromarray(np.ascontiguousarray(arr))  # mode I;16
    elif arr.dtype == np.uint8:
        img = Image.fromarray(np.ascontiguousarray(arr))
    else:
        raise ValueError(f"{path}: write_image takes uint8 or uint16 arrays, got {arr.dtype}")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        img.save(path, quality=quality)
    else:
        img.save(path)
    return path


@dataclass(frozen=True)
class DemoConcept:
    """One class of a procedural demo dataset: its label (the zero-shot class name) and caption paraphrases."""

    label: str
    captions: tuple[str, ...]


DemoRenderer = Callable[[DemoConcept, np.random.Generator, bool], np.ndarray]


def render_scene(canvas: Any, draw: Callable[[Any, np.random.Generator, bool], None], rng: np.random.Generator,
                 test: bool) -> np.ndarray:  # fmt: skip
    """One procedural demo scene: ``draw(canvas, rng, test)``, then ``canvas.finish(rng)`` (the plugin's image
    [H, W] or [H, W, C]), mirrored left-right half of the time."""
    draw(canvas, rng, test)
    image = canvas.finish(rng)
    return image[:, ::-1].copy() if rng.random() < 0.5 else image


def write_image_demo(
    root: str | os.PathLike[str],
    concepts: Sequence[DemoConcept],
    render: DemoRenderer,
    seed: int = 0,
    counts: Mapping[str, int] | None = None,
    suffixes: Sequence[str] = (".png",),
    captions_per_item: int = 3,
) -> dict[str, Path]:
    """Write an image-like demo dataset: ``root/<split>/<label>_<i><suffix>`` plus ``root/<split>.jsonl``.

    ``render(concept, rng, test)`` draws one image (uint8 or uint16 array); ``test`` is True for the test
    split, which the renderer draws with other parameters than the training split. Every (split, concept)
    pair gets its own generator seeded from ``seed``, so the output depends on ``seed`` alone. Each item
    carries ``captions_per_item`` of its concept's paraphrases; item ``i`` is written with
    ``suffixes[i % len(suffixes)]``. Returns the manifests by split.
    """
    root = Path(root)
    counts = dict(counts or {"train": 40, "test": 10})
    manifests = {}
    for split_index, (split, count) in enumerate(counts.items()):
        is_test = split != "train"
        rows = []
        for concept_index, concept in enumerate(concepts):
            rng = np.random.default_rng([seed, split_index, concept_index])
            stem = concept.label.replace(" ", "_")
            for i in range(count):
                rel = f"{split}/{stem}_{i:03d}{suffixes[i % len(suffixes)]}"
                write_image(root / rel, render(concept, rng, is_test))
                picked = rng.choice(
                    len(concept.captions), size=min(captions_per_item, len(concept.captions)), replace=False
                )
                rows.append(
                    {"path": rel, "captions": [concept.captions[j] for j in sorted(picked)], "label": concept.label}
                )
        manifests[split] = write_manifest(root / f"{split}.jsonl", rows)
    return manifests


def limit_aspect(x: torch.Tensor, ratio: int = MAX_ASPECT_RATIO) -> torch.Tensor:
    """[..., H, W] -> the centre ``ratio : 1`` part along the long side when the input is longer than that;
    unchanged otherwise. (The square crop that follows keeps only the centre anyway.)"""
    h, w = x.shape[-2:]
    short = min(h, w)
    keep = short * ratio
    if max(h, w) <= keep:
        return x
    if h > w:
        top = (h - keep) // 2
        return x[..., top : top + keep, :]
    left = (w - keep) // 2
    return x[..., :, left : left + keep]


def resize_crop(
    x: torch.Tensor, cfg: ImageConfig, train: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """[C, H, W] (or [T, C, H, W]) float -> [..., size, size]: short side resized to ``cfg.image_size``
    (long side ``int(size * long / short)``, as torchvision's Resize) with ``cfg.interpolation`` and
    ``cfg.antialias``, then a centre crop at eval, or a random crop and a coin-flip horizontal flip when
    ``train``. A [T, C, H, W] stack gets one crop and one flip for all T. An input longer than
    ``MAX_ASPECT_RATIO`` : 1 is first centre-cropped to that ratio (see :func:`limit_aspect`), which bounds the
    resized intermediate by the output size."""
    size = cfg.image_size
    x = limit_aspect(x)
    x = TF.resize(x, [size], interpolation=_INTERP[cfg.interpolation], antialias=cfg.antialias)
    h, w = x.shape[-2:]
    if not train:
        return TF.center_crop(x, [size, size])
    top = int(torch.randint(0, h - size + 1, (1,), generator=generator))
    left = int(torch.randint(0, w - size + 1, (1,), generator=generator))
    x = x[..., top : top + size, left : left + size]
    if bool(torch.rand((), generator=generator) < 0.5):
        x = x.flip(-1)
    return x


def normalize(x: torch.Tensor, cfg: ImageConfig) -> torch.Tensor:
    """(x - mean) / std per channel; channels are dimension -3 of [C, H, W] or [T, C, H, W]."""
    channels = x.shape[-3]
    if len(cfg.mean) != channels or len(cfg.std) != channels:
        raise ConfigError(f"mean/std have {len(cfg.mean)}/{len(cfg.std)} entries but the input has {channels} channels")
    mean = torch.tensor(cfg.mean, dtype=x.dtype).view(-1, 1, 1)
    std = torch.tensor(cfg.std, dtype=x.dtype).view(-1, 1, 1)
    return (x - mean) / std


def resize_crop_normalize(
    x: torch.Tensor, cfg: ImageConfig, train: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """[C, H, W] (or [T, C, H, W]) float in [0, 1] -> resized so the short side is ``cfg.image_size``,
    cropped to a square (centre at eval; random position and horizontal flip when training), normalised."""
    return normalize(resize_crop(x, cfg, train=train, generator=generator), cfg)


def image_stem(cfg: ImageConfig) -> PatchStem2d:
    """The patch stem for a square ``image_size`` input with ``in_chans`` channels."""
    return PatchStem2d(cfg.in_chans, cfg.encoder.width, cfg.encoder.patch_size, (cfg.image_size, cfg.image_size))


class ImageLikeModality(Modality):
    """Base of image-like modalities: RGB preprocessing (:func:`load_rgb` then :func:`resize_crop_normalize`)
    and the square-crop patch stem. A plugin sets ``name``, ``Config`` (an :class:`ImageConfig`), ``presets``,
    ``templates`` and ``example_input``; it overrides :meth:`preprocess` when its pixels mean something else
    (depth in millimetres, video frames)."""

    Config = ImageConfig
    preprocessed_channels: ClassVar[int | None] = 3
    """Channels :meth:`preprocess` yields (RGB: 3), which ``in_chans`` must equal; None when the plugin's
    preprocessing follows ``in_chans`` itself."""

    @classmethod
    def config_problems(cls, config: ModalityConfig) -> list[str]:
        problems = super().config_problems(config)
        channels = cls.preprocessed_channels
        in_chans = getattr(config, "in_chans", None)
        if channels is not None and in_chans is not None and in_chans != channels:
            problems.append(f"in_chans is {in_chans}, but {cls.name} preprocessing yields {channels}-channel input")
        return problems

    def preprocess(self, item: Any, train: bool = False) -> torch.Tensor:
        """An image file or pixel array (H x W or H x W x C) -> [3, S, S].

        Equal to ``resize_crop_normalize(load_rgb(item), ...)``; a grey image is resized as one channel and
        repeated to three after the crop (resizing treats channels independently, so the values are the same)."""
        x = resize_crop(load_unit(item), self.config, train=train)  # [1 or 3, S, S]
        return normalize(x.expand(3, -1, -1) if x.shape[0] == 1 else x, self.config).contiguous()

    def build_stem(self) -> PatchStem2d:
        return image_stem(self.config)
