"""The caption-embedding store: sharded, memory-mapped embedding tables keyed by a hash of the caption.

Layout, one folder per anchor fingerprint (the anchor never changes, so its embeddings are computed once)::

    <root>/<fingerprint>/meta.json                       embed_dim, dtype, format
    <root>/<fingerprint>/shard-<time>-<host>-<pid>-<uuid>.tshard
    <root>/<fingerprint>/quarantine/                     shards that failed a check, kept for inspection

A shard (:mod:`lbcore.textshard`) is one file holding a header, the sorted caption keys (the first 16 bytes of
``sha256(caption)``) and the rows ``[count, dim]`` in key order, both memory-mapped in place. A caption is found
by binary search (``np.searchsorted``) in each shard's keys; a row is read straight from the page cache, which
every process of a node shares, so a reader's own memory does not grow with the number of captions.

Why this design. One file per shard, committed by a single ``os.replace`` of a temporary file in the same
folder, gives readers the whole shard or nothing, on a local disk or a shared (NFS, Lustre) filesystem, and
writers on many nodes never clash because every shard has a unique name (time, host, pid, uuid) and is never
rewritten. A million captions are a handful of files (one per writer, or one after :meth:`TextStore.compact`),
not a million. Plain numpy memory maps need no server, no lock and no extra dependency; an embedded database
(LMDB) needs file locks that shared filesystems do not honour, and Arrow/Parquet adds a dependency without
adding anything a fixed-width float table needs. Rows are float32 by default, so a stored row is bit-identical
to what the anchor computed; ``dtype="float16"`` halves the size at an error of at most 2**-11 relative per
component (below 2.5e-4 absolute for L2-normalised rows), always returned as float32.

Integrity. Opening a shard checks its magic, header, file size (a truncated copy is caught) and the sha256 of
its keys; ``verify="full"`` (and :meth:`TextStore.verify`, and :meth:`TextStore.compact`) also hash the rows,
which reads the whole table (about 1.5 GB/s), so it is not done on every open. Rows are also checked to be
finite when read. A shard that fails any check is logged, moved to ``quarantine/`` and its captions count as
missing, so they are recomputed.

The per-file layout of earlier versions (``<fingerprint>/<xx>/<sha256 hex>.npy``) is migrated into shards the
first time a store opens the folder (its file names are the caption hashes, so no caption text is needed).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch

from lbcore.errors import TextStoreError
from lbcore.textshard import (
    DTYPES,
    FORMAT,
    KEY_DTYPE,
    SUFFIX,
    CorruptShard,
    KeyedTexts,
    Shard,
    Verify,
    gather_rows,
    text_keys,
    write_shard_file,
)

logger = logging.getLogger(__name__)

__all__ = ["CaptionTable", "KeyedTexts", "TextStore", "text_keys"]


class TextStore:
    """The caption embeddings of one anchor (by fingerprint) under ``root``: see the module docstring.

    ``embed_dim`` is read from ``meta.json`` once something was written, else it must be given before the
    first write. ``dtype`` ("float32" or "float16") is fixed when the folder is created. The store sees the
    shards that existed when it was opened, plus those it writes; :meth:`refresh` picks up other writers'.
    """

    def __init__(
        self,
        root: Path | str,
        fingerprint: str,
        *,
        embed_dim: int | None = None,
        dtype: str | None = None,
        verify: Verify = "quick",
        migrate: bool = True,
        anchor_name: str | None = None,
    ) -> None:
        if not fingerprint or not all(c in "0123456789abcdef" for c in fingerprint):
            raise TextStoreError(f"{fingerprint!r} is not an anchor fingerprint (expected lowercase hex)")
        if dtype is not None and dtype not in DTYPES:
            raise TextStoreError(f"{root}: dtype {dtype!r} is not supported; use one of {', '.join(DTYPES)}")
        self.root = Path(root).expanduser()
        self.fingerprint = fingerprint
        self.folder = self.root / fingerprint
        self.verify_mode: Verify = verify
        self.anchor_name = anchor_name
        self.embed_dim: int | None = None
        self.dtype = DTYPES[dtype or "float32"]
        self._shards: list[Shard | None] = []  # None: quarantined after opening; slots keep row ids stable
        self._names: set[str] = set()
        self._read_meta(dtype)
        if embed_dim is not None:
            self._set_dim(int(embed_dim))
        if migrate and self._has_legacy_files():
            _migrate_legacy(self)
        self.refresh()

    # ------------------------------------------------------------------------------------------------ meta
    @property
    def _meta_path(self) -> Path:
        return self.folder / "meta.json"

    def _read_meta(self, dtype: str | None) -> None:
        try:
            meta = json.loads(self._meta_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise TextStoreError(f"{self._meta_path}: unreadable store metadata ({err}); delete it to rebuild") from err
        dim = meta.get("embed_dim") if isinstance(meta, dict) else None
        if not isinstance(dim, int) or dim <= 0:
            raise TextStoreError(f"{self._meta_path}: no positive embed_dim in store metadata; delete it to rebuild")
        stored = meta.get("dtype", "float32")  # the per-file layout had no dtype: it was float32
        if stored not in DTYPES or (dtype is not None and dtype != stored):
            raise TextStoreError(
                f"{self._meta_path}: the store holds {stored} rows, {dtype} was asked for; use another cache folder"
            )
        self.embed_dim, self.dtype = dim, DTYPES[stored]
        if meta.get("format") != FORMAT and not self._has_legacy_files():
            self._write_meta()

    def _has_legacy_files(self) -> bool:
        return self.folder.is_dir() and any(p.is_dir() and len(p.name) == 2 for p in self.folder.iterdir())

    def _set_dim(self, dim: int) -> None:
        if self.embed_dim is not None and self.embed_dim != dim:
            raise TextStoreError(
                f"{self._meta_path}: the store holds {self.embed_dim}-d embeddings for this anchor, got {dim}-d "
                "ones; the fingerprint does not match the anchor that computed them"
            )
        if dim <= 0:
            raise TextStoreError(f"{self.folder}: embed_dim must be positive, got {dim}")
        self.embed_dim = dim

    def _write_meta(self) -> None:
        meta = {"format": FORMAT, "embed_dim": self.embed_dim, "dtype": self.dtype.name, "anchor": self.anchor_name}
        self.folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=".meta.json.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(meta, f, indent=1)
            os.replace(tmp, self._meta_path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    # ---------------------------------------------------------------------------------------------- shards
    def shard_paths(self) -> list[Path]:
        """The committed shard files in the folder now, in name order."""
        if not self.folder.is_dir():
            return []
        return sorted(p for p in self.folder.iterdir() if p.name.startswith("shard-") and p.suffix == SUFFIX)

    def refresh(self) -> int:
        """Open shards written since the last look (by any process); returns how many were added."""
        added = 0
        for path in self.shard_paths():
            if path.name in self._names:
                continue
            if self.embed_dim is None:
                self._read_meta(None)
                if self.embed_dim is None:
                    raise TextStoreError(f"{self._meta_path}: missing, but the folder holds shards; delete it")
            try:
                shard = Shard.open(path, self.embed_dim, self.dtype, self.verify_mode)
            except FileNotFoundError:
                continue  # merged away by a compaction between listing and opening
            except CorruptShard as err:
                self._quarantine(path, err.problem)
                continue
            self._names.add(path.name)
            self._shards.append(shard)
            added += 1
        return added

    def _quarantine(self, path: Path, reason: str) -> None:
        logger.warning("text store: %s is corrupt (%s); moved to quarantine/, its captions will be recomputed",
                       path, reason)  # fmt: skip
        target = self.folder / "quarantine" / path.name
        target.parent.mkdir(exist_ok=True)
        try:
            os.replace(path, target)
        except FileNotFoundError:
            pass  # another process quarantined it first
        for i, shard in enumerate(self._shards):
            if shard is not None and shard.path == path:
                self._shards[i] = None

    def _live(self) -> Iterator[tuple[int, Shard]]:
        return ((i, s) for i, s in enumerate(self._shards) if s is not None)

    def __len__(self) -> int:
        """Rows in the open shards (a caption written by two writers counts twice until :meth:`compact`)."""
        return sum(len(s.keys) for _, s in self._live())

    def stats(self) -> dict[str, int]:
        """Shards, rows, files and bytes of the folder (meta.json included; quarantine excluded)."""
        shards = [s for _, s in self._live()]
        files = [p for p in self.folder.iterdir() if p.is_file()] if self.folder.is_dir() else []
        return {
            "shards": len(shards),
            "rows": sum(len(s.keys) for s in shards),
            "files": len(files),
            "bytes": sum(p.stat().st_size for p in files),
        }

    # ------------------------------------------------------------------------------------------ read/write
    def _locate(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(shard slot, row) of each key, -1 where no open shard holds it; the first shard in open order wins."""
        slot = np.full(len(keys), -1, dtype=np.int64)
        row = np.full(len(keys), -1, dtype=np.int64)
        for i, shard in self._live():
            todo = np.flatnonzero(slot < 0)
            if not len(todo):
                break
            found = shard.find(keys[todo])
            hit = found >= 0
            slot[todo[hit]], row[todo[hit]] = i, found[hit]
        return slot, row

    def holds(self, keys: np.ndarray) -> np.ndarray:
        """Whether an open shard holds each of ``keys`` (``S16`` [N], see :func:`text_keys`): bool [N]."""
        return self._locate(np.asarray(keys, dtype=KEY_DTYPE).reshape(-1))[0] >= 0

    def missing(self, texts: Sequence[str]) -> list[str]:
        """The distinct ``texts`` (first-seen order) that no open shard holds."""
        unique = list(dict.fromkeys(texts))
        slot, _ = self._locate(text_keys(unique))
        return [t for t, s in zip(unique, slot, strict=True) if s < 0]

    def write_shard(self, texts: Sequence[str], embeddings: torch.Tensor | np.ndarray) -> Path | None:
        """Store ``embeddings`` [N, E] (finite) of ``texts`` as one new shard (duplicates: the first row is kept);
        returns its path, or None for no texts. The new shard is open in this store at once."""
        arr = embeddings.detach().to("cpu").numpy() if isinstance(embeddings, torch.Tensor) else np.asarray(embeddings)
        if arr.ndim != 2 or arr.shape[0] != len(texts) or not np.issubdtype(arr.dtype, np.floating):
            raise TextStoreError(f"{self.folder}: write_shard got {arr.dtype} {list(arr.shape)} for {len(texts)} texts")
        if not len(texts):
            return None
        if not np.isfinite(arr).all():
            raise TextStoreError(f"{self.folder}: refusing to store non-finite embeddings (check the anchor)")
        self._set_dim(arr.shape[1])
        if not self._meta_path.is_file():
            self._write_meta()
        keys, first = np.unique(text_keys(texts), return_index=True)  # sorted unique keys, first occurrence
        path = write_shard_file(self.folder, keys, lambda a, b: arr[first[a:b]], arr.shape[1], self.dtype)
        self.refresh()
        return path

    def _gather(self, shards: Sequence[Shard | None], slot: np.ndarray, row: np.ndarray, out: np.ndarray) -> None:
        """Rows (``slot``, ``row``) of ``shards`` into ``out``; a shard with non-finite rows is quarantined."""
        try:
            gather_rows(shards, slot, row, out)
        except CorruptShard as err:
            self._quarantine(err.path, err.problem)
            raise TextStoreError(f"{err}; quarantined, recompute its captions") from err

    def lookup(self, texts: Sequence[str]) -> np.ndarray:
        """Embeddings float32 [N, E] of ``texts`` (repeats allowed); every text must be stored."""
        out = np.empty((len(texts), self._dim()), dtype=np.float32)
        self._gather(self._shards, *self._rows_of(texts), out)
        return out

    def _dim(self) -> int:
        if self.embed_dim is None:
            raise TextStoreError(f"{self.folder}: the store is empty and its embedding size is unknown")
        return self.embed_dim

    def _rows_of(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        slot, row = self._locate(text_keys(texts))
        absent = np.flatnonzero(slot < 0)
        if len(absent):
            shown = ", ".join(repr(texts[i][:60]) for i in absent[:5])
            raise TextStoreError(
                f"{self.folder}: {len(absent)} of {len(texts)} captions are not stored ({shown}...); run the caption "
                "pre-pass first (on a filesystem every rank sees)"
            )
        return slot, row

    def table(self, texts: Sequence[str]) -> CaptionTable:
        """A compact index of ``texts`` for training: caption id ``i`` (position in ``texts``) -> its row."""
        slot, row = self._rows_of(texts)
        return CaptionTable(self, slot.astype(np.int32), row)

    # -------------------------------------------------------------------------------------------- upkeep
    def verify(self) -> int:
        """Hash every open shard's rows against its header; quarantine failures. Returns shards quarantined."""
        bad = 0
        for _, shard in list(self._live()):
            try:
                shard.check_rows()
            except CorruptShard as err:
                self._quarantine(shard.path, err.problem)
                bad += 1
        return bad

    def compact(self, rows_per_shard: int = 4_000_000, stale_after: float = 3600.0) -> list[Path]:
        """Merge every shard into as few as possible (unique captions, ``rows_per_shard`` at most each), after a
        full :meth:`verify`; remove the merged shards and temporary files older than ``stale_after`` seconds.

        Run it when no other process writes to this anchor's folder: shards written meanwhile are kept but not
        merged. Readers that already opened the old shards keep reading them (POSIX keeps unlinked files alive).
        """
        self.refresh()
        self.verify()
        now = time.time()
        for tmp in self.folder.glob(".*.tmp") if self.folder.is_dir() else []:
            if now - tmp.stat().st_mtime > stale_after:
                tmp.unlink(missing_ok=True)
        live = [s for _, s in self._live()]
        if len(live) <= 1 and all(len(s.keys) <= rows_per_shard for s in live):
            return [s.path for s in live]
        keys = np.concatenate([s.keys for s in live])
        owner = np.concatenate([np.full(len(s.keys), i, dtype=np.int64) for i, s in enumerate(live)])
        row = np.concatenate([np.arange(len(s.keys), dtype=np.int64) for s in live])
        keys, first = np.unique(keys, return_index=True)  # the earliest shard in open order wins a duplicate
        owner, row = owner[first], row[first]
        written = []
        for start in range(0, len(keys), rows_per_shard):
            stop = min(start + rows_per_shard, len(keys))

            def rows(a: int, b: int, start: int = start) -> np.ndarray:
                out = np.empty((b - a, self._dim()), dtype=self.dtype)
                o, r = owner[start + a : start + b], row[start + a : start + b]
                for i in np.unique(o):
                    out[o == i] = live[int(i)].rows[r[o == i]]
                return out

            written.append(write_shard_file(self.folder, keys[start:stop], rows, self._dim(), self.dtype))
        for shard in live:
            shard.path.unlink(missing_ok=True)
        logger.info("text store %s: %d shards merged into %d (%d captions)", self.folder, len(live), len(written),
                    len(keys))  # fmt: skip
        self.reopen()
        return written

    def reopen(self) -> None:
        """Forget the open shards and map the folder's current ones (after another process compacted it)."""
        self._shards, self._names = [], set()
        self.refresh()


def _legacy_rows(store: TextStore, files: list[Path]) -> tuple[list[bytes], list[np.ndarray]]:
    """Keys and rows of the per-file entries ``files``; unreadable or malformed ones are logged and skipped."""
    keys, rows = [], []
    for path in files:
        try:
            with open(path, "rb") as f:
                arr = np.load(f, allow_pickle=False)
        except FileNotFoundError:
            continue  # another process migrated it meanwhile
        except (ValueError, EOFError) as err:
            logger.warning("text store: legacy entry %s is corrupt (%s); it will be recomputed", path, err)
            continue
        dim = store.embed_dim if store.embed_dim is not None else (arr.shape[0] if arr.ndim == 1 else -1)
        if arr.dtype != np.float32 or arr.shape != (dim,) or not np.isfinite(arr).all():
            logger.warning("text store: legacy entry %s holds %s %s, expected finite float32 [%s]; recomputed",
                           path, arr.dtype, list(arr.shape), dim)  # fmt: skip
            continue
        store.embed_dim = dim
        keys.append(bytes.fromhex(path.stem[:32]))
        rows.append(arr)
    return keys, rows


def _migrate_legacy(store: TextStore, rows_per_shard: int = 1_000_000) -> None:
    """Move the per-file layout (``<fingerprint>/<xx>/<sha256 hex>.npy``, float32 [E] each) into shards, then
    delete those files. File names are the caption hashes, so the captions themselves are not needed."""
    files = sorted(
        p for p in store.folder.glob("??/*.npy") if len(p.stem) == 64 and all(c in "0123456789abcdef" for c in p.stem)
    )
    for start in range(0, len(files), rows_per_shard):
        chunk = files[start : start + rows_per_shard]
        keys, rows = _legacy_rows(store, chunk)
        if rows:
            store._write_meta()
            order = np.argsort(np.array(keys, dtype=KEY_DTYPE), kind="stable")
            uniq, first = np.unique(np.array(keys, dtype=KEY_DTYPE)[order], return_index=True)
            table = np.stack(rows)[order[first]]
            write_shard_file(store.folder, uniq, lambda a, b, t=table: t[a:b], table.shape[1], store.dtype)
        for path in chunk:
            path.unlink(missing_ok=True)
    for sub in store.folder.iterdir():
        if sub.is_dir() and len(sub.name) == 2 and not any(sub.iterdir()):
            with contextlib.suppress(FileNotFoundError):  # another process removed it first
                sub.rmdir()
    if files:
        store._write_meta()
        logger.info("text store %s: migrated %d per-file entries into shards", store.folder, len(files))


class CaptionTable:
    """Caption ids -> embedding rows of a :class:`TextStore`, without loading the table.

    Holds two small arrays per caption (shard slot int32, row int64: 12 bytes) and the memory maps of the
    shards open when it was built (a later :meth:`TextStore.compact` does not move its rows). ``gather(ids)``
    reads only those rows, float32 ``[len(ids), E]``, optionally into pinned memory so that
    ``.to(device, non_blocking=True)`` overlaps the copy with compute. It pickles as shard paths and the two
    index arrays (a DataLoader worker re-maps the shards; no table is copied).
    """

    def __init__(self, store: TextStore, slot: np.ndarray, row: np.ndarray) -> None:
        self.store, self.slot, self.row = store, slot, row
        self.shards = list(store._shards)
        self.embed_dim = store._dim()

    def __len__(self) -> int:
        return len(self.row)

    def gather(self, ids: torch.Tensor | np.ndarray | Sequence[int], pin_memory: bool = False) -> torch.Tensor:
        """Rows of caption ids ``ids`` [n] -> float32 [n, E] on the CPU (pinned when asked and CUDA is there)."""
        idx = ids.detach().cpu().numpy() if isinstance(ids, torch.Tensor) else np.asarray(ids, dtype=np.int64)
        idx = idx.astype(np.int64, copy=False).reshape(-1)
        pin = pin_memory and torch.cuda.is_available()
        out = torch.empty((len(idx), self.embed_dim), dtype=torch.float32, pin_memory=pin)
        self.store._gather(self.shards, self.slot[idx], self.row[idx], out.numpy())
        return out
