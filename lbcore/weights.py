"""Encoder weights inside a checkpoint folder: find the file an ``lbind.json`` entry names, read it safely and
load it into an encoder (full weights as they are, LoRA adapters merged onto their verified base).

Every weights file must lie inside its checkpoint folder (no absolute path, no ``..``, no symbolic link leading
out), must hold the modality it is listed under (lbind records the modality in each file's safetensors
metadata; files from before that carry none and load under their entry's name), and must hold finite tensors of
the shapes the encoder expects. Anything else is a :class:`~lbcore.errors.CheckpointError` naming the file and
the field or tensor at fault.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from lbcore.checkpoint import META_FILE, read_meta, state_sha256
from lbcore.convert.clip import load_clip_vision_into
from lbcore.convert.languagebind import load_languagebind_into
from lbcore.errors import CheckpointError
from lbcore.hub import checkpoint_folder, parse_hub_id
from lbcore.lora import LORA_A, LORA_B, base_encoder_state, merge_adapter

if TYPE_CHECKING:
    from lbcore.modality import Modality

log = logging.getLogger(__name__)

__all__ = [
    "BASE_KINDS",
    "base_reference",
    "check_finite_state",
    "check_shapes_before_building",
    "load_base",
    "load_encoder_weights",
    "read_tensors",
    "weight_file",
]

BASE_KINDS = ("clip", "languagebind", "lbind")
MODALITY_KEY = "modality"  # the safetensors metadata key that names the modality a weights file holds


def base_reference(init: str | None) -> str | None:
    """The base reference an adapter-only checkpoint records for an encoder initialised from ``init`` (the
    trainer's ``init`` spec): ``clip:``, ``languagebind:`` or ``lbind:`` with the path made absolute, or a
    hub id as ``hf://org/name``; None for ``scratch`` and for sources :func:`load_base` cannot load back."""
    if not init or init == "scratch":
        return None
    kind, sep, rest = init.partition(":")
    if not sep or not rest or kind not in BASE_KINDS:
        return None
    hub = parse_hub_id(rest, bare=kind != "lbind" and not Path(rest).expanduser().exists())
    return f"{kind}:{hub or Path(rest).expanduser().resolve()}"


def load_base(encoder: nn.Module, source: str, modality: Modality, *, seen: frozenset[Path] = frozenset()) -> None:
    """Load the base weights ``source`` names into ``encoder`` (built by ``modality``).

    ``clip:PATH``: a transformers CLIP vision checkpoint (:func:`lbcore.convert.load_clip_vision_into`: position
    embedding resized to the encoder's grid, video's temporal parts copied from the spatial ones);
    ``languagebind:PATH``: a released LanguageBind checkpoint of this modality, its LoRA merged
    (:func:`lbcore.convert.load_languagebind_into`); ``lbind:DIR``: this modality's weights in another lbind
    checkpoint (full, or itself an adapter on a base). PATH may be a hub id (:mod:`lbcore.hub`). Raises
    :class:`CheckpointError` naming the source.
    """
    kind, sep, rest = source.partition(":")
    if not sep or not rest or kind not in BASE_KINDS:
        raise CheckpointError(f"base source {source!r}: expected one of {', '.join(k + ':PATH' for k in BASE_KINDS)}")
    if kind == "clip":
        for line in load_clip_vision_into(encoder, rest):  # a str: the loader resolves hub ids
            log.debug("%s base %s: %s", modality.name, source, line)
        return
    if kind == "languagebind":
        load_languagebind_into(encoder, modality, rest)
        return
    directory = checkpoint_folder(rest).resolve()
    if directory in seen:
        raise CheckpointError(f"{directory}: base checkpoints refer to each other in a cycle")
    meta = read_meta(directory)
    spec = meta["modalities"].get(modality.name)
    if not isinstance(spec, dict):
        raise CheckpointError(
            f"{directory}: holds no {modality.name!r} weights to use as a base (it has: "
            f"{', '.join(sorted(meta['modalities'])) or 'none'})"
        )
    load_encoder_weights(directory, spec, encoder, modality, seen=seen | {directory})


def weight_file(directory: Path, spec: Mapping[str, Any], name: str) -> tuple[Path, str]:
    """(path, kind) of the weights an ``lbind.json`` entry names: ``file`` (default ``<name>.safetensors``) and
    ``weights`` (``"full"`` or ``"adapter"``; the first format put the file name there).

    The file must be a relative path inside ``directory`` once symbolic links are resolved, and a regular file. The
    one link allowed out: a Hugging Face cache snapshot (``models--org--name/snapshots/<commit>/``) links each file
    to the same repository's ``blobs/`` folder.
    """
    where = f"{directory / META_FILE}: modalities.{name}"
    kind = spec.get("weights", "full")
    file = spec.get("file")
    if isinstance(kind, str) and kind.endswith(".safetensors"):  # first format: "weights" named the file
        file, kind = kind, "full"
    if kind not in ("full", "adapter"):
        raise CheckpointError(f"{where}.weights is {kind!r}; expected 'full' or 'adapter'")
    file = f"{name}.safetensors" if file is None else file
    if not isinstance(file, str) or not file or "\0" in file:
        raise CheckpointError(f"{where}.file is {file!r}; expected the weights file's name inside the checkpoint")
    posix, windows = PurePosixPath(file), PureWindowsPath(file)
    if posix.is_absolute() or windows.is_absolute() or windows.drive or ".." in posix.parts or ".." in windows.parts:
        raise CheckpointError(
            f"{where}.file is {file!r}: weights must be named by a relative path inside the checkpoint folder "
            "(no absolute path, no '..')"
        )
    root = directory.resolve()
    path = directory / file
    resolved = path.resolve()
    blobs = root.parent.parent / "blobs" if root.parent.name == "snapshots" else None
    if not resolved.is_relative_to(root) and not (blobs is not None and resolved.parent == blobs):
        raise CheckpointError(f"{path}: a symbolic link leading out of the checkpoint folder (to {resolved})")
    if not resolved.is_file():
        problem = "missing" if not resolved.exists() else "not a regular file"
        raise CheckpointError(f"{path}: the {name} weights file is {problem} (named by {where}.file)")
    return path, str(kind)


def check_shapes_before_building(build: Any, directory: Path, spec: Mapping[str, Any], name: str) -> None:
    """For full weights, compare the encoder ``build()`` would make (built on the meta device: no memory) with the
    tensor shapes in the weights file's header, so that a config edited to a huge size is refused before anything
    that size is allocated. Encoders that cannot be built on the meta device are checked after building instead."""
    path, kind = weight_file(directory, spec, name)
    if kind != "full":
        return
    try:
        with torch.device("meta"):
            skeleton = build()
    except Exception as err:
        log.debug("%s: cannot build on the meta device (%s); shapes are checked after loading", name, err)
        return
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            shapes = {key: list(f.get_slice(key).get_shape()) for key in f.keys()}
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{path}: cannot read encoder weights: {err}") from err
    for key, tensor in skeleton.state_dict().items():
        if key in shapes and shapes[key] != list(tensor.shape):
            raise CheckpointError(
                f"{path}: does not fit the {name} encoder built from the saved config: {key} is "
                f"{shapes[key]} in the file, {list(tensor.shape)} in the encoder"
            )


def check_finite_state(
    state: Mapping[str, torch.Tensor],
    where: str | Path,
    advice: str = "the weights are broken (a diverged run?); use an earlier checkpoint",
) -> None:
    """Raise :class:`CheckpointError` naming ``where`` and the first tensor that holds NaN or infinity."""
    for key, tensor in state.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int(tensor.numel() - torch.isfinite(tensor).sum().item())
            raise CheckpointError(
                f"{where}: tensor {key!r} holds {bad} NaN or infinite value(s) of {tensor.numel()}; {advice}"
            )


def read_tensors(path: Path, modality: str | None = None) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file (on the CPU), checked finite; with ``modality``, the file's recorded
    modality (safetensors metadata, when present) must be that one."""
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            recorded = (f.metadata() or {}).get(MODALITY_KEY)
            if modality is not None and recorded is not None and recorded != modality:
                raise CheckpointError(
                    f"{path}: holds {recorded!r} weights but is listed under modality {modality!r} in {META_FILE} "
                    "(a renamed entry?); an encoder must load its own modality's weights"
                )
            state = {key: f.get_tensor(key) for key in f.keys()}
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{path}: cannot read encoder weights: {err}") from err
    check_finite_state(state, path)
    return state


def _load_state(encoder: nn.Module, state: Mapping[str, torch.Tensor], path: Path, name: str, strict: bool) -> Any:
    try:
        return encoder.load_state_dict(state, strict=strict)
    except RuntimeError as err:  # size mismatches (and strict-mode key mismatches)
        detail = "; ".join(line.strip() for line in str(err).splitlines()[1:6]) or str(err)
        raise CheckpointError(f"{path}: does not fit the {name} encoder built from the saved config: {detail}") from err


def _scaling(spec: Mapping[str, Any], where: str) -> float:
    lora = spec.get("lora") or {}
    scaling = lora.get("scaling") if isinstance(lora, Mapping) else None
    if not isinstance(scaling, (int, float)) or isinstance(scaling, bool) or not math.isfinite(scaling):
        raise CheckpointError(f"{where}.lora.scaling: expected the (finite) number the LoRA update is scaled by")
    return float(scaling)


def load_encoder_weights(
    directory: Path,
    spec: Mapping[str, Any],
    encoder: nn.Module,
    modality: Modality,
    *,
    base_overrides: Mapping[str, str] | None = None,
    seen: frozenset[Path] = frozenset(),
) -> None:
    """Fill ``encoder`` (built by ``modality``) with that modality's weights in the checkpoint ``directory``
    (``spec``: its ``lbind.json`` entry): full weights as they are, adapter weights merged onto their verified
    base. ``base_overrides`` replace recorded base sources by modality name."""
    name = modality.name
    where = f"{directory / META_FILE}: modalities.{name}"
    path, kind = weight_file(directory, spec, name)
    state = read_tensors(path, name)
    if kind == "full":
        result = _load_state(encoder, state, path, name, strict=False)
        if result.missing_keys or result.unexpected_keys:
            raise CheckpointError(
                f"{path}: does not fit the {name} encoder built from the saved config: "
                f"missing {result.missing_keys or 'none'}, unexpected {result.unexpected_keys or 'none'}"
            )
        return
    ref = spec.get("base")
    if not isinstance(ref, dict) or not isinstance(ref.get("source"), str) or not isinstance(ref.get("sha256"), str):
        raise CheckpointError(f"{where}.base: expected {{source, sha256}} naming the weights the adapter applies to")
    scaling = _scaling(spec, where)
    source = (base_overrides or {}).get(name) or ref["source"]
    try:
        load_base(encoder, source, modality, seen=seen | {directory.resolve()})
    except CheckpointError as err:
        raise CheckpointError(
            f"{path}: the {name} adapter needs its base weights {source}, which cannot be loaded: {err}. If they "
            f"moved, pass base={{{name!r}: '<clip:|lbind:>NEW_PATH'}} to lbcore.load / from_pretrained"
        ) from err
    base = base_encoder_state(encoder)
    extras = [k for k in state if not k.endswith((LORA_A, LORA_B))]
    digest = state_sha256({k: v for k, v in base.items() if k not in set(extras)})
    if digest != ref["sha256"]:
        raise CheckpointError(
            f"{path}: the {name} adapter was trained on base weights with sha256 {ref['sha256']}, but {source} "
            f"holds weights with sha256 {digest}: a different model (or another version of it); give the base "
            f"the adapter was trained on"
        )
    _load_state(encoder, merge_adapter(base, state, scaling, str(path)), path, name, strict=True)
