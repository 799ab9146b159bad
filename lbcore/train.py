"""Contrastive training against the frozen anchor: the accelerate loop behind ``lbind train`` and ``lbcore.train``.

What one optimiser step does, per modality: draw ``grad_accum`` micro-batches per process (deterministic order,
see :class:`lbcore.data.EpochBatchSampler`), encode them, gather features and caption embeddings from every
process, and take the symmetric InfoNCE loss of the global batch with the modality's own learnable temperature.
With ``grad_accum > 1`` the loss is still the loss of the whole global batch: features of all micro-batches are
first computed without gradients, the loss's gradient with respect to them is taken once, and each micro-batch
is then re-encoded with gradients and back-propagated with its slice of that gradient (the "gradient cache"
trick). N micro-batches of b therefore give the gradients of one batch of N * b, negatives included.

Caption embeddings come from the text-embedding cache, computed once before the first step; the anchor is
dropped before training starts and never runs inside a step. The learning rate of every parameter group is its
own base rate times one warm-up + cosine factor (``LambdaLR``), so per-modality rates and ``lr_multipliers``
hold through the whole schedule. Randomness is a function of (seed, step) for token masking and of
(seed, epoch, index) for captions and augmentation, which is what makes ``resume`` continue exactly.

Several processes: ``accelerate launch --multi_gpu --num_processes N -m lbcore.cli train ...`` or
``torchrun --nproc_per_node N -m lbcore.cli train ...``; without a GPU the processes talk over gloo. (accelerate
1.x's ``launch --cpu`` starts a single process unless it is given an MPI host file.) ``--batch-size`` is the
global batch: each process takes batch / (processes x grad_accum) samples per micro-batch, and N processes see
exactly the batches one process would.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
import types
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from lbcore.checkpoint import (
    FINAL_NAME,
    PROGRESS_FILE,
    TRAIN_STATE_DIR,
    find_latest,
    prune_step_dirs,
    read_meta,
    replace_dir,
    step_dir_name,
    write_json,
)
from lbcore.config import (
    AnchorConfig,
    ModalityConfig,
    StrictModel,
    read_yaml,
    validate_model,
    validate_run_config,
)
from lbcore.data import (
    Batch,
    EpochBatchSampler,
    ErrorBudget,
    ManifestError,
    SampleCollator,
    TrainDataset,
    derive_seed,
    read_manifest,
)
from lbcore.errors import CheckpointError, ConfigError
from lbcore.loss import contrastive_loss, gather_with_grad
from lbcore.model import BindModel, base_reference

log = logging.getLogger(__name__)

__all__ = [
    "ContrastiveEngine",
    "TrainConfig",
    "TrainEvent",
    "TrainPlan",
    "Trainer",
    "WarmupCosine",
    "apply_lora",
    "build_optimizer",
    "build_scheduler",
    "parameter_groups",
    "resolve_config",
    "train",
]

NO_DECAY_SUFFIXES = ("_embedding", "logit_scale")  # class/position/temporal embeddings, temperatures
INIT_KINDS = ("clip", "languagebind")  # train.init: 'scratch' or KIND:PATH


def _default_workers() -> int:
    return min(4, max((os.cpu_count() or 1) - 1, 0))


class TrainConfig(StrictModel):
    """The ``train`` section of a run config: the loop settings (the recipe itself lives in each modality's
    ``optim`` section)."""

    output_dir: Path | None = Field(
        None, description="Run folder (checkpoints, metrics.jsonl, summary.json); default runs/<modalities>."
    )
    data: dict[str, Path] = Field(
        default_factory=dict,
        description="Training manifest (JSONL or CSV) per modality; a modality without one trains on its demo dataset.",
    )
    max_steps: int | None = Field(
        None, gt=0, description="Stop after this many optimiser steps (default: the modality configs' epochs)."
    )
    epochs: int | None = Field(None, gt=0, description="Passes over the data (default: the largest optim.epochs).")
    grad_accum: int = Field(
        1,
        gt=0,
        description=(
            "Micro-batches per optimiser step; the loss is still that of the whole batch (gradient cache), so "
            "the same global batch fits in less memory."
        ),
    )
    seed: int = Field(0, ge=0, description="Seed of initialisation, data order, captions, augmentation and masking.")
    save_every: int = Field(500, ge=0, description="Checkpoint every N optimiser steps (0: only at the end).")
    keep_checkpoints: int = Field(2, ge=1, description="Periodic checkpoints kept (older ones are deleted).")
    save_full: bool = Field(
        False,
        description=(
            "Write full encoder weights (LoRA merged) for every modality. Off: a LoRA-trained modality initialised "
            "from clip:/languagebind: weights is saved as its adapter plus trained extras and a reference (path "
            "and sha256) to those base weights, which must stay where they are to load the checkpoint."
        ),
    )
    resume: bool = Field(False, description="Continue from the newest checkpoint in output_dir (if any).")
    init: str | dict[str, str] = Field(
        "scratch",
        description=(
            "Encoder initialisation: 'scratch', 'clip:PATH' (a transformers CLIP vision checkpoint folder; "
            "position embeddings are resized to each modality's grid), or 'languagebind:PATH' (a released "
            "LanguageBind checkpoint folder of the same modality, converted on the fly: LoRA merged, logit scale "
            "kept). A mapping sets it per modality."
        ),
    )
    num_workers: int = Field(
        default_factory=_default_workers, ge=0, description="DataLoader worker processes per training process."
    )
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="'auto': bf16 on GPUs that support it, fp16 on other GPUs, float32 on CPU."
    )
    grad_checkpointing: bool | None = Field(
        None, description="Recompute activations in the backward pass (default: each encoder config's setting)."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm (null: no clipping).")
    error_budget: float = Field(
        0.01,
        ge=0,
        le=1,
        description="Share of a dataset's files allowed to fail loading (skipped and logged) before the run stops.",
    )
    lr_multipliers: dict[str, float] = Field(
        default_factory=dict,
        description=(
            "Learning-rate multipliers by parameter-name prefix, names qualified by modality "
            "(e.g. 'audio.head.': 10, 'audio.logit_scale': 1); the longest matching prefix wins."
        ),
    )
    log_every: int = Field(10, gt=0, description="Log a metrics line (and TensorBoard scalars) every N steps.")
    tensorboard: bool = Field(False, description="Write TensorBoard scalars through accelerate's tracker.")
    demo_seed: int = Field(0, ge=0, description="Seed of the generated demo datasets.")

    @field_validator("init")
    @classmethod
    def _check_init(cls, value: str | dict[str, str]) -> str | dict[str, str]:
        for spec in [value] if isinstance(value, str) else value.values():
            kind, sep, path = spec.partition(":")
            if spec != "scratch" and not (sep and kind in INIT_KINDS and path):
                raise ValueError(f"expected 'scratch', 'clip:PATH' or 'languagebind:PATH', got {spec!r}")
        return value


@dataclass
class TrainPlan:
    """A validated run: anchor, each modality's full config, and the loop settings."""

    anchor: AnchorConfig
    modalities: dict[str, ModalityConfig]
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        return {
            "anchor": self.anchor.model_dump(mode="json"),
            "modalities": {n: c.model_dump(mode="json") for n, c in self.modalities.items()},
            "train": self.train.model_dump(mode="json"),
        }


def resolve_config(config: TrainPlan | Mapping[str, Any] | str | Path, source: str = "") -> TrainPlan:
    """Validate a run config (a YAML path or a mapping with ``anchor``, ``modalities`` and ``train`` sections).

    A modality entry without a ``preset`` and without a manifest in ``train.data`` uses the ``demo`` preset
    (the embedded default: it trains on the plugin's demo dataset). Errors name the exact field path.
    """
    if isinstance(config, TrainPlan):
        return config
    if isinstance(config, (str, Path)):
        source = source or str(config)
        data = read_yaml(config)
    elif isinstance(config, Mapping):
        data = dict(config)
    else:
        raise ConfigError(f"expected a run config mapping or a YAML path, got {type(config).__name__}")
    train_cfg = validate_model(TrainConfig, data.pop("train", None) or {}, prefix=("train",), source=source)
    modalities = {}
    for name, spec in (data.get("modalities") or {}).items():
        spec = dict(spec or {})
        if "preset" not in spec and name not in train_cfg.data:
            spec["preset"] = "demo"
        modalities[name] = spec
    data["modalities"] = modalities
    if not modalities:
        where = f"{source}: " if source else ""
        raise ConfigError(f"{where}modalities: no modality to train; pass --modality NAME or list modalities")
    per_modality = {"data": train_cfg.data, "init": train_cfg.init if isinstance(train_cfg.init, dict) else {}}
    for key, mapping in per_modality.items():
        unknown = sorted(set(mapping) - set(modalities))
        if unknown:
            raise ConfigError(
                f"{source + ': ' if source else ''}train.{key}: given for {', '.join(unknown)}, which the run does "
                f"not train (modalities: {', '.join(modalities)})"
            )
    run, configs = validate_run_config(data, source=source)
    return TrainPlan(run.anchor, configs, train_cfg)


# ------------------------------------------------------------------------------------------------ model parts
def apply_lora(encoder: nn.Module, config: ModalityConfig, where: str = "") -> dict[str, int]:
    """Freeze the encoder except LoRA adapters (peft, the config's rank / alpha / targets) and the
    ``lora.trainable_extras`` prefixes; rank 0 leaves every parameter trainable. Returns parameter counts."""
    lora = config.lora
    if lora.rank > 0:
        from peft import LoraConfig as PeftLoraConfig
        from peft import inject_adapter_in_model

        peft_cfg = PeftLoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=list(lora.targets),
            bias="none",
        )
        try:
            inject_adapter_in_model(peft_cfg, encoder)
        except ValueError as err:
            raise ConfigError(f"{where}lora.targets: {err}") from err
        names = [n for n, _ in encoder.named_parameters()]
        unmatched = [e for e in lora.trainable_extras if not any(n.startswith(e) for n in names)]
        if unmatched:
            tops = sorted({n.split(".")[0] + "." for n in names})
            raise ConfigError(
                f"{where}lora.trainable_extras: {unmatched} match no encoder parameter (names start with "
                f"{', '.join(tops)})"
            )
        for name, p in encoder.named_parameters():
            p.requires_grad_(".lora_" in name or any(name.startswith(e) for e in lora.trainable_extras))
    else:
        encoder.requires_grad_(True)
    return parameter_counts(encoder)


def parameter_counts(encoder: nn.Module) -> dict[str, int]:
    """Total, trainable and LoRA-adapter parameter counts."""
    params = list(encoder.named_parameters())
    return {
        "total": sum(p.numel() for _, p in params),
        "trainable": sum(p.numel() for _, p in params if p.requires_grad),
        "lora": sum(p.numel() for n, p in params if ".lora_" in n),
    }


def _no_decay(local_name: str, param: torch.Tensor) -> bool:
    """LanguageBind's exclusions: 1-D parameters (norms, biases), embeddings (class, position), temperatures."""
    return param.ndim < 2 or local_name.endswith(NO_DECAY_SUFFIXES)


def parameter_groups(model: BindModel, lr_multipliers: Mapping[str, float] | None = None) -> list[dict[str, Any]]:
    """AdamW parameter groups: per modality, decayed / not decayed, times each learning-rate multiplier.

    Every group carries its own ``lr`` (modality lr x multiplier), ``weight_decay``, ``betas`` and ``eps`` plus
    ``name`` and ``modality`` keys. Only parameters that require gradients are included; each modality's logit
    scale joins its no-decay group.
    """
    multipliers = dict(lr_multipliers or {})
    used: set[str] = set()
    groups: dict[tuple[str, bool, float], dict[str, Any]] = {}
    for name, modality in model.modalities.items():
        optim = modality.config.optim
        named = [(local, p) for local, p in model.encoders[name].named_parameters() if p.requires_grad]
        named.append(("logit_scale", model.logit_scales[name].value))
        for local, param in named:
            qualified = f"{name}.{local}"
            matches = [k for k in multipliers if qualified.startswith(k)]
            key_used = max(matches, key=len) if matches else None
            mult = multipliers[key_used] if key_used is not None else 1.0
            if key_used is not None:
                used.add(key_used)
            decay = not _no_decay(local, param)
            key = (name, decay, mult)
            if key not in groups:
                suffix = "" if mult == 1.0 else f"/x{mult:g}"
                groups[key] = {
                    "params": [],
                    "param_names": [],
                    "lr": optim.lr * mult,
                    "weight_decay": optim.weight_decay if decay else 0.0,
                    "betas": tuple(optim.betas),
                    "eps": optim.eps,
                    "name": f"{name}/{'decay' if decay else 'no_decay'}{suffix}",
                    "modality": name,
                }
            groups[key]["params"].append(param)
            groups[key]["param_names"].append(qualified)
    unused = sorted(set(multipliers) - used)
    if unused:
        raise ConfigError(
            f"train.lr_multipliers: {unused} match no trainable parameter (names look like 'audio.head.')"
        )
    return list(groups.values())


def build_optimizer(model: BindModel, lr_multipliers: Mapping[str, float] | None = None) -> torch.optim.AdamW:
    """AdamW over :func:`parameter_groups` (per-group lr, weight decay, betas and eps)."""
    return torch.optim.AdamW(parameter_groups(model, lr_multipliers))


@dataclass(frozen=True)
class WarmupCosine:
    """Learning-rate factor at scheduler step ``s``: (s + 1) / warmup during warm-up, then a cosine from 1 to 0
    reached at ``total`` steps."""

    warmup: int
    total: int

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return (step + 1) / self.warmup
        span = self.total - self.warmup
        if span <= 0:
            return 1.0
        return 0.5 * (1.0 + math.cos(math.pi * min((step - self.warmup) / span, 1.0)))


def build_scheduler(
    optimizer: torch.optim.Optimizer, model: BindModel, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """``LambdaLR`` with one factor per group (its modality's warm-up, cosine over ``total_steps``): each group's
    rate is its own base rate times the factor, so per-group rates are never overwritten."""
    factors = [
        WarmupCosine(model.modalities[g["modality"]].config.optim.warmup_steps, total_steps)
        for g in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda=factors)


def _scheduler_state(scheduler: torch.optim.lr_scheduler.LambdaLR) -> dict[str, Any]:
    state = scheduler.state_dict()
    state["lr_lambdas"] = [None] * len(state["lr_lambdas"])  # factors come from the current config, not the file
    return state


# ----------------------------------------------------------------------------------------------- the step
def gather_rows(x: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
    """Concatenate every process's rows [n_r, E] in rank order -> [sum(n_r), E], differentiably.

    The all-gather needs equal shapes, so when a process has fewer rows (files skipped) every process pads to
    the largest count and the padding rows are dropped after the gather.
    """
    if len(sizes) <= 1:
        return x
    most = max(sizes)
    if min(sizes) == most:
        return gather_with_grad(x)
    padded = torch.cat([x, x.new_zeros(most - x.shape[0], *x.shape[1:])])  # [most, E]
    gathered = gather_with_grad(padded)  # [world * most, E]
    keep = torch.cat([torch.arange(r * most, r * most + n, device=x.device) for r, n in enumerate(sizes)])
    return gathered.index_select(0, keep)


@dataclass
class StepResult:
    losses: dict[str, float]  # per modality; NaN when the modality was skipped this step
    samples: dict[str, int]  # global samples per modality
    grad_norm: float | None = None
    lrs: dict[str, float] = field(default_factory=dict)  # the rate this step used (first group of each modality)


class ContrastiveEngine:
    """Forward, backward and optimiser step of the contrastive objective, for one or more modalities.

    ``model``'s encoders (and ``optimizer``) are prepared with ``accelerator`` (device placement, DDP across
    processes, mixed precision). ``text_tables[m]`` holds the caption embeddings [C, E] of modality ``m``;
    batches refer to them by caption id, so the anchor is never needed here.
    """

    def __init__(
        self,
        accelerator: Any,
        model: BindModel,
        text_tables: Mapping[str, torch.Tensor],
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
        seed: int = 0,
        max_grad_norm: float | None = None,
    ) -> None:
        self.accelerator = accelerator
        self.model = model
        self.names = list(model.encoders)
        objects: list[Any] = [model.encoders[n] for n in self.names]
        if optimizer is not None:
            objects.append(optimizer)
        prepared = accelerator.prepare(*objects)
        prepared = list(prepared) if isinstance(prepared, (tuple, list)) else [prepared]
        self.encoders = dict(zip(self.names, prepared[: len(self.names)], strict=True))
        self.optimizer = prepared[-1] if optimizer is not None else None
        self.scheduler = scheduler
        model.logit_scales.to(accelerator.device)
        self.text_tables = {k: v.to(accelerator.device, torch.float32) for k, v in text_tables.items()}
        self.seed = seed
        self.max_grad_norm = max_grad_norm
        self.world = accelerator.num_processes

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def train(self) -> None:
        for enc in self.encoders.values():
            enc.train()

    def _sizes(self, local: int) -> list[int]:
        if self.world == 1:
            return [local]
        counts = self.accelerator.gather(torch.tensor([local], device=self.accelerator.device))
        return [int(c) for c in counts.tolist()]

    def _encode(self, name: str, x: torch.Tensor, seed: int) -> torch.Tensor:
        # Token masking draws from the global generator: seeding it per (step, micro-batch) makes the masks of
        # the cached and the gradient pass identical, and a resumed run draw the masks an uninterrupted one did.
        torch.manual_seed(seed)
        with self.accelerator.autocast():
            out = self.encoders[name](x)  # [b, E]
        return F.normalize(out.float(), dim=-1)

    def _loss(self, name: str, feats: torch.Tensor, texts: torch.Tensor, sizes: Sequence[int]) -> torch.Tensor:
        scale = self.model.logit_scales[name].value
        return contrastive_loss(gather_rows(feats, sizes), gather_rows(texts, sizes), scale, gather=False)

    def forward_backward(self, micro: Mapping[str, Sequence[Batch]], step: int) -> StepResult:
        """Accumulate the gradients of every modality's global-batch loss for the micro-batches of one step."""
        acc = self.accelerator
        result = StepResult({}, {})
        for m_index, name in enumerate(self.names):
            batches = [b for b in micro.get(name, ()) if len(b) > 0]
            sizes = self._sizes(sum(len(b) for b in batches))
            result.samples[name] = sum(sizes)
            if min(sizes) == 0:
                # Some process has nothing left of its batch (every file failed): all skip this modality once,
                # since the collective ops below need every process.
                log.warning("step %d: %s skipped: a process has no loadable sample in its batch", step, name)
                result.losses[name] = float("nan")
                continue
            table = self.text_tables[name]
            texts = [table[b.caption_ids.to(table.device)] for b in batches]  # [b, E] each
            inputs = [b.inputs.to(acc.device, non_blocking=True) for b in batches]
            seeds = [derive_seed(self.seed, step, m_index, j, acc.process_index) for j in range(len(inputs))]
            encoder = self.encoders[name]
            if len(inputs) == 1:
                loss = self._loss(name, self._encode(name, inputs[0], seeds[0]), texts[0], sizes)
                acc.backward(loss)
            else:
                with torch.no_grad():
                    cached = [self._encode(name, x, s) for x, s in zip(inputs, seeds, strict=True)]
                feats = torch.cat(cached).requires_grad_(True)  # [sum b, E]
                loss = self._loss(name, feats, torch.cat(texts), sizes)
                acc.backward(loss)  # -> d loss / d feats (scaled like the loss under fp16), and the scale's grad
                grads = feats.grad.split([c.shape[0] for c in cached])
                last = len(inputs) - 1
                for j, (x, s, g) in enumerate(zip(inputs, seeds, grads, strict=True)):
                    # DDP all-reduces on the last micro-batch only.
                    with acc.no_sync(encoder) if j < last else nullcontext():
                        self._encode(name, x, s).backward(g)
            result.losses[name] = float(loss.detach())
        return result

    def sync_gradients(self) -> None:
        """Average the temperatures' gradients over processes (encoders are averaged by DDP in backward).

        The temperatures live outside DDP; every process holds the gradient of the same global loss, so the
        mean only guards against round-off drift between processes.
        """
        if self.world == 1:
            return
        for scale in self.model.logit_scales.values():
            if scale.value.grad is not None:
                scale.value.grad = self.accelerator.reduce(scale.value.grad, reduction="mean")

    def optimizer_step(self) -> float | None:
        """Synchronise the temperatures' gradients, clip, step, advance the schedule, clamp the temperatures."""
        if self.optimizer is None:
            raise RuntimeError("this engine was built without an optimizer")
        acc = self.accelerator
        self.sync_gradients()
        norm = None
        if self.max_grad_norm is not None:
            norm = float(acc.clip_grad_norm_(self.trainable_parameters(), self.max_grad_norm))
        self.optimizer.step()
        if self.scheduler is not None and not acc.optimizer_step_was_skipped:
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        for scale in self.model.logit_scales.values():
            scale.clamp_()
        return norm

    def step(self, micro: Mapping[str, Sequence[Batch]], step: int) -> StepResult:
        result = self.forward_backward(micro, step)
        if self.optimizer is not None:
            for group in self.optimizer.param_groups:
                result.lrs.setdefault(group["modality"], group["lr"])
        result.grad_norm = self.optimizer_step()
        return result


# ------------------------------------------------------------------------------------------------ the run
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

    # -- helpers ---------------------------------------------------------------------------------------
    def _emit(self, kind: str, step: int, metrics: dict[str, Any] | None = None, message: str = "") -> None:
        if self.progress is not None and self.accelerator.is_main_process:
            self.progress(TrainEvent(kind, step, self.total_steps, metrics or {}, message))  # type: ignore[arg-type]

    def _init_spec(self, name: str) -> str:
        init = self.cfg.init
        return init.get(name, "scratch") if isinstance(init, dict) else init

    # -- set-up ----------------------------------------------------------------------------------------
    def _setup_accelerator(self) -> None:
        from accelerate import Accelerator

        kwargs: dict[str, Any] = {}
        if self.cfg.tensorboard:
            from accelerate.utils import is_tensorboard_available

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
        from lbcore.demo import demo_data
        from lbcore.plugins import default_registry

        acc = self.accelerator
        self.modalities = {}
        for name, config in self.plan.modalities.items():
            self.modalities[name] = default_registry().registered(name).cls(config)
        manifests: dict[str, Path] = {}
        with acc.local_main_process_first():
            for name, modality in self.modalities.items():
                if name in self.cfg.data:
                    manifests[name] = Path(self.cfg.data[name])
                else:
                    manifests[name] = demo_data(modality, seed=self.cfg.demo_seed)["train"]
                    log.info("%s: no manifest given; training on the demo dataset %s", name, manifests[name])
        problems = []
        self.datasets: dict[str, TrainDataset] = {}
        for index, (name, modality) in enumerate(self.modalities.items()):
            try:
                entries = read_manifest(manifests[name], check_files=True)
            except ManifestError as err:
                problems.append(str(err))
                continue
            self.datasets[name] = TrainDataset(entries, modality, seed=derive_seed(self.cfg.seed, index))
        if problems:
            raise ManifestError("\n".join(problems))
        self.manifests = manifests

    def _precompute_captions(self) -> None:
        """Every distinct caption through the anchor's cache, once; the anchor is released afterwards."""
        from lbcore.anchor import Anchor, TextEmbeddingCache

        acc = self.accelerator
        texts = sorted({t for ds in self.datasets.values() for t in ds.captions.texts})
        cache = TextEmbeddingCache(self.plan.anchor.cache_dir)
        started = time.perf_counter()
        with acc.local_main_process_first():
            anchor = self._anchor if self._anchor is not None else Anchor.from_config(self.plan.anchor)
            if self._anchor is None and acc.device.type != "cpu":
                anchor.to(acc.device)  # cache misses are encoded on the accelerator
            report = None
            if self.progress is not None and acc.is_main_process:
                report = lambda done, total: self.progress(TrainEvent("captions", done, total))  # noqa: E731
            table = cache.embed(anchor, texts, batch_size=self.plan.anchor.batch_size, progress=report)  # [T, E]
            self.anchor_fingerprint = anchor.fingerprint
            self.embed_dim = int(anchor.embed_dim)
        del anchor  # never used again: training reads the precomputed table
        if self._anchor is None and acc.device.type == "cuda":
            import gc

            gc.collect()
            torch.cuda.empty_cache()  # give the anchor's memory back to the encoders
        row = {t: i for i, t in enumerate(texts)}
        self.text_tables = {
            name: table[torch.tensor([row[t] for t in ds.captions.texts], dtype=torch.long)]
            for name, ds in self.datasets.items()
        }
        log.info(
            "caption embeddings: %d distinct captions, %d-d, ready in %.1f s",
            len(texts),
            self.embed_dim,
            time.perf_counter() - started,
        )

    def _setup_model(self) -> None:
        from accelerate.utils import set_seed

        from lbcore.convert import load_clip_vision_into, load_languagebind_into

        encoders: dict[str, nn.Module] = {}
        init_scales: dict[str, float] = {}  # logit scales (log) that come with an initialisation
        self.param_counts: dict[str, dict[str, int]] = {}
        for index, (name, modality) in enumerate(self.modalities.items()):
            set_seed(derive_seed(self.cfg.seed, index, 0xE7C))  # each encoder's init independent of the others
            encoder = modality.build_encoder(self.embed_dim)
            init = self._init_spec(name)
            kind, _, init_path = init.partition(":")
            if kind == "clip":
                for line in load_clip_vision_into(encoder, Path(init_path).expanduser()):
                    log.info("%s init: %s", name, line)
            elif kind == "languagebind":
                loaded = load_languagebind_into(encoder, modality, Path(init_path).expanduser())
                for line in loaded.report:
                    log.info("%s init: %s", name, line)
                if loaded.logit_scale is not None:
                    init_scales[name] = loaded.logit_scale  # continue from the release's temperature too
            counts = apply_lora(encoder, modality.config, where=f"modalities.{name}.")
            checkpointing = self.cfg.grad_checkpointing
            if checkpointing is not None:
                if hasattr(encoder, "set_grad_checkpointing"):
                    encoder.set_grad_checkpointing(checkpointing)
                elif checkpointing:
                    log.warning("%s: its encoder has no set_grad_checkpointing(); checkpointing is off", name)
            self.param_counts[name] = counts
            log.info(
                "%s: %s trainable of %s parameters (LoRA rank %d: %s adapter parameters)",
                name,
                f"{counts['trainable']:,}",
                f"{counts['total']:,}",
                modality.config.lora.rank,
                f"{counts['lora']:,}",
            )
            encoders[name] = encoder
        self.model = BindModel(
            self.plan.anchor,
            encoders,
            self.modalities,
            init_scales,
            anchor_fingerprint=self.anchor_fingerprint,
            embed_dim=self.embed_dim,
        )

    def _setup_schedule(self) -> None:
        acc = self.accelerator
        k = self.cfg.grad_accum
        per_epoch = {}
        for name, ds in self.datasets.items():
            batch = self.modalities[name].config.optim.batch_size
            if batch % (acc.num_processes * k):
                raise ConfigError(
                    f"modalities.{name}.optim.batch_size: {batch} is not divisible by {acc.num_processes} "
                    f"process(es) x {k} accumulation step(s)"
                )
            per_epoch[name] = len(ds) // batch
            if per_epoch[name] == 0:
                raise ConfigError(
                    f"modalities.{name}.optim.batch_size: {batch} is larger than the {len(ds)} samples of "
                    f"{self.manifests[name]}; lower --batch-size"
                )
        # Multi-modality runs step all modalities together; an epoch ends with the smallest dataset.
        self.steps_per_epoch = min(per_epoch.values())
        epochs = self.cfg.epochs or max(m.config.optim.epochs for m in self.modalities.values())
        self.total_steps = self.cfg.max_steps or epochs * self.steps_per_epoch
        self.batch_sizes = {n: self.modalities[n].config.optim.batch_size for n in self.datasets}

    def _setup_loaders(self) -> None:
        from torch.utils.data import DataLoader

        acc = self.accelerator
        workers = self.cfg.num_workers
        self.samplers: dict[str, EpochBatchSampler] = {}
        self.loaders: dict[str, DataLoader] = {}
        for index, (name, ds) in enumerate(self.datasets.items()):
            sampler = EpochBatchSampler(
                len(ds),
                self.batch_sizes[name],
                seed=derive_seed(self.cfg.seed, index),
                world=acc.num_processes,
                rank=acc.process_index,
                grad_accum=self.cfg.grad_accum,
                steps=self.steps_per_epoch,
            )
            self.samplers[name] = sampler
            self.loaders[name] = DataLoader(
                ds,  # type: ignore[arg-type]  # map-style: __getitem__ + __len__
                batch_sampler=sampler,
                collate_fn=SampleCollator(self.modalities[name]),
                num_workers=workers,
                pin_memory=acc.device.type == "cuda",
                persistent_workers=workers > 0,
            )
        self.budgets = {
            name: ErrorBudget(len(ds), self.cfg.error_budget, str(self.manifests[name]))
            for name, ds in self.datasets.items()
        }

    # -- checkpoints -----------------------------------------------------------------------------------
    def _progress_state(self, step: int) -> dict[str, Any]:
        return {
            "step": step,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "samples_seen": self.samples_seen,
            "elapsed_s": self.elapsed_before + (time.perf_counter() - self.started),
            "failures": {n: b.failures for n, b in self.budgets.items()},
        }

    def _adapter_modalities(self) -> list[str]:
        """The modalities whose checkpoint weights are LoRA adapter + trained extras + base reference: those
        trained with LoRA from a base that loads back to exactly their frozen weights, unless ``train.save_full``.
        The others are saved in full. Decided on the first save (the base is frozen) and logged once."""
        plan = getattr(self, "_adapter_plan", None)
        if plan is not None:
            return plan
        plan = []
        for name, modality in self.modalities.items():
            if self.cfg.save_full or modality.config.lora.rank <= 0:
                continue
            init = self._init_spec(name)
            source = base_reference(init)
            if source is None:
                log.info(
                    "%s: LoRA on an encoder initialised from %r: no base to refer to, saving full weights", name, init
                )
                continue
            self.model.base_sources[name] = source
            try:
                self.model.verify_base(name)
            except CheckpointError as err:
                log.warning("%s: saving full weights instead of the LoRA adapter: %s", name, err)
                continue
            log.info("%s: checkpoints hold the LoRA adapter and trained extras; base weights: %s", name, source)
            plan.append(name)
        self._adapter_plan: list[str] = plan
        return plan

    def _save(self, name: str, step: int) -> Path:
        from safetensors.torch import save_file

        acc = self.accelerator
        target = self.output / name
        tmp = self.output / f".tmp-{name}"  # same name on every process: they all write into it
        acc.wait_for_everyone()
        if acc.is_main_process:
            if tmp.exists():
                import shutil

                shutil.rmtree(tmp)
            (tmp / TRAIN_STATE_DIR).mkdir(parents=True)
        acc.wait_for_everyone()
        if acc.is_main_process:
            extra = {
                "train": {
                    "step": step,
                    "epoch": step / self.steps_per_epoch,
                    "total_steps": self.total_steps,
                    "config": self.plan.train.model_dump(mode="json"),
                    "manifests": {n: str(p) for n, p in self.manifests.items()},
                }
            }
            self.model.write_files(tmp, extra, adapter_only=self._adapter_modalities())
        acc.save_state(str(tmp / TRAIN_STATE_DIR), safe_serialization=True)
        if acc.is_main_process:
            state_dir = tmp / TRAIN_STATE_DIR
            scales = {n: s.value.detach().cpu().reshape(1).clone() for n, s in self.model.logit_scales.items()}
            save_file(scales, str(state_dir / "logit_scales.safetensors"))
            write_json(state_dir / "scheduler.json", _scheduler_state(self.scheduler))
            write_json(state_dir / PROGRESS_FILE, self._progress_state(step))
        acc.wait_for_everyone()
        if acc.is_main_process:
            replace_dir(tmp, target)
            prune_step_dirs(self.output, self.cfg.keep_checkpoints)
            log.info("checkpoint at step %d: %s", step, target)
        acc.wait_for_everyone()
        self._emit("checkpoint", step, {"path": str(target)}, f"checkpoint {target}")
        return target

    def _resume(self) -> int:
        from safetensors.torch import load_file

        latest = find_latest(self.output)
        if latest is None:
            log.info("resume: no checkpoint in %s; starting from scratch", self.output)
            return 0
        meta = read_meta(latest)
        if meta["anchor"].get("fingerprint") != self.anchor_fingerprint:
            raise ConfigError(
                f"{latest}: trained against anchor {meta['anchor'].get('fingerprint', '?')[:12]}, but this run's "
                f"anchor is {self.anchor_fingerprint[:12]}; resume with the same anchor or use a new --output"
            )
        saved = {n: s.get("config") for n, s in meta["modalities"].items()}
        current = {n: m.config.model_dump(mode="json") for n, m in self.modalities.items()}
        if saved != current:
            changed = sorted(n for n in set(saved) | set(current) if saved.get(n) != current.get(n))
            raise ConfigError(
                f"{latest}: the modality config differs from the checkpoint's for {', '.join(changed)}; resume with "
                "the same config (compare with its lbind.json) or use a new --output"
            )
        state_dir = latest / TRAIN_STATE_DIR
        self.accelerator.load_state(str(state_dir))
        scales = load_file(str(state_dir / "logit_scales.safetensors"))
        with torch.no_grad():
            for name, scale in self.model.logit_scales.items():
                scale.value.copy_(scales[name].reshape(()).to(scale.value.device))
        sched = json.loads((state_dir / "scheduler.json").read_text(encoding="utf-8"))
        self.scheduler.load_state_dict(sched)
        progress = json.loads((state_dir / PROGRESS_FILE).read_text(encoding="utf-8"))
        if progress.get("steps_per_epoch") != self.steps_per_epoch:
            raise ConfigError(
                f"{latest}: the data gives {self.steps_per_epoch} steps per epoch, the checkpoint was made with "
                f"{progress.get('steps_per_epoch')}; resume with the same data and batch size"
            )
        if progress.get("total_steps") != self.total_steps:
            log.warning(
                "resume: total steps changed from %s to %d; the learning-rate schedule follows the new total",
                progress.get("total_steps"),
                self.total_steps,
            )
        for name, failures in progress.get("failures", {}).items():
            if name in self.budgets:
                self.budgets[name].failures.update(failures)
        self.samples_seen = int(progress.get("samples_seen", 0))
        self.elapsed_before = float(progress.get("elapsed_s", 0.0))
        step = int(progress["step"])
        log.info("resumed from %s at step %d", latest, step)
        return step

    # -- the loop --------------------------------------------------------------------------------------
    def _account_failures(self, micro: Mapping[str, Sequence[Batch]], step: int) -> None:
        from accelerate.utils import gather_object

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

    def _metrics_file(self, start_step: int) -> Any:
        path = self.output / "metrics.jsonl"
        if start_step == 0:
            return open(path, "w", encoding="utf-8")
        # A resumed run rewrites the steps after its checkpoint, which the interrupted run may have logged.
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

    def fit(self) -> Path:
        """Run the training; return the final checkpoint folder."""
        self._setup_accelerator()
        acc = self.accelerator
        latest = find_latest(self.output) if self.output.is_dir() else None
        if latest is not None and not self.cfg.resume:
            raise ConfigError(
                f"{self.output}: holds checkpoints of an earlier run ({latest.name}); pass --resume to continue it "
                "or choose another --output"
            )
        if acc.is_main_process:
            self.output.mkdir(parents=True, exist_ok=True)
        self._setup_data()
        self._precompute_captions()
        self._setup_model()
        self._setup_schedule()
        optimizer = build_optimizer(self.model, self.cfg.lr_multipliers)
        self.scheduler = build_scheduler(optimizer, self.model, self.total_steps)
        self.engine = ContrastiveEngine(
            acc,
            self.model,
            self.text_tables,
            optimizer=optimizer,
            scheduler=self.scheduler,
            seed=self.cfg.seed,
            max_grad_norm=self.cfg.max_grad_norm,
        )
        self._setup_loaders()
        self.samples_seen = 0
        self.elapsed_before = 0.0
        self.started = time.perf_counter()
        start_step = self._resume() if self.cfg.resume else 0
        if self.cfg.tensorboard:
            acc.init_trackers("lbind", config=_flat_hparams(self.plan))
        final = self.output / FINAL_NAME
        metrics_handle = self._metrics_file(start_step) if acc.is_main_process else None
        try:
            self._emit(
                "start",
                start_step,
                {
                    "params": self.param_counts,
                    "samples_per_step": sum(self.batch_sizes.values()),
                    "steps_per_epoch": self.steps_per_epoch,
                    "processes": acc.num_processes,
                    "device": str(acc.device),
                    "mixed_precision": acc.mixed_precision,
                    "output": str(self.output),
                },
            )
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
            iterators = {}
            for name, loader in self.loaders.items():
                self.samplers[name].set_epoch(epoch)
                if offset:
                    # Mid-epoch resume: skip the batches already trained on, without loading them.
                    loader = acc.skip_first_batches(loader, offset * k)
                iterators[name] = iter(loader)
            for _ in range(offset, self.steps_per_epoch):
                micro = {name: [next(it) for _ in range(k)] for name, it in iterators.items()}
                self._account_failures(micro, step)
                result = self.engine.step(micro, step)
                step += 1
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
        if result.grad_norm is not None:
            record["grad_norm"] = result.grad_norm
        record["skipped"] = sum(len(b.failures) for b in self.budgets.values())
        return record

    @property
    def names(self) -> list[str]:
        return list(self.modalities)

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


def _flat_hparams(plan: TrainPlan) -> dict[str, Any]:
    """Scalar hyper-parameters for TensorBoard (nested keys joined with '/')."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(value, (int, float, str, bool)):
            out[prefix] = value
        elif value is not None:
            out[prefix] = str(value)

    walk("", plan.to_dict())
    return out


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


class _CallableModule(types.ModuleType):
    """``lbcore.train`` is both this module and the ``train`` function: importing the submodule makes Python bind
    the package attribute to the module, so calling it must still train."""

    def __call__(
        self,
        config: TrainPlan | Mapping[str, Any] | str | Path,
        *,
        progress: ProgressCallback | None = None,
        anchor: Any = None,
    ) -> Path:
        return train(config, progress=progress, anchor=anchor)


sys.modules[__name__].__class__ = _CallableModule
