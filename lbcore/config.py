"""Configuration models (pydantic). YAML in, JSON schema out; unknown fields are errors.

A modality's config is its plugin's subclass of :class:`ModalityConfig`. A run config (what ``lbind train``
reads) names the anchor, the training loop settings and, per modality, a preset plus overrides; it is
validated in two steps because the modality's own config class is only known once plugins are loaded (see
:mod:`lbcore.runconfig`).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lbcore.errors import ConfigError


class StrictModel(BaseModel):
    """Base of every config: extra fields are rejected, assignments are validated, and no float may be NaN or
    infinite (``.inf`` in YAML is an error, not a learning rate)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def cross_field_check(problems: list[str]) -> None:
    """Raise one ``ValueError`` listing every cross-field problem a model validator found (none: return).

    Pydantic stops at the first failing validator of a model, so a validator collects all of its rules'
    problems and reports them together.
    """
    if problems:
        raise ValueError("; ".join(problems))


class EncoderConfig(StrictModel):
    """Size and layout of the ViT trunk (CLIP layout)."""

    width: int = Field(1024, gt=0, description="Token width of the transformer (ViT-L/14: 1024).")
    depth: int = Field(24, gt=0, description="Number of transformer blocks (ViT-L/14: 24).")
    heads: int = Field(16, gt=0, description="Attention heads per block; must divide width.")
    mlp_ratio: float = Field(4.0, gt=0, description="Hidden size of the MLP as a multiple of width.")
    patch_size: int = Field(14, gt=0, description="Side of a square patch, in input pixels (or bins).")
    act: Literal["gelu", "quick_gelu"] = Field(
        "gelu", description="MLP activation: 'gelu' (OpenCLIP/LanguageBind) or 'quick_gelu' (OpenAI CLIP)."
    )
    layer_norm_eps: float = Field(1e-5, gt=0, description="Epsilon of every LayerNorm.")
    drop_path: float = Field(0.0, ge=0, lt=1, description="Stochastic depth rate of the last block.")
    grad_checkpointing: bool = Field(
        False, description="Recompute block activations in the backward pass to save memory."
    )

    @model_validator(mode="after")
    def _heads_divide_width(self) -> EncoderConfig:
        if self.width % self.heads:
            cross_field_check([f"heads ({self.heads}) must divide width ({self.width})"])
        return self


class LoraConfig(StrictModel):
    """LoRA adapters (peft). Rank 0 trains the encoder fully instead."""

    rank: int = Field(0, ge=0, description="LoRA rank r; 0 disables LoRA (full fine-tuning).")
    alpha: float = Field(16.0, gt=0, description="LoRA alpha; the update is scaled by alpha / rank.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the LoRA input.")
    targets: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "out_proj"],
        description="Module names (peft target_modules) that receive adapters.",
    )
    trainable_extras: list[str] = Field(
        default_factory=lambda: ["trunk.class_embedding", "head."],
        description="Parameter name prefixes trained besides the adapters (class token, post-norm, projection).",
    )


Beta = Annotated[float, Field(ge=0, lt=1)]


class OptimConfig(StrictModel):
    """Optimiser and schedule of the LanguageBind recipe for this modality. Every number must be finite."""

    lr: float = Field(1e-4, gt=0, description="Peak learning rate of the encoder.")
    weight_decay: float = Field(0.2, ge=0, description="AdamW weight decay (not applied to 1-D params).")
    betas: tuple[Beta, Beta] = Field((0.9, 0.98), description="AdamW betas, each in [0, 1).")
    eps: float = Field(1e-6, gt=0, description="AdamW epsilon.")
    warmup_steps: int = Field(2000, ge=0, description="Linear warm-up steps before the cosine decay.")
    epochs: int = Field(1, gt=0, description="Passes over the training data.")
    batch_size: int = Field(1024, gt=0, description="Global batch size (all processes together).")


class ModalityConfig(StrictModel):
    """What every modality config has. Plugins subclass it to add their input settings."""

    encoder: EncoderConfig = Field(default_factory=EncoderConfig, description="The encoder trunk.")
    mask_ratio: float = Field(
        0.0, ge=0, lt=1, description="Share of patch tokens dropped during training (class token kept)."
    )
    lora: LoraConfig = Field(default_factory=LoraConfig, description="LoRA adapters.")
    optim: OptimConfig = Field(default_factory=OptimConfig, description="Optimiser and schedule.")


class ImageConfig(ModalityConfig):
    """Input settings shared by image-like modalities (RGB, depth, infrared...)."""

    image_size: int = Field(224, gt=0, description="Side of the square centre crop fed to the encoder.")
    in_chans: int = Field(3, gt=0, description="Channels of the preprocessed tensor.")
    mean: tuple[float, ...] = Field(
        (0.48145466, 0.4578275, 0.40821073), description="Per-channel mean (CLIP normalisation)."
    )
    std: tuple[float, ...] = Field(
        (0.26862954, 0.26130258, 0.27577711), description="Per-channel std (CLIP normalisation)."
    )
    interpolation: Literal["bicubic", "bilinear", "nearest"] = Field(
        "bicubic", description="Resampling filter of the short-side resize."
    )
    antialias: bool = Field(
        False,
        description=(
            "Low-pass filter before downscaling. False (default) matches LanguageBind: its torchvision 0.14 "
            "tensor Resize did not antialias, so the published weights were trained on such inputs. True "
            "(torchvision >= 0.17's default) resamples more smoothly; the two differ by 1-3 normalised units "
            "on sharp depth edges."
        ),
    )

    @model_validator(mode="after")
    def _consistent_input(self) -> ImageConfig:
        problems = []
        patch = self.encoder.patch_size
        if self.image_size < patch:
            problems.append(f"image_size ({self.image_size}) is smaller than one encoder.patch_size ({patch}) patch")
        for field in ("mean", "std"):
            if len(getattr(self, field)) != self.in_chans:
                problems.append(
                    f"{field} has {len(getattr(self, field))} entries but in_chans is {self.in_chans} (one per channel)"
                )
        if any(s <= 0 for s in self.std):
            problems.append(f"std {list(self.std)} must be positive (it divides the input)")
        cross_field_check(problems)
        return self


class AnchorConfig(StrictModel):
    """The frozen text encoder that defines the shared space."""

    name: str = Field(
        "minilm",
        description=(
            "Local directory or Hugging Face id of the text encoder; 'minilm' is the packaged, offline "
            "all-MiniLM-L6-v2."
        ),
    )
    pooling: Literal["auto", "mean", "cls", "eot"] = Field(
        "auto", description="Text pooling; 'auto' picks 'eot' for CLIP towers and 'mean' otherwise."
    )
    max_length: int = Field(77, gt=0, description="Token limit; longer captions are truncated.")
    batch_size: int = Field(64, gt=0, description="Captions per anchor forward pass.")
    cache_dir: Path | None = Field(
        None, description="Text-embedding cache folder; default $LBIND_CACHE or ~/.cache/lbind."
    )


class RunConfig(StrictModel):
    """A run config file: anchor, modalities (preset name plus overrides each) and extra sections."""

    anchor: AnchorConfig = Field(default_factory=AnchorConfig, description="The frozen text anchor.")
    modalities: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description=(
            "Per modality name: {preset: NAME, ...overrides of that modality's config}. The overrides are "
            "validated against the modality plugin's config model."
        ),
    )
    train: dict[str, Any] = Field(
        default_factory=dict,
        description="Training-loop settings (see lbcore.runconfig.TrainConfig: output_dir, data, max_steps, ...).",
    )
    threads: dict[str, Any] = Field(
        default_factory=dict,
        description="CPU threads and DataLoader workers (see lbcore.threads.ThreadsConfig); unset: chosen per machine.",
    )


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Recursively merge ``override`` into a copy of ``base`` (mappings merge, everything else replaces)."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def format_validation_error(err: ValidationError, prefix: tuple[str | int, ...] = (), source: str = "") -> str:
    """One line per bad field: ``file: a.b.c: message (got value)``."""
    lines = []
    for item in err.errors():
        loc = ".".join(str(p) for p in (*prefix, *item["loc"])) or "<root>"
        got = item.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{source + ': ' if source else ''}{loc}: {item['msg']}{shown}")
    return "\n".join(lines)


def validate_model(model: type[StrictModel], data: Any, prefix: tuple[str | int, ...] = (), source: str = ""):
    """Validate ``data`` against ``model``; raise :class:`ConfigError` naming every bad field path."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, prefix, source)) from err


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping, with errors that name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise ConfigError(f"{path}: cannot read config file: {err.strerror or err}") from err
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from err
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def to_yaml(model: BaseModel) -> str:
    """Render a config as YAML (tuples become lists)."""
    return yaml.safe_dump(model.model_dump(mode="json"), sort_keys=False)


def default_cache_dir() -> Path:
    """Where lbind caches text embeddings and demo data: ``$LBIND_CACHE`` or ``~/.cache/lbind``."""
    env = os.environ.get("LBIND_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "lbind"
