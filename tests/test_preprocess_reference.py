"""lbind's preprocessing equals the minimal reference pipelines of benchmarks/preprocess_reference.py on the real
sample files, at every modality's languagebind preset: bit for bit for image, infrared, depth and video (exact
decode mode), within AUDIO_TOLERANCE for audio; video's fast mode within a few grey levels of exact."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

from lbcore.testing import realdata_dir

REAL = realdata_dir()
pytestmark = pytest.mark.skipif(REAL is None, reason="no realdata folder")
BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # preprocess.py imports preprocess_reference by name
    spec.loader.exec_module(module)
    return module


ref = _load("preprocess_reference")
FILES = _load("preprocess").real_files(REAL) if REAL is not None else {}


def _modality(plugin: str, cls: str, **overrides):
    module = importlib.import_module(f"lbind_{plugin}.modality")
    modality_cls = getattr(module, cls)
    return modality_cls(modality_cls.config_preset("languagebind", **overrides))


def _files(name: str, least: int) -> list[Path]:
    files = FILES[name]
    assert len(files) >= least, f"expected at least {least} real {name} files, found {files}"
    return files


@pytest.mark.parametrize(("plugin", "cls"), [("image", "ImageModality"), ("infrared", "InfraredModality")])
def test_image_like_preprocessing_equals_pillow_and_torch(plugin: str, cls: str) -> None:
    modality = _modality(plugin, cls)
    cfg = modality.config
    for path in _files(plugin, 6):
        expected = ref.image(str(path), cfg.image_size, cfg.antialias)
        assert torch.equal(modality.preprocess(path), expected), path


def test_grey_image_is_resized_as_one_channel_with_the_same_values(tmp_path: Path) -> None:
    from PIL import Image

    source = next(p for p in _files("infrared", 6) if "llvip_pairs" in str(p))
    grey = tmp_path / "grey.png"
    Image.open(source).convert("L").save(grey)  # a 1280 x 1024 single-channel file
    modality = _modality("infrared", "InfraredModality")
    assert torch.equal(modality.preprocess(grey), ref.image(str(grey), modality.config.image_size))


def test_depth_preprocessing_equals_pillow_and_torch() -> None:
    modality = _modality("depth", "DepthModality")
    cfg = modality.config
    for path in _files("depth", 6):
        expected = ref.depth(str(path), cfg.image_size, cfg.max_depth)
        assert torch.equal(modality.preprocess(path), expected), path


def test_audio_preprocessing_equals_torchaudio_fbank_of_the_whole_clip() -> None:
    modality = _modality("audio", "AudioModality")
    cfg = modality.config
    files = _files("audio", 20)
    lengths = set()
    for path in files:
        expected = ref.audio(str(path), cfg.mel_bins, cfg.target_length, cfg.sample_rate)
        got = modality.preprocess(path)
        assert got.shape == expected.shape, path
        assert (got - expected).abs().max() <= ref.AUDIO_TOLERANCE, path
        lengths.add(bool(torch.equal(got[0], got[2])))
    assert lengths == {True, False}, "the files should include clips shorter and longer than one chunk"


def _videos(slow: bool) -> list[Path]:
    files = FILES.get("video", [])
    return files if slow else [p for p in files if "languagebind_assets" in str(p) or p.suffix == ".mkv"]


@pytest.mark.parametrize("slow", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_video_exact_mode_equals_decord_and_torch(slow: bool) -> None:
    modality = _modality("video", "VideoModality", decode="exact")
    cfg = modality.config
    for path in _videos(slow):
        expected = ref.video(str(path), cfg.image_size, cfg.num_frames)
        assert torch.equal(modality.preprocess(path), expected), path


@pytest.mark.parametrize("slow", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_video_fast_mode_decodes_decords_frames(slow: bool) -> None:
    """Skipping the frames nobody needs leaves the sampled ones as decord decodes them: at the stored size
    (no scaling) the fast decoder's frames equal decord's bit for bit."""
    import decord
    from lbind_video.fastdecode import read_scaled_frames
    from lbind_video.frames import VIDEO_FILES, frame_indices

    for path in _videos(slow):
        reader = decord.VideoReader(str(path), num_threads=1)
        indices = frame_indices(len(reader), 8)
        expected = reader.get_batch(indices).asnumpy()  # [8, H, W, 3]
        height, width = expected.shape[1:3]
        frames, size = read_scaled_frames(path, lambda n: frame_indices(n, 8), min(height, width), 1, VIDEO_FILES)
        assert size == (height, width) and frames is not None, path
        assert (frames == expected).all(), path


def test_video_exact_mode_decodes_with_decord_when_the_frame_counts_disagree(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The skipping decoder serves the exact mode only when it numbers the frames as decord does."""
    import decord
    import lbind_video.frames as frames_module
    from lbind_video.fastdecode import read_scaled_frames
    from lbind_video.frames import VIDEO_FILES, frame_indices

    path = _videos(False)[0]
    reader = decord.VideoReader(str(path), num_threads=1)
    count, stored = len(reader), reader[0].shape[:2]
    want = lambda n: frame_indices(n, 8)  # noqa: E731
    frames, size = read_scaled_frames(path, want, None, 1, VIDEO_FILES, frame_count=count + 1)
    assert frames is None and size == tuple(stored)
    assert read_scaled_frames(path, want, None, 1, VIDEO_FILES, frame_count=count)[0] is not None
    used: list[int | None] = []
    real = frames_module.read_scaled_frames

    def disagreeing(*args: object, frame_count: int | None = None) -> object:
        used.append(frame_count)
        return real(*args, frame_count=(frame_count or 0) + 1)

    monkeypatch.setattr(frames_module, "read_scaled_frames", disagreeing)
    modality = _modality("video", "VideoModality", decode="exact")
    cfg = modality.config
    assert torch.equal(modality.preprocess(path), ref.video(str(path), cfg.image_size, cfg.num_frames))
    assert used == [count]


@pytest.mark.parametrize("slow", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_video_fast_mode_is_within_a_few_grey_levels_of_exact(slow: bool) -> None:
    exact = _modality("video", "VideoModality", decode="exact")
    fast = _modality("video", "VideoModality", decode="fast")
    level = 1 / (255 * max(exact.config.std))  # one grey level in normalised units
    for path in _videos(slow):
        a, b = exact.preprocess(path), fast.preprocess(path)
        assert a.shape == b.shape, path
        # Same frames, another resampler (ffmpeg's low-passes when shrinking; exact's bilinear without
        # antialiasing does not): under 6 levels on average; up to about 4 on the 1350 x 1080 clips.
        assert (a - b).abs().mean() < 6 * level, (path, float((a - b).abs().mean()) / level)
