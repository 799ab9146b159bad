"""The log-mel recipe against REFERENCE.md, computed independently with torchaudio's Kaldi fbank."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchaudio.compliance.kaldi as kaldi
from lbind_audio.modality import AudioModality

from lbcore.errors import ConfigError

MEAN, STD = -4.2677393, 4.5689974  # REFERENCE.md: (x + 4.2677393) / (2 * 4.5689974)


def reference_fbank(wave: np.ndarray, mel_bins: int) -> torch.Tensor:
    """REFERENCE.md's fbank, spelled out: mean removed, Kaldi fbank with the listed options -> [frames, mel]."""
    w = torch.as_tensor(wave, dtype=torch.float32)
    w = w - w.mean()
    return kaldi.fbank(
        w[None],
        htk_compat=True,
        sample_frequency=16000,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=mel_bins,
        dither=0.0,
        frame_length=25,
        frame_shift=10,
    )


def normalise(x: torch.Tensor) -> torch.Tensor:
    return (x + 4.2677393) / (2 * 4.5689974)


def reference_starts(n_frames: int, target: int) -> list[np.ndarray]:
    return np.array_split(np.arange(n_frames - target + 1), 3)


def test_languagebind_shape_grid_and_667_positions(languagebind, signal) -> None:
    x = languagebind.preprocess(signal(3.0))
    assert x.shape == (3, 126, 1036) and x.dtype == torch.float32
    small = AudioModality(
        AudioModality.config_preset("languagebind", encoder={"width": 32, "depth": 1, "heads": 2})
    )  # the LanguageBind input geometry on a tiny trunk
    encoder = small.build_encoder(8).eval()
    assert encoder.stem.grid_size == (9, 74)
    assert encoder.trunk.position_embedding.shape == (667, 32)
    with torch.no_grad():
        out = encoder(x[None])
    assert out.shape == (1, 8) and torch.isfinite(out).all()


def test_fine_tuned_preset_has_112_bins_and_593_positions(signal) -> None:
    m = AudioModality(AudioModality.config_preset("languagebind_ft", encoder={"width": 32, "depth": 1, "heads": 2}))
    assert m.preprocess(signal(1.0)).shape == (3, 112, 1036)
    assert m.build_encoder(8).trunk.position_embedding.shape[0] == 593


def test_languagebind_preset_recipe() -> None:
    cfg = AudioModality.config_preset("languagebind")
    assert (cfg.encoder.width, cfg.encoder.depth, cfg.encoder.heads, cfg.encoder.patch_size) == (1024, 24, 16, 14)
    assert cfg.mask_ratio == 0.1
    assert (cfg.lora.rank, cfg.lora.alpha) == (16, 16.0)
    assert sorted(cfg.lora.targets) == ["k_proj", "out_proj", "q_proj", "v_proj"]
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.epochs, cfg.optim.batch_size) == (1e-3, 2000, 16, 1024)
    assert (cfg.sample_rate, cfg.mel_bins, cfg.target_length, cfg.mean, cfg.std) == (16000, 126, 1036, MEAN, STD)
    assert AudioModality.templates == ("a sound of {}.",)


def test_short_clip_matches_manual_fbank_tiled(languagebind, signal) -> None:
    wave = signal(2.0)
    ref = reference_fbank(wave, 126)  # [198, 126]
    assert ref.shape[0] == 198
    tiled = ref.repeat(6, 1)[:1036].T  # tile to the target length -> [126, 1036]
    expected = normalise(torch.stack([tiled] * 3))
    torch.testing.assert_close(languagebind.preprocess(wave), expected, rtol=0, atol=1e-5)


def test_long_clip_chunks_match_manual_fbank(languagebind, signal) -> None:
    wave = signal(12.0)
    ref = normalise(reference_fbank(wave, 126)).T  # [126, frames]
    n = ref.shape[1]
    ranges = reference_starts(n, 1036)
    starts = [ranges[0][0], ranges[1][len(ranges[1]) // 2], ranges[2][-1]]
    expected = torch.stack([ref[:, s : s + 1036] for s in starts])
    x = languagebind.preprocess(wave)
    torch.testing.assert_close(x, expected, rtol=0, atol=1e-5)
    assert starts[-1] == n - 1036  # the last chunk ends on the last frame
    assert not torch.allclose(x[0], x[1]) and not torch.allclose(x[1], x[2])


def test_eval_is_deterministic_whatever_the_rng(languagebind, signal) -> None:
    wave = signal(25.0)
    torch.manual_seed(1)
    a = languagebind.preprocess(wave)
    torch.manual_seed(2)
    np.random.seed(3)
    b = AudioModality(languagebind.config).preprocess(wave)
    assert torch.equal(a, b)


def test_train_picks_random_chunks_from_the_three_ranges(demo, signal) -> None:
    wave = signal(5.0)
    ref = normalise(reference_fbank(wave, 32)).T  # [32, 498]
    n, target = ref.shape[1], demo.config.target_length
    ranges = reference_starts(n, target)
    windows = ref.unfold(1, target, 1).permute(1, 0, 2)  # every possible chunk: [n - target + 1, 32, target]
    seen = set()
    for seed in range(6):
        torch.manual_seed(seed)
        x = demo.preprocess(wave, train=True)
        starts = []
        for i in range(3):
            err = (windows - x[i]).abs().flatten(1).max(1).values
            s = int(err.argmin())
            assert err[s] < 1e-5, "a training chunk is not a window of the clip's fbank"
            assert s in ranges[i], f"chunk {i} starts at {s}, outside its range"
            starts.append(s)
        seen.add(tuple(starts))
        torch.manual_seed(seed)
        assert torch.equal(demo.preprocess(wave, train=True), x), "torch.manual_seed must make training repeatable"
    assert len(seen) > 1, "training chunks never change"


def test_two_possible_starts_follow_upstream(demo, signal) -> None:
    # target + 1 frames -> starts {0, 1}: array_split gives [0], [1], [] and the empty range falls back to 0.
    target = demo.config.target_length
    wave = signal(((target + 1 - 1) * 160 + 400) / 16000)
    ref = normalise(reference_fbank(wave, 32)).T
    assert ref.shape[1] == target + 1
    x = demo.preprocess(wave)
    for chunk, start in zip(x, (0, 1, 0), strict=True):
        torch.testing.assert_close(chunk, ref[:, start : start + target], rtol=0, atol=1e-5)
    assert demo.preprocess(wave, train=True).shape == x.shape


def test_clip_shorter_than_one_frame_is_zero_padded(demo, caplog) -> None:
    wave = np.random.default_rng(0).uniform(-0.5, 0.5, 100).astype(np.float32)
    centred = wave - wave.mean()
    padded = np.concatenate([centred, np.zeros(300, np.float32)])  # one 400-sample frame
    frame = normalise(reference_fbank(padded, 32))[0]  # [32]; padded is already zero-mean up to rounding
    x = demo.preprocess(wave)
    torch.testing.assert_close(x, frame[None, :, None].expand(3, 32, demo.config.target_length), rtol=0, atol=1e-4)
    assert "shorter than one 25 ms frame" in caplog.text


def test_silence_is_the_log_floor(languagebind) -> None:
    x = languagebind.preprocess(np.zeros(16000, np.float32))
    floor = (np.log(np.finfo(np.float32).eps) - MEAN) / (2 * STD)  # Kaldi clamps energies to float eps
    torch.testing.assert_close(x, torch.full_like(x, floor), rtol=0, atol=1e-5)


def test_patch_larger_than_the_image_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="smaller than one 8 x 8 patch"):
        AudioModality.config_preset("demo", mel_bins=4)


def test_demo_preset_is_small() -> None:
    cfg = AudioModality.config_preset("demo")
    grid = (cfg.mel_bins // cfg.encoder.patch_size, cfg.target_length // cfg.encoder.patch_size)
    assert grid[0] * grid[1] <= 128 and cfg.encoder.width <= 64 and cfg.encoder.depth <= 2
    assert cfg.lora.rank == 0  # trained from scratch: no base weights to adapt
