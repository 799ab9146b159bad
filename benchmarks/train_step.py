"""Training-step benchmarks: precomputed captions against a text encoder per step, and the encoder step
against transformers and timm, with MFU.

Part ``text`` (each measurement in its own process, so that peak memory is that step's alone): lbind's
step against an upstream-style step that runs the text encoder. Both train the same modality encoder with
the same loss, optimiser and batch through :class:`lbcore.engine.ContrastiveEngine`; the only difference is
where the caption embeddings come from:

* ``lbind``: a table precomputed once through the text-embedding cache (the anchor is released before training);
* ``baseline``: the frozen text encoder (the packaged MiniLM) encodes the batch's captions at every step, as
  LanguageBind does, so it also stays in memory.

Peak memory: resident set size sampled during the timed steps on CPU, ``torch.cuda.max_memory_allocated`` on
GPU.

Part ``encoder`` (one process, variants interleaved step by step, medians over rounds): a ViT of width 384,
depth 6, 6 heads, patch 16, 224 px, batch 16, fp32, forward + backward, as lbind's ``ViTEncoder``,
transformers' ``CLIPVisionModel`` (SDPA attention) and timm's ``VisionTransformer``; lbind's encoder with token
masking 0.5; and lbind's whole training step (caption lookup, encoder, InfoNCE loss, clipping, AdamW) without
and with masking. Achieved FLOP/s (analytic model FLOPs, see ``benchmarks/flops.py``) against the fp32 matmul
peak measured in the same rounds give the MFU.

    python benchmarks/train_step.py --write            # both parts into benchmarks/RESULTS.md
    python benchmarks/train_step.py --quick --write    # smoke run
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

TEXT_HEADING = "## Training step: precomputed captions"
SIZES: dict[str, dict[str, Any]] = {
    # width, depth, heads, image side (patch 16): tokens = (side / 16)^2
    "tiny": {"width": 128, "depth": 4, "heads": 4, "image": 64},
    "small": {"width": 384, "depth": 6, "heads": 6, "image": 96},
}
WORDS = "red green blue small large old new fast slow loud quiet bright dark round square".split()
THINGS = "dog cat car tree house river bird train boat guitar piano drum bell clock lamp".split()


def captions(n: int) -> list[str]:
    """``n`` distinct captions."""
    out = []
    for i in range(n):
        a, b, c = WORDS[i % len(WORDS)], WORDS[(i // len(WORDS)) % len(WORDS)], THINGS[(i // 7) % len(THINGS)]
        out.append(f"a photo of a {a} and {b} {c} number {i}")
    return out


class PeakRSS:
    """Peak resident set size of this process while the block runs, sampled every millisecond."""

    def __init__(self) -> None:
        import psutil

        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()

    def _watch(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.001)

    def __enter__(self) -> PeakRSS:
        self.peak = self.process.memory_info().rss
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.process.memory_info().rss)


def child(size: str, variant: str, batch: int, steps: int, warmup: int, cache_dir: str) -> dict[str, Any]:
    """One measurement (runs in its own process)."""
    import torch
    import torch.nn.functional as F
    from accelerate import Accelerator

    from lbcore.anchor import Anchor, TextEmbeddingCache
    from lbcore.config import AnchorConfig, EncoderConfig, ModalityConfig
    from lbcore.data import Batch
    from lbcore.engine import ContrastiveEngine
    from lbcore.model import BindModel
    from lbcore.nn import PatchStem2d, ViTEncoder
    from lbcore.optim import build_optimizer

    spec = SIZES[size]
    acc = Accelerator(cpu=not torch.cuda.is_available(), mixed_precision="bf16" if torch.cuda.is_available() else "no")
    total = steps + warmup
    texts = captions(batch * total)
    anchor_cfg = AnchorConfig(cache_dir=Path(cache_dir))
    anchor = Anchor.from_config(anchor_cfg).to(acc.device)
    if variant == "lbind":
        table = TextEmbeddingCache(anchor_cfg.cache_dir).embed(anchor, texts)  # a cache hit: the parent warmed it
        del anchor  # what the trainer does: the anchor is gone before the first step
        gc.collect()

    class Bench(ModalityConfig):
        pass

    cfg = Bench(encoder=EncoderConfig(width=spec["width"], depth=spec["depth"], heads=spec["heads"], patch_size=16))
    torch.manual_seed(0)
    encoder = ViTEncoder(PatchStem2d(3, spec["width"], 16, (spec["image"], spec["image"])), cfg.encoder, 384)

    class _Mod:  # the few attributes BindModel and the optimiser read
        name = "bench"
        config = cfg

    model = BindModel(anchor_cfg, {"bench": encoder}, {"bench": _Mod()}, anchor_fingerprint="0" * 64, embed_dim=384)  # type: ignore[dict-item]
    if variant == "lbind":
        text_tables = {"bench": table}
    else:
        text_tables = {"bench": torch.zeros(batch, 384)}
    engine = ContrastiveEngine(acc, model, text_tables, optimizer=build_optimizer(model), max_grad_norm=1.0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, spec["image"], spec["image"], generator=g)

    def one_step(i: int) -> None:
        ids = torch.arange(i * batch, (i + 1) * batch)
        if variant == "baseline":
            # Upstream's way: the frozen text tower encodes this batch's captions inside the step.
            with torch.no_grad():
                engine.text_tables["bench"] = F.normalize(anchor.encode(texts[i * batch : (i + 1) * batch]), dim=-1)
            ids = torch.arange(batch)
        engine.step({"bench": [Batch(x, ids, ids)]}, step=i)

    for i in range(warmup):
        one_step(i)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    with PeakRSS() as rss:
        for i in range(warmup, total):
            start = time.perf_counter()
            one_step(i)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
    # The median step: robust to the stalls other jobs on a shared machine cause.
    median = sorted(times)[len(times) // 2]
    params = sum(p.numel() for p in encoder.parameters())
    return {
        "size": size,
        "variant": variant,
        "encoder_params": params,
        "tokens": (spec["image"] // 16) ** 2,
        "batch": batch,
        "steps": steps,
        "samples_per_s": batch / median,
        "peak_rss_mib": rss.peak / 2**20,
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None,
        "device": str(acc.device),
        "threads": torch.get_num_threads(),
    }


def precompute_seconds(batch: int, total: int, cache_dir: str) -> float:
    """The one-time cost lbind pays instead: every caption through the anchor once (cold cache)."""
    from lbcore.anchor import Anchor, TextEmbeddingCache
    from lbcore.config import AnchorConfig

    cfg = AnchorConfig(cache_dir=Path(cache_dir))
    anchor = Anchor.from_config(cfg)
    start = time.perf_counter()
    TextEmbeddingCache(cfg.cache_dir).embed(anchor, captions(batch * total))
    return time.perf_counter() - start


def render(results: list[dict[str, Any]], precompute: float, args: argparse.Namespace, command: str) -> str:
    import torch

    lines = [
        TEXT_HEADING,
        "",
        "lbind's training step (caption embeddings precomputed once through the text-embedding cache, anchor",
        "released) against an upstream-style step that runs the frozen text encoder (packaged all-MiniLM-L6-v2)",
        "on every batch. Same encoder, loss, optimiser (AdamW, clipping) and batch; each measurement in its own",
        "process. Peak memory: resident set size sampled during the timed steps (CPU) or",
        "`torch.cuda.max_memory_allocated` (GPU).",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores visible, torch {torch.__version__}, "
        f"device {results[0]['device']}, {results[0]['threads']} torch thread(s); batch {args.batch}, "
        f"{args.steps} timed steps after {args.warmup} warm-up steps; samples/s from the median step time.",
        "",
        "| encoder | params | tokens | step | samples/s | peak memory (MiB) | speed-up |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for size in SIZES:
        rows = {r["variant"]: r for r in results if r["size"] == size}
        if not rows:
            continue
        base = rows["baseline"]["samples_per_s"]
        for variant in ("baseline", "lbind"):
            r = rows[variant]
            mem = r["peak_cuda_mib"] if r["peak_cuda_mib"] is not None else r["peak_rss_mib"]
            spec = SIZES[size]
            lines.append(
                f"| {size} ({spec['width']}x{spec['depth']}) | {r['encoder_params'] / 1e6:.1f} M | {r['tokens']} | "
                f"{'text encoder every step' if variant == 'baseline' else 'lbind (precomputed)'} | "
                f"{r['samples_per_s']:.1f} | {mem:.0f} | {r['samples_per_s'] / base:.2f}x |"
            )
    n = args.batch * (args.steps + args.warmup)
    lines += [
        "",
        f"One-time cost on lbind's side: {n} distinct captions through the anchor in {precompute:.1f} s "
        "(cold cache), paid once per distinct caption across all runs, never again per step or epoch.",
        "",
        "On CPU, about 1 GiB of each peak is the Python / torch / transformers runtime itself; the difference",
        "between the two rows of one size is what the text encoder costs (its weights and activations).",
        "CPU numbers on a shared machine are noisy (other jobs were running); compare the two rows of one size.",
        "",
    ]
    return "\n".join(lines)


def run_text_part(args: argparse.Namespace, command: str, machine_note: str) -> str:
    """The precomputed-captions comparison (a child process per size and variant) -> its RESULTS.md section."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="lbind-bench-") as cache_dir:
        precompute = precompute_seconds(args.batch, args.steps + args.warmup, cache_dir)
        results = []
        for size in args.sizes:
            for variant in ("baseline", "lbind"):
                out = subprocess.run(
                    [sys.executable, __file__, "--child", f"{size}:{variant}", "--cache-dir", cache_dir,
                     "--batch", str(args.batch), "--steps", str(args.steps), "--warmup", str(args.warmup)],
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                if out.returncode != 0:
                    sys.exit(f"{size}:{variant} failed:\n{out.stderr}")
                result = json.loads(out.stdout.strip().splitlines()[-1])
                print(f"{size:6s} {variant:9s} {result['samples_per_s']:8.1f} samples/s  "
                      f"peak {result['peak_rss_mib']:.0f} MiB RSS", flush=True)  # fmt: skip
                results.append(result)
    return render(results, precompute, args, command) + machine_note


def run_encoder_part(args: argparse.Namespace, command: str) -> str:
    import torch
    from encoder_step import Spec, measure
    from encoder_step import render as render_encoder

    spec = Spec(batch=args.encoder_batch)
    result = measure(spec, args.rounds)
    machine = (
        f"{platform.platform()}, {os.cpu_count()} CPU cores visible, {torch.get_num_threads()} torch thread(s), "
        f"1-minute load {os.getloadavg()[0]:.1f} at the start, torch {torch.__version__}"
    )
    return render_encoder(result, spec, args.rounds, command, machine, args.quick)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--parts", nargs="+", default=["text", "encoder"], choices=["text", "encoder"])
    parser.add_argument("--batch", type=int, default=32, help="text part: batch (default 32)")
    parser.add_argument("--steps", type=int, default=15, help="text part: timed steps (default 15)")
    parser.add_argument("--warmup", type=int, default=2, help="text part: warm-up steps (default 2)")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES), help="text part: sizes")
    parser.add_argument("--rounds", type=int, default=7, help="encoder part: rounds (median; default 7)")
    parser.add_argument("--encoder-batch", type=int, default=16, help="encoder part: batch (default 16)")
    parser.add_argument("--threads", type=int, help="torch threads (default: lbind's thread policy)")
    parser.add_argument(
        "--quick", action="store_true", help="Smoke run: text part tiny size, 4 steps; encoder part 2 rounds."
    )
    parser.add_argument("--write", action="store_true", help="Write the sections into benchmarks/RESULTS.md.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        from lbcore.threads import apply, choose_policy

        apply(choose_policy(busy=0.0))  # the parent's torch thread count, through LBIND_NUM_THREADS
        size, variant = args.child.split(":")
        print(json.dumps(child(size, variant, args.batch, args.steps, args.warmup, args.cache_dir)))
        return
    if args.quick:
        args.sizes, args.steps, args.warmup, args.rounds = ["tiny"], 4, 1, 2
    from lbcore.threads import apply, choose_policy

    if args.threads:
        os.environ["LBIND_NUM_THREADS"] = str(args.threads)
    policy = choose_policy()
    os.environ["LBIND_NUM_THREADS"] = str(policy.torch_threads)  # the children take the same count
    apply(policy)
    command = "python benchmarks/train_step.py " + " ".join(sys.argv[1:])
    quick_note = (
        "This is a --quick smoke run taken while other jobs loaded the machine: it shows that the benchmark "
        "runs, not the speeds.\n"
        if args.quick
        else ""
    )
    sections = []
    if "text" in args.parts:
        sections.append((TEXT_HEADING, run_text_part(args, command, quick_note)))
    if "encoder" in args.parts:
        from encoder_step import HEADING as ENCODER_HEADING

        sections.append((ENCODER_HEADING, run_encoder_part(args, command)))
    for heading, text in sections:
        print(text)
        if args.write:
            from resultsfile import replace_section

            print(f"wrote {replace_section(heading, text)}")


if __name__ == "__main__":
    main()
