"""Shared building blocks: patch stems, the CLIP-layout ViT trunk (timm blocks), heads, encoders, space-time mixing."""

from lbcore.nn.attention import CLIPAttention
from lbcore.nn.encoder import ViTEncoder
from lbcore.nn.head import ProjectionHead
from lbcore.nn.stem import PatchStem1d, PatchStem2d, resize_position_embedding
from lbcore.nn.temporal import SpaceTimeEncoder, SpaceTimeTrunk, temporal_lora_targets
from lbcore.nn.trunk import ViTTrunk

__all__ = [
    "CLIPAttention",
    "PatchStem1d",
    "PatchStem2d",
    "ProjectionHead",
    "SpaceTimeEncoder",
    "SpaceTimeTrunk",
    "ViTEncoder",
    "ViTTrunk",
    "resize_position_embedding",
    "temporal_lora_targets",
]
