"""Image-like preprocessing shared by every image-like modality: short-side resize, centre (or random)
crop, optional flip, per-channel normalisation; plus the stem that goes with it."""

from __future__ import annotations

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from lbcore.config import ImageConfig
from lbcore.nn import PatchStem2d

_INTERP = {
    "bicubic": InterpolationMode.BICUBIC,
    "bilinear": InterpolationMode.BILINEAR,
    "nearest": InterpolationMode.NEAREST,
}


def resize_crop_normalize(
    x: torch.Tensor, cfg: ImageConfig, train: bool = False, generator: torch.Generator | None = None
) -> torch.Tensor:
    """[C, H, W] (or [T, C, H, W]) float in [0, 1] -> resized so the short side is ``cfg.image_size``,
    cropped to a square (centre at eval; random position and horizontal flip when training), normalised."""
    size = cfg.image_size
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new_hw = [max(size, round(h * scale)), max(size, round(w * scale))]
    x = TF.resize(x, new_hw, interpolation=_INTERP[cfg.interpolation], antialias=cfg.antialias)
    if train:
        top = int(torch.randint(0, new_hw[0] - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, new_hw[1] - size + 1, (1,), generator=generator))
        x = x[..., top : top + size, left : left + size]
        if bool(torch.rand((), generator=generator) < 0.5):
            x = x.flip(-1)
    else:
        x = TF.center_crop(x, [size, size])
    mean = torch.tensor(cfg.mean, dtype=x.dtype).view(-1, 1, 1)
    std = torch.tensor(cfg.std, dtype=x.dtype).view(-1, 1, 1)
    return (x - mean) / std


def image_stem(cfg: ImageConfig) -> PatchStem2d:
    """The patch stem for a square ``image_size`` input with ``in_chans`` channels."""
    return PatchStem2d(cfg.in_chans, cfg.encoder.width, cfg.encoder.patch_size, (cfg.image_size, cfg.image_size))
