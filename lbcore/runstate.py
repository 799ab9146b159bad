"""A run folder's resumable state: checkpoints with ``train_state/``, resuming from the newest, ``metrics.jsonl``.

A run checkpoint is a model checkpoint (:mod:`lbcore.checkpoint`) plus ``train_state/``: accelerate's optimiser,
RNG and gradient-scaler state, the temperatures, the learning-rate schedule and the progress (step, samples seen,
time, skipped files). Every process writes into the same temporary folder, which the main process renames into
place once all are done. Resuming checks that the anchor, the modality configs and the data give the same run.
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TextIO

import torch
from safetensors.torch import load_file, save_file

from lbcore.checkpoint import (
    PROGRESS_FILE,
    TRAIN_STATE_DIR,
    prune_step_dirs,
    read_meta,
    replace_dir,
    write_json,
)
from lbcore.errors import CheckpointError, ConfigError
from lbcore.grouping import GROUPS_FILE, load_group_state
from lbcore.model import BindModel, base_reference
from lbcore.optim import scheduler_state

log = logging.getLogger(__name__)

__all__ = ["adapter_modalities", "open_metrics", "restore_checkpoint", "save_checkpoint"]

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
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    extra: Mapping[str, Any],
    progress: Callable[[], Mapping[str, Any]],
    adapter_only: list[str],
    keep: int,
) -> Path:
    """Write the run checkpoint ``target`` (collective: every process calls it) and prune the periodic ones to
    the newest ``keep``. ``extra`` goes into ``lbind.json``. ``progress()`` gives ``train_state/progress.json``'s
    record; it is called once the weights are written, so the time it records includes the save."""
    acc = accelerator
    tmp = target.parent / f".tmp-{target.name}"  # same name on every process: they all write into it
    acc.wait_for_everyone()
    if acc.is_main_process:
        if tmp.exists():
            shutil.rmtree(tmp)
        (tmp / TRAIN_STATE_DIR).mkdir(parents=True)
    acc.wait_for_everyone()
    if acc.is_main_process:
        model.write_files(tmp, dict(extra), adapter_only=adapter_only)
    acc.save_state(str(tmp / TRAIN_STATE_DIR), safe_serialization=True)
    if acc.is_main_process:
        state_dir = tmp / TRAIN_STATE_DIR
        scales = {n: s.value.detach().cpu().reshape(1).clone() for n, s in model.logit_scales.items()}
        save_file(scales, str(state_dir / SCALES_FILE))
        write_json(state_dir / SCHEDULER_FILE, scheduler_state(scheduler))
        record = dict(progress())
        write_json(state_dir / PROGRESS_FILE, record)
    acc.wait_for_everyone()
    if acc.is_main_process:
        replace_dir(tmp, target)
        prune_step_dirs(target.parent, keep)
        log.info("checkpoint at step %d: %s", record["step"], target)
    acc.wait_for_everyone()
    return target


def _check_same_run(latest: Path, model: BindModel, anchor_fingerprint: str) -> None:
    """Refuse to resume a checkpoint trained against another anchor or with other modality configs."""
    meta = read_meta(latest)
    if meta["anchor"].get("fingerprint") != anchor_fingerprint:
        raise ConfigError(
            f"{latest}: trained against anchor {meta['anchor'].get('fingerprint', '?')[:12]}, but this run's "
            f"anchor is {anchor_fingerprint[:12]}; resume with the same anchor or use a new --output"
        )
    saved = {n: s.get("config") for n, s in meta["modalities"].items()}
    current = {n: m.config.model_dump(mode="json") for n, m in model.modalities.items()}
    if saved != current:
        changed = sorted(n for n in set(saved) | set(current) if saved.get(n) != current.get(n))
        raise ConfigError(
            f"{latest}: the modality config differs from the checkpoint's for {', '.join(changed)}; resume with "
            "the same config (compare with its lbind.json) or use a new --output"
        )


def restore_checkpoint(
    accelerator: Any,
    latest: Path,
    *,
    model: BindModel,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    anchor_fingerprint: str,
    steps_per_epoch: int,
    total_steps: int,
) -> dict[str, Any]:
    """Load the run checkpoint ``latest`` into the prepared model, optimiser and ``scheduler``; return its
    progress record. Raises :class:`ConfigError` when it belongs to another run (anchor, modality configs, or
    steps per epoch); a changed total only warns (the schedule follows the new total)."""
    _check_same_run(latest, model, anchor_fingerprint)
    state_dir = latest / TRAIN_STATE_DIR
    accelerator.load_state(str(state_dir))
    scales = load_file(str(state_dir / SCALES_FILE))
    with torch.no_grad():
        for name, scale in model.logit_scales.items():
            scale.value.copy_(scales[name].reshape(()).to(scale.value.device))
    load_group_state(model.groups, latest / GROUPS_FILE)  # group fusions and temperatures (outside accelerate)
    sched = json.loads((state_dir / SCHEDULER_FILE).read_text(encoding="utf-8"))
    scheduler.load_state_dict(sched)
    progress = json.loads((state_dir / PROGRESS_FILE).read_text(encoding="utf-8"))
    if progress.get("steps_per_epoch") != steps_per_epoch:
        raise ConfigError(
            f"{latest}: the data gives {steps_per_epoch} steps per epoch, the checkpoint was made with "
            f"{progress.get('steps_per_epoch')}; resume with the same data and batch size"
        )
    if progress.get("total_steps") != total_steps:
        log.warning(
            "resume: total steps changed from %s to %d; the learning-rate schedule follows the new total",
            progress.get("total_steps"),
            total_steps,
        )
    return progress


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
