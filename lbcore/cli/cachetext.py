"""``lbind cache-text``: the caption pre-pass ahead of training, shared out over the ranks of a launch."""

from __future__ import annotations

from pathlib import Path

import click

from lbcore.cli import render
from lbcore.config import AnchorConfig
from lbcore.textcache import cache_manifest_texts


@click.command("cache-text")
@click.argument("manifests", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--anchor", "anchor_name", default="minilm", show_default=True, help="Anchor name, folder or hub id.")
@click.option("--max-length", type=int, help="Anchor token limit (as the run config's anchor.max_length).")
@click.option("--cache-dir", type=click.Path(file_okay=False), help="Caption store root (default: lbind's cache).")
@click.option("--batch-size", type=int, default=64, show_default=True, help="Captions per anchor forward pass.")
@click.option("--compact", is_flag=True, help="Merge the store's shards into as few files as possible afterwards.")
@click.option("--manifest-cache", type=click.Path(file_okay=False), help="Where manifest indexes are built.")
def cache_text(
    manifests: tuple[str, ...],
    anchor_name: str,
    max_length: int | None,
    cache_dir: str | None,
    batch_size: int,
    compact: bool,
    manifest_cache: str | None,
) -> None:
    """Encode every caption of MANIFEST... missing from the caption store, so that training only maps it. Under
    `accelerate launch` or `torchrun` each rank encodes its share on its own device and writes its own shard."""
    import torch  # deferred, with accelerate: `lbind --help` does not load them
    from accelerate import PartialState

    # Without a GPU, cpu=True makes accelerate read a torchrun / `accelerate launch` environment as gloo ranks.
    state = PartialState(cpu=not torch.cuda.is_available())
    extra = {"max_length": max_length} if max_length else {}
    anchor = AnchorConfig(
        name=anchor_name, cache_dir=Path(cache_dir) if cache_dir else None, batch_size=batch_size, **extra
    )
    with render.progress_bar("captions") as bar:
        task = bar.add_task("through the anchor", total=None, rate="")
        report = cache_manifest_texts(
            anchor,
            manifests,
            rank=state.process_index,
            world=state.num_processes,
            barrier=state.wait_for_everyone,
            device=state.device if state.device.type != "cpu" else None,
            compact=compact,
            manifest_cache=manifest_cache,
            progress=lambda done, total: render.advance(bar, task, done, total),
        )
    if state.is_main_process:
        stats = report.store.stats()
        render.note(
            f"{report.texts} distinct captions; {report.encoded} encoded by this rank in {report.seconds:.1f} s; "
            f"store {report.store.folder}: {stats['files']} files, {stats['bytes'] / 1e6:.1f} MB"
        )
