"""Tokenizer-to-patch stems: a dense input -> patch tokens [B, N, width], with the patch grid they form."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from timm.layers import resample_abs_pos_embed
from torch import nn


class PatchStem2d(nn.Module):
    """Non-overlapping square patches of a [B, C, H, W] input through a bias-free Conv2d (CLIP layout)."""

    def __init__(self, in_chans: int, width: int, patch_size: int, input_size: Sequence[int]) -> None:
        super().__init__()
        h, w = int(input_size[0]), int(input_size[1])
        if h < patch_size or w < patch_size:
            raise ValueError(f"input {h}x{w} is smaller than one {patch_size}x{patch_size} patch")
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.input_size = (h, w)
        # Trailing rows/columns that do not fill a patch are dropped by the strided conv, as in CLIP.
        self.grid_size = (h // patch_size, w // patch_size)
        self.proj = nn.Conv2d(in_chans, width, kernel_size=patch_size, stride=patch_size, bias=False)

    @property
    def num_patches(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C, H, W] -> [B, width, gh, gw] -> [B, gh*gw, width]
        return self.proj(x).flatten(2).transpose(1, 2)


class PatchStem1d(nn.Module):
    """Non-overlapping windows of a [B, C, T] signal (IMU, EEG, tactile...) through a bias-free Conv1d."""

    def __init__(self, in_chans: int, width: int, patch_size: int, length: int) -> None:
        super().__init__()
        if length < patch_size:
            raise ValueError(f"signal of {length} steps is shorter than one patch of {patch_size}")
        self.in_chans = in_chans
        self.patch_size = patch_size
        self.input_size = (length,)
        # A 1-D signal is a 1 x (T / patch) grid, so the trunk's position embedding logic applies unchanged.
        self.grid_size = (1, length // patch_size)
        self.proj = nn.Conv1d(in_chans, width, kernel_size=patch_size, stride=patch_size, bias=False)

    @property
    def num_patches(self) -> int:
        return self.grid_size[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # [B, C, T] -> [B, width, T // patch] -> [B, T // patch, width]
        return self.proj(x).transpose(1, 2)


def resize_position_embedding(
    pos: torch.Tensor,
    new_grid: Sequence[int],
    old_grid: Sequence[int] | None = None,
    num_prefix_tokens: int = 1,
    antialias: bool = True,
) -> torch.Tensor:
    """Resize a [1 + N, D] (or [1, 1 + N, D]) absolute position embedding bicubically to a new grid.

    The class token's embedding is kept as is. ``old_grid`` defaults to a square grid. Antialiasing is on by
    default, as in LanguageBind's resize of the CLIP grid to the audio grid (16x16 -> 9x74 shrinks the mel
    axis) and OpenCLIP's ``resize_pos_embed``.
    """
    if pos.dim() not in (2, 3) or (pos.dim() == 3 and pos.shape[0] != 1):
        raise ValueError(f"position embedding must be [P + N, D] or [1, P + N, D], got {tuple(pos.shape)}")
    squeeze = pos.dim() == 2
    pos3 = pos.unsqueeze(0) if squeeze else pos  # [1, 1 + N, D]
    num_grid = pos3.shape[1] - num_prefix_tokens
    new = [int(g) for g in new_grid]
    if len(new) != 2 or min(new) < 1:
        raise ValueError(f"new grid must be two positive sizes (rows, columns), got {tuple(new_grid)}")
    if old_grid is None:
        side = math.isqrt(max(num_grid, 0))
        if side * side != num_grid:
            raise ValueError(f"{num_grid} grid positions do not form a square grid; pass old_grid")
        old = [side, side]
    else:
        old = [int(g) for g in old_grid]
        if len(old) != 2 or old[0] * old[1] != num_grid:
            raise ValueError(
                f"old grid {tuple(old_grid)} does not hold the {num_grid} positions of the embedding "
                f"({num_prefix_tokens} prefix token(s) excluded)"
            )
    if old == new:
        return pos
    out = resample_abs_pos_embed(
        pos3,
        new_size=new,
        old_size=old,
        num_prefix_tokens=num_prefix_tokens,
        interpolation="bicubic",
        antialias=antialias,
    )
    return out[0] if squeeze else out
