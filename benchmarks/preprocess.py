"""Preprocessing throughput: lbind's ``preprocess`` against the obvious code, one thread, real files.

For every modality, at its ``languagebind`` preset, on the real sample files (``$LBIND_REALDATA`` or
``../shared/realdata``): lbind's ``preprocess(path)`` against the minimal reference pipeline of
``benchmarks/preprocess_reference.py`` (Pillow + torch for image, infrared and depth; soundfile + torchaudio's
Kaldi fbank for audio; decord + torch resize for video). Before timing, every file goes through every variant
once and the outputs are compared: lbind must equal the reference (bit for bit, audio within
``AUDIO_TOLERANCE``) or the benchmark stops; video's ``fast`` decode mode is compared and its difference
reported. ``before`` rows run the code lbind had before the current decoders (video: one decord call per
frame, float conversion of full-size frames; infrared/image: float conversion in numpy, grey repeated before
resizing), written out here. Video's ``decode floor`` row decodes what the ``fast`` mode must decode (the same
packets, the same skipped frames) and nothing else: the speed no decode-side change can pass without
decoding other frames than decord's.

Timing: torch and the decoders held to one thread; per round, every file through every variant (variants
interleaved, their order rotated each round); items/s from the median round. ``--quick``: one round on the
first three files of each modality (a smoke run: it shows the benchmark works, not which variant is faster).

    python benchmarks/preprocess.py --write           # the full table into benchmarks/RESULTS.md
    python benchmarks/preprocess.py --quick --write   # smoke run
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HEADING = "## Preprocessing"


def real_files(root: Path) -> dict[str, list[Path]]:
    """The sample files each modality's languagebind preset reads as they are (depth: millimetre PNGs)."""
    lb = root / "languagebind_assets"
    thermal = root / "thermal"
    return {
        "image": sorted((lb / "image").glob("*.jpg"))
        + sorted((root / "imagebind_assets").glob("*.jpg"))
        + sorted((thermal / "llvip_pairs" / "visible").glob("*.jpg")),
        "infrared": sorted((lb / "thermal").glob("*.jpg"))
        + sorted((thermal / "llvip_crops").glob("*.jpg"))
        + sorted((thermal / "llvip_pairs" / "ir").glob("*.jpg")),
        "depth": sorted((lb / "depth").glob("*.png"))
        + sorted((root / "depth").rglob("*_mm_derived.png"))
        + sorted((root / "depth").rglob("*bookstore*_depth.png"))
        + sorted((root / "depth").rglob("sample_depth.png")),
        "audio": sorted((lb / "audio").glob("*.wav"))
        + sorted(p for p in (root / "audio").rglob("*") if p.suffix in (".wav", ".flac")),
        "video": sorted((lb / "video").glob("*.mp4")) + sorted((root / "video").glob("*.m[kp][v4]")),
    }


def video_before(modality: Any, path: Path) -> Any:
    """lbind's video preprocessing before this benchmark's changes: one decord call per distinct frame, the
    full-size frames converted to float in [T, H, W, C] order and transposed, then resized."""
    import decord
    import torch
    from lbind_video.frames import frame_indices

    from lbcore.image import resize_crop_normalize

    cfg = modality.config
    reader = decord.VideoReader(str(path), num_threads=1)
    wanted = frame_indices(len(reader), cfg.num_frames)
    decoded = {i: reader[i].asnumpy() for i in sorted(set(wanted))}
    frames = np.stack([decoded[i] for i in wanted])
    x = torch.from_numpy(frames).float().div_(255.0).permute(0, 3, 1, 2).contiguous()
    return resize_crop_normalize(x, cfg).transpose(0, 1).contiguous()


def video_decode_floor(path: Path, num_frames: int) -> None:
    """What the ``fast`` mode cannot avoid: decoding the same packets with the same skips (every reference
    frame, and the sampled ones), one thread, with no frame converted, scaled or normalised. No output."""
    import av
    from lbind_video.frames import frame_indices

    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        stream.thread_count = 1
        packets = [p for p in container.demux(stream) if p.size > 0]
        order = {pts: i for i, pts in enumerate(sorted(p.pts for p in packets))}
        wanted = set(frame_indices(len(packets), num_frames))
        context = stream.codec_context
        for packet in packets:
            context.skip_frame = "DEFAULT" if order[packet.pts] in wanted else "NONREF"
            context.decode(packet)
        context.decode(None)


def image_before(modality: Any, path: Path) -> Any:
    """lbind's image preprocessing before: pixels to float in numpy, grey repeated to RGB, then resized."""
    import torch

    from lbcore.image import read_image, resize_crop_normalize

    arr = read_image(path)
    arr = arr[:, :, None] if arr.ndim == 2 else arr
    colour = arr[:, :, :1] if arr.shape[2] <= 2 else arr[:, :, :3]
    x = torch.from_numpy(np.ascontiguousarray(colour.astype(np.float32) / 255.0)).permute(2, 0, 1)
    x = (x.repeat(3, 1, 1) if x.shape[0] == 1 else x).contiguous()
    return resize_crop_normalize(x, modality.config)


def build_variants() -> dict[str, dict[str, Callable[[Path], Any]]]:
    """modality -> variant name -> function of a path; the first variant is the reference."""
    import preprocess_reference as ref
    from lbind_audio.modality import AudioModality
    from lbind_depth.modality import DepthModality
    from lbind_image.modality import ImageModality
    from lbind_infrared.modality import InfraredModality
    from lbind_video.modality import VideoModality

    image = ImageModality(ImageModality.config_preset("languagebind"))
    infrared = InfraredModality(InfraredModality.config_preset("languagebind"))
    depth = DepthModality(DepthModality.config_preset("languagebind"))
    audio = AudioModality(AudioModality.config_preset("languagebind"))
    video = VideoModality(VideoModality.config_preset("languagebind", decode="exact"))
    video_fast = VideoModality(VideoModality.config_preset("languagebind", decode="fast"))
    return {
        "image": {
            "reference": lambda p: ref.image(str(p), image.config.image_size, image.config.antialias),
            "lbind": image.preprocess,
            "before": lambda p: image_before(image, p),
        },
        "infrared": {
            "reference": lambda p: ref.image(str(p), infrared.config.image_size, infrared.config.antialias),
            "lbind": infrared.preprocess,
            "before": lambda p: image_before(infrared, p),
        },
        "depth": {
            "reference": lambda p: ref.depth(str(p), depth.config.image_size, depth.config.max_depth),
            "lbind": depth.preprocess,
        },
        "audio": {
            "reference": lambda p: ref.audio(str(p), audio.config.mel_bins, audio.config.target_length),
            "lbind": audio.preprocess,
        },
        "video": {
            "reference": lambda p: ref.video(str(p), video.config.image_size, video.config.num_frames),
            "lbind exact": video.preprocess,
            "lbind fast": video_fast.preprocess,
            "before": lambda p: video_before(video, p),
            "decode floor": lambda p: video_decode_floor(p, video.config.num_frames),
        },
    }


def check(modality: str, files: list[Path], variants: dict[str, Callable[[Path], Any]]) -> dict[str, str]:
    """Run every variant on every file once (also the warm-up) and compare with the reference: lbind's exact
    variants must match (else SystemExit); the fast variant's difference is measured. -> variant: note."""
    from preprocess_reference import AUDIO_TOLERANCE

    notes: dict[str, str] = {}
    worst: dict[str, list[float]] = {}
    for path in files:
        outputs = {name: fn(path) for name, fn in variants.items()}
        expected = outputs["reference"]
        for name, out in outputs.items():
            if name == "reference" or out is None:  # None: a timing floor, not a pipeline
                notes[name] = "no output: the decoding alone"
                continue
            if out.shape != expected.shape:
                sys.exit(f"{modality} {name}: {path} gives shape {tuple(out.shape)}, reference {tuple(expected.shape)}")
            diff = (out - expected).abs()
            worst.setdefault(name, []).extend([float(diff.max()), float(diff.mean())])
            exact = name != "lbind fast"
            limit = AUDIO_TOLERANCE if modality == "audio" else 0.0
            if exact and float(diff.max()) > limit:
                sys.exit(f"{modality} {name}: {path} differs from the reference by up to {float(diff.max()):.3g}")
    for name, values in worst.items():
        top, mean = max(values[0::2]), statistics.fmean(values[1::2])
        if name == "lbind fast":
            # Normalised units: one grey level is 1 / (255 * std) ~ 0.015.
            notes[name] = f"differs: mean {mean:.3f}, max {top:.2f} (normalised units)"
        else:
            notes[name] = "identical" if top == 0 else f"max diff {top:.1e}"
    return notes


def measure(files: list[Path], variants: dict[str, Callable[[Path], Any]], rounds: int) -> dict[str, list[float]]:
    """Seconds per round (all files) for every variant; variants interleaved per file, order rotated per round."""
    names = list(variants)
    seconds: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        total = dict.fromkeys(names, 0.0)
        for path in files:
            for name in order:
                start = time.perf_counter()
                variants[name](path)
                total[name] += time.perf_counter() - start
        for name in names:
            seconds[name].append(total[name])
        print(f"round {r + 1}/{rounds}: " + ", ".join(f"{n} {t:.2f} s" for n, t in total.items()), flush=True)
    return seconds


def render(rows: list[dict[str, Any]], args: argparse.Namespace, machine: str) -> str:
    command = "python benchmarks/preprocess.py " + " ".join(sys.argv[1:])
    lines = [
        HEADING,
        "",
        "lbind's `preprocess(path)` at each modality's `languagebind` preset against the minimal reference "
        "pipeline of `benchmarks/preprocess_reference.py` (the obvious code with Pillow + torch, soundfile + "
        "torchaudio's Kaldi fbank, decord + torch resize), one torch thread and one decoder thread, on the real "
        "sample files. Every variant's output was compared with the reference's first (lbind must be identical; "
        "audio within 1e-5). Items/s from the median of the rounds, variants interleaved file by file. `before`: "
        "lbind's code before the current decoders, written out in the benchmark. Video `fast`: "
        "`decode: fast` (frames scaled by the decoder); `exact` is the default and the languagebind preset's. "
        "`decode floor`: the decoding alone that `fast` cannot skip (no output).",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine}; {args.rounds} round(s).",
        "",
        "| modality | files | variant | items/s | vs reference | output |",
        "|---|---:|---|---:|---:|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['modality']} | {row['files']} | {row['variant']} | {row['rate']:.2f} | "
            f"{row['ratio']:.2f}x | {row['note']} |"
        )
    lines.append("")
    if args.quick:
        lines += [
            "This is a --quick smoke run (one round, three files per modality) taken while other jobs loaded the "
            "machine: it shows that the benchmark runs and that the outputs match, not the speeds. Take the "
            "numbers on a quiet machine with `python benchmarks/preprocess.py --write`.",
            "",
        ]
    return "\n".join(lines)


def machine_line() -> str:
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (
        f"{platform.platform()}, {os.cpu_count()} CPUs, 1-minute load {load:.1f} at the start; "
        f"torch {torch.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5, help="Timed rounds (median; default 5).")
    parser.add_argument("--modalities", nargs="+", default=["image", "infrared", "depth", "audio", "video"])
    parser.add_argument(
        "--root", type=Path, help="Real sample folder (default: $LBIND_REALDATA or ../shared/realdata)."
    )
    parser.add_argument("--quick", action="store_true", help="Smoke run: 1 round, the first 3 files per modality.")
    parser.add_argument("--write", action="store_true", help="Write the table into benchmarks/RESULTS.md.")
    args = parser.parse_args()
    if args.quick:
        args.rounds = 1
    os.environ["LBIND_DECODER_THREADS"] = "1"  # decord's threads, through lbcore.threads.decoder_threads()
    import torch

    from lbcore.testing import realdata_dir

    torch.set_num_threads(1)
    root = args.root or realdata_dir()
    if root is None:
        sys.exit("no real sample folder: set LBIND_REALDATA or pass --root")
    machine = machine_line()
    print(machine, flush=True)
    files = real_files(root)
    all_variants = build_variants()
    rows = []
    for modality in args.modalities:
        chosen = files[modality][:3] if args.quick else files[modality]
        variants = all_variants[modality]
        print(f"{modality}: {len(chosen)} files; checking outputs", flush=True)
        notes = check(modality, chosen, variants)
        seconds = measure(chosen, variants, args.rounds)
        ref_rate = len(chosen) / statistics.median(seconds["reference"])
        for name in variants:
            rate = len(chosen) / statistics.median(seconds[name])
            note = "the reference" if name == "reference" else notes[name]
            rows.append(
                {"modality": modality, "files": len(chosen), "variant": name, "rate": rate, "ratio": rate / ref_rate, "note": note}
            )  # fmt: skip
    from resultsfile import publish  # beside this script

    publish(HEADING, render(rows, args, machine), args.write)


if __name__ == "__main__":
    main()
