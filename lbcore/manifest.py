"""Manifests: JSONL or CSV files listing media files, their captions and labels; one set of rules for training,
evaluation and embedding.

Rows come in two forms, one per manifest:

* plain: ``{"path": "a/b.wav", "captions": ["...", "..."], "label": "dog"}``, one media file per row;
* paired: one key per modality instead of ``path``, e.g. ``{"video": "a.mp4", "audio": "a.wav", "caption":
  "..."}``. A row may lack a modality (or set it to ``null``); each consumer takes the rows that have its key.

``caption`` / ``captions``: a non-empty string or a list of them (one caption or several); ``label`` /
``labels``: the same, a list marking a multi-label row. ``id`` and ``split`` are reserved and ignored; in a
plain row every key but ``path`` is ignored; in a paired row every other key is a modality's path column.
Paths are taken relative to the manifest's folder (absolute paths stay as written); rows that name files
outside that folder are allowed and logged once.

CSV: a header row, columns ``path`` (or one per modality), ``caption`` and ``label``; one caption per line, and
lines naming the same media merge their captions. Cells are stripped; an empty cell is absent.

Every bad row is a :class:`ManifestError` naming the file and line: text that is not UTF-8 or not JSON, a row
that is not an object, a path that is not a non-empty string or holds a NUL byte, a row without any media path,
a row repeating an earlier row's media (JSONL; in CSV a repeated caption or a conflicting label), rows mixing
the two forms, and a manifest without rows.

:class:`Manifest` is columnar: consumers ask for ``len(manifest)``, ``manifest.paths(column)``,
``manifest.captions(i)`` and ``manifest.labels(i)``, so that a later storage can be memory-mapped without a
Python object per row: :func:`lbcore.manifestindex.open_manifest` gives the same rows from memory-mapped arrays
built once per manifest. :func:`read_manifest` gives per-row :class:`ManifestEntry` objects for small manifests
(tests, demo checks).
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

from lbcore.errors import LbindError

log = logging.getLogger(__name__)

__all__ = [
    "PATH",
    "RESERVED_KEYS",
    "Manifest",
    "ManifestEntry",
    "ManifestError",
    "read_manifest",
    "write_manifest",
]

PATH = "path"
RESERVED_KEYS = frozenset({PATH, "label", "labels", "caption", "captions", "id", "split"})
_SHOWN = 10  # problems listed in one error before "... and N more"
CHECK_THREADS = 16  # threads looking files up in Manifest.check_files
CHECK_CHUNK = 4096  # files per lookup task


class ManifestError(LbindError):
    """A manifest is malformed or names files that do not exist."""


def _listing(problems: Sequence[str], sep: str = "\n  ", total: int | None = None) -> str:
    """The first problems, one a line, and how many more there are (of ``total``, default all listed)."""
    total = len(problems) if total is None else total
    more = f"{sep}... and {total - _SHOWN} more" if total > _SHOWN else ""
    return sep + sep.join(problems[:_SHOWN]) + more


def _shown(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------------------------------------ parsing
@dataclass(slots=True)  # one per row while a manifest is read: kept small (slots, pairs, a shared empty map)
class _Row:
    paths: tuple[tuple[str, str], ...]  # (column, path as written), in the record's order
    invalid: Mapping[str, str]  # column -> why its value is no path (reported when a consumer asks for that column)
    captions: tuple[str, ...]
    labels: tuple[str, ...]
    multilabel: bool
    line: int


def _strings(value: Any, key: str, where: str) -> tuple[str, ...]:
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise ManifestError(
            f"{where}: {key!r} is {_shown(value)}; expected a non-empty string or a list of non-empty strings"
        )
    return tuple(items)


def _path_columns(record: Mapping[str, Any], where: str) -> tuple[dict[str, str], dict[str, str]]:
    """The row's media paths by column, and the columns whose value is not a path (with why)."""
    keys = [PATH] if PATH in record else [k for k in record if k not in RESERVED_KEYS]
    paths: dict[str, str] = {}
    invalid: dict[str, str] = {}
    for key in keys:
        value = record[key]
        if isinstance(value, str):
            if not value.strip():
                raise ManifestError(f"{where}: {key!r} is an empty path; expected a file path")
            if "\x00" in value:
                raise ManifestError(f"{where}: {key!r} holds a NUL byte; expected a file path")
            paths[key] = value
        elif key == PATH:
            raise ManifestError(f"{where}: 'path' is {_shown(value)}; expected a file path (a string)")
        elif value is not None:  # null: the row has no file of that modality
            invalid[key] = f"{key!r} is {_shown(value)}, not a file path"
    if not paths:
        found = f" ({'; '.join(invalid.values())})" if invalid else ""
        raise ManifestError(f"{where}: no media path{found}; expected 'path', or one key per modality naming its file")
    return paths, invalid


def _parse_record(record: Mapping[str, Any], where: str, line: int) -> _Row:
    paths, invalid = _path_columns(record, where)
    label = record.get("label", record.get("labels"))
    captions = _strings(record.get("captions", record.get("caption")), "captions", where)
    labels = _strings(label, "label", where)
    return _Row(tuple(paths.items()), invalid or _NO_PROBLEMS, captions, labels, isinstance(label, list), line)


_NO_PROBLEMS: Mapping[str, str] = MappingProxyType({})


def _media_key(row: _Row) -> tuple[tuple[str, str], ...]:
    return row.paths if len(row.paths) < 2 else tuple(sorted(row.paths))


def _is_plain(row: _Row) -> bool:
    return row.paths[0][0] == PATH  # a row with a 'path' has that column only


def _lines(data: bytes) -> Iterator[bytes]:
    """The lines of ``data`` without their newline, one at a time (a list of ten million lines is gigabytes)."""
    start = 0
    while start <= len(data):
        end = data.find(b"\n", start)
        end = len(data) if end < 0 else end
        yield data[start:end]
        start = end + 1


def _jsonl_rows(source: Path, data: bytes) -> list[_Row]:
    rows: list[_Row] = []
    first_line: dict[tuple[tuple[str, str], ...], int] = {}
    repeats: list[str] = []
    for line, raw in enumerate(_lines(data), 1):
        where = f"{source}:{line}"
        try:
            text = raw.decode("utf-8-sig" if line == 1 else "utf-8")
        except UnicodeDecodeError as err:
            raise ManifestError(
                f"{where}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
            ) from err
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{where}: not valid JSON: {err.msg}") from err
        if not isinstance(record, dict):
            raise ManifestError(f"{where}: expected a JSON object, got {type(record).__name__}")
        row = _parse_record(record, where, line)
        key = _media_key(row)
        if key in first_line:
            repeats.append(f"{where}: repeats the media of line {first_line[key]}")
        first_line.setdefault(key, line)
        rows.append(row)
    if repeats:
        raise ManifestError(
            f"{source}: {len(repeats)} row(s) repeat an earlier row's media (give one row per item, with all its "
            f"captions):{_listing(repeats)}"
        )
    return rows


def _csv_text(source: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise ManifestError(
            f"{source}:{line}: not UTF-8 text ({err.reason} at byte {err.start}); save it as UTF-8"
        ) from err


def _merge_csv_row(first: _Row, row: _Row, where: str) -> None:
    """Add a CSV line's captions to the row that named the same media first."""
    if row.labels and first.labels and row.labels != first.labels:
        raise ManifestError(
            f"{where}: label {row.labels[0]!r} conflicts with {first.labels[0]!r} on line {first.line} for the "
            "same media"
        )
    new = tuple(c for c in row.captions if c not in first.captions)
    if not new:
        raise ManifestError(f"{where}: repeats line {first.line} (same media, no new caption)")
    first.captions += new
    first.labels = first.labels or row.labels


def _csv_rows(source: Path, data: bytes) -> list[_Row]:
    reader = csv.DictReader(io.StringIO(_csv_text(source, data), newline=""))
    merged: dict[tuple[tuple[str, str], ...], _Row] = {}
    try:
        if not reader.fieldnames:
            raise ManifestError(f"{source}: empty CSV; expected a header row (path or one column per modality)")
        for record in reader:
            where = f"{source}:{reader.line_num}"
            if record.get(None):  # type: ignore[call-overload]  # DictReader's key for cells past the header
                raise ManifestError(f"{where}: more cells than the header has columns")
            cells = {k.strip(): v.strip() for k, v in record.items() if k and isinstance(v, str) and v.strip()}
            if not cells:
                continue
            row = _parse_record(cells, where, reader.line_num)
            key = _media_key(row)
            if key in merged:
                _merge_csv_row(merged[key], row, where)
            else:
                merged[key] = row
    except csv.Error as err:
        raise ManifestError(f"{source}:{reader.line_num}: not valid CSV: {err}") from err
    return list(merged.values())


# ------------------------------------------------------------------------------------------- the manifest
class Manifest:
    """The rows of one manifest, column by column (build it with :meth:`read`).

    ``source`` is the file read, ``base`` the folder its relative paths are taken from. Rows are addressed by
    index ``0 .. len - 1``; :meth:`line` gives each row's line in ``source`` for messages.
    """

    def __init__(
        self,
        source: Path,
        base: Path,
        *,
        columns: dict[str, list[str | None]],
        invalid: dict[str, dict[int, str]],
        captions: list[tuple[str, ...]],
        labels: list[tuple[str, ...]],
        multilabel: list[bool],
        lines: list[int],
    ) -> None:
        self.source = source
        self.base = base
        self._columns = columns
        self._invalid = invalid
        self._captions = captions
        self._labels = labels
        self._multilabel = multilabel
        self._lines = lines
        self._outside_found: list[Any] | bool | None = False  # False: not looked for yet

    def __repr__(self) -> str:
        return f"Manifest({str(self.source)!r}, rows={len(self)}, columns={list(self.columns)})"

    @classmethod
    def read(cls, manifest: str | Path) -> Manifest:
        """Parse a JSONL or CSV manifest (``.csv`` by its suffix); :class:`ManifestError` names any bad row."""
        source = Path(manifest)
        if not source.is_file():
            raise ManifestError(f"{source}: manifest not found")
        try:
            data = source.read_bytes()
        except OSError as err:
            raise ManifestError(f"{source}: cannot read the manifest: {err.strerror or err}") from err
        rows = _csv_rows(source, data) if source.suffix.lower() == ".csv" else _jsonl_rows(source, data)
        if not rows:
            raise ManifestError(f"{source}: the manifest lists no media")
        plain = [_is_plain(r) for r in rows]
        if any(plain) and not all(plain):
            odd = next(r for r in rows if _is_plain(r) != plain[0])
            raise ManifestError(
                f"{source}:{odd.line}: mixes rows with a 'path' and paired rows (one key per modality; line "
                f"{rows[0].line} is {'plain' if plain[0] else 'paired'}); use one form throughout"
            )
        return cls._from_rows(source, rows)

    @classmethod
    def _from_rows(cls, source: Path, rows: Sequence[_Row]) -> Manifest:
        columns: dict[str, list[str | None]] = {}
        invalid: dict[str, dict[int, str]] = {}
        for i, row in enumerate(rows):
            for key, value in row.paths:
                if key not in columns:  # not setdefault: its default would build an n-list on every row
                    columns[key] = [None] * len(rows)
                columns[key][i] = value
            for key, why in row.invalid.items():
                invalid.setdefault(key, {})[i] = why
        base = Path(os.path.abspath(source)).parent.resolve()
        manifest = cls(
            source,
            base,
            columns=columns,
            invalid=invalid,
            captions=[r.captions for r in rows],
            labels=[r.labels for r in rows],
            multilabel=[r.multilabel for r in rows],
            lines=[r.line for r in rows],
        )
        manifest._log_outside()
        return manifest

    def _outside(self) -> list[Any] | None:
        """[count, first line, its path] of the paths that lead outside the manifest's folder, or None."""
        if self._outside_found is False:
            inside = str(self.base) + os.sep
            count, first = 0, None
            for values in self._columns.values():
                for i, p in enumerate(values):
                    if p is not None and not os.path.normpath(os.path.join(self.base, p)).startswith(inside):
                        count += 1
                        first = first or [self.line(i), p]
            self._outside_found = [count, *first] if first else None
        return self._outside_found  # type: ignore[return-value]

    def _log_outside(self) -> None:
        outside = self._outside()
        if outside:
            log.warning("%s: %d path(s) lead outside the manifest's folder (first: line %d, %s)", self.source, *outside)

    # -- shape ---------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._lines)

    @property
    def columns(self) -> tuple[str, ...]:
        """The path columns: ``("path",)`` for a plain manifest, else the modality keys in first-seen order."""
        return tuple(dict.fromkeys([*self._columns, *self._invalid]))

    @property
    def paired(self) -> bool:
        """Whether rows carry one key per modality (rather than a single ``path``)."""
        return PATH not in self._columns

    def column_for(self, modality: str) -> str:
        """The column holding ``modality``'s files: ``path`` in a plain manifest, the modality's key otherwise."""
        return modality if self.paired else PATH

    def rows_with(self, column: str) -> list[int]:
        """The rows that name a file in ``column`` (or something meant as one: :meth:`paths` reports those)."""
        values = self._columns.get(column, [])
        bad = self._invalid.get(column, {})
        return [i for i in range(len(self)) if (values and values[i] is not None) or i in bad]

    def rows_of(self, modality: str) -> Manifest:
        """The rows that serve ``modality``: all of a plain manifest's, a paired one's rows with its key."""
        if not self.paired:
            return self
        rows = self.rows_with(modality)
        if not rows:
            raise ManifestError(
                f"{self.source}: no row names a {modality!r} file (its columns: {', '.join(self.columns)})"
            )
        return self.select(rows)

    def select(self, rows: Sequence[int]) -> Manifest:
        """A manifest of the given rows, in the given order (e.g. one modality's rows of a paired manifest)."""
        position = {old: new for new, old in enumerate(rows)}
        return Manifest(
            self.source,
            self.base,
            columns={k: [v[i] for i in rows] for k, v in self._columns.items()},
            invalid={k: {position[i]: w for i, w in bad.items() if i in position} for k, bad in self._invalid.items()},
            captions=[self._captions[i] for i in rows],
            labels=[self._labels[i] for i in rows],
            multilabel=[self._multilabel[i] for i in rows],
            lines=[self._lines[i] for i in rows],
        )

    # -- rows ----------------------------------------------------------------------------------------------
    def paths(self, column: str = PATH) -> list[Path]:
        """Every row's file in ``column``, absolute; one :class:`ManifestError` lists the rows without one."""
        values = self._columns.get(column)
        bad = self._invalid.get(column, {})
        problems = [
            f"{self.where(i)}: {bad[i]}" if i in bad else f"{self.where(i)}: no {column!r} path"
            for i in range(len(self))
            if i in bad or values is None or values[i] is None
        ]
        if problems:
            raise ManifestError(
                f"{self.source}: {len(problems)} of {len(self)} row(s) name no {column!r} file:{_listing(problems)}"
            )
        assert values is not None
        return [Path(os.path.normpath(os.path.join(self.base, v))) for v in values]  # type: ignore[arg-type]

    def captions(self, index: int) -> tuple[str, ...]:
        return self._captions[index]

    def labels(self, index: int) -> tuple[str, ...]:
        return self._labels[index]

    def multilabel(self, index: int) -> bool:
        """Whether row ``index`` gave its label as a list."""
        return self._multilabel[index]

    def line(self, index: int) -> int:
        return self._lines[index]

    def where(self, index: int) -> str:
        """``file:line`` of row ``index``, for messages."""
        return f"{self.source}:{self._lines[index]}"

    # -- checks --------------------------------------------------------------------------------------------
    def require_captions(self, purpose: str) -> None:
        """Raise one :class:`ManifestError` listing every row without a caption."""
        problems = [f"{self.where(i)}: expected 'captions'" for i in range(len(self)) if not self._captions[i]]
        if problems:
            raise ManifestError(
                f"{problems[0]} (a non-empty list of strings) on every row for {purpose}"
                + (f"; {len(problems)} rows lack them:{_listing(problems)}" if len(problems) > 1 else "")
            )

    def caption_index(self) -> tuple[Sequence[str], Sequence[tuple[int, ...]]]:
        """The distinct captions of the rows (first-seen order) and, per row, the ids of its captions."""
        position: dict[str, int] = {}
        ids = [tuple(position.setdefault(c, len(position)) for c in self.captions(i)) for i in range(len(self))]
        return tuple(position), ids

    def check_files(self, columns: Iterable[str] = (PATH,), threads: int = CHECK_THREADS) -> None:
        """Raise one :class:`ManifestError` listing every file of ``columns`` that does not exist.

        The files are looked up by ``threads`` threads, in chunks (a shared filesystem answers a ``stat`` in
        about a millisecond: a million files take minutes one at a time)."""
        views = [self.paths(column) for column in columns]
        chunks = [(v, a, min(a + CHECK_CHUNK, len(v))) for v in views for a in range(0, len(v), CHECK_CHUNK)]

        def absent(chunk: tuple[Sequence[Path], int, int]) -> list[str]:
            view, a, b = chunk
            return [str(view[i]) for i in range(a, b) if not os.path.isfile(view[i])]

        if len(chunks) > 1 and threads > 1:
            with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="lbind-check") as pool:
                found = list(pool.map(absent, chunks))
        else:
            found = [absent(c) for c in chunks]
        missing = list(dict.fromkeys(p for part in found for p in part))
        if missing:
            wanted = sum(len(v) for v in views)
            shown = "\n  ".join(missing[:50]) + (f"\n  ... and {len(missing) - 50} more" if len(missing) > 50 else "")
            raise ManifestError(f"{self.source}: {len(missing)} of {wanted} media file(s) missing:\n  {shown}")


# ------------------------------------------------------------------------------------------ entries, writing
@dataclass(frozen=True)
class ManifestEntry:
    """One row of a training manifest: its file (absolute), captions and (first) label."""

    path: Path
    captions: tuple[str, ...]
    label: str | None = None


def read_manifest(
    manifest: str | Path, check_files: bool = True, *, modality: str | None = None
) -> list[ManifestEntry]:
    """Rows of a manifest as :class:`ManifestEntry` objects (small manifests: tests, demo checks).

    A plain manifest gives its rows; a paired one the rows that have ``modality``'s key. Every row needs a
    caption; with ``check_files``, every missing file is listed in one error.
    """
    parsed = Manifest.read(manifest)
    if parsed.paired and modality is None:
        raise ManifestError(f"{parsed.source}: rows name one file per modality; say which modality to read")
    parsed = parsed.rows_of(modality or PATH)
    column = parsed.column_for(modality or PATH)
    parsed.require_captions("training")
    paths = parsed.paths(column)
    if check_files:
        parsed.check_files([column])
    return [ManifestEntry(path, parsed.captions(i), (parsed.labels(i) or (None,))[0]) for i, path in enumerate(paths)]


def write_manifest(manifest: str | Path, rows: Iterable[Mapping[str, Any]]) -> Path:
    """Write JSONL rows (paths relative to the manifest's folder), atomically."""
    manifest = Path(manifest)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_name(f".{manifest.name}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(dict(row), ensure_ascii=False) + "\n")
    os.replace(tmp, manifest)
    return manifest
