"""The CLIP head: post-LayerNorm on the pooled token, then a bias-free projection into the anchor's space."""

from __future__ import annotations

import torch
from torch import nn


class ProjectionHead(nn.Module):
    def __init__(self, width: int, embed_dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(width, eps=eps)
        self.proj = nn.Linear(width, embed_dim, bias=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        # [B, width] -> [B, embed_dim]
        return self.proj(self.norm(pooled))
