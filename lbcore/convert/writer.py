"""A released LanguageBind checkpoint -> an lbind checkpoint folder (``lbind convert languagebind``).

The release's vision tower (LoRA merged) becomes its modality's encoder, with the preprocessing settings of its
vision_config in the modality config, and its text tower becomes a CLIP anchor folder, ``anchor/``, that every
modality converted into the same folder shares (checked by fingerprint). This is the one part of
:mod:`lbcore.convert` that needs :class:`lbcore.model.BindModel`; :mod:`lbcore.convert`'s ``__init__`` does not
import it, so that :mod:`lbcore.model` can import the weight loaders without a cycle.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from lbcore.anchor import Anchor
from lbcore.checkpoint import META_FILE, atomic_dir, read_meta, write_json
from lbcore.config import AnchorConfig
from lbcore.convert.languagebind import (
    LanguageBindEncoder,
    LanguageBindRelease,
    languagebind_modality_config,
    languagebind_settings,
    load_release_encoder,
    map_languagebind_vision_keys,
    read_languagebind,
)
from lbcore.convert.text_tower import write_languagebind_anchor
from lbcore.convert.weights import read_json
from lbcore.errors import AnchorError, CheckpointError
from lbcore.hub import hub_origin
from lbcore.loss import LogitScale
from lbcore.modality import Modality
from lbcore.model import BindModel
from lbcore.modelcard import write_model_card

logger = logging.getLogger(__name__)

ANCHOR_DIR = "anchor"
# lbind.json names the converted anchor relative to the checkpoint folder (BindModel resolves it there).
ANCHOR_NAME = f"./{ANCHOR_DIR}"


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


def _existing_checkpoint(output: Path) -> dict[str, Any] | None:
    if (output / META_FILE).is_file():
        return read_meta(output)
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise CheckpointError(
            f"{output}: exists and is not an lbind checkpoint (no {META_FILE}); choose a new or empty folder"
        )
    return None


def _anchor_folder(output: Path, anchor_meta: Mapping[str, Any]) -> Path:
    name = str((anchor_meta.get("config") or {}).get("name") or anchor_meta.get("name") or "")
    return (output / name).resolve() if name.startswith(("./", "../")) else Path(name)


def _release_encoder(release: LanguageBindRelease) -> tuple[Modality, nn.Module, LanguageBindEncoder, list[str]]:
    """The release's modality (configured to reproduce it), its encoder with the release's weights, the converted
    vision tower and the report so far."""
    modality = release.modality_cls(languagebind_modality_config(release.modality_cls, release))
    converted = map_languagebind_vision_keys(release.state, release.weights)
    encoder = modality.build_encoder(converted.embed_dim)
    load_release_encoder(encoder, converted.state, release.weights)
    report = list(converted.report)
    if release.lora:
        report.append(
            f"merged LoRA adapters into {release.lora['modules']} projections "
            f"(rank {release.lora['rank']}, alpha {release.lora['alpha']:g})"
        )
    return modality, encoder, converted, report


def _stage_anchor(
    release: LanguageBindRelease, staged: Path, tokenizer: str | Path | None, embed_dim: int, report: list[str]
) -> tuple[int, str]:
    """Write the release's text tower as an anchor folder at ``staged`` and load it once, to fingerprint it
    exactly as :func:`lbcore.load` will. Returns the token limit and the fingerprint."""
    max_length, tok_report = write_languagebind_anchor(release, staged, tokenizer)
    report.extend(tok_report)
    try:
        anchor = Anchor.from_pretrained(str(staged), max_length=max_length)
    except AnchorError as err:
        raise CheckpointError(f"{release.source}: the converted text tower does not load as an anchor: {err}") from err
    if anchor.embed_dim != embed_dim:
        raise CheckpointError(
            f"{release.weights}: text projection gives {anchor.embed_dim}-d embeddings, visual projection {embed_dim}-d"
        )
    return max_length, anchor.fingerprint


def _add_modality(
    output: Path, existing: dict[str, Any], model: BindModel, name: str, provenance: dict[str, Any]
) -> None:
    """Add (or replace) one modality in an existing checkpoint folder: its files, then lbind.json.

    The one-modality ``model`` is written the usual way into a temporary folder inside ``output``; its files
    (whatever the checkpoint format puts there) move into ``output`` and its ``modalities`` entry joins the
    existing lbind.json, which is replaced last and atomically.
    """
    with tempfile.TemporaryDirectory(prefix=f".add-{name}-", dir=output) as tmp:
        staged = Path(tmp)
        model.write_files(staged)
        new_meta = read_json(staged / META_FILE)
        for path in staged.iterdir():
            if path.name != META_FILE:
                os.replace(path, output / path.name)
    meta = dict(existing)
    meta["format_version"] = max(int(existing.get("format_version", 1)), int(new_meta.get("format_version", 1)))
    meta["modalities"] = {**existing["modalities"], name: new_meta["modalities"][name]}
    converted = meta.get("converted")
    meta["converted"] = {**(converted if isinstance(converted, dict) else {}), name: provenance}
    write_json(output / META_FILE, meta)
    write_model_card(output, meta)  # the staged card named only the added modality


def _join_existing(
    output: Path, existing: dict[str, Any], model: BindModel, fingerprint: str, source: Path, provenance: dict[str, Any]
) -> tuple[Path, list[str]]:
    """Add the one-modality ``model`` (anchor ``fingerprint``) to the checkpoint at ``output`` if it holds the same
    text tower; return the anchor folder that checkpoint names and the report lines."""
    name = next(iter(model.modalities))
    old = existing["anchor"]
    if old.get("fingerprint") != fingerprint:
        raise CheckpointError(
            f"{output}: holds models of anchor {old.get('name')!r} (fingerprint "
            f"{str(old.get('fingerprint'))[:12]}), but {source} has a different text tower "
            f"(fingerprint {fingerprint[:12]}); convert it into another folder"
        )
    _add_modality(output, existing, model, name, provenance)
    report = [f"{output} already holds this text tower: the anchor is shared, not copied"]
    if name in existing["modalities"]:
        report.append(f"replaced the {name} encoder that {output / META_FILE} held")
    return _anchor_folder(output, old), report


def _provenance(release: LanguageBindRelease) -> dict[str, Any]:
    """Where a converted modality came from, as lbind.json's ``converted`` section records it (with the Hub
    repository and commit when the release was read from the hub cache)."""
    record: dict[str, Any] = {
        "from": "languagebind",
        "source": str(release.source.resolve()),
        "model_type": release.model_type,
        "lora_merged": release.lora,
    }
    origin = hub_origin(release.source.resolve())
    if origin is not None:
        record["hub"] = {"repo_id": origin.repo_id, "revision": origin.revision}
    return record


def convert_languagebind(
    source: str | Path, output: str | Path, tokenizer: str | Path | None = None
) -> ConversionResult:
    """Convert a released LanguageBind checkpoint folder (or hub id: :func:`read_languagebind`) into the lbind
    checkpoint folder ``output``.

    ``output`` gets ``lbind.json``, ``<modality>.safetensors`` and ``anchor/`` (the release's text tower as a CLIP
    anchor, named ``./anchor`` in lbind.json); :func:`lbcore.load` reads it. Converting another modality of the
    same release into an existing ``output`` adds it and shares the anchor (same fingerprint, nothing copied); a
    release with a different text tower raises :class:`CheckpointError` and leaves ``output`` as it was.
    The release's modality is the installed plugin's that declares its ``model_type`` (``Modality.releases``).
    ``tokenizer``: a folder with the CLIP tokenizer files, when the release folder has none.
    """
    output = Path(output).expanduser()
    release = read_languagebind(source)
    modality, encoder, converted, report = _release_encoder(release)
    existing = _existing_checkpoint(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    # The anchor is staged in a temporary folder beside the output; it becomes output/anchor, or is dropped when
    # output already holds the same one.
    with tempfile.TemporaryDirectory(prefix=f".{output.name}-anchor-", dir=output.parent) as tmp:
        staged = Path(tmp) / ANCHOR_DIR
        max_length, fingerprint = _stage_anchor(release, staged, tokenizer, converted.embed_dim, report)
        scale = converted.logit_scale if converted.logit_scale is not None else LogitScale().value.item()
        name = modality.name
        model = BindModel(
            AnchorConfig(name=ANCHOR_NAME, max_length=max_length),
            {name: encoder},
            {name: modality},
            {name: scale},
            anchor_fingerprint=fingerprint,
            embed_dim=converted.embed_dim,
        )
        provenance = _provenance(release)
        if existing is None:
            with atomic_dir(output) as building:
                staged.rename(building / ANCHOR_DIR)
                model.write_files(building, extra={"converted": {name: provenance}})
            anchor_dir, shared = output / ANCHOR_DIR, False
        else:
            anchor_dir, joined = _join_existing(output, existing, model, fingerprint, release.source, provenance)
            report.extend(joined)
            shared = True
    for line in report:
        logger.info("%s: %s", release.source, line)
    return ConversionResult(
        output=output,
        modality=name,
        model_type=release.model_type,
        source=release.source,
        anchor=anchor_dir,
        anchor_fingerprint=fingerprint,
        anchor_shared=shared,
        embed_dim=converted.embed_dim,
        logit_scale=float(scale),
        lora=release.lora,
        settings=languagebind_settings(release),
        report=report,
    )
