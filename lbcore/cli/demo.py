"""``lbind demo``: every modality's demo preset trained and evaluated zero-shot, in one table."""

from __future__ import annotations

import sys

import click

from lbcore.cli import render
from lbcore.config import read_yaml
from lbcore.showcase import run_demo


@click.command()
@click.option("--modality", "-m", "modality_names", multiple=True, help="Only these modalities (default: all).")
@click.option("--output", "-o", default="runs/demo", show_default=True, type=click.Path(file_okay=False))
@click.option(
    "--config", "config_file", type=click.Path(dir_okay=False), help="Run config (anchor, train, modalities)."
)
@click.option("--min-top1", type=float, default=80.0, show_default=True, help="Held-out top-1 (%) each must reach.")
@click.option("--fresh", is_flag=True, help="Delete earlier demo runs in OUTPUT instead of resuming them.")
@click.option("--no-plot", is_flag=True, help="Skip the confusion-matrix PNGs.")
@click.option("--num-workers", type=int, help="DataLoader workers for evaluation.")
def demo(
    modality_names: tuple[str, ...],
    output: str,
    config_file: str | None,
    min_top1: float,
    fresh: bool,
    no_plot: bool,
    num_workers: int | None,
) -> None:
    """Train every modality's demo preset on its demo data, evaluate zero-shot on the held-out split, print one
    table and write OUTPUT/summary.json. Exits with 1 if a modality fails or stays below --min-top1."""
    config = read_yaml(config_file) if config_file else {}
    with render.DemoDisplay() as display:
        summary = run_demo(
            modality_names or None,
            output,
            config=config,
            min_top1=min_top1,
            fresh=fresh,
            plots=not no_plot,
            num_workers=num_workers,
            train_progress=display.on_train,
            eval_progress=display.eval_progress,
            on_result=display.on_result,
        )
    render.demo_summary(summary, min_top1, output)
    if not summary["passed"]:
        sys.exit(1)
