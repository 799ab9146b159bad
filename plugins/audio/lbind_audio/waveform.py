"""Waveforms: audio files and in-memory arrays -> one mono float32 signal at the model's sample rate.

Accepted inputs (see :func:`load_waveform`):

- a path (``str`` or ``os.PathLike``) to a file libsndfile decodes: WAV (8/16/24/32-bit PCM, float),
  FLAC, OGG (Vorbis/Opus), MP3, AIFF. Read with soundfile, never torchaudio.load (which needs torchcodec).
- ``(waveform, sample_rate)``: an array or tensor with its rate in Hz.
- ``{"array": waveform, "sampling_rate": sample_rate}``: the Hugging Face ``datasets`` Audio format
  (``"sample_rate"`` is accepted as the key too).
- a bare array or tensor: taken to be at the model's rate already (``AudioConfig.sample_rate``).

An in-memory waveform is 1-D ``[samples]`` or 2-D ``[channels, samples]`` (the torchaudio layout; transpose
what ``soundfile.read`` returns). Float samples are used as they are (full scale is +-1); integer PCM arrays
(int8, uint8, int16, int32) are scaled to +-1 the way soundfile scales files.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import soundfile as sf
import torch
import torchaudio

from lbcore.errors import InputError, check_media_file

log = logging.getLogger(__name__)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3", ".aiff", ".aif")
"""File name endings the dataset readers treat as audio (all decoded by libsndfile through soundfile)."""

ChannelMode = Literal["mix", "first"]

_DECODABLE = "an audio file libsndfile can decode (WAV, FLAC, OGG, MP3, AIFF)"
_MEMORY_FORMS = (
    "a path, a 1-D [samples] or 2-D [channels, samples] array/tensor, (waveform, sample_rate), "
    'or {"array": waveform, "sampling_rate": sample_rate}'
)
# Full-scale value of each integer PCM dtype, matching soundfile's (and torchaudio's) normalisation.
_PCM_SCALE = {np.dtype(np.int8): 128.0, np.dtype(np.int16): 32768.0, np.dtype(np.int32): 2147483648.0}
_MAX_RESAMPLE_KERNEL = 20_000_000  # entries of the reduced (new x orig) rate grid; 80 MB of float32


def load_waveform(item: Any, sample_rate: int, channels: ChannelMode = "mix") -> torch.Tensor:
    """Any accepted input -> mono float32 tensor ``[samples]`` at ``sample_rate`` (not mean-subtracted).

    ``channels`` picks how multi-channel audio becomes mono: ``"mix"`` averages the channels, ``"first"``
    keeps channel 0 (what LanguageBind's loader does). Raises :class:`InputError` naming the source for
    unreadable, empty, non-finite or wrongly shaped input.
    """
    source = str(item) if isinstance(item, (str, os.PathLike)) else None
    if source is not None:
        data, rate = read_audio_file(source)
    else:
        raw, rate = _unpack_in_memory(item, sample_rate)
        data = _as_float_array(raw, source)
    wave = _to_mono(data, channels)  # [samples]
    if rate != sample_rate:
        # torchaudio's sinc resampler builds a [new / g, orig / g] kernel (g = gcd of the rates): tiny for
        # 44100 -> 16000 (160 x 441), gigabytes for a rate like 47999 that shares no factor with the target.
        g = math.gcd(rate, sample_rate)
        if (rate // g) * (sample_rate // g) > _MAX_RESAMPLE_KERNEL:
            raise InputError(
                source,
                f"sample rate {rate} Hz shares no useful factor with {sample_rate} Hz (resampling kernel too large)",
                "a standard rate (8, 11.025, 16, 22.05, 32, 44.1, 48, 96 kHz...); convert the file first",
            )
        # The default windowed-sinc resampler (Hann, 6 zero crossings), as LanguageBind uses.
        wave = resampler(rate, sample_rate)(wave)
        _note_resampling(source, rate, sample_rate)
    return wave


_resampling_noted = False  # set by the first resampled input of the process


def _note_resampling(source: str | None, rate: int, sample_rate: int) -> None:
    """Log, once per process, that inputs are resampled and how to make the model take their rate instead."""
    global _resampling_noted
    if _resampling_noted:
        return
    _resampling_noted = True
    log.warning(
        "%s is at %d Hz: resampling it to the model's %d Hz, as every input at another rate (said once). The "
        "model's rate is the audio config's sample_rate: to train at the files' rate, set it in the run config "
        "(modalities: {audio: {sample_rate: %d}}); a checkpoint keeps the rate it was trained at.",
        source or "an in-memory waveform",
        rate,
        sample_rate,
        rate,
    )


@functools.lru_cache(maxsize=16)
def resampler(orig_freq: int, new_freq: int) -> torchaudio.transforms.Resample:
    """torchaudio's default windowed-sinc resampler between two rates, its kernel built once per pair of rates
    (``torchaudio.functional.resample`` rebuilds it on every call). With the kernel in float32, as the
    function builds it for float32 audio, the output is the same bit for bit."""
    return torchaudio.transforms.Resample(orig_freq, new_freq, dtype=torch.float32)


def read_audio_file(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode a file with soundfile -> (float32 array ``[channels, samples]`` scaled to +-1, sample rate).

    Empty, undecodable and truncated files raise :class:`InputError`. A WAV whose data chunk is shorter
    than its header declares is rejected rather than silently read in part.
    """
    path = Path(path)
    size = check_media_file(path, _DECODABLE)  # missing, empty, a folder, a broken link or a link loop
    try:
        with sf.SoundFile(path) as f:
            fmt = f.format
            frames = f.read(dtype="float32", always_2d=True)  # [samples, channels]
            rate = int(f.samplerate)
    except sf.SoundFileError as err:
        problem = getattr(err, "error_string", None) or str(err)
        raise InputError(path, f"cannot decode audio: {problem}", _DECODABLE) from err
    except OSError as err:
        raise InputError(path, f"cannot read the file: {err.strerror or err}", _DECODABLE) from err
    if fmt in ("WAV", "WAVEX"):
        shortfall = _wav_shortfall(path, size)
        if shortfall is not None:
            declared, present = shortfall
            raise InputError(
                path,
                f"truncated WAV: the header declares {declared} bytes of audio but the file holds {present}",
                "a complete file (download or export it again)",
            )
    if frames.shape[0] == 0:
        raise InputError(path, "holds no audio samples (0 frames)", "at least one sample")
    return _checked(frames.T, str(path)), rate


def _wav_shortfall(path: Path, size: int) -> tuple[int, int] | None:
    """(declared, present) bytes of the RIFF ``data`` chunk when the file is cut short, else None."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None  # RF64 / RIFX / W64 variants: leave them to libsndfile
        pos = 12
        while pos + 8 <= size:
            f.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", f.read(8))
            if chunk_id == b"data":
                if chunk_size in (0, 0xFFFFFFFF):  # streamed WAVs leave the size unset: nothing to compare
                    return None
                present = size - pos - 8
                return (chunk_size, present) if present < chunk_size else None
            pos += 8 + chunk_size + (chunk_size & 1)  # RIFF chunks are padded to an even length
    return None


def _unpack_in_memory(item: Any, default_rate: int) -> tuple[Any, int]:
    """Split the in-memory forms into (waveform, sample rate)."""
    if isinstance(item, Mapping):
        if "array" not in item:
            raise InputError(None, f"mapping with keys {sorted(map(str, item))}", _MEMORY_FORMS)
        rate = item.get("sampling_rate", item.get("sample_rate"))
        if rate is None:
            raise InputError(None, "mapping without 'sampling_rate'", _MEMORY_FORMS)
        return item["array"], _checked_rate(rate)
    if isinstance(item, tuple):
        if len(item) != 2:
            raise InputError(None, f"tuple of {len(item)} elements", "(waveform, sample_rate)")
        return item[0], _checked_rate(item[1])
    if isinstance(item, (np.ndarray, torch.Tensor, list)):
        return item, default_rate
    raise InputError(None, f"unsupported input type {type(item).__name__}", _MEMORY_FORMS)


def _checked_rate(rate: Any) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, float, np.integer, np.floating)):
        raise InputError(None, f"sample rate {rate!r} is not a number", "a positive integer rate in Hz")
    if not float(rate).is_integer() or rate <= 0:
        raise InputError(None, f"sample rate {rate!r}", "a positive integer rate in Hz")
    return int(rate)


def _as_float_array(data: Any, source: str | None) -> np.ndarray:
    """Array-like -> float32 numpy array, integer PCM scaled to +-1."""
    if isinstance(data, torch.Tensor):
        data = data.detach().cpu().numpy()
    arr = np.asarray(data)
    if arr.dtype == np.uint8:  # 8-bit PCM is unsigned, centred on 128 (as in 8-bit WAV files)
        arr = (arr.astype(np.float32) - 128.0) / 128.0
    elif arr.dtype in _PCM_SCALE:
        arr = arr.astype(np.float32) / _PCM_SCALE[arr.dtype]
    elif arr.dtype.kind == "f":
        arr = arr.astype(np.float32, copy=False)
    else:
        raise InputError(
            source,
            f"waveform of dtype {arr.dtype}",
            "float samples in [-1, 1] or int8/uint8/int16/int32 PCM",
        )
    return _checked(arr, source)


def _checked(arr: np.ndarray, source: str | None) -> np.ndarray:
    """Shape and value checks shared by files and arrays: [samples] or [channels, samples], finite."""
    if arr.ndim not in (1, 2):
        raise InputError(source, f"waveform of shape {arr.shape}", "[samples] or [channels, samples]")
    if arr.shape[-1] == 0 or (arr.ndim == 2 and arr.shape[0] == 0):
        raise InputError(source, f"waveform of shape {arr.shape} holds no samples", "at least one sample")
    if arr.ndim == 2 and arr.shape[0] > arr.shape[1]:
        # More channels than samples is a transposed [samples, channels] array (soundfile's layout).
        raise InputError(
            source,
            f"waveform of shape {arr.shape} has more channels than samples",
            "[channels, samples]; transpose [samples, channels] arrays such as soundfile.read returns",
        )
    with np.errstate(over="ignore", invalid="ignore"):  # NaN and infinity propagate: one pass, no mask
        finite = np.isfinite((arr.T if arr.T.flags.c_contiguous else arr).sum(dtype=np.float64))
    bad = 0 if finite else int(arr.size - np.isfinite(arr).sum())
    if bad:
        what = "all samples are" if bad == arr.size else f"{bad} of {arr.size} samples are"
        raise InputError(source, f"{what} NaN or infinite", "finite samples")
    return arr


def _to_mono(arr: np.ndarray, channels: ChannelMode) -> torch.Tensor:
    """[samples] or [channels, samples] -> [samples]. A file's array is the transposed view of soundfile's
    [samples, channels] buffer: reduced in that layout, without a transposing copy."""
    if arr.ndim == 2 and arr.shape[0] == 1:
        return torch.from_numpy(np.ascontiguousarray(arr[0]))  # one channel: it is the mix and the first
    if arr.ndim == 2 and not arr.flags.c_contiguous and arr.T.flags.c_contiguous:
        interleaved = torch.from_numpy(arr.T)  # [samples, channels], the buffer as decoded
        if channels == "first":
            return interleaved[:, 0].contiguous()
        if channels == "mix":
            return interleaved.mean(1)
        raise ValueError(f"channels={channels!r}: expected 'mix' or 'first'")
    wave = torch.from_numpy(np.ascontiguousarray(arr))
    if wave.dim() == 1:
        return wave
    if channels == "first":
        return wave[0].contiguous()
    if channels == "mix":
        return wave.mean(0)  # [channels, samples] -> [samples]
    raise ValueError(f"channels={channels!r}: expected 'mix' or 'first'")
