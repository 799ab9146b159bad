"""Training-time augmentation (lbind_audio.augment): evaluation input unchanged, training input varied and
reproducible under lbcore.samples.seeded_rng, masks and gains within the configured bounds."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from lbind_audio.augment import AudioAugmentConfig, augment_waveform, mask_spectrogram
from lbind_audio.modality import AudioModality

from lbcore.samples import seeded_rng

OFF = {"gain_db": 0.0, "time_shift": 0.0, "freq_mask_width": 0, "time_mask_width": 0}


def test_presets_turn_augmentation_on_for_demo_only() -> None:
    assert not AudioModality.config_preset("languagebind").augment.enabled
    assert not AudioModality.config_preset("languagebind_ft").augment.enabled
    on = AudioModality.config_preset("demo").augment
    assert on.enabled and on.freq_mask_width > 0 and on.time_mask_width > 0 and on.gain_db > 0


def test_evaluation_input_is_unchanged_by_augmentation_settings(signal: Callable[..., np.ndarray]) -> None:
    wave = signal(3.0)
    with_aug = AudioModality(AudioModality.config_preset("demo"))
    without = AudioModality(AudioModality.config_preset("demo", augment=OFF))
    assert not without.config.augment.enabled
    torch.manual_seed(1)
    a = with_aug.preprocess(wave)
    torch.manual_seed(2)
    b = without.preprocess(wave)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_training_input_differs_and_is_reproducible_with_the_seed(signal: Callable[..., np.ndarray]) -> None:
    mod = AudioModality(AudioModality.config_preset("demo"))
    wave = signal(1.5)  # shorter than the demo's 1.92 s: no random chunk start, every difference is augmentation
    plain = mod.preprocess(wave)
    with seeded_rng(7):
        first = mod.preprocess(wave, train=True)
    with seeded_rng(7):
        again = mod.preprocess(wave, train=True)
    with seeded_rng(8):
        other = mod.preprocess(wave, train=True)
    assert first.shape == plain.shape
    torch.testing.assert_close(first, again, rtol=0, atol=0)
    assert not torch.equal(first, plain) and not torch.equal(first, other)


def zero_runs(mask: torch.Tensor) -> list[int]:
    """Lengths of the runs of True in a 1-D boolean tensor."""
    runs, length = [], 0
    for value in [*mask.tolist(), False]:
        if value:
            length += 1
        elif length:
            runs.append(length)
            length = 0
    return runs


def test_masks_have_the_configured_count_and_widths() -> None:
    cfg = AudioAugmentConfig(freq_masks=1, freq_mask_width=6, time_masks=1, time_mask_width=24)
    widest = [0, 0]
    independent = False
    for seed in range(200):
        torch.manual_seed(seed)
        x = torch.ones(3, 32, 192)
        y = mask_spectrogram(x, cfg)
        assert torch.equal(x, torch.ones(3, 32, 192))  # the input is left alone
        assert set(torch.unique(y).tolist()) <= {0.0, 1.0}
        for chunk in y:
            bands = zero_runs((chunk == 0).all(dim=1))  # masked mel bins: whole rows
            spans = zero_runs((chunk == 0).all(dim=0))  # masked frames: whole columns
            assert len(bands) <= 1 and len(spans) <= 1
            assert all(w < 6 for w in bands) and all(w < 24 for w in spans)
            assert int((chunk == 0).sum()) == 192 * sum(bands) + 32 * sum(spans) - sum(bands) * sum(spans)
            widest = [max(widest[0], *bands, 0), max(widest[1], *spans, 0)]
        independent |= not torch.equal(y[0], y[1])
    assert widest == [5, 23]  # widths are drawn from [0, width): over 200 draws the widest shows up
    assert independent  # each chunk draws its own masks


def test_gain_offsets_the_log_mel_within_the_configured_decibels(signal: Callable[..., np.ndarray]) -> None:
    cfg = AudioModality.config_preset("demo", augment={**OFF, "gain_db": 6.0})
    mod = AudioModality(cfg)
    wave = signal(1.5)
    plain = mod.preprocess(wave)
    bound = 2 * math.log(10 ** (6.0 / 20)) / (2 * cfg.std)  # power x g^2 -> log-mel + 2 ln g, then / (2 std)
    offsets = []
    for seed in range(20):
        with seeded_rng(seed):
            shifted = mod.preprocess(wave, train=True)
        diff = shifted - plain
        assert float(diff.max() - diff.min()) < 1e-3  # one constant offset
        offsets.append(float(diff.mean()))
    assert max(abs(o) for o in offsets) <= bound + 1e-4
    assert min(offsets) < 0 < max(offsets)


def test_time_shift_rolls_the_waveform_by_at_most_the_configured_share() -> None:
    cfg = AudioAugmentConfig(time_shift=0.1)
    wave = torch.arange(1000, dtype=torch.float32)
    seen = set()
    for seed in range(50):
        torch.manual_seed(seed)
        out = augment_waveform(wave, cfg)
        shift = (-int(out[0])) % 1000  # out[0] = wave[-shift]
        assert torch.equal(out, torch.roll(wave, shift if shift <= 100 else shift - 1000))
        assert min(shift, 1000 - shift) <= 100
        seen.add(shift)
    assert len(seen) > 10


@pytest.mark.parametrize("field", ["freq_mask_width", "time_mask_width", "gain_db", "time_shift"])
def test_negative_settings_are_refused(field: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        AudioAugmentConfig(**{field: -1})
