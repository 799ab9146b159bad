"""``lbind config schema|show|validate``: inspect and validate configuration."""

from __future__ import annotations

import click

from lbcore.cli import render
from lbcore.config import RunConfig, to_yaml
from lbcore.plugins import default_registry
from lbcore.runconfig import load_run_config


@click.group()
def config() -> None:
    """Inspect and validate configuration."""


@config.command()
@click.option("--modality", "-m", help="Print this modality's config schema instead of the run config's.")
def schema(modality: str | None) -> None:
    """Print the JSON schema of a run config (or of one modality's config)."""
    model = default_registry().load().registered(modality).cls.Config if modality else RunConfig
    render.echo_json(model.model_json_schema())


@config.command()
@click.option("--modality", "-m", required=True, help="Modality name (see `lbind modalities`).")
@click.option("--preset", "-p", default=None, help="Preset name (default: languagebind).")
def show(modality: str, preset: str | None) -> None:
    """Print a modality's defaults (or a preset) as YAML."""
    cfg = default_registry().load().registered(modality).cls.config_preset(preset)
    render.yaml_text(to_yaml(cfg))


@config.command()
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file: str) -> None:
    """Validate a run config FILE; every bad field is reported with its exact path."""
    run, mods = load_run_config(file)
    render.config_valid(file, run.anchor.name, mods)
