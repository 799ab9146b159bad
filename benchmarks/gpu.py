"""The GPU training step: ViT-L/14 step time and MFU for image/depth, audio and 8-frame video.

Each case builds the modality's encoder from its plugin at the ``languagebind`` preset (ViT-L/14: width 1024,
depth 24, 16 heads, patch 14; the preset's token masking) and trains it through lbind's own step
(:class:`lbcore.engine.ContrastiveEngine`: caption lookup, encoder, InfoNCE, clipping, AdamW) with the GPU
code paths on:

* bf16 autocast (accelerate's ``mixed_precision="bf16"``; weights and optimiser state stay fp32);
* fused attention: ``lbcore.nn.attention`` calls ``F.scaled_dot_product_attention`` (flash / memory-efficient
  kernels on CUDA); the benchmark counts the calls and stops if a step makes none;
* fused AdamW (:func:`lbcore.optim.build_optimizer` with the CUDA device);
* channels-last input for the 2-D stems (``--channels-last``; the patch convolution is under 1 % of the FLOPs,
  so it rarely matters);
* ``torch.compile`` of the encoder (``--compile``; compile time is excluded: it happens in the warm-up steps).

MFU = analytic model FLOPs (``benchmarks/flops.py``; all weights trained, no LoRA) / median step time / the
bf16 matmul peak measured in the same run ([8192, 8192] matmuls). Without a GPU the same code paths run on the
CPU at a tiny size (width 64, depth 2, batch 2, 2 frames) with autocast off, fp32 peak: a check that they
run, not a measurement; the output says so.

    python benchmarks/gpu.py                     # on a GPU machine
    python benchmarks/gpu.py --compile --write   # also compiled, the table into benchmarks/RESULTS.md
    python benchmarks/gpu.py --quick             # fewer steps
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from flops import ViTShape, matmul_peak

HEADING = "## GPU training step"
EMBED_DIM = 768


@dataclass(frozen=True)
class Case:
    name: str
    plugin: str
    cls: str
    gpu_batch: int
    tiny: dict[str, Any]  # config overrides for the CPU check


TINY_ENCODER = {"encoder": {"width": 64, "depth": 2, "heads": 2, "patch_size": 14}}
CASES = (
    Case("image / depth", "depth", "DepthModality", 64, {**TINY_ENCODER, "image_size": 56}),
    Case("audio", "audio", "AudioModality", 32, {**TINY_ENCODER, "mel_bins": 28, "target_length": 56}),
    Case("video, 8 frames", "video", "VideoModality", 8, {**TINY_ENCODER, "image_size": 28, "num_frames": 2}),
)


def build_modality(case: Case, tiny: bool) -> Any:
    module = importlib.import_module(f"lbind_{case.plugin}.modality")
    cls = getattr(module, case.cls)
    return cls(cls.config_preset("languagebind", **(case.tiny if tiny else {})))


def shape_of(modality: Any, x: torch.Tensor) -> ViTShape:
    """The FLOP shape of one sample of ``x`` (a batch of this modality's preprocessed inputs)."""
    cfg = modality.config
    enc = cfg.encoder
    p = enc.patch_size
    frames = getattr(cfg, "num_frames", 1) if x.dim() == 5 else 1
    grid_h, grid_w = x.shape[-2] // p, x.shape[-1] // p
    return ViTShape(
        enc.width,
        enc.depth,
        enc.heads,
        grid_h * grid_w,
        x.shape[1] * p * p,
        embed_dim=EMBED_DIM,
        mlp_ratio=enc.mlp_ratio,
        frames=frames,
        extra_layers=enc.depth if frames > 1 else 0,
    )


class SdpaCounter:
    """Counts calls of ``F.scaled_dot_product_attention`` while active (the fused-attention path)."""

    def __init__(self) -> None:
        self.calls = 0
        self._original = F.scaled_dot_product_attention

    def __enter__(self) -> SdpaCounter:
        def counted(*args: Any, **kwargs: Any) -> torch.Tensor:
            self.calls += 1
            return self._original(*args, **kwargs)

        F.scaled_dot_product_attention = counted
        return self

    def __exit__(self, *exc: object) -> None:
        F.scaled_dot_product_attention = self._original


def build_step(
    case: Case, tiny: bool, compile_: bool, channels_last: bool
) -> tuple[Callable[[int], Any], float, Any, int, str]:
    """(one training step as a function of the step number, train FLOPs per step, the engine, the batch
    size, the case's label)."""
    from accelerate import Accelerator

    from lbcore.config import AnchorConfig
    from lbcore.data import Batch
    from lbcore.engine import ContrastiveEngine
    from lbcore.model import BindModel
    from lbcore.optim import build_optimizer

    cuda = torch.cuda.is_available()
    modality = build_modality(case, tiny)
    batch = 2 if tiny else case.gpu_batch
    torch.manual_seed(0)
    one = modality.preprocess(modality.example_input(seed=0))
    x = one.unsqueeze(0).repeat(batch, *[1] * one.dim()) + 0.01 * torch.randn(batch, *one.shape)
    if channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    if cuda:
        x = x.pin_memory()  # the engine copies the batch to the device every step, as a DataLoader's would be
    encoder = modality.build_encoder(EMBED_DIM)
    if compile_:
        encoder = torch.compile(encoder)
    acc = Accelerator(cpu=not cuda, mixed_precision="bf16" if cuda else "no")
    model = BindModel(
        AnchorConfig(), {modality.name: encoder}, {modality.name: modality}, anchor_fingerprint="0" * 64, embed_dim=EMBED_DIM
    )  # fmt: skip
    table = F.normalize(torch.randn(batch, EMBED_DIM), dim=-1)
    optimizer = build_optimizer(model, device=acc.device)
    engine = ContrastiveEngine(acc, model, {modality.name: table}, optimizer=optimizer, max_grad_norm=1.0)
    engine.train()
    ids = torch.arange(batch)
    flops = batch * shape_of(modality, x).train_flops(modality.config.mask_ratio)
    label = (
        case.name.replace("8 frames", f"{modality.config.num_frames} frames") if case.plugin == "video" else case.name
    )
    return (lambda step: engine.step({modality.name: [Batch(x, ids, ids)]}, step=step)), flops, engine, batch, label


def run_case(case: Case, args: argparse.Namespace, compile_: bool) -> dict[str, Any]:
    cuda = torch.cuda.is_available()
    step, flops, engine, batch, label = build_step(case, not cuda, compile_, args.channels_last)
    # The count needs eager steps: a compiled encoder would bake the counting wrapper into its graph.
    with SdpaCounter() if not compile_ else contextlib.nullcontext() as sdpa:
        for i in range(args.warmup):
            step(i)
    if sdpa is not None and sdpa.calls == 0:
        sys.exit(f"{case.name}: no call of F.scaled_dot_product_attention in a step")
    times = []
    for i in range(args.warmup, args.warmup + args.steps):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        step(i)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    optimizer = engine.optimizer.optimizer if hasattr(engine.optimizer, "optimizer") else engine.optimizer
    return {
        "case": label,
        "batch": batch,
        "compiled": compile_,
        "seconds": statistics.median(times),
        "flops": flops,
        "fused_adamw": bool(optimizer.defaults.get("fused")),
        "sdpa_calls": sdpa.calls if sdpa is not None else None,
        "peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
    }


def render(results: list[dict[str, Any]], peak: float, args: argparse.Namespace, device: str) -> str:
    cuda = torch.cuda.is_available()
    command = "python benchmarks/gpu.py " + " ".join(sys.argv[1:])
    precision = "bf16 autocast" if cuda else "fp32 (autocast off: CPU check)"
    lines = [
        HEADING,
        "",
        "lbind's training step (ContrastiveEngine) of each modality's `languagebind` encoder: "
        f"{'ViT-L/14' if cuda else 'a tiny ViT (width 64, depth 2) on the CPU'}, {precision}, SDPA attention, "
        f"{'fused ' if cuda else ''}AdamW, preset token masking, all weights trained. MFU: analytic model FLOPs "
        f"(benchmarks/flops.py) / median step / the {'bf16' if cuda else 'fp32'} matmul peak measured in this run "
        f"({peak / 1e12:.3g} TFLOP/s).",
        "",
        f"Command: `{command}`",
        "",
        f"Device: {device}, torch {torch.__version__}; {args.steps} timed steps after {args.warmup} warm-up steps.",
        "",
        "| case | batch | compiled | GFLOP / step | step (ms) | TFLOP/s | MFU | fused AdamW | SDPA calls / step | peak memory (MiB) |",
        "|---|---:|---|---:|---:|---:|---:|---|---:|---:|",
    ]
    for r in results:
        rate = r["flops"] / r["seconds"]
        mem = f"{r['peak_mib']:.0f}" if r["peak_mib"] is not None else "-"
        sdpa = f"{r['sdpa_calls'] / max(args.warmup, 1):.0f}" if r["sdpa_calls"] is not None else "(compiled)"
        lines.append(
            f"| {r['case']} | {r['batch']} | {'yes' if r['compiled'] else 'no'} | {r['flops'] / 1e9:.3g} | "
            f"{1000 * r['seconds']:.1f} | {rate / 1e12:.3g} | {100 * rate / peak:.0f} % | "
            f"{'yes' if r['fused_adamw'] else 'no'} | "
            f"{sdpa} | {mem} |"
        )
    lines.append("")
    if not cuda:
        lines += [
            "No GPU here: this is the CPU check of the same code paths at a tiny size (autocast off, AdamW not "
            "fused), not a measurement. Run `python benchmarks/gpu.py --compile --write` on a GPU machine for the "
            "ViT-L/14 numbers.",
            "",
        ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="Timed steps per case (median; default 10).")
    parser.add_argument("--warmup", type=int, default=3, help="Warm-up steps (compilation happens here; default 3).")
    parser.add_argument("--compile", action="store_true", help="Also run every case with torch.compile.")
    parser.add_argument("--channels-last", action="store_true", help="Channels-last input for the 2-D stems.")
    parser.add_argument("--quick", action="store_true", help="3 timed steps after 1 warm-up step.")
    parser.add_argument("--write", action="store_true", help="Write the table into benchmarks/RESULTS.md.")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.warmup = 3, 1
    cuda = torch.cuda.is_available()
    if cuda:
        torch.backends.cuda.matmul.allow_tf32 = True  # fp32 matmuls left outside autocast
        peak = matmul_peak(8192, 10, device="cuda", dtype=torch.bfloat16)
        device = torch.cuda.get_device_name()
    else:
        peak = matmul_peak(512, 5)
        device = f"CPU ({torch.get_num_threads()} torch threads), no GPU"
    print(f"{device}: matmul peak {peak / 1e12:.2f} TFLOP/s", flush=True)
    results = []
    for compile_ in [False, True] if args.compile else [False]:
        for case in CASES:
            result = run_case(case, args, compile_)
            print(f"{case.name:16s} compiled={compile_!s:5s} {1000 * result['seconds']:8.1f} ms/step", flush=True)
            results.append(result)
            if cuda:
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
    text = render(results, peak, args, device)
    print(text)
    if args.write:
        from resultsfile import replace_section

        print(f"wrote {replace_section(HEADING, text)}")


if __name__ == "__main__":
    main()
