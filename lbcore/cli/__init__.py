"""The ``lbind`` command line: parse, call the library, render with rich (:mod:`lbcore.cli.render`).

One module per command group (:data:`COMMANDS` maps each command to it). A command's module is imported when
the command runs, so ``lbind plugins`` or ``lbind --help`` do not load torch and the runners; the short help
that ``lbind --help`` lists comes from :data:`COMMANDS` (a test checks it against each command's docstring).
Plugins add their own commands through the ``register_commands`` hook when :func:`main` starts.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from typing import NamedTuple

import click
from rich.logging import RichHandler

from lbcore.cli import render
from lbcore.errors import LbindError
from lbcore.plugins import default_registry


class CommandEntry(NamedTuple):
    """Where a core command lives: its module, the click command's attribute there, and the first paragraph of its
    help (what ``lbind --help`` shortens into the command list)."""

    module: str
    attribute: str
    summary: str


COMMANDS: dict[str, CommandEntry] = {
    "plugins": CommandEntry(
        "lbcore.cli.plugins",
        "plugins",
        "Installed plugins: versions, hooks, modalities, and broken plugins with their error.",
    ),
    "modalities": CommandEntry(
        "lbcore.cli.plugins",
        "modalities",
        "Registered modalities with their plugin, version and config defaults.",
    ),
    "config": CommandEntry("lbcore.cli.config", "config", "Inspect and validate configuration."),
    "train": CommandEntry(
        "lbcore.cli.train",
        "train",
        "Train modality encoders against the frozen anchor (no --data: the demo preset on the demo dataset).",
    ),
    "eval": CommandEntry(
        "lbcore.cli.evaluate",
        "evaluate_command",
        "Zero-shot evaluation of a checkpoint (no data argument: the modality's demo test split); writes a result "
        "card.",
    ),
    "embed": CommandEntry(
        "lbcore.cli.embed",
        "embed",
        "Embed INPUTS (files, folders searched recursively, or @LIST files with one path per line) into OUTPUT.",
    ),
    "similarity": CommandEntry(
        "lbcore.cli.embed",
        "similarity",
        "The text x media similarity matrix: rows are --text, columns the files given with --<modality> FILE "
        "(one option per installed modality, e.g. --audio a.wav --video b.mp4) or --input MODALITY=FILE.",
    ),
    "demo": CommandEntry(
        "lbcore.cli.demo",
        "demo",
        "Train every modality's demo preset on its demo data, evaluate zero-shot on the held-out split, print one "
        "table and write OUTPUT/summary.json.",
    ),
    "app": CommandEntry(
        "lbcore.cli.app",
        "app",
        "Serve the interactive demo as a local web page: text <-> media, zero-shot, media <-> media, the model.",
    ),
    "caption": CommandEntry(
        "lbcore.cli.caption",
        "caption",
        "Caption media files with the checkpoint's decoder (ITEM: FILE, or MODALITY=FILE,... for a group decoder).",
    ),
    "convert": CommandEntry(
        "lbcore.cli.convert", "convert", "Convert released checkpoints into lbind checkpoint folders."
    ),
    "push": CommandEntry(
        "lbcore.cli.push",
        "push",
        "Upload the lbind checkpoint folder CHECKPOINT to the Hub model repository REPO_ID (ORG/NAME), with a "
        "model card (README.md: metadata, modalities, anchor, training config, the metrics of its result cards, "
        "how to load it).",
    ),
    "cache-text": CommandEntry(
        "lbcore.cli.cachetext",
        "cache_text",
        "Encode every caption of MANIFEST... missing from the caption store, so that training only maps it.",
    ),
    "shard": CommandEntry(
        "lbcore.cli.shard",
        "shard",
        "Write the rows of MANIFEST (JSONL/CSV, plain or paired) as WebDataset shards in OUTPUT, with shards.json "
        'and the caption table; train on them with --data "OUTPUT/shard-{000000..NNNNNN}.tar".',
    ),
    "new-modality": CommandEntry(
        "lbcore.cli.scaffold",
        "new_modality",
        "Create a new modality plugin distribution NAME/ (package lbind_NAME) from the template.",
    ),
}


def load_command(name: str) -> click.Command:
    """Import the module of the core command ``name`` and return the command."""
    entry = COMMANDS[name]
    command = getattr(importlib.import_module(entry.module), entry.attribute)
    if not isinstance(command, click.Command):
        raise TypeError(f"{entry.module}.{entry.attribute} is not a click command")
    return command


class LazyGroup(click.Group):
    """A click group whose core commands (:data:`COMMANDS`) are imported on first use (click's lazy-loading
    pattern). Commands added with :meth:`add_command` (plugins') take precedence, as they did before."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(COMMANDS))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in COMMANDS:
            command = load_command(cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of ``--help``, as click writes it, with each core command's help taken from
        :data:`COMMANDS` instead of importing its module."""
        commands = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name) or click.Command(name, help=COMMANDS[name].summary)
            if not command.hidden:
                commands.append((name, command))
        if commands:
            limit = formatter.width - 6 - max(len(name) for name, _ in commands)
            with formatter.section("Commands"):
                formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in commands])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="lbind", prog_name="lbind")
def cli(verbose: int) -> None:
    """lbind: bind any modality to language through a frozen text anchor."""
    configure_output(verbose)


# Libraries whose info logs and progress bars (transformers' "Loading weights", huggingface_hub's downloads,
# accelerate's set-up notes) are hidden unless -v is given.
THIRD_PARTY_LOGGERS = ("transformers", "huggingface_hub", "accelerate", "peft", "timm", "torch", "urllib3", "filelock")
# lbind loggers whose INFO lines every user should see (e.g. which checkpoint of a run folder was taken).
NOTICE_LOGGERS = ("lbcore.checkpoint",)


def configure_output(verbose: int) -> None:
    """Logging through rich on stderr: lbind's warnings (and notices) by default, -v info, -vv debug; third-party
    info logs and progress bars only with -v."""
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = RichHandler(console=render.err_console, show_time=verbose > 0, show_path=verbose > 1)
    logging.basicConfig(level=level, format="%(message)s", handlers=[handler], force=True)
    for name in NOTICE_LOGGERS:
        logging.getLogger(name).setLevel(min(level, logging.INFO))
    third_party = level if verbose else logging.ERROR
    for name in THIRD_PARTY_LOGGERS:
        logging.getLogger(name).setLevel(third_party)
    # transformers sets its own logger's level when first imported, from TRANSFORMERS_VERBOSITY; importing it
    # here would cost every command a second, so set the variable, and the level too if it is loaded already.
    os.environ["TRANSFORMERS_VERBOSITY"] = logging.getLevelName(third_party).lower()
    transformers_logging = sys.modules.get("transformers.utils.logging")
    if transformers_logging is not None:
        transformers_logging.set_verbosity(third_party)
    # transformers' progress bars start off when huggingface_hub's are off at its import; later, switch both.
    if os.environ.get("HF_HUB_DISABLE_PROGRESS_BARS") is None:  # the variable, when set, wins (hub's rule)
        # deferred: huggingface_hub costs `lbind --help` and `lbind plugins` a noticeable import time
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (enable_progress_bars if verbose else disable_progress_bars)()
    if transformers_logging is not None:
        (transformers_logging.enable_progress_bar if verbose else transformers_logging.disable_progress_bar)()


def leading_verbosity(argv: list[str]) -> int:
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
    configure_output(leading_verbosity(sys.argv[1:] if argv is None else argv))
    try:
        default_registry().add_commands(cli)
    except LbindError as err:  # a broken plugin is reported by `lbind plugins`; never fatal here
        render.error(err)
    try:
        cli.main(args=argv, prog_name="lbind", standalone_mode=False)
    except click.exceptions.Abort:
        render.aborted()
        sys.exit(130)
    except click.ClickException as err:
        err.show()
        sys.exit(err.exit_code)
    except LbindError as err:
        render.error(err)
        sys.exit(2)
