"""A checkpoint's modalities through their installed plugins: which plugin provides a modality (recorded in
``lbind.json``), and one ``lbind.json`` entry rebuilt into its configured modality and encoder with its weights."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import nn

from lbcore.checkpoint import META_FILE, read_meta, resolve_checkpoint_dir
from lbcore.config import validate_model
from lbcore.errors import CheckpointError, ModalityNotFoundError
from lbcore.loss import LogitScale
from lbcore.modality import Modality
from lbcore.plugins import default_registry
from lbcore.weights import check_shapes_before_building, load_encoder_weights

__all__ = ["checkpoint_modality", "configured_modality", "load_modality", "plugin_info"]

log = logging.getLogger(__name__)


def plugin_info(modality: Modality) -> dict[str, Any]:
    """Which plugin provides ``modality`` (name, distribution, version), as recorded in ``lbind.json``."""
    info: dict[str, Any] = {"module": type(modality).__module__, "class": type(modality).__qualname__}
    try:
        reg = default_registry().registered(modality.name)
    except ModalityNotFoundError:
        return {"plugin": None, "distribution": None, "version": None, **info}
    return {
        "plugin": reg.plugin.name,
        "distribution": reg.plugin.distribution,
        "version": reg.plugin.version,
        **info,
    }


def configured_modality(directory: Path, name: str, spec: Mapping[str, Any]) -> Modality:
    """The modality of one ``lbind.json`` entry, configured as recorded, through its installed plugin (no weights)."""
    try:
        reg = default_registry().registered(name)
    except ModalityNotFoundError as err:
        raise ModalityNotFoundError(
            f"{directory}: the checkpoint needs modality {name!r} from plugin "
            f"{spec.get('distribution') or spec.get('plugin') or spec.get('module')!r}: {err}"
        ) from err
    if spec.get("version") and reg.plugin.version and spec["version"] != reg.plugin.version:
        log.warning(
            "%s: %s was saved with plugin %s %s; %s is installed",
            directory,
            name,
            spec.get("plugin"),
            spec["version"],
            reg.plugin.version,
        )
    config = validate_model(
        reg.cls.Config, spec.get("config", {}), ("modalities", name, "config"), str(directory / META_FILE)
    )
    return reg.cls(config)


def checkpoint_modality(directory: str | Path, name: str) -> Modality:
    """Modality ``name`` of a checkpoint (or run folder / hub id), configured as it was trained, without loading
    any weights: what preprocessing needs (e.g. DataLoader workers started before the model is loaded)."""
    directory = resolve_checkpoint_dir(directory)
    specs = read_meta(directory)["modalities"]
    if name not in specs:
        raise ModalityNotFoundError(
            f"{directory}: the checkpoint has no modality {name!r}; it has {', '.join(sorted(specs)) or 'none'}"
        )
    return configured_modality(directory, name, specs[name])


def load_modality(
    directory: Path, name: str, spec: Mapping[str, Any], embed_dim: int, base: Mapping[str, str] | None
) -> tuple[Modality, nn.Module, float]:
    """(modality, encoder with its weights, logit scale) of one ``lbind.json`` entry, through its installed plugin."""
    where = f"{directory / META_FILE}: modalities.{name}"
    scale = spec.get("logit_scale", LogitScale().value.item())
    modality = configured_modality(directory, name, spec)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise CheckpointError(f"{where}.logit_scale is {scale!r}; expected a finite number (log inverse temperature)")
    check_shapes_before_building(lambda: modality.build_encoder(embed_dim), directory, spec, name)
    encoder = modality.build_encoder(embed_dim)
    load_encoder_weights(directory, spec, encoder, modality, base_overrides=base)
    return modality, encoder, float(scale)
