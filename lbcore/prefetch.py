"""Preprocessing ahead of an encoder: items preprocessed (``train=False``) in worker processes or threads, a bounded
number ahead of the consumer, then regrouped into batches in the consuming process.

Used by the embedding runners (:mod:`lbcore.embedding`). Workers run under the thread policy
(:mod:`lbcore.threads`): DataLoader workers get one torch thread and one decoder thread each
(:func:`~lbcore.threads.worker_init_fn`). Items are fetched :data:`LOAD_CHUNK` at a time, so that workers share
the last items evenly and at most ``workers x PREFETCH x LOAD_CHUNK`` preprocessed items wait in memory, whatever
the batch size; :func:`regroup` makes batches of exactly the requested size, in item order, so a batch holds the
same items as :meth:`lbcore.model.BindModel.embed`'s.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import torch

from lbcore.errors import InputError
from lbcore.modality import Modality
from lbcore.samples import Collated, PreprocessDataset, Preprocessed, SurvivorCollator
from lbcore.threads import ThreadsConfig, choose_policy, worker_init_fn

__all__ = [
    "EMBED_WORKER_SHARE",
    "LOAD_CHUNK",
    "PREFETCH",
    "PREFETCH_MODES",
    "EncoderThreads",
    "Prefetch",
    "ThreadFetches",
    "preprocess_workers",
    "regroup",
    "start_fetches",
]

EMBED_WORKER_SHARE = 1.0
"""Share of the cores the automatic thread policy gives to preprocessing workers in embedding jobs: their
preprocessing (decoding) is most of the work, and a worker sleeps whenever the prefetch queue is full."""
LOAD_CHUNK = 4
"""Items per DataLoader fetch: small, so that the workers share the last items evenly and few are in flight."""
PREFETCH = 2
"""Fetches each worker may have ready ahead of the encoder (bounds the preprocessed items held in memory)."""
Prefetch = Literal["processes", "threads"]
PREFETCH_MODES: tuple[str, ...] = ("processes", "threads")
"""Where embedding jobs preprocess: DataLoader worker processes (any plugin; each a process of its own) or
threads of the job's process (no second copy of the runtime; as parallel as the plugin's preprocessing releases
the GIL, which decoders and torch operations do)."""


def preprocess_workers(num_workers: int | None = None, threads: ThreadsConfig | None = None) -> int:
    """Preprocessing workers of an embedding job: ``num_workers`` when given, else the thread policy's (config,
    ``LBIND_NUM_WORKERS``, else a share of the usable cores; see :mod:`lbcore.threads`)."""
    if num_workers is not None:
        if num_workers < 0:
            raise InputError(None, f"{num_workers} workers", "zero or more DataLoader workers")
        return num_workers
    return choose_policy(threads, worker_share=EMBED_WORKER_SHARE, busy=0.0).workers


def _as_list(samples: list[Preprocessed]) -> list[Preprocessed]:
    return samples  # the DataLoader's collate_fn: items are batched in the main process (see regroup)


class ThreadFetches:
    """Preprocessing in a pool of threads of this process, at most :data:`PREFETCH` x :data:`LOAD_CHUNK` items per
    thread ahead of the consumer; yields one-item fetches in order. Starts at once."""

    def __init__(self, dataset: PreprocessDataset, threads: int) -> None:
        self._dataset = dataset
        self._pool = ThreadPoolExecutor(threads, thread_name_prefix="lbind-preprocess")
        self._window = threads * PREFETCH * LOAD_CHUNK
        self._pending: deque[Future[Preprocessed]] = deque()
        self._next = 0
        self._fill()

    def _fill(self) -> None:
        while self._next < len(self._dataset) and len(self._pending) < self._window:
            self._pending.append(self._pool.submit(self._dataset.__getitem__, self._next))
            self._next += 1

    def __iter__(self) -> ThreadFetches:
        return self

    def __next__(self) -> list[Preprocessed]:
        if not self._pending:
            self.close()
            raise StopIteration
        item = self._pending.popleft().result()  # the dataset returns failures, it never raises
        self._fill()
        return [item]

    def close(self) -> None:
        self._pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)


def start_fetches(
    modality: Modality, items: Sequence[Any], workers: int, prefetch: Prefetch = "processes"
) -> Iterator[list[Preprocessed]]:
    """Start preprocessing ``items`` (``train=False``) in ``workers`` processes or threads (0: in this one, when
    asked) and return the iterator over their fetches (of up to :data:`LOAD_CHUNK` items), in order."""
    if prefetch not in PREFETCH_MODES:
        raise InputError(None, f"prefetch {prefetch!r}", " or ".join(PREFETCH_MODES))
    dataset = PreprocessDataset(modality, items)
    if prefetch == "threads" and workers > 0 and items:
        return ThreadFetches(dataset, workers)
    workers = min(workers, -(-len(items) // LOAD_CHUNK))  # no more workers than fetches
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=LOAD_CHUNK,
        shuffle=False,
        num_workers=workers,
        collate_fn=_as_list,
        worker_init_fn=worker_init_fn if workers else None,
        prefetch_factor=PREFETCH if workers else None,
    )
    return iter(loader)


def regroup(modality: Modality, fetches: Iterator[list[Preprocessed]], batch_size: int) -> Iterator[Collated]:
    """Regroup the fetched items into batches of ``batch_size`` items (the last one shorter), survivors stacked."""
    collate = SurvivorCollator(modality)
    pending: list[Preprocessed] = []
    for fetch in fetches:
        pending.extend(fetch)
        while len(pending) >= batch_size:
            yield collate(pending[:batch_size])
            del pending[:batch_size]
    if pending:
        yield collate(pending)


class EncoderThreads:
    """The consuming process's torch threads, chosen batch by batch from which side waits: ``high`` (all the
    process's cores) while the encoder is the slower side (the workers are ahead and sleep on a full queue, so
    the cores are the encoder's), ``low`` (the cores the workers leave) while the encoder waits for preprocessing
    (so its threads do not compete with the workers). Starts at ``high``; :meth:`restore` puts back the count
    found at the start. With ``low == high`` the count never changes."""

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, max(low, high)
        self._before = torch.get_num_threads()
        self.current = self.high
        torch.set_num_threads(self.current)

    def after_batch(self, waited: float, computed: float) -> None:
        """Record one batch: ``waited`` seconds for its preprocessed items, ``computed`` seconds in the encoder."""
        target = self.high if computed >= waited else self.low
        if target != self.current:
            torch.set_num_threads(target)
            self.current = target

    def restore(self) -> None:
        torch.set_num_threads(self._before)
