"""Kinetics and MSR-VTT readers on small layouts made here (and the real MSR-VTT 1k-A caption file)."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import pytest
from lbind_video.datasets import kinetics, msrvtt
from lbind_video.modality import VideoModality

from lbcore.datasets import LayoutError
from lbcore.testing import realdata_dir


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x00")  # readers check presence only; decoding happens at evaluation time
    return path


def write_csv(path: Path, header: list[str], rows: list[list[str]], delimiter: str = ",") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, delimiter=delimiter)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_modality_exposes_the_readers() -> None:
    readers = VideoModality().dataset_readers()
    assert readers["kinetics"] is kinetics and readers["msrvtt"] is msrvtt


def test_kinetics_path_label_csv(tmp_path) -> None:
    rows = [["clips/a.mp4", "abseiling"], ["clips/b.mp4", "air drumming"], ["clips/c.mp4", "abseiling"]]
    write_csv(tmp_path / "val.csv", ["path", "label"], rows)
    for rel, _ in rows:
        touch(tmp_path / rel)
    ds = kinetics(tmp_path)
    assert ds.task == "classification" and ds.split == "val"
    assert ds.classes == ["abseiling", "air drumming"]
    assert [(i.path, i.labels) for i in ds.items] == [(tmp_path / p, (lab,)) for p, lab in rows]


def test_kinetics_official_csv_in_split_class_and_flat_folders(tmp_path) -> None:
    header = ["label", "youtube_id", "time_start", "time_end", "split", "is_cc"]
    rows = [
        ["passing American football (in game)", "abc", "14", "24", "val", "0"],
        ["riding a bike", "def", "0", "10", "val", "0"],
        ["riding a bike", "ghi", "101", "111", "val", "0"],
    ]
    write_csv(tmp_path / "annotations" / "val.csv", header, rows)
    touch(tmp_path / "val" / "passing American football (in game)" / "abc_000014_000024.mp4")
    touch(tmp_path / "val" / "def_000000_000010.mkv")
    touch(tmp_path / "ghi_000101_000111.mp4")
    ds = kinetics(tmp_path, split="val")
    assert [i.path.relative_to(tmp_path).as_posix() for i in ds.items] == [
        "val/passing American football (in game)/abc_000014_000024.mp4",
        "val/def_000000_000010.mkv",
        "ghi_000101_000111.mp4",
    ]
    assert ds.classes == ["passing American football (in game)", "riding a bike"]


def test_kinetics_lists_every_missing_clip_or_skips_them(tmp_path, caplog) -> None:
    rows = [[f"v/{i}.mp4", "a" if i % 2 else "b"] for i in range(5)]
    write_csv(tmp_path / "test.csv", ["path", "label"], rows)
    touch(tmp_path / "v" / "1.mp4")
    with pytest.raises(LayoutError) as info:
        kinetics(tmp_path, split="test")
    message = str(info.value)
    assert "4 of 5" in message and all(f"v/{i}.mp4" in message for i in (0, 2, 3, 4))
    with caplog.at_level(logging.WARNING):
        ds = kinetics(tmp_path, split="test", missing="skip")
    assert [i.path.name for i in ds.items] == ["1.mp4"]
    assert ds.classes == ["a", "b"], "the class list keeps labels whose clips are all missing"
    assert "skipping 4 of 5" in caplog.text


def test_kinetics_layout_errors(tmp_path) -> None:
    with pytest.raises(LayoutError, match="does not exist"):
        kinetics(tmp_path / "nowhere")
    with pytest.raises(LayoutError, match=r"no kinetics annotation CSV; looked for val\.csv"):
        kinetics(tmp_path)
    write_csv(tmp_path / "val.csv", ["file", "class"], [["a.mp4", "x"]])
    with pytest.raises(LayoutError, match="needs columns path,label or label,youtube_id"):
        kinetics(tmp_path)
    with pytest.raises(ValueError, match="missing must be"):
        kinetics(tmp_path, missing="ignore")  # type: ignore[arg-type]


@pytest.mark.parametrize("delimiter", [",", ";"])
def test_msrvtt_retrieval_layout(tmp_path, delimiter: str) -> None:
    rows = [["ret0", "msr7", "video7", "a man sings"], ["ret1", "msr9", "video9", "a cat, jumping"]]
    write_csv(tmp_path / "MSRVTT_JSFUSION_test.csv", ["key", "vid_key", "video_id", "sentence"], rows, delimiter)
    touch(tmp_path / "videos" / "video7.mp4")
    touch(tmp_path / "videos" / "all" / "video9.mp4")
    ds = msrvtt(tmp_path)
    assert ds.task == "retrieval" and ds.classes == []
    assert [(i.path.name, i.captions) for i in ds.items] == [
        ("video7.mp4", ("a man sings",)),
        ("video9.mp4", ("a cat, jumping",)),
    ]


def test_msrvtt_with_unnamed_index_column_and_missing_videos(tmp_path) -> None:
    rows = [["0", "ret0", "msr1", "video1", "one"], ["1", "ret1", "msr2", "video2", "two"]]
    write_csv(
        tmp_path / "msrvtt_data" / "MSRVTT_JSFUSION_test.csv", ["", "key", "vid_key", "video_id", "sentence"], rows
    )
    with pytest.raises(LayoutError, match="2 of 2 msrvtt video"):
        msrvtt(tmp_path)
    touch(tmp_path / "videos" / "video2.mp4")
    assert [i.captions for i in msrvtt(tmp_path, missing="skip").items] == [("two",)]


def test_msrvtt_reads_the_real_1k_a_caption_file(tmp_path) -> None:
    real = realdata_dir()
    if real is None:
        pytest.skip("no realdata folder")
    source = real / "captions" / "msrvtt" / "MSRVTT_JSFUSION_test.csv"
    with open(source, newline="", encoding="utf-8") as f:
        expected = list(csv.DictReader(f, delimiter=";"))  # the shared copy is ';'-separated, CRLF
    assert len(expected) >= 999
    chosen = [expected[0], expected[500], expected[-1]]
    for row in chosen:
        touch(tmp_path / "videos" / f"{row['video_id']}.mp4")
    with pytest.raises(LayoutError, match=f"{len({r['video_id'] for r in expected}) - 3} of"):
        msrvtt(tmp_path, csv=source)
    ds = msrvtt(tmp_path, csv=source, missing="skip")
    assert [(i.path.stem, i.captions) for i in ds.items] == [(r["video_id"], (r["sentence"],)) for r in chosen]
