"""Loader and demo-data tests of the {{ cookiecutter.name }} modality.

TODO(plugin): add tests for your own loader on real sample files (skip when they are absent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from lbcore.errors import InputError
from lbcore.manifest import read_manifest

from {{ cookiecutter.package }}.demo import CONCEPTS, COUNTS
from {{ cookiecutter.package }}.modality import {{ cookiecutter.class_prefix }}Modality


@pytest.fixture
def modality() -> {{ cookiecutter.class_prefix }}Modality:
    return {{ cookiecutter.class_prefix }}Modality({{ cookiecutter.class_prefix }}Modality.config_preset("demo"))


def _signal(modality: {{ cookiecutter.class_prefix }}Modality, length: int = 150) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.standard_normal((length, modality.config.channels)).astype(np.float32)


def test_npy_csv_and_array_give_the_same_tensor(modality, tmp_path: Path) -> None:
    signal = _signal(modality)
    np.save(tmp_path / "a.npy", signal)
    header = ",".join(f"c{i}" for i in range(signal.shape[1]))
    np.savetxt(tmp_path / "a.csv", signal, delimiter=",", header=header, comments="", fmt="%.9g")
    np.savetxt(tmp_path / "bare.csv", signal, delimiter=",", fmt="%.9g")  # no header row
    from_array = modality.preprocess(signal)
    assert from_array.shape == (modality.config.channels, modality.config.window)
    for name in ("a.npy", "a.csv", "bare.csv"):
        assert torch.allclose(modality.preprocess(tmp_path / name), from_array, atol=1e-6), name


def test_eval_crop_is_the_centre_and_short_signals_are_zero_padded(modality) -> None:
    window = modality.config.window
    ramp = np.repeat(np.arange(window + 10, dtype=np.float32)[:, None], modality.config.channels, axis=1)
    out = modality.preprocess(ramp)
    assert out[0, 0].item() == 5.0 and out[0, -1].item() == window + 4  # centred: 5 steps cut at each end
    short = modality.preprocess(np.ones((window // 2, modality.config.channels), dtype=np.float32))
    assert short[:, : window // 2].eq(1).all() and short[:, window // 2 :].eq(0).all()


def test_normalisation_uses_the_configured_mean_and_std() -> None:
    cls = {{ cookiecutter.class_prefix }}Modality
    channels = cls.config_preset("demo").channels
    mean, std = tuple(float(i) for i in range(channels)), (2.0,) * channels
    m = cls(cls.config_preset("demo", mean=mean, std=std))
    x = np.tile(np.asarray(mean, dtype=np.float32) + 4.0, (m.config.window, 1))  # every value 4 above its mean
    assert torch.allclose(m.preprocess(x), torch.full((channels, m.config.window), 2.0))


def test_wrong_channel_count_is_a_typed_error_naming_the_file(modality, tmp_path: Path) -> None:
    path = tmp_path / "wide.npy"
    np.save(path, np.zeros((50, modality.config.channels + 1), dtype=np.float32))
    with pytest.raises(InputError, match="channels") as err:
        modality.preprocess(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("filename", "content", "problem"),
    [
        ("empty.npy", b"", "empty file"),
        ("header_only.csv", b"a,b,c\n", "no data rows"),
        ("words.csv", b"1,2,3\n4,five,6\n", "non-numeric"),
        ("notes.txt", b"1,2,3\n", "unsupported file type"),
    ],
)
def test_bad_files_are_typed_errors(modality, tmp_path: Path, filename: str, content: bytes, problem: str) -> None:
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(InputError, match=problem):
        modality.preprocess(path)


def test_nan_and_empty_arrays_are_typed_errors(modality) -> None:
    signal = _signal(modality)
    signal[7, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        modality.preprocess(signal)
    with pytest.raises(InputError, match="empty signal"):
        modality.preprocess(np.zeros((0, modality.config.channels), dtype=np.float32))


def test_demo_data_is_deterministic_with_manifests(modality, tmp_path: Path) -> None:
    a, b, other = tmp_path / "a", tmp_path / "b", tmp_path / "other"
    modality.make_demo_data(a, seed=0)
    modality.make_demo_data(b, seed=0)
    modality.make_demo_data(other, seed=1)
    for split, count in COUNTS.items():
        entries = read_manifest(a / f"{split}.jsonl")  # also checks that every listed file exists
        assert len(entries) == count * len(CONCEPTS)
        assert {e.label for e in entries} == {c.label for c in CONCEPTS}
        assert all(len(e.captions) >= 2 for e in entries)
        assert (a / f"{split}.jsonl").read_text() == (b / f"{split}.jsonl").read_text()
        first = entries[0].path.relative_to(a)
        assert (a / first).read_bytes() == (b / first).read_bytes()
        assert (a / first).read_bytes() != (other / first).read_bytes(), "another seed must draw other recordings"
        batch = torch.stack([modality.preprocess(e.path) for e in entries[:: count + 1]])  # .npy and .csv files
        assert torch.isfinite(batch).all()
