"""`lbind embed`'s job on real recordings: the same rows as BindModel.embed, through worker processes started
before the model is loaded (skipped when the shared realdata folder is absent)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lbind_audio.modality import AudioModality

from lbcore.config import AnchorConfig
from lbcore.embedding import embed_job
from lbcore.encoders import checkpoint_modality
from lbcore.model import BindModel, load
from lbcore.testing import realdata_dir

REAL = realdata_dir()
pytestmark = pytest.mark.skipif(REAL is None, reason="shared realdata folder not found")


@pytest.fixture(scope="module")
def demo_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    mod = AudioModality(AudioModality.config_preset("demo", mel_bins=48))
    model = BindModel(AnchorConfig(), {"audio": mod.build_encoder(16)}, {"audio": mod}, embed_dim=16)
    model.anchor_fingerprint = "f" * 64
    return model.save_pretrained(tmp_path_factory.mktemp("audio-embed") / "ckpt")


def test_embed_job_rows_equal_bind_model_embed_on_real_files(demo_checkpoint: Path, tmp_path: Path) -> None:
    assert REAL is not None
    files = sorted((REAL / "audio" / "esc50" / "audio").glob("*.wav")) + sorted(
        (REAL / "audio" / "demo_clips").glob("*.flac")
    )
    out = tmp_path / "emb.npy"
    result = embed_job(demo_checkpoint, "audio", files, out, batch_size=7, num_workers=2)
    assert result.failed == {} and len(result.embedded) == len(files)

    model = load(demo_checkpoint)
    want = model.embed("audio", [str(f) for f in files], batch_size=7).numpy()
    rows = np.load(out)
    assert rows.shape == want.shape == (len(files), 16)
    np.testing.assert_allclose(rows, want, atol=1e-5)
    assert not np.allclose(rows[0], rows[1])  # different recordings, different rows


def test_checkpoint_modality_is_configured_as_trained_without_weights(demo_checkpoint: Path) -> None:
    mod = checkpoint_modality(demo_checkpoint, "audio")
    assert isinstance(mod, AudioModality)
    assert mod.config.mel_bins == 48 and mod.config.target_length == 192
