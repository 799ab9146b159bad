"""The sharded caption-embedding store and the distributed caption pre-pass.

References: the rows written (numpy arrays kept in the test), hashlib for keys, and the anchor's own
``encode`` for the pre-pass.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as tmp_mp

from lbcore.anchor import Anchor
from lbcore.config import AnchorConfig
from lbcore.errors import TextStoreError
from lbcore.manifest import write_manifest
from lbcore.textcache import cache_manifest_texts, caption_owner, precompute_captions
from lbcore.textstore import TextStore, text_keys

FP = hashlib.sha256(b"test-anchor").hexdigest()


def rows_for(texts: list[str], dim: int = 8, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((len(texts), dim)).astype(np.float32)


def test_keys_are_the_sha256_prefix() -> None:
    keys = text_keys(["a dog", "é"])
    assert keys.dtype == np.dtype("S16")
    assert keys.tobytes() == hashlib.sha256(b"a dog").digest()[:16] + hashlib.sha256("é".encode()).digest()[:16]


def test_rows_come_back_exactly_through_lookup_and_table(tmp_path: Path) -> None:
    store = TextStore(tmp_path, FP)
    texts = [f"caption {i}" for i in range(500)]
    rows = rows_for(texts)
    store.write_shard(texts[:300], rows[:300])
    store.write_shard(texts[200:], rows[200:])  # overlaps the first shard: either copy is the same row
    assert store.missing(["caption 7", "new", "caption 499", "new"]) == ["new"]
    assert np.array_equal(store.lookup(texts), rows)  # float32: bit-exact

    reader = TextStore(tmp_path, FP)  # another process's view: from disk
    ids = [499, 0, 0, 250]
    assert np.array_equal(reader.lookup([texts[i] for i in ids]), rows[ids])
    table = reader.table(texts[::-1])
    assert len(table) == 500
    got = table.gather(torch.tensor([0, 499, 10]))
    assert got.dtype == torch.float32 and np.array_equal(got.numpy(), rows[[499, 0, 489]])
    assert np.array_equal(table.gather(np.arange(500), pin_memory=True).numpy(), rows[::-1])

    clone = pickle.loads(pickle.dumps(table))  # what a DataLoader worker receives
    assert len(pickle.dumps(table)) < 20_000  # index arrays and paths, not the table
    assert np.array_equal(clone.gather([5, 6]).numpy(), rows[[494, 493]])
    with pytest.raises(TextStoreError, match="1 of 2 captions are not stored"):
        reader.lookup(["caption 1", "never written"])


def test_files_header_and_meta(tmp_path: Path) -> None:
    store = TextStore(tmp_path, FP, anchor_name="tiny")
    texts = ["b", "a", "b", "c"]
    rows = rows_for(texts, dim=5)
    path = store.write_shard(texts, rows)
    assert path is not None and path.parent == tmp_path / FP and path.suffix == ".tshard"
    assert sorted(p.name for p in (tmp_path / FP).iterdir()) == ["meta.json", path.name]
    meta = json.loads((tmp_path / FP / "meta.json").read_text())
    assert meta == {"format": "lbind-textstore-v1", "embed_dim": 5, "dtype": "float32", "anchor": "tiny"}
    blob = path.read_bytes()
    header = json.loads(blob[16 : 16 + int.from_bytes(blob[8:16], "little")])
    assert blob[:8] == b"LBTSTOR1" and header["count"] == 3 and header["dim"] == 5  # "b" once: first row kept
    keys = sorted(hashlib.sha256(t.encode()).digest()[:16] for t in ("a", "b", "c"))
    assert blob[header["keys_offset"] : header["keys_offset"] + 48] == b"".join(keys)
    assert header["rows_sha256"] == hashlib.sha256(blob[header["rows_offset"] :]).hexdigest()
    assert len(blob) == header["rows_offset"] + 3 * 5 * 4
    assert np.array_equal(store.lookup(["b"]), rows[:1])
    assert store.stats() == {"shards": 1, "rows": 3, "files": 2, "bytes": len(blob) + len(meta_bytes(tmp_path))}


def meta_bytes(root: Path) -> bytes:
    return (root / FP / "meta.json").read_bytes()


def test_wrong_inputs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(TextStoreError, match="not an anchor fingerprint"):
        TextStore(tmp_path, "../elsewhere")
    store = TextStore(tmp_path, FP)
    with pytest.raises(TextStoreError, match="non-finite"):
        store.write_shard(["a"], np.full((1, 4), np.nan, dtype=np.float32))
    with pytest.raises(TextStoreError, match=r"\[3\] for 2 texts"):
        store.write_shard(["a", "b"], np.zeros(3, dtype=np.float32))
    store.write_shard(["a"], np.ones((1, 4), dtype=np.float32))
    with pytest.raises(TextStoreError, match="4-d embeddings for this anchor, got 6-d"):
        store.write_shard(["b"], np.ones((1, 6), dtype=np.float32))
    with pytest.raises(TextStoreError, match="float32 rows, float16 was asked"):
        TextStore(tmp_path, FP, dtype="float16")


def test_float16_store_is_within_its_stated_tolerance(tmp_path: Path) -> None:
    texts = [f"t{i}" for i in range(200)]
    rows = rows_for(texts, dim=64)
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)  # like every anchor embedding
    store = TextStore(tmp_path, FP, dtype="float16")
    path = store.write_shard(texts, rows)
    got = TextStore(tmp_path, FP).lookup(texts)
    assert got.dtype == np.float32
    assert np.abs(got - rows).max() <= 2.5e-4
    assert path is not None and path.stat().st_size == 4096 + 4096 + 200 * 64 * 2


def test_compact_merges_shards_and_old_tables_keep_working(tmp_path: Path) -> None:
    store = TextStore(tmp_path, FP)
    texts = [f"caption {i}" for i in range(100)]
    rows = rows_for(texts)
    for start in range(0, 100, 10):
        store.write_shard(texts[start : start + 15], rows[start : start + 15])  # overlapping shards
    table = store.table(texts)
    stale = tmp_path / FP / ".shard-x.tshard.abc.tmp"  # a writer that died before its rename
    stale.write_bytes(b"partial")
    os.utime(stale, (time.time() - 7200, time.time() - 7200))
    fresh = tmp_path / FP / ".shard-y.tshard.def.tmp"  # a writer still writing
    fresh.write_bytes(b"partial")

    written = store.compact(rows_per_shard=40)
    assert len(written) == 3 and len(store) == 100 and store.shard_paths() == sorted(written)
    assert not stale.exists() and fresh.exists()
    assert np.array_equal(store.lookup(texts), rows)
    assert np.array_equal(TextStore(tmp_path, FP).lookup(texts), rows)
    assert np.array_equal(table.gather(np.arange(100)).numpy(), rows)  # its shards are unlinked, still mapped
    with pytest.raises(TextStoreError, match="shard gone"):
        pickle.loads(pickle.dumps(table))


def write_one(store: TextStore, text: str, row: np.ndarray) -> Path:
    path = store.write_shard([text], row[None])
    assert path is not None
    return path


def test_corruption_is_detected_and_quarantined(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = TextStore(tmp_path, FP)
    texts = ["short", "flipped row", "fine"]
    rows = rows_for(texts, dim=4)
    paths = {t: write_one(store, t, r) for t, r in zip(texts, rows, strict=True)}
    paths["short"].write_bytes(paths["short"].read_bytes()[:-1])
    with open(paths["flipped row"], "r+b") as f:  # rows start at 8192: a finite but wrong value
        f.seek(8192)
        f.write(np.float32(123.0).tobytes())

    with caplog.at_level(logging.WARNING, logger="lbcore.textstore"):
        quick = TextStore(tmp_path, FP)
        assert quick.missing(texts) == ["short"]  # size checked on every open
        assert quick.lookup(["flipped row"])[0, 0] == np.float32(123.0)  # rows are hashed only on request
        assert quick.verify() == 1
        assert quick.missing(texts) == ["short", "flipped row"]
    messages = [r.getMessage() for r in caplog.records]
    assert any("truncated" in m for m in messages) and any("row block" in m for m in messages)
    assert sorted(p.name for p in (tmp_path / FP / "quarantine").iterdir()) == sorted(
        [paths["short"].name, paths["flipped row"].name]
    )
    assert np.array_equal(TextStore(tmp_path, FP, verify="full").lookup(["fine"]), rows[2:])


def test_the_pre_pass_split_is_a_partition_by_key() -> None:
    texts = [f"caption {i}" for i in range(1000)]
    owners = caption_owner(texts, 4)
    assert set(owners.tolist()) == {0, 1, 2, 3}
    expected = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "big") % 4 for t in texts]
    assert owners.tolist() == expected
    assert all(150 < (owners == r).sum() < 350 for r in range(4))


# ----------------------------------------------------------------------------------- pre-pass, 2 processes
class RecordingAnchor:
    """The real tiny anchor, recording every caption it encodes."""

    def __init__(self, anchor: Anchor) -> None:
        self.anchor, self.seen = anchor, []
        self.fingerprint, self.embed_dim, self.name = anchor.fingerprint, anchor.embed_dim, anchor.name

    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        self.seen.extend(texts)
        return self.anchor.encode(texts, batch_size)


def prepass_worker(rank: int, world: int, init: str, anchor_dir: str, root: str, texts: list[str], out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        anchor = RecordingAnchor(Anchor.from_pretrained(anchor_dir, max_length=16))
        store = TextStore(root, anchor.fingerprint, embed_dim=anchor.embed_dim)
        report = precompute_captions(anchor, texts, store, rank, world, batch_size=7, barrier=dist.barrier)
        np.save(Path(out) / f"rows{rank}.npy", report.store.lookup(texts))
        (Path(out) / f"seen{rank}.json").write_text(json.dumps({"seen": anchor.seen, "encoded": report.encoded}))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_processes_share_out_the_pre_pass(anchor_dir: Path, tmp_path: Path) -> None:
    texts = [f"a recording of sound number {i}" for i in range(60)] + ["a dog", "a dog"]
    anchor = Anchor.from_pretrained(str(anchor_dir), max_length=16)
    root = tmp_path / "store"
    cached = texts[:10]  # already in the store: nobody encodes them again
    TextStore(root, anchor.fingerprint).write_shard(cached, anchor.encode(cached))
    out = tmp_path / "out"
    out.mkdir()
    init = f"file://{tmp_path / 'rendezvous'}"
    tmp_mp.spawn(prepass_worker, args=(2, init, str(anchor_dir), str(root), texts, str(out)), nprocs=2)

    expected = anchor.encode(texts).numpy()
    seen = [json.loads((out / f"seen{r}.json").read_text()) for r in range(2)]
    for r in range(2):
        np.testing.assert_allclose(np.load(out / f"rows{r}.npy"), expected, atol=1e-6, rtol=0)
        assert seen[r]["encoded"] == len(seen[r]["seen"]) > 0
    encoded = seen[0]["seen"] + seen[1]["seen"]
    assert len(encoded) == len(set(encoded))  # no caption encoded twice
    assert set(encoded) == set(texts) - set(cached)
    owners = dict(zip(texts, caption_owner(texts, 2).tolist(), strict=True))
    assert all(owners[t] == r for r in range(2) for t in seen[r]["seen"])
    assert len(TextStore(root, anchor.fingerprint).shard_paths()) == 3  # the cached shard + one per rank


def test_cache_manifest_texts_fills_the_store_from_manifests(anchor_dir: Path, tmp_path: Path) -> None:
    jsonl = write_manifest(
        tmp_path / "a.jsonl",
        [{"path": "x.wav", "captions": ["a dog barks", "rain"]}, {"path": "y.wav", "caption": "a cat"}],
    )
    csv = tmp_path / "b.csv"
    csv.write_text("path,caption\nz.wav,rain\nz.wav,thunder\n")  # no media files: not checked here
    cfg = AnchorConfig(name=str(anchor_dir), max_length=16, batch_size=2, cache_dir=tmp_path / "cache")
    report = cache_manifest_texts(cfg, [jsonl, csv], compact=True)
    texts = ["a dog barks", "rain", "a cat", "thunder"]
    assert (report.texts, report.encoded) == (4, 4)
    anchor = Anchor.from_config(cfg)
    np.testing.assert_allclose(report.store.lookup(texts), anchor.encode(texts).numpy(), atol=1e-6, rtol=0)
    again = cache_manifest_texts(cfg, [csv])
    assert (again.texts, again.encoded, again.shards) == (2, 0, [])


class Digest:
    """A stand-in anchor: each caption's row is drawn from its sha256 (8-d), recording what it encodes."""

    embed_dim, name = 8, "digest"
    fingerprint = hashlib.sha256(b"digest-anchor").hexdigest()

    def __init__(self) -> None:
        self.seen: list[str] = []

    def encode(self, texts: list[str], batch_size: int = 64) -> torch.Tensor:
        self.seen.extend(texts)
        seeds = [int.from_bytes(hashlib.sha256(t.encode()).digest()[:4], "big") for t in texts]
        return torch.from_numpy(np.stack([rows_for(["x"], seed=s)[0] for s in seeds]))


class Untouchable(list):
    """Captions with their keys that fail when a caption is read: the pre-pass must need none."""

    def __init__(self, texts: list[str], keys: np.ndarray) -> None:
        super().__init__(texts)
        self.keys = keys

    def text_keys(self) -> np.ndarray:
        return self.keys

    def __getitem__(self, i):  # type: ignore[no-untyped-def]
        raise AssertionError(f"caption {i} was read")

    def __iter__(self):  # type: ignore[no-untyped-def]
        raise AssertionError("the captions were iterated")


def test_a_manifest_index_carries_caption_keys_and_a_warm_pre_pass_reads_no_caption(tmp_path: Path) -> None:
    from lbcore.manifestindex import CaptionStrings, open_manifest

    rows = [{"path": f"{i}.wav", "captions": [f"event {i}", f"shared {i % 3}"]} for i in range(30)]
    mapped = open_manifest(write_manifest(tmp_path / "m.jsonl", rows), tmp_path / "idx")
    texts, _ = mapped.caption_index()
    plain = list(dict.fromkeys(c for r in rows for c in r["captions"]))
    assert isinstance(texts, CaptionStrings) and list(texts) == plain
    assert text_keys(texts).tobytes() == text_keys(plain).tobytes()  # stored keys = hashlib's

    anchor, store = Digest(), TextStore(tmp_path / "store", Digest.fingerprint)
    store.write_shard(plain[:10], anchor.encode(plain[:10]))
    anchor.seen.clear()
    cold = precompute_captions(anchor, texts, store, batch_size=4)
    assert (cold.texts, cold.encoded) == (len(plain), len(plain) - 10)
    assert sorted(anchor.seen) == sorted(plain[10:])  # only the missing ones, each once
    assert anchor.seen == sorted(anchor.seen, key=lambda t: text_keys([t]).tobytes())  # in key order
    np.testing.assert_array_equal(store.lookup(plain), Digest().encode(plain).numpy())

    warm = precompute_captions(anchor, Untouchable(plain, text_keys(plain)), store, batch_size=4)
    assert (warm.texts, warm.encoded, warm.shards) == (len(plain), 0, [])
    table = warm.store.table(Untouchable(plain, text_keys(plain)))
    np.testing.assert_array_equal(table.gather([3, 0]).numpy(), Digest().encode([plain[3], plain[0]]).numpy())
    # Rank 0 of 2 whose partner never ran: the partner's new caption is named.
    lost = next(t for t in (f"never encoded {i}" for i in range(50)) if caption_owner([t], 2)[0] == 1)
    with pytest.raises(TextStoreError, match=f"1 of {len(plain) + 1} captions are still missing.*'{lost}'"):
        precompute_captions(anchor, [*plain, lost], store, rank=0, world=2, barrier=lambda: None)
