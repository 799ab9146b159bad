"""Training-step throughput and peak memory: lbind's step vs. an upstream-style step that runs the text encoder.

Both steps train the same modality encoder with the same loss, optimiser and batch through
:class:`lbcore.engine.ContrastiveEngine`; the only difference is where the caption embeddings come from:

* ``lbind``: a table precomputed once through the text-embedding cache (the anchor is released before training);
* ``baseline``: the frozen text encoder (the packaged MiniLM) encodes the batch's captions at every step, as
  LanguageBind does, so it also stays in memory.

Each (size, variant) runs in its own child process so that peak memory is that step's alone: peak resident set
size sampled during the timed steps on CPU, ``torch.cuda.max_memory_allocated`` on GPU. Results go to
benchmarks/RESULTS.md (``--write``) with the command that produced them.

    python benchmarks/train_step.py --write
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
        "# Training-step benchmark",
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES))
    parser.add_argument("--write", action="store_true", help="Write benchmarks/RESULTS.md.")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        size, variant = args.child.split(":")
        print(json.dumps(child(size, variant, args.batch, args.steps, args.warmup, args.cache_dir)))
        return

    import tempfile

    command = "python benchmarks/train_step.py " + " ".join(sys.argv[1:])
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
    text = render(results, precompute, args, command)
    if args.write:
        path = Path(__file__).with_name("RESULTS.md")
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    else:
        print(text)


if __name__ == "__main__":
    main()
