"""``lbind eval``: zero-shot evaluation of a checkpoint; writes the result card (and its plot) and shows it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml

from lbcore.captioneval import evaluate_captioning
from lbcore.cards import default_card_path, headline, write_card
from lbcore.cli import render
from lbcore.cli.checkpoints import CHECKPOINT_HELP, checkpoint_dir, only_modality
from lbcore.errors import ConfigError
from lbcore.evaluate import evaluate_checkpoint
from lbcore.plot import write_plot
from lbcore.plugins import default_registry


def reader_options(items: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values read as YAML scalars (``fold=1`` is an int, ``missing=skip`` a string)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE with KEY a reader argument name")
        out[key] = yaml.safe_load(value) if value else ""
    return out


def named_templates(checkpoint: str, modality: str | None, name: str, templates: tuple[str, ...]) -> tuple[str, ...]:
    """The template set ``name`` of the evaluated modality (``--templates NAME``); not together with --template."""
    if templates:
        raise ConfigError("give --template or --templates NAME, not both")
    return default_registry().load().registered(only_modality(checkpoint, modality)).cls.template_set(name)


@click.command("eval")
@click.option("--checkpoint", "-c", required=True, type=click.Path(file_okay=False), help=CHECKPOINT_HELP)
@click.option("--modality", "-m", help="Modality to evaluate (default: the checkpoint's only one).")
@click.option("--dataset", help="Reader name of the modality's plugin (e.g. esc50); with --data-root.")
@click.option("--data-root", type=click.Path(file_okay=False), help="Root folder of the --dataset layout.")
@click.option(
    "--data", "manifest", type=click.Path(dir_okay=False), help="Evaluation manifest (JSONL/CSV), plain or paired."
)
@click.option("--split", help="Split passed to the dataset reader.")
@click.option("--option", "options", multiple=True, metavar="KEY=VALUE", help="Extra dataset-reader argument.")
@click.option(
    "--task",
    type=click.Choice(["auto", "classification", "retrieval", "captioning"]),
    default="auto",
    show_default=True,
    help="auto: classification when every row has a label, else retrieval; captioning: the checkpoint's decoder.",
)
@click.option("--fuse", metavar="MODALITY", help="Also score MODALITY and average the logits (paired manifest).")
@click.option("--emergent", metavar="MODALITY", help="Retrieval between --modality and MODALITY (paired manifest).")
@click.option("--group", metavar="A,B", help="Grouped evaluation of these modalities (paired manifest or demo).")
@click.option("--beam", type=int, default=1, show_default=True, help="--task captioning: beam width (1: greedy).")
@click.option("--template", "templates", multiple=True, help="Prompt template with {} (repeat; default: the plugin's).")
@click.option(
    "--templates", "template_set", metavar="NAME", help="A named template set of the modality (e.g. speech for audio)."
)
@click.option("--batch-size", type=int, default=32, show_default=True, help="Items per forward pass.")
@click.option("--num-workers", type=int, help="DataLoader workers preprocessing the files.")
@click.option(
    "--output", "-o", type=click.Path(dir_okay=False), help="Result card (default: <checkpoint>/../eval/...json)."
)
@click.option("--plot/--no-plot", default=True, show_default=True, help="Write the PNG plot beside the card.")
@click.option("--json", "as_json", is_flag=True, help="Print the result card as JSON instead of tables.")
def evaluate_command(
    checkpoint: str,
    modality: str | None,
    dataset: str | None,
    data_root: str | None,
    manifest: str | None,
    split: str | None,
    options: tuple[str, ...],
    task: str,
    fuse: str | None,
    emergent: str | None,
    group: str | None,
    beam: int,
    templates: tuple[str, ...],
    template_set: str | None,
    batch_size: int,
    num_workers: int | None,
    output: str | None,
    plot: bool,
    as_json: bool,
) -> None:
    """Zero-shot evaluation of a checkpoint (no data argument: the modality's demo test split); writes a result card."""
    checkpoint = checkpoint_dir(checkpoint)
    if task == "captioning":
        caption_evaluation(checkpoint, manifest, beam, batch_size, output, as_json)
        return
    if template_set is not None:
        templates = named_templates(checkpoint, modality, template_set, templates)
    with render.progress_bar("eval") as bar:
        evaluation = evaluate_checkpoint(
            checkpoint,
            modality,
            dataset=dataset,
            data_root=data_root,
            manifest=manifest,
            split=split,
            reader_options=reader_options(options),
            task=task,  # type: ignore[arg-type]
            fuse=fuse,
            emergent=emergent,
            group=group.split(",") if group else None,
            templates=templates or None,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=render.eval_progress(bar),
        )
    card = evaluation.card
    card_path = Path(output) if output else default_card_path(checkpoint, card)
    plot_path = None
    if plot and evaluation.plot is not None:
        plot_path = write_plot(evaluation.plot, card_path.with_suffix(".png"))
        card["plot"] = str(plot_path)
    write_card(card, card_path)
    if as_json:
        render.echo_json(card)
    else:
        render.result_card(card, list(headline(card)), card_path, plot_path)


def caption_evaluation(
    checkpoint: str, manifest: str | None, beam: int, batch_size: int, output: str | None, as_json: bool
) -> None:
    """``--task captioning``: BLEU-4 and CIDEr of the checkpoint's decoder beside the nearest-caption baseline."""
    card = evaluate_captioning(checkpoint, manifest=manifest, beams=beam, batch_size=batch_size)
    name = f"captioning-{card['modality']}-{card['dataset']['split']}.json"
    card_path = Path(output) if output else Path(checkpoint).resolve().parent / "eval" / name
    write_card(card, card_path)
    if as_json:
        render.echo_json(card)
    else:
        render.caption_card(card, card_path)
