"""Symmetric InfoNCE against the anchor, with negatives gathered across processes.

``accelerate``'s gather carries no gradient, so features are gathered with
``torch.distributed.nn.functional.all_gather``, whose backward sends each rank the gradient of its own slice.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [b, E] from every process in rank order -> [world * b, E], differentiably."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x), dim=0)


def contrastive_loss(
    features: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, gather: bool = True
) -> torch.Tensor:
    """(CE(s * X T^T) + CE(s * T X^T)) / 2 with the diagonal as labels; both inputs L2-normalised [B, E].

    ``logit_scale`` is the log of the temperature's inverse (s = exp(logit_scale)). With ``gather``, every
    process sees the global batch: its loss is the loss of the concatenated batch.
    """
    if gather:
        features = gather_with_grad(features)
        text = gather_with_grad(text)
    scale = logit_scale.exp()
    logits = scale * features @ text.t()  # [N, N]
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


class LogitScale(nn.Module):
    """A learnable log inverse temperature, initialised to log(1 / 0.07), clamped to at most log(100)."""

    def __init__(self, init: float = LOGIT_SCALE_INIT, max_value: float = LOGIT_SCALE_MAX) -> None:
        super().__init__()
        self.value = nn.Parameter(torch.tensor(float(init)))
        self.max_value = max_value

    @torch.no_grad()
    def clamp_(self) -> None:
        """Call after every optimizer step (LanguageBind clamps after each update)."""
        self.value.clamp_(0, self.max_value)

    def forward(self) -> torch.Tensor:
        return self.value
