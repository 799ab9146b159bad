"""Typed errors. Every message says which file or plugin is at fault and what to do about it."""

from __future__ import annotations

from pathlib import Path


class LbindError(Exception):
    """Base class of every error lbind raises on purpose."""


class PluginError(LbindError):
    """A plugin could not be loaded, or it broke the plugin contract."""


class ModalityNotFoundError(LbindError, KeyError):
    """No installed plugin registers the requested modality."""

    def __str__(self) -> str:  # KeyError would otherwise quote the message
        return str(self.args[0]) if self.args else ""


class DuplicateModalityError(PluginError):
    """Two plugins registered the same modality name."""


class ConfigError(LbindError):
    """A configuration file or value failed validation."""


class InputError(LbindError):
    """A media file or array could not be turned into a model input."""

    def __init__(self, source: str | Path | None, problem: str, expected: str | None = None) -> None:
        self.source = str(source) if source is not None else "<in-memory input>"
        self.problem = problem
        self.expected = expected
        msg = f"{self.source}: {problem}"
        if expected:
            msg += f" (expected {expected})"
        super().__init__(msg)


class AnchorError(LbindError):
    """The text encoder could not be loaded or used."""


class CheckpointError(LbindError):
    """A checkpoint directory is missing, incomplete or unsafe."""
