"""Symmetric InfoNCE against the anchor, with negatives gathered across processes.

``accelerate``'s gather carries no gradient, so features are gathered with
``torch.distributed.nn.functional.all_gather``, whose backward sends each rank the gradient of its own slice.
The global variant builds ``[N, N]`` logits on every process; the local variant (``local=True``,
:func:`local_contrastive_loss`) only each process's ``[b, N]`` rows, so its memory grows with ``b * N``.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.distributed.nn.functional import all_gather

LOGIT_SCALE_INIT = math.log(1 / 0.07)
LOGIT_SCALE_MAX = math.log(100.0)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` [b, E] from every process in rank order -> [world * b, E], differentiably."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return torch.cat(all_gather(x), dim=0)


def contrastive_loss(
    features: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    gather: bool = True,
    local: bool = False,
) -> torch.Tensor:
    """(CE(s * X T^T) + CE(s * T X^T)) / 2 with the diagonal as labels; both inputs L2-normalised [B, E].

    ``logit_scale`` is the log of the temperature's inverse (s = exp(logit_scale)). With ``gather``, every
    process sees the global batch: its loss is the loss of the concatenated batch, from ``[world*B, world*B]``
    logits. With ``local`` (processes holding equal batches), each process only builds the logits of its own
    rows against the gathered ones (``[B, world*B]`` both ways, see :func:`local_contrastive_loss`): the mean
    of the processes' losses is the global loss and the gradients, averaged over processes as DDP does, are
    the global loss's.
    """
    if local:
        rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
        all_features, all_text = gather_with_grad(features), gather_with_grad(text)
        world = all_features.shape[0] // max(features.shape[0], 1)
        offset = rank * features.shape[0]
        return local_contrastive_loss(features, text, all_features, all_text, offset, logit_scale, world)
    if gather:
        features = gather_with_grad(features)
        text = gather_with_grad(text)
    scale = logit_scale.exp()
    logits = scale * features @ text.t()  # [N, N]
    labels = torch.arange(logits.shape[0], device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.t(), labels)) / 2


def local_contrastive_loss(
    features: torch.Tensor,
    text: torch.Tensor,
    all_features: torch.Tensor,
    all_text: torch.Tensor,
    offset: int,
    logit_scale: torch.Tensor,
    world: int,
) -> torch.Tensor:
    """This process's share of the global contrastive loss, from ``[b, N]`` logits instead of ``[N, N]``.

    ``features``/``text`` [b, E] are this process's rows, ``all_features``/``all_text`` [N, E] every
    process's rows in rank order (gathered with gradient) with this process's at ``offset``. The rows of the
    global logits that are this process's are ``s * features @ all_text^T``, and the rows of the transposed
    logits are ``s * text @ all_features^T``; both have labels ``offset + i``. Returns the sum of those 2b
    cross-entropy terms times ``world / (2 N)``: summed over the ``world`` processes and divided by ``world``
    (their mean, which DDP's gradient averaging takes) it is the global loss, also when batches are uneven.
    """
    scale = logit_scale.exp()
    labels = torch.arange(offset, offset + features.shape[0], device=features.device)
    per_row = F.cross_entropy(scale * features @ all_text.t(), labels, reduction="sum")  # [b, N] logits
    per_col = F.cross_entropy(scale * text @ all_features.t(), labels, reduction="sum")  # [b, N] logits
    return (per_row + per_col) * world / (2 * all_features.shape[0])


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
