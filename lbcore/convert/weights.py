"""Weight files in: config.json, the weights of a checkpoint folder (single, sharded, safetensors or pickle),
and loading a state dict into a module only when it fits exactly.

Pickles (``pytorch_model.bin``) are read through ``torch.load(weights_only=True)`` only: a file that needs
anything but tensors and plain containers is refused with :class:`CheckpointError`, and no code in it runs.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from lbcore.errors import CheckpointError

WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; :class:`CheckpointError` naming the file when it is unreadable or not an object."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: cannot read JSON: {err}") from err
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def find_weight_files(path: Path) -> tuple[list[Path], Path | None]:
    """The weight files of a checkpoint directory (or one weights file), and its config.json if any.

    A directory is searched for :data:`WEIGHT_FILES` in that order; a shard index (``*.index.json``) stands
    for every shard its ``weight_map`` lists, each of which must exist.
    """
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
        weight_map = read_json(path).get("weight_map")
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


def _read_safetensors(f: Path, keep_text: bool, state: dict[str, Tensor]) -> None:
    try:
        with safe_open(str(f), framework="pt", device="cpu") as reader:
            for key in reader.keys():
                # A full CLIPModel carries a text tower as large as the vision one: unless asked for it,
                # leave it on disk, but keep an empty placeholder so the report can count it.
                skip = not keep_text and _is_text_key(key)
                state[key] = torch.empty(0) if skip else reader.get_tensor(key)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{f}: not a readable safetensors file: {err}") from err


def _read_pickle(f: Path) -> Mapping[str, Tensor]:
    try:
        # weights_only=True refuses anything but tensors and plain containers: no code runs on load.
        loaded = torch.load(f, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, OSError, EOFError, ValueError) as err:
        raise CheckpointError(
            f"{f}: cannot be loaded as plain tensors with torch.load(weights_only=True): {err}"
        ) from err
    if not isinstance(loaded, Mapping) or not all(isinstance(v, Tensor) for v in loaded.values()):
        raise CheckpointError(f"{f}: expected a mapping of parameter names to tensors")
    return loaded


def read_weights(files: list[Path], keep_text: bool = False) -> dict[str, Tensor]:
    """Every tensor of ``files`` (safetensors, or pickles read with ``weights_only=True``) by name.

    Text-tower tensors (``text_model.*``, ``text_projection.*``) of safetensors files are left on disk as empty
    placeholders unless ``keep_text``.
    """
    state: dict[str, Tensor] = {}
    for f in files:
        if f.suffix == ".safetensors":
            _read_safetensors(f, keep_text, state)
        else:
            state.update(_read_pickle(f))
    return state


def load_exactly(module: nn.Module, state: dict[str, Tensor], source: str, shape_hint: str = "") -> None:
    """Load ``state`` into ``module`` only if it fills every tensor with the right shape and brings nothing else."""
    expected = module.state_dict()
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
    module.load_state_dict(state, strict=True)
