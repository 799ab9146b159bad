"""pluggy hook specifications of the ``lbind`` entry-point group.

A plugin is a module (named by an entry point in the ``lbind`` group) that implements some of these hooks
with :data:`lbcore.hookimpl`. Hooks are few on purpose; each one is documented in README.md with its exact
signature and has a test.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from lbcore.modality import Modality

PROJECT = "lbind"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_modalities(register: Callable[[type[Modality]], Any]) -> None:
    """Register the plugin's modalities by calling ``register(ModalitySubclass)`` once per modality."""


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands to the ``lbind`` command line, e.g. ``cli.add_command(my_command)``."""
