"""The Python API's README example (``lbcore.load`` -> embed / embed_text / similarity), run as written against a
real audio checkpoint (the audio plugin's demo-size encoder, a tiny BERT anchor) in a scratch folder."""

from __future__ import annotations

import importlib
import re
import wave
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

# Kept identical to the "Using a trained model" block of README.md (test_readme_block_matches_this_copy checks).
README_EXAMPLE = """\
import numpy as np

import lbcore

model = lbcore.load("runs/demo/audio/final")  # a checkpoint folder, e.g. the one `make demo` trains
print(sorted(model.modalities))  # what it can embed: ['audio']

sounds = model.embed("audio", ["dog.wav", "rain.wav"])  # [2, E] float32, L2-normalised
texts = model.embed_text(["a dog barking", "rain on a roof"])  # [2, E], from the text-embedding cache
scores = model.similarity(texts, sounds)  # [2, 2] cosine similarities: rows texts, columns sounds
print(scores.argmax(dim=0))  # for each sound, the closest text

tone = np.sin(2 * np.pi * 440 * np.arange(16000) / 16000).astype(np.float32)  # 1 s at 16 kHz
print(model.embed("audio", [tone]).shape)  # arrays work too: torch.Size([1, E])
"""

EMBED = 16


def write_wav(path: Path, freq: float, seconds: float = 1.5, rate: int = 16000) -> None:
    t = np.arange(int(seconds * rate)) / rate
    pcm = (0.3 * np.sin(2 * np.pi * freq * t) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(rate)
        f.writeframes(pcm.tobytes())


@pytest.fixture
def audio_checkpoint(anchor_dir: Path, tmp_path: Path) -> Path:
    """``runs/demo/audio/final`` under ``tmp_path``: the audio plugin's demo-size encoder, untrained."""
    from lbcore.anchor import Anchor
    from lbcore.config import AnchorConfig
    from lbcore.model import BindModel
    from lbcore.plugins import default_registry

    try:
        module = importlib.import_module("lbind_audio")
    except ImportError as err:
        pytest.skip(f"the audio plugin is not installed: {err}")
    default_registry().add_plugin(module, "audio")
    cls = default_registry().registered("audio").cls
    audio = cls(cls.config_preset("demo"))
    anchor_cfg = AnchorConfig(name=str(anchor_dir), max_length=16)
    anchor = Anchor.from_config(anchor_cfg)
    torch.manual_seed(0)
    model = BindModel(
        anchor_cfg,
        {"audio": audio.build_encoder(anchor.embed_dim)},
        {"audio": audio},
        anchor_fingerprint=anchor.fingerprint,
        embed_dim=anchor.embed_dim,
    )
    return model.save_pretrained(tmp_path / "runs" / "demo" / "audio" / "final")


def test_readme_example_runs(audio_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_wav(tmp_path / "dog.wav", 600.0)
    write_wav(tmp_path / "rain.wav", 3000.0)
    namespace: dict[str, Any] = {}
    exec(compile(README_EXAMPLE, "README example", "exec"), namespace)
    sounds, texts, scores = namespace["sounds"], namespace["texts"], namespace["scores"]
    assert sounds.shape == (2, EMBED) and texts.shape == (2, EMBED) and scores.shape == (2, 2)
    torch.testing.assert_close(sounds.norm(dim=-1), torch.ones(2))
    torch.testing.assert_close(texts.norm(dim=-1), torch.ones(2))
    # the similarity is the cosine of the two normalised embeddings, text rows x sound columns
    torch.testing.assert_close(scores, torch.nn.functional.cosine_similarity(texts[:, None], sounds[None], dim=-1))
    assert not torch.allclose(sounds[0], sounds[1])  # two different sounds, two different embeddings


def test_readme_block_matches_this_copy() -> None:
    readme = Path(__file__).resolve().parents[1] / "README.md"
    blocks = re.findall(r"```python\n(.*?)```", readme.read_text(encoding="utf-8"), flags=re.S)
    ours = [b for b in blocks if 'lbcore.load("runs/demo/audio/final")' in b]
    if not ours:
        pytest.skip("README.md has no 'Using a trained model' example yet")
    assert ours[0] == README_EXAMPLE
