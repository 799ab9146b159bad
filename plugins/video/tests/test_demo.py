"""The procedural demo dataset: deterministic, decodable, and showing the motion its captions name."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch
from lbind_video import demo
from lbind_video.frames import frame_indices, read_video_frames
from lbind_video.modality import VideoModality

from lbcore.manifest import read_manifest


def small(root, seed: int = 0) -> None:
    demo.make_demo_data(root, seed=seed, train_per_concept=2, test_per_concept=1)


@pytest.mark.slow
def test_same_seed_same_bytes_other_seed_other_clips(tmp_path) -> None:
    small(tmp_path / "a")
    small(tmp_path / "b")
    small(tmp_path / "c", seed=1)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 4 + 7 * 3 * 2  # manifests, clips and their sound tracks
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    clip = "train/rising_ball/000.mp4"
    assert (tmp_path / "a" / clip).read_bytes() != (tmp_path / "c" / clip).read_bytes()


def test_manifests_list_decodable_clips_with_paraphrased_captions(tmp_path) -> None:
    small(tmp_path)
    m = VideoModality(VideoModality.config_preset("demo"))
    concepts = set(demo.CAPTIONS)
    assert len(concepts) >= 6
    for split, per_concept in (("train", 2), ("test", 1)):
        entries = read_manifest(tmp_path / f"{split}.jsonl")
        assert len(entries) == per_concept * len(concepts)
        assert {e.label for e in entries} == concepts
        for e in entries:
            assert len(e.captions) == 3 and set(e.captions) <= set(demo.CAPTIONS[e.label])
            x = m.preprocess(e.path)
            assert x.shape == (3, m.config.num_frames, m.config.image_size, m.config.image_size)
            assert torch.isfinite(x).all()
        rows = [json.loads(line) for line in (tmp_path / f"{split}.jsonl").read_text().splitlines()]
        assert all(set(r) == {"path", "captions", "label"} for r in rows)
    first = read_manifest(tmp_path / "train.jsonl")[0].path
    assert len(read_video_frames(first, demo.FRAMES)) == demo.FRAMES
    pools = [set(c) for c in demo.CAPTIONS.values()]
    assert sum(len(p) for p in pools) == len(set().union(*pools)), "a caption is shared by two concepts"
    assert demo.TRAIN_PER_CONCEPT >= 30 and demo.TEST_PER_CONCEPT >= 10


def _centroid_y(frame: np.ndarray, background: np.ndarray) -> float:
    weight = np.abs(frame.astype(float) - background).sum(-1)
    weight = np.where(weight > 60, weight, 0.0)
    ys = np.arange(frame.shape[0])[:, None]
    return float((weight * ys).sum() / weight.sum())


def test_the_motion_shows_in_the_sampled_frames() -> None:
    rng = np.random.default_rng(0)
    for style in (demo.TRAIN_STYLE, demo.TEST_STYLE):
        clip = demo.render_clip("rising ball", rng, style)
        assert clip.shape == (demo.FRAMES, demo.SIZE, demo.SIZE, 3) and clip.dtype == np.uint8
        sampled = clip[frame_indices(demo.FRAMES, 4)]
        background = np.median(clip.reshape(-1, demo.SIZE * demo.SIZE, 3), axis=1)[:, None, None, :]
        heights = [_centroid_y(f, b) for f, b in zip(sampled, background[frame_indices(demo.FRAMES, 4)], strict=True)]
        assert all(later < earlier - 3 for earlier, later in itertools.pairwise(heights)), heights
        for num_frames in (4, 8):
            light = demo.render_clip("flashing light", rng, style)[frame_indices(demo.FRAMES, num_frames)]
            peaks = light.reshape(num_frames, -1).max(axis=1).astype(int)
            assert peaks.max() - peaks.min() > 80, f"{num_frames} frames miss the light on or off: {peaks}"


def test_paired_manifests_caption_motion_and_sound_of_each_clip(tmp_path) -> None:
    import wave

    from lbind_video.soundtrack import SAMPLE_RATE, SOUND_CAPTIONS

    small(tmp_path)
    for split in ("train", "test"):
        plain = [json.loads(line) for line in (tmp_path / f"{split}.jsonl").read_text().splitlines()]
        paired = [json.loads(line) for line in (tmp_path / f"paired-{split}.jsonl").read_text().splitlines()]
        assert [r["video"] for r in paired] == [r["path"] for r in plain]
        for row, base in zip(paired, plain, strict=True):
            concept, _, sound = row["label"].partition(" with ")
            assert concept == base["label"] and sound in SOUND_CAPTIONS
            for caption, video_caption in zip(row["captions"], base["captions"], strict=True):
                heard = caption[len(video_caption) + len(" with ") :]
                assert caption.startswith(video_caption + " with ") and heard in SOUND_CAPTIONS[sound]
            with wave.open(str(tmp_path / row["audio"])) as f:
                assert (f.getframerate(), f.getnchannels(), f.getsampwidth()) == (SAMPLE_RATE, 1, 2)
    sounds = {json.loads(line)["label"].partition(" with ")[2] for line in (tmp_path / "paired-train.jsonl").open()}
    assert sounds == set(SOUND_CAPTIONS)


def _dominant_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[spectrum.argmax()])


def test_each_sound_has_its_pattern() -> None:
    from lbind_video.soundtrack import SAMPLE_RATE, render_sound

    rng = np.random.default_rng(0)
    for shift in (0.0, 0.1):
        whistle = render_sound("whistling", rng, shift)
        quarter = whistle.size // 4
        assert _dominant_hz(whistle[-quarter:], SAMPLE_RATE) > 1.5 * _dominant_hz(whistle[:quarter], SAMPLE_RATE)
        assert _dominant_hz(render_sound("humming", rng, shift), SAMPLE_RATE) < 200
        frames = np.abs(render_sound("beeping", rng, shift)).reshape(-1, 160).max(axis=1)  # 10 ms windows
        assert 0.2 < np.mean(frames < 0.05) < 0.8  # beeps and silences between them
        tick = render_sound("ticking", rng, shift)
        assert np.abs(tick).max() / np.sqrt(np.mean(tick**2)) > 6  # short clicks: a high crest factor
