"""Result cards of evaluations and the digests they record.

A result card is a JSON document (see :func:`lbcore.evaluate.evaluate_checkpoint`) that names the checkpoint by
the sha256 of its weights and the evaluated items by the sha256 of their list, so two cards can be compared
without the files at hand.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from lbcore import __version__
from lbcore.checkpoint import META_FILE, read_meta, write_json
from lbcore.datasets import EvalDataset
from lbcore.errors import CheckpointError
from lbcore.hub import parse_hub_id

log = logging.getLogger(__name__)

__all__ = [
    "CARD_FORMAT",
    "CARD_VERSION",
    "cards_of",
    "checkpoint_digest",
    "default_card_path",
    "file_sha256",
    "headline",
    "items_digest",
    "result_card",
    "write_card",
]

CARD_FORMAT = "lbind-eval-card"
CARD_VERSION = 1


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_digest(directory: str | Path) -> dict[str, Any]:
    """``{"sha256": ..., "files": {name: sha256}}`` of a checkpoint: its ``*.safetensors`` files and its
    ``lbind.json`` (which says what the weights are: a renamed modality or another ``file`` changes the digest).

    The checkpoint's sha256 is that of the lines ``<file name>\\0<file sha256>\\n``, the weights in name order
    and then ``lbind.json``, so it changes with any weight or description; for adapter-only modalities the
    recorded base-weight hashes are folded in last (``bases``)."""
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no .safetensors weights to hash (is this a checkpoint folder?)")
    per_file = {f.name: file_sha256(f) for f in files}
    meta_path = directory / META_FILE
    if meta_path.is_file():
        per_file[META_FILE] = file_sha256(meta_path)
    lines = [f"{name}\0{sha}\n" for name, sha in per_file.items()]
    # an adapter-only modality is only defined together with its base weights: fold their hashes in too
    bases = {}
    if meta_path.is_file():
        for name, spec in sorted(read_meta(directory)["modalities"].items()):
            if isinstance(spec.get("base"), dict) and isinstance(spec["base"].get("sha256"), str):
                bases[name] = spec["base"]["sha256"]
                lines.append(f"base:{name}\0{bases[name]}\n")
    combined = hashlib.sha256("".join(lines).encode())
    out: dict[str, Any] = {"sha256": combined.hexdigest(), "files": per_file}
    if bases:
        out["bases"] = bases
    return out


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(os.path.relpath(path, root)).as_posix() if path.is_relative_to(root) else path.as_posix()
    except ValueError:  # another drive on Windows
        return path.as_posix()


def items_digest(datasets: Mapping[str, EvalDataset]) -> str:
    """sha256 of the item list: per row, each modality's path relative to its dataset root, the labels and the
    captions. The same items under another root hash alike; any change of file, order, label or caption shows."""
    columns = list(datasets.values())
    rows = []
    for n, item in enumerate(columns[0].items):
        paths = [_relative(ds.items[n].path, ds.root) for ds in columns]
        rows.append([paths, list(item.labels), list(item.captions)])
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode("utf-8")).hexdigest()


def default_card_path(checkpoint: str | Path, card: Mapping[str, Any]) -> Path:
    """``<checkpoint's parent>/eval/<modality>[+fuse | -emergent]-<reader>[-<split>].json``; for a hub id
    (``hf://org/name``), whose folder is the read-only cache, ``./eval/org--name/...`` instead."""
    name = card["modality"]
    if card.get("group"):
        name = "group-" + "+".join(card["group"]["members"])
    if card.get("fuse"):
        name += f"+{card['fuse']}"
    if card.get("emergent"):
        name += f"-{card['emergent']}"
    data = card["dataset"]
    name += f"-{data['reader']}" + (f"-{data['split']}" if data.get("split") else "")
    safe = "".join(c if c.isalnum() or c in "+-_." else "_" for c in name)
    hub = parse_hub_id(checkpoint) if isinstance(checkpoint, str) else None
    if hub is not None:
        return Path.cwd() / "eval" / hub.repo_id.replace("/", "--") / f"{safe}.json"
    return Path(checkpoint).resolve().parent / "eval" / f"{safe}.json"


def cards_of(checkpoint: str | Path) -> list[dict[str, Any]]:
    """The result cards of this checkpoint's weights found beside it (``<parent>/eval/*.json``, where ``lbind
    eval`` writes them, and ``<checkpoint>/eval/*.json``): those whose recorded checkpoint sha256 is the
    checkpoint's, in file-name order. Other JSON files there are passed over; unreadable ones are logged."""
    directory = Path(checkpoint)
    files = sorted((directory.parent / "eval").glob("*.json")) + sorted((directory / "eval").glob("*.json"))
    if not files:
        return []
    digest = checkpoint_digest(directory)["sha256"]
    found = []
    for path in files:
        try:
            card = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
            log.warning("%s: not a readable result card, left out: %s", path, err)
            continue
        if isinstance(card, dict) and card.get("format") == CARD_FORMAT:
            if (card.get("checkpoint") or {}).get("sha256") == digest:
                found.append(card)
    return found


def write_card(card: Mapping[str, Any], path: str | Path) -> Path:
    """Write a result card as indented JSON (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, dict(card))
    return path


def headline(card: Mapping[str, Any]) -> dict[str, float]:
    """The few numbers a table shows for a card: top-1/top-5 (classification), mAP, or R@1/R@5/R@10 both ways."""
    metrics = card["metrics"]
    task = card["task"]
    if task == "classification":
        keys = ["top1", "top5", "mean_class_accuracy", "chance_top1"]
    elif task == "multilabel":
        keys = ["mAP"]
    else:
        keys = [k for k in metrics if "_R@" in k or k.endswith("median_rank")]
    return {k: float(metrics[k]) for k in keys if k in metrics}


def result_card(
    checkpoint: Path,
    meta: Mapping[str, Any],
    datasets: Mapping[str, EvalDataset],
    source: Any,
    result: Any,
    **request: Any,
) -> dict[str, Any]:
    """The result card of an evaluation (``source``: its :class:`~lbcore.evaluate.DataSource`, ``result``: its
    :class:`~lbcore.evaluate.EvalResult`); ``request``: modality, fuse, emergent, digest, batch_size and device.
    A grouped evaluation adds ``group`` (members, fusion, the logit fusion's metrics)."""
    first = next(iter(datasets.values()))
    return {
        "format": CARD_FORMAT,
        "format_version": CARD_VERSION,
        "lbind_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": str(checkpoint.resolve()), **request["digest"]},
        "anchor": {"name": meta["anchor"].get("name"), "fingerprint": meta["anchor"].get("fingerprint")},
        "modality": request["modality"],
        "fuse": request["fuse"],
        "emergent": request["emergent"],
        "task": result.task,
        "dataset": {
            "reader": source.reader,
            "name": first.name,
            "root": str(source.root),
            "manifest": str(source.manifest) if source.manifest else None,
            "split": source.split,
            "options": source.options,
            "num_items": result.num_items,
            "items_sha256": items_digest(datasets),
            "classes": list(first.classes),
        },
        "templates": result.templates,
        "metrics": result.metrics,
        "metrics_per_modality": result.per_modality,
        "batch_size": request["batch_size"],
        "device": request["device"],
        **({"group": result.group} if result.group is not None else {}),
    }
