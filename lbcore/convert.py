"""Weights in: Hugging Face CLIP vision towers and released LanguageBind checkpoints -> our encoders.

CLIP (:func:`load_clip_vision_into`, ``lbind train --init clip:PATH``): transformers names a CLIP vision tower
``vision_model.embeddings.*``, ``vision_model.pre_layrnorm.*`` (sic), ``vision_model.encoder.layers.N.*``,
``vision_model.post_layernorm.*`` and ``visual_projection.weight``; the same names sit at the top of a full ``CLIPModel`` next to ``text_model.*`` (and in LanguageBind's released
checkpoints). Our encoder holds the same tensors with the same shapes under other names, so conversion is a
renaming plus, when the target encoder sees a different patch grid (audio spectrograms, other input sizes),
a bicubic resize of the position embedding. A space-time (video) encoder loaded from an image tower starts its
temporal attention and LayerNorms as copies of the spatial ones.

LanguageBind (:func:`convert_languagebind`, ``lbind convert languagebind``; :func:`load_languagebind_into`,
``lbind train --init languagebind:PATH``): a release is a transformers ``CLIPModel`` state dict with LanguageBind's
extras. LoRA adapters are merged (W += alpha / r * B @ A), the vision tower (with video's temporal tensors,
audio's already resized positions) becomes the modality's encoder, the preprocessing settings of its
vision_config go into the modality config, and the text tower becomes a CLIP anchor folder.

Checkpoints are read from safetensors, or from ``pytorch_model.bin`` through ``torch.load(weights_only=True)``
only: arbitrary pickles are never executed.
"""

from __future__ import annotations

import json
import logging
import math
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from lbcore.config import EncoderConfig
from lbcore.errors import AnchorError, CheckpointError, ConfigError, ModalityNotFoundError
from lbcore.loss import LogitScale
from lbcore.nn.encoder import ViTEncoder
from lbcore.nn.stem import resize_position_embedding
from lbcore.nn.trunk import ACTIVATIONS

if TYPE_CHECKING:
    from lbcore.config import ModalityConfig
    from lbcore.modality import Modality
    from lbcore.model import BindModel

logger = logging.getLogger(__name__)

# The key that every CLIP vision tower has exactly once; whatever precedes it is the checkpoint's prefix.
ANCHOR_KEY = "vision_model.embeddings.class_embedding"
# Keys of the text tower in a full CLIPModel: not ours to load, not worth listing one by one.
TEXT_PREFIXES = ("text_model.", "text_projection.")
# Our names of a space-time encoder's temporal tensors (lbcore.nn.temporal).
TEMPORAL_PREFIXES = ("trunk.temporal_embedding", "trunk.temporal_norm.", "trunk.temporal_attn.")

# (source pattern relative to the prefix, our name); \1 is the layer index, \2 a parameter or module name.
CLIP_VISION_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(src), dst)
    for src, dst in (
        (r"vision_model\.embeddings\.class_embedding", "trunk.class_embedding"),
        (r"vision_model\.embeddings\.patch_embedding\.weight", "stem.proj.weight"),
        (r"vision_model\.embeddings\.position_embedding\.weight", "trunk.position_embedding"),
        (r"vision_model\.pre_layrnorm\.(weight|bias)", r"trunk.pre_norm.\1"),
        (
            r"vision_model\.encoder\.layers\.(\d+)\.self_attn\.((?:q|k|v|out)_proj\.(?:weight|bias))",
            r"trunk.blocks.\1.attn.\2",
        ),
        (r"vision_model\.encoder\.layers\.(\d+)\.layer_norm1\.(weight|bias)", r"trunk.blocks.\1.norm1.\2"),
        (r"vision_model\.encoder\.layers\.(\d+)\.layer_norm2\.(weight|bias)", r"trunk.blocks.\1.norm2.\2"),
        (r"vision_model\.encoder\.layers\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"trunk.blocks.\1.mlp.\2.\3"),
        (r"vision_model\.post_layernorm\.(weight|bias)", r"head.norm.\1"),
        (r"visual_projection\.weight", "head.proj.weight"),
    )
)

# What transformers' CLIPVisionConfig assumes when config.json leaves a field out.
CLIP_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "patch_size": 32,
    "image_size": 224,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}
HF_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu"}

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


@dataclass
class VisionStateMapping:
    """The result of renaming a CLIP state dict: our tensors plus what was left over."""

    state: dict[str, Tensor]
    prefix: str
    unused: list[str] = field(default_factory=list)  # source keys that map to nothing (outside the text tower)
    text_keys: int = 0  # source keys of the text tower, skipped on purpose


def guess_prefix(keys: list[str], prefix_guess: bool = True, source: str = "<state dict>") -> str:
    """The text before ``vision_model.`` in a CLIP checkpoint's keys ('' for transformers' own layout)."""
    if not prefix_guess:
        if ANCHOR_KEY not in keys:
            raise CheckpointError(
                f"{source}: no CLIP vision tower found: key {ANCHOR_KEY!r} is missing "
                "(pass prefix_guess=True if the keys carry a prefix)"
            )
        return ""
    candidates = sorted({k[: -len(ANCHOR_KEY)] for k in keys if k.endswith(ANCHOR_KEY)})
    # A prefix must end where a module name ends, so 'xvision_model...' is not taken for 'vision_model...'.
    candidates = [c for c in candidates if c == "" or c.endswith(".")]
    if not candidates:
        raise CheckpointError(
            f"{source}: no CLIP vision tower found: no key ends in {ANCHOR_KEY!r} "
            "(expected a transformers CLIPVisionModel(WithProjection) or CLIPModel state dict)"
        )
    if len(candidates) > 1:
        raise CheckpointError(f"{source}: several CLIP vision towers found under prefixes {candidates}; pass one")
    return candidates[0]


def map_clip_vision_keys(
    hf_state: Mapping[str, Tensor], prefix_guess: bool = True, source: str = "<state dict>"
) -> VisionStateMapping:
    """Rename a transformers CLIP vision state dict to :class:`ViTEncoder` names, keeping account of leftovers."""
    keys = list(hf_state.keys())
    prefix = guess_prefix(keys, prefix_guess, source)
    out = VisionStateMapping(state={}, prefix=prefix)
    for key in keys:
        if not key.startswith(prefix):
            out.unused.append(key)
            continue
        rel = key[len(prefix) :]
        if rel.startswith(TEXT_PREFIXES):
            out.text_keys += 1
            continue
        for pattern, target in CLIP_VISION_RULES:
            match = pattern.fullmatch(rel)
            if match:
                out.state[match.expand(target)] = hf_state[key]
                break
        else:
            out.unused.append(key)
    return out


def clip_vision_to_encoder_state(hf_state: Mapping[str, Tensor], prefix_guess: bool = True) -> dict[str, Tensor]:
    """Rename a transformers ``CLIPVisionModelWithProjection`` or ``CLIPModel`` state dict for :class:`ViTEncoder`.

    ``text_model.*`` and ``text_projection`` are skipped; any other key that has no counterpart is dropped
    (:func:`load_clip_vision_into` reports them). With ``prefix_guess`` a common prefix in front of
    ``vision_model.`` (e.g. ``clip.``) is found and stripped. Tensors are not copied.
    """
    mapped = map_clip_vision_keys(hf_state, prefix_guess)
    if mapped.unused:
        logger.debug("CLIP vision conversion left %d source keys unused: %s", len(mapped.unused), mapped.unused)
    return mapped.state


def _config_field(cfg: Any, name: str) -> Any:
    if isinstance(cfg, Mapping):
        return cfg.get(name, CLIP_VISION_DEFAULTS[name])
    return getattr(cfg, name, CLIP_VISION_DEFAULTS[name])


def _vision_part(cfg: Any) -> Any:
    """A full CLIPConfig (object or config.json dict) carries the vision tower under ``vision_config``."""
    if isinstance(cfg, Mapping):
        inner = cfg.get("vision_config")
        return inner if isinstance(inner, Mapping) else cfg
    inner = getattr(cfg, "vision_config", None)
    return inner if inner is not None else cfg


def encoder_config_from_clip(hf_vision_config: Any, source: str = "<CLIP config>") -> EncoderConfig:
    """An :class:`EncoderConfig` matching a transformers CLIP vision config.

    Accepts a ``CLIPVisionConfig``, a ``CLIPConfig`` (its ``vision_config`` is used) or the dict of either's
    config.json; fields config.json leaves out take transformers' defaults.
    """
    cfg = _vision_part(hf_vision_config)
    width = int(_config_field(cfg, "hidden_size"))
    hidden = int(_config_field(cfg, "intermediate_size"))
    heads = int(_config_field(cfg, "num_attention_heads"))
    act = str(_config_field(cfg, "hidden_act"))
    if act not in HF_ACTIVATIONS:
        raise ConfigError(f"{source}: hidden_act {act!r} is not supported (expected one of {sorted(HF_ACTIVATIONS)})")
    if width <= 0 or heads <= 0 or width % heads:
        raise ConfigError(f"{source}: hidden_size {width} is not a positive multiple of num_attention_heads {heads}")
    mlp_ratio = hidden / width
    # timm sizes the MLP as int(width * mlp_ratio); make sure that lands back on intermediate_size.
    if int(width * mlp_ratio) != hidden:
        raise ConfigError(
            f"{source}: intermediate_size {hidden} cannot be expressed as width {width} x mlp_ratio "
            "(timm's Mlp would round it differently)"
        )
    return EncoderConfig(
        width=width,
        depth=int(_config_field(cfg, "num_hidden_layers")),
        heads=heads,
        mlp_ratio=mlp_ratio,
        patch_size=int(_config_field(cfg, "patch_size")),
        act=HF_ACTIVATIONS[act],
        layer_norm_eps=float(_config_field(cfg, "layer_norm_eps")),
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read JSON: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def _weight_files(path: Path) -> tuple[list[Path], Path | None]:
    """The weight files of a checkpoint directory (or one weights file), and its config.json if any."""
    if path.is_dir():
        directory = path
        for name in WEIGHT_FILES:
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise CheckpointError(f"{directory}: no weights found (expected one of {', '.join(WEIGHT_FILES)})")
    elif not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file or directory")
    config = path.parent / "config.json"
    if path.name.endswith(".index.json"):
        weight_map = _read_json(path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{path}: shard index has no 'weight_map'")
        files = [path.parent / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{path}: shard {f.name} listed in the index is missing")
        return files, config if config.is_file() else None
    return [path], config if config.is_file() else None


def _is_text_key(key: str) -> bool:
    # Only used to avoid reading the text tower off disk; the exact accounting happens in map_clip_vision_keys.
    dotted = "." + key
    return ".text_model." in dotted or ".text_projection." in dotted


def _read_weights(files: list[Path], keep_text: bool = False) -> dict[str, Tensor]:
    from safetensors import SafetensorError, safe_open

    state: dict[str, Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            try:
                with safe_open(str(f), framework="pt", device="cpu") as reader:
                    for key in reader.keys():
                        # A full CLIPModel carries a text tower as large as the vision one: unless asked for it,
                        # leave it on disk, but keep an empty placeholder so the report can count it.
                        skip = not keep_text and _is_text_key(key)
                        state[key] = torch.empty(0) if skip else reader.get_tensor(key)
            except (SafetensorError, OSError) as err:
                raise CheckpointError(f"{f}: not a readable safetensors file: {err}") from err
        else:
            try:
                # weights_only=True refuses anything but tensors and plain containers: no code runs on load.
                loaded = torch.load(f, map_location="cpu", weights_only=True)
            except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
                raise CheckpointError(
                    f"{f}: cannot be loaded as plain tensors with torch.load(weights_only=True): {err}"
                ) from err
            if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
                raise CheckpointError(f"{f}: expected a mapping of parameter names to tensors")
            state.update(loaded)
    return state


def _check_architecture(encoder: ViTEncoder, hf_config: Mapping[str, Any], source: str) -> None:
    """Compare what the weights cannot show (heads, activation, LayerNorm eps) with the checkpoint's config."""
    expected = encoder_config_from_clip(hf_config, source)
    trunk = encoder.trunk
    problems = []
    if trunk.blocks:
        block = trunk.blocks[0]
        heads = getattr(block.attn, "num_heads", None)
        if heads is not None and heads != expected.heads:
            problems.append(f"heads: checkpoint {expected.heads}, encoder {heads}")
        act = getattr(block.mlp, "act", None)
        if act is not None and type(act) is not ACTIVATIONS[expected.act]:
            problems.append(f"activation: checkpoint {expected.act}, encoder {type(act).__name__}")
    if not math.isclose(trunk.pre_norm.eps, expected.layer_norm_eps, rel_tol=1e-6):
        problems.append(f"layer_norm_eps: checkpoint {expected.layer_norm_eps}, encoder {trunk.pre_norm.eps}")
    if problems:
        raise CheckpointError(
            f"{source}: the encoder's architecture differs from the checkpoint: {'; '.join(problems)}"
        )


def _image_hw(size: Any, source: str) -> tuple[int, int]:
    """``image_size`` of a CLIP vision config as (height, width): an int, or [h, w] (LanguageBind's audio
    towers rewrite it to [mel_bins, target_length])."""
    if isinstance(size, (int, float)) and not isinstance(size, bool) and int(size) == size and size > 0:
        return int(size), int(size)
    if (
        isinstance(size, (list, tuple))
        and len(size) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and int(v) == v and v > 0 for v in size)
    ):
        return int(size[0]), int(size[1])
    raise CheckpointError(f"{source}: image_size {size!r} is not a positive integer or a [height, width] pair")


def _source_grid(
    num_positions: int, hf_config: Mapping[str, Any] | None, target_grid: tuple[int, ...], source: str
) -> tuple[int, ...]:
    """The patch grid the checkpoint's position embedding was trained on.

    CLIP's is square (image_size // patch_size per side). A checkpoint already resized for a non-square
    input (LanguageBind's audio tower holds 1 + 9 x 74 positions) is taken to be on the encoder's grid when
    the counts agree, since only the encoder knows that grid's shape.
    """
    num_grid = num_positions - 1  # the class token's position comes first
    if hf_config is not None:
        vision = _vision_part(hf_config)
        height, width = _image_hw(_config_field(vision, "image_size"), source)
        patch = int(_config_field(vision, "patch_size"))
        grid = (height // patch, width // patch)
        implied = f"config.json implies a {grid[0]}x{grid[1]} grid"
    else:
        side = math.isqrt(max(num_grid, 0))
        grid = (side, side)
        implied = "not a square grid"
    if grid[0] * grid[1] == num_grid:
        return grid
    if math.prod(target_grid) == num_grid:
        return target_grid
    raise CheckpointError(
        f"{source}: position embedding holds {num_grid} patch positions: {implied}, and the encoder's "
        f"{'x'.join(map(str, target_grid))} grid holds {math.prod(target_grid)}"
    )


def _load_exactly(encoder: nn.Module, state: dict[str, Tensor], source: str, shape_hint: str = "") -> None:
    """Load ``state`` into ``encoder`` only if it fills every tensor with the right shape and brings nothing else."""
    expected = encoder.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(state[k].shape)}, encoder {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {', '.join(missing)}")
        if unexpected:
            parts.append(f"not in the encoder: {', '.join(unexpected)}")
        if shapes:
            parts.append(f"shape mismatch{shape_hint}: {'; '.join(shapes)}")
        raise CheckpointError(f"{source}: does not fit the encoder: " + " | ".join(parts))
    encoder.load_state_dict(state, strict=True)


def _temporal_from_spatial(encoder: nn.Module, state: dict[str, Tensor]) -> str | None:
    """For a space-time encoder loaded from an image tower (no temporal tensors in ``state``): fill ``state``
    with the encoder's own temporal tensors, to be replaced by copies of the spatial ones after loading
    (LanguageBind's starting point). Returns the report line, or None when this does not apply."""
    if not callable(getattr(encoder, "init_temporal_from_spatial", None)):
        return None
    own = encoder.state_dict()
    temporal = [k for k in own if k.startswith(TEMPORAL_PREFIXES)]
    if not temporal or any(k in state for k in temporal):
        return None
    for key in temporal:
        state[key] = own[key]
    return (
        "no temporal tensors in the checkpoint: temporal attention and LayerNorms start as copies of the spatial "
        "ones, the temporal embedding keeps its initial value"
    )


def load_clip_vision_into(
    encoder: ViTEncoder | nn.Module,
    path_or_state: str | Path | Mapping[str, Tensor],
    resize_positions: bool = True,
) -> list[str]:
    """Load a transformers CLIP vision tower into an existing encoder; return a report, one line per remark.

    ``path_or_state`` is a checkpoint directory (config.json + model.safetensors, sharded safetensors, or a
    pytorch_model.bin read with ``weights_only=True``), a single weights file, or a state dict. When the
    encoder's patch grid differs from the checkpoint's, the position embedding is resized bicubically (class
    token kept) unless ``resize_positions`` is False. Loading is strict: every encoder tensor must be filled
    with the right shape, otherwise :class:`CheckpointError` names the source and the offending keys. The
    report lists the resize and the source keys left unused; text-tower keys are counted, not listed.

    A space-time encoder (one with ``init_temporal_from_spatial``, e.g. video's) loaded from a checkpoint without
    temporal tensors gets its temporal attention and LayerNorms copied from the spatial ones (LanguageBind's
    starting point); its temporal embedding keeps its initial value.
    """
    hf_config: dict[str, Any] | None = None
    config_source = "<no config>"
    if isinstance(path_or_state, Mapping):
        source = "<state dict>"
        state = path_or_state
    else:
        path = Path(path_or_state)
        files, config_path = _weight_files(path)
        source = str(files[0] if len(files) == 1 else path)
        if config_path is not None:
            hf_config = _read_json(config_path)
            config_source = str(config_path)
        state = _read_weights(files)

    mapped = map_clip_vision_keys(state, prefix_guess=True, source=source)
    report: list[str] = []
    if hf_config is not None:
        _check_architecture(encoder, hf_config, config_source)
    else:
        report.append("no config.json: attention heads, activation and LayerNorm eps were not checked")

    pos = mapped.state.get("trunk.position_embedding")
    target_grid = tuple(encoder.trunk.grid_size)
    if pos is not None and pos.dim() == 2:
        src_grid = _source_grid(pos.shape[0], hf_config, target_grid, source)
        if src_grid != target_grid and resize_positions:
            # [1 + gh*gw, D] -> [1 + gh'*gw', D], class token row unchanged
            mapped.state["trunk.position_embedding"] = resize_position_embedding(pos, target_grid, src_grid)
            report.append(
                f"resized position embedding from {src_grid[0]}x{src_grid[1]} to {target_grid[0]}x{target_grid[1]}"
            )

    temporal = _temporal_from_spatial(encoder, mapped.state)
    if temporal:
        report.append(temporal)
    _load_exactly(encoder, mapped.state, source, "" if resize_positions else " (resize_positions=False)")
    if temporal:
        encoder.init_temporal_from_spatial()  # type: ignore[operator]  # checked by _temporal_from_spatial

    if mapped.text_keys:
        report.append(f"skipped {mapped.text_keys} text-tower keys (text_model.*, text_projection)")
    report.extend(f"unused source key: {k}" for k in mapped.unused)
    for line in report:
        logger.info("%s: %s", source, line)
    return report


# ------------------------------------------------------------------------------------------ LanguageBind releases
# The released checkpoints (LanguageBind/LanguageBind_{Audio,Audio_FT,Depth,Thermal,Image,Video,Video_FT}) are
# transformers CLIPModel state dicts: a text tower (text_model.*, text_projection), a vision tower in CLIP's names
# (plus, for video, per-layer temporal_embedding / temporal_attn / temporal_layer_norm1) and logit_scale. LoRA
# releases wrap the vision encoder in a peft model: vision_model.encoder.base_model.model.layers.N..., with the
# adapters at <module>.lora_A.default.weight [r, in] and <module>.lora_B.default.weight [out, r].

LANGUAGEBIND_MODALITIES: dict[str, str] = {
    "LanguageBindAudio": "audio",
    "LanguageBindDepth": "depth",
    "LanguageBindThermal": "infrared",
    "LanguageBindVideo": "video",
    "LanguageBindImage": "image",
}
# vision_config fields of a release -> fields of our modality config: the preprocessing its weights were trained on.
LANGUAGEBIND_SETTINGS: dict[str, dict[str, str]] = {
    "audio": {
        "num_mel_bins": "mel_bins",
        "target_length": "target_length",
        "audio_mean": "mean",
        "audio_std": "std",
        "audio_sample_rate": "sample_rate",
    },
    "video": {"num_frames": "num_frames"},
    "depth": {"max_depth": "max_depth"},
}
# Settings a release must state: without them the patch grid (audio) is unknown.
LANGUAGEBIND_REQUIRED: dict[str, tuple[str, ...]] = {"audio": ("num_mel_bins", "target_length")}
# What LanguageBind's CLIPVisionConfig assumes when config.json leaves the LoRA fields out.
LANGUAGEBIND_LORA_DEFAULTS = {"lora_r": 2, "lora_alpha": 16}
# Encoder fields that describe the architecture (the rest, e.g. grad_checkpointing, stay the preset's).
ARCHITECTURE_FIELDS = {"width", "depth", "heads", "mlp_ratio", "patch_size", "act", "layer_norm_eps"}
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)
ANCHOR_DIR = "anchor"
# lbind.json names the converted anchor relative to the checkpoint folder (BindModel resolves it there).
ANCHOR_NAME = f"./{ANCHOR_DIR}"
ANCHOR_MAX_LENGTH = 77

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
# Buffers old transformers versions saved with the weights; they hold arange(n) and carry no information.
_POSITION_IDS = re.compile(r"(?:.+\.)?position_ids")
_BLOCK_INDEX = re.compile(r"trunk\.blocks\.(\d+)\.")


@dataclass
class LanguageBindRelease:
    """A released LanguageBind checkpoint read from disk, its LoRA adapters merged into the base weights."""

    source: Path  # the checkpoint folder
    weights: str  # the weights file (or folder of shards) read, for messages
    model_type: str
    modality: str  # our modality name
    config: dict[str, Any]  # config.json
    vision: dict[str, Any]  # config.json's vision_config
    state: dict[str, Tensor]  # transformers CLIPModel names, LoRA merged, peft nesting removed
    lora: dict[str, Any] | None = None  # {"rank", "alpha", "modules"} of the merged adapters

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


@dataclass
class ConversionResult:
    """One release converted into an lbind checkpoint folder."""

    output: Path
    modality: str
    model_type: str
    source: Path
    anchor: Path  # the anchor folder the checkpoint names
    anchor_fingerprint: str
    anchor_shared: bool  # the folder already held this text tower; nothing was copied
    embed_dim: int
    logit_scale: float
    lora: dict[str, Any] | None
    settings: dict[str, Any]  # the carried preprocessing settings, by our field names
    report: list[str] = field(default_factory=list)


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
    pairs: dict[str, str] = {}
    for key in state:
        match = _LORA_A.fullmatch(key)
        if match:
            pairs[match.group(1)] = match.group(2)
    adapters = sorted(set(pairs.values()))
    consumed: set[str] = set()
    merged: dict[str, Tensor] = {}
    info: dict[str, Any] | None = None
    if pairs:
        if len(adapters) > 1:
            raise CheckpointError(f"{source}: several LoRA adapters ({', '.join(adapters)}); expected one")
        rank = vision_config.get("lora_r", LANGUAGEBIND_LORA_DEFAULTS["lora_r"])
        alpha = vision_config.get("lora_alpha", LANGUAGEBIND_LORA_DEFAULTS["lora_alpha"])
        if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
            raise CheckpointError(f"{source}: holds LoRA adapters, but vision_config.lora_r is {rank!r}")
        if not isinstance(alpha, (int, float)) or isinstance(alpha, bool) or alpha <= 0:
            raise CheckpointError(f"{source}: vision_config.lora_alpha {alpha!r} is not a positive number")
        scale = float(alpha) / rank
        for module, adapter in sorted(pairs.items()):
            a_key, b_key = f"{module}.lora_A.{adapter}.weight", f"{module}.lora_B.{adapter}.weight"
            base_key = f"{module}.base_layer.weight" if f"{module}.base_layer.weight" in state else f"{module}.weight"
            if b_key not in state:
                raise CheckpointError(f"{source}: {a_key} has no matching {b_key}")
            if base_key not in state:
                raise CheckpointError(f"{source}: LoRA adapter on {module} but no base weight {base_key}")
            a, b, w = state[a_key], state[b_key], state[base_key]
            if (
                a.dim() != 2
                or b.dim() != 2
                or a.shape[0] != rank
                or b.shape[1] != rank
                or (b.shape[0], a.shape[1])
                != (
                    w.shape[0],
                    w.shape[1] if w.dim() == 2 else -1,
                )
            ):
                raise CheckpointError(
                    f"{source}: LoRA on {module} does not fit: lora_A {tuple(a.shape)}, lora_B {tuple(b.shape)}, "
                    f"weight {tuple(w.shape)}, vision_config.lora_r {rank} (expected A [r, in], B [out, r])"
                )
            # W [out, in] + alpha / r * (B [out, r] @ A [r, in]), in float32 whatever the release's dtype.
            merged[base_key] = w.float() + scale * (b.float() @ a.float())
            consumed.update((a_key, b_key))
        info = {"rank": rank, "alpha": float(alpha), "modules": len(pairs)}
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


def read_languagebind(path: str | Path) -> LanguageBindRelease:
    """Read a downloaded LanguageBind checkpoint folder (config.json + safetensors or pytorch_model.bin).

    A pickle is read with ``torch.load(weights_only=True)`` only: a file that needs anything but tensors is
    refused with :class:`CheckpointError` naming it, and no code in it runs. LoRA adapters are merged.
    """
    path = Path(path).expanduser()
    if not path.is_dir():
        raise CheckpointError(
            f"{path}: not a directory; expected a downloaded LanguageBind checkpoint folder "
            "(config.json and model.safetensors or pytorch_model.bin), e.g. from LanguageBind/LanguageBind_Depth"
        )
    config_path = path / "config.json"
    if not config_path.is_file():
        raise CheckpointError(f"{path}: no config.json; expected a downloaded LanguageBind checkpoint folder")
    config = _read_json(config_path)
    model_type = config.get("model_type")
    modality = LANGUAGEBIND_MODALITIES.get(str(model_type))
    if modality is None:
        raise CheckpointError(
            f"{config_path}: model_type {model_type!r} is not a LanguageBind release "
            f"(expected one of {', '.join(LANGUAGEBIND_MODALITIES)})"
        )
    vision = config.get("vision_config")
    if not isinstance(vision, dict):
        raise CheckpointError(f"{config_path}: no vision_config section")
    files, _ = _weight_files(path)
    weights = str(files[0] if len(files) == 1 else path)
    state = _read_weights(files, keep_text=True)
    state, lora = merge_languagebind_lora(state, vision, source=weights)
    return LanguageBindRelease(path, weights, str(model_type), modality, config, vision, state, lora)


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


def map_languagebind_vision_keys(state: Mapping[str, Tensor], source: str = "<state dict>") -> LanguageBindEncoder:
    """A release's vision tower (LoRA already merged) in our encoder's names, temporal parts included.

    Strict: a source key that is neither vision (mapped), text tower, ``logit_scale`` nor a ``position_ids``
    buffer raises :class:`CheckpointError`, since dropping a tensor we do not understand would change outputs.
    """
    mapped = map_clip_vision_keys(state, prefix_guess=False, source=source)
    out = dict(mapped.state)
    temporal_embeddings: dict[int, Tensor] = {}
    leftover = []
    for key in mapped.unused:
        if _POSITION_IDS.fullmatch(key) or key == "logit_scale":
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
    proj = out.get("head.proj.weight")
    if proj is None or proj.dim() != 2:
        raise CheckpointError(f"{source}: no visual_projection.weight [embed_dim, width]")
    scale = state.get("logit_scale")
    logit_scale = float(scale.reshape(-1)[0]) if isinstance(scale, Tensor) and scale.numel() == 1 else None
    report = []
    if logit_scale is None:
        report.append("no logit_scale in the release: the modality keeps the initial temperature 1/0.07")
    return LanguageBindEncoder(out, int(proj.shape[0]), logit_scale, report)


def _modality_class(release: LanguageBindRelease) -> type[Modality]:
    from lbcore.plugins import default_registry

    try:
        return default_registry().registered(release.modality).cls
    except ModalityNotFoundError as err:
        raise ModalityNotFoundError(
            f"{release.source}: a {release.model_type} checkpoint converts to the {release.modality!r} modality, "
            f"but no installed plugin provides it; install the lbind-{release.modality} plugin ({err})"
        ) from err


def _as_count(value: Any, what: str, source: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value or value <= 0:
        raise CheckpointError(f"{source}: vision_config.{what} is {value!r}; expected a positive integer")
    return int(value)


def languagebind_settings(release: LanguageBindRelease) -> dict[str, Any]:
    """The preprocessing settings a release was trained with, by our modality config's field names."""
    vision = release.vision
    settings: dict[str, Any] = {}
    for key in LANGUAGEBIND_REQUIRED.get(release.modality, ()):
        if not vision.get(key):
            raise CheckpointError(
                f"{release.config_file}: vision_config.{key} is missing or 0; a {release.model_type} release "
                "must state it (it decides the patch grid)"
            )
    for key, ours in LANGUAGEBIND_SETTINGS.get(release.modality, {}).items():
        if key in vision:
            settings[ours] = vision[key]
    if release.modality != "audio":
        height, width = _image_hw(vision.get("image_size", CLIP_VISION_DEFAULTS["image_size"]), release.config_file)
        if height != width:
            raise CheckpointError(f"{release.config_file}: image_size {height}x{width} is not square")
        settings["image_size"] = height
        settings["in_chans"] = _as_count(vision.get("num_channels", 3), "num_channels", release.config_file)
    return settings


def languagebind_grid(release: LanguageBindRelease) -> tuple[int, int]:
    """The patch grid of a release's position embedding: (mel_bins, target_length) // patch for audio (upstream
    resized its positions to that), (image_size // patch) squared otherwise."""
    vision = release.vision
    patch = _as_count(vision.get("patch_size", CLIP_VISION_DEFAULTS["patch_size"]), "patch_size", release.config_file)
    if release.modality == "audio":
        mel = _as_count(vision.get("num_mel_bins"), "num_mel_bins", release.config_file)
        frames = _as_count(vision.get("target_length"), "target_length", release.config_file)
        return mel // patch, frames // patch
    height, width = _image_hw(vision.get("image_size", CLIP_VISION_DEFAULTS["image_size"]), release.config_file)
    return height // patch, width // patch


def languagebind_modality_config(modality_cls: type[Modality], release: LanguageBindRelease) -> ModalityConfig:
    """The modality config that reproduces a release: the ``languagebind`` preset with the release's encoder
    architecture, its preprocessing settings and, as ``lora``, the adapters that were merged (rank 0 if none)."""
    from lbcore.config import deep_merge, validate_model

    encoder = encoder_config_from_clip(release.vision, release.config_file)
    base = modality_cls.presets.get("languagebind", {})
    settings = languagebind_settings(release)
    fields = modality_cls.Config.model_fields
    unknown = sorted(k for k in settings if k not in fields)
    if unknown:
        raise ConfigError(
            f"{release.config_file}: the {release.modality} plugin's config ({modality_cls.Config.__name__}) has no "
            f"field(s) {', '.join(unknown)} to carry the release's preprocessing settings into"
        )
    lora: dict[str, Any] = {"rank": 0}
    if release.lora:
        lora = {"rank": release.lora["rank"], "alpha": release.lora["alpha"]}
    overrides = {"encoder": encoder.model_dump(include=ARCHITECTURE_FIELDS), "lora": lora, **settings}
    return validate_model(
        modality_cls.Config,
        deep_merge(base, overrides),
        prefix=("modalities", release.modality),
        source=release.config_file,
    )


def _fit_hint(encoder: nn.Module, state: Mapping[str, Tensor]) -> str:
    """Why a release may not fit an encoder built elsewhere: the usual suspects, in words."""
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


def load_languagebind_into(encoder: nn.Module, modality: Modality, path: str | Path) -> LanguageBindInit:
    """Initialise ``modality``'s encoder from a released LanguageBind checkpoint folder, converting on the fly.

    The release must be of the same modality (a Thermal release for ``infrared``, ...). The position embedding is
    resized bicubically when the encoder's patch grid differs from the release's; any other mismatch raises
    :class:`CheckpointError`. Preprocessing settings that differ from the release's are reported (the weights
    were trained on the release's). Returns the report and the release's logit scale (log).
    """
    release = read_languagebind(path)
    if release.modality != modality.name:
        raise CheckpointError(
            f"{release.source}: is a {release.model_type} checkpoint ({release.modality!r} modality); it cannot "
            f"initialise the {modality.name!r} encoder"
        )
    converted = map_languagebind_vision_keys(release.state, release.weights)
    state = converted.state
    report = list(converted.report)
    if release.lora:
        report.append(f"merged LoRA adapters (rank {release.lora['rank']}, alpha {release.lora['alpha']:g})")
    pos = state.get("trunk.position_embedding")
    trunk = getattr(encoder, "trunk", None)
    target = tuple(getattr(trunk, "grid_size", ()))
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
    try:
        _load_exactly(encoder, state, release.weights)
    except CheckpointError as err:
        raise CheckpointError(f"{err}{_fit_hint(encoder, state)}") from err
    current = modality.config.model_dump()
    for key, value in languagebind_settings(release).items():
        if key in current and current[key] != value:
            report.append(f"the release was trained with {key}={value!r}; this run uses {current[key]!r}")
    for line in report:
        logger.info("%s: %s", release.source, line)
    return LanguageBindInit(report, converted.logit_scale, release)


# ---------------------------------------------------------------------------------------------- the anchor
def _text_tower(release: LanguageBindRelease) -> dict[str, Tensor]:
    state = {k: v for k, v in release.state.items() if k.startswith(TEXT_PREFIXES) and not _POSITION_IDS.fullmatch(k)}
    if not state:
        raise CheckpointError(f"{release.weights}: no text tower (text_model.*, text_projection.weight)")
    return state


def _text_config(release: LanguageBindRelease, text_state: Mapping[str, Tensor]) -> Any:
    """transformers CLIPTextConfig of the release's text tower, with the outer projection_dim."""
    from transformers import CLIPTextConfig

    raw = release.config.get("text_config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{release.config_file}: no text_config section")
    data = {k: v for k, v in raw.items() if not k.startswith("_")}
    data["model_type"] = "clip_text_model"
    config = CLIPTextConfig.from_dict(data)
    proj = text_state.get("text_projection.weight")
    if proj is None or proj.dim() != 2:
        raise CheckpointError(f"{release.weights}: no text_projection.weight [embed_dim, width]")
    outer = release.config.get("projection_dim")
    if outer is not None and outer != proj.shape[0]:
        raise CheckpointError(
            f"{release.config_file}: projection_dim {outer} but text_projection.weight is {tuple(proj.shape)}"
        )
    config.projection_dim = int(proj.shape[0])
    config.architectures = ["CLIPTextModelWithProjection"]
    return config


def _check_text_state(config: Any, text_state: Mapping[str, Tensor], source: str) -> None:
    """The text tower must fill CLIPTextModelWithProjection exactly (transformers would only warn and leave
    random weights)."""
    from transformers import CLIPTextModelWithProjection

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        reference = CLIPTextModelWithProjection(config)
    expected = {k: v for k, v in reference.state_dict().items() if not _POSITION_IDS.fullmatch(k)}
    missing = sorted(set(expected) - set(text_state))
    unexpected = sorted(set(text_state) - set(expected))
    shapes = [
        f"{k}: {tuple(text_state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in text_state and tuple(text_state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source}: the text tower does not match its text_config: missing {missing[:5] or 'none'}, "
            f"unexpected {unexpected[:5] or 'none'}, shapes {shapes[:5] or 'ok'}"
        )


def _copy_tokenizer(folder: Path, target: Path, source: Path) -> list[str]:
    """Copy the tokenizer files; make tokenizer_config.json name a class transformers knows (LanguageBind's
    files name its own LanguageBind*Tokenizer subclasses of CLIPTokenizer)."""
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    present = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if "tokenizer.json" not in present and not {"vocab.json", "merges.txt"} <= set(present):
        raise CheckpointError(
            f"{folder}: no tokenizer files (tokenizer.json, or vocab.json + merges.txt); the anchor needs the "
            f"release's CLIP tokenizer: pass a folder that has them with --tokenizer (source: {source})"
        )
    for name in present:
        shutil.copyfile(folder / name, target / name)
    report = []
    config_path = target / "tokenizer_config.json"
    tok_config = _read_json(config_path) if config_path.is_file() else {}
    cls = tok_config.get("tokenizer_class")
    if cls is None or tokenizer_class_from_name(str(cls)) is None:
        tok_config["tokenizer_class"] = "CLIPTokenizer"
        report.append(f"tokenizer_class {cls!r} -> 'CLIPTokenizer' (the same BPE, a class transformers knows)")
    if tok_config.pop("auto_map", None) is not None:
        report.append("dropped tokenizer_config.json's auto_map (it points at LanguageBind's own code)")
    config_path.write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
    return report


def write_languagebind_anchor(
    release: LanguageBindRelease, directory: str | Path, tokenizer: str | Path | None = None
) -> tuple[int, list[str]]:
    """Save a release's text tower as a CLIP anchor folder that :class:`lbcore.anchor.Anchor` loads.

    Writes config.json (clip_text_model, the release's text_config and projection), model.safetensors
    (``text_model.*`` and ``text_projection.weight``) and the tokenizer files of ``tokenizer`` (default: the
    release folder). Returns the token limit to use (the text tower's positions, at most 77) and a report.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text_state = _text_tower(release)
    config = _text_config(release, text_state)
    _check_text_state(config, text_state, release.weights)
    report = _copy_tokenizer(Path(tokenizer).expanduser() if tokenizer else release.source, directory, release.source)
    config.save_pretrained(directory)
    # safetensors refuses tensors that share memory; a contiguous copy of each is also what it writes.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in text_state.items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    max_length = min(ANCHOR_MAX_LENGTH, int(getattr(config, "max_position_embeddings", ANCHOR_MAX_LENGTH)))
    return max_length, report


# ---------------------------------------------------------------------------------------------- conversion
def _existing_checkpoint(output: Path) -> dict[str, Any] | None:
    from lbcore.checkpoint import META_FILE, read_meta

    if (output / META_FILE).is_file():
        return read_meta(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise CheckpointError(
            f"{output}: exists and is not an lbind checkpoint (no {META_FILE}); choose a new or empty folder"
        )
    return None


def convert_languagebind(
    source: str | Path, output: str | Path, tokenizer: str | Path | None = None
) -> ConversionResult:
    """Convert a released LanguageBind checkpoint folder into the lbind checkpoint folder ``output``.

    ``output`` gets ``lbind.json``, ``<modality>.safetensors`` and ``anchor/`` (the release's text tower as a CLIP
    anchor, named ``./anchor`` in lbind.json); :func:`lbcore.load` reads it. Converting another modality of the
    same release into an existing ``output`` adds it and shares the anchor (same fingerprint, nothing copied); a
    release with a different text tower raises :class:`CheckpointError` and leaves ``output`` as it was.
    ``tokenizer``: a folder with the CLIP tokenizer files, when the release folder has none.
    """
    from lbcore.anchor import Anchor
    from lbcore.checkpoint import META_FILE, atomic_dir
    from lbcore.config import AnchorConfig
    from lbcore.model import BindModel

    output = Path(output).expanduser()
    release = read_languagebind(source)
    modality_cls = _modality_class(release)
    config = languagebind_modality_config(modality_cls, release)
    modality = modality_cls(config)
    converted = map_languagebind_vision_keys(release.state, release.weights)
    encoder = modality.build_encoder(converted.embed_dim)
    try:
        _load_exactly(encoder, converted.state, release.weights)
    except CheckpointError as err:
        raise CheckpointError(f"{err}{_fit_hint(encoder, converted.state)}") from err
    report = list(converted.report)
    if release.lora:
        report.append(
            f"merged LoRA adapters into {release.lora['modules']} projections "
            f"(rank {release.lora['rank']}, alpha {release.lora['alpha']:g})"
        )
    existing = _existing_checkpoint(output)
    output.parent.mkdir(parents=True, exist_ok=True)

    # The anchor is written (and loaded once, to fingerprint it exactly as lbcore.load will) in a temporary
    # folder beside the output; it becomes output/anchor, or is dropped when output already holds the same one.
    with tempfile.TemporaryDirectory(prefix=f".{output.name}-anchor-", dir=output.parent) as tmp:
        staged = Path(tmp) / ANCHOR_DIR
        max_length, tok_report = write_languagebind_anchor(release, staged, tokenizer)
        report.extend(tok_report)
        try:
            anchor = Anchor.from_pretrained(str(staged), max_length=max_length)
        except AnchorError as err:
            raise CheckpointError(
                f"{release.source}: the converted text tower does not load as an anchor: {err}"
            ) from err
        fingerprint, embed_dim = anchor.fingerprint, anchor.embed_dim
        del anchor
        if embed_dim != converted.embed_dim:
            raise CheckpointError(
                f"{release.weights}: text projection gives {embed_dim}-d embeddings, visual projection "
                f"{converted.embed_dim}-d"
            )
        scale = converted.logit_scale if converted.logit_scale is not None else LogitScale().value.item()
        anchor_cfg = AnchorConfig(name=ANCHOR_NAME, max_length=max_length)
        model = BindModel(
            anchor_cfg,
            {modality.name: encoder},
            {modality.name: modality},
            {modality.name: scale},
            anchor_fingerprint=fingerprint,
            embed_dim=embed_dim,
        )
        provenance = {
            "from": "languagebind",
            "source": str(release.source.resolve()),
            "model_type": release.model_type,
            "lora_merged": release.lora,
        }
        if existing is None:
            with atomic_dir(output) as building:
                staged.rename(building / ANCHOR_DIR)
                model.write_files(building, extra={"converted": {modality.name: provenance}})
            anchor_dir, shared = output / ANCHOR_DIR, False
        else:
            old = existing["anchor"]
            if old.get("fingerprint") != fingerprint:
                raise CheckpointError(
                    f"{output}: holds models of anchor {old.get('name')!r} (fingerprint "
                    f"{str(old.get('fingerprint'))[:12]}), but {release.source} has a different text tower "
                    f"(fingerprint {fingerprint[:12]}); convert it into another folder"
                )
            anchor_dir, shared = _anchor_folder(output, old), True
            _add_modality(output, existing, model, modality.name, provenance)
            report.append(f"{output} already holds this text tower: the anchor is shared, not copied")
            if modality.name in existing["modalities"]:
                report.append(f"replaced the {modality.name} encoder that {output / META_FILE} held")
    for line in report:
        logger.info("%s: %s", release.source, line)
    return ConversionResult(
        output=output,
        modality=modality.name,
        model_type=release.model_type,
        source=release.source,
        anchor=anchor_dir,
        anchor_fingerprint=fingerprint,
        anchor_shared=shared,
        embed_dim=embed_dim,
        logit_scale=float(scale),
        lora=release.lora,
        settings=languagebind_settings(release),
        report=report,
    )


def _anchor_folder(output: Path, anchor_meta: Mapping[str, Any]) -> Path:
    name = str((anchor_meta.get("config") or {}).get("name") or anchor_meta.get("name") or "")
    return (output / name).resolve() if name.startswith(("./", "../")) else Path(name)


def _add_modality(
    output: Path, existing: dict[str, Any], model: BindModel, name: str, provenance: dict[str, Any]
) -> None:
    """Add (or replace) one modality in an existing checkpoint folder: its files, then lbind.json.

    The one-modality ``model`` is written the usual way into a temporary folder inside ``output``; its files
    (whatever the checkpoint format puts there) move into ``output`` and its ``modalities`` entry joins the
    existing lbind.json, which is replaced last and atomically.
    """
    from lbcore.checkpoint import META_FILE, write_json

    with tempfile.TemporaryDirectory(prefix=f".add-{name}-", dir=output) as tmp:
        staged = Path(tmp)
        model.write_files(staged)
        new_meta = _read_json(staged / META_FILE)
        for path in staged.iterdir():
            if path.name != META_FILE:
                os.replace(path, output / path.name)
    meta = dict(existing)
    meta["format_version"] = max(int(existing.get("format_version", 1)), int(new_meta.get("format_version", 1)))
    meta["modalities"] = {**existing["modalities"], name: new_meta["modalities"][name]}
    converted = meta.get("converted")
    meta["converted"] = {**(converted if isinstance(converted, dict) else {}), name: provenance}
    write_json(output / META_FILE, meta)
