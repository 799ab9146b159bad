"""The checkpoint directory: ``lbind.json``, one ``<modality>.safetensors`` per encoder, ``train_state/``.

``lbind.json`` holds the format version, the anchor (its config, name, fingerprint and embedding size) and, per
modality, the plugin that provides it (name, distribution, version), its full config, its logit scale, the
weights file (``file``) and what it holds (``weights``):

- ``"full"``: every encoder tensor in the plain encoder's names, LoRA adapters merged in (``lora.merged_rank``
  records the rank that was merged), so the file loads into the encoder ``Modality.build_encoder`` builds, with
  or without peft installed.
- ``"adapter"`` (LoRA-trained modalities only): the LoRA factors, ``<module>.lora_A.weight`` [r, in] and
  ``<module>.lora_B.weight`` [out, r], plus the trained extras (``lora.trainable_extras``: class token,
  post-LayerNorm, projection, video's temporal parts) in plain names; ``base`` names where every other tensor
  comes from (``source``: ``clip:PATH``, ``languagebind:PATH`` or ``lbind:DIR``) and its :func:`state_sha256`
  (``sha256``, over exactly the tensors taken from the base), and ``lora`` holds rank, alpha, targets and the
  ``scaling`` (alpha / r) to merge with: W += scaling * B @ A. Loading rebuilds the base, checks the hash and
  merges. A scratch-initialised encoder has no base to refer to and is always saved in full.

Checkpoints with adapter weights are format version 2; full-weight checkpoints stay version 1.

Directories are written atomically: everything goes into a temporary sibling that is renamed into place, so a
reader (or a resumed run after a crash) sees a complete checkpoint or none. Weights are safetensors; nothing
in a checkpoint is unpickled (``train_state/`` is read by accelerate with ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lbcore.errors import CheckpointError

log = logging.getLogger(__name__)

FORMAT = "lbind-checkpoint"
FORMAT_VERSION = 2  # the newest format this lbind reads
FULL_FORMAT_VERSION = 1  # written when every modality holds full weights
ADAPTER_FORMAT_VERSION = 2  # written when some modality holds LoRA adapter weights
LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"  # adapter tensor suffixes in adapter files
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
        raise CheckpointError(
            f"{directory}: not an lbind checkpoint (no {META_FILE}) nor a run folder (no {FINAL_NAME}/ or "
            f"step-*/ checkpoint in it)"
        )
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


def base_encoder_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's own tensors in the plain encoder's names, LoRA adapters left out (not merged): with peft
    adapters injected, the weights they apply to. Live tensors, not copies."""
    state: dict[str, torch.Tensor] = {}
    for key, value in encoder.state_dict(keep_vars=True).items():
        if ".lora_" in key:
            continue  # adapter weights (lora_A / lora_B / DoRA magnitudes)
        state[key.replace(".base_layer.", ".")] = value.detach()
    return state


@torch.no_grad()
def export_encoder_state(encoder: nn.Module) -> dict[str, torch.Tensor]:
    """Full encoder weights in the plain encoder's names, LoRA merged in (W + alpha/r * B @ A); CPU copies.

    The live encoder is not modified (no merge/unmerge round trip that would change its bits).
    """
    layers = lora_layers(encoder)
    state = base_encoder_state(encoder)
    for name, layer in layers.items():
        weight_key = f"{name}.weight"
        for adapter in layer.active_adapters:
            if adapter in layer.lora_A:
                delta = layer.get_delta_weight(adapter)  # [out, in], already scaled by alpha / r
                state[weight_key] = state[weight_key] + delta.to(state[weight_key].dtype)
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 of a set of tensors: for each name in sorted order, the name, dtype, shape and raw bytes.

    Independent of device and memory layout; any change of a value, dtype, shape or name changes it.
    """
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach()
        if tensor.is_meta:
            raise ValueError(f"{name}: a meta tensor has no data to hash")
        dtype = str(tensor.dtype).removeprefix("torch.")
        digest.update(f"{name}\0{dtype}\0{list(tensor.shape)}\0".encode())
        flat = tensor.to("cpu").contiguous().reshape(-1)
        digest.update(flat.view(torch.uint8).numpy())  # the bytes, read through the buffer protocol
    return digest.hexdigest()


def split_extras(keys: Sequence[str] | Mapping[str, object], prefixes: Sequence[str]) -> tuple[list[str], list[str]]:
    """Plain encoder tensor names -> (trained extras: names starting with one of ``prefixes``, the rest)."""
    extras = [k for k in keys if any(k.startswith(p) for p in prefixes)]
    chosen = set(extras)
    return extras, [k for k in keys if k not in chosen]


def adapter_state(encoder: nn.Module, trainable_extras: Sequence[str]) -> tuple[dict[str, torch.Tensor], float]:
    """What an adapter-only checkpoint stores of a peft-adapted encoder, and the scale to merge it with.

    Returns (tensors, scaling): ``<module>.lora_A.weight`` [r, in] and ``<module>.lora_B.weight`` [out, r] for
    every LoRA layer, plus every plain tensor whose name starts with one of ``trainable_extras``; live tensors
    (the caller copies). Raises :class:`CheckpointError` when the encoder has no LoRA adapters, several active
    adapters per layer, DoRA, transposed (fan-in-fan-out) weights or per-layer scales: none of those can be
    merged back by ``W += scaling * B @ A``.
    """
    layers = lora_layers(encoder)
    if not layers:
        raise CheckpointError("the encoder has no LoRA adapters to save (are they merged already?)")
    tensors: dict[str, torch.Tensor] = {}
    scalings: set[float] = set()
    for name, layer in layers.items():
        adapters = [a for a in layer.active_adapters if a in layer.lora_A]
        if len(adapters) != 1:
            raise CheckpointError(f"{name}: expected one active LoRA adapter, found {adapters or 'none'}")
        adapter = adapters[0]
        if getattr(layer, "use_dora", {}).get(adapter) or getattr(layer, "fan_in_fan_out", False):
            raise CheckpointError(f"{name}: DoRA or fan-in-fan-out LoRA layers cannot be saved as an adapter")
        if not isinstance(layer.lora_A[adapter], nn.Linear) or not isinstance(layer.lora_B[adapter], nn.Linear):
            raise CheckpointError(f"{name}: only LoRA on linear layers can be saved as an adapter")
        tensors[name + LORA_A] = layer.lora_A[adapter].weight.detach()  # [r, in]
        tensors[name + LORA_B] = layer.lora_B[adapter].weight.detach()  # [out, r]
        scalings.add(float(layer.scaling[adapter]))
    if len(scalings) != 1:
        raise CheckpointError(f"LoRA layers use different scales {sorted(scalings)}; expected one alpha / rank")
    base = base_encoder_state(encoder)
    extras, _ = split_extras(list(base), trainable_extras)
    tensors.update({k: base[k] for k in extras})
    return tensors, scalings.pop()


@torch.no_grad()
def merge_adapter(
    base: Mapping[str, torch.Tensor], adapter: Mapping[str, torch.Tensor], scaling: float, source: str
) -> dict[str, torch.Tensor]:
    """Full encoder weights from base weights and an adapter file's tensors (see :func:`adapter_state`).

    Every LoRA pair merges into its module's weight as ``W + (B @ A) * scaling`` (the same operations as
    peft's merge, so the result equals a full export of the adapted encoder); every other adapter tensor (the
    trained extras) replaces the base tensor of that name. ``source`` names the file in errors, which list
    unpaired factors, unknown names and shape mismatches.
    """
    state = dict(base)
    problems: list[str] = []
    modules = sorted({k[: -len(LORA_A)] for k in adapter if k.endswith(LORA_A)})
    unpaired = sorted(
        {k for k in adapter if k.endswith(LORA_B) and k[: -len(LORA_B)] not in modules}
        | {m + LORA_A for m in modules if m + LORA_B not in adapter}
    )
    if unpaired:
        problems.append(f"LoRA factors without their pair: {', '.join(unpaired)}")
    for module in modules:
        if module + LORA_B not in adapter:
            continue
        a, b = adapter[module + LORA_A], adapter[module + LORA_B]  # [r, in], [out, r]
        weight = state.get(f"{module}.weight")
        if weight is None:
            problems.append(f"{module}: no such linear layer in the encoder")
        elif a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1] or (b.shape[0], a.shape[1]) != weight.shape:
            problems.append(
                f"{module}: lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)} do not fit its weight "
                f"{tuple(weight.shape)}"
            )
        else:
            delta = (b.to(weight.device) @ a.to(weight.device)) * scaling  # [out, in]
            state[f"{module}.weight"] = weight + delta.to(weight.dtype)
    for key, value in adapter.items():
        if key.endswith((LORA_A, LORA_B)):
            continue
        if key not in state:
            problems.append(f"{key}: not an encoder tensor")
        elif state[key].shape != value.shape:
            problems.append(f"{key}: shape {tuple(value.shape)}, the encoder's is {tuple(state[key].shape)}")
        else:
            state[key] = value.to(device=state[key].device, dtype=state[key].dtype)
    if problems:
        raise CheckpointError(f"{source}: the adapter does not fit the encoder: " + "; ".join(problems))
    return state


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


def resolve_checkpoint_dir(path: str | Path) -> Path:
    """The checkpoint folder ``path`` stands for: ``path`` itself when it holds ``lbind.json``; for a run folder
    (what ``lbind train --output`` writes), its ``final/`` checkpoint, else its newest ``step-*`` one, with one
    INFO line saying which was taken. Anything else comes back unchanged, for :func:`read_meta` to report."""
    path = Path(path)
    if (path / META_FILE).is_file() or not path.is_dir():
        return path
    chosen = path / FINAL_NAME
    if not (chosen / META_FILE).is_file():
        steps = [
            (int(m.group(1)), child)
            for child in path.iterdir()
            if (m := STEP_PATTERN.fullmatch(child.name)) is not None and (child / META_FILE).is_file()
        ]
        if not steps:
            return path
        chosen = max(steps)[1]
    log.info("%s is a run folder: using its checkpoint %s", path, chosen)
    return chosen
