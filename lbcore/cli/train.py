"""``lbind train``: merge the flags into the run config, run the trainer, show its progress."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lbcore.cli import render
from lbcore.cli.caption import train_caption_decoder
from lbcore.config import read_yaml
from lbcore.runconfig import apply_overrides, resolve_config
from lbcore.trainer import train as run_training


@click.command()
@click.option("--modality", "-m", "modality_names", multiple=True, help="Modality to train (repeat for several).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Run config YAML.")
@click.option(
    "--data",
    "data",
    multiple=True,
    help='Training manifest (JSONL/CSV) or shards ("DIR/shard-{000000..000099}.tar"): MODALITY=PATH, or one paired '
    "manifest for all.",
)
@click.option("--output", "-o", type=click.Path(file_okay=False), help="Run folder (default runs/<modalities>).")
@click.option("--max-steps", type=int, help="Stop after N optimiser steps.")
@click.option("--preset", "-p", help="Preset of the modalities named here (default: demo without --data).")
@click.option("--batch-size", type=int, help="Global batch size (all processes and accumulation steps).")
@click.option("--lr", type=float, help="Peak learning rate.")
@click.option("--epochs", type=int, help="Passes over the data.")
@click.option("--grad-accum", type=int, help="Micro-batches per optimiser step.")
@click.option("--seed", type=int, help="Run seed.")
@click.option("--save-every", type=int, help="Checkpoint every N steps (0: only at the end).")
@click.option("--resume", is_flag=True, help="Continue from the newest checkpoint in the run folder.")
@click.option("--init", "init", help="Encoder initialisation: scratch, clip:PATH or languagebind:PATH.")
@click.option("--num-workers", type=int, help="DataLoader workers per process.")
@click.option("--local-loss", is_flag=True, default=None, help="Each process builds only its rows of the logits.")
@click.option("--mixed-precision", type=click.Choice(["auto", "no", "bf16", "fp16"]), help="Autocast precision.")
@click.option("--tensorboard", is_flag=True, default=None, help="Log TensorBoard scalars in the run folder.")
@click.option(
    "--save-full", is_flag=True, default=None, help="Write full merged encoder weights instead of LoRA adapters."
)
@click.option("--group", "groups", multiple=True, metavar="A,B", help="Also align these modalities as one group.")
@click.option("--caption", is_flag=True, help="Train a caption decoder (after the encoders, or on --checkpoint).")
@click.option("--checkpoint", type=click.Path(file_okay=False), help="With --caption: train only its decoder.")
@click.option("--source", metavar="A[,B]", help="With --caption: the modality or group the decoder reads.")
@click.option("--caption-steps", type=int, help="With --caption: decoder training steps.")
def train(
    modality_names: tuple[str, ...],
    config_file: str | None,
    data: tuple[str, ...],
    output: str | None,
    preset: str | None,
    groups: tuple[str, ...],
    caption: bool,
    checkpoint: str | None,
    source: str | None,
    caption_steps: int | None,
    **flags: Any,
) -> None:
    """Train modality encoders against the frozen anchor (no --data: the demo preset on the demo dataset)."""
    if caption and checkpoint:
        train_caption_decoder(Path(checkpoint), source, data, steps=caption_steps, seed=flags.get("seed"))
        return
    flags["groups"] = [g.split(",") for g in groups] or None
    raw = read_yaml(config_file) if config_file else {}
    merged = apply_overrides(
        raw, modalities=modality_names, data=data, output=output, preset=preset, source=config_file or "", **flags
    )
    plan = resolve_config(merged, source=config_file or "")
    with render.TrainDisplay() as display:
        final = run_training(plan, progress=display.on_event)
    if caption:
        source = source or (",".join(plan.train.groups[0]) if plan.train.groups else None)
        train_caption_decoder(final, source, data, steps=caption_steps, seed=flags.get("seed"))
