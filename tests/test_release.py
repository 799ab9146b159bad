"""What a modality declares through the Modality contract: its released checkpoint layouts (lbcore.release) and
the file extensions it reads, checked against the built-in plugins and the shared real sample files."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import pytest

from lbcore.config import ModalityConfig
from lbcore.errors import CheckpointError, PluginError
from lbcore.modality import Modality
from lbcore.plugins import default_registry, reset_default_registry
from lbcore.release import ReleaseLayout
from lbcore.testing import realdata_dir

BUILTIN = ("audio", "depth", "image", "infrared", "video")


@pytest.fixture
def builtin(monkeypatch: pytest.MonkeyPatch) -> dict[str, type[Modality]]:
    monkeypatch.setenv("LBIND_PLUGINS", ",".join(BUILTIN))
    reset_default_registry()
    registry = default_registry()
    return {name: registry.registered(name).cls for name in registry.modality_names()}


def test_default_grid_and_settings_follow_image_size() -> None:
    layout = ReleaseLayout("LanguageBindX", settings={"num_frames": "frames", "absent": "nowhere"})
    vision = {"image_size": 224, "patch_size": 14, "num_frames": 8, "num_channels": 1}
    assert layout.grid(vision) == (16, 16)
    assert layout.grid({"image_size": [96, 160], "patch_size": 16}) == (6, 10)
    assert layout.grid({}) == (7, 7)  # transformers' CLIPVisionConfig defaults: 224 / 32
    assert layout.read_settings(vision) == {"frames": 8, "image_size": 224, "in_chans": 1}
    assert layout.read_settings({}) == {"image_size": 224, "in_chans": 3}
    plain = ReleaseLayout("LanguageBindY", carries_image_size=False, required=("rate",))
    assert plain.read_settings({"rate": 5, "image_size": [3, 4]}) == {}
    with pytest.raises(CheckpointError, match=r"cfg\.json: vision_config\.rate is missing or 0; a LanguageBindY"):
        plain.read_settings({"rate": 0}, "cfg.json")
    with pytest.raises(CheckpointError, match=r"cfg\.json: image_size 32x48 is not square"):
        layout.read_settings({"image_size": [32, 48]}, "cfg.json")
    with pytest.raises(CheckpointError, match=r"cfg\.json: vision_config\.patch_size is 0; expected a positive"):
        layout.grid({"patch_size": 0}, "cfg.json")
    with pytest.raises(CheckpointError, match=r"image_size \[1, 2, 3\] is not a positive integer"):
        layout.grid({"image_size": [1, 2, 3]})


def _sig(**attrs: Any) -> type[Modality]:
    body = {
        "name": "sig",
        "Config": ModalityConfig,
        "presets": {"languagebind": {}, "demo": {}},
        "preprocess": lambda self, item, train=False: item,
        "example_input": lambda self, seed=0: None,
        "build_stem": lambda self: None,
        **attrs,
    }
    return type("Sig", (Modality,), body)


@pytest.mark.parametrize(
    ("attrs", "problem"),
    [
        ({"extensions": (".WAV",)}, "`extensions` must be a tuple of lower-case suffixes"),
        ({"extensions": ("wav",)}, "`extensions` must be a tuple of lower-case suffixes"),
        ({"extensions": ".wav"}, "`extensions` must be a tuple of lower-case suffixes"),
        ({"releases": ("LanguageBindSig",)}, "`releases` must be a sequence of lbcore.release.ReleaseLayout"),
        ({"releases": (ReleaseLayout("A"), ReleaseLayout("A"))}, "`releases` declares a model_type twice"),
    ],
)
def test_the_contract_checks_the_declarations(attrs: dict[str, Any], problem: str) -> None:
    _sig().check_definition()  # the defaults declare nothing, which is fine
    _sig(extensions=(".wav", ".flac"), releases=[ReleaseLayout("A"), ReleaseLayout("B")]).check_definition()
    with pytest.raises(PluginError, match=problem):
        _sig(**attrs).check_definition()


def test_builtin_plugins_declare_their_languagebind_release(builtin: dict[str, type[Modality]]) -> None:
    declared = {name: [r.model_type for r in cls.releases] for name, cls in builtin.items()}
    assert declared == {
        "audio": ["LanguageBindAudio"],
        "depth": ["LanguageBindDepth"],
        "image": ["LanguageBindImage"],
        "infrared": ["LanguageBindThermal"],
        "video": ["LanguageBindVideo"],
    }
    # Audio's tower was resized to the log-mel image: its grid ignores image_size.
    audio = builtin["audio"].releases[0]
    vision = {"patch_size": 16, "num_mel_bins": 112, "target_length": 1036, "image_size": 224}
    assert audio.grid(vision) == (7, 64)
    assert builtin["depth"].releases[0].grid(vision) == (14, 14)


def _media_files(root: Path) -> dict[str, list[Path]]:
    """The shared real sample files by the modality that reads them (metadata files left out)."""
    lb = root / "languagebind_assets"
    with open(root / "depth" / "labels.csv", newline="") as f:
        depth_rows = list(csv.DictReader(f))
    return {
        "audio": [*(root / "audio").rglob("*.wav"), *(root / "audio").rglob("*.flac"), *(lb / "audio").iterdir()],
        "video": [p for p in (root / "video").iterdir() if p.suffix != ".csv"] + list((lb / "video").iterdir()),
        "depth": [root / "depth" / r["depth_file"] for r in depth_rows] + list((lb / "depth").iterdir()),
        "image": [root / "depth" / r["rgb_file"] for r in depth_rows if r["rgb_file"]]
        + list((lb / "image").iterdir())
        + list((root / "imagebind_assets").glob("*.jpg")),
        "infrared": [p for p in (root / "thermal").rglob("*.jpg") if "visible" not in p.parts]
        + list((lb / "thermal").iterdir()),
    }


@pytest.mark.skipif(realdata_dir() is None, reason="shared realdata folder not found")
def test_builtin_plugins_declare_the_extensions_of_real_samples(builtin: dict[str, type[Modality]]) -> None:
    root = realdata_dir()
    assert root is not None
    for name, files in _media_files(root).items():
        assert files, name
        undeclared = sorted({p.suffix for p in files if p.suffix.lower() not in builtin[name].extensions})
        assert not undeclared, f"{name} does not declare {undeclared} (declares {builtin[name].extensions})"
    assert ".mkv" in builtin["video"].extensions and ".npy" in builtin["depth"].extensions
    assert not set(builtin["audio"].extensions) & set(builtin["image"].extensions)
