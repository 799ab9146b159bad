"""The encoder part of benchmarks/train_step.py: lbind's ViT step against transformers' and timm's, with MFU.

Every variant trains the same shape (default: width 384, depth 6, 6 heads, MLP 4x, patch 16, 224 px, batch
16, fp32) on the same input, forward + backward (loss: mean square of the output), in this one process,
variants interleaved step by step in every round, their order rotated per round. Each round also measures
the fp32 matmul peak (best of a few [1024, 1024] matmuls); MFU per round = model FLOPs / step time / that
round's peak; tables show the median over rounds.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from flops import ViTShape, matmul_peak

HEADING = "## Training step: encoder and MFU"


@dataclass(frozen=True)
class Spec:
    width: int = 384
    depth: int = 6
    heads: int = 6
    image: int = 224
    patch: int = 16
    batch: int = 16

    def shape(self, head: bool) -> ViTShape:
        patches = (self.image // self.patch) ** 2
        return ViTShape(
            self.width, self.depth, self.heads, patches, 3 * self.patch**2, embed_dim=self.width if head else 0
        )


def lbind_encoder(spec: Spec, mask_ratio: float = 0.0) -> torch.nn.Module:
    from lbcore.config import EncoderConfig
    from lbcore.nn import PatchStem2d, ViTEncoder

    cfg = EncoderConfig(width=spec.width, depth=spec.depth, heads=spec.heads, patch_size=spec.patch)
    stem = PatchStem2d(3, spec.width, spec.patch, (spec.image, spec.image))
    return ViTEncoder(stem, cfg, spec.width, mask_ratio=mask_ratio)


Forward = Callable[[torch.Tensor], torch.Tensor]


def clip_encoder(spec: Spec) -> tuple[torch.nn.Module, Forward]:
    from transformers import CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=spec.width,
        intermediate_size=4 * spec.width,
        num_hidden_layers=spec.depth,
        num_attention_heads=spec.heads,
        image_size=spec.image,
        patch_size=spec.patch,
        hidden_act="gelu",
        attn_implementation="sdpa",
    )
    model = CLIPVisionModel(config)
    if model.config._attn_implementation != "sdpa":
        raise RuntimeError(f"transformers chose {model.config._attn_implementation!r} attention, not SDPA")
    return model, lambda x: model(pixel_values=x).pooler_output


def timm_encoder(spec: Spec) -> tuple[torch.nn.Module, Forward]:
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=spec.image,
        patch_size=spec.patch,
        embed_dim=spec.width,
        depth=spec.depth,
        num_heads=spec.heads,
        mlp_ratio=4.0,
        num_classes=0,
        global_pool="token",
    )
    return model, model


def encoder_step(encoder: tuple[torch.nn.Module, Forward], x: torch.Tensor) -> None:
    """Forward + backward of one batch; gradients dropped after."""
    module, forward = encoder
    module.train()
    forward(x).float().square().mean().backward()
    for p in module.parameters():
        p.grad = None


def whole_step(spec: Spec, mask_ratio: float) -> Callable[[int], None]:
    """lbind's training step (ContrastiveEngine: caption lookup, encoder, InfoNCE, clipping, AdamW) on one
    fixed batch."""
    import torch.nn.functional as F
    from accelerate import Accelerator

    from lbcore.config import AnchorConfig, ModalityConfig
    from lbcore.data import Batch
    from lbcore.engine import ContrastiveEngine
    from lbcore.model import BindModel
    from lbcore.optim import build_optimizer

    encoder = lbind_encoder(spec, mask_ratio)

    class _Mod:  # the few attributes BindModel and the optimiser read
        name = "bench"
        config = ModalityConfig()

    model = BindModel(AnchorConfig(), {"bench": encoder}, {"bench": _Mod()}, anchor_fingerprint="0" * 64, embed_dim=spec.width)  # type: ignore[dict-item]  # fmt: skip
    acc = Accelerator(cpu=True)
    table = F.normalize(torch.randn(spec.batch, spec.width, generator=torch.Generator().manual_seed(1)), dim=-1)
    engine = ContrastiveEngine(acc, model, {"bench": table}, optimizer=build_optimizer(model), max_grad_norm=1.0)
    engine.train()
    x = torch.randn(spec.batch, 3, spec.image, spec.image, generator=torch.Generator().manual_seed(0))
    ids = torch.arange(spec.batch)
    return lambda step: engine.step({"bench": [Batch(x, ids, ids)]}, step=step)


def variants(spec: Spec) -> dict[str, tuple[Callable[[int], None], float]]:
    """name -> (one step as a function of the step number, train FLOPs per step)."""
    torch.manual_seed(0)
    x = torch.randn(spec.batch, 3, spec.image, spec.image, generator=torch.Generator().manual_seed(0))
    plain, masked = lbind_encoder(spec), lbind_encoder(spec, 0.5)
    lbind, lbind_masked = (plain, plain), (masked, masked)
    clip, vit = clip_encoder(spec), timm_encoder(spec)
    with_head, without = spec.shape(head=True), spec.shape(head=False)
    n = spec.batch
    return {
        "lbind ViTEncoder": (lambda i: encoder_step(lbind, x), n * with_head.train_flops()),
        "transformers CLIPVisionModel (sdpa)": (lambda i: encoder_step(clip, x), n * without.train_flops()),
        "timm VisionTransformer": (lambda i: encoder_step(vit, x), n * without.train_flops()),
        "lbind ViTEncoder, mask 0.5": (lambda i: encoder_step(lbind_masked, x), n * with_head.train_flops(0.5)),
        "lbind whole step": (whole_step(spec, 0.0), n * with_head.train_flops()),
        "lbind whole step, mask 0.5": (whole_step(spec, 0.5), n * with_head.train_flops(0.5)),
    }


def measure(spec: Spec, rounds: int, warmup: int = 1) -> dict[str, Any]:
    """Seconds per step and MFU per round for every variant, and the peaks."""
    table = variants(spec)
    names = list(table)
    for name in names:
        for i in range(warmup):
            table[name][0](i)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    peaks: list[float] = []
    for r in range(rounds):
        peak = matmul_peak()
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            start = time.perf_counter()
            table[name][0](warmup + r)
            seconds[name].append(time.perf_counter() - start)
        peak = max(peak, matmul_peak())  # the round's best, measured before and after its steps
        peaks.append(peak)
        print(f"round {r + 1}/{rounds}: peak {peak / 1e9:.1f} GFLOP/s; " + ", ".join(
            f"{n} {seconds[n][-1]:.2f} s" for n in names), flush=True)  # fmt: skip
    mfu = {n: [table[n][1] / s / p for s, p in zip(seconds[n], peaks, strict=True)] for n in names}
    return {"names": names, "flops": {n: table[n][1] for n in names}, "seconds": seconds, "mfu": mfu, "peaks": peaks}


def render(result: dict[str, Any], spec: Spec, rounds: int, command: str, machine: str, quick: bool) -> str:
    seconds = {n: statistics.median(v) for n, v in result["seconds"].items()}
    fastest_other = min(seconds["transformers CLIPVisionModel (sdpa)"], seconds["timm VisionTransformer"])
    unmasked = seconds["lbind ViTEncoder"]
    lines = [
        HEADING,
        "",
        f"A ViT of width {spec.width}, depth {spec.depth}, {spec.heads} heads, patch {spec.patch}, {spec.image} px, "
        f"batch {spec.batch}, fp32, forward + backward (loss: mean square of the output; the whole step: caption "
        "lookup, encoder, InfoNCE, gradient clipping, AdamW), variants interleaved step by step in one process, "
        f"medians of {rounds} round(s). MFU: analytic model FLOPs (benchmarks/flops.py: matmuls only, backward = "
        "2x forward, the stem's input gradient not needed) / step time / the fp32 matmul peak of a [1024, 1024] "
        "matmul measured in the same round. CLIP and timm have no projection head (lbind's is 0.1 % of the FLOPs).",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}; matmul peak median {statistics.median(result['peaks']) / 1e9:.1f} GFLOP/s "
        f"(best {max(result['peaks']) / 1e9:.1f}).",
        "",
        "| variant | GFLOP per step | step (s) | GFLOP/s | MFU | vs lbind encoder |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for name in result["names"]:
        s, f = seconds[name], result["flops"][name]
        lines.append(
            f"| {name} | {f / 1e9:.0f} | {s:.2f} | {f / s / 1e9:.1f} | "
            f"{100 * statistics.median(result['mfu'][name]):.0f} % | {unmasked / s:.2f}x |"
        )
    lines += [
        "",
        f"- lbind's encoder step against the faster of transformers and timm: {fastest_other / unmasked:.2f}x "
        "(above 1: lbind is faster).",
        f"- Token masking 0.5: encoder step {unmasked / seconds['lbind ViTEncoder, mask 0.5']:.2f}x faster, whole "
        f"step {seconds['lbind whole step'] / seconds['lbind whole step, mask 0.5']:.2f}x faster.",
        f"- Whole step against the encoder alone: {seconds['lbind whole step'] / unmasked:.2f}x the time "
        "(the loss, clipping and AdamW on top).",
        "",
    ]
    if quick:
        lines += [
            "This is a --quick smoke run taken while other jobs loaded the machine: it shows that the benchmark "
            "runs, not the speeds. Take the numbers on a quiet machine with `python benchmarks/train_step.py "
            "--parts encoder --write`.",
            "",
        ]
    return "\n".join(lines)
