"""Grouped modalities and captioning on the video demo with sound tracks (video demo v2, paired manifests).

1. ``grouped``: video and audio (demo presets) trained together with ``train.groups: [[video, audio]]`` (learned
   fusion) on ``paired-train.jsonl``, whose captions name the motion and the sound ("a ball going up with a
   beeping sound"); ``separate`` (with ``--separate``): the same two encoders trained on the same captions
   without the group loss, their group then fused by the parameter-free mean.
2. Held-out evaluation on ``paired-test.jsonl`` (28 motion x sound classes; 70 items): zero-shot top-1 over
   the combined labels and text -> item retrieval R@1, for video alone, audio alone, the logit fusion
   (``--fuse``) and the group (``lbind eval --group video,audio``).
3. A caption decoder (random-init GPT-2, cross-attention on the video and audio encoder tokens, encoders
   frozen) trained on the grouped checkpoint; BLEU-4 and CIDEr on the held-out items, greedy and beam 3,
   beside the nearest-caption baseline (first caption of the nearest training item, group embedding).

    python benchmarks/grouping.py --write            # the table into benchmarks/RESULTS.md
    python benchmarks/grouping.py --steps 40 --caption-steps 100   # a smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SECTION = "# Grouped modalities and captioning"


def single_manifests(paired: Path, out: Path) -> dict[str, Path]:
    """Per modality, a plain manifest of the paired rows' files with their (motion + sound) captions."""
    out.mkdir(parents=True, exist_ok=True)
    rows = [json.loads(line) for line in paired.read_text().splitlines()]
    manifests = {}
    for name in ("video", "audio"):
        path = out / f"{name}.jsonl"
        lines = [{"path": str((paired.parent / r[name]).resolve()), "captions": r["captions"]} for r in rows]
        path.write_text("".join(json.dumps(r) + "\n" for r in lines))
        manifests[name] = path
    return manifests


def train_run(output: Path, data: dict[str, Path], steps: int, groups: bool, workers: int) -> Path:
    import lbcore

    train: dict[str, Any] = {
        "output_dir": str(output), "max_steps": steps, "save_every": 0, "num_workers": workers, "log_every": 50,
        "data": {k: str(v) for k, v in data.items()},
    }  # fmt: skip
    if groups:
        train["groups"] = [["video", "audio"]]
    config = {"modalities": {"video": {"preset": "demo"}, "audio": {"preset": "demo"}}, "train": train}
    return lbcore.train(config)


def evaluate(checkpoint: Path, manifest: Path, workers: int) -> dict[str, dict[str, float]]:
    """Top-1 (classification) and text->item R@1 (retrieval) of each member, the logit fusion and the group."""
    from lbcore.evaluate import evaluate_checkpoint

    rows: dict[str, dict[str, float]] = {}
    for task, key in (("classification", "top1"), ("retrieval", "text_to_item_R@1")):
        card = evaluate_checkpoint(
            checkpoint,
            group=["video", "audio"],
            manifest=manifest,
            task=task,
            num_workers=workers,  # type: ignore[arg-type]
        ).card
        for name in ("video", "audio"):
            rows.setdefault(f"{name} alone", {})[task] = card["metrics_per_modality"][name][key]
        rows.setdefault("logit fusion (--fuse)", {})[task] = card["group"]["logit_fusion"][key]
        fusion = "learned fusion" if card["group"]["trained"] else "mean fusion"
        rows.setdefault(f"group ({fusion})", {})[task] = card["metrics"][key]
    return rows


def captioning(checkpoint: Path, train: Path, test: Path, steps: int) -> dict[str, Any]:
    from lbcore.captioneval import evaluate_captioning
    from lbcore.captiontrain import train_captioner

    started = time.perf_counter()
    plan = {"checkpoint": checkpoint, "decoder": {"sources": ["video", "audio"]}, "data": train, "steps": steps}
    train_captioner(plan)
    train_s = time.perf_counter() - started
    greedy = evaluate_captioning(checkpoint, manifest=test, beams=1)
    beam = evaluate_captioning(checkpoint, manifest=test, beams=3, baseline=False)
    return {
        "train_s": round(train_s, 1),
        "greedy": greedy["metrics"],
        "beam3": beam["metrics"],
        "nearest": greedy["baseline"]["nearest_caption"],
        "examples": greedy["examples"][:4],
    }


def render(results: dict[str, Any], args: argparse.Namespace) -> str:
    lines = [
        SECTION, "",
        "Video and audio (demo presets, MiniLM anchor) on the video demo with sound tracks: 252 training clips,",
        "70 held-out clips whose motion (7 kinds) and sound (4 kinds) are both in the caption; each clip's sound is",
        "drawn independently of its motion, so one modality alone can tell at most its half of the 28 classes.",
        "", f"Command: `{results['command']}`", "", f"Machine: {results['machine']}", "",
        "| held-out (70 items, 28 classes) | run | top-1 % | text->item R@1 % |", "|---|---|---:|---:|",
    ]  # fmt: skip
    for run, rows in results["runs"].items():
        for name, m in rows.items():
            lines.append(f"| {name} | {run} | {m['classification']:.1f} | {m['retrieval']:.1f} |")
    cap = results.get("captioning")
    if cap:
        lines += [
            "", f"Caption decoder (GPT-2, 2 layers, width 128, cross-attention on video + audio tokens, encoders "
            f"frozen, {results['caption_steps']} steps in {cap['train_s']:.0f} s) on the grouped checkpoint:", "",
            "| held-out captions | BLEU-4 | CIDEr |", "|---|---:|---:|",
            f"| decoder, greedy | {cap['greedy']['bleu4']:.1f} | {cap['greedy']['cider']:.1f} |",
            f"| decoder, beam 3 | {cap['beam3']['bleu4']:.1f} | {cap['beam3']['cider']:.1f} |",
            f"| nearest training caption (group embedding) | {cap['nearest']['bleu4']:.1f} | {cap['nearest']['cider']:.1f} |",
            "", "Examples (first reference -> greedy caption | nearest caption):", "",
        ]  # fmt: skip
        lines += [f"- {e['references'][0]} -> {e['caption']} | {e['nearest_caption']}" for e in cap["examples"]]
    lines += ["", f"{results['steps']} training steps per run; total {results['wall_s'] / 60:.1f} min."]
    return "\n".join(lines) + "\n"


def write_section(text: str) -> Path:
    """Replace this benchmark's section of RESULTS.md (or append it), leaving the other sections alone."""
    from resultsfile import replace_section  # beside this script

    return replace_section(SECTION, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=210, help="Training steps per run (demo preset: 210).")
    parser.add_argument("--caption-steps", type=int, default=800, help="Decoder training steps (0: skip).")
    parser.add_argument("--separate", action="store_true", help="Also train without the group loss.")
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers.")
    parser.add_argument("--root", type=Path, help="Run folders (default: a temporary folder).")
    parser.add_argument("--write", action="store_true", help="Write the table into benchmarks/RESULTS.md.")
    parser.add_argument("--render", type=Path, help="Only render (and --write) an earlier run's results.json.")
    args = parser.parse_args()
    if args.render:
        text = render(json.loads(args.render.read_text()), args)
        print(text)
        if args.write:
            print(f"wrote {write_section(text)}")
        return
    import torch

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))  # one thread: fastest on a shared CPU
    from lbcore.demo import demo_data
    from lbcore.plugins import default_registry

    started = time.perf_counter()
    video = default_registry().registered("video").cls(default_registry().registered("video").cls.config_preset("demo"))
    folder = demo_data(video)["train"].parent
    train, test = folder / "paired-train.jsonl", folder / "paired-test.jsonl"
    root = args.root or Path(tempfile.mkdtemp(prefix="lbind-grouping-"))
    command = " ".join(a for a in sys.argv[1:] if not a.startswith(("--root", "/")))  # no temporary paths
    results: dict[str, Any] = {"command": f"python benchmarks/grouping.py {command}".strip(),
                               "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                               f"{torch.get_num_threads()} torch thread(s)", "steps": args.steps,
                               "caption_steps": args.caption_steps, "runs": {}}  # fmt: skip
    grouped = train_run(root / "grouped", {"video": train, "audio": train}, args.steps, True, args.workers)
    results["runs"]["grouped"] = evaluate(grouped, test, args.workers)
    if args.separate:
        single = single_manifests(train, root / "single")
        separate = train_run(root / "separate", single, args.steps, False, args.workers)
        results["runs"]["separate"] = evaluate(separate, test, args.workers)
    if args.caption_steps:
        results["captioning"] = captioning(grouped, train, test, args.caption_steps)
    results["wall_s"] = time.perf_counter() - started
    (root / "results.json").write_text(json.dumps(results, indent=2))
    text = render(results, args)
    print(text)
    if args.write:
        print(f"wrote {write_section(text)}")


if __name__ == "__main__":
    main()
