"""Weights in: Hugging Face CLIP vision towers -> :class:`lbcore.nn.ViTEncoder`.

transformers names a CLIP vision tower ``vision_model.embeddings.*``, ``vision_model.pre_layrnorm.*`` (sic),
``vision_model.encoder.layers.N.*``, ``vision_model.post_layernorm.*`` and ``visual_projection.weight``; the
same names sit at the top of a full ``CLIPModel`` next to ``text_model.*`` (and in LanguageBind's released
checkpoints). Our encoder holds the same tensors with the same shapes under other names, so conversion is a
renaming plus, when the target encoder sees a different patch grid (audio spectrograms, other input sizes),
a bicubic resize of the position embedding.

Checkpoints are read from safetensors, or from ``pytorch_model.bin`` through ``torch.load(weights_only=True)``
only: arbitrary pickles are never executed.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from lbcore.config import EncoderConfig
from lbcore.errors import CheckpointError, ConfigError
from lbcore.nn.encoder import ViTEncoder
from lbcore.nn.stem import resize_position_embedding
from lbcore.nn.trunk import ACTIVATIONS

logger = logging.getLogger(__name__)

# The key that every CLIP vision tower has exactly once; whatever precedes it is the checkpoint's prefix.
ANCHOR_KEY = "vision_model.embeddings.class_embedding"
# Keys of the text tower in a full CLIPModel: not ours to load, not worth listing one by one.
TEXT_PREFIXES = ("text_model.", "text_projection.")

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


def _read_weights(files: list[Path]) -> dict[str, Tensor]:
    from safetensors import SafetensorError, safe_open

    state: dict[str, Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            try:
                with safe_open(str(f), framework="pt", device="cpu") as reader:
                    for key in reader.keys():
                        # A full CLIPModel carries a text tower as large as the vision one: leave it on disk,
                        # but keep an empty placeholder so the report can count it.
                        state[key] = torch.empty(0) if _is_text_key(key) else reader.get_tensor(key)
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
        side = int(_config_field(vision, "image_size")) // int(_config_field(vision, "patch_size"))
    else:
        side = math.isqrt(max(num_grid, 0))
    if side * side == num_grid:
        return side, side
    if math.prod(target_grid) == num_grid:
        return target_grid
    implied = f"config.json implies a {side}x{side} grid" if hf_config is not None else "not a square grid"
    raise CheckpointError(
        f"{source}: position embedding holds {num_grid} patch positions: {implied}, and the encoder's "
        f"{'x'.join(map(str, target_grid))} grid holds {math.prod(target_grid)}"
    )


def load_clip_vision_into(
    encoder: ViTEncoder,
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

    expected = encoder.state_dict()
    missing = [k for k in expected if k not in mapped.state]
    unexpected = [k for k in mapped.state if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(mapped.state[k].shape)}, encoder {tuple(v.shape)}"
        for k, v in expected.items()
        if k in mapped.state and mapped.state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing from the checkpoint: {', '.join(missing)}")
        if unexpected:
            parts.append(f"not in the encoder: {', '.join(unexpected)}")
        if shapes:
            hint = "" if resize_positions else " (resize_positions=False)"
            parts.append(f"shape mismatch{hint}: {'; '.join(shapes)}")
        raise CheckpointError(f"{source}: does not fit the encoder: " + " | ".join(parts))
    encoder.load_state_dict(mapped.state, strict=True)

    if mapped.text_keys:
        report.append(f"skipped {mapped.text_keys} text-tower keys (text_model.*, text_projection)")
    report.extend(f"unused source key: {k}" for k in mapped.unused)
    for line in report:
        logger.info("%s: %s", source, line)
    return report
