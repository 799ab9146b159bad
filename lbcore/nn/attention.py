"""Multi-head self-attention with CLIP's separate q/k/v/out projections.

timm's default attention fuses q, k and v into one matrix; CLIP checkpoints and LanguageBind's LoRA
targets name them separately, so ours keeps them apart (peft can target ``q_proj`` ... ``out_proj``) and
plugs into timm's ``Block`` through its ``attn_layer`` argument. Attention itself runs through
``torch.nn.functional.scaled_dot_product_attention`` (fused kernels on GPU).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class CLIPAttention(nn.Module):
    def __init__(
        self,
        dim: int,
        num_heads: int = 8,
        qkv_bias: bool = True,
        proj_bias: bool = True,
        attn_drop: float = 0.0,
        proj_drop: float = 0.0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **_: Any,  # timm passes qk_norm/scale_norm/norm_layer, which CLIP does not use
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"width {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        # timm's Block passes device/dtype (e.g. "meta" for deferred init); honour them like its own layers do.
        dd: dict[str, Any] = {"device": device, "dtype": dtype}
        self.q_proj = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.k_proj = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.v_proj = nn.Linear(dim, dim, bias=qkv_bias, **dd)
        self.out_proj = nn.Linear(dim, dim, bias=proj_bias, **dd)
        self.attn_drop = attn_drop
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None, is_causal: bool = False) -> torch.Tensor:
        b, n, d = x.shape
        # [B, N, D] -> [B, heads, N, head_dim]
        q, k, v = (
            proj(x).view(b, n, self.num_heads, self.head_dim).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.attn_drop if self.training else 0.0, is_causal=is_causal
        )
        # [B, heads, N, head_dim] -> [B, N, D]
        out = out.transpose(1, 2).reshape(b, n, d)
        return self.proj_drop(self.out_proj(out))
