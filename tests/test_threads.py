"""The CPU thread policy: cgroup and affinity reading, precedence config > environment > automatic, apply()
and the DataLoader worker initialiser."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pydantic
import pytest
import torch

from lbcore import threads
from lbcore.errors import ConfigError
from lbcore.threads import (
    ThreadPolicy,
    ThreadsConfig,
    apply,
    available_cores,
    busy_cores,
    cgroup_cpu_limit,
    choose_policy,
    decoder_threads,
    worker_init_fn,
)

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "LBIND_NUM_THREADS", "LBIND_NUM_WORKERS")
THREAD_VARS += ("LBIND_INTEROP_THREADS", "LBIND_DECODER_THREADS")


@pytest.fixture
def restored(monkeypatch: pytest.MonkeyPatch):
    """Torch's intra-op thread count, the thread variables and apply()'s record are as before after the test."""
    before = torch.get_num_threads()
    for name in THREAD_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(threads, "_exported", {})
    yield
    torch.set_num_threads(before)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def run_python(code: str, **env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARS}
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env={**clean, **env}, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


# -- cgroups -----------------------------------------------------------------------------------------------
def test_cgroup_v2_quota_is_the_tightest_along_the_path(tmp_path: Path) -> None:
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpu memory\n")
    write(root / "user.slice" / "cpu.max", "max 100000\n")
    write(root / "user.slice" / "job" / "cpu.max", "150000 100000\n")
    proc = write(tmp_path / "proc-cgroup", "0::/user.slice/job\n")
    assert cgroup_cpu_limit(proc, root) == pytest.approx(1.5)
    write(root / "user.slice" / "cpu.max", "50000 100000\n")  # a parent allows half a core
    assert cgroup_cpu_limit(proc, root) == pytest.approx(0.5)
    assert available_cores(proc, root) == 1


def test_cgroup_v2_max_means_no_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpu\n")
    write(root / "cpu.max", "max 100000\n")
    proc = write(tmp_path / "proc-cgroup", "0::/\n")
    assert cgroup_cpu_limit(proc, root) is None
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 5, 7})
    assert available_cores(proc, root) == 5


def test_cgroup_v2_inside_a_namespace_reads_the_mount_root(tmp_path: Path) -> None:
    # The process's path names a cgroup of the host; the container sees its own cgroup at the mount's root.
    root = tmp_path / "cgroup"
    write(root / "cgroup.controllers", "cpu\n")
    write(root / "cpu.max", "300000 100000\n")
    proc = write(tmp_path / "proc-cgroup", "0::/kubepods/pod42/container\n")
    assert cgroup_cpu_limit(proc, root) == pytest.approx(3.0)


def test_cgroup_v1_cfs_quota(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "cgroup"
    job = root / "cpu,cpuacct" / "docker" / "abc"
    write(job / "cpu.cfs_quota_us", "250000\n")
    write(job / "cpu.cfs_period_us", "100000\n")
    proc = write(tmp_path / "proc-cgroup", "11:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n1:name=systemd:/\n")
    assert cgroup_cpu_limit(proc, root) == pytest.approx(2.5)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    assert available_cores(proc, root) == 3  # a fractional core counts as one
    write(job / "cpu.cfs_quota_us", "-1\n")
    assert cgroup_cpu_limit(proc, root) is None
    assert available_cores(proc, root) == 8


def test_no_cgroup_file_system_means_no_limit(tmp_path: Path) -> None:
    assert cgroup_cpu_limit(tmp_path / "missing", tmp_path) is None
    assert available_cores(tmp_path / "missing", tmp_path) == len(os.sched_getaffinity(0))


def test_affinity_of_a_real_process_counts() -> None:
    out = run_python("""
        import os
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
        from pathlib import Path
        from lbcore.threads import available_cores, choose_policy
        missing = Path("/nonexistent")
        print(available_cores(missing, missing), choose_policy(busy=0.0).torch_threads)
    """)
    assert out == "1 1"


# -- busy cores --------------------------------------------------------------------------------------------
def test_busy_cores_counts_other_work_on_our_cpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # columns: user nice system idle iowait irq softirq steal guest guest_nice
    stat = write(
        tmp_path / "stat",
        "cpu  0 0 0 0 0 0 0 0 0 0\ncpu0 100 0 0 100 0 0 0 0 0 0\ncpu1 100 0 0 100 0 0 0 0 0 0\n"
        "cpu2 0 0 0 0 0 0 0 0 0 0\nintr 5\n",
    )
    later = (
        "cpu  0 0 0 0 0 0 0 0 0 0\n"
        "cpu0 130 0 10 140 10 5 5 0 0 0\n"  # busy +50 of +100
        "cpu1 160 0 40 100 0 0 0 0 0 0\n"  # busy +100 of +100
        "cpu2 100 0 0 0 0 0 0 0 0 0\n"  # not ours
    )
    monkeypatch.setattr(threads.time, "sleep", lambda seconds: stat.write_text(later))
    assert busy_cores(stat=stat, cpus={0, 1}) == pytest.approx(1.5)


# -- precedence --------------------------------------------------------------------------------------------
def test_automatic_choice_leaves_the_workers_their_cores() -> None:
    # Two workers from two cores on (the second sleeps while the first keeps up), one torch thread beside them:
    # the fastest setting measured on 2 cores, idle and beside a busy process; passive waiting, 3 > 2.
    idle2 = choose_policy(env={}, cores=2, busy=0.0)
    assert (idle2.workers, idle2.torch_threads, idle2.interop_threads, idle2.wait_policy) == (2, 1, 1, "passive")
    assert idle2.decoder_threads == 1
    busy2 = choose_policy(env={}, cores=2, busy=1.0)
    assert (busy2.workers, busy2.torch_threads, busy2.wait_policy) == (2, 1, "passive")
    four = choose_policy(env={}, cores=4, busy=0.0)  # the extra worker does not take a torch thread
    assert (four.workers, four.torch_threads) == (2, 3)
    big = choose_policy(env={}, cores=16, busy=0.2)
    assert (big.workers, big.torch_threads, big.wait_policy) == (4, 12, None)
    shared = choose_policy(env={}, cores=16, busy=6.0)
    assert (shared.workers, shared.torch_threads, shared.wait_policy) == (4, 6, None)
    one = choose_policy(env={}, cores=1, busy=0.0)
    assert (one.workers, one.torch_threads) == (0, 1)
    no_data = choose_policy(env={}, cores=8, busy=0.0, worker_share=0)
    assert (no_data.workers, no_data.torch_threads, no_data.decoder_threads) == (0, 8, 8)
    decode_bound = choose_policy(env={}, cores=4, busy=0.0, worker_share=0.5)
    assert (decode_bound.workers, decode_bound.torch_threads) == (2, 2)
    assert choose_policy(env={}, cores=64, busy=0.0, worker_share=0.5).workers == 4  # MAX_AUTO_WORKERS
    ranks = choose_policy(env={}, cores=8, busy=0.0, processes=2)
    assert (ranks.cores, ranks.workers, ranks.torch_threads) == (4, 2, 3)
    assert set(big.sources.values()) == {"auto"}


def test_environment_beats_the_automatic_choice() -> None:
    env = {"OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "5", "LBIND_NUM_WORKERS": "0", "OMP_WAIT_POLICY": "Active"}
    policy = choose_policy(env=env, cores=8, busy=0.0)
    assert (policy.torch_threads, policy.workers, policy.wait_policy) == (3, 0, "active")
    assert policy.decoder_threads == 3  # no workers: decoders get the intra-op count
    assert policy.sources["torch_threads"] == "env:OMP_NUM_THREADS"
    assert policy.sources["workers"] == "env:LBIND_NUM_WORKERS"
    assert choose_policy(env={"MKL_NUM_THREADS": "5"}, cores=8, busy=0.0).torch_threads == 5
    assert choose_policy(env={"LBIND_NUM_THREADS": "2", **env}, cores=8, busy=0.0).torch_threads == 2
    assert choose_policy(env={"OMP_NUM_THREADS": "4,2"}, cores=8, busy=0.0).torch_threads == 4  # nested list
    inter = choose_policy(env={"LBIND_INTEROP_THREADS": "2", "LBIND_DECODER_THREADS": "3"}, cores=8, busy=0.0)
    assert (inter.interop_threads, inter.decoder_threads) == (2, 3)
    # LBIND_NUM_WORKERS=0 gives the workers' cores back to torch
    assert choose_policy(env={"LBIND_NUM_WORKERS": "0"}, cores=4, busy=0.0).torch_threads == 4


def test_config_beats_the_environment() -> None:
    env = {"OMP_NUM_THREADS": "3", "LBIND_NUM_WORKERS": "0", "OMP_WAIT_POLICY": "PASSIVE"}
    config = ThreadsConfig(torch_threads=6, workers=2, wait_policy="active", interop_threads=2, decoder_threads=4)
    policy = choose_policy(config, env=env, cores=8, busy=0.0)
    assert (policy.torch_threads, policy.workers, policy.wait_policy) == (6, 2, "active")
    assert (policy.interop_threads, policy.decoder_threads) == (2, 4)
    assert set(policy.sources.values()) == {"config"}
    # fields left at their defaults still come from the environment
    partial = choose_policy(ThreadsConfig(workers=2), env=env, cores=8, busy=0.0)
    assert (partial.torch_threads, partial.workers, partial.wait_policy) == (3, 2, "passive")


@pytest.mark.parametrize(
    "env", [{"OMP_NUM_THREADS": "many"}, {"LBIND_NUM_WORKERS": "-1"}, {"OMP_WAIT_POLICY": "sometimes"}]
)
def test_bad_environment_values_name_the_variable(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError, match=next(iter(env))):
        choose_policy(env=env, cores=2, busy=0.0)


def test_threads_config_validates() -> None:
    with pytest.raises(pydantic.ValidationError):
        ThreadsConfig(torch_threads=0)
    with pytest.raises(pydantic.ValidationError):
        ThreadsConfig(threads=2)  # type: ignore[call-arg]
    with pytest.raises(pydantic.ValidationError):
        ThreadsConfig(wait_policy="spin")  # type: ignore[arg-type]


# -- apply -------------------------------------------------------------------------------------------------
def policy_of(**fields: object) -> ThreadPolicy:
    base = dict(torch_threads=1, interop_threads=torch.get_num_interop_threads(), workers=1, decoder_threads=1)
    base.update(wait_policy=None, cores=2, busy=0.0)
    base.update(fields)
    return ThreadPolicy(**base)  # type: ignore[arg-type]


@pytest.mark.usefixtures("restored")
def test_apply_sets_torch_threads_and_exports_for_workers() -> None:
    target = 1 if torch.get_num_threads() != 1 else 2
    apply(policy_of(torch_threads=target, decoder_threads=3, wait_policy="passive"))
    assert torch.get_num_threads() == target
    assert os.environ["LBIND_DECODER_THREADS"] == "3"
    assert decoder_threads() == 3
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    # lbind's own exports are not read back as the user's choice
    assert choose_policy(env=dict(os.environ), cores=2, busy=0.0).sources["wait_policy"] == "auto"
    apply(policy_of(torch_threads=target, wait_policy=None))
    assert "OMP_WAIT_POLICY" not in os.environ


@pytest.mark.slow
def test_apply_before_torch_sets_interop_once_and_warns_after() -> None:
    out = run_python("""
        import logging, os, sys
        logging.basicConfig(level=logging.WARNING, stream=sys.stdout, format="%(levelname)s %(message)s")
        from lbcore.threads import ThreadPolicy, apply
        assert "torch" not in sys.modules
        policy = ThreadPolicy(2, 1, 1, 1, "passive", 2, 0.0)
        apply(policy)
        import torch
        torch.ones(4096, 4096).sum()
        print("env", os.environ["OMP_WAIT_POLICY"], torch.get_num_threads(), torch.get_num_interop_threads())
        apply(ThreadPolicy(1, 2, 1, 1, "passive", 2, 0.0))
        print("later", torch.get_num_threads(), torch.get_num_interop_threads())
    """)
    lines = out.splitlines()
    assert lines[0] == "env PASSIVE 2 1"
    assert lines[1].startswith("WARNING torch inter-op threads stay at 1, not 2")
    assert lines[2] == "later 1 1"


class ThreadReport(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 1

    def __getitem__(self, index: int) -> tuple[int, int]:
        return torch.get_num_threads(), decoder_threads()


@pytest.mark.usefixtures("restored")
@pytest.mark.parametrize("init", [worker_init_fn, None], ids=["worker_init_fn", "without"])
def test_worker_init_fn_gives_each_worker_one_thread(init, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LBIND_DECODER_THREADS", "2")  # the main process decodes with two threads
    torch.set_num_threads(2)
    loader = torch.utils.data.DataLoader(ThreadReport(), batch_size=None, num_workers=1, worker_init_fn=init)
    (torch_threads, decoders) = next(iter(loader))
    assert int(torch_threads) == 1
    assert int(decoders) == (1 if init else 2)
    assert torch.get_num_threads() == 2 and decoder_threads() == 2  # the main process is left alone


def test_decoder_threads_reads_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LBIND_DECODER_THREADS", raising=False)
    assert decoder_threads() == 1
    monkeypatch.setenv("LBIND_DECODER_THREADS", "0")
    with pytest.raises(ConfigError, match="LBIND_DECODER_THREADS"):
        decoder_threads()


@pytest.mark.slow
def test_importing_changes_no_thread_count() -> None:
    alone = run_python("""
        import os, sys
        before = dict(os.environ)
        import lbcore, lbcore.threads
        print("torch" in sys.modules, dict(os.environ) == before)
    """)
    assert alone == "False True"  # torch not loaded, so OpenMP can still be told how to wait
    after_torch = run_python("""
        import os, torch
        before = dict(os.environ), torch.get_num_threads(), torch.get_num_interop_threads()
        import lbcore, lbcore.threads
        print(before == (dict(os.environ), torch.get_num_threads(), torch.get_num_interop_threads()))
    """)
    assert after_torch == "True"


def test_describe_names_every_count() -> None:
    text = ThreadPolicy(3, 1, 2, 1, None, 8, 1.0).describe()
    assert text == (
        "3 torch thread(s), 1 inter-op, 2 worker(s), 1 decoder thread(s), OpenMP wait default (8 core(s), 1.0 busy)"
    )
