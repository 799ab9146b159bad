"""``lbind new-modality``: render a new modality plugin distribution (the work is in lbcore.scaffold)."""

from __future__ import annotations

from pathlib import Path

import click

from lbcore.cli import render
from lbcore.scaffold import ScaffoldError, render_modality_plugin, validate_modality_name


def _check_name(ctx: click.Context, param: click.Parameter, value: str) -> str:
    try:
        return validate_modality_name(value)
    except ScaffoldError as err:
        raise click.BadParameter(str(err), ctx=ctx, param=param) from err


@click.command("new-modality")
@click.argument("name", callback=_check_name)
@click.option(
    "--output-dir",
    "-o",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("."),
    show_default=True,
    help="Folder in which the plugin folder NAME/ is created.",
)
@click.option("--force", is_flag=True, help="Render into an existing NAME/ folder, replacing the template's files.")
@click.option("--description", help="One-line summary of the modality for the package metadata.")
def new_modality(name: str, output_dir: Path, force: bool, description: str | None) -> None:
    """Create a new modality plugin distribution NAME/ (package lbind_NAME) from the template."""
    try:
        path = render_modality_plugin(name, output_dir, force=force, description=description)
    except ScaffoldError as err:
        raise click.ClickException(str(err)) from err
    render.plugin_created(name, path)
