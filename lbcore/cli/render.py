"""Everything ``lbind`` shows: the consoles, tables, progress bars, result cards and messages, all with rich.

The command modules parse options, call the library and hand what it returns to the functions here. Text that
comes from the user or from the data (paths, names, captions, error messages) never goes through rich markup
unescaped: a file called ``x[/b].png`` prints as ``x[/b].png``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from lbcore.plugins import PluginInfo, RegisteredModality

if TYPE_CHECKING:  # types only: rendering must not load torch for `lbind plugins` or `lbind --help`
    from lbcore.convert.writer import ConversionResult
    from lbcore.embedding import EmbedJobResult
    from lbcore.trainer import TrainEvent

console = Console()
err_console = Console(stderr=True)

_STATUS_STYLE = {"ok": "green", "broken": "bold red", "disabled": "dim"}
_DEMO_STYLE = {"ok": "green", "below bar": "bold red", "failed": "bold red", "skipped": "yellow"}


def safe(value: Any) -> str:
    """``value`` as text for a markup string or a table cell: rich markup in it prints literally."""
    return escape(str(value))


def fmt(value: Any) -> str:
    """A metric for a table: floats with two decimals, ``-`` for a missing one."""
    if isinstance(value, float):
        return f"{value:.2f}"
    return "-" if value is None else str(value)


def echo_json(data: Any) -> None:
    """Machine-readable output: plain JSON on stdout, never through rich."""
    click.echo(json.dumps(data, indent=2))


# ------------------------------------------------------------------------------------------------- messages
def error(message: object, label: str = "error:") -> None:
    """One red line on stderr: ``label`` and the message, printed literally (no markup, no highlighting)."""
    err_console.print(Text.assemble((label, "bold red"), " ", str(message)), highlight=False, soft_wrap=True)


def aborted() -> None:
    err_console.print("[red]aborted[/]")


def dim_note(message: object) -> None:
    """A dimmed line on stderr, printed literally (what the user may want to know, not an error)."""
    err_console.print(Text(str(message), style="dim"), highlight=False, soft_wrap=True)


def note(message: object) -> None:
    """A plain line on stdout, printed literally."""
    console.print(Text(str(message)), highlight=False, soft_wrap=True)


# ------------------------------------------------------------------------------------------------- plugins, config
def plugins_table(infos: list[PluginInfo]) -> None:
    if not infos:
        console.print("[yellow]no lbind plugins installed[/]")
        return
    table = Table(title="lbind plugins (entry-point group 'lbind')")
    for col in ("plugin", "distribution", "status", "hooks", "modalities"):
        table.add_column(col, overflow="fold")
    for i in infos:
        table.add_row(
            safe(i.name),
            safe(_name_version(i.distribution, i.version)),
            f"[{_STATUS_STYLE[i.status]}]{i.status}[/]",
            safe("\n".join(i.hooks) or "-"),
            safe(", ".join(i.modalities) or "-"),
        )
    console.print(table)
    for i in infos:  # below the table, where a long message has the whole width
        if i.error:
            console.print(f"[{_STATUS_STYLE[i.status]}]{safe(i.name)}:[/] {safe(i.error)}", highlight=False)


def _name_version(name: str | None, version: str | None) -> str:
    """``name version`` in one cell (``-`` when neither is known)."""
    return " ".join(x for x in (name, version) if x) or "-"


def defaults_summary(cfg: Any) -> str:
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


def modalities_table(rows: list[tuple[str, RegisteredModality, Any]], broken: list[str]) -> None:
    """``rows``: (name, registration, default config) per modality; ``broken``: names of broken plugins."""
    if rows:
        table = Table(title="lbind modalities (defaults: the 'languagebind' preset)")
        for col in ("modality", "plugin", "presets", "defaults"):
            # presets wrap one per line at most, leaving the defaults the room they need
            table.add_column(col, overflow="fold", max_width=16 if col == "presets" else None)
        for name, reg, cfg in rows:
            presets = ", ".join(sorted(reg.cls.presets))
            plugin = _name_version(reg.plugin.name, reg.plugin.version)
            table.add_row(safe(name), safe(plugin), safe(presets), safe(defaults_summary(cfg)))
        console.print(table)
    else:
        console.print("[yellow]no modalities registered: install a plugin (see `lbind plugins`)[/]")
    if broken:
        err_console.print(f"[red]{len(broken)} broken plugin(s): {safe(', '.join(broken))}; see `lbind plugins`[/]")


def yaml_text(text: str) -> None:
    console.print(Syntax(text, "yaml", background_color="default"))


def config_valid(file: str, anchor: str, modalities: Iterable[str]) -> None:
    names = ", ".join(modalities) or "none"
    console.print(f"[green]{safe(file)}: valid[/] (anchor {safe(anchor)}; modalities: {safe(names)})")


# ------------------------------------------------------------------------------------------------- progress
def progress_bar(label: str) -> Progress:
    """A transient bar per task on stderr, titled ``label`` (one task per thing being processed): description,
    bar, done/total, rate (items/s; every task needs a ``rate`` field, see :func:`advance`), elapsed time."""
    return Progress(
        TextColumn(f"[bold]{safe(label)}[/] {{task.description}}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    )


def eval_progress(bar: Progress) -> Callable[[str, int, int], None]:
    """A ``progress(what, done, total)`` callback that keeps one task of ``bar`` per ``what``."""
    tasks: dict[str, Any] = {}

    def report(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bar.add_task(safe(what), total=total, rate="")
        advance(bar, tasks[what], done, total)

    return report


def advance(bar: Progress, task: TaskID, done: int, total: int | None) -> None:
    """Move ``task`` to ``done`` of ``total`` and show its rate (rich's speed estimate) once there is one."""
    bar.update(task, completed=done, total=total)
    speed = bar.tasks[bar.task_ids.index(task)].speed
    bar.update(task, rate=f"{speed:.1f}/s" if speed else "")


# ------------------------------------------------------------------------------------------------- training
def _train_bar() -> Progress:
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


def train_summary(m: Mapping[str, Any]) -> Table:
    """The table printed when a training run ends, from the ``end`` event's metrics."""
    table = Table(title="training summary", show_header=False)
    table.add_row("checkpoint", safe(m["output"]))
    table.add_row("steps", f"{m['steps']} ({m['steps_this_run']} this run, {m['epochs']:g} epochs)")
    table.add_row("time", f"{m['wall_s']:.1f} s, {m['samples_per_s']:.1f} samples/s")
    for name, loss in m["final_loss"].items():
        shown = f"loss {loss:.4f}, " if loss is not None else ""
        table.add_row(safe(name), f"{shown}temperature 1/{m['logit_scale'][name]:.1f}")
    skipped = sum(len(v) for v in m["skipped_files"].values())
    table.add_row("skipped files", str(skipped))
    return table


class TrainDisplay:
    """The training run on screen: parameter counts, a bar with loss and speed, checkpoints, the summary.

    Use as a context manager around the run and pass :meth:`on_event` as the trainer's progress callback.
    """

    def __init__(self) -> None:
        self.bar = _train_bar()
        self.captions = progress_bar("captions")
        self.task: Any = None

    def __enter__(self) -> TrainDisplay:
        return self

    def __exit__(self, *exc: object) -> None:
        self.captions.stop()
        self.bar.stop()

    def on_event(self, event: TrainEvent) -> None:
        m = event.metrics
        if event.kind == "captions":  # the anchor encodes the captions missing from the cache
            if not self.captions.task_ids:
                self.captions.start()
                self.captions.add_task("through the anchor", total=event.total_steps, rate="")
            advance(self.captions, self.captions.task_ids[0], event.step, event.total_steps)
        elif event.kind == "start":
            self.captions.stop()
            self._start(event)
        elif event.kind == "step" and self.task is not None:
            self.bar.update(self.task, completed=event.step, loss=f"{m['loss']:.4f}", speed=f"{m['samples_per_s']:.1f}")
        elif event.kind == "checkpoint":
            self.bar.console.print(Text(event.message, style="dim"))
        elif event.kind == "end":
            self.bar.stop()
            console.print(train_summary(m))

    def _start(self, event: TrainEvent) -> None:
        m = event.metrics
        for name, counts in m["params"].items():
            lora = f" ({counts['lora']:,} LoRA)" if counts["lora"] else ""
            err_console.print(
                Text(f"{name}: {counts['trainable']:,} trainable of {counts['total']:,} parameters{lora}")
            )
        err_console.print(
            Text(
                f"{event.total_steps} steps of {m['samples_per_step']} samples on {m['processes']} process(es), "
                f"{m['device']}, mixed precision {m['mixed_precision']}; output {m['output']}"
            )
        )
        self.bar.start()
        self.task = self.bar.add_task("train", total=event.total_steps, completed=event.step, loss="-", speed="-")


# ------------------------------------------------------------------------------------------------- evaluation
def _card_about(card: Mapping[str, Any], card_path: Path, plot_path: Path | None) -> Table:
    data = card["dataset"]
    about = Table(title="evaluation", show_header=False)
    about.add_row("checkpoint", safe(f"{card['checkpoint']['path']} (sha256 {card['checkpoint']['sha256'][:12]})"))
    evaluated = card["modality"] + (f" + {card['fuse']} (fused)" if card["fuse"] else "")
    evaluated += f" <-> {card['emergent']} (emergent)" if card["emergent"] else ""
    about.add_row("modality", safe(evaluated))
    source = data["manifest"] or data["root"]
    about.add_row("dataset", safe(f"{data['reader']}: {source} (split {data['split'] or '-'})"))
    classes = f", {len(data['classes'])} classes" if data["classes"] else ""
    about.add_row("task", f"{card['task']}, {data['num_items']} items{classes}")
    about.add_row("time", safe(f"{card['time_s']:.1f} s on {card['device']}"))
    about.add_row("result card", safe(card_path))
    if plot_path:
        about.add_row("plot", safe(plot_path))
    return about


def _metric_header(column: str) -> str:
    short = column.replace("text_to_item_", "text->item ").replace("item_to_text_", "item->text ")
    return short.replace("_to_", "->").replace("_", " ")


def result_card(card: Mapping[str, Any], columns: list[str], card_path: Path, plot_path: Path | None) -> None:
    """A result card as tables: what was evaluated, the ``columns`` metrics per input, and per-class scores."""
    console.print(_card_about(card, card_path, plot_path))
    table = Table(title="metrics (% except ranks)")
    table.add_column("inputs")
    for col in columns:
        table.add_column(_metric_header(col), justify="right")
    for name, metrics in card["metrics_per_modality"].items():
        table.add_row(safe(name), *[fmt(metrics.get(c)) for c in columns])
    label = "+".join([card["modality"], card["fuse"]]) + " (fused)" if card["fuse"] else card["modality"]
    if card.get("group"):
        members = "+".join(card["group"]["members"])
        table.add_row(safe(f"{members} (logit fusion)"), *[fmt(card["group"]["logit_fusion"].get(c)) for c in columns])
        label = f"{members} (group, {card['group']['fusion']} fusion)"
    table.add_row(f"[bold]{safe(label)}[/]", *[f"[bold]{fmt(card['metrics'].get(c))}[/]" for c in columns])
    console.print(table)
    per_class = card["metrics"].get("per_class") or card["metrics"].get("per_class_ap") or {}
    if 0 < len(per_class) <= 30:
        detail = Table(title="per class (%)")
        detail.add_column("class")
        detail.add_column("top-1" if card["task"] == "classification" else "AP", justify="right")
        for name, value in per_class.items():
            detail.add_row(safe(name), fmt(value))
        console.print(detail)


# ------------------------------------------------------------------------------------------------- embedding
def caption_card(card: Mapping[str, Any], card_path: Path) -> None:
    """A captioning result card: BLEU-4 and CIDEr of the decoder (and of the nearest-caption baseline), examples."""
    data = card["dataset"]
    table = Table(title=f"captioning: {safe(card['modality'])} on {safe(data['manifest'])} ({data['num_items']} items)")
    table.add_column("captions")
    table.add_column("BLEU-4", justify="right")
    table.add_column("CIDEr", justify="right")
    beams = card["decoding"]["beams"]
    table.add_row(
        f"decoder ({'greedy' if beams == 1 else f'beam {beams}'})",
        *(fmt(card["metrics"][k]) for k in ("bleu4", "cider")),
    )
    if "baseline" in card:
        base = card["baseline"]["nearest_caption"]
        table.add_row("nearest training caption", *(fmt(base[k]) for k in ("bleu4", "cider")))
    console.print(table)
    for example in card["examples"][:5]:
        console.print(f"[dim]{safe(example['references'][0])}[/] -> {safe(example['caption'])}", highlight=False)
    console.print(f"result card: {safe(card_path)}")


def embed_summary(result: EmbedJobResult) -> None:
    """What an embed job did, then one line on stderr per unreadable input."""
    table = Table(title="embed summary", show_header=False)
    table.add_row("output", safe(f"{result.output} (+ {result.sidecar.name})"))
    table.add_row("rows", str(result.rows))
    table.add_row("embedded now", str(len(result.embedded)))
    table.add_row("already there", str(result.already_done))
    table.add_row("unreadable", f"[red]{len(result.failed)}[/]" if result.failed else "0")
    console.print(table)
    for path, reason in result.failed.items():
        error(f"{path}: {reason}", label="unreadable:")


def similarity_table(texts: list[str], media: list[tuple[str, str]], matrix: list[list[float]], softmax: bool) -> None:
    """The text x media matrix, the best file per text in bold; columns titled modality and file name (the whole
    path where two files share a name)."""
    names = [Path(path).name for _, path in media]
    labels = [f"{m}: {n if names.count(n) == 1 else p}" for (m, p), n in zip(media, names, strict=True)]
    table = Table(title="softmax over texts (per file)" if softmax else "cosine similarity")
    table.add_column("text")
    for label in labels:
        table.add_column(safe(label), justify="right", overflow="fold")
    for text, row in zip(texts, matrix, strict=True):
        best = max(range(len(row)), key=row.__getitem__)
        table.add_row(safe(text), *[f"[bold]{v:.3f}[/]" if j == best else f"{v:.3f}" for j, v in enumerate(row)])
    console.print(table)


# ------------------------------------------------------------------------------------------------- demo
class DemoDisplay:
    """Progress of ``lbind demo``: one bar per training run and per evaluation, a line per finished modality."""

    def __init__(self) -> None:
        self.bar = progress_bar("demo")
        self.tasks: dict[str, Any] = {}
        self.eval_progress = eval_progress(self.bar)

    def __enter__(self) -> DemoDisplay:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.__exit__(*exc)

    def on_train(self, name: str, event: TrainEvent) -> None:
        if event.kind == "captions":
            key = f"captions {name}"
            if key not in self.tasks:
                self.tasks[key] = self.bar.add_task(safe(key), total=event.total_steps, rate="")
            advance(self.bar, self.tasks[key], event.step, event.total_steps)
        elif event.kind == "start":
            self.tasks[name] = self.bar.add_task(
                safe(f"train {name}"), total=event.total_steps, completed=event.step, rate=""
            )
        elif event.kind == "step" and name in self.tasks:
            self.bar.update(self.tasks[name], completed=event.step)

    def on_result(self, row: Mapping[str, Any]) -> None:
        top1 = f", top-1 {fmt(row.get('top1'))}%" if row.get("top1") is not None else ""
        self.bar.console.print(Text(f"{row['modality']}: {row['status']}{top1}"), highlight=False)


def demo_summary(summary: Mapping[str, Any], min_top1: float, output: str) -> None:
    """The demo's table, its total time, every modality's error, and the verdict when it failed."""
    table = Table(title=f"lbind demo: zero-shot top-1 on the held-out demo split (bar {min_top1:g}%)", box=box.SIMPLE)
    columns = {"top1": "top-1 %", "top5": "top-5 %", "chance": "chance %", "test_items": "test items"}
    columns.update({"steps": "steps", "train_s": "train s", "eval_s": "eval s"})
    table.add_column("modality", no_wrap=True, min_width=8)
    table.add_column("status", no_wrap=True, min_width=9)
    for header in columns.values():
        table.add_column(header, justify="right")
    for row in summary["modalities"]:
        cells = []
        for key in columns:
            value = row.get(key)
            percent = key in ("top1", "top5", "chance")
            cells.append("-" if value is None else f"{value:.1f}" if percent else f"{value:.0f}")
        table.add_row(safe(row["modality"]), f"[{_DEMO_STYLE[row['status']]}]{row['status']}[/]", *cells)
    console.print(table)
    note(f"total {summary['total_s']:.0f} s; summary {Path(output) / 'summary.json'}")
    for row in summary["modalities"]:
        if row.get("error"):
            error(row["error"], label=f"{row['modality']}:")
    if not summary["passed"]:
        bad = [r["modality"] for r in summary["modalities"] if r["status"] in ("failed", "below bar")]
        error(", ".join(bad) or "no modality ran", label="demo failed:")


# ------------------------------------------------------------------------------------------------- convert, scaffold
def conversion_notes(source: str, result: ConversionResult) -> None:
    """The notes one conversion reported, dimmed, as soon as it is done."""
    for line in result.report:
        console.print(Text(f"{source}: {line}", style="dim"), highlight=False, soft_wrap=True)


def conversions(output: Path, done: list[tuple[str, ConversionResult]]) -> None:
    """One row per converted release (SOURCE as given, its result), and how to use the checkpoint."""
    table = Table(title=f"converted into {safe(output)}")
    for col in ("source", "model type", "modality", "LoRA merged", "settings", "logit scale", "anchor"):
        table.add_column(col, overflow="fold")
    for source, result in done:
        lora = f"r={result.lora['rank']}, alpha={result.lora['alpha']:g}" if result.lora else "-"
        settings = ", ".join(f"{k}={v}" for k, v in result.settings.items()) or "-"
        anchor = f"{'shared' if result.anchor_shared else 'written'} ({result.anchor_fingerprint[:12]})"
        scale = f"{result.logit_scale:.4f} (x{math.exp(result.logit_scale):.1f})"
        cells = (source, result.model_type, result.modality, lora, settings, scale, anchor)
        table.add_row(*[safe(c) for c in cells])
    console.print(table)
    note(f"load it with lbcore.load({str(output)!r}) or `lbind eval --checkpoint {output}`")


def pushed(checkpoint: str, url: str, repo_id: str) -> None:
    """Where ``lbind push`` put the checkpoint and how to load it (plain lines on stdout)."""
    click.echo(f"pushed {checkpoint} to {url}")
    click.echo(f'load it with lbcore.load("hf://{repo_id}")')


def app_serving(url: str, modalities: Iterable[str]) -> None:
    """The address ``lbind app`` serves on and the modalities it loaded."""
    names = safe(", ".join(modalities))
    console.print(f"lbind app: [bold]{safe(url)}[/] ({names}); Ctrl+C stops it", highlight=False)


def plugin_created(name: str, path: Path) -> None:
    """What ``lbind new-modality`` made and the next steps (paths on one line each, so they stay copyable)."""
    created = Text.assemble(("created", "green"), f" the {name} modality plugin in ", (str(path), "bold"))
    console.print(created, highlight=False, soft_wrap=True)
    note(
        "next:\n"
        f"  fill in the places marked TODO(plugin) in {path / f'lbind_{name}' / 'modality.py'} and demo.py\n"
        f"  pytest {path / 'tests'}\n"
        f"  pip install -e {path}\n"
        "  lbind modalities\n"
        f"  lbind train --modality {name}"
    )
