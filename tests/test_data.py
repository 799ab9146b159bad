"""Manifests and the training data path: validation, deterministic captions / augmentation / order, sharding,
skipped samples and the error budget."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from lbcore.config import ModalityConfig
from lbcore.data import (
    CaptionIndex,
    DataError,
    EpochBatchSampler,
    ErrorBudget,
    ErrorBudgetExceeded,
    Sample,
    SampleCollator,
    TrainDataset,
)
from lbcore.errors import InputError
from lbcore.manifest import ManifestError, read_manifest, write_manifest
from lbcore.modality import Modality
from lbcore.samples import derive_seed, seeded_rng


class Noisy(Modality):
    """Reads .npy files; adds noise from the global torch and NumPy generators when training."""

    name = "noisy"
    Config = ModalityConfig
    presets = {"languagebind": {}, "demo": {}}  # noqa: RUF012

    def preprocess(self, item: Any, train: bool = False) -> torch.Tensor:
        try:
            arr = np.load(item, allow_pickle=False)
        except (OSError, ValueError) as err:
            raise InputError(item, f"cannot read: {err}", "a .npy file") from err
        x = torch.as_tensor(arr, dtype=torch.float32)
        if train:
            x = x + torch.randn_like(x) + float(np.random.uniform())
        return x

    def example_input(self, seed: int = 0) -> Any:
        return np.zeros(4, dtype=np.float32)

    def build_stem(self) -> nn.Module:
        raise NotImplementedError


def make_files(root: Path, n: int, corrupt: set[int] | None = None, captions: int = 3) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        path = root / f"f{i:03d}.npy"
        if i in (corrupt or set()):
            path.write_text("garbage")
        else:
            np.save(path, np.full(4, i, dtype=np.float32))
        rows.append({"path": path.name, "captions": [f"item {i} caption {c}" for c in range(captions)]})
    return write_manifest(root / "m.jsonl", rows)


# ------------------------------------------------------------------------------------------------ manifests
def test_jsonl_and_csv_manifests_read_the_same(tmp_path: Path) -> None:
    for name in ("a.npy", "b.npy"):
        np.save(tmp_path / name, np.zeros(2))
    jsonl = write_manifest(
        tmp_path / "m.jsonl",
        [{"path": "a.npy", "captions": ["x", "y"], "label": "cat"}, {"path": "b.npy", "caption": "z"}],
    )
    (tmp_path / "m.csv").write_text("path,caption,label\na.npy,x,cat\nb.npy,z,\na.npy,y,cat\n")
    assert read_manifest(jsonl) == read_manifest(tmp_path / "m.csv")
    first = read_manifest(jsonl)[0]
    assert first.path == (tmp_path / "a.npy").resolve() and first.captions == ("x", "y") and first.label == "cat"


def test_every_missing_file_is_listed_in_one_error(tmp_path: Path) -> None:
    manifest = make_files(tmp_path, 6)
    for i in (1, 4, 5):
        (tmp_path / f"f{i:03d}.npy").unlink()
    with pytest.raises(ManifestError) as info:
        read_manifest(manifest)
    message = str(info.value)
    assert "3 of 6 media file(s) missing" in message
    assert all(f"f{i:03d}.npy" in message for i in (1, 4, 5))
    assert "f000.npy" not in message


def test_malformed_manifest_line_is_named(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text('{"path": "a.npy", "captions": ["x"]}\n{"path": "b.npy"}\n')
    with pytest.raises(ManifestError, match=r"m.jsonl:2: expected 'captions'"):
        read_manifest(path, check_files=False)


# ------------------------------------------------------------------------------------------ determinism
def test_caption_index_deduplicates_in_first_seen_order(tmp_path: Path) -> None:
    for n in "ab":
        np.save(tmp_path / f"{n}.npy", np.zeros(1))
    m = write_manifest(
        tmp_path / "m.jsonl", [{"path": "a.npy", "captions": ["x", "y"]}, {"path": "b.npy", "captions": ["y", "z"]}]
    )
    index = CaptionIndex.from_entries(read_manifest(m))
    assert index.texts == ("x", "y", "z") and index.ids == ((0, 1), (1, 2))


def test_caption_choice_is_deterministic_and_changes_with_the_epoch(tmp_path: Path) -> None:
    ds = TrainDataset(read_manifest(make_files(tmp_path, 10)), Noisy(), seed=7)
    per_epoch = [[ds.caption_choice(e, i) for i in range(10)] for e in range(6)]
    again = TrainDataset(read_manifest(tmp_path / "m.jsonl"), Noisy(), seed=7)
    assert per_epoch == [[again.caption_choice(e, i) for i in range(10)] for e in range(6)]
    assert all(per_epoch[e][i] in ds.captions.ids[i] for e in range(6) for i in range(10))
    assert len({tuple(p) for p in per_epoch}) > 1  # a new draw each epoch
    chosen = {ds.captions.texts[per_epoch[e][3]] for e in range(6)}
    assert len(chosen) > 1


def test_augmentation_is_a_function_of_seed_epoch_and_index(tmp_path: Path) -> None:
    ds = TrainDataset(read_manifest(make_files(tmp_path, 4)), Noisy(), seed=1)
    a = ds[(0, 2)].tensor
    torch.manual_seed(123)
    np.random.seed(5)
    assert torch.equal(ds[(0, 2)].tensor, a)  # whatever the global state before
    assert not torch.equal(ds[(1, 2)].tensor, a)  # another epoch, another draw
    assert not torch.equal(TrainDataset(read_manifest(tmp_path / "m.jsonl"), Noisy(), seed=2)[(0, 2)].tensor, a)


def test_seeded_rng_restores_the_global_generators() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    expected = (torch.rand(3), np.random.rand(3), random.random())
    torch.manual_seed(0)
    np.random.seed(0)
    random.seed(0)
    with seeded_rng(99):
        torch.rand(5), np.random.rand(5), random.random()
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1]) and got[2] == expected[2]


def test_derive_seed_depends_on_every_part() -> None:
    seeds = {derive_seed(0, e, i) for e in range(5) for i in range(50)}
    assert len(seeds) == 250
    assert derive_seed(1, 2, 3) == derive_seed(1, 2, 3) != derive_seed(1, 3, 2)


def test_worker_processes_load_exactly_what_the_main_process_loads(tmp_path: Path) -> None:
    from torch.utils.data import DataLoader

    ds = TrainDataset(read_manifest(make_files(tmp_path, 16)), Noisy(), seed=3)
    sampler = EpochBatchSampler(16, 4, seed=3)
    sampler.set_epoch(2)

    def run(workers: int) -> list[torch.Tensor]:
        loader = DataLoader(ds, batch_sampler=sampler, collate_fn=SampleCollator(ds.modality), num_workers=workers)  # type: ignore[arg-type]
        return [b.inputs for b in loader]

    inline, parallel = run(0), run(2)
    assert len(inline) == 4
    assert all(torch.equal(a, b) for a, b in zip(inline, parallel, strict=True))


# --------------------------------------------------------------------------------------------- the sampler
def test_sampler_shards_are_the_single_process_batches_split_in_order() -> None:
    one = EpochBatchSampler(50, 8, seed=4)
    shards = [EpochBatchSampler(50, 8, seed=4, world=2, rank=r, grad_accum=2) for r in range(2)]
    for s in (one, *shards):
        s.set_epoch(3)
    single = list(one)
    per_rank = [list(s) for s in shards]
    assert len(single) == 6 == len(one)  # 50 // 8 full batches; the partial one is dropped
    assert all(len(s) == 12 for s in shards)
    for step, batch in enumerate(single):
        rebuilt = [key for r in range(2) for micro in per_rank[r][2 * step : 2 * step + 2] for key in micro]
        assert rebuilt == batch
    assert all(epoch == 3 for batch in single for epoch, _ in batch)
    flat = [i for batch in single for _, i in batch]
    assert len(set(flat)) == 48


def test_sampler_order_changes_with_the_epoch_and_is_reproducible() -> None:
    s = EpochBatchSampler(32, 8, seed=0)
    s.set_epoch(0)
    first = [i for b in s for _, i in b]
    s.set_epoch(1)
    second = [i for b in s for _, i in b]
    s.set_epoch(0)
    assert [i for b in s for _, i in b] == first != second


def test_sampler_rejects_an_indivisible_batch() -> None:
    with pytest.raises(ValueError, match="not divisible"):
        EpochBatchSampler(100, 10, world=4)


# ------------------------------------------------------------------------------- skipped samples and budget
def test_a_bad_file_becomes_a_reported_gap_in_the_batch(tmp_path: Path) -> None:
    ds = TrainDataset(read_manifest(make_files(tmp_path, 4, corrupt={2})), Noisy(), seed=0)
    samples = [ds[(0, i)] for i in range(4)]
    assert samples[2].tensor is None and "InputError" in (samples[2].error or "")
    batch = SampleCollator(ds.modality)(samples)
    assert len(batch) == 3 and batch.inputs.shape == (3, 4)
    assert batch.indices.tolist() == [0, 1, 3]
    assert batch.failures == [(str((tmp_path / "f002.npy").resolve()), samples[2].error)]
    assert SampleCollator(ds.modality)([samples[2]]).inputs is None


def test_collate_failure_names_the_files() -> None:
    samples = [Sample(0, 0, torch.zeros(3), "a.npy"), Sample(1, 0, torch.zeros(4), "b.npy")]
    with pytest.raises(DataError, match=r"a\.npy, b\.npy"):
        SampleCollator(Noisy())(samples)


def test_error_budget_counts_distinct_files_and_lists_them_all() -> None:
    budget = ErrorBudget(200, 0.01, "m.jsonl")
    assert budget.allowed == 2
    budget.record([("a", "bad"), ("a", "bad again")])
    budget.record([("b", "bad")])
    with pytest.raises(ErrorBudgetExceeded) as info:
        budget.record([("c", "truncated")])
    assert info.value.failures == {"a": "bad", "b": "bad", "c": "truncated"}
    assert "a: bad" in str(info.value) and "c: truncated" in str(info.value)
    assert ErrorBudget(100, 0.01, "m").allowed == 1 and ErrorBudget(99, 0.01, "m").allowed == 0
