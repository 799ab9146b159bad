"""The output of ``lbind embed``: an embeddings file and its sidecar, committed atomically, one writer at a time.

The embeddings (``.npy``, or ``.safetensors`` with one tensor named ``embeddings``) are float32 [rows, E] and
L2-normalised; the sidecar ``<output>.json`` (e.g. ``emb.npy.json``) lists in ``inputs`` the file of every row,
in row order, and records the modality, the checkpoint's sha256 and the files that could not be read
(``failed``: path -> reason).

Commit: the sidecar is the commit record. A save writes the array first, then the sidecar (through a temporary
file and a rename); rows are only ever appended, so a saved array always extends the committed one. A ``.npy``
grows in place: the new rows are written after the committed ones, then the header's row count (numpy pads the
header so that the count can grow without moving the data); only the rows since the last save are in memory,
however many the file holds. A first save, and every save of a ``.safetensors`` (its format cannot grow in
place: the whole array is kept in memory and rewritten), goes through a temporary file and a rename.
A kill between the two renames leaves the new array beside the old sidecar: reading takes the array's first
``len(inputs)`` rows, exactly the committed ones, and a resumed job embeds the rest again. A job writes a
sidecar without rows before its first array, so an array without a sidecar is never a state of ours (it is
refused, as someone else's file).

Lock: a job holds ``.<output name>.lock`` next to the output for its whole run; a second job on the same
output is refused with :class:`OutputLockedError` instead of both writing and one losing its rows.
"""

from __future__ import annotations

import datetime as _dt
import io
import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from filelock import FileLock, Timeout
from safetensors.numpy import load_file, save_file

from lbcore.checkpoint import write_json
from lbcore.errors import InputError

log = logging.getLogger(__name__)

__all__ = [
    "OUTPUT_SUFFIXES",
    "SAFETENSORS_KEY",
    "SIDECAR_FORMAT",
    "SIDECAR_VERSION",
    "EmbedStore",
    "OutputLockedError",
    "check_output",
    "lock_output",
    "sidecar_path",
]

SIDECAR_FORMAT = "lbind-embeddings"
SIDECAR_VERSION = 1
OUTPUT_SUFFIXES = (".npy", ".safetensors")
SAFETENSORS_KEY = "embeddings"


class OutputLockedError(InputError):
    """Another job is writing the same embeddings output."""


def sidecar_path(output: str | Path) -> Path:
    """The JSON that lists the rows of an embeddings file: ``<output>.json``."""
    output = Path(output)
    return output.with_name(output.name + ".json")


def check_output(output: Path) -> None:
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(
            output, f"unsupported embeddings file type {output.suffix or '(none)'!r}", ".npy or .safetensors"
        )


@contextmanager
def lock_output(output: Path) -> Iterator[None]:
    """Hold the output's lock file for the block; :class:`OutputLockedError` when another job holds it."""
    output.parent.mkdir(parents=True, exist_ok=True)
    path = output.with_name(f".{output.name}.lock")
    lock = FileLock(str(path), timeout=0)
    try:
        lock.acquire()
    except Timeout as err:
        raise OutputLockedError(
            output,
            f"another lbind embed job is writing this output (it holds {path.name})",
            "that job to finish, or another --output",
        ) from err
    try:
        yield
    finally:
        lock.release()


def _read_array(output: Path) -> np.ndarray:
    try:
        if output.suffix.lower() == ".npy":
            return np.load(output, allow_pickle=False)
        tensors = load_file(str(output))
    except Exception as err:  # any reader failure: the file is not what the sidecar says
        raise InputError(
            output, f"cannot read the existing embeddings: {err}", "a file written by lbind embed"
        ) from err
    if SAFETENSORS_KEY not in tensors:
        raise InputError(output, f"has no tensor {SAFETENSORS_KEY!r}", "a file written by lbind embed")
    return tensors[SAFETENSORS_KEY]


def _npy_rows(output: Path) -> tuple[int, ...]:
    """The shape of a .npy, read from its header (the data stay on disk)."""
    try:
        return tuple(np.load(output, mmap_mode="r", allow_pickle=False).shape)
    except Exception as err:  # any reader failure: the file is not what the sidecar says
        raise InputError(
            output, f"cannot read the existing embeddings: {err}", "a file written by lbind embed"
        ) from err


def _append_npy(output: Path, rows: np.ndarray, start: int) -> bool:
    """Write ``rows`` [n, E] float32 from row ``start`` of the .npy ``output`` in place (rows after ``start`` are
    overwritten or cut), then its header's row count. False, with nothing written, when the file's header cannot
    take the new count in place (a file numpy did not pad for growth, or another dtype or layout)."""
    with open(output, "r+b") as f:
        if np.lib.format.read_magic(f) != (1, 0):
            return False
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        offset = f.tell()
        if fortran or dtype != np.dtype("<f4") or len(shape) != 2 or shape[1] != rows.shape[1] or shape[0] < start:
            return False
        header = io.BytesIO()
        descr = {"descr": "<f4", "fortran_order": False, "shape": (start + rows.shape[0], rows.shape[1])}
        np.lib.format.write_array_header_1_0(header, descr)
        if len(header.getvalue()) != offset:
            return False
        f.seek(offset + start * rows.shape[1] * 4)
        f.write(np.ascontiguousarray(rows, dtype="<f4").data)
        f.truncate()
        f.flush()
        os.fsync(f.fileno())  # the rows are on disk before the header counts them
        f.seek(0)
        f.write(header.getvalue())
        f.flush()
        os.fsync(f.fileno())
    return True


def _write_array(output: Path, array: np.ndarray, modality: str) -> None:
    """Atomically (temporary file + rename) write [rows, E] float32."""
    tmp = output.with_name(f".{output.name}.tmp")
    if output.suffix.lower() == ".npy":
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
    else:
        save_file({SAFETENSORS_KEY: np.ascontiguousarray(array)}, str(tmp), metadata={"modality": modality})
    os.replace(tmp, output)


def _read_sidecar(side: Path, output: Path, header: Mapping[str, Any]) -> dict[str, Any]:
    """The sidecar's content, checked against the job (format, modality, checkpoint)."""
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(side, f"unreadable sidecar: {err}", "the JSON written by lbind embed") from err
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise InputError(side, "not an lbind embeddings sidecar", f"format {SIDECAR_FORMAT!r}")
    modality = header["modality"]
    if meta.get("modality") != modality:
        raise InputError(
            output, f"holds {meta.get('modality')!r} embeddings, not {modality!r}", "another --output for this job"
        )
    recorded, digest = (meta.get("checkpoint") or {}).get("sha256"), header["checkpoint"]["sha256"]
    if recorded != digest:
        raise InputError(
            output,
            f"was written with checkpoint {(meta.get('checkpoint') or {}).get('path')} (sha256 {str(recorded)[:12]}), "
            f"not this one (sha256 {digest[:12]}); rows from two models cannot share a file",
            "another --output, or delete the old file and its sidecar",
        )
    inputs = meta.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(p, str) for p in inputs):
        raise InputError(side, "'inputs' is not a list of paths", "the JSON written by lbind embed")
    return meta


class EmbedStore:
    """The rows of one embeddings output: their inputs, the recorded failures, and the array, saved together.

    ``header``: the sidecar's fields that describe the job (format, modality, embed_dim, checkpoint, ...).
    """

    def __init__(self, output: Path, header: Mapping[str, Any], inputs: list[str], failed: dict[str, str]):
        self.output = output
        self.header = dict(header)
        self.inputs = inputs
        self.failed = failed
        self.parts: list[np.ndarray] = []
        """The rows held in memory: those from row :attr:`first_in_memory` on."""
        self.first_in_memory = 0
        self._committed: tuple[int, dict[str, str]] = (len(inputs), dict(failed))

    @classmethod
    def open(cls, output: Path, header: Mapping[str, Any]) -> EmbedStore:
        """The committed state of ``output`` (empty when neither file exists), checked against ``header``."""
        side, dim = sidecar_path(output), int(header["embed_dim"])
        if not output.exists() and not side.exists():
            store = cls(output, header, [], {})
            store.parts.append(np.zeros((0, dim), np.float32))
            return store
        if not side.is_file():
            raise InputError(output, f"exists without its sidecar {side.name}", "both files (or neither: delete it)")
        meta = _read_sidecar(side, output, header)
        inputs = list(meta["inputs"])
        array: np.ndarray | None = None
        if not output.is_file():
            if inputs:
                raise InputError(side, f"exists without the embeddings file {output.name}", "both files (or delete it)")
            shape: tuple[int, ...] = (0, dim)  # killed before its first rows were saved
        elif output.suffix.lower() == ".npy":
            shape = _npy_rows(output)  # the committed rows stay on disk: new ones are appended in place
        else:
            array = _read_array(output)
            shape = array.shape
        if len(shape) != 2 or shape[0] < len(inputs) or shape[1] != dim:
            raise InputError(
                output,
                f"holds an array of shape {list(shape)} but its sidecar lists {len(inputs)} inputs of a {dim}-d model",
                "the two files of one run (delete both to start again)",
            )
        if shape[0] > len(inputs):
            log.warning("%s: %d row(s) of an interrupted save dropped", output, shape[0] - len(inputs))
        store = cls(output, header, inputs, dict(meta.get("failed") or {}))
        if array is not None or not output.is_file():
            rows = array[: len(inputs)] if array is not None else np.zeros((0, dim), np.float32)
            store.parts.append(rows.astype(np.float32, copy=False))
        else:
            store.first_in_memory = len(inputs)
        return store

    def __len__(self) -> int:
        return len(self.inputs)

    @property
    def unsaved(self) -> int:
        """Rows added since the last save."""
        return len(self.inputs) - self._committed[0]

    @property
    def pending(self) -> bool:
        """Whether anything (rows, failures, or the file itself) is not saved yet."""
        return bool(self.unsaved) or self.failed != self._committed[1] or not self.output.exists()

    def append(self, inputs: Sequence[str], rows: np.ndarray) -> None:
        """Add rows [n, E] for ``inputs`` (kept in memory until :meth:`save`)."""
        self.parts.append(np.asarray(rows, dtype=np.float32))
        self.inputs.extend(inputs)

    def claim(self) -> None:
        """Before the first rows: commit an empty sidecar, so that a later array always has one."""
        if not sidecar_path(self.output).exists():
            self._write_sidecar(0)

    def save(self) -> None:
        """Commit every row and failure: the array first, then the sidecar (the commit record)."""
        dim = int(self.header["embed_dim"])
        stacked = np.concatenate(self.parts) if len(self.parts) > 1 else (self.parts or [np.zeros((0, dim))])[0]
        npy = self.output.suffix.lower() == ".npy"
        if npy and self.output.is_file() and _append_npy(self.output, stacked, self.first_in_memory):
            pass  # appended in place after the committed rows
        elif self.first_in_memory == 0:
            _write_array(self.output, stacked.astype(np.float32, copy=False), self.header["modality"])
        else:  # a .npy another writer left in a layout that cannot grow in place: rewrite it whole
            whole = np.concatenate([_read_array(self.output)[: self.first_in_memory], stacked])
            _write_array(self.output, whole.astype(np.float32, copy=False), self.header["modality"])
        if npy:
            self.parts[:] = []
            self.first_in_memory = len(self.inputs)
        else:
            self.parts[:] = [stacked]
        self._write_sidecar(len(self.inputs))
        self._committed = (len(self.inputs), dict(self.failed))

    def _write_sidecar(self, rows: int) -> None:
        now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        write_json(
            sidecar_path(self.output),
            {**self.header, "inputs": self.inputs[:rows], "failed": self.failed, "updated": now},
        )
