"""The plugin system, exercised with fake entry-point distributions written into a temporary folder."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
from click.testing import CliRunner

import lbcore
from lbcore import cli as cli_module
from lbcore.errors import DuplicateModalityError, ModalityNotFoundError
from lbcore.plugins import PluginRegistry, reset_default_registry


def test_entry_point_plugin_registers_its_modality(fakes) -> None:
    fakes.add("lbfake-signal", "lbfake_signal", fakes.plugin("signal"))
    reg = PluginRegistry(eps=fakes.eps())
    assert reg.modality_names() == ["signal"]
    info = reg.plugins["lbfake_signal"]
    assert (info.status, info.distribution, info.version) == ("ok", "lbfake-signal", "0.3")
    assert info.hooks == ["register_modalities"]
    m = reg.registered("signal").cls()
    assert m.preprocess(m.example_input()).shape == (1, 16)


def test_loading_is_lazy(fakes) -> None:
    fakes.add("lbfake-lazy", "lbfake_lazy", fakes.plugin("lazy"))
    reg = PluginRegistry(eps=fakes.eps())
    assert "lbfake_lazy" not in sys.modules  # constructing the registry imports nothing
    reg.modality_names()
    assert "lbfake_lazy" in sys.modules


def test_import_of_lbcore_loads_no_plugin(fakes) -> None:
    # a fresh interpreter: importing lbcore and its registry module must not import any plugin or torch
    import subprocess

    code = "import sys, lbcore, lbcore.plugins; print(any(m.startswith('lbind_') for m in sys.modules), 'torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["False", "False"]


def test_plugin_that_fails_to_import_is_reported_and_others_work(fakes) -> None:
    fakes.add("lbfake-good", "lbfake_good", fakes.plugin("good"))
    fakes.add("lbfake-bad", "lbfake_bad", "raise RuntimeError('missing native library libfoo.so')\n")
    reg = PluginRegistry(eps=fakes.eps())
    assert reg.modality_names() == ["good"]
    bad = reg.plugins["lbfake_bad"]
    assert bad.status == "broken"
    assert "import failed" in bad.error and "libfoo.so" in bad.error


def test_plugin_whose_hook_raises_is_reported_and_rolled_back(fakes) -> None:
    body = fakes.source.format(cls="Half", modality="half") + textwrap.dedent(
        """
        @hookimpl
        def register_modalities(register):
            register(Half)
            raise ValueError("second modality misconfigured")
        """
    )
    fakes.add("lbfake-half", "lbfake_half", body)
    fakes.add("lbfake-ok", "lbfake_ok", fakes.plugin("ok"))
    reg = PluginRegistry(eps=fakes.eps())
    assert reg.modality_names() == ["ok"]  # the half-registered modality is removed again
    info = reg.plugins["lbfake_half"]
    assert info.status == "broken" and "second modality misconfigured" in info.error
    with pytest.raises(ModalityNotFoundError, match="broken plugins: lbfake_half"):
        reg.registered("half")


def test_two_plugins_with_the_same_modality_name_is_an_error_naming_both(fakes) -> None:
    fakes.add("lbfake-a", "lbfake_a", fakes.plugin("twin", "A"))
    fakes.add("lbfake-b", "lbfake_b", fakes.plugin("twin", "B"))
    reg = PluginRegistry(eps=fakes.eps())
    with pytest.raises(DuplicateModalityError) as err:
        reg.registered("twin")
    assert "lbfake_a" in str(err.value) and "lbfake_b" in str(err.value)
    assert reg.plugins["lbfake_b"].status == "broken"
    assert "lbfake_a" in reg.plugins["lbfake_b"].error


def test_misspelt_hook_fails_loudly(fakes, caplog: pytest.LogCaptureFixture) -> None:
    body = fakes.plugin("typo").replace("def register_modalities", "def register_modalitys")
    fakes.add("lbfake-typo", "lbfake_typo", body)
    reg = PluginRegistry(eps=fakes.eps())
    assert reg.modality_names() == []
    info = reg.plugins["lbfake_typo"]
    assert info.status == "broken"
    assert "register_modalitys" in info.error and "did you mean 'register_modalities'" in info.error
    assert any("register_modalitys" in r.getMessage() for r in caplog.records if r.levelname == "ERROR")


def test_wrong_hook_argument_name_fails_loudly(fakes) -> None:
    body = fakes.plugin("argname").replace("def register_modalities(register)", "def register_modalities(registr)")
    fakes.add("lbfake-arg", "lbfake_arg", body)
    reg = PluginRegistry(eps=fakes.eps())
    assert reg.plugins["lbfake_arg"].status == "broken"
    assert "registr" in reg.plugins["lbfake_arg"].error


def test_registering_something_that_is_not_a_modality_is_rejected(fakes) -> None:
    body = "from lbcore import hookimpl\n\n@hookimpl\ndef register_modalities(register):\n    register(object)\n"
    fakes.add("lbfake-obj", "lbfake_obj", body)
    reg = PluginRegistry(eps=fakes.eps())
    assert "not a Modality subclass" in reg.plugins["lbfake_obj"].error


def test_env_var_limits_which_plugins_load(fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    fakes.add("lbfake-one", "lbfake_one", fakes.plugin("one"))
    fakes.add("lbfake-two", "lbfake_two", fakes.plugin("two"))
    monkeypatch.setenv("LBIND_PLUGINS", "lbfake_two")
    reg = PluginRegistry(eps=fakes.eps())
    assert reg.modality_names() == ["two"]
    assert reg.plugins["lbfake_one"].status == "disabled"
    assert "lbfake_one" not in sys.modules
    monkeypatch.setenv("LBIND_PLUGINS", "")
    assert PluginRegistry(eps=fakes.eps()).modality_names() == []


def test_default_registry_and_public_api(fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    fakes.add("lbfake-api", "lbfake_api", fakes.plugin("api"))
    monkeypatch.setenv("LBIND_PLUGINS", "lbfake_api")
    reset_default_registry()
    assert lbcore.list_modalities() == ["api"]
    assert lbcore.get_modality("api").name == "api"
    with pytest.raises(ModalityNotFoundError, match="no plugin provides modality 'nope'"):
        lbcore.get_modality("nope")


def test_register_commands_hook_adds_a_command_and_a_failing_one_is_isolated(
    fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    cmd = textwrap.dedent(
        """
        import click
        from lbcore import hookimpl

        @click.command("hello")
        def hello():
            click.echo("hello from a plugin")

        @hookimpl
        def register_commands(cli):
            cli.add_command(hello)
        """
    )
    fakes.add("lbfake-cmd", "lbfake_cmd", cmd)
    failing = "from lbcore import hookimpl\n\n@hookimpl\ndef register_commands(cli):\n    raise OSError('boom')\n"
    fakes.add("lbfake-cmdfail", "lbfake_cmdfail", failing)
    monkeypatch.setenv("LBIND_PLUGINS", "lbfake_cmd,lbfake_cmdfail")
    reset_default_registry()
    import click

    group = click.Group("lbind-test")
    from lbcore.plugins import default_registry

    default_registry().add_commands(group)
    assert "hello" in group.commands
    result = CliRunner().invoke(group, ["hello"])
    assert result.output.strip() == "hello from a plugin"
    assert default_registry().plugins["lbfake_cmdfail"].status == "broken"
    assert "boom" in default_registry().plugins["lbfake_cmdfail"].error


def test_cli_plugins_reports_broken_plugin(fakes, monkeypatch: pytest.MonkeyPatch) -> None:
    fakes.add("lbfake-cligood", "lbfake_cligood", fakes.plugin("cligood"))
    fakes.add("lbfake-clibad", "lbfake_clibad", "import no_such_module_anywhere\n")
    monkeypatch.setenv("LBIND_PLUGINS", "lbfake_cligood,lbfake_clibad")
    reset_default_registry()
    result = CliRunner().invoke(cli_module.cli, ["plugins", "--json"])
    assert result.exit_code == 0, result.output
    rows = {r["name"]: r for r in json.loads(result.stdout)}
    assert rows["lbfake_clibad"]["status"] == "broken"
    assert "no_such_module_anywhere" in rows["lbfake_clibad"]["error"]
    assert rows["lbfake_cligood"]["modalities"] == ["cligood"]
    result = CliRunner().invoke(cli_module.cli, ["modalities", "--json"])
    assert [r["modality"] for r in json.loads(result.stdout)] == ["cligood"]
