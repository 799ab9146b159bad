"""WebDataset tar shards: the streaming form of a manifest, for data that does not fit a file tree.

Writing (:func:`write_shards`, ``lbind shard MANIFEST --output DIR``): the rows of a manifest, in manifest order,
go into ``DIR/shard-000000.tar``, ``shard-000001.tar``, ... (``--shard-size`` rows each, through
``webdataset.ShardWriter``). A row is one sample: ``<key>.json`` (its manifest row number, line, caption ids
and labels) and one member per media column, ``<key>.<column><suffix>`` holding the file's bytes (``path.npy``
for a plain manifest; ``video.mp4`` and ``audio.wav`` for a paired one). ``DIR/shards.json`` lists every shard
with its sample count per column, and ``DIR/captions.blob.npy`` / ``captions.offsets.npy`` hold the distinct
captions (the caption pre-pass reads them without opening a tar).

Reading (:class:`ShardStream`, ``--data "DIR/shard-{000000..000999}.tar"``): the pattern is brace-expanded and
the shards are split with webdataset's ``split_by_node`` (rank ``r`` of ``N`` takes shards ``r, r+N, ...``)
and ``split_by_worker`` (its DataLoader worker ``w`` of ``W`` takes every ``W``-th of those). Each worker reads
its shards in an order drawn from (seed, epoch, rank, worker), rows within a shard in tar order, and makes
micro-batches of ``batch / (processes x grad_accum)`` samples; the DataLoader takes the workers' batches in
turn. Every worker yields the same number of micro-batches and every rank the same number of steps (the
smallest any rank's shards allow; samples past it wait for the next epoch's order). A sample's caption choice
and augmentation are seeded by (seed, epoch, manifest row), as for a manifest, so a sample is the same tensor
whichever way it is read.

Resume guarantee. A resumed run recomputes the epoch's shard order and skips, in each worker, the samples of
the micro-batches already trained on (reading past them in the tar without decoding them), then continues:
with the same shards, seed, batch size, process count and worker count it is bitwise the uninterrupted run.
What is not the same: a run with another process or worker count (the shards are split differently, so the
batches differ from the manifest's and from each other; each is still deterministic), and a run on a
manifest: the samples are the same tensors, but a manifest run draws a global permutation of rows each epoch
while a shard run shuffles only the shard order (write the shards from a shuffled manifest to mix rows).
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import webdataset as wds
from braceexpand import braceexpand

from lbcore.data import Batch, Sample, SampleCollator, choose_caption
from lbcore.errors import LbindError
from lbcore.manifest import Manifest
from lbcore.manifestindex import StringTable
from lbcore.samples import AUGMENT_SALT, derive_seed, seeded_rng

log = logging.getLogger(__name__)

__all__ = ["INDEX_NAME", "ShardError", "ShardSet", "ShardStream", "is_shard_pattern", "write_shards"]

FORMAT = "lbind-shards/1"
INDEX_NAME = "shards.json"
ORDER_SALT = 0x5AD


class ShardError(LbindError):
    """Shards are missing, unlisted in their ``shards.json``, or cannot be written."""


def is_shard_pattern(data: str | Path) -> bool:
    """Whether a ``--data`` value names WebDataset shards (``.tar``, optionally with a ``{a..b}`` range)."""
    return str(data).endswith(".tar")


# ------------------------------------------------------------------------------------------------- writing
def _sample(manifest: Manifest, row: int, columns: Sequence[str], position: dict[str, int]) -> dict[str, bytes]:
    sample = {"__key__": f"{row:09d}"}
    for column in columns:
        value = manifest._columns[column][row]
        if value is not None:
            path = Path(os.path.normpath(os.path.join(manifest.base, value)))
            sample[f"{column}{path.suffix}"] = path.read_bytes()  # type: ignore[assignment]
    ids = [position.setdefault(c, len(position)) for c in manifest.captions(row)]
    meta = {"row": row, "line": manifest.line(row), "captions": ids, "labels": list(manifest.labels(row))}
    sample["json"] = json.dumps(meta).encode()  # type: ignore[assignment]
    return sample  # type: ignore[return-value]


def write_shards(manifest: str | Path, output: str | Path, shard_size: int = 1000) -> Path:
    """Write the rows of ``manifest`` (JSONL/CSV, plain or paired) as WebDataset shards in ``output``, with
    ``shards.json`` and the caption table; returns the path of ``shards.json``. Every file must exist."""
    if shard_size < 1:
        raise ShardError(f"--shard-size {shard_size}: expected a positive number of rows per shard")
    parsed = Manifest.read(manifest)
    columns = list(parsed._columns)
    for column in columns:  # a paired row names the files of some columns only
        parsed.rows_of(column).check_files([parsed.column_for(column)])
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    position: dict[str, int] = {}
    shards: dict[str, dict[str, int]] = {}  # shard name -> column -> samples with a file there
    rows: dict[str, int] = {}  # shard name -> samples
    with wds.ShardWriter(str(out / "shard-%06d.tar"), maxcount=shard_size, verbose=0, encoder=False, mtime=0) as sink:
        for index in range(len(parsed)):
            sample = _sample(parsed, index, columns, position)
            sink.write(sample)
            name = Path(sink.fname).name
            counts = shards.setdefault(name, dict.fromkeys(columns, 0))
            rows[name] = rows.get(name, 0) + 1
            for column in columns:
                counts[column] += any(k.startswith(f"{column}.") for k in sample)
    blob, offsets = StringTable.pack(position)
    np.save(out / "captions.blob.npy", blob, allow_pickle=False)
    np.save(out / "captions.offsets.npy", offsets, allow_pickle=False)
    index = {
        "format": FORMAT,
        "manifest": str(parsed.source),
        "columns": columns,
        "samples": len(parsed),
        "captions": len(position),
        "shards": [{"name": name, "samples": rows[name], "columns": c} for name, c in shards.items()],
    }
    target = out / INDEX_NAME
    target.write_text(json.dumps(index, indent=1), encoding="utf-8")
    log.info("%s: %d rows in %d shard(s) under %s", parsed.source, len(parsed), len(shards), out)
    return target


# ------------------------------------------------------------------------------------------------- reading
@dataclass
class ShardSet:
    """The shards a ``--data`` pattern names, their sample counts per column and the caption table."""

    urls: list[str]
    counts: list[dict[str, int]]  # per url: column -> samples with a file of that column
    columns: list[str]
    captions: StringTable

    @classmethod
    def open(cls, pattern: str | Path) -> ShardSet:
        """Expand ``pattern`` and read the ``shards.json`` beside the shards (as :func:`write_shards` writes)."""
        urls = list(braceexpand(str(pattern)))
        folder = Path(urls[0]).parent
        try:
            index = json.loads((folder / INDEX_NAME).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as err:
            raise ShardError(
                f"{folder / INDEX_NAME}: cannot read the shard index ({err}); write shards with `lbind shard`"
            ) from err
        listed = {s["name"]: s["columns"] for s in index.get("shards", [])}
        unknown = [u for u in urls if Path(u).name not in listed]
        missing = [u for u in urls if not os.path.isfile(u)]
        if unknown or missing:
            shown = ", ".join((unknown or missing)[:5])
            raise ShardError(
                f"{pattern}: {len(missing)} shard(s) missing, {len(unknown)} not listed in "
                f"{folder / INDEX_NAME} (e.g. {shown}); expected the shards `lbind shard` wrote"
            )
        blob = np.load(folder / "captions.blob.npy", mmap_mode="r", allow_pickle=False)
        offsets = np.load(folder / "captions.offsets.npy", mmap_mode="r", allow_pickle=False)
        return cls(urls, [listed[Path(u).name] for u in urls], list(index["columns"]), StringTable(blob, offsets))

    def column_for(self, modality: str) -> str:
        return modality if modality in self.columns else "path"


@dataclass(frozen=True)
class _Captions:
    texts: Sequence[str]  # what the caption pre-pass reads (the store's table is built from it)


def _turns(batches: int, workers: int, worker: int) -> int:
    """How many of the first ``batches`` micro-batches worker ``worker`` of ``workers`` serves (in turn)."""
    return batches // workers + (1 if worker < batches % workers else 0)


class ShardStream(torch.utils.data.IterableDataset):
    """One modality's micro-batches from a :class:`ShardSet`, for one rank (see the module docstring).

    Use it as ``DataLoader(stream, batch_size=None, num_workers=workers)``, with the ``workers`` it was built
    for; call :meth:`set_epoch` (and :meth:`set_skip` on resume) before iterating."""

    def __init__(
        self,
        shards: ShardSet,
        modality: Any,
        *,
        seed: int,
        micro: int,
        world: int = 1,
        rank: int = 0,
        workers: int = 0,
        grad_accum: int = 1,
    ) -> None:
        self.shards, self.modality, self.seed = shards, modality, seed
        self.column = shards.column_for(modality.name)
        self.micro, self.world, self.rank, self.workers, self.grad_accum = micro, world, rank, workers, grad_accum
        self.captions = _Captions(shards.captions)
        self.collate = SampleCollator(modality)
        self.epoch, self.skip = 0, 0

    def __len__(self) -> int:
        return sum(c.get(self.column, 0) for c in self.shards.counts)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def set_skip(self, batches: int) -> None:
        """Skip this rank's first ``batches`` micro-batches of the epoch (a resumed run)."""
        self.skip = batches

    def slots(self, rank: int) -> list[list[int]]:
        """The shard numbers each worker of ``rank`` reads (split_by_node, then split_by_worker)."""
        mine = list(range(len(self.shards.urls)))[rank :: self.world]
        lanes = max(self.workers, 1)
        return [mine[w::lanes] for w in range(lanes)]

    def steps_per_epoch(self) -> int:
        """Optimiser steps every rank can take in an epoch (its workers serving equal numbers of batches)."""
        lanes = max(self.workers, 1)
        steps = []
        for rank in range(self.world):
            caps = [
                sum(self.shards.counts[s].get(self.column, 0) for s in slot) // self.micro for slot in self.slots(rank)
            ]
            steps.append(min(c * lanes + w for w, c in enumerate(caps)) // self.grad_accum)
        return min(steps)

    def order(self, epoch: int, rank: int, worker: int, shards: Sequence[Any]) -> list[Any]:
        """The order worker ``worker`` of ``rank`` reads its ``shards`` in during ``epoch``."""
        perm = np.random.default_rng(derive_seed(self.seed, epoch, rank, worker, ORDER_SALT)).permutation(len(shards))
        return [shards[i] for i in perm]

    def _ordered(self, urls: Iterator[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        rank, _, worker, _ = wds.utils.pytorch_worker_info()
        yield from self.order(self.epoch, rank, worker, list(urls))

    def _load(self, sample: dict[str, Any]) -> Sample:
        meta = json.loads(sample["json"])
        row = int(meta["row"])
        field = next(k for k in sample if k.startswith(f"{self.column}."))
        caption = choose_caption(meta["captions"], self.seed, self.epoch, row)
        source = f"{sample.get('__url__', '?')}:{sample['__key__']}.{field}"
        with tempfile.NamedTemporaryFile(suffix=Path(field).suffix or ".bin", prefix="lbind-shard-") as tmp:
            tmp.write(sample[field])
            tmp.flush()
            try:
                with seeded_rng(derive_seed(self.seed, self.epoch, row, AUGMENT_SALT)):
                    tensor = self.modality.preprocess(tmp.name, train=True)
            except Exception as err:  # a failed sample is reported by the collator and counted by the trainer
                return Sample(row, caption, None, source, f"{type(err).__name__}: {err}")
        return Sample(row, caption, tensor, source)

    def __iter__(self) -> Iterator[Batch]:
        _, _, worker, lanes = wds.utils.pytorch_worker_info()
        total = self.steps_per_epoch() * self.grad_accum
        todo, skipped = _turns(total, lanes, worker), _turns(self.skip, lanes, worker)
        pipeline = wds.DataPipeline(
            wds.SimpleShardList(self.shards.urls),
            wds.split_by_node,
            wds.split_by_worker,
            self._ordered,
            wds.tarfile_to_samples(),
        )
        field = f"{self.column}."
        passed, batch, made = 0, [], skipped
        for sample in pipeline:
            if made >= todo:
                break
            if not any(k.startswith(field) for k in sample):
                continue  # a paired row without this modality
            if passed < skipped * self.micro:
                passed += 1  # trained on before the resume: read past, not decoded
                continue
            batch.append(self._load(sample))
            if len(batch) == self.micro:
                yield self.collate(batch)
                batch, made = [], made + 1
