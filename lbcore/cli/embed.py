"""``lbind embed`` (bulk embedding jobs) and ``lbind similarity`` (a text x media matrix)."""

from __future__ import annotations

import sys

import click
import torch

from lbcore.cli import render
from lbcore.cli.checkpoints import CHECKPOINT_HELP, checkpoint_dir, only_modality
from lbcore.embedding import embed_job, media_similarity
from lbcore.errors import ConfigError
from lbcore.model import load
from lbcore.plot import PlotData, write_plot
from lbcore.plugins import default_registry


@click.command()
@click.option("--checkpoint", "-c", required=True, type=click.Path(file_okay=False), help=CHECKPOINT_HELP)
@click.option("--modality", "-m", help="Modality of the inputs (default: the checkpoint's only one).")
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--output", "-o", required=True, type=click.Path(dir_okay=False), help="Embeddings: .npy or .safetensors."
)
@click.option("--batch-size", type=int, default=32, show_default=True, help="Items per forward pass.")
@click.option("--num-workers", type=int, help="DataLoader workers preprocessing the files.")
@click.option("--save-every", type=int, default=4096, show_default=True, help="Commit the output every N new rows.")
@click.option(
    "--prefetch",
    type=click.Choice(["processes", "threads"]),
    default="processes",
    show_default=True,
    help="Preprocess in worker processes, or in threads of this one (less memory).",
)
@click.option(
    "--precision",
    type=click.Choice(["float32", "bfloat16"]),
    default="float32",
    show_default=True,
    help="Encoder compute (bfloat16: autocast, faster on bf16 hardware); rows are float32 either way.",
)
def embed(
    checkpoint: str,
    modality: str | None,
    inputs: tuple[str, ...],
    output: str,
    batch_size: int,
    num_workers: int | None,
    save_every: int,
    prefetch: str,
    precision: str,
) -> None:
    """Embed INPUTS (files, folders searched recursively, or @LIST files with one path per line) into OUTPUT.

    Writes OUTPUT (.npy, or .safetensors with one tensor 'embeddings'), float32 [rows, E] and L2-normalised, and
    OUTPUT.json listing the input of every row in order, plus the files that could not be read. Running again
    with the same OUTPUT embeds only inputs not in it yet. Exits with 1 when some input could not be read.
    """
    checkpoint = checkpoint_dir(checkpoint)
    name = only_modality(checkpoint, modality)
    with render.progress_bar("embed") as bar:
        task = bar.add_task(render.safe(name), total=None, rate="")
        result = embed_job(
            checkpoint,
            name,
            inputs,
            output,
            batch_size=batch_size,
            num_workers=num_workers,
            save_every=save_every,
            prefetch=prefetch,  # type: ignore[arg-type]  (click.Choice checked it)
            precision=precision,  # type: ignore[arg-type]
            progress=lambda done, total: render.advance(bar, task, done, total),
        )
    render.embed_summary(result)
    if result.failed:
        sys.exit(1)


class MediaOptionsCommand(click.Command):
    """A command with one repeatable ``--<modality> FILE`` option per registered modality, added when the command
    is parsed or its help shown (plugins are loaded then, never at import). A modality whose name collides with
    one of the command's own options is reachable through ``--input MODALITY=FILE`` only."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        taken = {p.name for p in params} | {o for p in params for o in p.opts}
        extra: list[click.Parameter] = []
        for name in default_registry().load().modality_names():
            flag = "--" + name.replace("_", "-")
            if name in taken or flag in taken:
                continue
            extra.append(
                click.Option(
                    [flag, name], multiple=True, type=click.Path(dir_okay=False), help=f"A {name} file (repeat)."
                )
            )
        # Keep --help last, as click does.
        help_option = self.get_help_option(ctx)
        return [p for p in params if p is not help_option] + extra + [p for p in params if p is help_option]


def media_arguments(media_files: dict[str, tuple[str, ...]], pairs: tuple[str, ...]) -> list[tuple[str, str]]:
    """(modality, file) pairs from the ``--<modality> FILE`` options, then from ``--input MODALITY=FILE``."""
    media = [(name, f) for name, files in media_files.items() for f in files]
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--input {pair!r}: expected MODALITY=FILE")
        media.append((name, path))
    if not media:
        raise ConfigError("no media file given: pass --<modality> FILE or --input MODALITY=FILE")
    return media


@click.command(cls=MediaOptionsCommand)
@click.option("--checkpoint", "-c", required=True, type=click.Path(file_okay=False), help=CHECKPOINT_HELP)
@click.option("--text", "-t", "texts", multiple=True, required=True, help="A text (repeat): one row each.")
@click.option("--input", "-i", "pairs", multiple=True, metavar="MODALITY=FILE", help="A media file of any modality.")
@click.option("--softmax", is_flag=True, help="Show, per file, the softmax over the texts of scale x cosine.")
@click.option("--plot", type=click.Path(dir_okay=False), help="Also write the matrix as a PNG heatmap.")
@click.option("--json", "as_json", is_flag=True, help="Print the matrix as JSON.")
def similarity(
    checkpoint: str,
    texts: tuple[str, ...],
    pairs: tuple[str, ...],
    softmax: bool,
    plot: str | None,
    as_json: bool,
    **media_files: tuple[str, ...],
) -> None:
    """The text x media similarity matrix: rows are --text, columns the files given with --<modality> FILE
    (one option per installed modality, e.g. --audio a.wav --video b.mp4) or --input MODALITY=FILE."""
    media = media_arguments(media_files, pairs)
    model = load(checkpoint_dir(checkpoint))
    shown = media_similarity(model, texts, media)  # [T, M] cosines
    if softmax:
        scales = torch.tensor([model.logit_scale(name) for name, _ in media], device=shown.device)
        shown = torch.softmax(shown * scales, dim=0)  # per file (column): a distribution over the texts
    matrix = shown.tolist()
    if plot:
        paths = [p for _, p in media]
        write_plot(PlotData("similarity", matrix, list(texts), paths, "text x media", "media", "text"), plot)
    if as_json:
        out = {"texts": list(texts), "media": [{"modality": n, "path": p} for n, p in media]}
        out["softmax" if softmax else "cosine"] = matrix
        render.echo_json(out)
        return
    render.similarity_table(list(texts), media, matrix, softmax)
    if plot:
        render.note(f"plot: {plot}")
