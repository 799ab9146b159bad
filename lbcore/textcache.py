"""The caption pre-pass: every distinct caption through the anchor once, shared out across ranks.

Run it before training (or as ``lbind cache-text``) so that training only memory-maps the store
(:mod:`lbcore.textstore`). With ``world`` ranks, caption ``t`` belongs to rank
``int(key(t)[:8], big-endian) % world`` (``key`` the store's 16-byte sha256 prefix): the split depends only on
the caption, not on what the store holds or when a rank looks, so no caption is encoded twice and none is
forgotten even while other ranks are writing. Each rank encodes its missing captions in key order, in batches
on its own device, and writes them as its own shards; after a barrier every rank re-reads the store.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from lbcore.anchor import Anchor, AnchorLike, TextEmbeddingCache, encode_checked
from lbcore.config import AnchorConfig
from lbcore.errors import TextStoreError
from lbcore.manifestindex import open_manifest
from lbcore.textstore import TextStore, text_keys

logger = logging.getLogger(__name__)

__all__ = ["PrepassReport", "cache_manifest_texts", "caption_owner", "distinct_captions", "precompute_captions"]


@dataclass
class PrepassReport:
    """What one rank did in a pre-pass."""

    texts: int  # distinct captions asked for (all ranks)
    encoded: int  # captions this rank encoded
    shards: list[Path]  # shards this rank wrote
    seconds: float
    store: TextStore  # the store, re-read after the barrier: every caption is in it


def caption_owner(texts: Sequence[str], world: int) -> np.ndarray:
    """The rank [N] that encodes each caption: its key's first 8 bytes (big-endian) modulo ``world``."""
    return _key_owner(text_keys(texts), world)


def _key_owner(keys: np.ndarray, world: int) -> np.ndarray:
    head = np.frombuffer(np.ascontiguousarray(keys).tobytes(), dtype=">u8").reshape(-1, 2)[:, 0]
    return (head % np.uint64(world)).astype(np.int64)


def _default_barrier(world: int) -> Callable[[], None]:
    if world == 1:
        return lambda: None
    if dist.is_available() and dist.is_initialized():
        return dist.barrier
    raise TextStoreError(f"a pre-pass over {world} ranks needs a barrier (e.g. accelerator.wait_for_everyone)")


def _encode_share(
    anchor: AnchorLike,
    todo: list[str],
    store: TextStore,
    batch_size: int,
    shard_rows: int,
    progress: Callable[[int, int], None] | None = None,
) -> list[Path]:
    """Encode ``todo`` in batches, writing a shard every ``shard_rows`` captions; returns the shards written.
    ``progress(done, total)`` is called before the first batch and after each."""
    written, started = [], time.perf_counter()
    if progress is not None and todo:
        progress(0, len(todo))
    for start in range(0, len(todo), shard_rows):
        chunk = todo[start : start + shard_rows]
        rows = np.empty((len(chunk), anchor.embed_dim), dtype=np.float32)
        for b in range(0, len(chunk), batch_size):
            rows[b : b + batch_size] = encode_checked(anchor, chunk[b : b + batch_size], batch_size).numpy()
            if progress is not None:
                progress(start + min(b + batch_size, len(chunk)), len(todo))
        path = store.write_shard(chunk, rows)
        if path is not None:
            written.append(path)
        done = start + len(chunk)
        rate = done / max(time.perf_counter() - started, 1e-9)
        logger.info("caption pre-pass: %d/%d captions encoded (%.0f/s), shard %s", done, len(todo), rate, path)
    return written


def precompute_captions(
    anchor: AnchorLike,
    texts: Sequence[str],
    store: TextStore,
    rank: int = 0,
    world: int = 1,
    batch_size: int = 64,
    barrier: Callable[[], None] | None = None,
    shard_rows: int = 1_000_000,
    compact: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> PrepassReport:
    """Make ``store`` hold every caption of ``texts``: this rank encodes its share of the missing ones.

    Every rank calls it with the same ``texts`` and its own ``rank`` (of ``world``); ``anchor`` sits on the
    rank's device. ``barrier`` (default ``torch.distributed.barrier`` when initialised) waits for all ranks;
    with ``compact``, rank 0 then merges the shards into few (:meth:`TextStore.compact`) while the others wait
    at a second barrier. ``progress(done, total)`` counts this rank's captions as they are encoded. Raises :class:`~lbcore.errors.TextStoreError` if a caption is still missing after the
    barrier (a rank failed, or the store folder is not on a filesystem all ranks share).
    """
    if not 0 <= rank < world:
        raise TextStoreError(f"rank {rank} is outside a world of {world}")
    if anchor.fingerprint != store.fingerprint:
        raise TextStoreError(f"{store.folder}: belongs to another anchor than {anchor.fingerprint[:12]}")
    wait = barrier if barrier is not None else _default_barrier(world)
    started = time.perf_counter()
    # Work on keys: only the captions this rank must encode are ever looked at as strings (a warm store over
    # a manifest index, whose captions carry their keys, costs no per-caption Python work at all).
    keys, first = np.unique(text_keys(texts), return_index=True)  # distinct captions, in key order
    mine = np.flatnonzero(_key_owner(keys, world) == rank)
    store.refresh()
    todo = [texts[int(i)] for i in first[mine[~store.holds(keys[mine])]]]
    logger.info("caption pre-pass rank %d/%d: %d distinct captions, %d of its %d to encode", rank, world,
                len(keys), len(todo), len(mine))  # fmt: skip
    with torch.inference_mode():
        written = _encode_share(anchor, todo, store, batch_size, shard_rows, progress)
    wait()
    if compact:
        if rank == 0:
            store.compact()
        wait()
    store.reopen()
    left = np.flatnonzero(~store.holds(keys))
    if len(left):
        raise TextStoreError(
            f"{store.folder}: {len(left)} of {len(keys)} captions are still missing after the pre-pass "
            f"(e.g. {texts[int(first[left[0]])][:60]!r}); did a rank fail, or is the folder not shared by every rank?"
        )
    return PrepassReport(len(keys), len(todo), written, time.perf_counter() - started, store)


def manifest_captions(manifests: Sequence[str | Path], manifest_cache: str | Path | None = None) -> Sequence[str]:
    """Every distinct caption of the JSONL/CSV ``manifests`` (plain or paired), first-seen order (media files are
    not checked). Each is read through its memory-mapped index (:func:`lbcore.manifestindex.open_manifest`,
    under ``manifest_cache``), which training then finds built."""
    return distinct_captions([open_manifest(manifest, manifest_cache).caption_index()[0] for manifest in manifests])


def distinct_captions(tables: Sequence[Sequence[str]]) -> Sequence[str]:
    """The captions of several manifests' distinct-caption tables, once each, first-seen. One table is returned
    as it is: distinct already, and carrying its keys when it comes from a manifest index."""
    if len(tables) == 1:
        return tables[0]
    return list(dict.fromkeys(t for texts in tables for t in texts))


def cache_manifest_texts(
    anchor_cfg: AnchorConfig,
    manifests: Sequence[str | Path],
    rank: int = 0,
    world: int = 1,
    barrier: Callable[[], None] | None = None,
    device: str | torch.device | None = None,
    compact: bool = False,
    manifest_cache: str | Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> PrepassReport:
    """The pre-pass of ``lbind cache-text``: the captions of ``manifests`` into the store of ``anchor_cfg``
    (its ``cache_dir``, else the default cache), encoded on ``device`` in batches of ``anchor_cfg.batch_size``."""
    texts = manifest_captions(manifests, manifest_cache)
    anchor = Anchor.from_config(anchor_cfg)
    if device is not None:
        anchor.to(device)
    store = TextEmbeddingCache(anchor_cfg.cache_dir).store(anchor.fingerprint, anchor.embed_dim, anchor.name)
    return precompute_captions(
        anchor, texts, store, rank, world, anchor_cfg.batch_size, barrier=barrier, compact=compact, progress=progress
    )  # fmt: skip
