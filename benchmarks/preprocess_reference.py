"""Minimal reference preprocessing pipelines: the obvious code for each modality's LanguageBind recipe.

Each function is what someone would write with the libraries at hand (Pillow, soundfile, torchaudio's Kaldi
fbank, decord, torchvision), with no lbind code and none of lbind's input checks. They take a file path and
the recipe's numbers, and return the tensor lbind's ``preprocess`` must return at inference.
``benchmarks/preprocess.py`` times lbind against them; ``tests/test_preprocess_reference.py`` checks on the
real sample files that lbind returns the same tensors (bit-identical for images, depth and video in the
``exact`` decode mode; within 1e-5 for audio, whose chunks lbind computes from their own samples).
"""

from __future__ import annotations

import math

import numpy as np
import soundfile as sf
import torch
import torchaudio.compliance.kaldi as kaldi
import torchaudio.functional as AF
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
AUDIO_MEAN, AUDIO_STD = -4.2677393, 4.5689974
AUDIO_TOLERANCE = 1e-5
"""Largest difference allowed between lbind's audio features and the reference's (normalised units)."""


def _resize_crop_normalize(
    x: torch.Tensor, size: int, mode: InterpolationMode, antialias: bool = False
) -> torch.Tensor:
    """Short side to ``size`` (no antialiasing unless asked, as LanguageBind's torchvision 0.14), centre crop,
    CLIP normalisation."""
    x = TF.resize(x, [size], interpolation=mode, antialias=antialias)
    x = TF.center_crop(x, [size, size])
    return TF.normalize(x, CLIP_MEAN, CLIP_STD)


def image(path: str, size: int = 224, antialias: bool = False) -> torch.Tensor:
    """RGB and infrared: any image as RGB, / 255, bicubic short-side resize (antialiased for the image
    modality, whose OpenCLIP weights saw PIL's resize), centre crop -> [3, S, S]."""
    rgb = TF.pil_to_tensor(Image.open(path).convert("RGB"))  # uint8 [3, H, W]
    return _resize_crop_normalize(rgb.float() / 255, size, InterpolationMode.BICUBIC, antialias)


def depth(path: str, size: int = 224, max_depth: float = 10.0) -> torch.Tensor:
    """Depth: uint16 millimetre PNG -> metres, clipped to [0.01, max_depth], / max_depth, three channels,
    bicubic short-side resize, centre crop -> [3, S, S]."""
    metres = np.asarray(Image.open(path), dtype=np.float32) / 1000.0
    x = torch.from_numpy(np.clip(metres, 0.01, max_depth) / max_depth)
    return _resize_crop_normalize(x.repeat(3, 1, 1), size, InterpolationMode.BICUBIC)


def video(path: str, size: int = 224, num_frames: int = 8) -> torch.Tensor:
    """Video: decord, frames at linspace(0, n - 1, num_frames) (rounded down), / 255, bilinear short-side
    resize, centre crop -> [3, T, S, S]."""
    import decord  # heavy and optional: only the video reference needs it

    reader = decord.VideoReader(path, num_threads=1)
    indices = np.linspace(0, len(reader) - 1, num_frames, dtype=int).tolist()
    frames = torch.from_numpy(reader.get_batch(indices).asnumpy())  # uint8 [T, H, W, 3]
    x = frames.permute(0, 3, 1, 2).float() / 255
    return _resize_crop_normalize(x, size, InterpolationMode.BILINEAR).transpose(0, 1)


def audio(path: str, mel_bins: int = 126, target_length: int = 1036, rate: int = 16000) -> torch.Tensor:
    """Audio: soundfile, channels averaged, resampled to 16 kHz, mean removed, Kaldi fbank of the whole clip;
    three chunks of ``target_length`` frames (first, middle and last start of the three thirds of the possible
    starts) or the clip tiled -> [3, mel_bins, target_length]."""
    data, file_rate = sf.read(path, dtype="float32", always_2d=True)  # [samples, channels]
    wave = torch.from_numpy(data.T.copy()).mean(0)
    if file_rate != rate:
        wave = AF.resample(wave, orig_freq=file_rate, new_freq=rate)
    wave = wave - wave.mean()
    mel = kaldi.fbank(
        wave[None],
        htk_compat=True,
        sample_frequency=rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=mel_bins,
        dither=0.0,
        frame_length=25.0,
        frame_shift=10.0,
    )  # [frames, mel_bins]
    n = mel.shape[0]
    if n <= target_length:
        chunks = [mel.repeat(math.ceil(target_length / n), 1)[:target_length]] * 3
    else:
        thirds = np.array_split(np.arange(n - target_length + 1), 3)
        starts = [int(r[pick]) if len(r) else 0 for r, pick in zip(thirds, (0, len(thirds[1]) // 2, -1), strict=True)]
        chunks = [mel[s : s + target_length] for s in starts]
    x = torch.stack(chunks).transpose(1, 2)  # [3, mel_bins, target_length]
    return (x - AUDIO_MEAN) / (2 * AUDIO_STD)
