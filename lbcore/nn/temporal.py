"""Space-time pieces: a ViT trunk that mixes each token position across time, and the encoder around it.

The layout is LanguageBind's video tower (divided space-time attention in the TimeSformer manner, with
CLIP's spatial blocks untouched). Every frame of a clip runs through the spatial ViT; in every layer
``i`` the trunk first adds a learned temporal embedding ``[1, T, width]`` to every token (class token
included), then runs a pre-LayerNorm temporal self-attention across the ``T`` frames for each token
position (residual), then the usual spatial timm block. The clip embedding is the mean over frames of the
post-LayerNorm class tokens, then the projection.

Parameter names (spatial ones are exactly :class:`~lbcore.nn.ViTEncoder`'s, so an image tower's weights
load unchanged) and the LanguageBind (transformers ``CLIPModel``) keys they take::

    trunk.temporal_embedding[N]                <- vision_model.encoder.layers.N.temporal_embedding[0]
    trunk.temporal_norm.N.{weight,bias}        <- vision_model.encoder.layers.N.temporal_layer_norm1.*
    trunk.temporal_attn.N.{q,k,v,out}_proj.*   <- vision_model.encoder.layers.N.temporal_attn.{q,k,v,out}_proj.*
    trunk.blocks.N.norm1 / attn.{q,k,v,out}_proj / norm2 / mlp.fc1 / mlp.fc2
                                               <- ....layers.N.layer_norm1 / self_attn.* / layer_norm2 / mlp.*

LoRA on the temporal attention only targets the full module names ``trunk.temporal_attn.N.q_proj`` ...
(see :func:`temporal_lora_targets`): peft matches list entries as name suffixes, and a bare ``q_proj``
would also catch the spatial attention.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import torch
from torch import nn

from lbcore.config import EncoderConfig
from lbcore.nn.attention import CLIPAttention
from lbcore.nn.head import ProjectionHead
from lbcore.nn.trunk import ViTTrunk

TEMPORAL_ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "out_proj")


def temporal_lora_targets(depth: int, prefix: str = "trunk.") -> list[str]:
    """peft ``target_modules`` naming exactly the temporal attention's projections of ``depth`` layers."""
    return [f"{prefix}temporal_attn.{i}.{p}" for i in range(depth) for p in TEMPORAL_ATTENTION_PROJECTIONS]


def sample_shared_keep(
    num_clips: int,
    num_frames: int,
    num_patches: int,
    mask_ratio: float,
    device: torch.device | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Patch indices to keep, the same for every frame of a clip: [num_clips * num_frames, K], sorted.

    ``K = max(1, int(num_patches * (1 - mask_ratio)))`` (timm's PatchDropout count). Rows ``c * T .. c * T +
    T - 1`` belong to clip ``c``, matching the ``[B * T, ...]`` frame-major-within-clip layout of the trunk.
    """
    keep = max(1, int(num_patches * (1.0 - mask_ratio)))
    scores = torch.rand(num_clips, num_patches, device=device, generator=generator)
    per_clip = scores.argsort(dim=1)[:, :keep].sort(dim=1).values  # [B, K]
    return per_clip.repeat_interleave(num_frames, dim=0)  # [B * T, K]


def keep_tokens(x: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """[B*T, 1 + N, D] with patch indices [B*T, K] -> [B*T, 1 + K, D]; the class token (index 0) always stays."""
    d = x.shape[-1]
    patches = x[:, 1:].gather(1, keep.unsqueeze(-1).expand(-1, -1, d))  # [B*T, K, D]
    return torch.cat([x[:, :1], patches], dim=1)


class SpaceTimeTrunk(ViTTrunk):
    """:class:`ViTTrunk` with per-layer temporal embedding and temporal attention.

    Input: patch tokens ``[B * T, N, width]`` of ``B`` clips of ``T`` frames, the frames of one clip
    consecutive. Output: ``[B * T, 1 + N', width]`` (class token first; ``N' < N`` when masking in training).
    Token masking keeps the same patch positions in every frame of a clip (training only).
    """

    def __init__(self, cfg: EncoderConfig, grid_size: Sequence[int], num_frames: int, mask_ratio: float = 0.0) -> None:
        # The parent's per-sample PatchDropout would pick different patches per frame: build it disabled and
        # mask with one draw per clip instead.
        super().__init__(cfg, grid_size, mask_ratio=0.0)
        if num_frames < 1:
            raise ValueError(f"num_frames must be positive, got {num_frames}")
        self.mask_ratio = mask_ratio
        self.num_frames = num_frames
        width = cfg.width
        # One [T, width] table per layer, stacked into [depth, T, width]: a single parameter whose name ends in
        # "_embedding" (no weight decay, as LanguageBind). Zero: fresh, it leaves the image tower's tokens as they are.
        self.temporal_embedding = nn.Parameter(torch.zeros(cfg.depth, num_frames, width))
        self.temporal_norm = nn.ModuleList(nn.LayerNorm(width, eps=cfg.layer_norm_eps) for _ in range(cfg.depth))
        self.temporal_attn = nn.ModuleList(CLIPAttention(width, cfg.heads) for _ in range(cfg.depth))
        self.init_temporal_from_spatial()

    @torch.no_grad()
    def init_temporal_from_spatial(self) -> None:
        """Copy each layer's spatial pre-attention LayerNorm and attention into its temporal counterparts.

        LanguageBind's starting point. Call it again after loading image-tower weights into the spatial part.
        """
        for block, norm, attn in zip(self.blocks, self.temporal_norm, self.temporal_attn, strict=True):
            norm.load_state_dict(block.norm1.state_dict())
            attn.load_state_dict(block.attn.state_dict())

    def mask_tokens(self, x: torch.Tensor, num_frames: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Training-time token masking with positions shared across a clip's frames.

        [B*T, 1 + N, D] -> ([B*T, 1 + K, D], kept patch indices [B*T, K]); unchanged (and ``None``) at eval
        or with ``mask_ratio == 0``.
        """
        if not self.training or self.mask_ratio <= 0:
            return x, None
        bt, n1, _ = x.shape
        keep = sample_shared_keep(bt // num_frames, num_frames, n1 - 1, self.mask_ratio, device=x.device)
        return keep_tokens(x, keep), keep

    def temporal_mix(self, index: int, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """Layer ``index``'s temporal part: + temporal embedding, then x + attn(norm(x)) across frames.

        [B*T, N, D] -> [B*T, N, D]; attention runs over T for each (clip, token position) pair.
        """
        bt, n, d = x.shape
        b, t = bt // num_frames, num_frames
        emb = self.temporal_embedding[index].to(x.dtype)  # [T, D]
        x = x.reshape(b, t, n, d) + emb.view(1, t, 1, d)  # [B, T, N, D]
        seq = x.transpose(1, 2).reshape(b * n, t, d)  # [B*N, T, D]: one sequence per token position
        seq = seq + self.temporal_attn[index](self.temporal_norm[index](seq))
        return seq.view(b, n, t, d).transpose(1, 2).reshape(bt, n, d)  # back to [B*T, N, D]

    def layer(self, index: int, x: torch.Tensor, num_frames: int) -> torch.Tensor:
        """One space-time layer: temporal mixing, then the spatial block. [B*T, N, D] -> [B*T, N, D]."""
        return self.blocks[index](self.temporal_mix(index, x, num_frames))

    def forward(self, tokens: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:
        t = self.num_frames if num_frames is None else num_frames
        if t != self.num_frames:
            raise ValueError(f"the trunk was built for {self.num_frames} frames per clip, got {t}")
        if tokens.shape[0] % t:
            raise ValueError(f"{tokens.shape[0]} frame sequences do not split into clips of {t} frames")
        x = self.add_class_and_position(tokens)  # [B*T, 1 + N, D]
        x, _ = self.mask_tokens(x, t)  # [B*T, 1 + N', D]
        x = self.pre_norm(x)
        for i in range(len(self.blocks)):
            # run_block checkpoints the whole space-time layer when gradient checkpointing is on.
            x = self.run_block(partial(self.layer, i, num_frames=t), x)
        return x


class SpaceTimeEncoder(nn.Module):
    """Clips [B, C, T, ...] -> embedding [B, embed_dim] (not normalised).

    Each frame ``[C, ...]`` goes through ``stem`` (any stem producing ``[B*T, N, width]`` with a
    ``grid_size``), the :class:`SpaceTimeTrunk`, and the CLIP head's post-LayerNorm on its class token;
    the normalised class tokens are averaged over frames and then projected.
    """

    def __init__(
        self, stem: nn.Module, cfg: EncoderConfig, embed_dim: int, num_frames: int, mask_ratio: float = 0.0
    ) -> None:
        super().__init__()
        self.stem = stem
        self.trunk = SpaceTimeTrunk(cfg, stem.grid_size, num_frames, mask_ratio=mask_ratio)
        self.head = ProjectionHead(cfg.width, embed_dim, eps=cfg.layer_norm_eps)
        self.embed_dim = embed_dim
        self.num_frames = num_frames

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 4 or x.shape[2] != self.num_frames:
            raise ValueError(
                f"expected clips shaped [B, C, {self.num_frames}, ...] (frames on dim 2), got {tuple(x.shape)}"
            )
        b, c, t = x.shape[:3]
        frames = x.transpose(1, 2).reshape(b * t, c, *x.shape[3:])  # [B, C, T, ...] -> [B*T, C, ...]
        seq = self.trunk(self.stem(frames), t)  # [B*T, 1 + N', width]
        cls = self.head.norm(seq[:, 0]).view(b, t, -1)  # post-LayerNorm per frame: [B, T, width]
        return self.head.proj(cls.mean(dim=1))  # mean over frames, then project: [B, embed_dim]

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Every frame's output tokens after the head's LayerNorm, frame by frame (each frame's class token
        first): [B, T * (1 + N), width] (what a caption decoder attends to, :mod:`lbcore.captioning`)."""
        b, t = x.shape[0], x.shape[2]
        frames = x.transpose(1, 2).reshape(b * t, x.shape[1], *x.shape[3:])
        seq = self.head.norm(self.trunk(self.stem(frames), t))  # [B*T, 1 + N, width]
        return seq.reshape(b, t * seq.shape[1], seq.shape[2])

    def init_temporal_from_spatial(self) -> None:
        self.trunk.init_temporal_from_spatial()

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.trunk.set_grad_checkpointing(enable)
