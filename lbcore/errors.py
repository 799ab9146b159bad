"""Typed errors. Every message says which file or plugin is at fault and what to do about it."""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path
from typing import Any

import numpy as np


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


class NonFiniteError(LbindError):
    """A loss, gradient, weight or embedding holds NaN or infinity (training diverged, or a bad input got through)."""


def check_finite(values: Any, source: str | Path | None, what: str = "values") -> None:
    """Raise :class:`InputError` naming ``source`` when a tensor or array holds NaN or infinity.

    The check preprocessing and embedding run on what they produce, so that a file whose values overflow (a float
    WAV of samples near 1e20, say) is reported rather than turned into NaN embeddings. Integer and boolean data
    always pass.
    """
    # Fast path: a float64 sum is finite only when every value is (NaN and infinity propagate; a sum of
    # finite values can overflow only for float64 input near its limit, which then takes the exact count).
    if hasattr(values, "is_floating_point") and hasattr(values, "isfinite"):  # a torch tensor (torch not imported)
        if not (values.is_floating_point() or values.is_complex()):
            return
        import torch  # loaded already (values is a tensor); this module does not import it for others

        if values.is_floating_point() and bool(values.sum(dtype=torch.float64).isfinite()):
            return
        bad = int(values.numel() - values.isfinite().sum().item())
        total = values.numel()
    else:
        arr = np.asarray(values)
        if arr.dtype.kind not in "fc":
            return
        with np.errstate(over="ignore", invalid="ignore"):  # an overflowing sum is the slow path, not a problem
            if arr.dtype.kind == "f" and np.isfinite(arr.sum(dtype=np.float64)):
                return
        bad = int(arr.size - np.isfinite(arr).sum())
        total = arr.size
    if bad:
        raise InputError(source, f"{what}: {bad} of {total} are NaN or infinite", "finite values")


def check_media_file(path: str | Path, expected: str) -> int:
    """Raise :class:`InputError` unless ``path`` is a non-empty regular file; return its size in bytes.

    The checks every loader does before handing a file to a decoder, so that a missing or empty file is named
    clearly instead of failing deep inside a library: a directory, a broken symbolic link (naming its target)
    and a symbolic-link loop are each reported as such.
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError as err:
        if path.is_symlink():
            raise InputError(
                path, f"broken symbolic link (points to {os.readlink(path)}, which does not exist)", expected
            ) from err
        raise InputError(path, "file not found", expected) from err
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise InputError(path, "symbolic link loop (the link resolves back to itself)", expected) from err
        raise InputError(path, f"cannot read file: {err.strerror or err}", expected) from err
    except ValueError as err:  # a NUL byte in the path
        raise InputError(repr(str(path)), f"not a usable file path: {err}", expected) from err
    if stat.S_ISDIR(info.st_mode):
        raise InputError(path, "is a directory", expected)
    if not stat.S_ISREG(info.st_mode):
        raise InputError(path, "not a regular file (a device, pipe or socket)", expected)
    size = info.st_size
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
