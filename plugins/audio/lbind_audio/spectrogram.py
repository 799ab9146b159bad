"""Log-mel input of the audio encoder: Kaldi fbank, three chunks of ``target_length`` frames as channels.

The recipe (LanguageBind's, with deterministic inference): subtract the waveform's mean; Kaldi-compatible
fbank (htk_compat, no energy, Hanning window, 25 ms frames, 10 ms shift, no dither); a clip longer than
``target_length`` frames gives three chunks, one start from each third of the possible starts; a shorter
clip is tiled to ``target_length`` and used three times; ``[3, mel_bins, target_length]`` normalised as
``(x - mean) / (2 * std)``.

Only the frames of the chosen chunks are computed, each frame once: Kaldi frames are independent of each
other (the mean is removed from the whole waveform first), so the fbank of a chunk's samples equals that
chunk of the whole clip's fbank; chunks that overlap are computed as one span. Hour-long clips cost no more
than 31 seconds of audio, and a 15 s clip no more than its own 15 s.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi

log = logging.getLogger(__name__)

FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
NUM_CHUNKS = 3


def frame_geometry(sample_rate: int) -> tuple[int, int]:
    """(window, shift) in samples, computed as torchaudio's Kaldi code does (400 and 160 at 16 kHz)."""
    return int(sample_rate * FRAME_LENGTH_MS * 0.001), int(sample_rate * FRAME_SHIFT_MS * 0.001)


def num_frames(num_samples: int, sample_rate: int) -> int:
    """Frames Kaldi fbank yields for a signal (edges snipped): ``1 + (samples - window) // shift``."""
    window, shift = frame_geometry(sample_rate)
    return 0 if num_samples < window else 1 + (num_samples - window) // shift


def fbank(wave: torch.Tensor, sample_rate: int, mel_bins: int) -> torch.Tensor:
    """Mono ``[samples]`` (at least one window long) -> log-mel filterbank ``[frames, mel_bins]``."""
    return kaldi.fbank(
        wave[None],  # [samples] -> [1, samples]: Kaldi wants a channel axis
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=mel_bins,
        dither=0.0,
        frame_length=FRAME_LENGTH_MS,
        frame_shift=FRAME_SHIFT_MS,
    )


def chunk_starts(
    n_frames: int, target_length: int, train: bool = False, generator: torch.Generator | None = None
) -> list[int]:
    """Start frames of the three chunks of a clip with ``n_frames > target_length`` frames.

    The possible starts ``0 .. n_frames - target_length`` are split into three ranges (numpy array_split).
    At inference: the first start of the first range, the middle one (index len // 2) of the second and
    the last of the third. When training: one uniformly random start per range (torch's RNG, so that
    ``torch.manual_seed`` and DataLoader worker seeding govern it). A range left empty (fewer than three
    possible starts) falls back to start 0, as upstream does.
    """
    ranges = np.array_split(np.arange(n_frames - target_length + 1), NUM_CHUNKS)
    starts = []
    for i, r in enumerate(ranges):
        if len(r) == 0:
            starts.append(0)
        elif train:
            starts.append(int(r[int(torch.randint(len(r), (1,), generator=generator))]))
        else:
            starts.append(int(r[(0, len(r) // 2, len(r) - 1)[i]]))
    return starts


def log_mel_chunks(
    wave: torch.Tensor,
    sample_rate: int,
    mel_bins: int,
    target_length: int,
    mean: float,
    std: float,
    train: bool = False,
    generator: torch.Generator | None = None,
    source: str | None = None,
) -> torch.Tensor:
    """Mono waveform ``[samples]`` -> normalised log-mel chunks ``[3, mel_bins, target_length]`` (float32).

    A clip shorter than one 25 ms frame is zero-padded (after mean removal, so the padding is the clip's
    own DC level) to exactly one frame, which is then tiled like any short clip.
    """
    window, shift = frame_geometry(sample_rate)
    wave = wave.to(torch.float32)
    wave = wave - wave.mean()
    if wave.numel() < window:
        log.warning(
            "%s: %d samples is shorter than one %g ms frame; zero-padding to %d samples",
            source or "<in-memory input>",
            wave.numel(),
            FRAME_LENGTH_MS,
            window,
        )
        wave = torch.nn.functional.pad(wave, (0, window - wave.numel()))
    n = num_frames(wave.numel(), sample_rate)
    if n <= target_length:
        mel = fbank(wave, sample_rate, mel_bins)  # [n, mel_bins]
        reps = -(-target_length // n)  # ceil: tile the clip, then cut to the target length
        chunk = mel.repeat(reps, 1)[:target_length]  # [target_length, mel_bins]
        chunks = [chunk] * NUM_CHUNKS
    else:
        starts = chunk_starts(n, target_length, train=train, generator=generator)
        by_start: dict[int, torch.Tensor] = {}
        for first, end in merged_spans(starts, target_length):
            # The samples covering frames first .. end - 1, once for chunks that overlap or touch.
            mel = fbank(wave[first * shift : (end - 1) * shift + window], sample_rate, mel_bins)  # [end - first, mel]
            by_start.update({s: mel[s - first : s - first + target_length] for s in starts if first <= s < end})
        chunks = [by_start[s] for s in starts]
    return _normalised(chunks, mean, std)


def _normalised(chunks: list[torch.Tensor], mean: float, std: float) -> torch.Tensor:
    """Chunks [frames, mel] -> contiguous [len(chunks), mel, frames] as ``(x - mean) / (2 * std)``, each
    distinct chunk transposed, shifted and scaled in one pass into the output (a repeated chunk is copied)."""
    frames, bins = chunks[0].shape
    out = torch.empty(len(chunks), bins, frames)
    first_of: dict[int, int] = {}
    for i, chunk in enumerate(chunks):
        if id(chunk) in first_of:
            out[i] = out[first_of[id(chunk)]]
            continue
        torch.sub(chunk.T, mean, out=out[i])
        out[i].div_(2 * std)
        first_of[id(chunk)] = i
    return out


def merged_spans(starts: list[int], length: int) -> list[tuple[int, int]]:
    """The frame ranges [first, end), ascending, that cover the chunks [s, s + length) of ``starts``, chunks
    that overlap or touch merged into one range: a 15 s clip's three 1036-frame chunks share most of their
    frames, and computing them once costs half of computing each."""
    spans: list[tuple[int, int]] = []
    for s in sorted(starts):
        if spans and s <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(spans[-1][1], s + length))
        else:
            spans.append((s, s + length))
    return spans
