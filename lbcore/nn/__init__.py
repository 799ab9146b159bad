"""Shared building blocks: patch stems, the CLIP-layout ViT trunk (timm blocks), heads, encoders."""

from lbcore.nn.attention import CLIPAttention
from lbcore.nn.encoder import ViTEncoder
from lbcore.nn.head import ProjectionHead
from lbcore.nn.stem import PatchStem1d, PatchStem2d, resize_position_embedding
from lbcore.nn.trunk import ViTTrunk

__all__ = [
    "CLIPAttention",
    "PatchStem1d",
    "PatchStem2d",
    "ProjectionHead",
    "ViTEncoder",
    "ViTTrunk",
    "resize_position_embedding",
]
