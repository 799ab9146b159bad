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
  merges. A scratch-initialised encoder has no base to refer to and is always saved in full. (The adapter
  tensors themselves are taken and merged by :mod:`lbcore.lora`.)

Checkpoints with adapter weights are format version 2; full-weight checkpoints stay version 1.

Directories are written atomically: everything goes into a temporary sibling that is renamed into place, so a
reader (or a resumed run after a crash) sees a complete checkpoint or none; a failed write (a full disk) removes
the temporary sibling. Weights are safetensors; nothing in a checkpoint is unpickled (``train_state/`` is
safetensors and JSON too, see :mod:`lbcore.statefiles`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from lbcore.deprecation import moved_names
from lbcore.errors import CheckpointError
from lbcore.hub import checkpoint_folder

log = logging.getLogger(__name__)

FORMAT = "lbind-checkpoint"
FORMAT_VERSION = 2  # the newest format this lbind reads
FULL_FORMAT_VERSION = 1  # written when every modality holds full weights
ADAPTER_FORMAT_VERSION = 2  # written when some modality holds LoRA adapter weights
META_FILE = "lbind.json"
TRAIN_STATE_DIR = "train_state"
PROGRESS_FILE = "progress.json"
FINAL_NAME = "final"
STEP_PATTERN = re.compile(r"step-(\d+)")

# Adapter helpers that lived here until they moved to lbcore.lora; the old import path works for one release.
_MOVED_TO_LORA = (
    "LORA_A",
    "LORA_B",
    "adapter_state",
    "base_encoder_state",
    "export_encoder_state",
    "lora_layers",
    "merge_adapter",
    "split_extras",
)


__getattr__ = moved_names(__name__, dict.fromkeys(_MOVED_TO_LORA, "lbcore.lora"))


def step_dir_name(step: int) -> str:
    """Name of a periodic checkpoint folder (zero-padded so that names sort by step)."""
    return f"step-{step:08d}"


def remove_tree(path: Path) -> None:
    """Remove a file, link or folder tree at ``path`` (nothing there: nothing to do)."""
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
        remove_tree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        remove_tree(old)


@contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on success it becomes ``target``, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.parent / f".tmp-{target.name}-{os.getpid()}"
    if tmp.exists():
        remove_tree(tmp)
    tmp.mkdir()
    try:
        yield tmp
        replace_dir(tmp, target)
    finally:
        if tmp.exists():
            remove_tree(tmp)


def write_json(path: Path, data: Any) -> None:
    """Write JSON through a temporary file and a rename; on failure (a full disk) the temporary file is removed
    and ``path`` keeps its old content."""
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"  # before opening anything: unserialisable data
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise CheckpointError(
            f"{path}: format_version is {version!r}; expected an integer from 1 to {FORMAT_VERSION} (written by lbind)"
        )
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint format version {version} is newer than this lbind supports ({FORMAT_VERSION}); "
            "upgrade lbind"
        )
    for key in ("anchor", "modalities"):
        if key not in meta:
            raise CheckpointError(f"{path}: missing the {key!r} section")
        if not isinstance(meta[key], dict):
            raise CheckpointError(f"{path}: {key} is a {type(meta[key]).__name__}; expected a mapping")
    if not meta["modalities"]:
        raise CheckpointError(f"{path}: modalities is empty; a checkpoint holds at least one encoder")
    for name, spec in meta["modalities"].items():
        if not isinstance(spec, dict):
            raise CheckpointError(f"{path}: modalities.{name} is a {type(spec).__name__}; expected a mapping")
    return meta


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


def checkpoint_step(directory: Path) -> int | None:
    """The optimiser step a run checkpoint was written at (None if it has no resumable train state)."""
    progress = directory / TRAIN_STATE_DIR / PROGRESS_FILE
    if not (directory / META_FILE).is_file() or not progress.is_file():
        return None
    try:
        step = json.loads(progress.read_text(encoding="utf-8"))["step"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{progress}: unreadable training progress: {err}") from err
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise CheckpointError(f"{progress}: step is {step!r}; expected a non-negative integer")
    return step


def resumable_checkpoints(output_dir: str | Path) -> list[Path]:
    """The run checkpoints of ``output_dir`` that hold a train state, newest step first (``final`` first on a
    tie). One whose progress record cannot be read is left out with a warning."""
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        return []
    found: list[tuple[int, int, Path]] = []
    for child in output_dir.iterdir():
        if not child.is_dir() or not (child.name == FINAL_NAME or STEP_PATTERN.fullmatch(child.name)):
            continue
        try:
            step = checkpoint_step(child)
        except CheckpointError as err:
            log.warning("%s: not resumable: %s", child, err)
            continue
        if step is not None:
            found.append((step, int(child.name == FINAL_NAME), child))
    return [path for *_, path in sorted(found, key=lambda item: item[:2], reverse=True)]


def find_latest(output_dir: str | Path) -> Path | None:
    """The resumable checkpoint with the highest step in a run's output folder (``final`` wins a tie)."""
    candidates = resumable_checkpoints(output_dir)
    return candidates[0] if candidates else None


def prune_step_dirs(output_dir: Path, keep: int) -> None:
    """Delete all but the newest ``keep`` periodic checkpoints (``final`` is never touched)."""
    dirs = sorted(
        (int(m.group(1)), p)
        for p in output_dir.iterdir()
        if p.is_dir() and (m := STEP_PATTERN.fullmatch(p.name)) is not None
    )
    for _, path in dirs[: max(len(dirs) - keep, 0)]:
        log.info("removing old checkpoint %s", path)
        remove_tree(path)


def resolve_checkpoint_dir(path: str | os.PathLike[str]) -> Path:
    """The checkpoint folder ``path`` stands for: a hub id ``hf://org/name[@revision]`` resolved through the
    Hugging Face cache (:func:`lbcore.hub.checkpoint_folder`); ``path`` itself when it holds ``lbind.json``; for a
    run folder (what ``lbind train --output`` writes), its ``final/`` checkpoint, else its newest ``step-*`` one,
    with one INFO line saying which was taken. Anything else comes back unchanged, for :func:`read_meta` to report."""
    path = checkpoint_folder(path)
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
