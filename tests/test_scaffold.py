"""`lbind new-modality`: the cookiecutter template renders a plugin distribution that works out of the box."""

from __future__ import annotations

import ast
import importlib
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from click.testing import CliRunner

from lbcore.cli.scaffold import new_modality
from lbcore.plugins import PluginRegistry
from lbcore.scaffold import ScaffoldError, render_modality_plugin, template_dir, validate_modality_name

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

EXPECTED_FILES = {
    ".gitignore",
    "pyproject.toml",
    "README.md",
    "lbind_{name}/__init__.py",
    "lbind_{name}/modality.py",
    "lbind_{name}/signal.py",
    "lbind_{name}/demo.py",
    "lbind_{name}/py.typed",
    "tests/conftest.py",
    "tests/test_contract.py",
    "tests/test_{name}.py",
}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One plugin rendered through the library call, shared by the read-only checks below."""
    return render_modality_plugin("lbtest_scaf", tmp_path_factory.mktemp("render"), description="test signals")


def test_render_writes_every_file_with_nothing_left_unrendered(rendered: Path) -> None:
    assert rendered.name == "lbtest_scaf"
    files = {p.relative_to(rendered).as_posix() for p in rendered.rglob("*") if p.is_file()}
    assert files == {f.format(name="lbtest_scaf") for f in EXPECTED_FILES}
    for path in rendered.rglob("*"):
        if path.is_file():
            text = path.read_text(encoding="utf-8")
            assert "cookiecutter" not in text and "{{" not in text and "{%" not in text, f"unrendered Jinja in {path}"


def test_rendered_python_is_valid_and_pyproject_declares_the_entry_point(rendered: Path) -> None:
    for path in rendered.rglob("*.py"):
        ast.parse(path.read_text(encoding="utf-8"), filename=str(path))  # raises SyntaxError on bad Python
    meta = tomllib.loads((rendered / "pyproject.toml").read_text(encoding="utf-8"))
    assert meta["project"]["name"] == "lbind-lbtest-scaf"
    assert meta["project"]["entry-points"]["lbind"] == {"lbtest_scaf": "lbind_lbtest_scaf"}
    assert "test signals" in meta["project"]["description"]
    assert any(dep.startswith("lbind") for dep in meta["project"]["dependencies"])


def test_rendered_code_is_lint_clean_under_its_own_ruff_settings(rendered: Path) -> None:
    ruff = shutil.which("ruff", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if ruff is None:
        pytest.skip("ruff is not installed")
    for args in (["check"], ["format", "--check"]):
        proc = subprocess.run([ruff, *args, "--no-cache", "."], cwd=rendered, capture_output=True, text=True)
        assert proc.returncode == 0, f"ruff {' '.join(args)}:\n{proc.stdout}{proc.stderr}"


def test_rendered_modality_registers_and_preprocesses_in_process(rendered: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(rendered))
    try:
        plugin = importlib.import_module("lbind_lbtest_scaf")
        registry = PluginRegistry(eps=[])
        info = registry.add_plugin(plugin, "lbtest_scaf")
        assert info.status == "ok", info.error
        cls = registry.registered("lbtest_scaf").cls
        assert cls.__name__ == "LbtestScafModality"
        assert {"languagebind", "demo"} <= set(cls.presets)
        demo = cls(cls.config_preset("demo"))
        x = demo.preprocess(demo.example_input(seed=0))
        assert tuple(x.shape) == (demo.config.channels, demo.config.window)
    finally:
        for name in [m for m in sys.modules if m == "lbind_lbtest_scaf" or m.startswith("lbind_lbtest_scaf.")]:
            del sys.modules[name]


@pytest.mark.slow
def test_rendered_tests_pass(rendered: Path, tmp_path: Path) -> None:
    """The rendered tests folder (contract battery, loader and demo tests) passes as it is, uninstalled."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(rendered), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "OMP_NUM_THREADS": "1",
        "LBIND_CACHE": str(tmp_path / "cache"),
    }
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"],
        cwd=rendered,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, tail
    assert " passed" in proc.stdout and "skipped" not in proc.stdout and "failed" not in proc.stdout, tail


@pytest.mark.parametrize("name", ["imu", "eeg_raw", "x2", "a_b_c"])
def test_valid_names(name: str) -> None:
    assert validate_modality_name(name) == name


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("IMU", "upper-case letters"),
        ("Imu", "upper-case letters"),
        ("2imu", "starts with '2', not a letter"),
        ("_imu", "starts with '_', not a letter"),
        ("imu-2", "characters other than a-z, 0-9 and _: '-'"),
        ("my imu", "characters other than a-z, 0-9 and _: ' '"),
        ("imü", "characters other than a-z, 0-9 and _: 'ü'"),
        ("", "it is empty"),
        ("class", "it is a Python keyword"),
    ],
)
def test_invalid_names_are_refused_with_the_rule(tmp_path: Path, name: str, problem: str) -> None:
    with pytest.raises(ScaffoldError, match="invalid modality name") as err:
        render_modality_plugin(name, tmp_path)
    assert problem in str(err.value) and "lower-case Python identifier" in str(err.value)
    assert not any(tmp_path.iterdir()), "nothing may be written for an invalid name"


def test_cli_renders_refuses_to_overwrite_and_force_renders_again(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(new_modality, ["lbtest_cli", "--output-dir", str(tmp_path)])
    assert first.exit_code == 0, first.output
    target = tmp_path / "lbtest_cli"
    assert str(target) in first.output and "pip install -e" in first.output
    modality_py = target / "lbind_lbtest_cli" / "modality.py"
    original = modality_py.read_text(encoding="utf-8")
    assert 'name = "lbtest_cli"' in original and "class LbtestCliModality(Modality)" in original

    modality_py.write_text("# my edits\n", encoding="utf-8")
    (target / "notes.txt").write_text("mine", encoding="utf-8")
    again = runner.invoke(new_modality, ["lbtest_cli", "--output-dir", str(tmp_path)])
    assert again.exit_code == 1
    assert "already exists" in again.output and "--force" in again.output
    assert modality_py.read_text(encoding="utf-8") == "# my edits\n", "a refused render must not touch files"

    forced = runner.invoke(new_modality, ["lbtest_cli", "--output-dir", str(tmp_path), "--force"])
    assert forced.exit_code == 0, forced.output
    assert modality_py.read_text(encoding="utf-8") == original
    assert (target / "notes.txt").read_text(encoding="utf-8") == "mine", "--force keeps files the template lacks"


def test_cli_rejects_a_bad_name_as_a_usage_error(tmp_path: Path) -> None:
    result = CliRunner().invoke(new_modality, ["Bad-Name", "--output-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "invalid modality name 'Bad-Name'" in result.output and "lower-case Python identifier" in result.output
    assert not any(tmp_path.iterdir())


def test_output_dir_is_created_and_defaults_to_the_working_directory(tmp_path: Path, monkeypatch) -> None:
    nested = tmp_path / "a" / "b"
    assert render_modality_plugin("lbtest_nest", nested) == nested / "lbtest_nest"
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(new_modality, ["lbtest_here"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "lbtest_here" / "pyproject.toml").is_file()


# ------------------------------------------------------------------------------------ the wheel, outside the checkout
REPO = Path(__file__).resolve().parents[1]


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def _shared_view(target: Path) -> Path:
    """A folder of links to everything in this environment's site-packages except lbind's own distributions
    (lbcore, the lbind-* plugins, editable-install hooks, .pth files), so the fresh environment imports torch,
    transformers, pip, setuptools... from here but lbind only from the wheel it installs."""
    target.mkdir()
    skip = ("lbind", "lbcore", "__editable__", "_lbind")
    for folder in dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]):
        for entry in Path(folder).iterdir():
            lower = entry.name.lower()
            if lower.startswith(skip) or lower.endswith(".pth") or (target / entry.name).exists():
                continue
            (target / entry.name).symlink_to(entry)
    return target


@pytest.mark.slow
def test_the_wheel_alone_renders_installs_and_lists_a_new_plugin(tmp_path: Path) -> None:
    """Build lbind's wheel, install it into a fresh virtual environment, and from a folder outside the checkout
    render a plugin with `lbind new-modality`, install it and see it in `lbind modalities`; all offline."""
    # Build from a copy of the distribution's sources, so the build leaves nothing in the checkout.
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    shutil.copytree(REPO / "lbcore", src / "lbcore", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME", "LBIND_PLUGINS")}
    env.update(PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1", HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    env.update(LBIND_CACHE=str(tmp_path / "cache"))
    pip = [sys.executable, "-m", "pip"]
    built = _run(
        [*pip, "wheel", "-v", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"), str(src)],
        tmp_path,
        env,
    )
    # setuptools reports deprecated metadata (e.g. a TOML-table licence) as *Warning classes on stderr.
    assert "Warning" not in built.stdout + built.stderr, (built.stdout + built.stderr)[-3000:]
    (wheel,) = (tmp_path / "dist").glob("lbind-*.whl")

    # The fresh environment reuses this one's dependencies instead of downloading torch again: a .pth file in its
    # site-packages appends a filtered view of this environment's site-packages (see _shared_view).
    # `venv --system-site-packages` would not do: this environment is itself a venv, and that option exposes the
    # base interpreter's site-packages, not this venv's. Directories added by a .pth are not site directories, so
    # the .pth files (editable installs) inside the view are never run. Without pip of its own, the fresh
    # environment runs pip from the view, which installs into the running interpreter's environment.
    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], tmp_path, env)
    python = str(venv / ("Scripts" if os.name == "nt" else "bin") / "python")
    site = Path(
        _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path, env).stdout.strip()
    )
    (site / "lbind-test-shared.pth").write_text(str(_shared_view(tmp_path / "shared")) + "\n", encoding="utf-8")
    _run([python, "-m", "pip", "install", "--no-deps", str(wheel)], tmp_path, env)
    lbind = str(Path(python).with_name("lbind"))

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    where = _run(
        [python, "-c", "import lbcore, lbcore.scaffold as s; print(lbcore.__file__); print(s.template_dir())"],
        outside,
        env,
    )
    module, template = where.stdout.split("\n")[:2]
    assert Path(module).is_relative_to(site) and Path(template).is_relative_to(site), where.stdout
    assert (
        {p.name for p in Path(template).rglob(".*")} == {p.name for p in template_dir().rglob(".*")} == {".gitignore"}
    )

    _run([lbind, "new-modality", "lbtest_wheel"], outside, env)
    plugin = outside / "lbtest_wheel"
    assert (plugin / ".gitignore").is_file() and (plugin / "lbind_lbtest_wheel" / "modality.py").is_file()
    _run([python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", str(plugin)], outside, env)

    listed = json.loads(_run([lbind, "modalities", "--json"], outside, env).stdout)
    assert [(r["modality"], r["distribution"]) for r in listed] == [("lbtest_wheel", "lbind-lbtest-wheel")]
    plugins = json.loads(_run([lbind, "plugins", "--json"], outside, env).stdout)
    assert [(p["name"], p["status"]) for p in plugins] == [("lbtest_wheel", "ok")]
