"""Frame sampling, decoding and preprocessing: files written here, arrays, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lbind_video.frames import frame_indices, read_video_frames
from lbind_video.modality import VideoModality

from lbcore.errors import InputError
from lbcore.testing import tiny_modality

MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073))
STD = torch.tensor((0.26862954, 0.26130258, 0.27577711))


def modality(num_frames: int = 8, image_size: int = 32) -> VideoModality:
    m = tiny_modality(VideoModality, {"num_frames": num_frames, "image_size": image_size})
    assert isinstance(m, VideoModality)
    return m


# -- frame indices -------------------------------------------------------------------------------------
@pytest.mark.parametrize("num_frames", [1, 2, 3, 4, 7, 8, 16])
def test_frame_indices_match_upstream_linspace(num_frames: int) -> None:
    # LanguageBind samples np.linspace(0, n - 1, num_frames, dtype=int), i.e. rounded down.
    for n in range(1, 400):
        expected = np.linspace(0, n - 1, num_frames, dtype=int).tolist()
        assert frame_indices(n, num_frames) == expected, n


def test_frame_indices_round_down_and_cover_the_clip() -> None:
    assert frame_indices(10, 4) == [0, 3, 6, 9]
    assert frame_indices(12, 4) == [0, 3, 7, 11]  # 3.67 -> 3, 7.33 -> 7
    assert frame_indices(3, 8) == [0, 0, 0, 0, 1, 1, 1, 2]  # short clip: frames repeat
    assert frame_indices(1, 8) == [0] * 8
    assert frame_indices(100_000, 8)[-1] == 99_999
    with pytest.raises(ValueError):
        frame_indices(0, 8)


# -- decoding files ------------------------------------------------------------------------------------
def test_reads_the_frames_at_the_sampled_indices(make_clip, coded) -> None:
    path = make_clip("ten.mp4", coded.frames(10))
    frames = read_video_frames(path, 4)
    assert frames.shape == (4, 64, 64, 3) and frames.dtype == np.uint8
    assert coded.indices(frames) == [0, 3, 6, 9]
    red = frames[:, :8, :8].reshape(4, -1, 3).mean(axis=1)
    assert (red[:, 0] > 200).all() and (red[:, 1:] < 60).all()  # RGB order kept


def test_clip_with_fewer_frames_than_asked_repeats_frames(make_clip, coded) -> None:
    path = make_clip("three.mp4", coded.frames(3))
    assert coded.indices(read_video_frames(path, 8)) == [0, 0, 0, 0, 1, 1, 1, 2]
    single = make_clip("one.mp4", coded.frames(1))
    assert coded.indices(read_video_frames(single, 8)) == [0] * 8


def test_long_clip_samples_first_and_last(make_clip, coded) -> None:
    frames = np.repeat(coded.frames(12), 10, axis=0)  # 120 frames: index i // 10 coded
    path = make_clip("long.mp4", frames)
    assert coded.indices(read_video_frames(path, 8)) == [i * 119 // 7 // 10 for i in range(8)]


@pytest.mark.parametrize(
    ("height", "width", "pix_fmt"), [(37, 53, "yuv444p"), (36, 52, "yuv420p"), (64, 48, "yuv420p")]
)
def test_odd_sizes_decode_to_the_written_frames(make_clip, coded, height: int, width: int, pix_fmt: str) -> None:
    # 48 wide is one of the widths decord 0.6 returns with padded rows; the reader repairs them.
    clip = coded.frames(5, height, width)
    frames = read_video_frames(make_clip(f"{height}x{width}.mp4", clip, pix_fmt=pix_fmt), 5)
    assert frames.shape == (5, height, width, 3)
    assert np.abs(frames.astype(int) - clip.astype(int)).mean() < 4


def test_grey_video_gives_three_equal_channels(make_clip, coded) -> None:
    import av

    path = make_clip("grey.mp4", coded.frames(6, grey=True), pix_fmt="gray")
    frames = read_video_frames(path, 4)
    assert np.array_equal(frames[..., 0], frames[..., 1]) and np.array_equal(frames[..., 0], frames[..., 2])
    # Reference: PyAV (FFmpeg) decoding every frame to RGB; the grey range expansion is the codec's business.
    with av.open(str(path)) as container:
        every = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert np.array_equal(frames, np.stack([every[i] for i in frame_indices(len(every), 4)]))


# -- bad files -----------------------------------------------------------------------------------------
def _raises_naming(path, match: str) -> None:
    m = modality()
    with pytest.raises(InputError, match=match) as info:
        m.preprocess(path)
    assert str(path) in str(info.value)


def test_errors_name_the_file(tmp_path, make_clip, coded) -> None:
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    _raises_naming(empty, "empty file")
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    _raises_naming(text, "not a readable video")
    _raises_naming(tmp_path / "absent.mp4", "file not found")
    _raises_naming(tmp_path, "is a directory")
    good = make_clip("good.mp4", coded.frames(8))
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    _raises_naming(truncated, "not a readable video")


def test_video_container_without_frames_is_an_error(tmp_path) -> None:
    import av

    path = tmp_path / "no_frames.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()  # header and trailer, no frame
        container.mux(stream.encode())
    assert path.stat().st_size > 0
    _raises_naming(path, "not a readable video")


# -- preprocessing -------------------------------------------------------------------------------------
def test_file_and_array_give_the_same_tensor(make_clip, coded) -> None:
    m = modality(num_frames=4, image_size=32)
    path = make_clip("clip.mp4", coded.frames(10, 48, 64))
    all_frames = read_video_frames(path, 10)  # every frame, as decoded
    from_file, from_array = m.preprocess(path), m.preprocess(all_frames)
    assert from_file.shape == (3, 4, 32, 32) and from_file.dtype == torch.float32
    assert torch.equal(from_file, from_array)
    assert torch.equal(m.preprocess(torch.from_numpy(all_frames)), from_array)
    assert torch.equal(m.preprocess(path), from_file)  # deterministic at eval


def test_pixels_are_scaled_then_clip_normalised() -> None:
    # A flat clip stays flat through resizing and cropping: the output is (value / 255 - mean) / std.
    m = modality(num_frames=3, image_size=32)
    clip = np.empty((5, 40, 70, 3), np.uint8)
    clip[...] = (30, 128, 250)
    out = m.preprocess(clip)
    expected = (torch.tensor((30, 128, 250)) / 255.0 - MEAN) / STD
    assert torch.allclose(out, expected.view(3, 1, 1, 1).expand_as(out), atol=1e-5)


def test_array_layouts_and_dtypes() -> None:
    m = modality(num_frames=4, image_size=32)
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 256, (6, 40, 50), dtype=np.uint8)
    out = m.preprocess(grey)
    assert out.shape == (3, 4, 32, 32)
    as_rgb = m.preprocess(np.repeat(grey[..., None], 3, axis=3))
    assert torch.equal(out, as_rgb)
    assert torch.equal(m.preprocess(grey[..., None]), as_rgb)
    rgba = np.concatenate([np.repeat(grey[..., None], 3, axis=3), np.zeros((6, 40, 50, 1), np.uint8)], axis=3)
    assert torch.equal(m.preprocess(rgba), as_rgb)
    as_float = m.preprocess(np.repeat(grey[..., None], 3, axis=3).astype(np.float32) / 255.0)
    assert torch.allclose(as_float, as_rgb, atol=1e-5)


@pytest.mark.parametrize(
    ("clip", "match"),
    [
        (np.zeros((0, 32, 32, 3), np.uint8), "zero frames"),
        (np.zeros((4, 0, 32, 3), np.uint8), "no pixels"),
        (np.zeros((32, 32, 3), np.float32) + 2.0, "float pixels span"),
        (np.full((2, 8, 8, 3), np.nan, np.float32), "NaN"),
        (np.zeros((2, 8, 8, 2), np.uint8), "clip array of shape"),
        (np.zeros((2, 3, 8, 8, 3), np.uint8), "clip array of shape"),
        (np.zeros((2, 8, 8, 3), np.int32), "unsupported pixel type"),
        ("", "is a directory|file not found"),
    ],
)
def test_bad_arrays_raise_input_error(clip, match: str) -> None:
    with pytest.raises(InputError, match=match):
        modality().preprocess(clip)


def test_training_crop_and_flip_are_shared_by_all_frames() -> None:
    # Frame t = base + 12 t: with one crop and one flip for the clip, every frame differs from the first by
    # the same constant (resize, crop, flip and per-channel normalisation all commute with adding one).
    m = modality(num_frames=4, image_size=32)
    rng = np.random.default_rng(0)
    base = rng.integers(0, 200, (1, 40, 96, 3))
    clip = (base + 12 * np.arange(4)[:, None, None, None]).astype(np.uint8)  # [4, 40, 96, 3]
    torch.manual_seed(0)
    outs = [m.preprocess(clip, train=True) for _ in range(12)]
    for out in outs:
        delta = out - out[:, :1]  # [3, T, S, S]
        expected = (12 * torch.arange(4) / 255.0).view(1, 4, 1, 1) / STD.view(3, 1, 1, 1)
        assert torch.allclose(delta, expected.expand_as(delta), atol=1e-4)
    eval_out = m.preprocess(clip)
    assert any(not torch.allclose(o, eval_out) for o in outs), "training never cropped off-centre or flipped"
    assert len({o[:, 0].sum().item() for o in outs}) > 1, "every training call picked the same crop"
