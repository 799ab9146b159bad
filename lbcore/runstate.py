"""A run folder's resumable state: checkpoints with ``train_state/``, resuming from the newest, ``metrics.jsonl``.

A run checkpoint is a model checkpoint (:mod:`lbcore.checkpoint`) plus ``train_state/``: the live encoders, the
optimiser, every process's random generators and the gradient scaler (pickle-free files, see
:mod:`lbcore.statefiles`), the temperatures, the learning-rate schedule and the progress (step, samples seen,
time, skipped files). Every process writes into the same temporary folder, which the main process renames into
place once all are done (a failed write removes it). Resuming checks that the anchor, the modality configs and the
data give the same run, reads and checks every file before changing anything, and falls back to the previous
checkpoint, with a warning, when the newest is incomplete or corrupt.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from safetensors.torch import save_file

from lbcore.checkpoint import (
    PROGRESS_FILE,
    TRAIN_STATE_DIR,
    prune_step_dirs,
    read_meta,
    remove_tree,
    replace_dir,
    resumable_checkpoints,
    write_json,
)
from lbcore.errors import CheckpointError, ConfigError
from lbcore.grouping import GROUPS_FILE, load_group_state
from lbcore.model import BindModel, base_reference
from lbcore.optim import scheduler_state
from lbcore.statefiles import (
    SCALER_FILE,
    apply_rng,
    read_encoder,
    read_json,
    read_optimizer,
    read_rng,
    read_tensors,
    save_encoder,
    save_optimizer,
    save_rng,
)

log = logging.getLogger(__name__)

__all__ = [
    "ResumeTarget",
    "adapter_modalities",
    "open_metrics",
    "restore_checkpoint",
    "restore_latest",
    "save_checkpoint",
]

METRICS_FILE = "metrics.jsonl"
SCALES_FILE = "logit_scales.safetensors"
SCHEDULER_FILE = "scheduler.json"


def adapter_modalities(model: BindModel, init_specs: Mapping[str, str], save_full: bool) -> list[str]:
    """The modalities whose checkpoint weights are LoRA adapter + trained extras + base reference: those trained
    with LoRA from a base (``init_specs[name]``) that loads back to exactly their frozen weights, unless
    ``save_full``. The others are saved in full. Records each base in ``model.base_sources`` and logs the choice."""
    chosen = []
    for name, modality in model.modalities.items():
        if save_full or modality.config.lora.rank <= 0:
            continue
        init = init_specs[name]
        source = base_reference(init)
        if source is None:
            log.info("%s: LoRA on an encoder initialised from %r: no base to refer to, saving full weights", name, init)
            continue
        model.base_sources[name] = source
        try:
            model.verify_base(name)
        except CheckpointError as err:
            log.warning("%s: saving full weights instead of the LoRA adapter: %s", name, err)
            continue
        log.info("%s: checkpoints hold the LoRA adapter and trained extras; base weights: %s", name, source)
        chosen.append(name)
    return chosen


def save_checkpoint(
    accelerator: Any,
    target: Path,
    *,
    model: BindModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    extra: Mapping[str, Any],
    progress: Callable[[], Mapping[str, Any]],
    adapter_only: list[str],
    keep: int,
) -> Path:
    """Write the run checkpoint ``target`` (collective: every process calls it) and prune the periodic ones to
    the newest ``keep``. ``extra`` goes into ``lbind.json``. ``progress()`` gives ``train_state/progress.json``'s
    record; it is called once the weights are written, so the time it records includes the save. A failed write
    (a full disk, weights that are not finite) removes the temporary folder and raises."""
    acc = accelerator
    tmp = target.parent / f".tmp-{target.name}"  # same name on every process: they all write into it
    state_dir = tmp / TRAIN_STATE_DIR
    acc.wait_for_everyone()
    if acc.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        state_dir.mkdir(parents=True)
    acc.wait_for_everyone()
    try:
        if acc.is_main_process:
            model.write_files(tmp, dict(extra), adapter_only=adapter_only)
            _write_train_state(acc, state_dir, model, optimizer, scheduler)
        save_rng(state_dir, acc.process_index)
        if acc.is_main_process:
            record = dict(progress())
            write_json(state_dir / PROGRESS_FILE, record)
    except BaseException:
        if acc.is_main_process:
            remove_tree(tmp)
        raise
    acc.wait_for_everyone()
    if acc.is_main_process:
        replace_dir(tmp, target)
        prune_step_dirs(target.parent, keep)
        log.info("checkpoint at step %d: %s", record["step"], target)
    acc.wait_for_everyone()
    return target


def _write_train_state(
    accelerator: Any,
    state_dir: Path,
    model: BindModel,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
) -> None:
    """The process-independent part of ``train_state/`` (written by the main process)."""
    for name, encoder in model.encoders.items():
        save_encoder(_unwrap(encoder), state_dir, name)
    save_optimizer(optimizer, state_dir)
    scaler = getattr(accelerator, "scaler", None)
    if scaler is not None:
        write_json(state_dir / SCALER_FILE, scaler.state_dict())
    scales = {n: s.value.detach().cpu().reshape(1).clone() for n, s in model.logit_scales.items()}
    save_file(scales, str(state_dir / SCALES_FILE))
    write_json(state_dir / SCHEDULER_FILE, scheduler_state(scheduler))


def _unwrap(module: torch.nn.Module) -> torch.nn.Module:
    inner = getattr(module, "module", None)  # DistributedDataParallel
    return inner if isinstance(inner, torch.nn.Module) else module


@dataclass(frozen=True)
class ResumeTarget:
    """What a resume loads into, and what the checkpoint must agree with (the run being started)."""

    model: BindModel
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    anchor_fingerprint: str
    steps_per_epoch: int
    total_steps: int


def _check_same_run(latest: Path, target: ResumeTarget) -> None:
    """Refuse to resume a checkpoint trained against another anchor or with other modality configs."""
    anchor_fingerprint = target.anchor_fingerprint
    meta = read_meta(latest)
    if meta["anchor"].get("fingerprint") != anchor_fingerprint:
        raise ConfigError(
            f"{latest}: trained against anchor {str(meta['anchor'].get('fingerprint', '?'))[:12]}, but this run's "
            f"anchor is {anchor_fingerprint[:12]}; resume with the same anchor or use a new --output"
        )
    saved = {n: s.get("config") for n, s in meta["modalities"].items()}
    current = {n: m.config.model_dump(mode="json") for n, m in target.model.modalities.items()}
    if saved != current:
        changed = sorted(n for n in set(saved) | set(current) if saved.get(n) != current.get(n))
        raise ConfigError(
            f"{latest}: the modality config differs from the checkpoint's for {', '.join(changed)}; resume with "
            "the same config (compare with its lbind.json) or use a new --output"
        )


def _read_state(accelerator: Any, latest: Path, target: ResumeTarget) -> dict[str, Any]:
    """Every file of ``latest/train_state`` this process needs, read and checked; nothing is changed yet."""
    model = target.model
    state_dir = latest / TRAIN_STATE_DIR
    encoders = {name: read_encoder(_unwrap(enc), state_dir, name) for name, enc in model.encoders.items()}
    scales, _ = read_tensors(state_dir / SCALES_FILE)
    if set(scales) != set(model.logit_scales) or any(t.numel() != 1 for t in scales.values()):
        raise CheckpointError(
            f"{state_dir / SCALES_FILE}: expected one value per modality ({', '.join(model.logit_scales)})"
        )
    sched = read_json(state_dir / SCHEDULER_FILE)
    progress = read_json(state_dir / PROGRESS_FILE)
    if not isinstance(sched, dict) or not isinstance(progress, dict) or not isinstance(progress.get("step"), int):
        raise CheckpointError(f"{state_dir}: scheduler.json and progress.json must be mappings with a step")
    scaler = getattr(accelerator, "scaler", None)
    return {
        "encoders": encoders,
        "optimizer": read_optimizer(target.optimizer, state_dir),
        "rng": read_rng(state_dir, accelerator.process_index),
        "scaler": read_json(state_dir / SCALER_FILE) if scaler is not None else None,
        "scales": scales,
        "scheduler": sched,
        "progress": progress,
    }


def _apply_state(accelerator: Any, state: Mapping[str, Any], target: ResumeTarget) -> None:
    for name, encoder in target.model.encoders.items():
        _unwrap(encoder).load_state_dict(state["encoders"][name], strict=True)
    target.optimizer.load_state_dict(state["optimizer"])
    with torch.no_grad():
        for name, scale in target.model.logit_scales.items():
            scale.value.copy_(state["scales"][name].reshape(()).to(scale.value.device))
    target.scheduler.load_state_dict(state["scheduler"])
    if state["scaler"] is not None:
        accelerator.scaler.load_state_dict(state["scaler"])
    apply_rng(state["rng"])


def restore_checkpoint(accelerator: Any, latest: Path, target: ResumeTarget) -> dict[str, Any]:
    """Load the run checkpoint ``latest`` into the prepared model, optimizer, scheduler and generators of
    ``target``; return its progress record. Raises :class:`ConfigError` when it belongs to another run (anchor,
    modality configs, or steps per epoch; a changed total only warns: the schedule follows the new total), and
    :class:`CheckpointError` naming the file when a part of it is missing or corrupt (nothing is changed then)."""
    _check_same_run(latest, target)
    state = _read_state(accelerator, latest, target)
    return _finish_restore(accelerator, latest, state, target)


def _finish_restore(accelerator: Any, latest: Path, state: Mapping[str, Any], target: ResumeTarget) -> dict[str, Any]:
    load_group_state(target.model.groups, latest / GROUPS_FILE)  # group fusions and temperatures
    progress = state["progress"]
    if progress.get("steps_per_epoch") != target.steps_per_epoch:
        raise ConfigError(
            f"{latest}: the data gives {target.steps_per_epoch} steps per epoch, the checkpoint was made with "
            f"{progress.get('steps_per_epoch')}; resume with the same data and batch size"
        )
    if progress.get("total_steps") != target.total_steps:
        log.warning(
            "resume: total steps changed from %s to %d; the learning-rate schedule follows the new total",
            progress.get("total_steps"),
            target.total_steps,
        )
    _apply_state(accelerator, state, target)
    return progress


def _everyone_agrees(accelerator: Any, ok: bool) -> bool:
    """True when ``ok`` holds on every process (each reads its own generator file, so one may fail alone)."""
    if accelerator.num_processes == 1:
        return ok
    flags = accelerator.gather(torch.tensor([int(ok)], device=accelerator.device))
    return bool(flags.min().item())


def restore_latest(accelerator: Any, output: Path, target: ResumeTarget) -> tuple[Path, dict[str, Any]] | None:
    """Restore the newest resumable checkpoint of the run folder ``output`` into ``target`` (see
    :func:`restore_checkpoint`); return it with its progress record, or None when there is none. An incomplete or
    corrupt checkpoint is skipped with a warning for the previous one; when none is readable,
    :class:`CheckpointError` says why."""
    candidates = resumable_checkpoints(output)
    problems = []
    for index, path in enumerate(candidates):
        _check_same_run(path, target)
        try:
            state: dict[str, Any] | None = _read_state(accelerator, path, target)
            problem = None
        except CheckpointError as err:
            state, problem = None, str(err)
        if _everyone_agrees(accelerator, state is not None):
            return path, _finish_restore(accelerator, path, state, target)  # type: ignore[arg-type]
        problem = problem or "another process could not read its part of the train state"
        problems.append(f"{path.name}: {problem}")
        following = candidates[index + 1].name if index + 1 < len(candidates) else None
        log.warning(
            "resume: %s is incomplete or corrupt (%s); %s",
            path,
            problem,
            f"falling back to {following}" if following else "no earlier checkpoint is left",
        )
    if candidates:
        raise CheckpointError(f"{output}: no checkpoint can be resumed: " + "; ".join(problems))
    return None


def open_metrics(output: Path, start_step: int) -> TextIO:
    """``metrics.jsonl`` of the run folder, open for appending step records. A fresh run starts it empty; a
    resumed run keeps the records up to its checkpoint's step and drops later ones (the interrupted run may have
    logged steps after its last checkpoint, which are now trained again)."""
    path = output / METRICS_FILE
    if start_step == 0:
        return open(path, "w", encoding="utf-8")
    kept = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                if json.loads(line).get("step", 0) <= start_step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line torn by the interruption
    handle = open(path, "w", encoding="utf-8")
    handle.writelines(line + "\n" for line in kept)
    handle.flush()
    return handle
