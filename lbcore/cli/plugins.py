"""``lbind plugins`` and ``lbind modalities``: what the installed plugins provide."""

from __future__ import annotations

import click

from lbcore.cli import render
from lbcore.plugins import default_registry


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """Installed plugins: versions, hooks, modalities, and broken plugins with their error."""
    infos = list(default_registry().load().plugins.values())
    if as_json:
        render.echo_json([vars(i) for i in infos])
    else:
        render.plugins_table(infos)


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output with the full default configs.")
def modalities(as_json: bool) -> None:
    """Registered modalities with their plugin, version and config defaults."""
    registry = default_registry().load()
    rows = []
    for name in registry.modality_names():
        reg = registry.registered(name)
        rows.append((name, reg, reg.cls.config_preset()))
    if as_json:
        render.echo_json(
            [
                {
                    "modality": name,
                    "plugin": reg.plugin.name,
                    "distribution": reg.plugin.distribution,
                    "version": reg.plugin.version,
                    "presets": sorted(reg.cls.presets),
                    "defaults": cfg.model_dump(mode="json"),
                }
                for name, reg, cfg in rows
            ]
        )
        return
    broken = [p.name for p in registry.plugins.values() if p.status == "broken"]
    render.modalities_table(rows, broken)
