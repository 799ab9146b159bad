"""Manifests: JSONL or CSV files listing media (path relative to the manifest) and their captions.

JSONL: one object per line, ``{"path": "a/b.wav", "captions": ["...", "..."], "label": "optional"}``
(``"caption": "..."`` is accepted for a single caption). CSV: columns ``path`` and ``caption`` (one row per
caption; rows with the same path are merged) and optionally ``label``.

For training: :class:`TrainDataset` (one caption drawn per sample per epoch, augmentation seeded by
(seed, epoch, index)), :class:`EpochBatchSampler` (deterministic, process-sharded batches), :class:`SampleCollator`
(drops and reports samples that failed to load) and :class:`ErrorBudget` (stops the run past a share of bad files).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lbcore.errors import LbindError


def default_workers() -> int:
    """DataLoader workers: one core left for the main process, at most 4."""
    return min(4, max((os.cpu_count() or 1) - 1, 0))


class ManifestError(LbindError):
    """A manifest is malformed or names files that do not exist."""


@dataclass(frozen=True)
class ManifestEntry:
    path: Path  # absolute
    captions: tuple[str, ...]
    label: str | None = None


def read_manifest(manifest: str | Path, check_files: bool = True) -> list[ManifestEntry]:
    """Parse a manifest; with ``check_files``, list every missing media file in one error."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ManifestError(f"{manifest}: manifest not found")
    base = manifest.parent
    if manifest.suffix.lower() == ".csv":
        entries = _read_csv(manifest, base)
    else:
        entries = _read_jsonl(manifest, base)
    if not entries:
        raise ManifestError(f"{manifest}: manifest lists no media")
    if check_files:
        missing = [str(e.path) for e in entries if not e.path.is_file()]
        if missing:
            shown = "\n  ".join(missing[:50]) + (f"\n  ... and {len(missing) - 50} more" if len(missing) > 50 else "")
            raise ManifestError(f"{manifest}: {len(missing)} of {len(entries)} media file(s) missing:\n  {shown}")
    return entries


def _read_jsonl(manifest: Path, base: Path) -> list[ManifestEntry]:
    entries = []
    for lineno, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{manifest}:{lineno}: not valid JSON: {err.msg}") from err
        if not isinstance(row, dict) or "path" not in row:
            raise ManifestError(f"{manifest}:{lineno}: expected an object with a 'path' key")
        captions = row.get("captions", row.get("caption"))
        if isinstance(captions, str):
            captions = [captions]
        if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
            raise ManifestError(f"{manifest}:{lineno}: expected 'captions' as a non-empty list of strings")
        entries.append(ManifestEntry((base / row["path"]).resolve(), tuple(captions), row.get("label")))
    return entries


def _read_csv(manifest: Path, base: Path) -> list[ManifestEntry]:
    merged: dict[str, tuple[list[str], str | None]] = {}
    with open(manifest, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames or "caption" not in reader.fieldnames:
            raise ManifestError(f"{manifest}: CSV manifest needs 'path' and 'caption' columns")
        for lineno, row in enumerate(reader, 2):
            if not row["path"] or not (row["caption"] or "").strip():
                raise ManifestError(f"{manifest}:{lineno}: empty path or caption")
            caps, _label = merged.setdefault(row["path"], ([], row.get("label") or None))
            caps.append(row["caption"])
    return [ManifestEntry((base / p).resolve(), tuple(c), lab) for p, (c, lab) in merged.items()]


def write_manifest(manifest: str | Path, rows: Iterable[dict]) -> Path:
    """Write JSONL rows (``path`` relative to the manifest's folder), atomically."""
    manifest = Path(manifest)
    manifest.parent.mkdir(parents=True, exist_ok=True)
    tmp = manifest.with_suffix(manifest.suffix + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    tmp.replace(manifest)
    return manifest


# ---------------------------------------------------------------------------------------------------------------
# Training data: deterministic sampling, caption choice and augmentation; unreadable files skipped under a budget.
# ---------------------------------------------------------------------------------------------------------------


class DataError(LbindError):
    """Training data could not be used."""


class ErrorBudgetExceeded(DataError):
    """More files failed to load during a run than the error budget allows."""

    def __init__(self, message: str, failures: dict[str, str]) -> None:
        super().__init__(message)
        self.failures = dict(failures)


def derive_seed(*parts: int) -> int:
    """A 32-bit seed that depends on every part (e.g. run seed, epoch, sample index), well mixed."""
    import numpy as np

    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's (CPU) global generators for the block, then restore them.

    Plugins draw their training augmentation from these global generators; seeding them per sample makes the
    augmentation a function of (seed, epoch, index), the same in any worker, process count or resumed run.
    """
    import random

    import numpy as np
    import torch

    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.random.default_generator.manual_seed(seed)  # CPU only: accelerator generators are the trainer's
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)


@dataclass(frozen=True)
class CaptionIndex:
    """The distinct captions of a manifest (in first-seen order) and, per entry, the ids of its captions."""

    texts: tuple[str, ...]
    ids: tuple[tuple[int, ...], ...]

    @classmethod
    def from_entries(cls, entries: Sequence[ManifestEntry]) -> CaptionIndex:
        position: dict[str, int] = {}
        ids = []
        for entry in entries:
            ids.append(tuple(position.setdefault(c, len(position)) for c in entry.captions))
        return cls(tuple(position), tuple(ids))


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
    """Map-style dataset over manifest entries, indexed by ``(epoch, index)`` keys (see :class:`EpochBatchSampler`).

    Per key: one caption is drawn from the entry's captions and the file is preprocessed with ``train=True``,
    both seeded by (seed, epoch, index). A file that fails to load (any exception from ``preprocess``) gives a
    :class:`Sample` with the error instead of a tensor; the collate function drops it and reports it, and the
    trainer counts it against the error budget. Nothing is replaced by another sample.
    """

    def __init__(self, entries: Sequence[ManifestEntry], modality: Any, seed: int = 0, train: bool = True) -> None:
        self.entries = list(entries)
        self.modality = modality
        self.captions = CaptionIndex.from_entries(self.entries)
        self.seed = seed
        self.train = train

    def __len__(self) -> int:
        return len(self.entries)

    def caption_choice(self, epoch: int, index: int) -> int:
        """The caption id used for entry ``index`` in ``epoch``."""
        choices = self.captions.ids[index]
        if len(choices) == 1:
            return choices[0]
        return choices[derive_seed(self.seed, epoch, index, 0x0CA9) % len(choices)]

    def __getitem__(self, key: tuple[int, int] | int) -> Sample:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        entry = self.entries[index]
        caption_id = self.caption_choice(epoch, index)
        try:
            with seeded_rng(derive_seed(self.seed, epoch, index, 0xA06)):
                tensor = self.modality.preprocess(entry.path, train=self.train)
        except Exception as err:  # any loader failure is reported and counted, never hidden or replaced
            return Sample(index, caption_id, None, str(entry.path), f"{type(err).__name__}: {err}")
        return Sample(index, caption_id, tensor, str(entry.path))


class SampleCollator:
    """Collate :class:`Sample` objects into a :class:`Batch` through the modality's ``collate``."""

    def __init__(self, modality: Any) -> None:
        self.modality = modality

    def __call__(self, samples: Sequence[Sample]) -> Batch:
        import torch

        ok = [s for s in samples if s.error is None]
        failures = [(s.source, s.error or "") for s in samples if s.error is not None]
        inputs = None
        if ok:
            try:
                inputs = self.modality.collate([s.tensor for s in ok])
            except Exception as err:
                shapes = sorted({tuple(getattr(s.tensor, "shape", ())) for s in ok})
                raise DataError(
                    f"modality {self.modality.name!r}: cannot batch the preprocessed samples of "
                    f"{', '.join(s.source for s in ok[:5])}{' ...' if len(ok) > 5 else ''} (shapes {shapes}): {err}"
                ) from err
        return Batch(
            inputs,
            torch.tensor([s.caption_id for s in ok], dtype=torch.int64),
            torch.tensor([s.index for s in ok], dtype=torch.int64),
            failures,
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
        import numpy as np

        epoch = self.epoch
        if self.shuffle:
            order = np.random.default_rng(derive_seed(self.seed, epoch, 0x5A3)).permutation(self.num_samples)
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
