"""``lbind convert``: turn released checkpoints into lbind checkpoint folders (the work is in lbcore.convert.writer)."""

from __future__ import annotations

from pathlib import Path

import click

from lbcore.cli import render
from lbcore.convert.writer import convert_languagebind


@click.group()
def convert() -> None:
    """Convert released checkpoints into lbind checkpoint folders."""


@convert.command("languagebind")
@click.argument("sources", nargs=-1, required=True)  # str: a folder, or a hub id (lbcore.hub)
@click.option(
    "--output",
    "-o",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="lbind checkpoint folder to write; converting into an existing one adds the modality (same text tower).",
)
@click.option(
    "--tokenizer",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Folder with the CLIP tokenizer files, when a SOURCE folder has none.",
)
def languagebind(sources: tuple[str, ...], output: Path, tokenizer: Path | None) -> None:
    """Convert LanguageBind releases (SOURCES: LanguageBind_Audio, _Audio_FT, _Depth, _Thermal, _Image, _Video,
    _Video_FT) into the lbind checkpoint OUTPUT: LoRA merged, preprocessing settings carried into each modality's
    config, and the text tower saved once as OUTPUT/anchor. A SOURCE is a downloaded folder or a hub id
    (LanguageBind/LanguageBind_Audio, hf://ORG/NAME@REVISION), fetched into the Hugging Face cache."""
    done = []
    for source in sources:
        result = convert_languagebind(source, output, tokenizer=tokenizer)
        render.conversion_notes(source, result)
        done.append((source, result))
    render.conversions(output, done)
