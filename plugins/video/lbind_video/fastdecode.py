"""Decoding only the frames a clip needs (both decode modes), scaled while they are converted to RGB (``fast``).

Decoding the 8 frames spread over a clip normally means decoding nearly every frame: most clips have a key
frame every few seconds, and each frame depends on the ones before it. But frames that no other frame
depends on (non-reference frames: most B-frames) can be skipped outright. :func:`read_scaled_frames` demuxes
the clip with PyAV, numbers its frames as decord does (by presentation time), and asks the decoder to skip
every non-reference frame except the sampled ones; only the sampled frames are converted to RGB. In the
``fast`` mode ffmpeg's scaler converts them at the final short side (bilinear; it low-passes when shrinking), so
full-size frames never reach numpy or torch; in the ``exact`` mode they keep their stored size. The decoded
frames are the ones decord gives (the same indices; the skipped frames are never used for prediction): at the
stored size they equal decord's bit for bit, so the ``exact`` mode's output is upstream's.

It needs presentation timestamps on every packet; for a clip without them it returns None and the caller
falls back to decord.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from lbcore.errors import InputError

log = logging.getLogger(__name__)

SCALER = "BILINEAR"
"""ffmpeg's (swscale's) filter for the decoder-side resize."""


def scaled_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(height, width) with the short side at ``short_side`` and the long side ``int(short_side * long / short)``,
    as torchvision's ``Resize(short_side)`` computes it."""
    if width <= height:
        return int(short_side * height / width), short_side
    return short_side, int(short_side * width / height)


def read_scaled_frames(
    path: Path,
    wanted_of: Callable[[int], list[int]],
    short_side: int | None,
    threads: int,
    expected: str,
    frame_count: int | None = None,
) -> tuple[np.ndarray | None, tuple[int, int]]:
    """(frames, size): the frames ``wanted_of(n)`` (indices into the clip's n frames) as uint8 [len, height,
    width, 3] with the short side scaled to ``short_side`` (see :func:`scaled_size`; None: the stored size), and
    that (height, width). The frames are None when the clip's packets lack timestamps, their count is not
    ``frame_count`` (when given: decord's count), or a sampled frame did not come out of the decoder: the caller
    then decodes with decord at that size. ``expected`` describes a readable file."""
    import av  # imported here: plugin discovery must not load the decoder

    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise InputError(path, "the file has no video stream", expected)
            stream = container.streams.video[0]
            stream.thread_count = threads
            height, width = int(stream.codec_context.height), int(stream.codec_context.width)
            if height < 1 or width < 1:
                raise InputError(path, f"the video stream declares a {width} x {height} frame size", expected)
            size = scaled_size(height, width, short_side) if short_side is not None else (height, width)
            packets = [p for p in container.demux(stream) if p.size > 0]
            if not packets:
                raise InputError(path, "the video stream has zero frames", expected)
            if any(p.pts is None for p in packets) or len({p.pts for p in packets}) != len(packets):
                log.debug("%s: packets without distinct timestamps; decoding with decord", path)
                return None, size
            if frame_count is not None and len(packets) != frame_count:
                log.debug("%s: %d packets but %d frames by decord's count; decoding with decord",
                          path, len(packets), frame_count)  # fmt: skip
                return None, size
            index = {pts: i for i, pts in enumerate(sorted(p.pts for p in packets))}  # decord's frame order
            wanted = wanted_of(len(packets))
            frames = _decode(stream.codec_context, packets, index, set(wanted), size)
    except av.error.FFmpegError as err:
        raise InputError(path, f"not a readable video: truncated or corrupt ({err})", expected) from err
    if len(frames) < len(set(wanted)):
        missing = len(set(wanted)) - len(frames)
        log.debug("%s: %d of the sampled frames did not decode; decoding with decord", path, missing)
        return None, size
    return np.stack([frames[i] for i in wanted]), size


def _decode(
    context: Any, packets: list[Any], index: dict[int, int], wanted: set[int], size: tuple[int, int]
) -> dict[int, np.ndarray]:
    """Feed the packets, skipping non-reference frames that are not wanted; convert the wanted ones."""
    frames: dict[int, np.ndarray] = {}

    def take(decoded: list[Any]) -> None:
        for frame in decoded:
            i = index.get(frame.pts)
            if i in wanted and i not in frames:
                frames[i] = frame.to_ndarray(width=size[1], height=size[0], format="rgb24", interpolation=SCALER)

    for packet in packets:
        # The decoder reads this per frame: skip this one unless it is wanted or other frames need it.
        context.skip_frame = "DEFAULT" if index[packet.pts] in wanted else "NONREF"
        take(context.decode(packet))
        if len(frames) == len(wanted):
            return frames
    context.skip_frame = "DEFAULT"
    take(context.decode(None))  # flush the frames the decoder holds back for reordering
    return frames
