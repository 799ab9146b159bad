"""``lbind shard``: a manifest written as WebDataset tar shards, the streaming training format."""

from __future__ import annotations

import json

import click

from lbcore.cli import render
from lbcore.shards import write_shards


@click.command("shard")
@click.argument("manifest", type=click.Path(dir_okay=False, exists=True))
@click.option("--output", "-o", required=True, type=click.Path(file_okay=False), help="Folder for the shards.")
@click.option("--shard-size", type=int, default=1000, show_default=True, help="Rows (samples) per shard.")
def shard(manifest: str, output: str, shard_size: int) -> None:
    """Write the rows of MANIFEST (JSONL/CSV, plain or paired) as WebDataset shards in OUTPUT, with shards.json
    and the caption table; train on them with --data "OUTPUT/shard-{000000..NNNNNN}.tar"."""
    index = write_shards(manifest, output, shard_size)
    listed = json.loads(index.read_text(encoding="utf-8"))
    last = len(listed["shards"]) - 1
    render.note(
        f"{listed['samples']} samples in {len(listed['shards'])} shard(s); train with "
        f'--data "{output}/shard-{{000000..{last:06d}}}.tar"'
    )
