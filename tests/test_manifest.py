"""The manifest model (JSONL and CSV under one set of rules, plain and paired rows, typed errors with file and
line) and the tolerant preprocessing dataset shared by training, evaluation and embedding."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from lbcore.config import ModalityConfig
from lbcore.datasets import read_eval_manifest
from lbcore.errors import InputError
from lbcore.manifest import Manifest, ManifestEntry, ManifestError, read_manifest, write_manifest
from lbcore.modality import Modality
from lbcore.samples import DataError, PreprocessDataset, Preprocessed, SurvivorCollator


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------------------------------------ the rules
def test_jsonl_and_csv_paired_rows_read_the_same(tmp_path: Path) -> None:
    jsonl = write_manifest(
        tmp_path / "m.jsonl",
        [
            {"video": "v/a.mp4", "audio": "a.wav", "captions": ["x", "y"], "label": "cat"},
            {"video": "v/b.mp4", "caption": "z", "label": "dog"},  # no audio for this item
        ],
    )
    write(tmp_path / "m.csv", "video,audio,caption,label\nv/a.mp4,a.wav,x,cat\nv/b.mp4,,z,dog\nv/a.mp4,a.wav,y,cat\n")
    for manifest in (Manifest.read(jsonl), Manifest.read(tmp_path / "m.csv")):
        assert len(manifest) == 2 and manifest.paired and manifest.columns == ("video", "audio")
        assert manifest.paths("video") == [tmp_path.resolve() / "v" / "a.mp4", tmp_path.resolve() / "v" / "b.mp4"]
        assert [manifest.captions(i) for i in range(2)] == [("x", "y"), ("z",)]
        assert [manifest.labels(i) for i in range(2)] == [("cat",), ("dog",)]
        assert manifest.rows_with("audio") == [0]
        audio = manifest.rows_of("audio")
        assert (
            len(audio) == 1
            and audio.paths("audio") == [tmp_path.resolve() / "a.wav"]
            and audio.line(0) == 1 + (manifest.source.suffix == ".csv")
        )
        second = 2 + (manifest.source.suffix == ".csv")  # the CSV has a header line
        with pytest.raises(ManifestError, match=rf"{manifest.source.name}:{second}: no 'audio' path"):
            manifest.paths("audio")  # row 2 has no audio: a consumer needing every row is told which line


def test_plain_rows_labels_and_paths_relative_to_the_manifest(tmp_path: Path, caplog: Any) -> None:
    outside = tmp_path / "elsewhere" / "o.npy"
    manifest_path = write_manifest(
        tmp_path / "sub" / "m.jsonl",
        [
            {"path": "x/../a.npy", "labels": ["cat", "dog"], "id": 7, "extra": "ignored in a plain row"},
            {"path": str(outside), "label": "owl"},
            {"path": "../b.npy", "label": "owl"},
        ],
    )
    with caplog.at_level(logging.WARNING, logger="lbcore.manifest"):
        manifest = Manifest.read(manifest_path)
    base = (tmp_path / "sub").resolve()
    assert manifest.paths() == [base / "a.npy", outside, tmp_path.resolve() / "b.npy"]
    assert not manifest.paired and manifest.columns == ("path",) and manifest.column_for("anything") == "path"
    assert [manifest.multilabel(i) for i in range(3)] == [True, False, False]
    assert manifest.labels(0) == ("cat", "dog") and manifest.captions(0) == ()
    assert "2 path(s) lead outside the manifest's folder (first: line 2" in caplog.text


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"path": "a.npy"}\n{"path": "b\xff.npy"}\n', r"m\.jsonl:2: not UTF-8 text"),
        ('{"path": "a.npy"}\n\n{"path": 123}\n', r"m\.jsonl:3: 'path' is 123; expected a file path"),
        ('{"path": null, "caption": "x"}\n', r"m\.jsonl:1: 'path' is null; expected a file path"),
        ('{"path": "a\\u0000.npy"}\n', r"m\.jsonl:1: 'path' holds a NUL byte"),
        ('{"path": "  "}\n', r"m\.jsonl:1: 'path' is an empty path"),
        ('{"path": "a.npy"}\n{"caption": "no file", "label": "x"}\n', r"m\.jsonl:2: no media path; expected 'path'"),
        ('{"video": 5, "caption": "x"}\n', r"m\.jsonl:1: no media path \('video' is 5, not a file path\)"),
        ('{"path": "a.npy"}\n{"path": "b.npy"}\n{"path": "a.npy"}\n', r"m\.jsonl:3: repeats the media of line 1"),
        ('{"path": "a.npy"}\n{"video": "v.mp4"}\n', r"m\.jsonl:2: mixes rows with a 'path' and paired rows"),
        ('{"path": "a.npy"}\n["a.npy"]\n', r"m\.jsonl:2: expected a JSON object, got list"),
        ('{"path": "a.npy",\n', r"m\.jsonl:1: not valid JSON"),
        (
            '{"path": "a.npy", "captions": ["ok", 3]}\n',
            r"m\.jsonl:1: 'captions' is \[\"ok\", 3\]; expected a non-empty",
        ),
        ('{"path": "a.npy", "label": []}\n', r"m\.jsonl:1: 'label' is \[\]"),
        ("\n  \n", r"m\.jsonl: the manifest lists no media"),
    ],
)
def test_every_bad_jsonl_row_is_a_typed_error_with_its_line(tmp_path: Path, content: Any, expected: str) -> None:
    with pytest.raises(ManifestError, match=expected):
        Manifest.read(write(tmp_path / "m.jsonl", content))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"path,caption\na.npy,x\nb.npy,caf\xe9\n", r"m\.csv:3: not UTF-8 text"),
        ("path,caption\na.npy,x\n,y\n", r"m\.csv:3: no media path"),
        ("path,caption\na.npy,x\nb.npy,y\na.npy,x\n", r"m\.csv:4: repeats line 2"),
        ("path,label\na.npy,cat\na.npy,dog\n", r"m\.csv:3: label 'dog' conflicts with 'cat' on line 2"),
        ("path,caption\na.npy,x,extra\n", r"m\.csv:2: more cells than the header has columns"),
        ("path,caption\na\0.npy,x\n", r"m\.csv:2: .*NUL"),
        ("", r"m\.csv: empty CSV"),
    ],
)
def test_every_bad_csv_row_is_a_typed_error_with_its_line(tmp_path: Path, content: Any, expected: str) -> None:
    with pytest.raises(ManifestError, match=expected):
        Manifest.read(write(tmp_path / "m.csv", content))


def test_a_bad_modality_value_is_reported_when_that_modality_is_read(tmp_path: Path) -> None:
    manifest = Manifest.read(
        write(tmp_path / "m.jsonl", '{"video": "a.mp4", "audio": ["x"]}\n{"video": "b.mp4", "audio": null}\n')
    )
    assert len(manifest.paths("video")) == 2  # video is fine; null audio means "no audio file"
    assert manifest.rows_with("audio") == [0]  # the bad value is not silently dropped ...
    with pytest.raises(ManifestError, match=r"m\.jsonl:1: 'audio' is \[\"x\"\], not a file path"):
        manifest.rows_of("audio").paths("audio")  # ... but named with its line


def test_missing_files_of_every_column_are_listed_once(tmp_path: Path) -> None:
    write(tmp_path / "a.mp4", "v")
    manifest = Manifest.read(write_manifest(tmp_path / "m.jsonl", [{"video": "a.mp4", "audio": "a.wav"}]))
    with pytest.raises(ManifestError, match=r"1 of 2 media file\(s\) missing:\n  .*a\.wav$"):
        manifest.check_files(["video", "audio"])


def test_entries_of_a_paired_manifest_and_the_deprecated_paths(tmp_path: Path) -> None:
    for name in ("a.npy", "b.npy"):
        np.save(tmp_path / name, np.zeros(2))
    rows = [{"sig": "a.npy", "other": "b.npy", "caption": "x", "label": "l"}, {"other": "a.npy", "caption": "y"}]
    path = write_manifest(tmp_path / "p.jsonl", rows)
    assert read_manifest(path, modality="sig") == [ManifestEntry((tmp_path / "a.npy").resolve(), ("x",), "l")]
    with pytest.raises(ManifestError, match="say which modality"):
        read_manifest(path)
    import lbcore.data

    with pytest.warns(DeprecationWarning, match=r"lbcore\.data\.read_manifest moved to lbcore\.manifest"):
        old = lbcore.data.read_manifest
    assert old is read_manifest
    with pytest.warns(DeprecationWarning, match="lbcore.samples.derive_seed"):
        assert lbcore.data.derive_seed(1, 2) > 0
    with pytest.warns(DeprecationWarning):
        assert lbcore.data.ManifestError is ManifestError


def test_eval_manifest_in_csv_with_paired_rows(tmp_path: Path) -> None:
    for name in ("a.v", "a.d", "b.v", "b.d"):
        write(tmp_path / name, "x")
    manifest = write(tmp_path / "pairs.csv", "vid,dep,label\na.v,a.d,kitchen\nb.v,b.d,garden\n")
    data = read_eval_manifest(manifest, ["vid", "dep"])
    assert data["vid"].task == "classification" and data["vid"].classes == ["garden", "kitchen"]
    assert [i.path.name for i in data["dep"].items] == ["a.d", "b.d"]
    assert [i.labels for i in data["vid"].items] == [("kitchen",), ("garden",)]


# ------------------------------------------------------------------------------------- tolerant preprocessing
class Vec(Modality):
    """Reads .npy files; adds noise from the global generators when training."""

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
        return np.zeros(3, dtype=np.float32)

    def build_stem(self) -> nn.Module:
        raise NotImplementedError


def test_failures_are_returned_and_survivors_stacked(tmp_path: Path) -> None:
    files = []
    for i in range(4):
        files.append(tmp_path / f"{i}.npy")
        if i == 1:
            files[-1].write_bytes(b"broken")
        else:
            np.save(files[-1], np.full(3, i, dtype=np.float32))
    ds = PreprocessDataset(Vec(), files)
    items = [ds[i] for i in range(4)]
    assert isinstance(items[1], Preprocessed) and items[1].tensor is None and "InputError" in (items[1].error or "")
    assert items[2] == (2, items[2].tensor, None)
    batch = SurvivorCollator(Vec())(items)
    assert batch.indices == [0, 2, 3] and list(batch.failures) == [1]
    torch.testing.assert_close(batch.inputs, torch.tensor([[0.0] * 3, [2.0] * 3, [3.0] * 3]))
    assert SurvivorCollator(Vec())([items[1]]).inputs is None
    np.save(files[1], np.zeros(5, dtype=np.float32))  # now readable, but of another shape
    with pytest.raises(DataError, match=r"cannot batch .*shapes \[\(3,\), \(5,\)\]"):
        SurvivorCollator(Vec())([ds[0], ds[1]])


def test_seeded_augmentation_depends_on_seed_epoch_and_index_only(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", np.zeros(3, dtype=np.float32))
    ds = PreprocessDataset(Vec(), [tmp_path / "a.npy"] * 2, train=True, seed=5)
    first = ds[(0, 0)].tensor
    torch.manual_seed(os.getpid())
    assert torch.equal(ds[(0, 0)].tensor, first)
    assert not torch.equal(ds[(1, 0)].tensor, first) and not torch.equal(ds[(0, 1)].tensor, first)
    assert not torch.equal(PreprocessDataset(Vec(), [tmp_path / "a.npy"], train=True, seed=6)[(0, 0)].tensor, first)
