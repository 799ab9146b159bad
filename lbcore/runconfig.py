"""Run configs: what ``lbind train`` and :func:`lbcore.train` read, validated into a :class:`TrainPlan`.

A run config names the anchor, per modality a preset plus overrides, and the loop settings (:class:`TrainConfig`,
its ``train`` section). It is validated in two steps, since a modality's own config class is only known once its
plugin is loaded: the top level first, then each modality entry against its plugin's config model.
:func:`apply_overrides` merges the command line's flags into a run config mapping.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from lbcore.config import (
    AnchorConfig,
    ModalityConfig,
    RunConfig,
    StrictModel,
    deep_merge,
    read_yaml,
    validate_model,
)
from lbcore.errors import ConfigError
from lbcore.grouping import check_groups
from lbcore.plugins import default_registry
from lbcore.threads import ThreadsConfig

__all__ = [
    "INIT_KINDS",
    "TrainConfig",
    "TrainPlan",
    "apply_overrides",
    "load_run_config",
    "resolve_config",
    "validate_run_config",
]

INIT_KINDS = ("clip", "languagebind")  # train.init: 'scratch' or KIND:PATH


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
            "kept). PATH may be a hub id (org/name, hf://org/name@revision), fetched into the Hugging Face cache. "
            "A mapping sets it per modality."
        ),
    )
    num_workers: int | None = Field(
        None,
        ge=0,
        description=(
            "DataLoader worker processes per training process (null: the threads section's choice: "
            "threads.workers, LBIND_NUM_WORKERS, else a share of the idle cores)."
        ),
    )
    mixed_precision: Literal["auto", "no", "bf16", "fp16"] = Field(
        "auto", description="'auto': bf16 on GPUs that support it, fp16 on other GPUs, float32 on CPU."
    )
    grad_checkpointing: bool | None = Field(
        None, description="Recompute activations in the backward pass (default: each encoder config's setting)."
    )
    max_grad_norm: float | None = Field(1.0, gt=0, description="Clip the global gradient norm (null: no clipping).")
    max_nonfinite_steps: int = Field(
        3,
        ge=0,
        description=(
            "Optimiser steps in a row whose loss or gradient norm is NaN or infinite that are skipped (no update, "
            "weights untouched) before the run stops with an error naming the step and modality; 0: stop at the first."
        ),
    )
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
    groups: list[list[str]] = Field(
        default_factory=list,
        description=(
            "Groups of modalities aligned as one besides alone (VALOR's grouping alignment), e.g. [[video, audio]]: "
            "the loss of the group's fused embedding against the captions is added, on the rows of one paired "
            "manifest (every member's train.data) that have every member. A modality is in at most one group."
        ),
    )
    group_fusion: Literal["learned", "mean"] = Field(
        "learned", description="Group fusion: 'learned' member weights (+ linear map), or the parameter-free 'mean'."
    )
    group_linear: bool = Field(
        True, description="Learned fusion: a linear map (initialised to identity) after the sum."
    )
    group_weight: float = Field(1.0, ge=0, description="Weight of each group's loss beside the modalities' own.")
    local_loss: bool = Field(
        False,
        description=(
            "Each process builds only its own rows of the logits ([b, world*b] both ways) instead of the global "
            "[world*b, world*b]; the gradients are the global loss's, the logged loss its mean over processes."
        ),
    )
    check_files: bool = Field(
        True, description="Check that every manifest file exists before the first step (in parallel threads)."
    )
    manifest_cache: Path | None = Field(
        None,
        description=(
            "Folder of the memory-mapped manifest indexes, built once per manifest version and shared by all "
            "processes (default: <lbind cache>/manifests)."
        ),
    )

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
    """A validated run: anchor, each modality's full config, the loop settings and the CPU thread settings."""

    anchor: AnchorConfig
    modalities: dict[str, ModalityConfig]
    train: TrainConfig
    threads: ThreadsConfig = field(default_factory=ThreadsConfig)

    def to_dict(self) -> dict[str, Any]:
        return {
            "anchor": self.anchor.model_dump(mode="json"),
            "modalities": {n: c.model_dump(mode="json") for n, c in self.modalities.items()},
            "train": self.train.model_dump(mode="json"),
            "threads": self.threads.model_dump(mode="json"),
        }

    def hparams(self) -> dict[str, Any]:
        """Scalar hyper-parameters (for TensorBoard): nested keys joined with '/', other values as strings."""
        out: dict[str, Any] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for k, v in value.items():
                    walk(f"{prefix}/{k}" if prefix else str(k), v)
            elif isinstance(value, (int, float, str, bool)):
                out[prefix] = value
            elif value is not None:
                out[prefix] = str(value)

        walk("", self.to_dict())
        return out


def resolve_config(config: TrainPlan | Mapping[str, Any] | str | Path, source: str = "") -> TrainPlan:
    """Validate a run config (a YAML path or a mapping with ``anchor``, ``modalities`` and ``train`` sections).

    A modality entry without a ``preset`` and without a manifest in ``train.data`` uses the ``demo`` preset
    (the embedded default: it trains on the plugin's demo dataset). Errors name the exact field path, and every
    bad field of every section is reported at once (one :class:`ConfigError`, one line per problem).
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
    where = f"{source}: " if source else ""
    problems: list[str] = []
    train_raw = data.pop("train", None) or {}
    train_cfg = _attempt(problems, validate_model, TrainConfig, train_raw, prefix=("train",), source=source)
    threads_raw = data.pop("threads", None) or {}
    threads = _attempt(problems, validate_model, ThreadsConfig, threads_raw, prefix=("threads",), source=source)
    raw_modalities = data.get("modalities") or {}
    if not isinstance(raw_modalities, Mapping):
        raise ConfigError(
            f"{where}modalities: expected a mapping of modality names, got {type(raw_modalities).__name__}"
        )
    manifests = train_cfg.data if train_cfg is not None else _mapping_or_empty(_mapping_or_empty(train_raw).get("data"))
    modalities: dict[str, Any] = {}
    for name, spec in raw_modalities.items():
        if spec is not None and not isinstance(spec, Mapping):
            modalities[name] = spec  # reported by validate_run_config with its path
            continue
        spec = dict(spec or {})
        if "preset" not in spec and name not in manifests:
            spec["preset"] = "demo"
        modalities[name] = spec
    data["modalities"] = modalities
    if not modalities:
        problems.append(f"{where}modalities: no modality to train; pass --modality NAME or list modalities")
    if train_cfg is not None:
        per_modality = {"data": train_cfg.data, "init": train_cfg.init if isinstance(train_cfg.init, dict) else {}}
        for key, mapping in per_modality.items():
            unknown = sorted(set(mapping) - set(modalities))
            if unknown and modalities:
                problems.append(
                    f"{where}train.{key}: given for {', '.join(unknown)}, which the run does not train "
                    f"(modalities: {', '.join(modalities)})"
                )
        _attempt(problems, check_groups, train_cfg.groups, list(modalities))
    checked = _attempt(problems, validate_run_config, data, source=source)
    if problems or checked is None or train_cfg is None or threads is None:
        raise ConfigError("\n".join(problems))
    run, configs = checked
    return TrainPlan(run.anchor, configs, train_cfg, threads)


def _attempt(problems: list[str], check: Any, *args: Any, **kwargs: Any) -> Any:
    """``check(*args, **kwargs)``, or None with its :class:`ConfigError` appended to ``problems``."""
    try:
        return check(*args, **kwargs)
    except ConfigError as err:
        problems.append(str(err))
        return None


def _mapping_or_empty(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def modality_config(name: str, spec: Mapping[str, Any], source: str = "") -> ModalityConfig:
    """One run-config modality entry (``{preset: NAME, ...overrides}``) validated against its plugin's config
    model, preset merged with overrides, plus the plugin's own cross-field rules
    (:meth:`~lbcore.modality.Modality.config_problems`). Errors name the exact field path."""
    where = f"{source}: " if source else ""
    spec = dict(spec)
    preset = spec.pop("preset", None)
    cls = default_registry().registered(name).cls
    if preset is not None and not isinstance(preset, str):
        raise ConfigError(f"{where}modalities.{name}.preset: expected a preset name, got {preset!r}")
    base = cls.presets.get(preset or cls.default_preset)
    if base is None:
        raise ConfigError(
            f"{where}modalities.{name}.preset: unknown preset {preset!r}; available: {', '.join(sorted(cls.presets))}"
        )
    config = validate_model(cls.Config, deep_merge(base, spec), prefix=("modalities", name), source=source)
    problems = cls.config_problems(config)
    if problems:
        raise ConfigError("\n".join(f"{where}modalities.{name}: {p}" for p in problems))
    return config


def validate_run_config(data: Any, source: str = "") -> tuple[RunConfig, dict[str, ModalityConfig]]:
    """Validate a run config mapping in two steps: the top level, then each modality entry against its
    plugin's config model (preset merged with overrides). Errors name the exact field path; every bad field of
    every section is reported in one :class:`ConfigError` (one line per problem)."""
    where = f"{source}: " if source else ""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}expected a mapping at the top level, got {type(data).__name__}")
    problems: list[str] = []
    run = _attempt(problems, validate_model, RunConfig, data, source=source)
    train = data.get("train")
    if isinstance(train, Mapping) and train:
        _attempt(problems, validate_model, TrainConfig, train, prefix=("train",), source=source)
    specs = data.get("modalities")
    modality_configs: dict[str, ModalityConfig] = {}
    for name, spec in (specs if isinstance(specs, Mapping) else {}).items():
        if not isinstance(spec, Mapping):
            if run is not None:  # RunConfig reported it otherwise
                problems.append(f"{where}modalities.{name}: expected a mapping, got {type(spec).__name__}")
            continue
        config = _attempt(problems, modality_config, str(name), spec, source=source)
        if config is not None:
            modality_configs[str(name)] = config
    if problems or run is None:
        raise ConfigError("\n".join(problems))
    return run, modality_configs


def load_run_config(path: str | Path) -> tuple[RunConfig, dict[str, ModalityConfig]]:
    """Read and validate a YAML run config file."""
    return validate_run_config(read_yaml(path), source=str(path))


def _mapping(value: Any, where: str) -> dict[str, Any]:
    """A config section as a new dict (``None``: empty); anything but a mapping is an error naming ``where``."""
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
    return dict(value)


def _data_flags(data: Sequence[str], names: Sequence[str]) -> dict[str, str]:
    """``--data`` values as manifests by modality: ``MODALITY=PATH`` for one, a bare ``PATH`` for every modality
    not named so (several modalities then share one paired manifest, each taking the rows with its key)."""
    named: dict[str, str] = {}
    shared: list[str] = []
    for item in data:
        name, sep, path = item.partition("=")
        if sep and name in names:
            named[name] = path
        else:
            shared.append(item)
    if len(shared) > 1:
        raise ConfigError(
            f"--data {' '.join(shared)}: several manifests without a modality; give one paired manifest for all, "
            f"or write MODALITY=PATH ({', '.join(names)})"
        )
    return {**{name: shared[0] for name in names if shared}, **named}


def apply_overrides(
    raw: Mapping[str, Any],
    *,
    modalities: Sequence[str] = (),
    data: Sequence[str] = (),
    output: str | Path | None = None,
    preset: str | None = None,
    batch_size: int | None = None,
    lr: float | None = None,
    source: str = "",
    **train_flags: Any,
) -> dict[str, Any]:
    """A copy of the run config mapping ``raw`` with command-line choices merged in (``raw`` is not changed).

    ``modalities`` join the run (``preset``, when given, becomes their preset). ``data``: training manifests,
    ``MODALITY=PATH``, or one ``PATH`` for every modality not named so (with several modalities, a paired
    manifest: each trains on the rows that have its key). ``batch_size`` and ``lr`` set every modality's
    ``optim.batch_size`` / ``optim.lr``; ``output`` sets ``train.output_dir``; ``train_flags`` set other ``train``
    settings by :class:`TrainConfig` field name. ``None`` (and ``False`` for a flag) means "not given": the
    config's value stays. ``source`` names the config file in errors.
    """
    where = f"{source}: " if source else ""
    unknown = sorted(set(train_flags) - set(TrainConfig.model_fields))
    if unknown:
        raise ConfigError(
            f"unknown train setting(s) {', '.join(unknown)}; expected {', '.join(TrainConfig.model_fields)}"
        )
    out = copy.deepcopy(dict(raw))
    specs = _mapping(out.get("modalities"), f"{where}modalities")
    specs = {name: _mapping(spec, f"{where}modalities.{name}") for name, spec in specs.items()}
    section = _mapping(out.get("train"), f"{where}train")
    for name in modalities:
        specs.setdefault(name, {})
        if preset:
            specs[name]["preset"] = preset
    names = list(specs)
    manifests = _mapping(section.get("data"), f"{where}train.data")
    manifests.update(_data_flags(data, names))
    if manifests:
        section["data"] = manifests
    optim = {k: v for k, v in (("batch_size", batch_size), ("lr", lr)) if v is not None}
    if optim:
        for name in names:
            specs[name]["optim"] = {**_mapping(specs[name].get("optim"), f"{where}modalities.{name}.optim"), **optim}
    if output:
        section["output_dir"] = str(output)
    section.update({k: v for k, v in train_flags.items() if v is not None and v is not False})
    out["modalities"] = specs
    out["train"] = section
    return out
