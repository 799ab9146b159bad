"""The contrastive loss and the learnable temperature, against a float64 reference written from the formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lbcore.engine import gather_rows
from lbcore.loss import LOGIT_SCALE_INIT, LOGIT_SCALE_MAX, LogitScale, contrastive_loss


def reference_loss(x: np.ndarray, t: np.ndarray, scale: float) -> float:
    """(CE(s X T^T) + CE(s T X^T)) / 2 with the diagonal as targets, one row at a time in float64."""
    logits = scale * x @ t.T
    n = logits.shape[0]

    def ce(m: np.ndarray) -> float:
        return float(np.mean([math.log(np.exp(m[i]).sum()) - m[i, i] for i in range(n)]))

    return (ce(logits) + ce(logits.T)) / 2


def test_loss_matches_the_formula() -> None:
    g = torch.Generator().manual_seed(0)
    x = F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    t = F.normalize(torch.randn(6, 5, generator=g), dim=-1)
    s = torch.tensor(math.log(20.0))
    got = contrastive_loss(x, t, s, gather=False).item()
    assert got == pytest.approx(reference_loss(x.double().numpy(), t.double().numpy(), 20.0), rel=1e-6)


def test_perfect_alignment_at_high_temperature_gives_near_zero_loss() -> None:
    x = torch.eye(4)
    assert contrastive_loss(x, x, torch.tensor(LOGIT_SCALE_MAX), gather=False).item() < 1e-6


def test_gradient_matches_finite_differences() -> None:
    g = torch.Generator().manual_seed(1)
    x = F.normalize(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=-1).requires_grad_(True)
    t = F.normalize(torch.randn(4, 3, generator=g, dtype=torch.float64), dim=-1)
    s = torch.tensor(1.5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: contrastive_loss(a, t, b, gather=False), (x, s))


def test_logit_scale_starts_at_1_over_0_07_and_clamps_at_100() -> None:
    scale = LogitScale()
    assert scale().item() == pytest.approx(math.log(1 / 0.07)) == pytest.approx(LOGIT_SCALE_INIT)
    with torch.no_grad():
        scale.value.fill_(math.log(250.0))
    scale.clamp_()
    assert scale().exp().item() == pytest.approx(100.0, rel=1e-6)


def test_single_process_gather_is_the_identity() -> None:
    x = torch.randn(3, 2)
    assert gather_rows(x, [3]) is x
