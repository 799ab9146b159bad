"""``lbind convert``: turn released checkpoints into lbind checkpoint folders (the work is in lbcore.convert.writer)."""

from __future__ import annotations

import math
from pathlib import Path

import click


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
    from rich.console import Console
    from rich.table import Table

    from lbcore.convert.writer import convert_languagebind  # heavy (torch): `lbind --help` must not load it

    console = Console()
    table = Table(title=f"converted into {output}")
    for col in ("source", "model type", "modality", "LoRA merged", "settings", "logit scale", "anchor"):
        table.add_column(col, overflow="fold")
    for source in sources:
        result = convert_languagebind(source, output, tokenizer=tokenizer)
        lora = f"r={result.lora['rank']}, alpha={result.lora['alpha']:g}" if result.lora else "-"
        settings = ", ".join(f"{k}={v}" for k, v in result.settings.items()) or "-"
        anchor = f"{'shared' if result.anchor_shared else 'written'} ({result.anchor_fingerprint[:12]})"
        table.add_row(
            source,
            result.model_type,
            result.modality,
            lora,
            settings,
            f"{result.logit_scale:.4f} (x{math.exp(result.logit_scale):.1f})",
            anchor,
        )
        for line in result.report:
            console.print(f"[dim]{source}: {line}[/]", highlight=False, soft_wrap=True)
    console.print(table)
    console.print(f"load it with lbcore.load({str(output)!r}) or `lbind eval --checkpoint {output}`", highlight=False)
