"""The GPU benchmark's code paths run on the CPU (tiny size, autocast off), and the optimiser is fused only on CUDA."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest
import torch

from lbcore.config import AnchorConfig, EncoderConfig, ModalityConfig
from lbcore.model import BindModel
from lbcore.nn import PatchStem2d, ViTEncoder
from lbcore.optim import build_optimizer

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.fixture()
def gpu_bench(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.syspath_prepend(str(BENCHMARKS))  # gpu.py imports its neighbour flops.py by name
    monkeypatch.delitem(sys.modules, "gpu", raising=False)
    import gpu

    return gpu


@pytest.mark.parametrize("index", [0, 1, 2], ids=["image-depth", "audio", "video"])
def test_gpu_benchmark_step_runs_on_the_cpu_at_a_tiny_size(gpu_bench: Any, index: int) -> None:
    if torch.cuda.is_available():
        pytest.skip("this test checks the CPU fallback; a GPU machine runs the benchmark itself")
    case = gpu_bench.CASES[index]
    args = argparse.Namespace(steps=1, warmup=1, channels_last=True)
    result = gpu_bench.run_case(case, args, compile_=False)
    assert result["sdpa_calls"] > 0  # attention went through F.scaled_dot_product_attention
    assert result["fused_adamw"] is False  # fused only on CUDA
    assert result["seconds"] > 0 and result["flops"] > 0
    # The FLOP count follows the tiny config: 2 layers of width 64, the preset's token masking.
    modality = gpu_bench.build_modality(case, tiny=True)
    assert modality.config.encoder.width == 64 and modality.config.encoder.depth == 2
    text = gpu_bench.render([result], 1e9, argparse.Namespace(steps=1, warmup=1), "CPU")
    assert "not a measurement" in text and result["case"] in text


def test_sdpa_counter_counts_the_encoders_attention(gpu_bench: Any) -> None:
    cfg = EncoderConfig(width=32, depth=3, heads=2, patch_size=8)
    encoder = ViTEncoder(PatchStem2d(3, 32, 8, (16, 16)), cfg, 16)
    with gpu_bench.SdpaCounter() as counter:
        encoder(torch.randn(2, 3, 16, 16))
    assert counter.calls == 3  # one per block
    assert torch.nn.functional.scaled_dot_product_attention is counter._original  # restored


class _Recorder:
    """Stands in for torch.optim.AdamW: records how the optimiser was asked for."""

    calls: ClassVar[list[dict[str, Any]]] = []

    def __init__(self, groups: Any, **kwargs: Any) -> None:
        self.groups = list(groups)
        _Recorder.calls.append(kwargs)


def _model() -> BindModel:
    class _Mod:
        name = "sig"
        config = ModalityConfig()

    encoder = ViTEncoder(PatchStem2d(3, 32, 8, (16, 16)), EncoderConfig(width=32, depth=1, heads=2, patch_size=8), 16)
    return BindModel(AnchorConfig(), {"sig": encoder}, {"sig": _Mod()}, anchor_fingerprint="0" * 64, embed_dim=16)  # type: ignore[dict-item]


@pytest.mark.parametrize(
    ("device", "fused"), [("cuda", True), (torch.device("cuda", 0), True), ("cpu", False), (None, False)]
)
def test_optimizer_builder_asks_for_fused_adamw_only_on_cuda(
    monkeypatch: pytest.MonkeyPatch, device: Any, fused: bool
) -> None:
    monkeypatch.setattr(torch.optim, "AdamW", _Recorder)
    _Recorder.calls = []
    optimizer = build_optimizer(_model(), device=device)  # None: the parameters' device (CPU here)
    assert _Recorder.calls == [{"fused": True}] if fused else _Recorder.calls == [{}]
    assert sum(len(g["params"]) for g in optimizer.groups) > 0
