"""The contrastive loss and the learnable temperature, against a float64 reference written from the formula."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp_mp
import torch.nn.functional as F

from lbcore.engine import gather_rows
from lbcore.loss import LOGIT_SCALE_INIT, LOGIT_SCALE_MAX, LogitScale, contrastive_loss, local_contrastive_loss


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


# ------------------------------------------------------------------------------ local loss, 2 gloo processes
def local_loss_worker(rank: int, world: int, init: str, out: str) -> None:
    torch.set_num_threads(1)
    torch.set_default_dtype(torch.float64)  # so that 1e-6 tests the algebra, not float32 summation order
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(8, 3, generator=g)  # the global batch; each process holds a slice
        t = F.normalize(torch.randn(8, 4, generator=g), dim=-1)
        report = {}
        for label, sizes in (("even", [4, 4]), ("uneven", [5, 3])):
            start, n = sum(sizes[:rank]), sizes[rank]
            for mode in ("global", "local"):
                torch.manual_seed(1)
                model = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 4))
                scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
                feats = F.normalize(model(x[start : start + n]), dim=-1)
                mine = t[start : start + n]
                all_f, all_t = gather_rows(feats, sizes), gather_rows(mine, sizes)
                if mode == "global":
                    loss = contrastive_loss(all_f, all_t, scale, gather=False)
                elif label == "even":
                    loss = contrastive_loss(feats, mine, scale, local=True)
                else:
                    loss = local_contrastive_loss(feats, mine, all_f, all_t, start, scale, world)
                loss.backward()  # DDP averages the Linear's gradients over the processes
                dist.all_reduce(scale.grad)
                mean_loss = loss.detach().clone()
                dist.all_reduce(mean_loss)
                grads = [p.grad for p in model.module.parameters()] + [scale.grad / world]
                report[f"{label}/{mode}"] = {"loss": float(mean_loss) / world, "grads": [gr.clone() for gr in grads]}
        if rank == 0:
            torch.save(report, out)
    finally:
        dist.destroy_process_group()


def one_process_reference() -> tuple[float, list[torch.Tensor]]:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, generator=g)
    t = F.normalize(torch.randn(8, 4, generator=g), dim=-1)
    torch.manual_seed(1)
    model = torch.nn.Linear(3, 4)
    scale = torch.nn.Parameter(torch.tensor(math.log(10.0)))
    feats = F.normalize(model(x), dim=-1)
    ref = reference_loss(feats.detach().double().numpy(), t.double().numpy(), 10.0)
    contrastive_loss(feats, t, scale, gather=False).backward()
    return ref, [p.grad for p in model.parameters()] + [scale.grad]


@pytest.mark.slow
def test_local_loss_gives_the_global_loss_and_gradients_over_two_processes(tmp_path) -> None:
    out = tmp_path / "report.pt"
    tmp_mp.spawn(local_loss_worker, args=(2, f"file://{tmp_path / 'rendezvous'}", str(out)), nprocs=2)
    report = torch.load(out)

    # Independent reference: one process, the whole batch, the formula above in float64.
    torch.set_default_dtype(torch.float64)
    try:
        reference = one_process_reference()
    finally:
        torch.set_default_dtype(torch.float32)
    ref, ref_grads = reference
    for key, got in report.items():
        assert got["loss"] == pytest.approx(ref, abs=1e-6), key
        for a, b in zip(got["grads"], ref_grads, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0, msg=key)
    for label in ("even", "uneven"):
        for a, b in zip(report[f"{label}/local"]["grads"], report[f"{label}/global"]["grads"], strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
