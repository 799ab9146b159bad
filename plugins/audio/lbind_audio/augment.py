"""Training-time audio augmentation: random gain and time shift of the waveform, SpecAugment masks on the log-mel.

Applied only by ``preprocess(..., train=True)``; evaluation input never changes. Every draw comes from torch's
global generator, which :func:`lbcore.samples.seeded_rng` seeds per sample, so an augmented sample is a function
of (run seed, epoch, index). Everything is off by default (and in the ``languagebind`` preset: LanguageBind's
audio recipe augments only by choosing its three chunks at random); the ``demo`` preset turns it on.

* gain: the waveform times ``10 ** (g / 20)``, ``g`` uniform in ``[-gain_db, gain_db]`` dB (on the log-mel, a
  constant offset of the whole image).
* time shift: the waveform rolled (circularly) by ``s`` samples, ``s`` uniform in ``[-time_shift, time_shift]``
  times its length, before the chunks are chosen.
* SpecAugment (Park et al. 2019), with torchaudio's FrequencyMasking / TimeMasking: ``freq_masks`` bands of mel
  bins and ``time_masks`` spans of frames, each of a width drawn uniformly from ``[0, width)``, set to 0, the
  normalised features' mean level; drawn independently for each of the three chunks.
"""

from __future__ import annotations

import torch
import torchaudio.transforms as T
from pydantic import Field

from lbcore.config import StrictModel

__all__ = ["AudioAugmentConfig", "augment_waveform", "mask_spectrogram"]


class AudioAugmentConfig(StrictModel):
    """The ``augment`` section of the audio config: training-time augmentation (all off by default)."""

    gain_db: float = Field(0.0, ge=0, description="Random gain, uniform in [-gain_db, +gain_db] dB (0: off).")
    time_shift: float = Field(
        0.0, ge=0, le=1, description="Random circular shift of the waveform, at most this share of its length (0: off)."
    )
    freq_masks: int = Field(2, ge=0, description="SpecAugment frequency masks per chunk (when freq_mask_width > 0).")
    freq_mask_width: int = Field(
        0, ge=0, description="Widest frequency mask in mel bins (torchaudio's freq_mask_param; 0: off)."
    )
    time_masks: int = Field(2, ge=0, description="SpecAugment time masks per chunk (when time_mask_width > 0).")
    time_mask_width: int = Field(
        0, ge=0, description="Widest time mask in frames of 10 ms (torchaudio's time_mask_param; 0: off)."
    )

    @property
    def enabled(self) -> bool:
        """Whether any augmentation is on."""
        return bool(self.gain_db or self.time_shift or self._freq_on or self._time_on)

    @property
    def _freq_on(self) -> bool:
        return self.freq_masks > 0 and self.freq_mask_width > 0

    @property
    def _time_on(self) -> bool:
        return self.time_masks > 0 and self.time_mask_width > 0


def augment_waveform(wave: torch.Tensor, cfg: AudioAugmentConfig) -> torch.Tensor:
    """Mono ``[samples]`` with a random gain and circular time shift (a new tensor; ``wave`` is left alone)."""
    if cfg.gain_db:
        gain_db = (torch.rand(()) * 2 - 1) * cfg.gain_db
        wave = wave * torch.pow(10.0, gain_db / 20)
    if cfg.time_shift and wave.numel() > 1:
        limit = int(cfg.time_shift * wave.numel())
        shift = int(torch.randint(-limit, limit + 1, ()))
        wave = torch.roll(wave, shift)
    return wave


def mask_spectrogram(x: torch.Tensor, cfg: AudioAugmentConfig) -> torch.Tensor:
    """``[chunks, mel_bins, frames]`` with SpecAugment masks, drawn independently per chunk (a new tensor)."""
    if not (cfg._freq_on or cfg._time_on):
        return x
    batch = x[None]  # [1, chunks, mel, frames]: torchaudio draws iid masks per (example, channel)
    if cfg._freq_on:
        masking = T.FrequencyMasking(min(cfg.freq_mask_width, x.shape[-2]), iid_masks=True)
        for _ in range(cfg.freq_masks):
            batch = masking(batch)
    if cfg._time_on:
        masking = T.TimeMasking(min(cfg.time_mask_width, x.shape[-1]), iid_masks=True)
        for _ in range(cfg.time_masks):
            batch = masking(batch)
    return batch[0]
