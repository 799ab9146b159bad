"""Released LanguageBind checkpoints -> our encoders (``lbind train --init languagebind:PATH``).

The releases (LanguageBind/LanguageBind_{Audio,Audio_FT,Depth,Thermal,Image,Video,Video_FT}) are transformers
CLIPModel state dicts: a text tower (text_model.*, text_projection), a vision tower in CLIP's names (plus, for
video, per-layer temporal_embedding / temporal_attn / temporal_layer_norm1) and logit_scale. LoRA releases wrap
the vision encoder in a peft model: vision_model.encoder.base_model.model.layers.N..., with the adapters at
<module>.lora_A.default.weight [r, in] and <module>.lora_B.default.weight [out, r].

Which modality a release belongs to, which of its ``vision_config`` settings the modality's config carries and
its patch grid are not known here: each plugin declares its releases (:class:`lbcore.release.ReleaseLayout` in
``Modality.releases``), and a release is matched by config.json's ``model_type``. Writing a release as an lbind
checkpoint folder is :func:`lbcore.convert.writer.convert_languagebind`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from lbcore.config import ModalityConfig, deep_merge, validate_model
from lbcore.convert.clip import POSITION_IDS, TEMPORAL_PREFIXES, encoder_config_from_clip, map_clip_vision_keys
from lbcore.convert.weights import find_weight_files, load_exactly, read_json, read_weights
from lbcore.errors import CheckpointError, ConfigError, UnknownReleaseError
from lbcore.hub import resolve
from lbcore.modality import Modality
from lbcore.nn.stem import resize_position_embedding
from lbcore.plugins import PluginRegistry, default_registry
from lbcore.release import ReleaseLayout

logger = logging.getLogger(__name__)

# What LanguageBind's CLIPVisionConfig assumes when config.json leaves the LoRA fields out.
LANGUAGEBIND_LORA_DEFAULTS = {"lora_r": 2, "lora_alpha": 16}
# Encoder fields that describe the architecture (the rest, e.g. grad_checkpointing, stay the preset's).
ARCHITECTURE_FIELDS = {"width", "depth", "heads", "mlp_ratio", "patch_size", "act", "layer_norm_eps"}

_LORA_A = re.compile(r"(.+)\.lora_A\.([^.]+)\.weight")
_PEFT_NESTING = re.compile(r"\.base_model\.model\.")
_TEMPORAL_EMBEDDING = re.compile(r"vision_model\.encoder\.layers\.(\d+)\.temporal_embedding")
_TEMPORAL_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(src), dst)
    for src, dst in (
        (r"vision_model\.encoder\.layers\.(\d+)\.temporal_layer_norm1\.(weight|bias)", r"trunk.temporal_norm.\1.\2"),
        (
            r"vision_model\.encoder\.layers\.(\d+)\.temporal_attn\.((?:q|k|v|out)_proj\.(?:weight|bias))",
            r"trunk.temporal_attn.\1.\2",
        ),
    )
)
_BLOCK_INDEX = re.compile(r"trunk\.blocks\.(\d+)\.")


@dataclass
class LanguageBindRelease:
    """A released LanguageBind checkpoint read from disk, its LoRA adapters merged into the base weights."""

    source: Path  # the checkpoint folder
    weights: str  # the weights file (or folder of shards) read, for messages
    model_type: str
    modality_cls: type[Modality]  # the installed modality that declares this model_type
    layout: ReleaseLayout  # its declaration of this release
    config: dict[str, Any]  # config.json
    vision: dict[str, Any]  # config.json's vision_config
    state: dict[str, Tensor]  # transformers CLIPModel names, LoRA merged, peft nesting removed
    lora: dict[str, Any] | None = None  # {"rank", "alpha", "modules"} of the merged adapters

    @property
    def modality(self) -> str:
        """Our modality name."""
        return self.modality_cls.name

    @property
    def config_file(self) -> str:
        return str(self.source / "config.json")


@dataclass
class LanguageBindEncoder:
    """A release's vision tower in our names, ready to load into the modality's encoder."""

    state: dict[str, Tensor]
    embed_dim: int
    logit_scale: float | None  # log of the learned inverse temperature; None if the release has none
    report: list[str] = field(default_factory=list)


@dataclass
class LanguageBindInit:
    """What :func:`load_languagebind_into` did: remarks, and the release's logit scale (log) if it has one."""

    report: list[str]
    logit_scale: float | None
    release: LanguageBindRelease


# ------------------------------------------------------------------------------------------------- LoRA merge
def _lora_scale(vision_config: Mapping[str, Any], source: str) -> tuple[int, float]:
    rank = vision_config.get("lora_r", LANGUAGEBIND_LORA_DEFAULTS["lora_r"])
    alpha = vision_config.get("lora_alpha", LANGUAGEBIND_LORA_DEFAULTS["lora_alpha"])
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise CheckpointError(f"{source}: holds LoRA adapters, but vision_config.lora_r is {rank!r}")
    if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
        raise CheckpointError(f"{source}: vision_config.lora_alpha {alpha!r} is not a positive number")
    return rank, float(alpha)


def _merge_one(
    state: Mapping[str, Tensor], module: str, adapter: str, rank: int, alpha: float, source: str
) -> tuple[str, Tensor, tuple[str, str]]:
    """(base weight key, merged weight, the adapter keys consumed) of one LoRA-wrapped module."""
    a_key, b_key = f"{module}.lora_A.{adapter}.weight", f"{module}.lora_B.{adapter}.weight"
    base_key = f"{module}.base_layer.weight" if f"{module}.base_layer.weight" in state else f"{module}.weight"
    if b_key not in state:
        raise CheckpointError(f"{source}: {a_key} has no matching {b_key}")
    if base_key not in state:
        raise CheckpointError(f"{source}: LoRA adapter on {module} but no base weight {base_key}")
    a, b, w = state[a_key], state[b_key], state[base_key]
    fits = a.dim() == 2 and b.dim() == 2 and a.shape[0] == rank and b.shape[1] == rank
    if not fits or (b.shape[0], a.shape[1]) != (w.shape[0], w.shape[1] if w.dim() == 2 else -1):
        raise CheckpointError(
            f"{source}: LoRA on {module} does not fit: lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)}, "
            f"weight {tuple(w.shape)}, vision_config.lora_r {rank} (expected A [r, in], B [out, r])"
        )
    # W [out, in] + alpha / r * (B [out, r] @ A [r, in]), in float32 whatever the release's dtype.
    return base_key, w.float() + alpha / rank * (b.float() @ a.float()), (a_key, b_key)


def merge_languagebind_lora(
    state: Mapping[str, Tensor], vision_config: Mapping[str, Any], source: str = "<state dict>"
) -> tuple[dict[str, Tensor], dict[str, Any] | None]:
    """Fold peft LoRA adapters into their base weights (W + alpha / r * B @ A) and drop the peft nesting.

    ``<module>.lora_A.<adapter>.weight`` [r, in] and ``<module>.lora_B.<adapter>.weight`` [out, r] are merged into
    ``<module>.weight`` (or peft >= 0.7's ``<module>.base_layer.weight``); ``.base_model.model.`` and
    ``.base_layer.`` disappear from every name. r and alpha come from ``vision_config`` (``lora_r`` / ``lora_alpha``,
    LanguageBind's defaults 2 / 16 when absent); r must match the adapters' shapes. Merged weights are float32.
    Returns the new state dict and ``{"rank", "alpha", "modules"}`` (None when there were no adapters).
    """
    pairs = {m.group(1): m.group(2) for key in state if (m := _LORA_A.fullmatch(key))}
    consumed: set[str] = set()
    merged: dict[str, Tensor] = {}
    info: dict[str, Any] | None = None
    if pairs:
        adapters = sorted(set(pairs.values()))
        if len(adapters) > 1:
            raise CheckpointError(f"{source}: several LoRA adapters ({', '.join(adapters)}); expected one")
        rank, alpha = _lora_scale(vision_config, source)
        for module, adapter in sorted(pairs.items()):
            base_key, weight, used = _merge_one(state, module, adapter, rank, alpha, source)
            merged[base_key] = weight
            consumed.update(used)
        info = {"rank": rank, "alpha": alpha, "modules": len(pairs)}
    out: dict[str, Tensor] = {}
    for key, value in state.items():
        if key in consumed:
            continue
        if ".lora_" in key:
            raise CheckpointError(f"{source}: {key} is a LoRA tensor this converter cannot merge (only lora_A/lora_B)")
        new_key = _PEFT_NESTING.sub(".", key.replace(".base_layer.", "."))
        if new_key in out:
            raise CheckpointError(f"{source}: {key} and another key both become {new_key} without the peft nesting")
        out[new_key] = merged.get(key, value)
    return out, info


# ---------------------------------------------------------------------------------------- finding the modality
def release_modality(
    model_type: Any, source: str, registry: PluginRegistry | None = None
) -> tuple[type[Modality], ReleaseLayout]:
    """The installed modality whose plugin declares the release ``model_type`` (``Modality.releases``), and
    that declaration. :class:`UnknownReleaseError` names ``source`` and the releases that are declared."""
    registry = registry or default_registry()
    found: list[tuple[type[Modality], ReleaseLayout]] = []
    known: list[str] = []
    for name in registry.modality_names():
        cls = registry.registered(name).cls
        for layout in cls.releases:
            known.append(f"{layout.model_type} ({name})")
            if layout.model_type == model_type:
                found.append((cls, layout))
    if len(found) > 1:
        owners = ", ".join(repr(cls.name) for cls, _ in found)
        raise CheckpointError(f"{source}: model_type {model_type!r} is declared by several modalities: {owners}")
    if not found:
        raise UnknownReleaseError(
            f"{source}: model_type {model_type!r} is not a release any installed plugin declares (known: "
            f"{', '.join(sorted(known)) or 'none'}); install the plugin of its modality (`lbind plugins` lists "
            "what is installed)"
        )
    return found[0]


def _declared_layout(modality_cls: type[Modality], model_type: Any, source: str) -> ReleaseLayout:
    for layout in modality_cls.releases:
        if layout.model_type == model_type:
            return layout
    declared = ", ".join(r.model_type for r in modality_cls.releases) or "no release"
    raise CheckpointError(
        f"{source}: is a {model_type} checkpoint (the {modality_cls.name!r} modality declares {declared}); it "
        f"cannot initialise the {modality_cls.name!r} encoder"
    )


def read_languagebind(path: str | Path, modality_cls: type[Modality] | None = None) -> LanguageBindRelease:
    """Read a LanguageBind checkpoint folder (config.json + safetensors or pytorch_model.bin), or a hub id given as
    a str (``LanguageBind/LanguageBind_Audio``, ``hf://...@revision``) when no local folder of that name exists.

    The release's modality is the installed one that declares its ``model_type`` (or ``modality_cls``, which
    must declare it). A pickle is read with ``torch.load(weights_only=True)`` only: a file that needs anything
    but tensors is refused with :class:`CheckpointError` naming it, and no code in it runs. LoRA adapters are
    merged.
    """
    path = resolve(path, "languagebind")
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: not a directory; expected a downloaded LanguageBind checkpoint folder "
            "(config.json and model.safetensors or pytorch_model.bin), or a hub id such as LanguageBind/<release>"
        )
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{path}: no config.json; expected a downloaded LanguageBind checkpoint folder")
    config = read_json(config_path)
    model_type = config.get("model_type")
    if modality_cls is None:
        modality_cls, layout = release_modality(model_type, str(config_path))
    else:
        layout = _declared_layout(modality_cls, model_type, str(path))
    vision = config.get("vision_config")
    if not isinstance(vision, dict):
        raise CheckpointError(f"{config_path}: no vision_config section")
    files, _ = find_weight_files(path)
    weights = str(files[0] if len(files) == 1 else path)
    state = read_weights(files, keep_text=True)
    state, lora = merge_languagebind_lora(state, vision, source=weights)
    return LanguageBindRelease(path, weights, str(model_type), modality_cls, layout, config, vision, state, lora)


# -------------------------------------------------------------------------------------------- the vision tower
def _stack_temporal_embeddings(found: dict[int, Tensor], depth: int, source: str) -> Tensor:
    """Per-layer [1, T, D] tables -> one [depth, T, D] parameter (lbcore.nn.temporal's layout)."""
    if sorted(found) != list(range(depth)):
        raise CheckpointError(
            f"{source}: temporal_embedding found for layers {sorted(found)}, expected every layer 0..{depth - 1}"
        )
    shapes = {tuple(t.shape) for t in found.values()}
    if len(shapes) != 1 or len(next(iter(shapes))) != 3 or next(iter(shapes))[0] != 1:
        raise CheckpointError(f"{source}: temporal_embedding shapes {sorted(shapes)}; expected [1, T, width] each")
    return torch.cat([found[i] for i in range(depth)], dim=0)  # [depth, T, D]


def _map_temporal(state: Mapping[str, Tensor], unused: list[str], out: dict[str, Tensor], source: str) -> None:
    """Move the temporal tensors among ``unused`` keys into ``out``; refuse any other key left over."""
    temporal_embeddings: dict[int, Tensor] = {}
    leftover = []
    for key in unused:
        if POSITION_IDS.fullmatch(key) or key == "logit_scale":
            continue
        match = _TEMPORAL_EMBEDDING.fullmatch(key)
        if match:
            temporal_embeddings[int(match.group(1))] = state[key]
            continue
        for pattern, target in _TEMPORAL_RULES:
            match = pattern.fullmatch(key)
            if match:
                out[match.expand(target)] = state[key]
                break
        else:
            leftover.append(key)
    if leftover:
        shown = ", ".join(leftover[:8]) + (f" and {len(leftover) - 8} more" if len(leftover) > 8 else "")
        raise CheckpointError(f"{source}: keys this converter does not know (refusing to drop them): {shown}")
    depth = len({int(m.group(1)) for k in out if (m := _BLOCK_INDEX.match(k))})
    if temporal_embeddings:
        out["trunk.temporal_embedding"] = _stack_temporal_embeddings(temporal_embeddings, depth, source)


def map_languagebind_vision_keys(state: Mapping[str, Tensor], source: str = "<state dict>") -> LanguageBindEncoder:
    """A release's vision tower (LoRA already merged) in our encoder's names, temporal parts included.

    Strict: a source key that is neither vision (mapped), text tower, ``logit_scale`` nor a ``position_ids``
    buffer raises :class:`CheckpointError`, since dropping a tensor we do not understand would change outputs.
    """
    mapped = map_clip_vision_keys(state, prefix_guess=False, source=source)
    out = dict(mapped.state)
    _map_temporal(state, mapped.unused, out, source)
    proj = out.get("head.proj.weight")
    if proj is None or proj.dim() != 2:
        raise CheckpointError(f"{source}: no visual_projection.weight [embed_dim, width]")
    scale = state.get("logit_scale")
    logit_scale = float(scale.reshape(-1)[0]) if isinstance(scale, Tensor) and scale.numel() == 1 else None
    report = []
    if logit_scale is None:
        report.append("no logit_scale in the release: the modality keeps the initial temperature 1/0.07")
    return LanguageBindEncoder(out, int(proj.shape[0]), logit_scale, report)


# ---------------------------------------------------------------------------------------- the modality config
def languagebind_settings(release: LanguageBindRelease) -> dict[str, Any]:
    """The preprocessing settings a release was trained with, by our modality config's field names."""
    return release.layout.read_settings(release.vision, release.config_file)


def languagebind_grid(release: LanguageBindRelease) -> tuple[int, int]:
    """The patch grid of a release's position embedding, as the modality's release layout reads it."""
    return release.layout.grid(release.vision, release.config_file)


def languagebind_modality_config(modality_cls: type[Modality], release: LanguageBindRelease) -> ModalityConfig:
    """The modality config that reproduces a release: the ``languagebind`` preset with the release's encoder
    architecture, its preprocessing settings and, as ``lora``, the adapters that were merged (rank 0 if none)."""
    encoder = encoder_config_from_clip(release.vision, release.config_file)
    base = modality_cls.presets.get("languagebind", {})
    settings = languagebind_settings(release)
    fields = modality_cls.Config.model_fields
    unknown = sorted(k for k in settings if k not in fields)
    if unknown:
        raise ConfigError(
            f"{release.config_file}: the {modality_cls.name} plugin's config ({modality_cls.Config.__name__}) has "
            f"no field(s) {', '.join(unknown)} to carry the release's preprocessing settings into"
        )
    lora: dict[str, Any] = {"rank": 0}
    if release.lora:
        lora = {"rank": release.lora["rank"], "alpha": release.lora["alpha"]}
    overrides = {"encoder": encoder.model_dump(include=ARCHITECTURE_FIELDS), "lora": lora, **settings}
    return validate_model(
        modality_cls.Config,
        deep_merge(base, overrides),
        prefix=("modalities", modality_cls.name),
        source=release.config_file,
    )


def fit_hint(encoder: nn.Module, state: Mapping[str, Tensor]) -> str:
    """Why a release may not fit an encoder built elsewhere: the usual suspects, in words ('' if none)."""
    head = getattr(getattr(encoder, "head", None), "proj", None)
    proj = state.get("head.proj.weight")
    if isinstance(head, nn.Linear) and proj is not None and proj.shape[0] != head.out_features:
        return (
            f"; the release projects into its own text tower's {proj.shape[0]}-d space, this run's anchor gives "
            f"{head.out_features}-d: train against the release's text tower (`lbind convert languagebind` writes it "
            "as DIR/anchor; set anchor.name to that folder)"
        )
    own = encoder.state_dict()
    if any(k.startswith(TEMPORAL_PREFIXES) for k in own) and not any(k.startswith(TEMPORAL_PREFIXES) for k in state):
        return "; the release has no temporal tensors (vision_config.add_time_attn false?), the encoder needs them"
    return ""


def load_release_encoder(encoder: nn.Module, state: dict[str, Tensor], source: str) -> None:
    """Load a converted vision tower exactly, with :func:`fit_hint`'s explanation on a mismatch."""
    try:
        load_exactly(encoder, state, source)
    except CheckpointError as err:
        raise CheckpointError(f"{err}{fit_hint(encoder, state)}") from err


# ------------------------------------------------------------------------------------ --init languagebind:PATH
def load_languagebind_into(encoder: nn.Module, modality: Modality, path: str | Path) -> LanguageBindInit:
    """Initialise ``modality``'s encoder from a released LanguageBind checkpoint folder, converting on the fly.

    The release must be one ``modality`` declares (a Thermal release for ``infrared``, ...). The position
    embedding is resized bicubically when the encoder's patch grid differs from the release's; any other mismatch
    raises :class:`CheckpointError`. Preprocessing settings that differ from the release's are reported (the
    weights were trained on the release's). Returns the report and the release's logit scale (log).
    """
    release = read_languagebind(path, type(modality))
    converted = map_languagebind_vision_keys(release.state, release.weights)
    state = converted.state
    report = list(converted.report)
    if release.lora:
        report.append(f"merged LoRA adapters (rank {release.lora['rank']}, alpha {release.lora['alpha']:g})")
    pos = state.get("trunk.position_embedding")
    target = tuple(getattr(getattr(encoder, "trunk", None), "grid_size", ()))
    source_grid = languagebind_grid(release)
    if pos is not None and pos.dim() == 2 and len(target) == 2 and target != source_grid:
        if pos.shape[0] != 1 + source_grid[0] * source_grid[1]:
            raise CheckpointError(
                f"{release.weights}: position embedding holds {pos.shape[0] - 1} patch positions, config.json "
                f"implies a {source_grid[0]}x{source_grid[1]} grid"
            )
        # [1 + gh*gw, D] -> [1 + gh'*gw', D], class token row unchanged
        state["trunk.position_embedding"] = resize_position_embedding(pos, target, source_grid)
        report.append(f"resized position embedding from {source_grid[0]}x{source_grid[1]} to {target[0]}x{target[1]}")
    load_release_encoder(encoder, state, release.weights)
    current = modality.config.model_dump()
    for key, value in languagebind_settings(release).items():
        if key in current and current[key] != value:
            report.append(f"the release was trained with {key}={value!r}; this run uses {current[key]!r}")
    for line in report:
        logger.info("%s: %s", release.source, line)
    return LanguageBindInit(report, converted.logit_scale, release)
