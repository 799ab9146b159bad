"""CPU thread settings side by side: short `lbind train` runs of the audio demo preset, idle and under load.

Each variant is one fresh `lbind train -m audio --max-steps N` process. The trainer applies lbind's thread
policy (:mod:`lbcore.threads`) in every run; the variants pin the settings they vary through what that policy
obeys: the environment (``LBIND_NUM_THREADS`` = the cores for torch's own default thread count,
``OMP_NUM_THREADS``, ``OMP_WAIT_POLICY``) and ``--num-workers``. ``lbind default`` sets nothing: it is what a
user gets (the run prints the policy it will choose). Speed is steps per second over the steps after the
first ``--skip`` ones (start-up, model building and the first batch excluded), read from the run's
metrics.jsonl; the median of ``--rounds`` runs, the variants interleaved (each round in a rotated order).

Loads, each kept running while its variants run:

* ``idle``: nothing else started (other work on the machine is not controlled; see the busy-core reading);
* ``busy``: one Python process spinning one core;
* ``torch``: a second torch job multiplying 512 x 512 matrices with torch's default threads.

    python benchmarks/threads.py --write          # the full table into benchmarks/RESULTS.md
    python benchmarks/threads.py --quick          # a smoke run: 1 round, 12 steps, idle and busy
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RUN_CLI = "import sys\nfrom lbcore.cli import main\nmain(sys.argv[1:])"
RUN_DEFAULT = """import sys
from lbcore.threads import choose_policy
print("lbind-policy:", choose_policy().describe(), file=sys.stderr, flush=True)  # what the trainer will choose
from lbcore.cli import main
main(sys.argv[1:])
"""
CORES = str(os.cpu_count() or 1)
LBIND = "lbind default (its thread policy)"
HEADING = "## CPU thread policy"
# name -> (environment, extra `lbind train` arguments, program). lbind applies its thread policy in every run;
# the variants pin what they vary through the variables and flags that policy obeys (LBIND_NUM_THREADS = cores:
# torch's own default thread count).
VARIANTS: dict[str, tuple[dict[str, str], list[str], str]] = {
    "torch's default (threads = cores, 1 worker)": ({"LBIND_NUM_THREADS": CORES}, ["--num-workers", "1"], RUN_CLI),
    "OMP_NUM_THREADS=1": ({"OMP_NUM_THREADS": "1"}, ["--num-workers", "1"], RUN_CLI),
    "OMP_WAIT_POLICY=PASSIVE": (
        {"LBIND_NUM_THREADS": CORES, "OMP_WAIT_POLICY": "PASSIVE"},
        ["--num-workers", "1"],
        RUN_CLI,
    ),
    "no worker": ({"LBIND_NUM_THREADS": CORES}, ["--num-workers", "0"], RUN_CLI),
    "OMP_NUM_THREADS=1, 2 workers": ({"OMP_NUM_THREADS": "1"}, ["--num-workers", "2"], RUN_CLI),
    LBIND: ({}, [], RUN_DEFAULT),
}
LOADS: dict[str, list[str]] = {
    "idle": [],
    "busy": ["-c", "while True:\n    pass"],
    "torch": ["-c", "import torch\na = torch.randn(512, 512)\nwhile True:\n    a @ a"],
}
# Variables a variant sets; cleared from the environment each run starts from, so only the variant's count.
CLEARED = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "LBIND_NUM_THREADS", "LBIND_NUM_WORKERS")


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in CLEARED}
    root = Path(__file__).resolve().parent.parent
    plugins = [str(p) for p in sorted((root / "plugins").glob("*")) if p.is_dir()]
    env["PYTHONPATH"] = os.pathsep.join([str(root), *plugins, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def run_variant(name: str, steps: int, skip: int, workdir: Path, timeout: float | None = None) -> tuple[float, str]:
    """(steps per second after the first ``skip`` steps, the policy line if the variant printed one); NaN steps
    per second for a run that took longer than ``timeout`` seconds (it is stopped)."""
    env_extra, args, program = VARIANTS[name]
    out = Path(tempfile.mkdtemp(dir=workdir))
    command = [sys.executable, "-c", program, "train", "-m", "audio", "--max-steps", str(steps)]
    command += ["--output", str(out / "run"), *args]
    try:
        done = subprocess.run(
            command, env={**base_env(), **env_extra}, capture_output=True, text=True, check=False, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return math.nan, ""
    if done.returncode != 0:
        raise RuntimeError(f"variant {name!r} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    records = [json.loads(line) for line in (out / "run" / "metrics.jsonl").read_text().splitlines() if line]
    times = [r["step_time_s"] for r in records[skip:]]
    if not times:
        raise RuntimeError(f"variant {name!r}: {len(records)} steps logged, none after the first {skip}")
    policy = next((line for line in done.stderr.splitlines() if line.startswith("lbind-policy:")), "")
    return len(times) / sum(times), policy.removeprefix("lbind-policy:").strip()


def measure_load(load: str, variants: list[str], args: argparse.Namespace, workdir: Path) -> dict[str, object]:
    """Median steps/s of each variant under ``load``, and the policy lbind chose under it."""
    competitor = subprocess.Popen([sys.executable, *LOADS[load]], env=base_env()) if LOADS[load] else None
    speeds: dict[str, list[float]] = {v: [] for v in variants}
    policies: list[str] = []
    try:
        time.sleep(1.0 if competitor else 0.0)  # let the competing job reach its steady state
        for round_ in range(args.rounds):
            order = variants[round_ % len(variants) :] + variants[: round_ % len(variants)]
            for name in order:
                speed, policy = run_variant(name, args.steps, args.skip, workdir, args.timeout)
                speeds[name].append(speed)
                policies += [policy] if policy else []
                print(f"  {load:5s} round {round_ + 1}: {name:45s} {speed:6.2f} steps/s", flush=True)
    finally:
        if competitor is not None:
            competitor.terminate()
            competitor.wait()
    return {"speeds": {v: median(s) for v, s in speeds.items()}, "policies": policies}


def median(values: list[float]) -> float:
    """The median of the runs that finished (NaN when none did)."""
    done = [v for v in values if not math.isnan(v)]
    return statistics.median(done) if done else math.nan


def render(results: dict[str, dict[str, object]], args: argparse.Namespace, machine: str) -> str:
    variants = list(VARIANTS)
    loads = list(results)
    lines = [
        HEADING,
        "",
        "Short `lbind train -m audio` runs (demo preset) side by side: steps/s after the first "
        f"{args.skip} steps (start-up excluded) from metrics.jsonl, median of {args.rounds} fresh process(es) per "
        "variant, variants interleaved; in brackets the speed relative to torch's default under the same load. "
        "Loads: `busy` = one process spinning one core, `torch` = a second torch job (512x512 matmuls, "
        "torch's default threads).",
        "",
        f"Command: `python benchmarks/threads.py {' '.join(sys.argv[1:])}`",
        "",
        f"Machine: {machine}; {args.steps} steps per run.",
        "",
        "| variant | " + " | ".join(loads) + " |",
        "|---|" + "---:|" * len(loads),
    ]
    for variant in variants:
        cells = []
        for load in loads:
            speeds = results[load]["speeds"]  # type: ignore[index]
            base = speeds[variants[0]]
            speed = speeds[variant]
            if math.isnan(speed):
                cells.append(f"> {args.timeout:.0f} s per run")
            else:
                cells.append(f"{speed:.2f}" + ("" if math.isnan(base) else f" ({speed / base:.2f}x)"))
        lines.append(f"| {variant} | " + " | ".join(cells) + " |")
    verdict = []
    for load in loads:
        speeds = results[load]["speeds"]  # type: ignore[index]
        finished = {v: s for v, s in speeds.items() if not math.isnan(s)}  # type: ignore[union-attr]
        best = max(finished, key=finished.get)  # type: ignore[arg-type]
        share = speeds[LBIND] / finished[best]
        chosen = sorted(set(results[load]["policies"]))  # type: ignore[call-overload]
        verdict.append(
            f"- {load}: lbind's default at {share:.0%} of the best ({best}); chose: {'; '.join(chosen) or 'n/a'}"
        )
    lines += ["", *verdict, ""]
    if args.quick:
        lines += [
            "This is a --quick smoke run (1 round, few steps) taken while other jobs shared the machine: it shows "
            "that the benchmark runs, not which setting is fastest. Take the full numbers on a quiet machine "
            "with `python benchmarks/threads.py --write`.",
            "",
        ]
    return "\n".join(lines)


def machine_line() -> str:
    import torch

    from lbcore.threads import available_cores, busy_cores, cgroup_cpu_limit

    limit = cgroup_cpu_limit()
    return (
        f"{platform.platform()}, {os.cpu_count()} CPUs, {available_cores()} usable by lbind "
        f"(affinity, cgroup quota {'none' if limit is None else f'{limit:g}'}), "
        f"{busy_cores(1.0):.1f} busy before the runs; torch {torch.__version__}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="Steps per run (default 30).")
    parser.add_argument("--skip", type=int, default=2, help="First steps left out of the timing (default 2).")
    parser.add_argument("--rounds", type=int, default=3, help="Runs per variant and load (median; default 3).")
    parser.add_argument("--loads", nargs="+", choices=list(LOADS), default=list(LOADS), help="Loads to run.")
    parser.add_argument("--timeout", type=float, default=600, help="Seconds before a run is stopped (default 600).")
    parser.add_argument(
        "--quick", action="store_true", help="Smoke run: 1 round of 12 steps, idle and busy, 120 s per run at most."
    )
    parser.add_argument("--write", action="store_true", help="Write the table into benchmarks/RESULTS.md.")
    args = parser.parse_args()
    if args.quick:
        args.steps, args.rounds, args.loads, args.timeout = 12, 1, ["idle", "busy"], min(args.timeout, 120)
    machine = machine_line()
    print(machine, flush=True)
    with tempfile.TemporaryDirectory(prefix="lbind-threads-") as tmp:
        workdir = Path(tmp)
        run_variant(next(iter(VARIANTS)), 2, 0, workdir)  # warm-up: demo data, caption cache, file caches
        results = {load: measure_load(load, list(VARIANTS), args, workdir) for load in args.loads}
    from resultsfile import publish  # beside this script

    publish(HEADING, render(results, args, machine), args.write)


if __name__ == "__main__":
    main()
