"""Distribution metadata: SPDX licence strings, the setuptools that reads them, and the extras that name the
plugin distributions (checked against the plugins' own pyproject.toml files)."""

from __future__ import annotations

from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    tomllib = pytest.importorskip("tomli")

REPO = Path(__file__).resolve().parents[1]
PLUGIN_PROJECTS = sorted(REPO.glob("plugins/*/pyproject.toml"))
PROJECTS = [REPO / "pyproject.toml", *PLUGIN_PROJECTS, REPO / "examples" / "imu" / "pyproject.toml"]


def _read(path: Path) -> dict:
    return tomllib.loads(path.read_text(encoding="utf-8"))


def test_the_five_built_in_plugins_are_found() -> None:
    assert [p.parent.name for p in PLUGIN_PROJECTS] == ["audio", "depth", "image", "infrared", "video"]


@pytest.mark.parametrize("path", PROJECTS, ids=lambda p: str(p.relative_to(REPO).parent) or "lbind")
def test_every_project_declares_an_spdx_licence_with_a_setuptools_that_reads_it(path: Path) -> None:
    meta = _read(path)
    assert meta["project"]["license"] == "MIT"  # an SPDX expression, not the deprecated {text = ...} table
    assert meta["build-system"]["requires"] == ["setuptools>=77"]  # PEP 639 licence expressions need 77


def test_a_rendered_plugin_declares_an_spdx_licence_too(tmp_path: Path) -> None:
    from lbcore.scaffold import render_modality_plugin

    test_every_project_declares_an_spdx_licence_with_a_setuptools_that_reads_it(
        render_modality_plugin("lbtest_meta", tmp_path) / "pyproject.toml"
    )


def test_extras_install_the_plugin_distributions_by_name() -> None:
    names = {p.parent.name: _read(p)["project"]["name"] for p in PLUGIN_PROJECTS}
    extras = _read(REPO / "pyproject.toml")["project"]["optional-dependencies"]
    for modality, dist in names.items():
        assert extras[modality] == [dist]
    assert sorted(extras["all"]) == sorted(names.values())


def test_readme_install_section_names_the_extras_and_the_plugin_distributions() -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert 'pip install "lbind[all]"' in readme and 'pip install "lbind[audio]"' in readme
    for path in PLUGIN_PROJECTS:
        assert f"`{_read(path)['project']['name']}`" in readme
