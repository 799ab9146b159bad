"""Pickle-free training state: encoders, optimiser, random generators and gradient scaler as safetensors + JSON.

What a run checkpoint's ``train_state/`` holds besides the temperatures, schedule and progress (see
:mod:`lbcore.runstate`), written by lbind itself so that resuming never unpickles anything:

- ``encoder-<modality>.safetensors``: every live encoder tensor (LoRA adapters unmerged), as training holds it;
- ``optimizer.safetensors`` + ``optimizer.json``: the optimiser's per-parameter tensors (``<index>/<name>``) and
  its parameter groups and any non-tensor state;
- ``rng-<process>.safetensors``: each process's torch (CPU and CUDA), numpy and Python generator states, their
  non-tensor parts in the file's metadata;
- ``scaler.json``: the fp16 gradient scaler (only under fp16).

Each ``read_*`` function checks what it reads against the live objects (names, shapes, sizes, finiteness) and
raises :class:`~lbcore.errors.CheckpointError` naming the file, so a corrupt or tampered file is an error before
anything is changed; the matching ``apply_*`` or ``load_state_dict`` then sets it.
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from lbcore.checkpoint import write_json
from lbcore.errors import CheckpointError

log = logging.getLogger(__name__)

__all__ = [
    "OPTIMIZER_FILE",
    "OPTIMIZER_TENSORS",
    "SCALER_FILE",
    "RngState",
    "apply_rng",
    "encoder_file",
    "read_encoder",
    "read_json",
    "read_optimizer",
    "read_rng",
    "read_tensors",
    "rng_file",
    "save_encoder",
    "save_optimizer",
    "save_rng",
]

OPTIMIZER_TENSORS = "optimizer.safetensors"
OPTIMIZER_FILE = "optimizer.json"
SCALER_FILE = "scaler.json"
_MT_WORDS = 624  # Mersenne Twister state words (numpy and Python); Python adds the position as a 625th


def encoder_file(name: str) -> str:
    return f"encoder-{name}.safetensors"


def rng_file(rank: int) -> str:
    return f"rng-{rank}.safetensors"


def read_json(path: Path) -> Any:
    """A JSON file of the train state; unreadable or invalid JSON is a :class:`CheckpointError` naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: missing (the train state is incomplete)") from err
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{path}: unreadable train state: {err}") from err


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors on the CPU, metadata) of a safetensors file, every floating tensor checked finite."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            metadata = dict(f.metadata() or {})
            tensors = {key: f.get_tensor(key) for key in f.keys()}
    except FileNotFoundError as err:
        raise CheckpointError(f"{path}: missing (the train state is incomplete)") from err
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{path}: unreadable train state: {err}") from err
    for key, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise CheckpointError(f"{path}: tensor {key!r} holds NaN or infinite values")
    return tensors, metadata


def _save(tensors: Mapping[str, torch.Tensor], path: Path, metadata: Mapping[str, str] | None = None) -> None:
    save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}, str(path), metadata)


# -- encoders ------------------------------------------------------------------------------------------------
def save_encoder(encoder: nn.Module, directory: Path, name: str) -> None:
    """Every tensor of ``encoder``'s state dict (copied, so tied tensors are stored apart)."""
    _save(encoder.state_dict(), directory / encoder_file(name))


def read_encoder(encoder: nn.Module, directory: Path, name: str) -> dict[str, torch.Tensor]:
    """The saved state of ``encoder``, checked to have exactly its tensor names and shapes."""
    path = directory / encoder_file(name)
    state, _ = read_tensors(path)
    live = encoder.state_dict()
    missing, unexpected = sorted(set(live) - set(state)), sorted(set(state) - set(live))
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: does not fit the {name} encoder: missing {missing[:5] or 'none'}, "
            f"unexpected {unexpected[:5] or 'none'}"
        )
    for key, value in live.items():
        if state[key].shape != value.shape:
            raise CheckpointError(f"{path}: {key} has shape {list(state[key].shape)}, expected {list(value.shape)}")
    return state


# -- optimiser -----------------------------------------------------------------------------------------------
def save_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> None:
    """``optimizer.state_dict()`` as tensors (``<param index>/<name>``) plus JSON groups and scalar state."""
    state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{index}/{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    _save(tensors, directory / OPTIMIZER_TENSORS)
    write_json(directory / OPTIMIZER_FILE, {"param_groups": state["param_groups"], "scalars": scalars})


def read_optimizer(optimizer: torch.optim.Optimizer, directory: Path) -> dict[str, Any]:
    """A state dict for ``optimizer.load_state_dict``, checked against the live optimiser: the same groups with
    the same number of parameters, per-parameter tensors of their parameter's shape (or scalars)."""
    path = directory / OPTIMIZER_FILE
    meta = read_json(path)
    tensors, _ = read_tensors(directory / OPTIMIZER_TENSORS)
    groups = meta.get("param_groups") if isinstance(meta, dict) else None
    live_groups = optimizer.state_dict()["param_groups"]
    if not isinstance(groups, list) or not all(isinstance(g, dict) for g in groups):
        raise CheckpointError(f"{path}: param_groups must be a list of mappings")
    sizes = [len(g.get("params") or []) for g in groups]
    if sizes != [len(g["params"]) for g in live_groups]:
        raise CheckpointError(
            f"{path}: parameter groups of sizes {sizes}, but this run's optimiser has "
            f"{[len(g['params']) for g in live_groups]}"
        )
    shapes = {
        index: param.shape
        for live, group in zip(live_groups, optimizer.param_groups, strict=True)
        for index, param in zip(live["params"], group["params"], strict=True)
    }
    for group, live in zip(groups, live_groups, strict=True):
        if group["params"] != live["params"]:
            raise CheckpointError(f"{path}: parameter indices {group['params'][:5]}... differ from this run's")
        if isinstance(group.get("betas"), list):
            group["betas"] = tuple(group["betas"])
    state: dict[int, dict[str, Any]] = {}
    for key, tensor in tensors.items():
        index, _, name = key.partition("/")
        if not index.isdigit() or int(index) not in shapes or not name:
            raise CheckpointError(f"{directory / OPTIMIZER_TENSORS}: unexpected tensor {key!r}")
        if tensor.dim() > 0 and tensor.shape != shapes[int(index)]:
            raise CheckpointError(
                f"{directory / OPTIMIZER_TENSORS}: {key} has shape {list(tensor.shape)}, expected "
                f"{list(shapes[int(index)])}"
            )
        state.setdefault(int(index), {})[name] = tensor
    scalars = meta.get("scalars") or {}
    if not isinstance(scalars, dict):
        raise CheckpointError(f"{path}: scalars must be a mapping")
    for index, values in scalars.items():
        if not (index.isdigit() and int(index) in shapes and isinstance(values, dict)):
            raise CheckpointError(f"{path}: unexpected scalar state for parameter {index!r}")
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": groups}


# -- random generators ---------------------------------------------------------------------------------------
@dataclass
class RngState:
    """One process's generator states, read and checked (see :func:`read_rng`)."""

    torch_cpu: torch.Tensor
    cuda: list[torch.Tensor]
    numpy: tuple[str, np.ndarray, int, int, float]
    python: tuple[int, tuple[int, ...], float | None]


def save_rng(directory: Path, rank: int) -> None:
    """This process's torch (CPU, and CUDA when in use), numpy and Python generator states."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda/{i}"] = state
    kind, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    tensors["numpy"] = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    version, internal, gauss_next = random.getstate()
    tensors["python"] = torch.tensor(internal, dtype=torch.int64)
    numpy_meta = {"kind": kind, "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}
    metadata = {"numpy": json.dumps(numpy_meta), "python": json.dumps({"version": version, "gauss_next": gauss_next})}
    _save(tensors, directory / rng_file(rank), metadata)


def _words(tensor: torch.Tensor | None, count: int, path: Path, what: str) -> tuple[int, ...]:
    if tensor is None or tensor.dtype != torch.int64 or tuple(tensor.shape) != (count,):
        raise CheckpointError(f"{path}: the {what} generator state must be {count} int64 words")
    words = tuple(int(v) for v in tensor.tolist())
    if any(not 0 <= w < 2**32 for w in words[:_MT_WORDS]):
        raise CheckpointError(f"{path}: the {what} generator state holds words outside 0..2^32-1")
    return words


def read_rng(directory: Path, rank: int) -> RngState:
    """This process's saved generator states, checked against the live generators' sizes."""
    path = directory / rng_file(rank)
    tensors, metadata = read_tensors(path)
    cpu = tensors.get("torch")
    live = torch.get_rng_state()
    if cpu is None or cpu.dtype != torch.uint8 or cpu.shape != live.shape:
        raise CheckpointError(f"{path}: the torch generator state must be {live.numel()} bytes")
    cuda = [tensors[k] for k in sorted((k for k in tensors if k.startswith("cuda/")), key=lambda k: int(k[5:]))]
    try:
        numpy_meta = json.loads(metadata["numpy"])
        python_meta = json.loads(metadata["python"])
        kind, pos = str(numpy_meta["kind"]), int(numpy_meta["pos"])
        has_gauss, cached = int(numpy_meta["has_gauss"]), float(numpy_meta["cached_gaussian"])
        version, gauss_next = int(python_meta["version"]), python_meta["gauss_next"]
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable generator metadata: {err}") from err
    keys = np.array(_words(tensors.get("numpy"), _MT_WORDS, path, "numpy"), dtype=np.uint32)
    internal = _words(tensors.get("python"), _MT_WORDS + 1, path, "Python")
    if kind != "MT19937" or not 0 <= pos <= _MT_WORDS or version != 3 or not 0 <= internal[-1] <= _MT_WORDS:
        raise CheckpointError(f"{path}: not a Mersenne Twister generator state")
    if gauss_next is not None and not isinstance(gauss_next, float):
        raise CheckpointError(f"{path}: the Python generator's gauss_next must be a number or null")
    return RngState(cpu, cuda, (kind, keys, pos, has_gauss, cached), (version, internal, gauss_next))


def apply_rng(state: RngState) -> None:
    """Set every generator to ``state`` (CUDA generators only when CUDA is in use and the counts agree)."""
    torch.set_rng_state(state.torch_cpu)
    if state.cuda and torch.cuda.is_available():
        if len(state.cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state.cuda)
        else:
            log.warning(
                "resume: %d CUDA generator states saved, %d devices now; CUDA generators not restored",
                len(state.cuda),
                torch.cuda.device_count(),
            )
    np.random.set_state(state.numpy)
    random.setstate(state.python)
