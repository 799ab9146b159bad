"""The CPU thread policy: how many threads torch, OpenMP, DataLoader workers and media decoders use.

Torch's default (one intra-op thread per core) beside a DataLoader worker oversubscribes the cores: on a
2-core machine the worker and two spinning OpenMP threads fight for two cores, and every other job on the
machine makes it worse. lbind chooses instead, from the cores it may use (affinity mask and cgroup CPU quota,
see :func:`available_cores`) and from how busy they are right now (:func:`busy_cores`):

* DataLoader workers: none on one core, else a share of the cores (``worker_share``: a quarter for training,
  where the encoder dominates; more for a decode-bound embedding job), at least two, at most
  :data:`MAX_AUTO_WORKERS`; none for a job without per-sample preprocessing (``worker_share=0``). The second
  worker costs nothing when one keeps up (the loader's prefetch is bounded, so it sleeps) and keeps the
  encoder fed when a sample takes longer than a step: on 2 cores, idle or beside a busy one, two workers and
  one torch thread ran the audio demo preset 1.2-1.3x faster than one worker (benchmarks/RESULTS.md).
* torch intra-op threads: the idle cores left after the workers' share of the cores (``worker_share``), at
  least one.
* torch inter-op threads: one (lbind runs no inter-op parallel work; fewer idle threads).
* OpenMP waiting: passive (no spinning) when the threads and workers outnumber the idle cores, else the
  OpenMP runtime's default.
* decoder threads (video/audio decoders in plugins, see :func:`decoder_threads`): one per worker when there
  are workers (the parallelism is the workers'), else the intra-op count.

Each value is taken from, first to last: an explicit :class:`ThreadsConfig` value; the environment; the
automatic choice. The environment variables read:

=========================  ===================================================================
``LBIND_NUM_THREADS``      torch intra-op threads (lbind only); then ``OMP_NUM_THREADS``, then
                           ``MKL_NUM_THREADS`` (the first number of a nested OpenMP list)
``LBIND_INTEROP_THREADS``  torch inter-op threads
``LBIND_NUM_WORKERS``      DataLoader worker processes per training / embedding process
``LBIND_DECODER_THREADS``  threads per media decoder
``OMP_WAIT_POLICY``        ``active`` or ``passive``
=========================  ===================================================================

Use::

    policy = choose_policy(config.threads, processes=local_world_size)   # reads no torch state
    apply(policy)                          # before torch is imported, if OMP_WAIT_POLICY is to count
    DataLoader(..., num_workers=policy.workers, worker_init_fn=worker_init_fn)

Importing this module changes nothing and does not import torch: OpenMP reads ``OMP_WAIT_POLICY`` once, when
torch loads it, so :func:`apply` must be able to set it before torch is imported.
"""

from __future__ import annotations

import logging
import math
import os
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from lbcore.config import StrictModel
from lbcore.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = [
    "ENV_DECODER_THREADS",
    "ENV_INTEROP_THREADS",
    "ENV_TORCH_THREADS",
    "ENV_WAIT_POLICY",
    "ENV_WORKERS",
    "MAX_AUTO_WORKERS",
    "ThreadPolicy",
    "ThreadsConfig",
    "apply",
    "available_cores",
    "busy_cores",
    "cgroup_cpu_limit",
    "choose_policy",
    "decoder_threads",
    "keep_thread_count",
    "worker_init_fn",
]

ENV_TORCH_THREADS = ("LBIND_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
"""Environment variables for torch's intra-op threads, the first one set wins."""
ENV_INTEROP_THREADS = "LBIND_INTEROP_THREADS"
ENV_WORKERS = "LBIND_NUM_WORKERS"
ENV_DECODER_THREADS = "LBIND_DECODER_THREADS"
ENV_WAIT_POLICY = "OMP_WAIT_POLICY"
MAX_AUTO_WORKERS = 4
"""The most DataLoader workers the automatic choice starts (set more through config or LBIND_NUM_WORKERS)."""

PROC_CGROUP = Path("/proc/self/cgroup")
CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_STAT = Path("/proc/stat")

WaitPolicy = Literal["auto", "active", "passive"]

# Environment values apply() wrote: read back later in this process they are lbind's choice, not the user's.
_exported: dict[str, str] = {}


class ThreadsConfig(StrictModel):
    """The ``threads`` section of a run config: CPU threads and worker processes. Every field left at its
    default is taken from the environment (see :mod:`lbcore.threads`), else chosen from the cores lbind may use
    and how busy they are."""

    torch_threads: int | None = Field(
        None, ge=1, description="torch intra-op threads per process (null: OMP_NUM_THREADS, else idle cores - workers)."
    )
    interop_threads: int | None = Field(
        None, ge=1, description="torch inter-op threads per process (null: LBIND_INTEROP_THREADS, else 1)."
    )
    workers: int | None = Field(
        None,
        ge=0,
        description="DataLoader worker processes per process (null: LBIND_NUM_WORKERS, else 1 per 4 cores, 0 on 1 core).",
    )
    decoder_threads: int | None = Field(
        None,
        ge=1,
        description="Threads per media decoder (null: LBIND_DECODER_THREADS, else 1 with workers, else torch_threads).",
    )
    wait_policy: WaitPolicy = Field(
        "auto",
        description=(
            "OpenMP waiting: 'passive' threads sleep at once when idle, 'active' ones spin; 'auto': OMP_WAIT_POLICY "
            "if set, else passive when threads and workers outnumber the idle cores."
        ),
    )


@dataclass(frozen=True)
class ThreadPolicy:
    """The thread counts one process uses, and where each came from (``sources``: field -> 'config',
    'env:NAME' or 'auto')."""

    torch_threads: int
    interop_threads: int
    workers: int
    decoder_threads: int
    wait_policy: Literal["active", "passive"] | None
    """None: leave the OpenMP runtime's default."""
    cores: int
    """Cores this process may use (its share of :func:`available_cores`)."""
    busy: float
    """Cores other work kept busy when the policy was chosen."""
    sources: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        """One line for logs."""
        wait = self.wait_policy or "default"
        return (
            f"{self.torch_threads} torch thread(s), {self.interop_threads} inter-op, {self.workers} worker(s), "
            f"{self.decoder_threads} decoder thread(s), OpenMP wait {wait} "
            f"({self.cores} core(s), {self.busy:.1f} busy)"
        )


# -- the cores lbind may use -----------------------------------------------------------------------------
def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii")
    except FileNotFoundError:
        return None
    except OSError as err:
        log.debug("cannot read %s (%s); no CPU limit taken from it", path, err)
        return None


def _cgroup_dirs(mount: Path, relative: str) -> list[Path]:
    """``mount/relative`` and its parents up to ``mount``; just ``mount`` when the process sees its own cgroup
    as the mount's root (a cgroup namespace, as in most containers)."""
    start = mount.joinpath(*[part for part in relative.split("/") if part])
    if not start.is_dir():
        start = mount
    dirs = [start]
    while dirs[-1] != mount and mount in dirs[-1].parents:
        dirs.append(dirs[-1].parent)
    return dirs


def _quota_v2(directory: Path) -> float | None:
    text = _read_text(directory / "cpu.max")
    if text is None:
        return None
    parts = text.split()
    if parts[:1] == ["max"]:
        return None
    return _ratio(directory / "cpu.max", parts[0] if parts else "", parts[1] if len(parts) > 1 else "")


def _quota_v1(directory: Path) -> float | None:
    quota = _read_text(directory / "cpu.cfs_quota_us")
    period = _read_text(directory / "cpu.cfs_period_us")
    if quota is None or period is None or quota.strip() == "-1":
        return None
    return _ratio(directory / "cpu.cfs_quota_us", quota.strip(), period.strip())


def _ratio(path: Path, quota: str, period: str) -> float | None:
    """quota / period in cores; None (no limit) for a negative quota, and with a warning for values that are
    not integers or a period that is not positive (a kernel lbind does not know: better no limit than a crash)."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        log.warning("%s: CPU quota %r / period %r are not integers; no CPU limit taken from it", path, quota, period)
        return None
    if p <= 0:
        log.warning("%s: CPU period %d is not positive; no CPU limit taken from it", path, p)
        return None
    return q / p if q >= 0 else None


def cgroup_cpu_limit(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> float | None:
    """The CPU quota of this process's cgroup in cores (1.5 = 150 ms per 100 ms), the tightest along its path
    to the root, cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``) alike; None when
    there is no quota or no cgroup file system (not Linux)."""
    text = _read_text(proc_cgroup)
    if text is None:
        return None
    limits: list[float] = []
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, relative = rest.partition(":")
        if hierarchy == "0" and controllers == "":
            # v2 alone is mounted at the root; beside v1 ("hybrid"), at root/unified
            mounts, reader = [root if (root / "cgroup.controllers").is_file() else root / "unified"], _quota_v2
        elif "cpu" in controllers.split(","):
            mounts, reader = [root / controllers, root / "cpu", root / "cpu,cpuacct"], _quota_v1
        else:
            continue
        mount = next((m for m in mounts if m.is_dir()), None)
        if mount is None:
            continue
        limits.extend(q for d in _cgroup_dirs(mount, relative) if (q := reader(d)) is not None)
    return min(limits) if limits else None


def _affinity() -> set[int] | None:
    getter = getattr(os, "sched_getaffinity", None)  # Linux only
    return set(getter(0)) if getter is not None else None


def available_cores(proc_cgroup: Path = PROC_CGROUP, root: Path = CGROUP_ROOT) -> int:
    """The cores this process may run on: its CPU affinity (``taskset``, ``docker --cpuset-cpus``), capped by
    the cgroup CPU quota (``docker --cpus``, Kubernetes limits; a fractional quota counts as a whole core),
    at least 1."""
    allowed = _affinity()
    cores = len(allowed) if allowed else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit(proc_cgroup, root)
    if limit is not None:
        cores = min(cores, math.ceil(limit))
    return max(1, cores)


# -- how busy they are -----------------------------------------------------------------------------------
def _cpu_times(stat: Path, cpus: set[int] | None) -> dict[int, tuple[int, int]] | None:
    """cpu index -> (busy jiffies, total jiffies) from /proc/stat, for ``cpus`` (None: all)."""
    text = _read_text(stat)
    if text is None:
        return None
    times: dict[int, tuple[int, int]] = {}
    for line in text.splitlines():
        name, *values = line.split()
        if not name.startswith("cpu") or name == "cpu":
            continue
        index = int(name[3:])
        if cpus is not None and index not in cpus:
            continue
        # user nice system idle iowait irq softirq steal (guest time is already inside user)
        ticks = [int(v) for v in values[:8]]
        idle = ticks[3] + ticks[4]
        times[index] = (sum(ticks) - idle, sum(ticks))
    return times


def busy_cores(interval: float = 0.25, *, stat: Path = PROC_STAT, cpus: set[int] | None = None) -> float:
    """How many of the cores this process may run on (``cpus``, default its affinity) other work keeps busy,
    sampled from /proc/stat over ``interval`` seconds while this process sleeps; without /proc/stat (not
    Linux), the 1-minute load average, capped at the core count."""
    cpus = _affinity() if cpus is None else cpus
    before = _cpu_times(stat, cpus)
    if before is None:
        getter = getattr(os, "getloadavg", None)
        load = getter()[0] if getter is not None else 0.0
        return min(load, float(len(cpus) if cpus else (os.cpu_count() or 1)))
    time.sleep(interval)
    after = _cpu_times(stat, cpus) or {}
    busy = 0.0
    for index, (b0, t0) in before.items():
        b1, t1 = after.get(index, (b0, t0))
        if t1 > t0:
            busy += (b1 - b0) / (t1 - t0)
    return busy


# -- the choice ------------------------------------------------------------------------------------------
def _env_count(env: Mapping[str, str], names: tuple[str, ...], minimum: int) -> tuple[int, str] | None:
    for name in names:
        raw = env.get(name, "").strip()
        if not raw or _exported.get(name) == raw:
            continue
        first = raw.split(",")[0].strip()  # OpenMP allows a list per nesting level: "4,2"
        if not first.isdigit() or int(first) < minimum:
            raise ConfigError(f"environment variable {name}={raw!r}: expected an integer >= {minimum}")
        return int(first), f"env:{name}"
    return None


def _env_wait(env: Mapping[str, str]) -> Literal["active", "passive"] | None:
    raw = env.get(ENV_WAIT_POLICY, "").strip()
    if not raw or _exported.get(ENV_WAIT_POLICY) == raw:
        return None
    value = raw.lower()
    if value not in ("active", "passive"):
        raise ConfigError(f"environment variable {ENV_WAIT_POLICY}={raw!r}: expected ACTIVE or PASSIVE")
    return value  # type: ignore[return-value]


def _pick(explicit: int | None, env: Mapping[str, str], names: tuple[str, ...], minimum: int) -> tuple[int, str] | None:
    if explicit is not None:
        return explicit, "config"
    return _env_count(env, names, minimum)


def choose_policy(
    config: ThreadsConfig | None = None,
    *,
    worker_share: float = 0.25,
    processes: int = 1,
    env: Mapping[str, str] | None = None,
    cores: int | None = None,
    busy: float | None = None,
) -> ThreadPolicy:
    """The thread policy of one process: ``config`` values first, then the environment, then the automatic
    choice (see :mod:`lbcore.threads`). ``worker_share``: the share of the cores the automatic choice gives
    to DataLoader workers (0: the job has no per-sample preprocessing, no workers). ``processes``: processes
    of this job sharing the cores (e.g. accelerate's local world size). ``cores`` / ``busy`` default to
    :func:`available_cores` and :func:`busy_cores` (which sleeps a quarter of a second; the worker count does
    not depend on it, so ``busy=0.0`` gives it for free)."""
    config = config or ThreadsConfig()
    env = os.environ if env is None else env
    if processes < 1 or not 0 <= worker_share <= 1:
        raise ConfigError(f"processes={processes}, worker_share={worker_share}: expected >= 1 and within [0, 1]")
    share = max(1, (available_cores() if cores is None else cores) // processes)
    if busy is None:
        busy = busy_cores() / processes
    idle = max(1, share - math.floor(busy + 0.5))  # cores not kept busy by others, rounded half up
    sources: dict[str, str] = {}

    picked = _pick(config.workers, env, (ENV_WORKERS,), 0)
    worker_cores = max(1, math.floor(share * worker_share)) if share > 1 and worker_share > 0 else 0
    auto_workers = min(MAX_AUTO_WORKERS, max(2, worker_cores)) if worker_cores else 0
    workers = picked[0] if picked else auto_workers
    sources["workers"] = picked[1] if picked else "auto"
    if picked:
        worker_cores = workers  # workers the user asked for get a core each

    picked = _pick(config.torch_threads, env, ENV_TORCH_THREADS, 1)
    torch_threads = picked[0] if picked else max(1, min(share, idle) - worker_cores)
    sources["torch_threads"] = picked[1] if picked else "auto"

    picked = _pick(config.interop_threads, env, (ENV_INTEROP_THREADS,), 1)
    interop = picked[0] if picked else 1
    sources["interop_threads"] = picked[1] if picked else "auto"

    picked = _pick(config.decoder_threads, env, (ENV_DECODER_THREADS,), 1)
    decoders = picked[0] if picked else (1 if workers else torch_threads)
    sources["decoder_threads"] = picked[1] if picked else "auto"

    wait: Literal["active", "passive"] | None
    if config.wait_policy != "auto":
        wait, sources["wait_policy"] = config.wait_policy, "config"
    elif (from_env := _env_wait(env)) is not None:
        wait, sources["wait_policy"] = from_env, f"env:{ENV_WAIT_POLICY}"
    else:
        wait = "passive" if torch_threads + workers > idle else None
        sources["wait_policy"] = "auto"
    return ThreadPolicy(torch_threads, interop, workers, decoders, wait, share, busy, sources)


# -- applying it -----------------------------------------------------------------------------------------
def _export(name: str, value: str) -> None:
    os.environ[name] = value
    _exported[name] = value


def apply(policy: ThreadPolicy) -> None:
    """Make this process follow ``policy``: torch's intra- and inter-op threads, ``OMP_WAIT_POLICY`` and
    ``LBIND_DECODER_THREADS`` (exported, so DataLoader workers and child processes see them).

    The OpenMP runtime reads ``OMP_WAIT_POLICY`` when torch loads it: call this before the first
    ``import torch`` for the wait policy to count in this process (it counts in processes started later either
    way). Inter-op threads can only be set before torch's first inter-op work; later, they are left as they
    are, with a warning."""
    torch_loaded = "torch" in sys.modules
    if policy.wait_policy is None and ENV_WAIT_POLICY in _exported:
        os.environ.pop(ENV_WAIT_POLICY, None)  # lbind's earlier choice, not the user's: back to the default
        del _exported[ENV_WAIT_POLICY]
    elif policy.wait_policy is not None and os.environ.get(ENV_WAIT_POLICY, "").lower() != policy.wait_policy:
        _export(ENV_WAIT_POLICY, policy.wait_policy.upper())
        if torch_loaded:
            log.info(
                "OMP_WAIT_POLICY=%s counts in processes started from now on; this one loaded OpenMP before",
                policy.wait_policy.upper(),
            )
    if os.environ.get(ENV_DECODER_THREADS) != str(policy.decoder_threads):
        _export(ENV_DECODER_THREADS, str(policy.decoder_threads))

    import torch  # here, not at the top: the wait policy above must be in the environment before torch loads

    torch.set_num_threads(policy.torch_threads)
    if torch.get_num_interop_threads() != policy.interop_threads:
        try:
            torch.set_num_interop_threads(policy.interop_threads)
        except RuntimeError as err:  # torch allows it once, before any inter-op work
            log.warning(
                "torch inter-op threads stay at %d, not %d: %s",
                torch.get_num_interop_threads(),
                policy.interop_threads,
                err,
            )
    log.info("threads: %s", policy.describe())


def keep_thread_count(policy: ThreadPolicy, recorded: Any) -> None:
    """On resuming a run, continue with its intra-op thread count ``recorded`` (a positive int, else nothing
    happens) when ``policy`` chose this process's count automatically: that choice follows the machine's
    momentary load, and CPU kernels split their sums by thread, so another count would end with other weights
    than the uninterrupted run's. A count set in config or the environment is kept."""
    if policy.sources.get("torch_threads") != "auto" or not isinstance(recorded, int) or recorded < 1:
        return
    import torch  # here, not at the top: this module decides thread settings before torch loads

    if recorded != torch.get_num_threads():
        log.info("resume: %d torch thread(s), as the run being resumed had (threads.torch_threads sets it)", recorded)
        torch.set_num_threads(recorded)


def worker_init_fn(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: one torch thread and one decoder thread per worker process (the
    parallelism is the workers'; more threads per worker only oversubscribe the cores)."""
    import torch  # a worker process has torch loaded already; imported here to keep this module torch-free

    torch.set_num_threads(1)
    _export(ENV_DECODER_THREADS, "1")


def decoder_threads() -> int:
    """Threads a media decoder should use in this process (for plugins: decord's ``num_threads``, PyAV's
    ``thread_count``): ``LBIND_DECODER_THREADS`` as the user, :func:`apply` or :func:`worker_init_fn` set it,
    else 1."""
    raw = os.environ.get(ENV_DECODER_THREADS, "").strip() or "1"
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"environment variable {ENV_DECODER_THREADS}={raw!r}: expected an integer >= 1")
    return int(raw)
