"""Real clips from the shared sample folder, with the languagebind preset (skipped when the folder is absent)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from lbind_video.modality import VideoModality

from lbcore.testing import realdata_dir

REAL = realdata_dir()
pytestmark = pytest.mark.skipif(REAL is None, reason="no realdata folder")
MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1, 1)
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1, 1)


def real_videos() -> list[Path]:
    if REAL is None:
        return []
    files = sorted((REAL / "video").glob("*.m[kp][v4]")) + sorted(
        (REAL / "languagebind_assets" / "video").glob("*.mp4")
    )
    return files


@pytest.fixture(scope="module")
def languagebind() -> VideoModality:
    return VideoModality(VideoModality.config_preset("languagebind"))


@pytest.mark.slow
def test_every_real_clip_preprocesses_to_the_languagebind_shape(languagebind) -> None:
    files = real_videos()
    assert len(files) >= 10, files
    lo, hi = (0 - MEAN) / STD, (1 - MEAN) / STD  # what [0, 1] pixels can become
    for path in files:
        x = languagebind.preprocess(path)
        assert x.shape == (3, 8, 224, 224) and x.dtype == torch.float32, path
        assert torch.isfinite(x).all(), path
        # Bilinear without antialiasing interpolates between neighbours: no overshoot past the pixel range.
        assert (x >= lo - 1e-5).all() and (x <= hi + 1e-5).all(), path
        assert x.std() > 0.1, f"{path}: suspiciously flat input"
        assert not torch.equal(x[:, 0], x[:, -1]), f"{path}: first and last sampled frames are identical"


@pytest.mark.parametrize("name", ["languagebind_assets/video/0.mp4", "video/decord_flipping_a_pancake.mkv"])
def test_preprocessing_is_deterministic_and_matches_the_upstream_pipeline(languagebind, name: str) -> None:
    import decord

    path = REAL / name
    x = languagebind.preprocess(path)
    assert torch.equal(x, languagebind.preprocess(path))
    # Reference: LanguageBind's decord loader and transforms, written out: frames at np.linspace(..., dtype=int),
    # / 255, CLIP normalisation, pytorchvideo's ShortSideScale (bilinear F.interpolate, long side floored),
    # CenterCropVideo.
    reader = decord.VideoReader(str(path), num_threads=1)
    ids = np.linspace(0, len(reader) - 1, 8, dtype=int)
    video = torch.from_numpy(reader.get_batch(ids.tolist()).asnumpy()).permute(3, 0, 1, 2).float()  # [C, T, H, W]
    video = (video / 255.0 - MEAN) / STD
    h, w = video.shape[-2:]
    size = (math.floor(h / w * 224), 224) if w < h else (224, math.floor(w / h * 224))
    video = F.interpolate(video, size=size, mode="bilinear", align_corners=False)
    top, left = round((size[0] - 224) / 2.0), round((size[1] - 224) / 2.0)
    expected = video[..., top : top + 224, left : left + 224]
    assert torch.allclose(x, expected, atol=1e-4), (x - expected).abs().max()


def test_training_preprocessing_keeps_the_shape_and_varies(languagebind) -> None:
    path = REAL / "video" / "mmaction2_demo_arm_wrestling.mp4"  # 340 x 256: room for a random crop
    torch.manual_seed(0)
    outs = [languagebind.preprocess(path, train=True) for _ in range(4)]
    assert all(o.shape == (3, 8, 224, 224) for o in outs)
    assert any(not torch.equal(o, outs[0]) for o in outs[1:])
