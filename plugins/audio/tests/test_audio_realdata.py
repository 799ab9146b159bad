"""Real recordings from the shared realdata folder (skipped when it is absent): ESC-50, Clotho, UrbanSound8K
(stereo), the ViT-Lens / ONE-PEACE / UniBind demo clips (FLAC and WAV) and the LanguageBind / ImageBind assets."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import torch
from lbind_audio.waveform import load_waveform

from lbcore.testing import realdata_dir

REAL = realdata_dir()
pytestmark = pytest.mark.skipif(REAL is None, reason="shared realdata folder not found")

FOLDERS = [
    "audio/esc50/audio",
    "audio/clotho_eval_samples",
    "audio/urbansound8k_samples",
    "audio/demo_clips",
    "languagebind_assets/audio",
    "imagebind_assets",
]
FILES = sorted(p for f in FOLDERS for p in (REAL / f).glob("*") if p.suffix in (".wav", ".flac")) if REAL else []
LOG_FLOOR = (np.log(np.finfo(np.float32).eps) + 4.2677393) / (2 * 4.5689974)  # the lowest value Kaldi can give


def test_every_folder_has_audio() -> None:
    found = {str(p.parent.relative_to(REAL)) for p in FILES}
    assert found == set(FOLDERS)
    assert sum(p.suffix == ".flac" for p in FILES) >= 6


@pytest.mark.parametrize("path", FILES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_real_clip(languagebind, path) -> None:
    x = languagebind.preprocess(path)
    assert x.shape == (3, 126, 1036) and x.dtype == torch.float32
    assert torch.isfinite(x).all()
    assert x.min() >= LOG_FLOOR - 1e-4 and x.max() < 4.0
    assert x.std() > 0.05, "a real recording gave a (near) constant spectrogram"
    assert torch.equal(languagebind.preprocess(str(path)), x)  # deterministic, str or Path alike
    frames = 1 + (int(sf.info(path).duration * 16000) - 400) // 160
    if frames <= 1036:  # tiled: the three channels are the same chunk
        assert torch.equal(x[0], x[1]) and torch.equal(x[1], x[2])
    else:
        assert not torch.equal(x[0], x[2])


def test_esc50_clip_is_tiled_after_resampling(languagebind) -> None:
    path = REAL / "audio/esc50/audio/5-203128-A-0.wav"  # 5 s at 44.1 kHz -> 80000 samples -> 498 frames
    x = languagebind.preprocess(path)
    torch.testing.assert_close(x[:, :, :498], x[:, :, 498:996], rtol=0, atol=0)
    assert not torch.equal(x[:, :, :498], x[:, :, 1:499])


@pytest.mark.parametrize(
    "rel",
    [
        "audio/esc50/audio/5-151085-A-20.wav",
        "audio/urbansound8k_samples/100648-1-0-0.wav",
        "imagebind_assets/bird_audio.wav",
    ],
)
def test_real_wav_samples_equal_an_independent_decoder(rel, decode_pcm_wav) -> None:
    path = REAL / rel
    reference = decode_pcm_wav(path)  # [channels, samples]
    rate = sf.info(path).samplerate
    np.testing.assert_array_equal(load_waveform(path, rate, "first").numpy(), reference[0])
    np.testing.assert_allclose(load_waveform(path, rate, "mix").numpy(), reference.mean(0), rtol=0, atol=1e-7)
