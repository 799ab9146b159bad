"""Hugging Face CLIP vision towers -> our encoders (``lbind train --init clip:PATH``).

transformers names a CLIP vision tower ``vision_model.embeddings.*``, ``vision_model.pre_layrnorm.*`` (sic),
``vision_model.encoder.layers.N.*``, ``vision_model.post_layernorm.*`` and ``visual_projection.weight``; the same
names sit at the top of a full ``CLIPModel`` next to ``text_model.*`` (and in LanguageBind's released
checkpoints). Our encoder holds the same tensors with the same shapes under other names, so conversion is a
renaming plus, when the target encoder sees a different patch grid (spectrograms, other input sizes), a bicubic
resize of the position embedding. A space-time encoder loaded from an image tower starts its temporal attention
and LayerNorms as copies of the spatial ones.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from lbcore.config import EncoderConfig
from lbcore.convert.weights import find_weight_files, load_exactly, read_json, read_weights
from lbcore.errors import CheckpointError, ConfigError
from lbcore.hub import resolve
from lbcore.nn.encoder import ViTEncoder
from lbcore.nn.stem import resize_position_embedding
from lbcore.nn.trunk import ACTIVATIONS
from lbcore.release import CLIP_VISION_DEFAULTS, image_hw

logger = logging.getLogger(__name__)

__all__ = [
    "ANCHOR_KEY",
    "CLIP_VISION_DEFAULTS",
    "CLIP_VISION_RULES",
    "HF_ACTIVATIONS",
    "POSITION_IDS",
    "TEMPORAL_PREFIXES",
    "TEXT_PREFIXES",
    "VisionStateMapping",
    "clip_vision_to_encoder_state",
    "encoder_config_from_clip",
    "guess_prefix",
    "load_clip_vision_into",
    "map_clip_vision_keys",
]

# The key that every CLIP vision tower has exactly once; whatever precedes it is the checkpoint's prefix.
ANCHOR_KEY = "vision_model.embeddings.class_embedding"
# Keys of the text tower in a full CLIPModel: not ours to load, not worth listing one by one.
TEXT_PREFIXES = ("text_model.", "text_projection.")
# Our names of a space-time encoder's temporal tensors (lbcore.nn.temporal).
TEMPORAL_PREFIXES = ("trunk.temporal_embedding", "trunk.temporal_norm.", "trunk.temporal_attn.")
# Buffers old transformers versions saved with the weights; they hold arange(n) and carry no information.
POSITION_IDS = re.compile(r"(?:.+\.)?position_ids")

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
HF_ACTIVATIONS = {"gelu": "gelu", "quick_gelu": "quick_gelu"}


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
        height, width = image_hw(_config_field(vision, "image_size"), source)
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


def _read_clip_source(
    path_or_state: str | Path | Mapping[str, Tensor],
) -> tuple[Mapping[str, Tensor], str, dict[str, Any] | None, str]:
    """(state dict, its name for messages, config.json or None, config.json's name) of a CLIP source."""
    if isinstance(path_or_state, Mapping):
        return path_or_state, "<state dict>", None, "<no config>"
    path = resolve(path_or_state, "clip")  # a str may be a hub id
    files, config_path = find_weight_files(path)
    source = str(files[0] if len(files) == 1 else path)
    hf_config = read_json(config_path) if config_path is not None else None  # read first, as it is smaller
    config_source = str(config_path) if config_path is not None else "<no config>"
    return read_weights(files), source, hf_config, config_source


def load_clip_vision_into(
    encoder: ViTEncoder | nn.Module,
    path_or_state: str | Path | Mapping[str, Tensor],
    resize_positions: bool = True,
) -> list[str]:
    """Load a transformers CLIP vision tower into an existing encoder; return a report, one line per remark.

    ``path_or_state`` is a checkpoint directory (config.json + model.safetensors, sharded safetensors, or a
    pytorch_model.bin read with ``weights_only=True``), a single weights file, a hub id given as a str
    (``org/name[@revision]`` or ``hf://...``: :func:`lbcore.hub.resolve`), or a state dict. When the
    encoder's patch grid differs from the checkpoint's, the position embedding is resized bicubically (class
    token kept) unless ``resize_positions`` is False. Loading is strict: every encoder tensor must be filled
    with the right shape, otherwise :class:`CheckpointError` names the source and the offending keys. The
    report lists the resize and the source keys left unused; text-tower keys are counted, not listed.

    A space-time encoder (one with ``init_temporal_from_spatial``, e.g. video's) loaded from a checkpoint without
    temporal tensors gets its temporal attention and LayerNorms copied from the spatial ones (LanguageBind's
    starting point); its temporal embedding keeps its initial value.
    """
    state, source, hf_config, config_source = _read_clip_source(path_or_state)
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
    load_exactly(encoder, mapped.state, source, "" if resize_positions else " (resize_positions=False)")
    if temporal:
        encoder.init_temporal_from_spatial()  # type: ignore[operator]  # checked by _temporal_from_spatial
    if mapped.text_keys:
        report.append(f"skipped {mapped.text_keys} text-tower keys (text_model.*, text_projection)")
    report.extend(f"unused source key: {k}" for k in mapped.unused)
    for line in report:
        logger.info("%s: %s", source, line)
    return report
