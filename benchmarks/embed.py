"""`lbind embed` (the library's embed_job) against the stacked approach, on real files: wall time and peak memory.

* ``stacked``: what one writes first: load the model, preprocess every file in this process (torch's default
  threads), stack them into one tensor and run one forward pass over it without gradients.
* ``embed``: :func:`lbcore.embedding.embed_job` with its defaults (thread policy, preprocessing workers started
  before the model loads, bounded prefetch, batches of 32), writing a .npy and its sidecar.

Inputs: the real clips in /work/shared/realdata (video: the 9 clips of ``video/``; audio: every WAV/FLAC of
``audio/``) repeated up to the requested count. The copies are hard links (or copies) under a temporary
folder, not symlinks: the embed job resolves symlinks and would embed each real file once. Models: a freshly
initialised checkpoint of the video demo preset and of the audio languagebind preset (the weights do not change
the work). Every run is its own process (imports excluded from the time, checkpoint loading included);
variants are interleaved round by round and the medians reported. Peak memory: the largest sum over the
process and all its children (DataLoader workers) of the resident set size (RSS, sampled every 20 ms) and of
the proportional set size (PSS, which splits pages shared between processes; sampled every 0.5 s).

    python benchmarks/embed.py --write                  # video 150 clips, audio 150 clips, 3 rounds
    python benchmarks/embed.py --quick --write          # a smoke run: fewer clips and rounds
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REALDATA = Path(os.environ.get("LBIND_REALDATA", "/work/shared/realdata"))
SOURCES = {
    "video": (REALDATA / "video", (".mp4", ".mkv")),
    "audio": (REALDATA / "audio", (".wav", ".flac")),
}
PRESETS = {"video": "demo", "audio": "languagebind"}
SECTION = "## Embedding job"


# --------------------------------------------------------------------------------------------- set-up
def real_files(modality: str) -> list[Path]:
    root, suffixes = SOURCES[modality]
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in suffixes)


def make_inputs(modality: str, count: int, folder: Path) -> Path:
    """``count`` files cycling through the real ones (hard links, else copies); returns an @LIST file."""
    import shutil

    folder.mkdir(parents=True, exist_ok=True)
    files = real_files(modality)
    lines = []
    for i in range(count):
        src = files[i % len(files)]
        dst = folder / f"{i:05d}_{src.name}"
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:
                shutil.copyfile(src, dst)
        lines.append(str(dst))
    listing = folder / "inputs.txt"
    listing.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return listing


def make_checkpoint(modality: str, folder: Path) -> Path:
    """A freshly initialised checkpoint of the modality's benchmark preset (anchor: the packaged MiniLM)."""
    import torch

    from lbcore.config import AnchorConfig
    from lbcore.model import BindModel
    from lbcore.plugins import default_registry

    if (folder / "lbind.json").is_file():
        return folder
    torch.manual_seed(0)
    cls = default_registry().registered(modality).cls
    mod = cls(cls.config_preset(PRESETS[modality]))
    dim = 384
    model = BindModel(AnchorConfig(), {modality: mod.build_encoder(dim)}, {modality: mod}, embed_dim=dim)
    model.anchor_fingerprint = "0" * 64
    return model.save_pretrained(folder)


# ---------------------------------------------------------------------------------------- one run (child)
def run_stacked(ckpt: str, modality: str, listing: str) -> int:
    import torch

    from lbcore.model import load

    files = [line for line in Path(listing).read_text(encoding="utf-8").splitlines() if line]
    model = load(ckpt)
    mod = model.modalities[modality]
    batch = torch.stack([mod.preprocess(f) for f in files])
    with torch.no_grad():
        emb = model.encode(modality, batch)
    return int(emb.shape[0])


def run_embed(spec: dict[str, Any]) -> int:
    from lbcore.embedding import embed_job

    options = {key: spec[key] for key in ("precision", "prefetch") if key in spec}
    return len(embed_job(spec["ckpt"], spec["modality"], ["@" + spec["listing"]], spec["output"], **options).embedded)


def child(spec: dict[str, Any]) -> None:
    import torch  # noqa: F401  (imported before the clock starts, as in both variants)

    import lbcore.embedding
    import lbcore.model  # noqa: F401
    from lbcore.plugins import default_registry

    default_registry().registered(spec["modality"]).cls  # noqa: B018  (plugin imported before the clock)
    start = time.perf_counter()
    if spec["variant"] == "stacked":
        rows = run_stacked(spec["ckpt"], spec["modality"], spec["listing"])
    else:
        rows = run_embed(spec)
    print(json.dumps({"seconds": time.perf_counter() - start, "rows": rows}), flush=True)


# --------------------------------------------------------------------------------------- measuring (parent)
class TreeMemory:
    """Peak RSS and PSS sums over a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.rss = self.pss = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _tree(self) -> list[Any]:
        try:
            return [self.root, *self.root.children(recursive=True)]
        except Exception:  # the root is gone: nothing left to sample
            return []

    def _sum(self, what: str) -> int:
        total = 0
        for proc in self._tree():
            try:
                info = proc.memory_full_info() if what == "pss" else proc.memory_info()
                total += getattr(info, what)
            except Exception:  # a worker exited between listing and reading: it holds nothing now
                continue
        return total

    def _watch(self) -> None:
        tick = 0
        while not self._stop.is_set():
            self.rss = max(self.rss, self._sum("rss"))
            if tick % 25 == 0:
                self.pss = max(self.pss, self._sum("pss"))
            tick += 1
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def measure(spec: dict[str, Any], cores: int | None) -> dict[str, Any]:
    env = dict(os.environ, **spec.get("env", {}))
    allowed = sorted(os.sched_getaffinity(0))
    affinity = set(allowed[:cores]) if cores else set(allowed)
    proc = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: os.sched_setaffinity(0, affinity),
    )
    memory = TreeMemory(proc.pid)
    out, err = proc.communicate()
    memory.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"{spec['variant']} failed ({proc.returncode}):\n{err[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    return {**result, "rss": memory.rss, "pss": memory.pss}


# ------------------------------------------------------------------------------------------------- report
def load_average() -> str:
    return f"{os.getloadavg()[0]:.1f}"


def table(results: dict[tuple[str, str, int], list[dict[str, Any]]], counts: dict[str, int]) -> list[str]:
    """One row per (modality, variant, cores). ``vs stacked``: the median over rounds of the stacked run's time
    over this variant's run of the same round (the two ran back to back, under the same load)."""
    lines = [
        "| modality (preset) | clips | variant | cores | wall s (median) | runs | clips/s | vs stacked | "
        "peak RSS MiB | peak PSS MiB |",
        "|---|---:|---|---:|---:|---|---:|---:|---:|---:|",
    ]
    for (modality, variant, cores), runs in results.items():
        secs = [r["seconds"] for r in runs]
        med = statistics.median(secs)
        base = results.get((modality, "stacked", cores), [])
        paired = [b["seconds"] / r["seconds"] for b, r in zip(base, runs, strict=False)]
        ratio = f"{statistics.median(paired):.2f}x" if paired else "-"
        shown = ", ".join(f"{s:.1f}" for s in secs)
        lines.append(
            f"| {modality} ({PRESETS[modality]}) | {counts[modality]} | {variant} | {cores or os.cpu_count()} | "
            f"{med:.1f} | {shown} | {counts[modality] / med:.2f} | {ratio} | "
            f"{max(r['rss'] for r in runs) / 2**20:.0f} | {max(r['pss'] for r in runs) / 2**20:.0f} |"
        )
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--modalities", default="video,audio", help="Comma-separated (default video,audio).")
    parser.add_argument("--video-clips", type=int, default=150)
    parser.add_argument("--audio-clips", type=int, default=150)
    parser.add_argument("--rounds", type=int, default=3, help="Runs per variant, interleaved (default 3).")
    parser.add_argument("--cores", default="0", help="Comma-separated core counts to run under (0: all).")
    parser.add_argument(
        "--variants",
        default="stacked,embed",
        help="stacked, embed, embed-bf16, embed-in-threads (prefetch='threads'), embed-threads=N (torch threads).",
    )
    parser.add_argument("--quick", action="store_true", help="A smoke run: 30 video / 8 audio clips, 1 round.")
    parser.add_argument("--write", action="store_true", help="Write the table into benchmarks/RESULTS.md.")
    parser.add_argument("--label", help="Names this run's section of RESULTS.md (several runs, several tables).")
    parser.add_argument("--workdir", help="Keep inputs and checkpoints here (default: a temporary folder).")
    args = parser.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    if args.quick:
        args.video_clips, args.audio_clips, args.rounds = 30, 8, 1
    counts = {"video": args.video_clips, "audio": args.audio_clips}
    modalities = [m for m in args.modalities.split(",") if m]
    cores = [int(c) for c in args.cores.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="lbind-embed-bench-"))
    setup = {
        m: (make_checkpoint(m, work / f"ckpt-{m}"), make_inputs(m, counts[m], work / f"in-{m}")) for m in modalities
    }
    results: dict[tuple[str, str, int], list[dict[str, Any]]] = {}
    loads = [load_average()]
    for round_ in range(args.rounds):
        for modality in modalities:
            for n_cores in cores:
                for variant in variants:
                    ckpt, listing = setup[modality]
                    output = work / f"out-{modality}-{variant}-{n_cores}-{round_}.npy"
                    for old in (output, output.with_name(output.name + ".json")):
                        old.unlink(missing_ok=True)  # a fresh job, not a resumed one
                    spec = {"variant": variant.split("=")[0], "modality": modality, "ckpt": str(ckpt)}
                    spec.update(listing=str(listing), output=str(output))
                    if variant == "embed-bf16":
                        spec.update(variant="embed", precision="bfloat16")
                    if variant == "embed-in-threads":
                        spec.update(variant="embed", prefetch="threads")
                    if variant.startswith("embed-threads="):
                        spec["env"] = {"LBIND_NUM_THREADS": variant.split("=")[1]}
                    run = measure(spec, n_cores or None)
                    results.setdefault((modality, variant, n_cores), []).append(run)
                    print(f"round {round_} {modality} {variant} cores={n_cores or 'all'}: {run}", flush=True)
                    rows = [[*key, runs] for key, runs in results.items()]
                    (work / "results.json").write_text(json.dumps({"counts": counts, "runs": rows}), encoding="utf-8")
                    loads.append(load_average())
    import torch

    heading = SECTION + (f" ({args.label})" if args.label else " (--quick)" if args.quick else "")
    lines = [
        heading,
        "",
        "`lbind embed` (`lbcore.embedding.embed_job`, defaults) against the stacked approach (preprocess every file "
        "in the main process, one tensor, one forward), on real clips repeated to the count below; see the "
        "docstring of benchmarks/embed.py for the method. Wall time includes loading the checkpoint, not the "
        "imports; the ratio is the median over rounds of the stacked run's time over this variant's run in the same round.",
        "",
        f"Command: `python benchmarks/embed.py {shlex.join(sys.argv[1:])}`",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores visible, torch {torch.__version__}; "
        f"{args.rounds} round(s), variants interleaved; 1-minute load average over the runs: {', '.join(loads)}.",
        "",
        *table(results, counts),
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.write:
        from resultsfile import replace_section  # beside this script

        print(f"written to {replace_section(heading, text)}")


if __name__ == "__main__":
    main()
