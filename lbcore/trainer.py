"""Contrastive training against the frozen anchor: the accelerate loop behind ``lbind train`` and ``lbcore.train``.

A :class:`Trainer` sets a run up (data and caption embeddings: :mod:`lbcore.traindata`; encoders with their
initialisation and LoRA: :mod:`lbcore.lora`; optimiser and schedule: :mod:`lbcore.optim`), then loops: each
optimiser step draws ``grad_accum`` micro-batches per process and modality and hands them to the
:class:`~lbcore.engine.ContrastiveEngine`, logs a metrics record, and checkpoints every ``save_every`` steps
(:mod:`lbcore.runstate`). Randomness is a function of (seed, step) for token masking and of (seed, epoch, index)
for captions and augmentation, which is what makes ``resume`` continue exactly.

Several processes: ``accelerate launch --multi_gpu --num_processes N -m lbcore.cli train ...`` or
``torchrun --nproc_per_node N -m lbcore.cli train ...``; without a GPU the processes talk over gloo. (accelerate
1.x's ``launch --cpu`` starts a single process unless it is given an MPI host file.) ``--batch-size`` is the
global batch, shared out as :mod:`lbcore.traindata` says: N processes see exactly the batches one process would.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, is_tensorboard_available, set_seed
from torch import nn

from lbcore import traindata
from lbcore.checkpoint import FINAL_NAME, find_latest, step_dir_name, write_json
from lbcore.convert import load_clip_vision_into, load_languagebind_into
from lbcore.data import Batch, ErrorBudget
from lbcore.engine import NonFiniteBudget, StepResult
from lbcore.errors import ConfigError
from lbcore.groupengine import engine_for
from lbcore.grouping import build_groups
from lbcore.lora import apply_lora
from lbcore.modality import Modality
from lbcore.model import BindModel
from lbcore.optim import build_optimizer, build_scheduler
from lbcore.pairdata import draw_micro
from lbcore.runconfig import TrainPlan, resolve_config
from lbcore.runstate import ResumeTarget, adapter_modalities, open_metrics, restore_latest, save_checkpoint
from lbcore.samples import derive_seed
from lbcore.threads import keep_thread_count
from lbcore.traindata import build_loaders, caption_tables, open_datasets, steps_per_epoch

log = logging.getLogger(__name__)

__all__ = ["ProgressCallback", "TrainEvent", "Trainer", "train"]


@dataclass
class TrainEvent:
    """What the trainer reports to a progress callback (main process only). ``captions`` events come before
    ``start``, while the caption pre-pass encodes captions missing from the cache: ``step`` of ``total_steps``
    counts those captions."""

    kind: Literal["captions", "start", "step", "skip", "checkpoint", "end"]
    step: int
    total_steps: int
    metrics: dict[str, Any] = field(default_factory=dict)
    message: str = ""


ProgressCallback = Callable[[TrainEvent], None]


def _has_accelerator() -> bool:
    xpu = getattr(torch, "xpu", None)
    return torch.cuda.is_available() or bool(xpu is not None and xpu.is_available())


def _mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


class Trainer:
    """One training run of a :class:`TrainPlan`: set up, precompute captions, loop, checkpoint."""

    def __init__(
        self,
        plan: TrainPlan,
        progress: ProgressCallback | None = None,
        anchor: Any = None,
    ) -> None:
        self.plan = plan
        self.cfg = plan.train
        self.progress = progress
        self._anchor = anchor  # an already loaded anchor (tests, notebooks); loaded from plan.anchor otherwise
        names = list(plan.modalities)
        self.output = Path(self.cfg.output_dir or Path("runs") / "-".join(names))
        self._adapter_plan: list[str] | None = None

    # -- helpers ---------------------------------------------------------------------------------------
    def _emit(self, kind: str, step: int, metrics: dict[str, Any] | None = None, message: str = "") -> None:
        if self.progress is not None and self.accelerator.is_main_process:
            self.progress(TrainEvent(kind, step, self.total_steps, metrics or {}, message))  # type: ignore[arg-type]

    def _init_spec(self, name: str) -> str:
        init = self.cfg.init
        return init.get(name, "scratch") if isinstance(init, dict) else init

    @property
    def names(self) -> list[str]:
        return list(self.modalities)

    # -- set-up ----------------------------------------------------------------------------------------
    def _setup_accelerator(self) -> None:
        kwargs: dict[str, Any] = {}
        if self.cfg.tensorboard:
            if not is_tensorboard_available():
                raise ConfigError(
                    "train.tensorboard: the tensorboard package is not installed (pip install tensorboard)"
                )
            kwargs.update(log_with="tensorboard", project_dir=str(self.output))
        self.accelerator = Accelerator(
            # Without an accelerator, cpu=True is what makes accelerate read a torchrun / `accelerate launch`
            # environment as multi-process CPU (gloo) instead of silently running N independent copies.
            cpu=not _has_accelerator(),
            mixed_precision=_mixed_precision(self.cfg.mixed_precision),
            step_scheduler_with_optimizer=False,
            **kwargs,
        )

    def _setup_data(self) -> None:
        """Datasets, then every caption through the anchor's cache once (the anchor is released afterwards)."""
        acc = self.accelerator
        self.modalities, self.manifests, self.datasets = open_datasets(self.plan, acc, self.threads.workers)
        report = None
        if self.progress is not None:
            report = lambda done, total: self.progress(TrainEvent("captions", done, total))  # noqa: E731
        captions = caption_tables(self.datasets, self.plan.anchor, acc, anchor=self._anchor, progress=report)
        self.text_tables = captions.tables
        self.anchor_fingerprint = captions.anchor_fingerprint
        self.embed_dim = captions.embed_dim

    def _init_encoder(self, name: str, modality: Modality, encoder: nn.Module) -> float | None:
        """Load the configured initial weights into ``encoder``; return the logit scale (log) they come with. The
        path is passed as a str: the loaders take a hub id there too (lbcore.hub)."""
        kind, _, init_path = self._init_spec(name).partition(":")
        if kind == "clip":
            for line in load_clip_vision_into(encoder, init_path):
                log.info("%s init: %s", name, line)
        elif kind == "languagebind":
            loaded = load_languagebind_into(encoder, modality, init_path)
            for line in loaded.report:
                log.info("%s init: %s", name, line)
            return loaded.logit_scale  # continue from the release's temperature too
        return None

    def _set_grad_checkpointing(self, name: str, encoder: nn.Module) -> None:
        checkpointing = self.cfg.grad_checkpointing
        if checkpointing is not None:
            if hasattr(encoder, "set_grad_checkpointing"):
                encoder.set_grad_checkpointing(checkpointing)
            elif checkpointing:
                log.warning("%s: its encoder has no set_grad_checkpointing(); checkpointing is off", name)

    def _setup_model(self) -> None:
        encoders: dict[str, nn.Module] = {}
        init_scales: dict[str, float] = {}  # logit scales (log) that come with an initialisation
        self.param_counts: dict[str, dict[str, int]] = {}
        for index, (name, modality) in enumerate(self.modalities.items()):
            set_seed(derive_seed(self.cfg.seed, index, 0xE7C))  # each encoder's init independent of the others
            encoder = modality.build_encoder(self.embed_dim)
            scale = self._init_encoder(name, modality, encoder)
            if scale is not None:
                init_scales[name] = scale
            counts = apply_lora(encoder, modality.config, where=f"modalities.{name}.")
            self._set_grad_checkpointing(name, encoder)
            self.param_counts[name] = counts
            log.info("%s: %s trainable of %s parameters (LoRA rank %d: %s adapter parameters)", name,
                     f"{counts['trainable']:,}", f"{counts['total']:,}", modality.config.lora.rank, f"{counts['lora']:,}")  # fmt: skip
            encoders[name] = encoder
        self.model = BindModel(
            self.plan.anchor,
            encoders,
            self.modalities,
            init_scales,
            anchor_fingerprint=self.anchor_fingerprint,
            embed_dim=self.embed_dim,
            groups=build_groups(self.cfg.groups, self.embed_dim, self.cfg.group_fusion, self.cfg.group_linear),
        )

    def _setup_schedule(self) -> None:
        self.batch_sizes = {n: self.modalities[n].config.optim.batch_size for n in self.datasets}
        self.steps_per_epoch = steps_per_epoch(
            self.datasets, self.batch_sizes, self.manifests, self.accelerator.num_processes, self.cfg.grad_accum
        )
        epochs = self.cfg.epochs or max(m.config.optim.epochs for m in self.modalities.values())
        self.total_steps = self.cfg.max_steps or epochs * self.steps_per_epoch

    def _setup_loaders(self) -> None:
        self.samplers, self.loaders = build_loaders(
            self.datasets,
            self.modalities,
            self.batch_sizes,
            self.accelerator,
            seed=self.cfg.seed,
            grad_accum=self.cfg.grad_accum,
            steps=self.steps_per_epoch,
            num_workers=self.threads.workers,
        )
        self.budgets = {
            name: ErrorBudget(len(ds), self.cfg.error_budget, str(self.manifests[name]))
            for name, ds in self.datasets.items()
        }

    def _prepare(self) -> None:
        """Everything before the first step: accelerator, data and captions, model, schedule, engine, loaders."""
        self._setup_accelerator()
        acc = self.accelerator
        self.threads = traindata.thread_policy(self.plan, acc)  # torch threads and loader workers for this machine
        latest = find_latest(self.output) if self.output.is_dir() else None
        if latest is not None and not self.cfg.resume:
            raise ConfigError(
                f"{self.output}: holds checkpoints of an earlier run ({latest.name}); pass --resume to continue it "
                "or choose another --output"
            )
        if acc.is_main_process:
            self.output.mkdir(parents=True, exist_ok=True)
        self._setup_data()
        self._setup_model()
        self._setup_schedule()
        optimizer = build_optimizer(self.model, self.cfg.lr_multipliers, device=acc.device)  # fused on CUDA
        self.scheduler = build_scheduler(optimizer, self.model, self.total_steps)
        self.engine = engine_for(self.cfg.groups, self.cfg.group_weight)(
            acc,
            self.model,
            self.text_tables,
            optimizer=optimizer,
            scheduler=self.scheduler,
            seed=self.cfg.seed,
            max_grad_norm=self.cfg.max_grad_norm,
            local_loss=self.cfg.local_loss,
        )
        self._setup_loaders()

    # -- checkpoints -----------------------------------------------------------------------------------
    def _progress_state(self, step: int) -> dict[str, Any]:
        return {
            "step": step,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "samples_seen": self.samples_seen,
            "torch_threads": torch.get_num_threads(),  # a resume keeps it: results depend on it, bit for bit
            "elapsed_s": self.elapsed_before + (time.perf_counter() - self.started),
            "failures": {n: b.failures for n, b in self.budgets.items()},
        }

    def _adapter_modalities(self) -> list[str]:
        """Which modalities are saved as LoRA adapters (see :func:`lbcore.runstate.adapter_modalities`): decided
        on the first save (the base is frozen) and logged once."""
        if self._adapter_plan is None:
            specs = {name: self._init_spec(name) for name in self.modalities}
            self._adapter_plan = adapter_modalities(self.model, specs, self.cfg.save_full)
        return self._adapter_plan

    def _save(self, name: str, step: int) -> Path:
        main = self.accelerator.is_main_process
        extra = {
            "train": {
                "step": step,
                "epoch": step / self.steps_per_epoch,
                "total_steps": self.total_steps,
                "config": self.plan.train.model_dump(mode="json"),
                "manifests": {n: str(p) for n, p in self.manifests.items()},
            }
        }
        target = save_checkpoint(
            self.accelerator,
            self.output / name,
            model=self.model,
            optimizer=self.engine.optimizer,
            scheduler=self.scheduler,
            extra=extra,
            progress=lambda: self._progress_state(step),
            adapter_only=self._adapter_modalities() if main else [],
            keep=self.cfg.keep_checkpoints,
        )
        self._emit("checkpoint", step, {"path": str(target)}, f"checkpoint {target}")
        return target

    def _resume(self) -> int:
        target = ResumeTarget(
            self.model,
            self.engine.optimizer,
            self.scheduler,
            self.anchor_fingerprint,
            self.steps_per_epoch,
            self.total_steps,
        )
        restored = restore_latest(self.accelerator, self.output, target)
        if restored is None:
            log.info("resume: no checkpoint in %s; starting from scratch", self.output)
            return 0
        latest, progress = restored
        for name, failures in progress.get("failures", {}).items():
            if name in self.budgets:
                self.budgets[name].failures.update(failures)
        self.samples_seen = int(progress.get("samples_seen", 0))
        self.elapsed_before = float(progress.get("elapsed_s", 0.0))
        keep_thread_count(self.threads, progress.get("torch_threads"))  # bitwise: the resumed run's count
        step = int(progress["step"])
        log.info("resumed from %s at step %d", latest, step)
        return step

    # -- the loop --------------------------------------------------------------------------------------
    def fit(self) -> Path:
        """Run the training; return the final checkpoint folder. The calling process's torch thread count is
        the run's thread policy's while it runs (:mod:`lbcore.threads`) and is given back afterwards."""
        intra = torch.get_num_threads()
        try:
            return self._fit()
        finally:
            torch.set_num_threads(intra)

    def _fit(self) -> Path:
        self._prepare()
        acc = self.accelerator
        self.samples_seen = 0
        self.elapsed_before = 0.0
        self.nonfinite = NonFiniteBudget(self.cfg.max_nonfinite_steps)
        self.started = time.perf_counter()
        start_step = self._resume() if self.cfg.resume else 0
        if self.cfg.tensorboard:
            acc.init_trackers("lbind", config=self.plan.hparams())
        final = self.output / FINAL_NAME
        metrics_handle = open_metrics(self.output, start_step) if acc.is_main_process else None
        try:
            self._emit("start", start_step, self._start_metrics())
            last = self._loop(start_step, metrics_handle)
        finally:
            if metrics_handle is not None:
                metrics_handle.close()
        if start_step < self.total_steps or not final.is_dir():
            self._save(FINAL_NAME, self.total_steps)
        summary = self._summary(start_step, last, final)
        if acc.is_main_process:
            write_json(self.output / "summary.json", summary)
            log.info(
                "done: %d steps, %.1f samples/s, final checkpoint %s", summary["steps"], summary["samples_per_s"], final
            )
        if self.cfg.tensorboard:
            acc.end_training()
        self._emit("end", self.total_steps, summary, f"final checkpoint {final}")
        return final

    def _start_metrics(self) -> dict[str, Any]:
        acc = self.accelerator
        return {
            "params": self.param_counts,
            "samples_per_step": sum(self.batch_sizes.values()),
            "steps_per_epoch": self.steps_per_epoch,
            "processes": acc.num_processes,
            "device": str(acc.device),
            "mixed_precision": acc.mixed_precision,
            "output": str(self.output),
        }

    def _account_failures(self, micro: Mapping[str, Sequence[Batch]], step: int) -> None:
        acc = self.accelerator
        local = [
            (name, path, reason) for name, batches in micro.items() for b in batches for path, reason in b.failures
        ]
        if acc.num_processes > 1:
            count = acc.gather(torch.tensor([len(local)], device=acc.device)).sum().item()
            failures = gather_object(local) if count else []
        else:
            failures = local
        for name, path, reason in failures:
            if acc.is_main_process:
                log.warning("step %d: skipped %s (%s): %s", step + 1, path, name, reason)
            self._emit("skip", step, {"modality": name, "path": path, "reason": reason}, f"skipped {path}: {reason}")
        for name in micro:
            self.budgets[name].record((p, r) for n, p, r in failures if n == name)

    def _loop(self, start_step: int, metrics_handle: Any) -> dict[str, Any]:
        acc = self.accelerator
        k = self.cfg.grad_accum
        step = start_step
        self.engine.train()
        last: dict[str, Any] = {}
        window: list[dict[str, float]] = []
        tick = time.perf_counter()
        while step < self.total_steps:
            epoch, offset = divmod(step, self.steps_per_epoch)
            # Mid-epoch resume: skip the batches already trained on, without decoding them.
            iterators = traindata.epoch_iterators(self.loaders, self.samplers, epoch, offset * k, acc)
            for _ in range(offset, self.steps_per_epoch):
                micro = draw_micro(iterators, k)  # per modality; a group's loader yields its members' batches
                self._account_failures(micro, step)
                result = self.engine.step(micro, step)
                step += 1
                self.nonfinite.record(result, step, log_it=acc.is_main_process)
                now = time.perf_counter()
                samples = sum(result.samples.values())
                self.samples_seen += samples
                record = self._record(step, result, samples, now - tick)
                tick = now
                last = record
                window.append(record)
                if metrics_handle is not None:
                    metrics_handle.write(json.dumps(record) + "\n")
                    metrics_handle.flush()
                self._emit("step", step, record)
                if step % self.cfg.log_every == 0 or step == self.total_steps:
                    self._log_window(window, step)
                    window = []
                if self.cfg.save_every and step % self.cfg.save_every == 0 and step < self.total_steps:
                    self._save(step_dir_name(step), step)
                if step >= self.total_steps:
                    break
        return last

    def _record(self, step: int, result: StepResult, samples: int, seconds: float) -> dict[str, Any]:
        losses = [v for v in result.losses.values() if not math.isnan(v)]
        record: dict[str, Any] = {
            "step": step,
            "epoch": round(step / self.steps_per_epoch, 4),
            "loss": sum(losses) / len(losses) if losses else float("nan"),
            "samples_per_s": samples / seconds if seconds > 0 else 0.0,
            "step_time_s": seconds,
        }
        for name in self.names:
            record[f"loss/{name}"] = result.losses.get(name, float("nan"))
            record[f"logit_scale/{name}"] = self.model.logit_scale(name)
            record[f"lr/{name}"] = result.lrs.get(name, float("nan"))
        record.update({f"loss/{key}": v for key, v in result.losses.items() if key not in self.modalities})
        if result.grad_norm is not None:
            record["grad_norm"] = result.grad_norm
        record["skipped"] = sum(len(b.failures) for b in self.budgets.values())
        record["nonfinite_steps"] = self.nonfinite.total
        return record

    def _log_window(self, window: list[dict[str, float]], step: int) -> None:
        if not window:
            return
        acc = self.accelerator
        mean = {k: sum(r[k] for r in window) / len(window) for k in window[-1] if isinstance(window[-1][k], float)}
        if acc.is_main_process:
            log.info(
                "step %d/%d  loss %.4f  %.1f samples/s  lr %s",
                step,
                self.total_steps,
                mean.get("loss", float("nan")),
                mean.get("samples_per_s", 0.0),
                ", ".join(f"{n} {window[-1][f'lr/{n}']:.2e}" for n in self.names),
            )
        if self.cfg.tensorboard:
            acc.log({k: v for k, v in mean.items() if not math.isnan(v)}, step=step)

    def _summary(self, start_step: int, last: Mapping[str, Any], final: Path) -> dict[str, Any]:
        wall = time.perf_counter() - self.started
        trained = self.total_steps - start_step
        return {
            "output": str(final),
            "steps": self.total_steps,
            "steps_this_run": trained,
            "epochs": round(self.total_steps / self.steps_per_epoch, 4),
            "samples_seen": self.samples_seen,
            "wall_s": round(wall, 3),
            "total_train_s": round(self.elapsed_before + wall, 3),
            "samples_per_s": (self.samples_seen / (self.elapsed_before + wall)) if wall > 0 else 0.0,
            "final_loss": {n: last.get(f"loss/{n}") for n in self.names},
            "logit_scale": {n: self.model.logit_scale(n) for n in self.names},
            "params": self.param_counts,
            "skipped_files": {n: b.failures for n, b in self.budgets.items()},
            "processes": self.accelerator.num_processes,
        }


def train(
    config: TrainPlan | Mapping[str, Any] | str | Path,
    *,
    progress: ProgressCallback | None = None,
    anchor: Any = None,
) -> Path:
    """Train the modalities a run config names against its anchor; return the final checkpoint folder.

    ``config``: a YAML path or a mapping ``{anchor: ..., modalities: {name: {preset: ..., overrides}}, train: ...}``
    (see :class:`TrainConfig`), or a resolved :class:`TrainPlan`. ``progress`` receives :class:`TrainEvent`
    objects on the main process. ``anchor``: an already loaded :class:`~lbcore.anchor.Anchor` to use instead of
    loading the configured one (it must be the anchor the config names).
    """
    return Trainer(resolve_config(config), progress=progress, anchor=anchor).fit()
