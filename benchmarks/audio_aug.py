"""Does the audio plugin's training-time augmentation help? Held-out top-1 with and without it, on real clips.

The data set is assembled from the real recordings in /work/shared/realdata/audio (and imagebind_assets): every
sound class that has at least two distinct *recordings* there. ESC-50 clips are grouped by their source file
(``src_file``: the A and B clips of one source are one recording); every other file is its own recording. That
gives 9 classes (dog, crackling fire, sea waves, chirping birds, car, rain, crying baby, sneezing, clock tick),
22 recordings, 24 clips. It is tiny: each fold tests one recording per class (10-11 clips), so one clip is 9-10
points of top-1; read the averages over folds and seeds, and their spread, not single runs.

Splits: fold ``f`` holds out, in every class, the recording at position ``f`` of that class's recordings sorted by
id, and trains on the others; no recording (hence no ESC-50 source file) is on both sides.

Model and training: the audio demo preset (32 mel bins x 192 frames, ViT width 64, depth 2, token masking 0.1)
from scratch, projected into the packaged MiniLM anchor's 384-d space. The loss is cross-entropy over the 9 class
captions ("a sound of {class}."), i.e. logits = learnable scale x cosine(audio, caption) against the frozen
anchor's caption embeddings; test top-1 is the zero-shot rule of ``lbind eval`` (nearest caption). Training
samples are preprocessed with ``train=True`` through lbcore's PreprocessDataset with the run's seed, so random
chunks (both arms) and augmentation (one arm) are drawn per (seed, epoch, clip). ``with`` uses the demo
preset's augmentation settings, ``without`` the same preset with augmentation off; nothing else differs.

    python benchmarks/audio_aug.py --write
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

REALDATA = Path(os.environ.get("LBIND_REALDATA", "/work/shared/realdata"))
SECTION = "## Audio augmentation"
# (file under REALDATA, class, recording id) for the files outside ESC-50; ESC-50 rows come from its metadata.
EXTRA = [
    ("audio/demo_clips/audio_dog.flac", "dog", "vitlens-dog"),
    ("audio/demo_clips/onepeace_dog.flac", "dog", "onepeace-dog"),
    ("imagebind_assets/dog_audio.wav", "dog", "imagebind-dog"),
    ("audio/urbansound8k_samples/100652-3-0-0.wav", "dog", "us8k-100652"),  # dog_bark
    ("audio/demo_clips/audio_crackling_fire.flac", "crackling fire", "vitlens-fire"),
    ("audio/demo_clips/audio_sea_wave.flac", "sea waves", "vitlens-sea"),
    ("audio/demo_clips/audio_chirping_birds.flac", "chirping birds", "vitlens-birds"),
    ("imagebind_assets/bird_audio.wav", "chirping birds", "imagebind-bird"),
    ("audio/demo_clips/audio_car.wav", "car", "unibind-car"),
    ("imagebind_assets/car_audio.wav", "car", "imagebind-car"),
]
OFF = {"gain_db": 0.0, "time_shift": 0.0, "freq_mask_width": 0, "time_mask_width": 0}


def with_augment(override: dict[str, Any] | None) -> dict[str, Any]:
    """The ``with`` arm's augmentation settings: the demo preset's, or ``override`` (--augment)."""
    from lbind_audio.modality import AudioModality

    if override is not None:
        return override
    return AudioModality.config_preset("demo").augment.model_dump()


def describe(override: dict[str, Any] | None) -> str:
    """The ``with`` arm's augmentation in words."""
    from lbind_audio.augment import AudioAugmentConfig

    a = AudioAugmentConfig(**with_augment(override))
    return (
        f"gain +-{a.gain_db:g} dB, time shift +-{100 * a.time_shift:g} %, {a.freq_masks} frequency mask(s) "
        f"< {a.freq_mask_width} of 32 mel bins, {a.time_masks} time mask(s) < {a.time_mask_width} of 192 frames, "
        "per chunk"
    )


def assemble() -> list[tuple[Path, str, str]]:
    """(file, class, recording) of every clip whose class has at least two recordings."""
    rows = [(REALDATA / path, label, rec) for path, label, rec in EXTRA]
    with open(REALDATA / "audio/esc50/meta/esc50_available.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            label = row["category"].replace("_", " ")
            rows.append((REALDATA / "audio/esc50/audio" / row["filename"], label, f"esc50-{row['src_file']}"))
    recordings: dict[str, set[str]] = {}
    for _, label, rec in rows:
        recordings.setdefault(label, set()).add(rec)
    return sorted(r for r in rows if len(recordings[r[1]]) >= 2)


def split(rows: list[tuple[Path, str, str]], fold: int) -> tuple[list[int], list[int]]:
    """Indices of (train, test): in every class, the ``fold``-th recording (sorted by id) is held out."""
    by_class: dict[str, list[str]] = {}
    for _, label, rec in rows:
        by_class.setdefault(label, [])
        if rec not in by_class[label]:
            by_class[label].append(rec)
    held = {sorted(recs)[fold % len(recs)] for recs in by_class.values()}
    train = [i for i, r in enumerate(rows) if r[2] not in held]
    test = [i for i, r in enumerate(rows) if r[2] in held]
    assert not {rows[i][2] for i in train} & {rows[i][2] for i in test}
    return train, test


def run(
    rows: list[tuple[Path, str, str]],
    waves: list[Any],
    captions: Any,
    fold: int,
    seed: int,
    augment: dict[str, Any] | None,
    epochs: int,
) -> float:
    """Train from scratch on the fold's training recordings; held-out top-1 (%)."""
    import torch
    import torch.nn.functional as F
    from lbind_audio.modality import AudioModality

    from lbcore.samples import PreprocessDataset

    classes = sorted({label for _, label, _ in rows})
    target = torch.tensor([classes.index(label) for _, label, _ in rows])
    train, test = split(rows, fold)
    preset = AudioModality.config_preset("demo", augment=augment if augment is not None else OFF)
    mod = AudioModality(preset)
    torch.manual_seed(seed)
    encoder = mod.build_encoder(captions.shape[1])
    scale = torch.nn.Parameter(torch.tensor(1 / 0.07).log())
    optim = torch.optim.AdamW([*encoder.parameters(), scale], lr=preset.optim.lr, weight_decay=0.05)
    data = PreprocessDataset(mod, [waves[i] for i in train], train=True, seed=seed)
    labels = target[train]
    for epoch in range(epochs):
        encoder.train()
        x = torch.stack([data[(epoch, j)].tensor for j in range(len(train))])
        logits = scale.exp().clamp(max=100) * F.normalize(encoder(x), dim=-1) @ captions.T
        loss = F.cross_entropy(logits, labels)
        optim.zero_grad()
        loss.backward()
        optim.step()
    encoder.eval()
    with torch.inference_mode():
        x = torch.stack([mod.preprocess(waves[i]) for i in test])
        pred = (F.normalize(encoder(x), dim=-1) @ captions.T).argmax(dim=1)
    return 100.0 * float((pred == target[test]).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="Seeds per fold and arm (default 5).")
    parser.add_argument("--folds", type=int, default=2, help="Recording-disjoint folds (default 2).")
    parser.add_argument("--epochs", type=int, default=80, help="Full-batch epochs per run (default 80).")
    parser.add_argument(
        "--augment", type=json.loads, help="The 'with' arm's settings as JSON (default: the demo preset's)."
    )
    parser.add_argument("--write", action="store_true", help="Write the table into benchmarks/RESULTS.md.")
    args = parser.parse_args()

    import torch
    import torch.nn.functional as F
    from lbind_audio.waveform import load_waveform

    from lbcore.anchor import Anchor
    from lbcore.config import AnchorConfig

    torch.set_num_threads(1)
    rows = assemble()
    classes = sorted({label for _, label, _ in rows})
    waves = [(load_waveform(str(path), 16000), 16000) for path, _, _ in rows]  # decoded and resampled once
    anchor = Anchor.from_config(AnchorConfig())
    captions = F.normalize(anchor.encode([f"a sound of {c}." for c in classes]), dim=-1)
    del anchor
    started = time.perf_counter()
    scores: dict[tuple[bool, int], list[float]] = {}
    for fold in range(args.folds):
        for seed in range(args.seeds):
            for augment in (False, True):  # interleaved: both arms see the same machine
                settings = with_augment(args.augment) if augment else None
                top1 = run(rows, waves, captions, fold, seed, settings, args.epochs)
                scores.setdefault((augment, fold), []).append(top1)
                print(f"fold {fold} seed {seed} augment {augment}: top-1 {top1:.1f}", flush=True)
    minutes = (time.perf_counter() - started) / 60
    lines = [
        SECTION,
        "",
        "Held-out top-1 (%) of the audio demo preset trained from scratch with and without its training-time "
        f"augmentation ({describe(args.augment)}), on a recording-disjoint split of real clips; see the docstring of "
        "benchmarks/audio_aug.py for the data and the training.",
        "",
        f"Command: `python benchmarks/audio_aug.py {shlex.join(sys.argv[1:])}`",
        "",
        f"Data: {len(rows)} clips, {len({r[2] for r in rows})} recordings, {len(classes)} classes "
        f"({', '.join(classes)}); chance {100 / len(classes):.1f} %. {args.folds} folds (one recording per class "
        f"held out), {args.seeds} seeds each, {args.epochs} full-batch epochs per run; "
        f"{minutes:.1f} min on {platform.platform()}, torch {torch.__version__}, 1 thread.",
        "",
        "| augmentation | " + " | ".join(f"fold {f} (mean +- sd)" for f in range(args.folds)) + " | all runs |",
        "|---|" + "---:|" * (args.folds + 1),
    ]
    for augment in (False, True):
        cells = []
        for fold in range(args.folds):
            s = scores[(augment, fold)]
            cells.append(f"{statistics.mean(s):.1f} +- {statistics.pstdev(s):.1f}")
        every = [v for f in range(args.folds) for v in scores[(augment, f)]]
        lines.append(
            f"| {('with (--augment)' if args.augment else 'with (demo preset)') if augment else 'without'} | "
            + " | ".join(cells)
            + f" | "
            f"{statistics.mean(every):.1f} +- {statistics.pstdev(every):.1f} |"
        )
    text = "\n".join([*lines, ""])
    print(text)
    if args.write:
        from resultsfile import replace_section  # beside this script

        path = replace_section(SECTION, text)
        print(f"written to {path}")


if __name__ == "__main__":
    main()
