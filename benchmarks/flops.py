"""FLOP counts of a CLIP-layout ViT step, and the matmul peak of the machine they are compared with (MFU).

Counting (analytic, per sample; a multiply-add is 2 FLOPs; norms, activations, softmax and the optimiser are
left out, as is usual for model FLOPs utilisation):

* stem: a patch convolution = one matmul of [patches, C * p * p] x [C * p * p, width];
* each transformer layer, over ``tokens`` tokens (class token included, after token masking): q, k, v and out
  projections 4 * 2 * width^2 per token; MLP 2 * 2 * width * (mlp_ratio * width) per token; attention scores
  and the weighted sum 2 * 2 * tokens * width per token;
* head: one [width] x [width, embed_dim] matmul on the class token.

Training = forward + backward. Backward computes two matmuls for every forward one (gradient of the input and
of the weight), so a trained matmul costs 3x its forward FLOPs; the stem's input needs no gradient, so the stem
costs 2x. (Attention's two batched matmuls also need both gradients: 3x.)
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ViTShape:
    width: int
    depth: int
    heads: int
    patches: int  # patch tokens the stem makes per sample (per frame for video: see ``frames``)
    patch_pixels: int  # C * p * p (p * p * C for audio's 3 chunks too)
    embed_dim: int = 0  # 0: no projection head
    mlp_ratio: float = 4.0
    frames: int = 1  # video: frames per clip, each a ViT pass; temporal attention counted in ``extra_layers``
    extra_layers: int = 0  # layers of temporal attention (video): q/k/v/out + attention over ``frames``

    def forward_flops(self, mask_ratio: float = 0.0) -> dict[str, float]:
        """Forward FLOPs per sample by part: stem, trunk, head."""
        kept = 1 + int(self.patches * (1.0 - mask_ratio))  # class token + the patches token masking keeps
        w = self.width
        per_token = 4 * 2 * w * w + 2 * 2 * w * int(self.mlp_ratio * w) + 2 * 2 * kept * w
        trunk = self.depth * kept * per_token
        # Temporal attention (video): per layer, q/k/v/out on every token of every frame, attention over frames.
        temporal = self.extra_layers * kept * (4 * 2 * w * w + 2 * 2 * self.frames * w)
        return {
            "stem": float(self.frames * 2 * self.patches * self.patch_pixels * w),
            "trunk": float(self.frames * (trunk + temporal)),
            "head": float(2 * w * self.embed_dim),
        }

    def train_flops(self, mask_ratio: float = 0.0) -> float:
        """Forward + backward FLOPs per sample: 2x the stem, 3x the trunk and head (see the module docstring)."""
        f = self.forward_flops(mask_ratio)
        return 2 * f["stem"] + 3 * (f["trunk"] + f["head"])


def matmul_peak(
    n: int = 1024, repeats: int = 5, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
) -> float:
    """The best FLOP/s of ``repeats`` [n, n] x [n, n] matmuls (2 n^3 FLOPs each) with torch's current threads:
    what this machine's matmul reaches right now, the denominator of MFU."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.matmul(a, b, out=out)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if out.is_cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.matmul(a, b, out=out)
        if out.is_cuda:
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best
