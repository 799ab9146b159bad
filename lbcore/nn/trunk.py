"""The ViT trunk in the CLIP layout, built from timm blocks.

tokens [B, N, D] -> prepend class token -> + absolute position embedding -> token masking (training only,
class token kept) -> pre-LayerNorm -> timm Blocks (pre-norm, CLIP attention) -> [B, 1 + N', D].
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from timm.layers import PatchDropout, QuickGELU
from timm.models.vision_transformer import Block
from torch import nn
from torch.utils.checkpoint import checkpoint

from lbcore.config import EncoderConfig
from lbcore.nn.attention import CLIPAttention
from lbcore.nn.stem import resize_position_embedding

ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "quick_gelu": QuickGELU}


class ViTTrunk(nn.Module):
    def __init__(self, cfg: EncoderConfig, grid_size: Sequence[int], mask_ratio: float = 0.0) -> None:
        super().__init__()
        width = cfg.width
        self.width = width
        self.grid_size = tuple(int(g) for g in grid_size)
        num_patches = 1
        for g in self.grid_size:
            num_patches *= g
        scale = width**-0.5  # CLIP's initialisation of the class token and position embedding
        self.class_embedding = nn.Parameter(scale * torch.randn(width))
        self.position_embedding = nn.Parameter(scale * torch.randn(1 + num_patches, width))
        self.mask_ratio = mask_ratio
        # timm's PatchDropout is a no-op in eval mode and always keeps the class token (prefix token).
        self.patch_dropout = PatchDropout(mask_ratio, num_prefix_tokens=1) if mask_ratio > 0 else nn.Identity()
        norm = partial(nn.LayerNorm, eps=cfg.layer_norm_eps)
        self.pre_norm = norm(width)
        drop_path = torch.linspace(0, cfg.drop_path, cfg.depth, device="cpu").tolist()  # plain floats, also on meta
        self.blocks = nn.ModuleList(
            Block(
                width,
                cfg.heads,
                mlp_ratio=cfg.mlp_ratio,
                qkv_bias=True,
                proj_bias=True,
                drop_path=drop_path[i],
                act_layer=ACTIVATIONS[cfg.act],
                norm_layer=norm,
                attn_layer=CLIPAttention,
            )
            for i in range(cfg.depth)
        )
        self.grad_checkpointing = cfg.grad_checkpointing

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def add_class_and_position(self, tokens: torch.Tensor) -> torch.Tensor:
        """[B, N, D] -> [B, 1 + N, D] with the class token first and position embeddings added."""
        b, n, d = tokens.shape
        if n + 1 != self.position_embedding.shape[0]:
            raise ValueError(
                f"stem produced {n} patches but the position embedding holds {self.position_embedding.shape[0] - 1}"
                f" (grid {self.grid_size}); check the input size against the modality config"
            )
        cls = self.class_embedding.to(tokens.dtype).expand(b, 1, d)
        return torch.cat([cls, tokens], dim=1) + self.position_embedding.to(tokens.dtype)

    def run_block(self, block: nn.Module, x: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.add_class_and_position(tokens)
        x = self.patch_dropout(x)  # [B, 1 + N', D], N' = N * (1 - mask_ratio) when training
        x = self.pre_norm(x)
        for block in self.blocks:
            x = self.run_block(block, x)
        return x

    def resize_grid(self, new_grid: Sequence[int]) -> None:
        """Resize the position embedding in place to a new patch grid (bicubic; class token kept)."""
        new_grid = tuple(int(g) for g in new_grid)
        with torch.no_grad():
            resized = resize_position_embedding(self.position_embedding.data, new_grid, self.grid_size)
        # Keep a frozen position embedding frozen (LanguageBind never trains it).
        self.position_embedding = nn.Parameter(resized, requires_grad=self.position_embedding.requires_grad)
        self.grid_size = new_grid
