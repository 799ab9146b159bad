"""The ``lbind`` command line: parse, call the library, render with rich. No logic of its own."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import click
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table

from lbcore.errors import LbindError

console = Console()
err_console = Console(stderr=True)


def _registry():
    from lbcore.plugins import default_registry

    return default_registry().load()


CHECKPOINT_HELP = "Checkpoint folder, run folder, or a hub id hf://ORG/NAME[@REVISION]."


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="lbind", prog_name="lbind")
def cli(verbose: int) -> None:
    """lbind: bind any modality to language through a frozen text anchor."""
    _configure_output(verbose)


# Libraries whose info logs and progress bars (transformers' "Loading weights", huggingface_hub's downloads,
# accelerate's set-up notes) are hidden unless -v is given.
_THIRD_PARTY_LOGGERS = ("transformers", "huggingface_hub", "accelerate", "peft", "timm", "torch", "urllib3", "filelock")
# lbind loggers whose INFO lines every user should see (e.g. which checkpoint of a run folder was taken).
_NOTICE_LOGGERS = ("lbcore.checkpoint",)


def _configure_output(verbose: int) -> None:
    """Logging through rich on stderr: lbind's warnings (and notices) by default, -v info, -vv debug; third-party
    info logs and progress bars only with -v."""
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = RichHandler(console=err_console, show_time=verbose > 0, show_path=verbose > 1)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    for name in _NOTICE_LOGGERS:
        logging.getLogger(name).setLevel(min(level, logging.INFO))
    for name in _THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(level if verbose else logging.ERROR)
    # transformers sets its own logger's level when first imported, from TRANSFORMERS_VERBOSITY; importing it
    # here would cost every command a second, so set the variable, and the level too if it is loaded already.
    os.environ["TRANSFORMERS_VERBOSITY"] = logging.getLevelName(level if verbose else logging.ERROR).lower()
    if "transformers.utils.logging" in sys.modules:
        sys.modules["transformers.utils.logging"].set_verbosity(level if verbose else logging.ERROR)
    # transformers' progress bars start off when huggingface_hub's are off at its import; later, switch both.
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is None:  # the variable, when set, wins (hub's rule)
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if verbose else disable_progress_bars)()
    if "transformers.utils.logging" in sys.modules:
        bars = sys.modules["transformers.utils.logging"]
        (bars.enable_progress_bar if verbose else bars.disable_progress_bar)()


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plugins(as_json: bool) -> None:
    """Installed plugins: versions, hooks, modalities, and broken plugins with their error."""
    infos = list(_registry().plugins.values())
    if as_json:
        click.echo(json.dumps([vars(i) for i in infos], indent=2))
        return
    table = Table(title="lbind plugins (entry-point group 'lbind')")
    for col in ("plugin", "distribution", "status", "hooks", "modalities"):
        table.add_column(col, overflow="fold")
    style = {"ok": "green", "broken": "bold red", "disabled": "dim"}
    for i in infos:
        table.add_row(
            i.name,
            " ".join(x for x in (i.distribution, i.version) if x) or "-",
            f"[{style[i.status]}]{i.status}[/]",
            "\n".join(i.hooks) or "-",
            ", ".join(i.modalities) or "-",
        )
    console.print(table if infos else "[yellow]no lbind plugins installed[/]")
    for i in infos:  # below the table, where a long message has the whole width
        if i.error:
            console.print(f"[{style[i.status]}]{i.name}:[/] {escape(i.error)}", highlight=False)


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
    for col in ("modality", "plugin", "presets", "defaults"):
        # presets wrap one per line at most, leaving the defaults the room they need
        table.add_column(col, overflow="fold", max_width=16 if col == "presets" else None)
    for name, reg, cfg in rows:
        plugin = " ".join(x for x in (reg.plugin.name, reg.plugin.version) if x)
        table.add_row(name, plugin, ", ".join(sorted(reg.cls.presets)), _defaults_summary(cfg))
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
    from lbcore.runconfig import load_run_config

    run, mods = load_run_config(file)
    console.print(f"[green]{file}: valid[/] (anchor {run.anchor.name}; modalities: {', '.join(mods) or 'none'})")


def _train_bar() -> Any:
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]train[/]"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} samples/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
    )


def _train_summary(m: dict[str, Any]) -> Table:
    table = Table(title="training summary", show_header=False)
    table.add_row("checkpoint", str(m["output"]))
    table.add_row("steps", f"{m['steps']} ({m['steps_this_run']} this run, {m['epochs']:g} epochs)")
    table.add_row("time", f"{m['wall_s']:.1f} s, {m['samples_per_s']:.1f} samples/s")
    for name, loss in m["final_loss"].items():
        shown = f"loss {loss:.4f}, " if loss is not None else ""
        table.add_row(name, f"{shown}temperature 1/{m['logit_scale'][name]:.1f}")
    skipped = sum(len(v) for v in m["skipped_files"].values())
    table.add_row("skipped files", str(skipped))
    return table


@cli.command()
@click.option("--modality", "-m", "modality_names", multiple=True, help="Modality to train (repeat for several).")
@click.option("--config", "config_file", type=click.Path(dir_okay=False), help="Run config YAML.")
@click.option(
    "--data",
    "data",
    multiple=True,
    help="Training manifest (JSONL/CSV): MODALITY=PATH, or one paired manifest for all.",
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
    from lbcore.caption_cli import train_caption_decoder

    if caption and checkpoint:
        train_caption_decoder(Path(checkpoint), source, data, steps=caption_steps, seed=flags.get("seed"))
        return
    flags["groups"] = [g.split(",") for g in groups] or None
    from lbcore.config import read_yaml
    from lbcore.runconfig import apply_overrides, resolve_config
    from lbcore.trainer import TrainEvent
    from lbcore.trainer import train as run_training

    raw = read_yaml(config_file) if config_file else {}
    merged = apply_overrides(
        raw, modalities=modality_names, data=data, output=output, preset=preset, source=config_file or "", **flags
    )
    plan = resolve_config(merged, source=config_file or "")

    bar = _train_bar()
    task: list[Any] = []

    captions = _progress_bar("captions")

    def on_event(event: TrainEvent) -> None:
        m = event.metrics
        if event.kind == "captions":  # the anchor encodes the captions missing from the cache
            if not captions.task_ids:
                captions.start()
                captions.add_task("through the anchor", total=event.total_steps, rate="")
            _advance(captions, captions.task_ids[0], event.step, event.total_steps)
        elif event.kind == "start":
            captions.stop()
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
            console.print(_train_summary(m))

    try:
        final = run_training(plan, progress=on_event)
    finally:
        captions.stop()
        bar.stop()
    if caption:
        source = source or (",".join(plan.train.groups[0]) if plan.train.groups else None)
        train_caption_decoder(final, source, data, steps=caption_steps, seed=flags.get("seed"))


# ------------------------------------------------------------------------------------------ evaluation and embedding
def _reader_options(items: tuple[str, ...]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs; values read as YAML scalars (``fold=1`` is an int, ``missing=skip`` a string)."""
    import yaml

    from lbcore.errors import ConfigError

    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.isidentifier():
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE with KEY a reader argument name")
        out[key] = yaml.safe_load(value) if value else ""
    return out


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return "-" if value is None else str(value)


def _progress_bar(label: str) -> Any:
    """A transient bar on stderr: description, bar, done/total, rate (items/s), elapsed time."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(
        TextColumn(f"[bold]{label}[/] {{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


def _advance(bar: Any, task: Any, done: int, total: int | None) -> None:
    """Move ``task`` to ``done`` of ``total`` and show its rate (rich's speed estimate) once there is one."""
    bar.update(task, completed=done, total=total)
    speed = bar.tasks[bar.task_ids.index(task)].speed
    bar.update(task, rate=f"{speed:.1f}/s" if speed else "")


def _eval_progress(bar: Any) -> Any:
    tasks: dict[str, Any] = {}

    def report(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bar.add_task(what, total=total, rate="")
        _advance(bar, tasks[what], done, total)

    return report


def _print_card(card: dict[str, Any], card_path: Any, plot_path: Any) -> None:
    from lbcore.cards import headline

    data = card["dataset"]
    about = Table(title="evaluation", show_header=False)
    about.add_row("checkpoint", f"{card['checkpoint']['path']} (sha256 {card['checkpoint']['sha256'][:12]})")
    evaluated = card["modality"] + (f" + {card['fuse']} (fused)" if card["fuse"] else "")
    evaluated += f" <-> {card['emergent']} (emergent)" if card["emergent"] else ""
    about.add_row("modality", evaluated)
    about.add_row("dataset", f"{data['reader']}: {data['manifest'] or data['root']} (split {data['split'] or '-'})")
    about.add_row(
        "task",
        f"{card['task']}, {data['num_items']} items" + (f", {len(data['classes'])} classes" if data["classes"] else ""),
    )
    about.add_row("time", f"{card['time_s']:.1f} s on {card['device']}")
    about.add_row("result card", str(card_path))
    if plot_path:
        about.add_row("plot", str(plot_path))
    console.print(about)
    table = Table(title="metrics (% except ranks)")
    columns = list(headline(card))
    table.add_column("inputs")
    for col in columns:
        short = col.replace("text_to_item_", "text->item ").replace("item_to_text_", "item->text ")
        table.add_column(short.replace("_to_", "->").replace("_", " "), justify="right")
    for name, metrics in card["metrics_per_modality"].items():
        table.add_row(name, *[_fmt(metrics.get(c)) for c in columns])
    label = "+".join([card["modality"], card["fuse"]]) + " (fused)" if card["fuse"] else card["modality"]
    if card.get("group"):
        members = "+".join(card["group"]["members"])
        table.add_row(f"{members} (logit fusion)", *[_fmt(card["group"]["logit_fusion"].get(c)) for c in columns])
        label = f"{members} (group, {card['group']['fusion']} fusion)"
    table.add_row(f"[bold]{label}[/]", *[f"[bold]{_fmt(card['metrics'].get(c))}[/]" for c in columns])
    console.print(table)
    per_class = card["metrics"].get("per_class") or card["metrics"].get("per_class_ap") or {}
    if 0 < len(per_class) <= 30:
        detail = Table(title="per class (%)")
        detail.add_column("class")
        detail.add_column("top-1" if card["task"] == "classification" else "AP", justify="right")
        for name, value in per_class.items():
            detail.add_row(name, _fmt(value))
        console.print(detail)


@cli.command("eval")
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
@click.option("--beam", type=int, default=1, show_default=True, help="--task captioning: beam width (1: greedy).")
@click.option("--fuse", metavar="MODALITY", help="Also score MODALITY and average the logits (paired manifest).")
@click.option("--emergent", metavar="MODALITY", help="Retrieval between --modality and MODALITY (paired manifest).")
@click.option("--group", metavar="A,B", help="Grouped evaluation of these modalities (paired manifest or demo).")
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
    from pathlib import Path

    from lbcore.cards import default_card_path, write_card
    from lbcore.errors import ConfigError
    from lbcore.evaluate import evaluate_checkpoint
    from lbcore.plot import write_plot

    checkpoint = _checkpoint_dir(checkpoint)
    if template_set is not None:
        if templates:
            raise ConfigError("give --template or --templates NAME, not both")
        named = _registry().registered(_only_modality(checkpoint, modality)).cls.template_set(template_set)
        templates = tuple(named)
    if task == "captioning":
        from lbcore.caption_cli import print_caption_card
        from lbcore.captioneval import evaluate_captioning

        card = evaluate_captioning(checkpoint, manifest=manifest, beams=beam, batch_size=batch_size)
        name = f"captioning-{card['modality']}-{card['dataset']['split']}.json"
        card_path = Path(output) if output else Path(checkpoint).resolve().parent / "eval" / name
        write_card(card, card_path)
        if as_json:
            click.echo(json.dumps(card, indent=2))
        else:
            print_caption_card(card, card_path)
        return
    with _progress_bar("eval") as bar:
        evaluation = evaluate_checkpoint(
            checkpoint,
            modality,
            dataset=dataset,
            data_root=data_root,
            manifest=manifest,
            split=split,
            reader_options=_reader_options(options),
            task=task,  # type: ignore[arg-type]
            fuse=fuse,
            emergent=emergent,
            group=group.split(",") if group else None,
            templates=templates or None,
            batch_size=batch_size,
            num_workers=num_workers,
            progress=_eval_progress(bar),
        )
    card = evaluation.card
    card_path = Path(output) if output else default_card_path(checkpoint, card)
    plot_path = None
    if plot and evaluation.plot is not None:
        plot_path = write_plot(evaluation.plot, card_path.with_suffix(".png"))
        card["plot"] = str(plot_path)
    write_card(card, card_path)
    if as_json:
        click.echo(json.dumps(card, indent=2))
    else:
        _print_card(card, card_path, plot_path)


def _checkpoint_dir(path: str) -> str:
    """A checkpoint folder, or a run folder standing for its final (else newest) checkpoint."""
    from lbcore.checkpoint import resolve_checkpoint_dir

    return str(resolve_checkpoint_dir(path))


def _only_modality(checkpoint: str, modality: str | None) -> str:
    from lbcore.checkpoint import read_meta, resolve_checkpoint_dir
    from lbcore.errors import ConfigError

    if modality:
        return modality
    names = list(read_meta(resolve_checkpoint_dir(checkpoint))["modalities"])
    if len(names) != 1:
        raise ConfigError(f"{checkpoint} holds {', '.join(names)}: choose one with --modality")
    return names[0]


@cli.command()
@click.option("--checkpoint", "-c", required=True, type=click.Path(file_okay=False), help=CHECKPOINT_HELP)
@click.option("--modality", "-m", help="Modality of the inputs (default: the checkpoint's only one).")
@click.argument("inputs", nargs=-1, required=True)
@click.option(
    "--output", "-o", required=True, type=click.Path(dir_okay=False), help="Embeddings: .npy or .safetensors."
)
@click.option("--batch-size", type=int, default=32, show_default=True, help="Items per forward pass.")
@click.option("--num-workers", type=int, help="DataLoader workers preprocessing the files.")
@click.option("--save-every", type=int, default=4096, show_default=True, help="Rewrite the output every N new rows.")
def embed(
    checkpoint: str,
    modality: str | None,
    inputs: tuple[str, ...],
    output: str,
    batch_size: int,
    num_workers: int | None,
    save_every: int,
) -> None:
    """Embed INPUTS (files, folders searched recursively, or @LIST files with one path per line) into OUTPUT.

    Writes OUTPUT (.npy, or .safetensors with one tensor 'embeddings'), float32 [rows, E] and L2-normalised, and
    OUTPUT.json listing the input of every row in order, plus the files that could not be read. Running again
    with the same OUTPUT embeds only inputs not in it yet. Exits with 1 when some input could not be read.
    """
    from lbcore.embedding import embed_job

    checkpoint = _checkpoint_dir(checkpoint)
    name = _only_modality(checkpoint, modality)
    with _progress_bar("embed") as bar:
        task = bar.add_task(name, total=None, rate="")
        result = embed_job(
            checkpoint,
            name,
            inputs,
            output,
            batch_size=batch_size,
            num_workers=num_workers,
            save_every=save_every,
            progress=lambda done, total: _advance(bar, task, done, total),
        )
    table = Table(title="embed summary", show_header=False)
    table.add_row("output", f"{result.output} (+ {result.sidecar.name})")
    table.add_row("rows", str(result.rows))
    table.add_row("embedded now", str(len(result.embedded)))
    table.add_row("already there", str(result.already_done))
    table.add_row("unreadable", f"[red]{len(result.failed)}[/]" if result.failed else "0")
    console.print(table)
    if result.failed:
        for path, reason in result.failed.items():
            err_console.print(f"[red]unreadable:[/] {path}: {reason}", highlight=False)
        sys.exit(1)


class _MediaOptionsCommand(click.Command):
    """A command with one repeatable ``--<modality> FILE`` option per registered modality, added when the command
    is parsed or its help shown (plugins are loaded then, never at import). A modality whose name collides with
    one of the command's own options is reachable through ``--input MODALITY=FILE`` only."""

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        params = super().get_params(ctx)
        taken = {p.name for p in params} | {o for p in params for o in p.opts}
        extra: list[click.Parameter] = []
        for name in _registry().modality_names():
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


@cli.command(cls=_MediaOptionsCommand)
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
    from pathlib import Path

    import torch

    from lbcore.embedding import media_similarity
    from lbcore.errors import ConfigError
    from lbcore.model import load
    from lbcore.plot import PlotData, write_plot

    media: list[tuple[str, str]] = [(name, f) for name, files in media_files.items() for f in files]
    for pair in pairs:
        name, sep, path = pair.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--input {pair!r}: expected MODALITY=FILE")
        media.append((name, path))
    if not media:
        raise ConfigError("no media file given: pass --<modality> FILE or --input MODALITY=FILE")
    model = load(_checkpoint_dir(checkpoint))
    matrix = media_similarity(model, texts, media)  # [T, M]
    shown = matrix
    if softmax:
        scales = torch.tensor([model.logit_scale(name) for name, _ in media], device=matrix.device)
        shown = torch.softmax(matrix * scales, dim=0)  # per file (column): a distribution over the texts
    # Column titles: modality and file name (the whole path where two files share a name).
    names = [Path(path).name for _, path in media]
    labels = [f"{m}: {n if names.count(n) == 1 else p}" for (m, p), n in zip(media, names, strict=True)]
    if plot:
        data = PlotData(
            "similarity", shown.tolist(), list(texts), [p for _, p in media], "text x media", "media", "text"
        )
        write_plot(data, plot)
    if as_json:
        out = {"texts": list(texts), "media": [{"modality": n, "path": p} for n, p in media]}
        out["softmax" if softmax else "cosine"] = shown.tolist()
        click.echo(json.dumps(out, indent=2))
        return
    table = Table(title="softmax over texts (per file)" if softmax else "cosine similarity")
    table.add_column("text")
    for label in labels:
        table.add_column(label, justify="right", overflow="fold")
    for i, text in enumerate(texts):
        best = shown[i].argmax().item()
        table.add_row(
            text, *[f"[bold]{v:.3f}[/]" if j == best else f"{v:.3f}" for j, v in enumerate(shown[i].tolist())]
        )
    console.print(table)
    if plot:
        console.print(f"plot: {plot}")


@cli.command()
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
    from pathlib import Path

    from rich import box

    from lbcore.config import read_yaml
    from lbcore.showcase import run_demo

    config = read_yaml(config_file) if config_file else {}
    with _progress_bar("demo") as bar:
        tasks: dict[str, Any] = {}

        def on_train(name: str, event: Any) -> None:
            if event.kind == "captions":
                if f"captions {name}" not in tasks:
                    tasks[f"captions {name}"] = bar.add_task(f"captions {name}", total=event.total_steps, rate="")
                _advance(bar, tasks[f"captions {name}"], event.step, event.total_steps)
            elif event.kind == "start":
                tasks[name] = bar.add_task(f"train {name}", total=event.total_steps, completed=event.step, rate="")
            elif event.kind == "step" and name in tasks:
                bar.update(tasks[name], completed=event.step)

        def on_result(row: dict[str, Any]) -> None:
            shown = _fmt(row.get("top1"))
            bar.console.print(
                f"{row['modality']}: {row['status']}" + (f", top-1 {shown}%" if row.get("top1") is not None else "")
            )

        summary = run_demo(
            modality_names or None,
            output,
            config=config,
            min_top1=min_top1,
            fresh=fresh,
            plots=not no_plot,
            num_workers=num_workers,
            train_progress=on_train,
            eval_progress=_eval_progress(bar),
            on_result=on_result,
        )
    table = Table(title=f"lbind demo: zero-shot top-1 on the held-out demo split (bar {min_top1:g}%)", box=box.SIMPLE)
    columns = {"top1": "top-1 %", "top5": "top-5 %", "chance": "chance %", "test_items": "test items"}
    columns.update({"steps": "steps", "train_s": "train s", "eval_s": "eval s"})
    table.add_column("modality", no_wrap=True, min_width=8)
    table.add_column("status", no_wrap=True, min_width=9)
    for header in columns.values():
        table.add_column(header, justify="right")
    style = {"ok": "green", "below bar": "bold red", "failed": "bold red", "skipped": "yellow"}
    for row in summary["modalities"]:
        cells = []
        for key in columns:
            value = row.get(key)
            cells.append(
                "-" if value is None else f"{value:.1f}" if key in ("top1", "top5", "chance") else f"{value:.0f}"
            )
        table.add_row(row["modality"], f"[{style[row['status']]}]{row['status']}[/]", *cells)
    console.print(table)
    console.print(f"total {summary['total_s']:.0f} s; summary {Path(output) / 'summary.json'}")
    for row in summary["modalities"]:
        if row.get("error"):
            err_console.print(f"[red]{row['modality']}:[/] {row['error']}", highlight=False)
    if not summary["passed"]:
        bad = [r["modality"] for r in summary["modalities"] if r["status"] in ("failed", "below bar")]
        err_console.print(f"[bold red]demo failed:[/] {', '.join(bad) or 'no modality ran'}")
        sys.exit(1)


@cli.command()
@click.option(
    "--checkpoint", "-c", "checkpoints", multiple=True, type=click.Path(file_okay=False),
    help="Checkpoint folder (repeat for several; default: the demo checkpoints runs/demo/<modality>/final).",
)  # fmt: skip
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to serve on (local only by default).")
@click.option("--port", type=int, help="Port (default: the first free one from 7860).")
def app(checkpoints: tuple[str, ...], host: str, port: int | None) -> None:
    """Serve the interactive demo as a local web page: text <-> media, zero-shot, media <-> media, the model."""
    from lbcore.appview import start

    running = start(checkpoints or None, host=host, port=port)
    console.print(f"lbind app: [bold]{running.url}[/] ({', '.join(running.session.modalities)}); Ctrl+C stops it")
    try:
        running.wait()
    finally:
        running.close()


def _add_core_commands() -> None:
    """Commands whose implementation lives in its own lbcore module (imported lazily by click callbacks)."""
    from lbcore.caption_cli import caption
    from lbcore.convert_cli import convert
    from lbcore.push_cli import push
    from lbcore.scaffold import new_modality

    if "new-modality" not in cli.commands:
        cli.add_command(new_modality)
    if "convert" not in cli.commands:
        cli.add_command(convert)
    if "caption" not in cli.commands:
        cli.add_command(caption)
    if "push" not in cli.commands:
        cli.add_command(push)


def _leading_verbosity(argv: list[str]) -> int:
    """How many -v the arguments before the command name give (what the group callback will see)."""
    count = 0
    for arg in argv:
        if arg == "--verbose" or (arg.startswith("-v") and set(arg[1:]) == {"v"}):
            count += 1 if arg == "--verbose" else len(arg) - 1
        elif not arg.startswith("-"):
            break
    return count


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: plugins add their commands, typed errors become one red line."""
    # Output is set up before plugins load (their import errors are logged then); the group callback repeats it.
    _configure_output(_leading_verbosity(sys.argv[1:] if argv is None else argv))
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
