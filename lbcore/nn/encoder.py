"""A modality encoder: stem -> ViT trunk -> CLIP head on the class token."""

from __future__ import annotations

import torch
from torch import nn

from lbcore.config import EncoderConfig
from lbcore.nn.head import ProjectionHead
from lbcore.nn.trunk import ViTTrunk


class ViTEncoder(nn.Module):
    """Input batch -> embedding [B, embed_dim] (not normalised; :class:`lbcore.model.BindModel` normalises)."""

    def __init__(self, stem: nn.Module, cfg: EncoderConfig, embed_dim: int, mask_ratio: float = 0.0) -> None:
        super().__init__()
        self.stem = stem
        self.trunk = ViTTrunk(cfg, stem.grid_size, mask_ratio=mask_ratio)
        self.head = ProjectionHead(cfg.width, embed_dim, eps=cfg.layer_norm_eps)
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(x)  # [B, N, width]
        seq = self.trunk(tokens)  # [B, 1 + N', width]
        return self.head(seq[:, 0])  # class token -> [B, embed_dim]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The trunk's output tokens after the head's LayerNorm, class token first: [B, 1 + N, width] (what a
        caption decoder attends to, :mod:`lbcore.captioning`)."""
        return self.head.norm(self.trunk(self.stem(x)))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)
