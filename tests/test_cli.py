"""The ``lbind`` command group: lazily loaded command modules, the help it lists, and text printed literally."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from lbcore.cli import COMMANDS, cli, load_command, main, render
from lbcore.embedding import EmbedJobResult
from lbcore.plugins import PluginInfo


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_core_command_loads_and_its_listed_help_is_its_own(name: str) -> None:
    command = load_command(name)
    with click.Context(cli) as ctx:
        assert cli.get_command(ctx, name) is command
    listed = click.Command(name, help=COMMANDS[name].summary)
    for limit in (30, 45, 80, 300):
        assert listed.get_short_help_str(limit) == command.get_short_help_str(limit)


def test_help_lists_every_command_with_its_summary() -> None:
    result = CliRunner().invoke(cli, ["--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    listed = result.output.split("Commands:")[1]
    for name in COMMANDS:
        assert f"  {name} " in listed
    assert "Inspect and validate configuration." in listed
    assert "Train modality encoders against the frozen anchor" in listed


def test_a_command_added_by_a_plugin_takes_precedence_and_is_listed() -> None:
    group = type(cli)(name="lbind-test", callback=lambda: None)

    @click.command("plugins", help="A plugin's own plugins command.")
    def own() -> None:
        click.echo("own")

    group.add_command(own)
    with click.Context(group) as ctx:
        assert group.get_command(ctx, "plugins") is own
        assert group.list_commands(ctx) == sorted(COMMANDS)
    assert "A plugin's own plugins command." in CliRunner().invoke(group, ["--help"]).output


@pytest.mark.slow
def test_help_imports_no_command_module() -> None:
    code = (
        "import sys\nfrom lbcore.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in sys.modules if m.startswith('lbcore.cli.') or m in ('torch', 'lbcore.trainer')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "LBIND_PLUGINS": ""},
    )
    assert out.stdout.strip().splitlines()[-1] == "['lbcore.cli.render']"


def test_error_with_markup_in_path_and_message_prints_literally(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "x["
    folder.mkdir()
    bad = folder / "b].png"  # the path reads .../x[/b].png
    bad.write_text("a: [bold]\n  b: [/red] x\n")
    with pytest.raises(SystemExit) as exc:
        main(["config", "validate", str(bad)])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ")
    assert f"{tmp_path}/x[/b].png: not valid YAML" in err.replace("\n", "")
    assert "[bold]" in err and "b: [/red] x" in err
    assert "Traceback" not in err


def test_tables_print_paths_names_and_reasons_literally(capsys: pytest.CaptureFixture[str]) -> None:
    result = EmbedJobResult(Path("out[/b].npy"), Path("out[/b].npy.json"), rows=1, failed={"x[/b].png": "[/red]"})
    render.embed_summary(result)
    captured = capsys.readouterr()
    assert "out[/b].npy" in captured.out
    assert "unreadable: x[/b].png: [/red]" in captured.err
    render.plugins_table([PluginInfo("p[bold]", "m", status="broken", error="ImportError: [/red]")])
    assert "p[bold]" in capsys.readouterr().out
    render.similarity_table(["a [i]cat[/i]"], [("m", "clips/[bold]x.png")], [[0.5]], softmax=False)
    out = capsys.readouterr().out
    assert "a [i]cat[/i]" in out and "m: [bold]x.png" in out
