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


class UnknownReleaseError(ModalityNotFoundError, CheckpointError):
    """A published checkpoint's ``model_type`` is declared by no installed plugin (``Modality.releases``):
    either it is not a release lbind knows, or the plugin of its modality is not installed."""


class TextStoreError(LbindError):
    """The caption-embedding store is unusable, lacks a caption, or holds a corrupt shard."""


def check_media_file(path: str | Path, expected: str) -> int:
    """Raise :class:`InputError` unless ``path`` is a non-empty regular file; return its size in bytes.

    The checks every loader does before handing a file to a decoder, so that a missing or empty file is named
    clearly instead of failing deep inside a library.
    """
    path = Path(path)
    if path.is_dir():
        raise InputError(path, "is a directory", expected)
    try:
        size = path.stat().st_size
    except FileNotFoundError as err:
        raise InputError(path, "file not found", expected) from err
    except OSError as err:
        raise InputError(path, f"cannot read file: {err.strerror or err}", expected) from err
    if size == 0:
        raise InputError(path, "empty file (0 bytes)", expected)
    return size


class EvaluationError(LbindError):
    """An evaluation was asked for something its data or its checkpoint cannot give."""


class HubError(LbindError):
    """A Hugging Face Hub id could not be resolved to a local folder (no such repository or revision, refused
    access, a failed download, or a cached snapshot without the files lbind needs)."""


class HubNotCachedError(HubError):
    """A hub id is not in the local Hugging Face cache and cannot be downloaded (offline, or the Hub unreachable).

    ``repo_id``, ``revision`` (None: the default branch) and ``cache`` (the cache folder searched) name what was
    looked for, so that a caller can say how to fetch it."""

    def __init__(self, message: str, repo_id: str, revision: str | None, cache: Path) -> None:
        super().__init__(message)
        self.repo_id = repo_id
        self.revision = revision
        self.cache = cache
