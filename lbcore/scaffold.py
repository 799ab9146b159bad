"""Scaffolding: render a new modality plugin distribution from the cookiecutter template.

The template ships inside the package (``lbcore/plugin_template/modality-plugin``, package data of the lbind
wheel), so ``lbind new-modality`` works from any installation. It renders ``<output_dir>/<name>/``: a
pyproject.toml with the ``lbind`` entry point, the package ``lbind_<name>`` (a working 1-D signal Modality with
``TODO(plugin)`` marks where a real modality differs, its loader and a demo-data generator) and tests that
inherit the contract battery.
:func:`render_modality_plugin` is the library call; ``lbind new-modality`` (:mod:`lbcore.cli.scaffold`) calls it.
"""

from __future__ import annotations

import keyword
import logging
import re
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

from cookiecutter.exceptions import CookiecutterException
from cookiecutter.main import cookiecutter

from lbcore.errors import LbindError

log = logging.getLogger(__name__)

NAME_RULE = (
    "a lower-case Python identifier: a letter first, then letters a-z, digits or underscores (e.g. imu, eeg_raw)"
)
_NAME = re.compile(r"[a-z][a-z0-9_]*")


class ScaffoldError(LbindError):
    """A plugin could not be rendered: a bad name, an existing folder, or a missing template."""


def validate_modality_name(name: str) -> str:
    """Return ``name`` if it can name a modality, its package ``lbind_<name>`` and its entry point; otherwise
    raise :class:`ScaffoldError` saying what is wrong with it and what the rule is."""
    if _NAME.fullmatch(name) and not keyword.iskeyword(name):
        return name
    if not name:
        problem = "it is empty"
    elif keyword.iskeyword(name):
        problem = "it is a Python keyword"
    elif any(c.isupper() for c in name):
        problem = "it has upper-case letters"
    elif not ("a" <= name[0] <= "z"):
        problem = f"it starts with {name[0]!r}, not a letter"
    else:
        bad = sorted({c for c in name if not (c.isascii() and (c.isalnum() or c == "_"))})
        problem = f"it has characters other than a-z, 0-9 and _: {' '.join(repr(c) for c in bad)}"
    raise ScaffoldError(f"invalid modality name {name!r}: {problem}; use {NAME_RULE}")


def template_dir() -> Path:
    """The modality-plugin template folder shipped in the lbcore package (package data of the lbind wheel)."""
    resource = resources.files("lbcore") / "plugin_template" / "modality-plugin"
    # Installed wheels and editable installs unpack package data to real files; a zipped install would not,
    # and cookiecutter needs a folder on disk.
    path = Path(str(resource))
    if not (path / "cookiecutter.json").is_file():
        raise ScaffoldError(
            f"the modality-plugin template is not at {path} (no cookiecutter.json): the lbind installation lacks its "
            "package data lbcore/plugin_template; reinstall lbind"
        )
    return path


def render_modality_plugin(
    name: str,
    output_dir: str | Path = ".",
    force: bool = False,
    description: str | None = None,
    template: str | Path | None = None,
) -> Path:
    """Render the plugin distribution for modality ``name`` into ``output_dir/name`` and return that folder.

    An existing ``output_dir/name`` is an error unless ``force``, which renders over it: the files the template
    writes are replaced, any other file there is kept. ``description`` is the one-line summary used in the
    package metadata and docs (default: derived from the name). ``template`` overrides the template folder.
    """
    validate_modality_name(name)
    output_dir = Path(output_dir)
    target = output_dir / name
    if target.exists() and not force:
        raise ScaffoldError(f"{target} already exists; choose another --output-dir, remove it, or pass --force")
    if output_dir.exists() and not output_dir.is_dir():
        raise ScaffoldError(f"{output_dir} is not a directory")
    source = Path(template) if template is not None else template_dir()
    extra: dict[str, Any] = {"name": name}
    if description:
        extra["description"] = description
    output_dir.mkdir(parents=True, exist_ok=True)
    # cookiecutter writes a replay file of every rendering and reads ~/.cookiecutterrc: point both at a
    # throw-away folder so that rendering depends on the arguments alone and leaves nothing behind.
    with tempfile.TemporaryDirectory(prefix="lbind-scaffold-") as scratch:
        settings = {"replay_dir": str(Path(scratch, "replay")), "cookiecutters_dir": str(Path(scratch, "repos"))}
        try:
            rendered = cookiecutter(
                str(source),
                no_input=True,
                extra_context=extra,
                output_dir=str(output_dir),
                overwrite_if_exists=force,
                default_config=settings,  # type: ignore[arg-type]  # a dict of settings is accepted since 2.2
                accept_hooks=False,
            )
        except CookiecutterException as err:
            raise ScaffoldError(f"cannot render the modality-plugin template {source}: {err}") from err
    path = Path(rendered)
    log.info("rendered the %s modality plugin into %s", name, path)
    return path
