"""Tolerant preprocessing: a dataset that preprocesses items and returns failures instead of raising, and a
collator that stacks the survivors and reports the rest. Training, evaluation and ``lbind embed`` all read
their files through these two.

Item ``i`` of :class:`PreprocessDataset` is a :class:`Preprocessed` ``(index, tensor, error)``: the tensor when
``modality.preprocess`` succeeded, else ``None`` and the reason (any exception, as ``"Type: message"``). Nothing
is replaced by another item. With a ``seed``, item ``i`` of epoch ``e`` (key ``(e, i)``) is preprocessed with
Python's, NumPy's and torch's global generators seeded from (seed, e, i), so random augmentation is a function
of those three, the same in any worker, process count or resumed run.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

import numpy as np
import torch

from lbcore.errors import LbindError

if TYPE_CHECKING:
    from lbcore.modality import Modality

__all__ = [
    "Collated",
    "DataError",
    "PreprocessDataset",
    "Preprocessed",
    "SurvivorCollator",
    "default_workers",
    "derive_seed",
    "seeded_rng",
    "stack_survivors",
]

AUGMENT_SALT = 0xA06  # mixed into the per-item seed of augmentation (kept: resumed runs draw the same)


class DataError(LbindError):
    """Data could not be used (e.g. preprocessed samples that cannot be batched)."""


def default_workers() -> int:
    """DataLoader workers: one core left for the main process, at most 4."""
    return min(4, max((os.cpu_count() or 1) - 1, 0))


def derive_seed(*parts: int) -> int:
    """A 32-bit seed that depends on every part (e.g. run seed, epoch, sample index), well mixed."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1)[0])


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed Python's, NumPy's and torch's (CPU) global generators for the block, then restore them.

    Plugins draw their training augmentation from these global generators; seeding them per sample makes the
    augmentation a function of (seed, epoch, index), the same in any worker, process count or resumed run.
    """
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


class Preprocessed(NamedTuple):
    """One item: ``tensor`` when preprocessing succeeded, else ``None`` and ``error`` (why)."""

    index: int
    tensor: torch.Tensor | None
    error: str | None


class PreprocessDataset(torch.utils.data.Dataset):
    """Map-style dataset: key ``i`` (or ``(epoch, i)``) -> :class:`Preprocessed` of ``items[i]``.

    ``items``: paths or arrays, as ``modality.preprocess`` takes them. ``train`` is passed on (augmentation);
    with ``seed``, preprocessing runs under :func:`seeded_rng` of ``(seed, epoch, i)``.
    """

    def __init__(self, modality: Modality, items: Sequence[Any], *, train: bool = False, seed: int | None = None):
        self.modality = modality
        self.items = items
        self.train = train
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def source(self, index: int) -> str:
        """How item ``index`` is named in reports: its path, or its type for an in-memory item."""
        item = self.items[index]
        return str(item) if isinstance(item, (str, bytes)) or hasattr(item, "__fspath__") else type(item).__name__

    def __getitem__(self, key: int | tuple[int, int]) -> Preprocessed:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        try:
            if self.seed is None:
                tensor = self.modality.preprocess(self.items[index], train=self.train)
            else:
                with seeded_rng(derive_seed(self.seed, epoch, index, AUGMENT_SALT)):
                    tensor = self.modality.preprocess(self.items[index], train=self.train)
        except Exception as err:  # any loader failure is returned by name to the caller, which reports it
            return Preprocessed(index, None, f"{type(err).__name__}: {err}")
        return Preprocessed(index, tensor, None)


class _Loaded(Protocol):
    """A loaded sample: a tensor, or an error saying why there is none."""

    @property
    def tensor(self) -> Any: ...

    @property
    def error(self) -> str | None: ...


def stack_survivors(modality: Modality, samples: Sequence[_Loaded], names: Sequence[str] = ()) -> Any:
    """The tensors of the samples without an error, batched by ``modality.collate`` (``None`` when none loaded).

    A collate failure (e.g. samples of different shapes) is a :class:`DataError` naming the files (``names``,
    one per sample, when given) and the shapes.
    """
    ok = [i for i, s in enumerate(samples) if s.error is None]
    if not ok:
        return None
    try:
        return modality.collate([samples[i].tensor for i in ok])
    except Exception as err:  # re-raised as a typed error naming the files
        shown = [names[i] if names else str(getattr(samples[i], "index", i)) for i in ok]
        shapes = sorted({tuple(getattr(samples[i].tensor, "shape", ())) for i in ok})
        raise DataError(
            f"modality {modality.name!r}: cannot batch the preprocessed samples of "
            f"{', '.join(shown[:5])}{' ...' if len(shown) > 5 else ''} (shapes {shapes}): {err}"
        ) from err


@dataclass
class Collated:
    """A batch of survivors: ``inputs`` [b, ...] (``None`` when every item failed) of the items at ``indices``;
    ``failures`` maps the index of each item that failed to the reason."""

    indices: list[int]
    inputs: torch.Tensor | None
    failures: dict[int, str]


class SurvivorCollator:
    """Collate :class:`Preprocessed` items into :class:`Collated`: survivors stacked, failures passed on."""

    def __init__(self, modality: Modality) -> None:
        self.modality = modality

    def __call__(self, samples: Sequence[Preprocessed]) -> Collated:
        inputs = stack_survivors(self.modality, samples)
        return Collated(
            [s.index for s in samples if s.error is None],
            inputs,
            {s.index: s.error for s in samples if s.error is not None},
        )
