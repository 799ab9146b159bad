"""The shard file of the caption-embedding store (:mod:`lbcore.textstore`): its format, writer and reader.

A shard is one file: a 4 KiB header (magic ``LBTSTOR1``, a little-endian u64 length, then JSON with the row
count, embedding size, dtype, block offsets and the sha256 of the key and row blocks), then the sorted keys
(the first 16 bytes of ``sha256(caption)``, fixed-width ``S16``), then the rows ``[count, dim]`` in key order.
Both blocks start on a 4 KiB boundary so that numpy memory-maps them in place. A shard is written once, to a
temporary file that is fsynced and renamed to a unique name, and never modified.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import struct
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np

from lbcore.errors import TextStoreError

__all__ = [
    "DTYPES",
    "FORMAT",
    "KEY_DTYPE",
    "SUFFIX",
    "CorruptShard",
    "KeyedTexts",
    "Shard",
    "Verify",
    "text_keys",
    "write_shard_file",
]

FORMAT = "lbind-textstore-v1"
_MAGIC = b"LBTSTOR1"
_HEADER_BYTES = 4096
_ALIGN = 4096
KEY_DTYPE = np.dtype("S16")
DTYPES = {"float32": np.dtype("<f4"), "float16": np.dtype("<f2")}
SUFFIX = ".tshard"
_CHUNK_ROWS = 65536  # rows per read/write block when streaming a shard
Verify = Literal["quick", "full"]


@runtime_checkable
class KeyedTexts(Protocol):
    """Captions that carry their keys, hashed once when they were stored (the manifest index's captions)."""

    def text_keys(self) -> np.ndarray:
        """The keys of every caption, in order (``S16`` [N], as :func:`text_keys` computes them)."""
        ...


def text_keys(texts: Sequence[str]) -> np.ndarray:
    """Keys ``S16`` [N]: the first 16 bytes of sha256 of each caption's UTF-8 bytes (taken from ``texts`` when
    it is :class:`KeyedTexts`: a million captions take about 4 s to hash in Python)."""
    if isinstance(texts, KeyedTexts):
        return texts.text_keys()
    return np.array([hashlib.sha256(t.encode("utf-8")).digest()[:16] for t in texts], dtype=KEY_DTYPE).reshape(-1)


def _aligned(n: int) -> int:
    return -(-n // _ALIGN) * _ALIGN


class CorruptShard(TextStoreError):
    """A shard failed a check (the message says which); the store quarantines it."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


@dataclass
class Shard:
    """One memory-mapped shard: sorted keys [count] and rows [count, dim]."""

    path: Path
    header: dict[str, Any]
    keys: np.ndarray
    rows: np.ndarray

    @classmethod
    def open(cls, path: Path, dim: int, dtype: np.dtype, verify: Verify) -> Shard:
        with open(path, "rb") as f:
            head = f.read(_HEADER_BYTES)
            size = os.fstat(f.fileno()).st_size
        if len(head) < 16 or head[:8] != _MAGIC:
            raise CorruptShard(path, "not a text-store shard (bad magic or shorter than its header)")
        (length,) = struct.unpack("<Q", head[8:16])
        try:
            header = json.loads(head[16 : 16 + length].decode("utf-8"))
            count, keys_at, rows_at = int(header["count"]), int(header["keys_offset"]), int(header["rows_offset"])
            shard_dim, shard_dtype = int(header["dim"]), str(header["dtype"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as err:
            raise CorruptShard(path, f"unreadable header ({err})") from err
        if header.get("format") != FORMAT or shard_dim != dim or DTYPES.get(shard_dtype) != dtype or count <= 0:
            raise CorruptShard(
                path,
                f"header says {header.get('format')} {shard_dtype} [{count}, {shard_dim}], "
                f"expected {FORMAT} {dtype.name} [>0, {dim}]",
            )
        expected = rows_at + count * dim * dtype.itemsize
        if size != expected or keys_at + count * KEY_DTYPE.itemsize > rows_at:
            raise CorruptShard(path, f"{size} bytes on disk, the header describes {expected} (truncated or torn copy)")
        keys = np.memmap(path, dtype=KEY_DTYPE, mode="r", offset=keys_at, shape=(count,))
        if hashlib.sha256(keys.tobytes()).hexdigest() != header.get("keys_sha256"):
            raise CorruptShard(path, "the key block does not match its checksum")
        rows = np.memmap(path, dtype=dtype, mode="r", offset=rows_at, shape=(count, dim))
        shard = cls(path, header, keys, rows)
        if verify == "full":
            shard.check_rows()
        return shard

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its path: unpickling maps the file again (quick checks) instead of copying the rows."""
        return (Shard.reopen, (self.path, self.rows.shape[1], self.rows.dtype))

    @classmethod
    def reopen(cls, path: Path, dim: int, dtype: np.dtype) -> Shard:
        try:
            return cls.open(path, dim, dtype, "quick")
        except FileNotFoundError as err:
            raise TextStoreError(f"{path}: shard gone (compacted or deleted); build the caption table again") from err

    def check_rows(self) -> None:
        """Hash the row block against the header (reads the whole shard)."""
        h = hashlib.sha256()
        for start in range(0, len(self.keys), _CHUNK_ROWS):
            h.update(np.ascontiguousarray(self.rows[start : start + _CHUNK_ROWS]).data)
        if h.hexdigest() != self.header.get("rows_sha256"):
            raise CorruptShard(self.path, "the row block does not match its checksum")

    def find(self, keys: np.ndarray) -> np.ndarray:
        """Row of each key in this shard, -1 where absent."""
        pos = np.searchsorted(self.keys, keys)
        pos[pos == len(self.keys)] = 0
        return np.where(self.keys[pos] == keys, pos, -1)

    def gather(self, rows: np.ndarray, out: np.ndarray) -> None:
        """``out[:] = rows`` of this shard as float32, checked to be finite."""
        out[:] = self.rows[rows]
        if not np.isfinite(out).all():
            raise CorruptShard(self.path, "holds non-finite rows")

    @property
    def nbytes(self) -> int:
        return int(self.header["rows_offset"]) + self.rows.nbytes


def gather_rows(shards: Sequence[Shard | None], slot: np.ndarray, row: np.ndarray, out: np.ndarray) -> None:
    """``out[i] = shards[slot[i]].rows[row[i]]`` (float32 [n, E]), one fancy-indexed read per shard."""
    for i in np.unique(slot):
        shard = shards[int(i)]
        if shard is None:
            raise TextStoreError("a shard of this caption table was quarantined after the table was built")
        mask = slot == i
        block = np.empty((int(mask.sum()), out.shape[1]), dtype=np.float32)
        shard.gather(row[mask], block)
        out[mask] = block


def write_shard_file(
    folder: Path, keys: np.ndarray, rows: Callable[[int, int], np.ndarray], dim: int, dtype: np.dtype
) -> Path:
    """Write sorted unique ``keys`` [N] and their rows (``rows(start, stop)`` -> [stop - start, dim]) as one
    shard, atomically: a temporary file in ``folder``, fsynced, then renamed to a name no other writer uses."""
    count = len(keys)
    keys_at = _HEADER_BYTES
    rows_at = keys_at + _aligned(count * KEY_DTYPE.itemsize)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    host = "".join(c if c.isalnum() else "-" for c in socket.gethostname())[:32]
    name = f"shard-{stamp}-{host}-{os.getpid()}-{uuid.uuid4().hex[:12]}{SUFFIX}"
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            key_bytes = np.ascontiguousarray(keys, dtype=KEY_DTYPE).tobytes()
            f.seek(keys_at)
            f.write(key_bytes)
            f.seek(rows_at)
            digest = hashlib.sha256()
            for start in range(0, count, _CHUNK_ROWS):
                block = np.ascontiguousarray(rows(start, min(start + _CHUNK_ROWS, count)), dtype=dtype)
                if block.shape != (min(_CHUNK_ROWS, count - start), dim):
                    raise TextStoreError(f"{folder}: a row block of shape {list(block.shape)}, expected [*, {dim}]")
                digest.update(block.data)
                f.write(block.data)
            header = {
                "format": FORMAT,
                "count": count,
                "dim": dim,
                "dtype": dtype.name,
                "key": "sha256(utf-8 caption)[:16]",
                "keys_offset": keys_at,
                "rows_offset": rows_at,
                "keys_sha256": hashlib.sha256(key_bytes).hexdigest(),
                "rows_sha256": digest.hexdigest(),
                "writer": f"{socket.gethostname()}:{os.getpid()}",
            }
            blob = json.dumps(header).encode("utf-8")
            f.seek(0)
            f.write(_MAGIC + struct.pack("<Q", len(blob)) + blob)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return folder / name
