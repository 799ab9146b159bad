"""Training data: a manifest's rows as deterministic training samples.

:class:`TrainDataset` (one caption drawn per sample per epoch; files read through the tolerant
:class:`lbcore.samples.PreprocessDataset`, augmentation seeded by (seed, epoch, index)), :class:`EpochBatchSampler`
(deterministic, process-sharded batches), :class:`SampleCollator` (drops and reports samples that failed to load)
and :class:`ErrorBudget` (stops the run past a share of bad files).

Manifests are read by :mod:`lbcore.manifest`; ``read_manifest``, ``write_manifest``, ``ManifestEntry`` and
``ManifestError`` moved there, and ``default_workers``, ``derive_seed`` and ``seeded_rng`` to
:mod:`lbcore.samples` (the old import paths work for one release, with a warning).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lbcore import samples
from lbcore.deprecation import moved_names
from lbcore.manifest import Manifest
from lbcore.samples import DataError, PreprocessDataset, stack_survivors

if TYPE_CHECKING:
    from lbcore.manifest import ManifestEntry

__all__ = [
    "Batch",
    "CaptionIndex",
    "DataError",
    "EpochBatchSampler",
    "ErrorBudget",
    "ErrorBudgetExceeded",
    "Sample",
    "SampleCollator",
    "TrainDataset",
    "choose_caption",
]

# Public names that moved out of this module: the old import path works for one release, with a warning.
_MOVED = {
    **dict.fromkeys(("ManifestEntry", "ManifestError", "read_manifest", "write_manifest"), "lbcore.manifest"),
    **dict.fromkeys(("default_workers", "derive_seed", "seeded_rng"), "lbcore.samples"),
}


__getattr__ = moved_names(__name__, _MOVED)


class ErrorBudgetExceeded(DataError):
    """More files failed to load during a run than the error budget allows."""

    def __init__(self, message: str, failures: dict[str, str]) -> None:
        super().__init__(message)
        self.failures = dict(failures)


@dataclass(frozen=True)
class CaptionIndex:
    """The distinct captions of a manifest (in first-seen order) and, per row, the ids of its captions
    (tuples, or the memory-mapped sequences of :mod:`lbcore.manifestindex`)."""

    texts: Sequence[str]
    ids: Sequence[Sequence[int]]

    @classmethod
    def from_captions(cls, captions: Iterable[Sequence[str]]) -> CaptionIndex:
        """From each row's captions, in row order."""
        position: dict[str, int] = {}
        ids = [tuple(position.setdefault(c, len(position)) for c in row) for row in captions]
        return cls(tuple(position), tuple(ids))

    @classmethod
    def from_entries(cls, entries: Sequence[ManifestEntry]) -> CaptionIndex:
        return cls.from_captions(e.captions for e in entries)


def choose_caption(choices: Sequence[int], seed: int, epoch: int, index: int) -> int:
    """The caption id row ``index`` trains with in ``epoch``: one of its ``choices``, drawn from (seed, epoch,
    index) (the same rule for a manifest and for shards, so a row gets the same caption either way)."""
    if len(choices) == 1:
        return int(choices[0])
    return int(choices[samples.derive_seed(seed, epoch, index, 0x0CA9) % len(choices)])


@dataclass(frozen=True)
class Sample:
    """One loaded sample; ``tensor`` is None when loading failed (``error`` says why)."""

    index: int
    caption_id: int
    tensor: Any
    source: str
    error: str | None = None


@dataclass
class Batch:
    """A training micro-batch: inputs [b, ...], caption ids [b], dataset indices [b], and the samples skipped."""

    inputs: Any  # torch.Tensor [b, ...], or None when every sample failed
    caption_ids: Any  # torch.Tensor int64 [b]
    indices: Any  # torch.Tensor int64 [b]
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def __len__(self) -> int:
        return int(self.caption_ids.shape[0])

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True) on custom batch types
        inputs = self.inputs.pin_memory() if self.inputs is not None else None
        return Batch(inputs, self.caption_ids.pin_memory(), self.indices.pin_memory(), self.failures)


class TrainDataset:
    """Map-style dataset over a manifest's rows, indexed by ``(epoch, index)`` keys (see :class:`EpochBatchSampler`).

    ``rows``: a :class:`~lbcore.manifest.Manifest` (its column for ``modality``, or ``column``; every row needs a
    caption) or a list of :class:`~lbcore.manifest.ManifestEntry`. Per key: one caption is drawn from the row's
    captions and the file is preprocessed with ``train=True``, both seeded by (seed, epoch, index), through
    :class:`lbcore.samples.PreprocessDataset`. A file that fails to load gives a :class:`Sample` with the error
    instead of a tensor; the collate function drops it and reports it, and the trainer counts it against the
    error budget. Nothing is replaced by another sample.
    """

    def __init__(
        self,
        rows: Manifest | Sequence[ManifestEntry],
        modality: Any,
        seed: int = 0,
        train: bool = True,
        *,
        column: str | None = None,
    ) -> None:
        self.paths: Sequence[Path]
        if isinstance(rows, Manifest):
            rows.require_captions("training")
            self.paths = rows.paths(column or rows.column_for(modality.name))  # a lazy view for a mapped manifest
            self.captions = CaptionIndex(*rows.caption_index())
        else:
            self.paths = [e.path for e in rows]
            self.captions = CaptionIndex.from_entries(rows)
        self.modality = modality
        self.seed = seed
        self.train = train
        self.files = PreprocessDataset(modality, self.paths, train=train, seed=seed)

    def __len__(self) -> int:
        return len(self.paths)

    def caption_choice(self, epoch: int, index: int) -> int:
        """The caption id used for row ``index`` in ``epoch``."""
        return choose_caption(self.captions.ids[index], self.seed, epoch, index)

    def __getitem__(self, key: tuple[int, int] | int) -> Sample:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        loaded = self.files[(epoch, index)]
        return Sample(index, self.caption_choice(epoch, index), loaded.tensor, str(self.paths[index]), loaded.error)


class SampleCollator:
    """Collate :class:`Sample` objects into a :class:`Batch` (survivors through the modality's ``collate``)."""

    def __init__(self, modality: Any) -> None:
        self.modality = modality

    def __call__(self, batch: Sequence[Sample]) -> Batch:
        ok = [s for s in batch if s.error is None]
        inputs = stack_survivors(self.modality, batch, [s.source for s in batch])
        return Batch(
            inputs,
            torch.tensor([s.caption_id for s in ok], dtype=torch.int64),
            torch.tensor([s.index for s in ok], dtype=torch.int64),
            [(s.source, s.error) for s in batch if s.error is not None],
        )


class EpochBatchSampler:
    """Deterministic batches of ``(epoch, index)`` keys for one process.

    Each epoch is a permutation drawn from (seed, epoch), cut into global batches of ``global_batch`` samples
    (a trailing partial batch is dropped: contrastive batches must be full). Process ``rank`` of ``world`` takes
    its contiguous share of each global batch, split into ``grad_accum`` micro-batches, so N processes see
    exactly the samples one process would. ``steps`` caps the global batches per epoch (multi-modality runs
    align their epochs on the smallest dataset).
    """

    def __init__(
        self,
        num_samples: int,
        global_batch: int,
        seed: int = 0,
        world: int = 1,
        rank: int = 0,
        grad_accum: int = 1,
        steps: int | None = None,
        shuffle: bool = True,
    ) -> None:
        if global_batch % (world * grad_accum):
            raise ValueError(
                f"global batch {global_batch} is not divisible by {world} process(es) x {grad_accum} accumulation steps"
            )
        self.num_samples = num_samples
        self.global_batch = global_batch
        self.seed = seed
        self.world = world
        self.rank = rank
        self.grad_accum = grad_accum
        self.micro = global_batch // (world * grad_accum)
        full = num_samples // global_batch
        self.steps = min(full, steps) if steps is not None else full
        self.shuffle = shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.steps * self.grad_accum

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        epoch = self.epoch
        if self.shuffle:
            order = np.random.default_rng(samples.derive_seed(self.seed, epoch, 0x5A3)).permutation(self.num_samples)
        else:
            order = np.arange(self.num_samples)
        share = self.global_batch // self.world
        for step in range(self.steps):
            start = step * self.global_batch + self.rank * share
            mine = order[start : start + share]  # this process's contiguous share of the global batch
            for j in range(self.grad_accum):
                yield [(epoch, int(i)) for i in mine[j * self.micro : (j + 1) * self.micro]]


class ErrorBudget:
    """Counts distinct files that failed to load; past ``floor(fraction * num_samples)`` the run must stop."""

    def __init__(self, num_samples: int, fraction: float, source: str) -> None:
        self.num_samples = num_samples
        self.fraction = fraction
        self.allowed = math.floor(fraction * num_samples + 1e-9)
        self.source = source
        self.failures: dict[str, str] = {}

    def record(self, failures: Iterable[tuple[str, str]]) -> None:
        """Add failures (file, reason); raise :class:`ErrorBudgetExceeded` listing all of them when over budget."""
        for path, reason in failures:
            self.failures.setdefault(path, reason)
        if len(self.failures) > self.allowed:
            listing = "\n  ".join(f"{p}: {r}" for p, r in self.failures.items())
            raise ErrorBudgetExceeded(
                f"{self.source}: {len(self.failures)} of {self.num_samples} files failed to load, more than the error "
                f"budget of {self.allowed} ({self.fraction:.2%} of the samples); fix or remove them from the manifest "
                f"(or raise train.error_budget):\n  {listing}",
                self.failures,
            )
