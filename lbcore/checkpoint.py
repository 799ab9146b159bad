"""The checkpoint directory: ``lbind.json``, one ``<modality>.safetensors`` per encoder, ``train_state/``.

``lbind.json`` holds the format version, the anchor (its config, name, fingerprint and embedding size) and, per
modality, the plugin that provides it (name, distribution, version), its full config, its logit scale and the
weights file. Encoder weights are always full weights in the plain encoder's names: LoRA adapters are merged
into the base weights on export (``lora.merged_rank`` records the rank that was merged), so a checkpoint loads
into the encoder that ``Modality.build_encoder`` builds, with or without peft installed.

Directories are written atomically: everything goes into a temporary sibling that is renamed into place, so a
reader (or a resumed run after a crash) sees a complete checkpoint or none. Weights are safetensors; nothing
in a checkpoint is unpickled (``train_state/`` is read by accelerate with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lbcore.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = "lbind-checkpoint"
FORMAT_VERSION = 1
META_FILE = "lbind.json"
TRAIN_STATE_DIR = "train_state"
PROGRESS_FILE = "progress.json"
FINAL_NAME = "final"
STEP_PATTERN = re.compile(r"step-(\d+)")


def step_dir_name(step: int) -> str:
    """Name of a periodic checkpoint folder (zero-padded so that names sort by step)."""
    return f"step-{step:08d}"


def _remove_tree(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def replace_dir(tmp: Path, target: Path) -> None:
    """Move the finished folder ``tmp`` to ``target``, replacing an older ``target``.

    A rename is atomic; replacing an existing folder takes two renames (old out of the way, new in), so a crash
    between them leaves the old copy under ``.old-<name>``, never a half-written ``target``.
    """
    old = target.parent / f".old-{target.name}"
    if old.exists():
        _remove_tree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        _remove_tree(old)


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it becomes ``target``, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    if tmp.exists():
        _remove_tree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            _remove_tree(tmp)


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def read_meta(directory: str | Path) -> dict[str, Any]:
    """Read and check ``lbind.json`` of a checkpoint directory."""
    directory = Path(directory)
    path = directory / META_FILE
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: no such checkpoint directory")
    if not path.is_file():
        raise CheckpointError(f"{directory}: not an lbind checkpoint (no {META_FILE})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON: {err}") from err
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an lbind checkpoint description (expected format {FORMAT!r})")
    version = meta.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version!r} is newer than this lbind supports ({FORMAT_VERSION}); "
            "upgrade lbind"
        )
    for key in ("anchor", "modalities"):
        if not isinstance(meta.get(key), dict):
            raise CheckpointError(f"{path}: missing the {key!r} section")
    return meta


def lora_layers(module: nn.Module) -> dict[str, nn.Module]:
    """The peft LoRA layers inside ``module``, by module name (empty without peft adapters)."""
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:  # peft missing: nothing can have been injected
        return {}
    return {name: m for name, m in module.named_modules() if isinstance(m, LoraLayer)}


@torch.no_grad()
def export_encoder_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Full encoder weights in the plain encoder's names, LoRA merged in (W + alpha/r * B @ A); float32 CPU copies.

    The live encoder is not modified (no merge/unmerge round trip that would change its bits).
    """
    layers = lora_layers(encoder)
    state: dict[str, torch.Tensor] = {}
    for key, value in encoder.state_dict().items():
        if ".lora_" in key or ".lora_magnitude_vector" in key:
            continue  # adapter weights: folded into their base layer below
        state[key.replace(".base_layer.", ".")] = value
    for name, layer in layers.items():
        weight_key = f"{name}.weight"
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A:
                delta = layer.get_delta_weight(adapter)  # [out, in], already scaled by alpha / r
                state[weight_key] = state[weight_key] + delta.to(state[weight_key].dtype)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def checkpoint_step(directory: Path) -> int | None:
    """The optimiser step a run checkpoint was written at (None if it has no resumable train state)."""
    progress = directory / TRAIN_STATE_DIR / PROGRESS_FILE
    if not (directory / META_FILE).is_file() or not progress.is_file():
        return None
    try:
        return int(json.loads(progress.read_text(encoding="utf-8"))["step"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{progress}: unreadable training progress: {err}") from err


def find_latest(output_dir: str | Path) -> Path | None:
    """The resumable checkpoint with the highest step in a run's output folder (``final`` wins a tie)."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return None
    best: tuple[int, int, Path] | None = None
    for child in output_dir.iterdir():
        if not child.is_dir() or not (child.name == FINAL_NAME or STEP_PATTERN.fullmatch(child.name)):
            continue
        step = checkpoint_step(child)
        if step is None:
            continue
        key = (step, int(child.name == FINAL_NAME), child)
        if best is None or key[:2] > best[:2]:
            best = key
    return best[2] if best else None


def prune_step_dirs(output_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` periodic checkpoints (``final`` is never touched)."""
    dirs = sorted(
        (int(m.group(1)), p)
        for p in output_dir.iterdir()
        if p.is_dir() and (m := STEP_PATTERN.fullmatch(p.name)) is not None
    )
    for _, path in dirs[: max(len(dirs) - keep, 0)]:
        log.info("removing old checkpoint %s", path)
        _remove_tree(path)
