"""Data at scale: the memory-mapped manifest index, the parallel file check, WebDataset shards (writing and
streaming, in the documented order), and the ``lbind cache-text`` / ``lbind shard`` commands."""

from __future__ import annotations

import json
import os
import pickle
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from lbcore.anchor import Anchor, TextEmbeddingCache
from lbcore.config import AnchorConfig, ModalityConfig
from lbcore.data import TrainDataset
from lbcore.errors import InputError
from lbcore.manifest import Manifest, ManifestError, write_manifest
from lbcore.manifestindex import MappedManifest, open_manifest
from lbcore.modality import Modality
from lbcore.shards import ShardError, ShardSet, ShardStream, write_shards


class Vec(Modality):
    """Reads .npy files; adds noise from the global generators when training (augmentation)."""

    name = "vec"
    Config = ModalityConfig
    presets = {"languagebind": {}, "demo": {}}  # noqa: RUF012

    def preprocess(self, item: Any, train: bool = False) -> torch.Tensor:
        try:
            x = torch.as_tensor(np.load(item, allow_pickle=False), dtype=torch.float32)
        except (OSError, ValueError) as err:
            raise InputError(item, f"cannot read: {err}", "a .npy file") from err
        return x + torch.randn_like(x) if train else x

    def example_input(self, seed: int = 0) -> Any:
        return np.zeros(4, dtype=np.float32)

    def build_stem(self) -> nn.Module:
        raise NotImplementedError


def vectors(root: Path, n: int, *, paired: bool = False, name: str = "m.jsonl") -> Path:
    """``n`` rows of 4-vectors with one to three captions each (paired: a 'vec' and, on every third row, an
    'aux' file), some labels, and a caption shared by several rows."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        np.save(root / f"v{i:04d}.npy", rng.standard_normal(4).astype(np.float32))
        captions = [f"vector {i}", f"shared {i % 5}", f"third {i}"][: 1 + i % 3]
        row: dict[str, Any] = {"captions": captions}
        if i % 4 == 0:
            row["label"] = ["a", "b"] if i % 8 == 0 else "c"
        if paired:
            row["vec"] = f"v{i:04d}.npy"
            if i % 3 == 0:
                np.save(root / f"a{i:04d}.npy", np.ones(2, dtype=np.float32))
                row["aux"] = f"a{i:04d}.npy"
        else:
            row["path"] = f"v{i:04d}.npy"
        rows.append(row)
    return write_manifest(root / name, rows)


def same_rows(a: Manifest, b: Manifest) -> None:
    assert len(a) == len(b) and a.columns == b.columns and a.paired == b.paired
    for column in a.columns:
        assert a.rows_with(column) == b.rows_with(column)
    for i in range(len(a)):
        assert (a.captions(i), a.labels(i), a.multilabel(i), a.line(i)) == (
            b.captions(i),
            b.labels(i),
            b.multilabel(i),
            b.line(i),
        )


# -------------------------------------------------------------------------------------- the manifest index
def test_the_mapped_manifest_gives_the_rows_of_the_plain_read(tmp_path: Path) -> None:
    for paired in (False, True):
        manifest = vectors(tmp_path / f"d{paired}", 40, paired=paired)
        plain, mapped = Manifest.read(manifest), open_manifest(manifest, tmp_path / "idx")
        assert isinstance(mapped, MappedManifest)
        same_rows(plain, mapped)
        column = "vec" if paired else "path"
        assert list(mapped.paths(column)) == plain.paths(column)
        if paired:  # one modality's rows of a paired manifest: a selection of the index
            sub_plain, sub_mapped = plain.rows_of("aux"), mapped.rows_of("aux")
            same_rows(sub_plain, sub_mapped)
            assert list(sub_mapped.paths("aux")) == sub_plain.paths("aux")
            with pytest.raises(ManifestError, match=r"26 of 40 row\(s\) name no 'aux' file") as info:
                mapped.paths("aux")
            with pytest.raises(ManifestError) as from_plain:
                plain.paths("aux")
            assert str(info.value) == str(from_plain.value)
        # Training draws the same captions and reads the same files through either form.
        chosen = []
        for rows in (plain.rows_of("vec" if paired else "x"), mapped.rows_of("vec" if paired else "x")):
            ds = TrainDataset(rows, Vec(ModalityConfig()), seed=3, column=column)
            chosen.append([ds.captions.texts[ds.caption_choice(e, i)] for e in range(3) for i in range(len(ds))])
            chosen[-1].extend(str(p) for p in ds.paths)
        assert chosen[0] == chosen[1]


def test_the_index_is_built_once_and_rebuilt_when_the_manifest_changes(tmp_path: Path) -> None:
    manifest = vectors(tmp_path / "d", 10)
    first = open_manifest(manifest, tmp_path / "idx")
    again = open_manifest(manifest, tmp_path / "idx")
    assert first.folder == again.folder
    assert len(list((tmp_path / "idx").iterdir())) == 1
    rows = [json.loads(line) for line in manifest.read_text().splitlines()][:4]
    write_manifest(manifest, rows)
    os.utime(manifest, ns=(1, 1))  # another size and mtime
    changed = open_manifest(manifest, tmp_path / "idx")
    assert changed.folder != first.folder and len(changed) == 4
    meta = json.loads((changed.folder / "meta.json").read_text())
    import hashlib

    assert meta["sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()


def test_a_mapped_manifest_pickles_as_its_folder_not_its_arrays(tmp_path: Path) -> None:
    manifest = vectors(tmp_path / "d", 200, paired=True)
    mapped = open_manifest(manifest, tmp_path / "idx").rows_of("aux")
    blob = pickle.dumps(mapped)
    assert len(blob) < 2000  # the folder and the row selection (67 rows), no blob of paths or captions
    back = pickle.loads(blob)
    same_rows(mapped, back)
    ds = TrainDataset(mapped, Vec(ModalityConfig()))
    again = pickle.loads(pickle.dumps(ds))
    assert [str(p) for p in again.paths] == [str(p) for p in ds.paths]


def test_manifest_errors_are_the_same_through_the_index(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"path": "a.npy", "caption": "x"}\n{"path": 3}\n')
    with pytest.raises(ManifestError, match=r"bad\.jsonl:2: 'path' is 3"):
        open_manifest(bad, tmp_path / "idx")
    assert not any((tmp_path / "idx").glob("*/meta.json"))  # nothing committed for a bad manifest
    nocap = write_manifest(tmp_path / "n.jsonl", [{"path": "a.npy"}, {"path": "b.npy", "caption": "y"}])
    with pytest.raises(ManifestError, match=r"n\.jsonl:1: expected 'captions'"):
        open_manifest(nocap, tmp_path / "idx").require_captions("training")


def test_the_file_check_runs_in_threads_and_lists_every_missing_file(tmp_path: Path) -> None:
    import lbcore.manifest as manifest_module

    manifest = vectors(tmp_path / "d", 30)
    for i in (3, 17, 29):
        (tmp_path / "d" / f"v{i:04d}.npy").unlink()
    mapped = open_manifest(manifest, tmp_path / "idx")
    old = manifest_module.CHECK_CHUNK
    manifest_module.CHECK_CHUNK = 4  # 8 chunks over the threads
    try:
        with pytest.raises(ManifestError, match=r"3 of 30 media file\(s\) missing") as info:
            mapped.check_files()
    finally:
        manifest_module.CHECK_CHUNK = old
    assert all(f"v{i:04d}.npy" in str(info.value) for i in (3, 17, 29))


# ------------------------------------------------------------------------------------------------- shards
def members(tar: Path) -> list[str]:
    with tarfile.open(tar) as f:
        return f.getnames()


def test_shards_hold_every_row_in_manifest_order(tmp_path: Path) -> None:
    manifest = vectors(tmp_path / "d", 20, paired=True)
    index = json.loads(write_shards(manifest, tmp_path / "shards", shard_size=8).read_text())
    assert [s["name"] for s in index["shards"]] == [f"shard-{k:06d}.tar" for k in range(3)]
    assert [s["samples"] for s in index["shards"]] == [8, 8, 4]
    assert [s["columns"]["aux"] for s in index["shards"]] == [3, 3, 1]  # rows 0, 3, 6 | 9, 12, 15 | 18
    names = members(tmp_path / "shards" / "shard-000001.tar")
    assert names[:3] == ["000000008.vec.npy", "000000008.json"] or set(names[:2]) == {
        "000000008.vec.npy",
        "000000008.json",
    }
    with tarfile.open(tmp_path / "shards" / "shard-000001.tar") as f:
        data = f.extractfile("000000009.aux.npy").read()  # type: ignore[union-attr]
    assert data == (tmp_path / "d" / "a0009.npy").read_bytes()
    shards = ShardSet.open(tmp_path / "shards" / "shard-{000000..000002}.tar")
    assert list(shards.captions) == list(open_manifest(manifest, tmp_path / "idx").caption_index()[0])


def stream_batches(stream: ShardStream, epoch: int) -> list[Any]:
    stream.set_epoch(epoch)
    return list(stream)


def test_a_stream_gives_the_manifests_samples_in_the_documented_order(tmp_path: Path) -> None:
    manifest = vectors(tmp_path / "d", 30)
    write_shards(manifest, tmp_path / "shards", shard_size=8)  # 8, 8, 8, 6 rows
    shards = ShardSet.open(tmp_path / "shards" / "shard-{000000..000003}.tar")
    modality = Vec(ModalityConfig())
    stream = ShardStream(shards, modality, seed=5, micro=4)
    reference = TrainDataset(Manifest.read(manifest), modality, seed=5)
    assert stream.steps_per_epoch() == 7  # 30 rows read in order, micro-batches of 4: 7 full ones
    for epoch in (0, 1):
        order = stream.order(epoch, 0, 0, list(range(4)))
        rows = [r for shard in order for r in range(8 * shard, min(8 * shard + 8, 30))][:28]
        batches = stream_batches(stream, epoch)
        assert [int(i) for b in batches for i in b.indices] == rows
        for j, batch in enumerate(batches):
            expected = [reference[(epoch, r)] for r in rows[4 * j : 4 * j + 4]]
            assert torch.equal(batch.inputs, torch.stack([s.tensor for s in expected]))  # same augmentation
            assert [stream.captions.texts[c] for c in batch.caption_ids.tolist()] == [
                reference.captions.texts[s.caption_id] for s in expected
            ]
    assert stream.order(0, 0, 0, list(range(4))) != stream.order(1, 0, 0, list(range(4)))


def test_a_stream_resumes_mid_epoch_with_the_batches_it_would_have_given(tmp_path: Path) -> None:
    manifest = vectors(tmp_path / "d", 30)
    write_shards(manifest, tmp_path / "shards", shard_size=8)
    shards = ShardSet.open(tmp_path / "shards" / "shard-{000000..000003}.tar")
    stream = ShardStream(shards, Vec(ModalityConfig()), seed=1, micro=4)
    whole = stream_batches(stream, 2)
    stream.set_skip(3)
    resumed = stream_batches(stream, 2)
    assert len(resumed) == len(whole) - 3
    for a, b in zip(whole[3:], resumed, strict=True):
        assert torch.equal(a.inputs, b.inputs) and torch.equal(a.caption_ids, b.caption_ids)


def test_ranks_and_workers_split_the_shards_and_take_equal_steps(tmp_path: Path) -> None:
    manifest = vectors(tmp_path / "d", 44)
    write_shards(manifest, tmp_path / "shards", shard_size=6)  # 8 shards: 6 x 7 + 2
    shards = ShardSet.open(tmp_path / "shards" / "shard-{000000..000007}.tar")
    streams = [ShardStream(shards, Vec(ModalityConfig()), seed=0, micro=3, world=2, rank=r) for r in (0, 1)]
    assert streams[0].slots(0) == [[0, 2, 4, 6]] and streams[1].slots(1) == [[1, 3, 5, 7]]
    # rank 0: 24 rows -> 8 micro-batches; rank 1: 18 + 2 = 20 rows -> 6: both take 6 steps
    assert streams[0].steps_per_epoch() == streams[1].steps_per_epoch() == 6
    two_workers = ShardStream(shards, Vec(ModalityConfig()), seed=0, micro=3, world=2, rank=0, workers=2)
    assert two_workers.slots(0) == [[0, 4], [2, 6]]


def test_unlisted_or_missing_shards_are_a_clear_error(tmp_path: Path) -> None:
    write_shards(vectors(tmp_path / "d", 10), tmp_path / "shards", shard_size=5)
    with pytest.raises(ShardError, match=r"1 shard\(s\) missing, 1 not listed"):
        ShardSet.open(tmp_path / "shards" / "shard-{000000..000002}.tar")
    with pytest.raises(ShardError, match="cannot read the shard index"):
        ShardSet.open(tmp_path / "elsewhere" / "shard-000000.tar")


# ------------------------------------------------------------------------------------------------- commands
def test_lbind_shard_writes_the_shards_and_says_how_to_train_on_them(tmp_path: Path) -> None:
    from lbcore.cli import cli

    manifest = vectors(tmp_path / "d", 12)
    out = tmp_path / "out"
    result = CliRunner().invoke(cli, ["shard", str(manifest), "--output", str(out), "--shard-size", "5"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("*.tar")) == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert "shard-{000000..000002}.tar" in result.output.replace("\n", "")


def test_lbind_cache_text_fills_the_store_with_every_caption(anchor_dir: Path, tmp_path: Path) -> None:
    from lbcore.cli import cli

    plain = vectors(tmp_path / "d", 9)
    paired = vectors(tmp_path / "p", 6, paired=True)
    store_root = tmp_path / "store"
    args = ["cache-text", "--anchor", str(anchor_dir), "--max-length", "16", "--cache-dir", str(store_root)]
    result = CliRunner().invoke(cli, [*args, "--batch-size", "4", str(plain), str(paired)])
    assert result.exit_code == 0, result.output
    texts = list(
        dict.fromkeys(
            c for m in (plain, paired) for i in range(len(Manifest.read(m))) for c in Manifest.read(m).captions(i)
        )
    )
    anchor = Anchor.from_config(AnchorConfig(name=str(anchor_dir), max_length=16))
    store = TextEmbeddingCache(store_root).store(anchor.fingerprint)
    assert store.missing(texts) == [] and len(store) == len(texts)
    expected = anchor.encode(texts).numpy()
    np.testing.assert_allclose(store.lookup(texts), expected, atol=1e-6)
    # A second run finds everything stored and encodes nothing.
    again = CliRunner().invoke(cli, [*args, str(plain)])
    assert again.exit_code == 0 and "0 encoded" in again.output, again.output
