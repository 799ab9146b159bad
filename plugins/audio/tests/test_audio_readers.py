"""Evaluation readers on small generated layouts, and on the real ESC-50 / Clotho / AudioCaps files."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from lbind_audio.modality import AudioModality
from lbind_audio.readers import read_audiocaps, read_audioset, read_clotho, read_esc50, read_vggsound

from lbcore.datasets import LayoutError
from lbcore.testing import realdata_dir

REAL = realdata_dir()
needs_real = pytest.mark.skipif(REAL is None, reason="shared realdata folder not found")


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def touch(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF")  # readers check presence only; decoding is the loader's job


ESC_HEADER = ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
ESC_ROWS = [
    ["1-1-A-1.wav", 1, 1, "rooster", "False", 1, "A"],
    ["1-2-A-0.wav", 1, 0, "dog", "True", 2, "A"],
    ["2-3-A-14.wav", 2, 14, "chirping_birds", "False", 3, "A"],
    ["3-4-A-0.wav", 3, 0, "dog", "True", 4, "A"],
]


@pytest.fixture
def esc50(tmp_path) -> Path:
    write_csv(tmp_path / "meta/esc50.csv", ESC_HEADER, ESC_ROWS)
    for row in ESC_ROWS:
        touch(tmp_path / "audio" / str(row[0]))
    return tmp_path


def test_readers_are_exposed_by_the_modality() -> None:
    readers = AudioModality(AudioModality.config_preset("demo")).dataset_readers()
    assert set(readers) == {"esc50", "vggsound", "audioset", "clotho", "audiocaps"}


def test_esc50_classes_by_target_and_folds(esc50) -> None:
    ds = read_esc50(esc50)
    assert ds.task == "classification" and ds.name == "esc50"
    assert ds.classes == ["dog", "rooster", "chirping birds"]  # ordered by target 0, 1, 14; '_' -> ' '
    assert len(ds) == 4
    assert {(it.path.name, it.labels) for it in ds.items} >= {("2-3-A-14.wav", ("chirping birds",))}
    fold2 = read_esc50(esc50, fold=2)
    assert [it.path.name for it in fold2.items] == ["2-3-A-14.wav"] and fold2.split == "fold2"
    assert fold2.classes == ds.classes  # a fold still ranks against every class
    assert len(read_esc50(esc50, fold=[1, 3])) == 3
    with pytest.raises(LayoutError, match=r"no fold \[7\]"):
        read_esc50(esc50, fold=7)


def test_esc50_missing_files_error_or_skip(esc50) -> None:
    (esc50 / "audio/1-1-A-1.wav").unlink()
    (esc50 / "audio/3-4-A-0.wav").unlink()
    with pytest.raises(LayoutError, match="missing 2 path") as info:
        read_esc50(esc50)
    assert "1-1-A-1.wav" in str(info.value) and "3-4-A-0.wav" in str(info.value)
    assert "missing='skip'" in str(info.value)
    ds = read_esc50(esc50, missing="skip")
    assert sorted(it.path.name for it in ds.items) == ["1-2-A-0.wav", "2-3-A-14.wav"]
    with pytest.raises(LayoutError, match="none of the 1 listed"):
        read_esc50(esc50, fold=3, missing="skip")
    with pytest.raises(ValueError, match="'error' or 'skip'"):
        read_esc50(esc50, missing="ignore")


def test_esc50_layout_errors(tmp_path, esc50) -> None:
    with pytest.raises(LayoutError, match="root folder does not exist"):
        read_esc50(tmp_path / "nothing_here")
    empty = tmp_path / "empty_root"
    empty.mkdir()
    with pytest.raises(LayoutError, match=r"missing 2 path\(s\): meta/esc50.csv, audio"):
        read_esc50(empty)
    write_csv(esc50 / "meta/esc50.csv", ["filename", "fold", "category"], [["a.wav", 1, "dog"]])
    with pytest.raises(LayoutError, match="lacks column"):
        read_esc50(esc50)
    write_csv(esc50 / "meta/esc50.csv", ESC_HEADER, [*ESC_ROWS, ["1-9-A-0.wav", 1, 0, "cat", "", 9, "A"]])
    with pytest.raises(LayoutError, match="target 0 is 'cat'"):
        read_esc50(esc50)
    write_csv(esc50 / "meta/esc50.csv", ESC_HEADER, [["1-1-A-1.wav", "one", 1, "rooster", "", 1, "A"]])
    with pytest.raises(LayoutError, match="'fold' holds 'one'"):
        read_esc50(esc50)


@needs_real
def test_esc50_on_the_real_partial_download() -> None:
    root = REAL / "audio/esc50"
    with pytest.raises(LayoutError, match="missing 1980 path"):
        read_esc50(root)
    available = read_esc50(root, csv="meta/esc50_available.csv")
    assert len(available) == 20 and len(available.classes) == 10
    skipped = read_esc50(root, missing="skip")
    assert len(skipped) == 20 and len(skipped.classes) == 50
    assert skipped.classes[:3] == ["dog", "rooster", "pig"] and "chirping birds" in skipped.classes
    assert all(it.path.is_file() and it.labels[0] in skipped.classes for it in skipped.items)
    assert len(read_esc50(root, fold=5, missing="skip")) == 20
    assert {it.path for it in available.items} == {it.path for it in skipped.items}


def test_vggsound_folder_per_class(tmp_path) -> None:
    for rel in ["playing_violin/a.wav", "playing_violin/b.flac", "dog_barking/c.wav", "dog_barking/notes.txt"]:
        touch(tmp_path / "test" / rel)
    ds = read_vggsound(tmp_path, split="test")
    assert ds.name == "vggsound" and ds.task == "classification"
    assert ds.classes == ["dog barking", "playing violin"]
    assert sorted(it.path.name for it in ds.items) == ["a.wav", "b.flac", "c.wav"]
    (tmp_path / "test/empty_class").mkdir()
    with pytest.raises(LayoutError, match="empty_class"):
        read_vggsound(tmp_path, split="test")


LABELS = [["index", "mid", "display_name"], [0, "/m/09x0r", "Speech"], [1, "/m/05zppz", "Male speech, man speaking"]]


def test_audioset_multilabel(tmp_path) -> None:
    write_csv(tmp_path / "class_labels_indices.csv", LABELS[0], LABELS[1:])
    entries = [{"wav": "eval/a.wav", "labels": "/m/09x0r,/m/05zppz"}, {"wav": "eval/b.wav", "labels": "/m/05zppz"}]
    (tmp_path / "audioset_eval.json").write_text(json.dumps(entries))
    touch(tmp_path / "eval/a.wav")
    touch(tmp_path / "eval/b.wav")
    ds = read_audioset(tmp_path)
    assert ds.task == "multilabel" and ds.classes == ["Speech", "Male speech, man speaking"]
    assert ds.items[0].labels == ("Speech", "Male speech, man speaking")
    assert ds.items[1].labels == ("Male speech, man speaking",)
    # The AST {"data": [...]} wrapper, absolute paths from another machine remapped through audio_dir.
    moved = [{**e, "wav": "/data/elsewhere/" + Path(e["wav"]).name} for e in entries]
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": moved}))
    with pytest.raises(LayoutError, match=r"/data/elsewhere/a\.wav"):
        read_audioset(tmp_path, annotations="wrapped.json")
    remapped = read_audioset(tmp_path, annotations="wrapped.json", audio_dir="eval")
    assert [it.path for it in remapped.items] == [tmp_path / "eval/a.wav", tmp_path / "eval/b.wav"]


def test_audioset_errors(tmp_path) -> None:
    with pytest.raises(LayoutError, match=r"audioset_eval\.json, class_labels_indices\.csv"):
        read_audioset(tmp_path)
    write_csv(tmp_path / "class_labels_indices.csv", LABELS[0], LABELS[1:])
    (tmp_path / "audioset_eval.json").write_text(json.dumps([{"wav": "a.wav", "labels": "/m/09x0r,/m/zzz"}]))
    touch(tmp_path / "a.wav")
    with pytest.raises(LayoutError, match="/m/zzz"):
        read_audioset(tmp_path)
    (tmp_path / "audioset_eval.json").write_text(json.dumps([{"wav": "a.wav"}, {"wav": "a.wav", "labels": ""}]))
    with pytest.raises(LayoutError, match=r"entries without .*: 0, 1"):
        read_audioset(tmp_path)
    (tmp_path / "audioset_eval.json").write_text("{not json")
    with pytest.raises(LayoutError, match="cannot read"):
        read_audioset(tmp_path)


def test_clotho_retrieval(tmp_path) -> None:
    header = ["file_name"] + [f"caption_{i}" for i in range(1, 6)]
    write_csv(
        tmp_path / "clotho_captions_evaluation.csv",
        header,
        [["a b.wav", "one", "two", "three", "four", "five"], ["c.wav", "six", "", "seven", "eight", "nine"]],
    )
    touch(tmp_path / "evaluation/a b.wav")
    with pytest.raises(LayoutError, match=r"evaluation/c\.wav"):
        read_clotho(tmp_path)
    touch(tmp_path / "evaluation/c.wav")
    ds = read_clotho(tmp_path)
    assert ds.task == "retrieval" and ds.classes == []
    assert [(it.path.name, it.captions) for it in ds.items] == [
        ("a b.wav", ("one", "two", "three", "four", "five")),
        ("c.wav", ("six", "seven", "eight", "nine")),
    ]


@needs_real
def test_clotho_on_the_real_samples() -> None:
    root = REAL / "audio/clotho_eval_samples"
    ds = read_clotho(root, captions="captions.csv", audio_dir=".")
    assert len(ds) == 3 and all(len(it.captions) == 5 and it.path.is_file() for it in ds.items)
    full_csv = REAL / "captions/clotho/clotho_captions_evaluation.csv"  # 1045 clips; 3 of them present
    with pytest.raises(LayoutError, match="missing 1042 path"):
        read_clotho(root, captions=full_csv, audio_dir=".")
    ds_full = read_clotho(root, captions=full_csv, audio_dir=".", missing="skip")
    assert {it.path.name for it in ds_full.items} == {it.path.name for it in ds.items}
    assert {it.captions for it in ds_full.items} == {it.captions for it in ds.items}


def test_audiocaps_merges_rows_of_a_clip(tmp_path) -> None:
    write_csv(
        tmp_path / "test.csv",
        ["audiocap_id", "youtube_id", "start_time", "caption"],
        [[1, "abc", 30, "a dog barks"], [2, "xyz", 0, "rain falls"], [3, "abc", 30, "barking"]],
    )
    touch(tmp_path / "audio/abc.wav")
    touch(tmp_path / "audio/xyz.wav")
    ds = read_audiocaps(tmp_path)
    assert ds.task == "retrieval"
    assert [(it.path.name, it.captions) for it in ds.items] == [
        ("abc.wav", ("a dog barks", "barking")),
        ("xyz.wav", ("rain falls",)),
    ]
    touch(tmp_path / "clips/Yabc_30.flac")
    ds = read_audiocaps(tmp_path, audio_dir="clips", file_pattern="Y{youtube_id}_{start_time}.flac", missing="skip")
    assert [it.path.name for it in ds.items] == ["Yabc_30.flac"]
    with pytest.raises(ValueError, match="'segment'"):
        read_audiocaps(tmp_path, file_pattern="{segment}.wav")


@needs_real
def test_audiocaps_on_the_real_test_csv(tmp_path) -> None:
    real_csv = REAL / "captions/audiocaps/test.csv"
    for youtube_id in ["zwoqJY03yHE", "7fmOlUlwoNg"]:
        touch(tmp_path / "audio" / f"{youtube_id}.wav")
    with pytest.raises(LayoutError, match="missing 973 path"):  # 975 distinct clips in the test split
        read_audiocaps(tmp_path, captions=real_csv)
    ds = read_audiocaps(tmp_path, captions=real_csv, missing="skip")
    assert sorted(it.path.name for it in ds.items) == ["7fmOlUlwoNg.wav", "zwoqJY03yHE.wav"]
    assert all(len(it.captions) == 5 for it in ds.items)
