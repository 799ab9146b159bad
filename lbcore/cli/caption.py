"""``lbind caption`` (captions from a checkpoint's decoder) and the decoder training of ``lbind train --caption``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lbcore.captioneval import caption_items
from lbcore.captioning import load_captioner
from lbcore.captiontrain import train_captioner
from lbcore.checkpoint import read_meta
from lbcore.cli import render
from lbcore.cli.checkpoints import CHECKPOINT_HELP, checkpoint_dir
from lbcore.errors import ConfigError
from lbcore.model import load


def parse_items(items: tuple[str, ...], sources: list[str]) -> dict[str, list[str]]:
    """Command-line items -> aligned file lists per source: ``FILE`` for a one-source decoder, or
    ``MODALITY=FILE,MODALITY=FILE`` naming every source of a group decoder."""
    files: dict[str, list[str]] = {m: [] for m in sources}
    for item in items:
        if "=" not in item and len(sources) == 1:
            files[sources[0]].append(item)
            continue
        parts = dict(p.partition("=")[::2] for p in item.split(","))
        if set(parts) != set(sources) or not all(parts.values()):
            example = ",".join(f"{m}=FILE" for m in sources)
            raise ConfigError(f"{item!r}: the decoder reads {', '.join(sources)}; give each item as {example}")
        for m in sources:
            files[m].append(parts[m])
    return files


@click.command("caption")
@click.option("--checkpoint", "-c", required=True, type=click.Path(file_okay=False), help=CHECKPOINT_HELP)
@click.argument("items", nargs=-1, required=True)
@click.option("--beam", type=int, default=1, show_default=True, help="Beam width (1: greedy).")
@click.option("--max-length", type=int, help="Longest caption in tokens (default: the decoder's).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON lines {item, caption}.")
def caption(checkpoint: str, items: tuple[str, ...], beam: int, max_length: int | None, as_json: bool) -> None:
    """Caption media files with the checkpoint's decoder (ITEM: FILE, or MODALITY=FILE,... for a group decoder)."""
    checkpoint = checkpoint_dir(checkpoint)
    model = load(checkpoint)
    captioner = load_captioner(checkpoint)
    files = parse_items(items, list(captioner.cfg.sources))
    captions = caption_items(model, captioner, files, beams=beam, max_length=max_length)
    for item, text in zip(items, captions, strict=True):
        click.echo(json.dumps({"item": item, "caption": text}) if as_json else f"{item}\t{text}")


def train_caption_decoder(checkpoint: Path, sources: str | None, data: tuple[str, ...], **settings: Any) -> Path:
    """``lbind train --caption``: train the decoder on ``checkpoint`` (its only modality, or ``sources``)."""
    names = sources.split(",") if sources else list(read_meta(checkpoint)["modalities"])
    if len(names) > 1 and not sources:
        raise ConfigError(f"{checkpoint} holds {', '.join(names)}: choose the decoder's --source (e.g. A or A,B)")
    manifest = data[0].partition("=")[2] if data and "=" in data[0] else (data[0] if data else None)
    plan = {"checkpoint": checkpoint, "decoder": {"sources": names}, "data": manifest}
    plan.update({k: v for k, v in settings.items() if v is not None})
    target = train_captioner(plan)
    render.note(f"caption decoder for {'+'.join(names)} saved in {target}")
    return target
