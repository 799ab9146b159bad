"""The ``lbind`` command line: parse, call the library, render with rich. No logic of its own."""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.syntax import Syntax
from rich.table import Table

from lbcore.errors import LbindError

console = Console()
err_console = Console(stderr=True)


def _registry():
    from lbcore.plugins import default_registry

    return default_registry().load()


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="lbind", prog_name="lbind")
def cli(verbose: int) -> None:
    """lbind: bind any modality to language through a frozen text anchor."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(message)s", handlers=[RichHandler(console=err_console)], force=True)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """Installed plugins: versions, hooks, modalities, and broken plugins with their error."""
    infos = list(_registry().plugins.values())
    if as_json:
        click.echo(json.dumps([vars(i) for i in infos], indent=2))
        return
    table = Table(title="lbind plugins (entry-point group 'lbind')")
    for col in ("plugin", "distribution", "version", "status", "hooks", "modalities", "error"):
        table.add_column(col, overflow="fold")
    style = {"ok": "green", "broken": "bold red", "disabled": "dim"}
    for i in infos:
        table.add_row(
            i.name,
            i.distribution or "-",
            i.version or "-",
            f"[{style[i.status]}]{i.status}[/]",
            ", ".join(i.hooks) or "-",
            ", ".join(i.modalities) or "-",
            i.error or "",
        )
    console.print(table if infos else "[yellow]no lbind plugins installed[/]")


def _defaults_summary(cfg: Any) -> str:
    """The settings that tell presets apart, in one line."""
    data = cfg.model_dump(mode="json")
    enc = data.pop("encoder")
    lora = data.pop("lora")
    optim = data.pop("optim")
    skip = {"mean", "std"}
    parts = [f"{k}={v}" for k, v in data.items() if k not in skip]
    parts.append(f"vit={enc['width']}x{enc['depth']}/p{enc['patch_size']}")
    parts.append(f"lora_r={lora['rank']}")
    parts.append(f"lr={optim['lr']:g}")
    return ", ".join(parts)


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output with the full default configs.")
def modalities(as_json: bool) -> None:
    """Registered modalities with their plugin, version and config defaults."""
    registry = _registry()
    rows = []
    for name in registry.modality_names():
        reg = registry.registered(name)
        rows.append((name, reg, reg.cls.config_preset()))
    if as_json:
        out = [
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
        click.echo(json.dumps(out, indent=2))
        return
    table = Table(title="lbind modalities (defaults: the 'languagebind' preset)")
    for col in ("modality", "plugin", "version", "presets", "defaults"):
        table.add_column(col, overflow="fold")
    for name, reg, cfg in rows:
        table.add_row(
            name, reg.plugin.name, reg.plugin.version or "-", ", ".join(sorted(reg.cls.presets)), _defaults_summary(cfg)
        )
    console.print(table if rows else "[yellow]no modalities registered: install a plugin (see `lbind plugins`)[/]")
    broken = [p for p in registry.plugins.values() if p.status == "broken"]
    if broken:
        err_console.print(
            f"[red]{len(broken)} broken plugin(s): {', '.join(p.name for p in broken)}; see `lbind plugins`[/]"
        )


@cli.group()
def config() -> None:
    """Inspect and validate configuration."""


@config.command()
@click.option("--modality", "-m", help="Print this modality's config schema instead of the run config's.")
def schema(modality: str | None) -> None:
    """Print the JSON schema of a run config (or of one modality's config)."""
    from lbcore.config import RunConfig

    model = _registry().registered(modality).cls.Config if modality else RunConfig
    click.echo(json.dumps(model.model_json_schema(), indent=2))


@config.command()
@click.option("--modality", "-m", required=True, help="Modality name (see `lbind modalities`).")
@click.option("--preset", "-p", default=None, help="Preset name (default: languagebind).")
def show(modality: str, preset: str | None) -> None:
    """Print a modality's defaults (or a preset) as YAML."""
    from lbcore.config import to_yaml

    cfg = _registry().registered(modality).cls.config_preset(preset)
    console.print(Syntax(to_yaml(cfg), "yaml", background_color="default"))


@config.command()
@click.argument("file", type=click.Path(dir_okay=False))
def validate(file: str) -> None:
    """Validate a run config FILE; every bad field is reported with its exact path."""
    from lbcore.config import load_run_config

    run, mods = load_run_config(file)
    console.print(f"[green]{file}: valid[/] (anchor {run.anchor.name}; modalities: {', '.join(mods) or 'none'})")


@cli.command()
@click.option("--modality", "-m", "modality_names", multiple=True, help="Modality to train (repeat for several).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Run config YAML.")
@click.option("--data", "data", multiple=True, help="Training manifest (JSONL/CSV); MODALITY=PATH with several.")
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
@click.option("--init", "init", help="Encoder initialisation: scratch or clip:PATH.")
@click.option("--num-workers", type=int, help="DataLoader workers per process.")
@click.option("--mixed-precision", type=click.Choice(["auto", "no", "bf16", "fp16"]), help="Autocast precision.")
@click.option("--tensorboard", is_flag=True, default=None, help="Log TensorBoard scalars in the run folder.")
def train(
    modality_names: tuple[str, ...],
    config_file: str | None,
    data: tuple[str, ...],
    output: str | None,
    preset: str | None,
    **flags: Any,
) -> None:
    """Train modality encoders against the frozen anchor (no --data: the demo preset on the demo dataset)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from lbcore.config import read_yaml
    from lbcore.errors import ConfigError
    from lbcore.train import TrainEvent, resolve_config
    from lbcore.train import train as run_training

    raw = read_yaml(config_file) if config_file else {}
    specs = raw.setdefault("modalities", {}) or {}
    raw["modalities"] = specs
    section = raw.setdefault("train", {}) or {}
    raw["train"] = section
    for name in modality_names:
        specs.setdefault(name, {})
    names = list(specs)
    manifests = dict(section.get("data") or {})
    for item in data:
        name, sep, path = item.partition("=")
        if sep and name in names:
            manifests[name] = path
        elif len(names) == 1:
            manifests[names[0]] = item
        else:
            raise ConfigError(f"--data {item!r}: with several modalities write MODALITY=PATH ({', '.join(names)})")
    if manifests:
        section["data"] = manifests
    for name in modality_names:
        if preset:
            specs[name]["preset"] = preset
    optim = {k: v for k, v in (("batch_size", flags.pop("batch_size")), ("lr", flags.pop("lr"))) if v is not None}
    if optim:
        for name in names:
            specs[name] = {**specs[name], "optim": {**(specs[name].get("optim") or {}), **optim}}
    if output:
        section["output_dir"] = output
    section.update({k: v for k, v in flags.items() if v is not None and v is not False})
    plan = resolve_config(raw, source=config_file or "")

    bar = Progress(
        TextColumn("[bold]train[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} samples/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    )
    task: list[Any] = []

    def on_event(event: TrainEvent) -> None:
        m = event.metrics
        if event.kind == "start":
            for name, counts in m["params"].items():
                err_console.print(
                    f"{name}: {counts['trainable']:,} trainable of {counts['total']:,} parameters"
                    + (f" ({counts['lora']:,} LoRA)" if counts["lora"] else "")
                )
            err_console.print(
                f"{event.total_steps} steps of {m['samples_per_step']} samples on {m['processes']} process(es), "
                f"{m['device']}, mixed precision {m['mixed_precision']}; output {m['output']}"
            )
            bar.start()
            task.append(bar.add_task("train", total=event.total_steps, completed=event.step, loss="-", speed="-"))
        elif event.kind == "step" and task:
            bar.update(task[0], completed=event.step, loss=f"{m['loss']:.4f}", speed=f"{m['samples_per_s']:.1f}")
        elif event.kind == "checkpoint":
            bar.console.print(f"[dim]{event.message}[/]")
        elif event.kind == "end":
            bar.stop()
            table = Table(title="training summary", show_header=False)
            table.add_row("checkpoint", str(m["output"]))
            table.add_row("steps", f"{m['steps']} ({m['steps_this_run']} this run, {m['epochs']:g} epochs)")
            table.add_row("time", f"{m['wall_s']:.1f} s, {m['samples_per_s']:.1f} samples/s")
            for name, loss in m["final_loss"].items():
                shown = f"loss {loss:.4f}, " if loss is not None else ""
                table.add_row(name, f"{shown}temperature 1/{m['logit_scale'][name]:.1f}")
            skipped = sum(len(v) for v in m["skipped_files"].values())
            table.add_row("skipped files", str(skipped))
            console.print(table)

    try:
        run_training(plan, progress=on_event)
    finally:
        bar.stop()


def _add_core_commands() -> None:
    """Commands whose implementation lives in its own lbcore module (imported lazily by click callbacks)."""
    from lbcore.scaffold import new_modality

    if "new-modality" not in cli.commands:
        cli.add_command(new_modality)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: plugins add their commands, typed errors become one red line."""
    _add_core_commands()
    try:
        _registry().add_commands(cli)
    except LbindError as err:  # a broken plugin is reported by `lbind plugins`; never fatal here
        err_console.print(f"[red]error:[/] {err}")
    try:
        cli.main(args=argv, prog_name="lbind", standalone_mode=False)
    except click.exceptions.Abort:
        err_console.print("[red]aborted[/]")
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except LbindError as err:
        err_console.print(f"[bold red]error:[/] {err}", highlight=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
