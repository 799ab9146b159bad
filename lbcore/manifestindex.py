"""The compact form of a manifest: its columns as memory-mapped arrays, built once, shared by every process.

A :class:`~lbcore.manifest.Manifest` read from JSONL/CSV holds a few Python objects per row, in every process
and (once reference counts touch their pages) in every DataLoader worker: about 700 bytes and 70 us per row. The
index stores the same rows as flat arrays in one folder per manifest version:

* per path column: the UTF-8 bytes of every row's path in one blob, and ``offsets`` [n + 1] (an absent path
  is an empty slice; a manifest path is never empty);
* captions and labels: the distinct strings (first-seen order) as a blob with offsets, and per row the ids of
  its strings as a ragged array (``row_offsets`` [n + 1], ``ids``); the distinct captions' caption-store keys
  (``S16``, :func:`lbcore.textshard.text_keys`), so the caption pre-pass never hashes them again;
* ``multilabel`` [n] and the manifest ``lines`` [n]; ``meta.json`` with the columns, the values that are not
  paths (rare, kept as text), the warning about paths outside the manifest's folder, and the key.

The folder is ``<cache>/manifests/<key>/``, ``key`` a sha256 of the manifest's absolute path, size and
modification time (its paths are relative to its folder, so a moved copy is another manifest); the content's
sha256 is kept in ``meta.json``. The first process to ask parses the manifest (with every check of
:meth:`Manifest.read`) and commits the folder with one rename; the others map it. The arrays are
``np.load(mmap_mode="r")`` maps: their pages live in the page cache, shared by all processes of a node, and
a process's own memory does not grow with the rows. :class:`MappedManifest` is a :class:`Manifest` backed by
them (same rows, same answers, checked by the tests); it pickles as its folder (a worker re-maps the files).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import uuid
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, overload

import numpy as np

from lbcore.config import default_cache_dir
from lbcore.manifest import PATH, Manifest, ManifestError, _listing
from lbcore.textshard import text_keys

log = logging.getLogger(__name__)

__all__ = [
    "FORMAT",
    "CaptionStrings",
    "MappedManifest",
    "RaggedIds",
    "StringTable",
    "build_index",
    "index_key",
    "open_manifest",
]

FORMAT = "lbind-manifest-index/2"


def _load(folder: Path, name: str) -> np.ndarray:
    return np.load(folder / f"{name}.npy", mmap_mode="r", allow_pickle=False)


def _ref(array: np.ndarray | None) -> Any:
    """What pickles for ``array``: its file for a whole memory map (re-mapped on arrival), else the array."""
    return str(array.filename) if isinstance(array, np.memmap) and array.filename else array


def _rebuild(cls: type, refs: tuple[Any, ...]) -> Any:
    return cls(*(np.load(r, mmap_mode="r", allow_pickle=False) if isinstance(r, str) else r for r in refs))


class StringTable(Sequence[str]):
    """Strings ``i`` = ``blob[offsets[i]:offsets[i + 1]]`` decoded as UTF-8 (a blob of uint8, offsets int64)."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray) -> None:
        self.blob, self.offsets = blob, offsets

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (StringTable, (_ref(self.blob), _ref(self.offsets))))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @overload
    def __getitem__(self, i: int) -> str: ...
    @overload
    def __getitem__(self, i: slice) -> list[str]: ...
    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return bytes(self.blob[self.offsets[i] : self.offsets[i + 1]]).decode("utf-8")

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @staticmethod
    def pack(values: Iterable[str | None]) -> tuple[np.ndarray, np.ndarray]:
        """(blob uint8, offsets int64 [n + 1]) of ``values`` (``None`` packs as an empty string)."""
        encoded = [v.encode("utf-8") if v is not None else b"" for v in values]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter((len(e) for e in encoded), dtype=np.int64, count=len(encoded)), out=offsets[1:])
        return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


class CaptionStrings(StringTable):
    """The distinct captions of an index, with their caption-store keys (``S16`` [n], hashed when the index was
    built), so that the caption pre-pass and the caption tables never hash them again."""

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, keys: np.ndarray) -> None:
        super().__init__(blob, offsets)
        if len(keys) != len(self):
            raise ManifestError(
                f"{getattr(keys, 'filename', 'caption keys')}: {len(keys)} keys for {len(self)} captions"
            )
        self.keys = keys

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (CaptionStrings, (_ref(self.blob), _ref(self.offsets), _ref(self.keys))))

    def text_keys(self) -> np.ndarray:
        return self.keys


class RaggedIds(Sequence[tuple[int, ...]]):
    """Per row ``i``, the ids ``ids[row_offsets[i]:row_offsets[i + 1]]`` (as a tuple of ints)."""

    def __init__(self, row_offsets: np.ndarray, ids: np.ndarray, rows: np.ndarray | None = None) -> None:
        self.row_offsets, self.ids, self.rows = row_offsets, ids, rows

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (RaggedIds, (_ref(self.row_offsets), _ref(self.ids), self.rows)))

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.row_offsets) - 1

    def _row(self, i: int) -> int:
        return int(self.rows[i]) if self.rows is not None else i

    def __getitem__(self, i: int) -> tuple[int, ...]:  # type: ignore[override]
        r = self._row(i)
        return tuple(int(v) for v in self.ids[self.row_offsets[r] : self.row_offsets[r + 1]])

    def counts(self) -> np.ndarray:
        """How many ids each row has [len]."""
        counts = np.diff(self.row_offsets)
        return counts[self.rows] if self.rows is not None else counts

    @staticmethod
    def pack(rows: Iterable[Sequence[str]], position: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
        """(row_offsets int64 [n + 1], ids int64) of each row's strings, numbered first-seen in ``position``."""
        ids: list[int] = []
        offsets = [0]
        for row in rows:
            ids.extend(position.setdefault(v, len(position)) for v in row)
            offsets.append(len(ids))
        return np.asarray(offsets, dtype=np.int64), np.asarray(ids, dtype=np.int64)


class _Column(Sequence["str | None"]):
    """One path column seen through a row selection: the path as written, or None where the row has none."""

    def __init__(self, table: StringTable, rows: np.ndarray | None) -> None:
        self.table, self.rows = table, rows

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.table)

    def __getitem__(self, i: int) -> str | None:  # type: ignore[override]
        value = self.table[int(self.rows[i]) if self.rows is not None else i]
        return value or None

    def present(self) -> np.ndarray:
        lengths = self.table.lengths()
        return (lengths[self.rows] if self.rows is not None else lengths) > 0


class _Paths(Sequence[Path]):
    """A column's files, absolute, made on demand (a list of a million Paths is what the index avoids)."""

    def __init__(self, base: Path, column: _Column) -> None:
        self.base, self.column = base, column

    def __len__(self) -> int:
        return len(self.column)

    def __getitem__(self, i: int) -> Path:  # type: ignore[override]
        return Path(os.path.normpath(os.path.join(self.base, self.column[i])))  # type: ignore[arg-type]

    def __iter__(self) -> Iterator[Path]:
        return (self[i] for i in range(len(self)))


class _Tuples(Sequence[tuple[str, ...]]):
    """Per row, its strings (captions or labels) as a tuple."""

    def __init__(self, table: StringTable, ids: RaggedIds) -> None:
        self.table, self.ids = table, ids

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> tuple[str, ...]:  # type: ignore[override]
        return tuple(self.table[j] for j in self.ids[i])


class MappedManifest(Manifest):
    """A :class:`Manifest` whose columns are memory-mapped arrays in ``folder`` (see the module docstring);
    ``rows`` selects and orders rows of the full index (None: all). Build or find one with :func:`open_manifest`."""

    def __init__(self, folder: Path, rows: np.ndarray | None = None) -> None:
        meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
        self.folder, self.meta, self._rows = folder, meta, rows
        self._tables = {
            c: StringTable(_load(folder, f"col{j}.blob"), _load(folder, f"col{j}.offsets"))
            for j, c in enumerate(meta["columns"])
        }
        strings = {
            "cap": CaptionStrings(_load(folder, "cap.blob"), _load(folder, "cap.offsets"), _load(folder, "cap.keys")),
            "lab": StringTable(_load(folder, "lab.blob"), _load(folder, "lab.offsets")),
        }
        ragged = {k: RaggedIds(_load(folder, f"{k}.rows"), _load(folder, f"{k}.ids"), rows) for k in ("cap", "lab")}
        lines, multilabel = _load(folder, "lines"), _load(folder, "multilabel")
        full_invalid = {c: {int(i): w for i, w in bad.items()} for c, bad in meta["invalid"].items()}
        if rows is not None:
            lines, multilabel = lines[rows], multilabel[rows]
            full_invalid = {
                c: {int(new): w for old, w in bad.items() for new in np.flatnonzero(rows == old)}
                for c, bad in full_invalid.items()
            }
        super().__init__(
            Path(meta["source"]),
            Path(meta["base"]),
            columns={c: _Column(t, rows) for c, t in self._tables.items()},  # type: ignore[misc]
            invalid=full_invalid,
            captions=_Tuples(strings["cap"], ragged["cap"]),  # type: ignore[arg-type]
            labels=_Tuples(strings["lab"], ragged["lab"]),  # type: ignore[arg-type]
            multilabel=multilabel,  # type: ignore[arg-type]
            lines=lines,  # type: ignore[arg-type]
        )
        self.caption_texts, self._caption_ids = strings["cap"], ragged["cap"]

    def __reduce__(self) -> tuple[Any, ...]:
        return (MappedManifest, (self.folder, self._rows))  # re-mapped by the receiving process

    def __repr__(self) -> str:
        return f"MappedManifest({str(self.source)!r}, rows={len(self)}, index={str(self.folder)!r})"

    def _outside(self) -> list[Any] | None:
        return self.meta.get("outside")

    def multilabel(self, index: int) -> bool:
        return bool(self._multilabel[index])

    def line(self, index: int) -> int:
        return int(self._lines[index])

    def rows_with(self, column: str) -> list[int]:
        present = self._columns[column].present() if column in self._columns else np.zeros(len(self), dtype=bool)  # type: ignore[attr-defined]
        for i in self._invalid.get(column, {}):
            present[i] = True
        return np.flatnonzero(present).tolist()

    def select(self, rows: Sequence[int]) -> Manifest:
        picked = np.asarray(rows, dtype=np.int64)
        return MappedManifest(self.folder, self._rows[picked] if self._rows is not None else picked)

    def paths(self, column: str = PATH) -> Sequence[Path]:  # type: ignore[override]
        values = self._columns.get(column)
        bad = self._invalid.get(column, {})
        absent = np.ones(len(self), dtype=bool) if values is None else ~values.present()  # type: ignore[attr-defined]
        absent[list(bad)] = True
        if absent.any():
            problems = [
                f"{self.where(i)}: {bad[i]}" if i in bad else f"{self.where(i)}: no {column!r} path"
                for i in np.flatnonzero(absent)[:11].tolist()
            ]
            raise ManifestError(
                f"{self.source}: {int(absent.sum())} of {len(self)} row(s) name no {column!r} file:"
                + _listing(problems, total=int(absent.sum()))
            )
        return _Paths(self.base, values)  # type: ignore[arg-type]

    def require_captions(self, purpose: str) -> None:
        lacking = np.flatnonzero(self._caption_ids.counts() == 0)
        if len(lacking):
            problems = [f"{self.where(i)}: expected 'captions'" for i in lacking[:11].tolist()]
            raise ManifestError(
                f"{problems[0]} (a non-empty list of strings) on every row for {purpose}"
                + (
                    f"; {len(lacking)} rows lack them:{_listing(problems, total=len(lacking))}"
                    if len(lacking) > 1
                    else ""
                )
            )

    def caption_index(self) -> tuple[Sequence[str], Sequence[tuple[int, ...]]]:
        """The manifest's distinct captions (first-seen over all its rows) and each selected row's caption ids."""
        return self.caption_texts, self._caption_ids


# ----------------------------------------------------------------------------------------------- building
def index_key(manifest: str | Path) -> str:
    """The index folder's name: sha256 of the manifest's absolute path, size and modification time (ns)."""
    path = Path(os.path.abspath(manifest))
    stat = path.stat()
    return hashlib.sha256(f"{FORMAT}\0{path}\0{stat.st_size}\0{stat.st_mtime_ns}".encode()).hexdigest()[:32]


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def build_index(manifest: Manifest, folder: Path, key: str = "") -> None:
    """Write the arrays of a parsed ``manifest`` into ``folder`` (which must not exist yet)."""
    folder.mkdir(parents=True)
    rows = range(len(manifest))
    arrays: dict[str, np.ndarray] = {
        "lines": np.asarray([manifest.line(i) for i in rows], dtype=np.int64),
        "multilabel": np.asarray([manifest.multilabel(i) for i in rows], dtype=bool),
    }
    columns = list(manifest._columns)
    for j, column in enumerate(columns):
        arrays[f"col{j}.blob"], arrays[f"col{j}.offsets"] = StringTable.pack(manifest._columns[column])
    for key_, getter in (("cap", manifest.captions), ("lab", manifest.labels)):
        position: dict[str, int] = {}
        arrays[f"{key_}.rows"], arrays[f"{key_}.ids"] = RaggedIds.pack((getter(i) for i in rows), position)
        arrays[f"{key_}.blob"], arrays[f"{key_}.offsets"] = StringTable.pack(position)
        if key_ == "cap":
            arrays["cap.keys"] = text_keys(list(position))  # hashed once here, never again by the pre-pass
    for name, arr in arrays.items():
        np.save(folder / f"{name}.npy", arr, allow_pickle=False)
    stat = manifest.source.stat()
    meta = {
        "format": FORMAT,
        "key": key,
        "source": str(manifest.source),
        "base": str(manifest.base),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256": _file_sha256(manifest.source),
        "rows": len(manifest),
        "columns": columns,
        "invalid": {c: {str(i): w for i, w in bad.items()} for c, bad in manifest._invalid.items()},
        "outside": manifest._outside(),
    }
    (folder / "meta.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False), encoding="utf-8")


def open_manifest(manifest: str | Path, cache_dir: str | Path | None = None) -> MappedManifest:
    """The memory-mapped form of ``manifest``, built on first use (parsing it with every check of
    :meth:`Manifest.read`) under ``cache_dir`` (default ``<lbind cache>/manifests``).

    Safe for concurrent callers on one or many nodes: a build is written to a private folder and committed by
    one rename; a process that loses the race maps the winner's folder.
    """
    source = Path(manifest)
    if not source.is_file():
        raise ManifestError(f"{source}: manifest not found")
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir() / "manifests"
    key = index_key(source)
    folder = root / key
    if not (folder / "meta.json").is_file():
        parsed = Manifest.read(source)
        tmp = root / f".build-{key}-{uuid.uuid4().hex}"
        try:
            build_index(parsed, tmp, key)
            try:
                os.rename(tmp, folder)
                log.info("%s: compact index of %d rows written to %s", source, len(parsed), folder)
            except OSError:
                if not (folder / "meta.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)  # the winner's rename already moved it; else a loser's copy
    mapped = MappedManifest(folder)
    mapped._log_outside()
    return mapped
