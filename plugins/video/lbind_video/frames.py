"""Frame sampling and decoding: a video file or an in-memory clip -> the sampled frames as float [T, 3, H, W].

Sampling follows LanguageBind: ``num_frames`` indices spread over the whole clip, ``linspace(0, n - 1,
num_frames)`` rounded down (upstream's ``np.linspace(..., dtype=int)``; computed here in integers so no
float error can move an index). Clips shorter than ``num_frames`` repeat frames.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lbcore.errors import InputError, check_media_file
from lbcore.threads import decoder_threads
from lbind_video.fastdecode import read_scaled_frames

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")
"""File name endings of the video files the modality reads (decord, i.e. ffmpeg, decodes them)."""
VIDEO_FILES = "a video file decord can read (mp4, mkv, webm, avi, ...) with at least one frame"
CLIP_ARRAYS = "frames shaped T x H x W x C (C = 1, 3 or 4) or T x H x W, uint8 or float in [0, 1]"


def frame_indices(num_available: int, num_frames: int) -> list[int]:
    """``floor(i * (n - 1) / (num_frames - 1))`` for i in 0..num_frames-1: first and last frame included,
    evenly spread, repeated when the clip is shorter than ``num_frames``; ``[0]`` when ``num_frames == 1``."""
    if num_available < 1:
        raise ValueError(f"a clip needs at least one frame, got {num_available}")
    if num_frames < 1:
        raise ValueError(f"num_frames must be positive, got {num_frames}")
    if num_frames == 1:
        return [0]
    last = num_available - 1
    return [i * last // (num_frames - 1) for i in range(num_frames)]


def is_path(item: Any) -> bool:
    return isinstance(item, (str, os.PathLike))


def read_video_frames(
    path: str | os.PathLike[str], num_frames: int, threads: int | None = None, short_side: int | None = None
) -> np.ndarray:
    """Decode the frames at :func:`frame_indices` from a video file: uint8 [num_frames, H, W, 3].

    Both modes decode with :func:`lbind_video.fastdecode.read_scaled_frames`: only the sampled frames and the
    frames they depend on, and only the sampled ones converted to RGB. With ``short_side`` None (the ``exact``
    mode) at their stored size: decord's frames bit for bit (tested on the real clips), and used only when the
    clip's frame count agrees with decord's (decord reads the index, decoding nothing), else decord decodes
    them. With ``short_side`` (the ``fast`` mode), ffmpeg's scaler brings them to ``short_side`` while
    converting them (see :func:`~lbind_video.fastdecode.scaled_size`). Decord decodes when the clip's packets
    lack timestamps (scaling alike in the fast mode). ``threads``: decoding threads (None:
    :func:`lbcore.threads.decoder_threads`, the thread policy's choice; 0: the decoder's).

    Raises :class:`InputError` naming the file when it is missing, empty, not a video, truncated or has no
    frames.
    """
    path = Path(path)
    check_media_file(path, VIDEO_FILES)
    threads = decoder_threads() if threads is None else threads

    def wanted(n: int) -> list[int]:
        return frame_indices(n, num_frames)

    if short_side is None:  # exact: decord's frame count first, so that the frames are decord's ones
        reader, available = _open_decord(path, threads)
        frames, _ = read_scaled_frames(path, wanted, None, threads, VIDEO_FILES, frame_count=available)
        return frames if frames is not None else _decord_frames(reader, available, num_frames, path)
    frames, (height, width) = read_scaled_frames(path, wanted, short_side, threads, VIDEO_FILES)
    if frames is not None:
        return frames
    reader, available = _open_decord(path, threads, height=height, width=width)
    return _decord_frames(reader, available, num_frames, path)


def _open_decord(path: Path, threads: int, **size: int) -> tuple[Any, int]:
    """A decord reader of ``path`` (frames scaled to ``height`` x ``width`` when given) and its frame count
    (at least 1)."""
    import decord  # imported here: plugin discovery must not load the decoder

    try:
        reader = decord.VideoReader(str(path), ctx=decord.cpu(0), num_threads=threads, **size)
        available = len(reader)
    except (RuntimeError, decord.DECORDError) as err:
        # decord says "Error reading <file>" for a missing moov atom (truncated mp4), an unknown container and
        # a file without a video stream alike; its C++ log line on stderr carries ffmpeg's detail.
        raise InputError(
            path,
            f"not a readable video: truncated, corrupt, without a video stream or without frames ({_first_line(err)})",
            VIDEO_FILES,
        ) from err
    if available < 1:
        raise InputError(path, "the video stream has zero frames", VIDEO_FILES)
    return reader, available


def _decord_frames(reader: Any, available: int, num_frames: int, path: Path) -> np.ndarray:
    """The frames at :func:`frame_indices` decoded by decord: uint8 [num_frames, H, W, 3]."""
    wanted = frame_indices(available, num_frames)
    distinct = sorted(set(wanted))
    batch = _decode_batch(reader, distinct, path)  # [len(distinct), H, W, 3]
    if batch is None:  # decord 0.6 cannot batch frames whose rows it pads: one frame at a time
        frames = [_decode_one(reader, index, available, path) for index in distinct]
        shapes = {f.shape for f in frames}
        if len(shapes) > 1:
            raise InputError(path, f"frames change size mid-stream ({sorted(shapes)})", "frames of one size")
        batch = np.stack(frames)
    if wanted == distinct:
        return batch  # [num_frames, H, W, 3]
    position = {index: i for i, index in enumerate(distinct)}
    return batch[[position[i] for i in wanted]]  # repeated frames of a short clip


def _decode_batch(reader: Any, indices: list[int], path: Path) -> np.ndarray | None:
    """The frames at ``indices`` (sorted, distinct) in one decord ``get_batch``: uint8 [len, H, W, 3]; None when
    decord cannot batch them (its padded-row bug, see :func:`_as_rgb24`)."""
    import decord

    try:
        batch = reader.get_batch(indices)
    except (RuntimeError, decord.DECORDError) as err:
        log.debug("%s: decord cannot batch frames %s (%s); decoding one at a time", path, indices, _first_line(err))
        return None
    arr = batch.asnumpy() if hasattr(batch, "asnumpy") else np.asarray(batch)
    if arr.dtype != np.uint8 or arr.ndim != 4 or arr.shape[-1] != 3 or arr.shape[0] != len(indices):
        return None
    return arr


def _decode_one(reader: Any, index: int, available: int, path: Path) -> np.ndarray:
    import decord

    try:
        frame = reader[index]
    except (RuntimeError, decord.DECORDError) as err:
        raise InputError(
            path,
            f"frame {index} of {available} cannot be decoded (truncated or corrupt: {_first_line(err)})",
            VIDEO_FILES,
        ) from err
    return _as_rgb24(frame, path, index)


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def _as_rgb24(frame: Any, path: Path, index: int) -> np.ndarray:
    """A decord frame -> uint8 [H, W, 3], repairing decord 0.6's padded rows.

    For some widths (16, 24, 48, 72 among the even ones up to 128) decord 0.6 hands back the decoder's row
    buffer with its alignment padding, shaped [H, W, c'] instead of [H, W, 3]; its ``get_batch`` then fails
    outright. The first ``3 * W`` bytes of each padded row are the frame.
    """
    arr = frame.asnumpy() if hasattr(frame, "asnumpy") else np.asarray(frame)  # torch bridge returns tensors
    if arr.dtype != np.uint8 or arr.ndim != 3:
        raise InputError(path, f"decoder returned frame {index} as {arr.dtype} {arr.shape}", "uint8 RGB frames")
    h, w, c = arr.shape
    if c == 3:
        return arr
    stride = arr.size // h
    if arr.size % h or stride < 3 * w:
        raise InputError(path, f"decoder returned frame {index} with an unusable layout {arr.shape}", "RGB frames")
    log.debug("%s: frame %d came back with padded rows (%d bytes for %d pixels); repaired", path, index, stride, w)
    return np.ascontiguousarray(arr.reshape(h, stride)[:, : 3 * w].reshape(h, w, 3))


def sample_array_frames(clip: Any, num_frames: int) -> np.ndarray:
    """An in-memory clip (see ``CLIP_ARRAYS``) -> its frames at :func:`frame_indices`, channels last."""
    if isinstance(clip, torch.Tensor):
        clip = clip.detach().cpu().numpy()
    try:
        arr = np.asarray(clip)
    except ValueError as err:  # ragged lists of frames
        raise InputError(None, f"frames of different shapes ({err})", CLIP_ARRAYS) from err
    if arr.ndim == 3:
        arr = arr[..., None]  # grey [T, H, W] -> [T, H, W, 1]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3, 4):
        raise InputError(None, f"clip array of shape {tuple(arr.shape)}", CLIP_ARRAYS)
    t, h, w, _ = arr.shape
    if t == 0:
        raise InputError(None, "clip with zero frames", CLIP_ARRAYS)
    if h == 0 or w == 0:
        raise InputError(None, f"frames with no pixels (shape {tuple(arr.shape)})", CLIP_ARRAYS)
    return arr[frame_indices(t, num_frames)]


def frames_to_float(frames: np.ndarray, source: str | os.PathLike[str] | None = None) -> torch.Tensor:
    """[T, H, W, C] uint8 (C = 1, 3 or 4) or float in [0, 1] -> float32 [T, 3, H, W] in [0, 1], in torch's
    channels-last memory layout (the layout the frames come in, so converting is one pass without a
    transposing copy; torch's channels-last resize kernels are also about twice as fast as the planar ones on
    large frames, with the same values).

    Grey is repeated to three channels and alpha dropped.
    """
    colour = frames[..., :3] if frames.shape[-1] >= 3 else frames[..., :1]  # [T, H, W, 3 or 1]
    if colour.dtype == np.uint8:
        x = torch.from_numpy(np.ascontiguousarray(colour)).permute(0, 3, 1, 2).float().div_(255.0)
    elif np.issubdtype(colour.dtype, np.floating):
        x = torch.from_numpy(np.ascontiguousarray(colour, dtype=np.float32)).permute(0, 3, 1, 2)
        if not torch.isfinite(x).all():
            raise InputError(source, "float pixels include NaN or infinity", CLIP_ARRAYS)
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise InputError(source, f"float pixels span {lo:g}..{hi:g}", CLIP_ARRAYS)
    else:
        raise InputError(source, f"unsupported pixel type {colour.dtype}", CLIP_ARRAYS)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)  # grey -> [T, 3, H, W]
    return x.contiguous(memory_format=torch.channels_last)
