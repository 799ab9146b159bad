"""IMU loader, resampling, augmentation and demo-data tests (the contract battery is in test_contract.py)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from lbcore.errors import InputError
from lbcore.manifest import read_manifest

from lbind_imu.demo import CONCEPTS, SPLITS, G
from lbind_imu.modality import ImuModality
from lbind_imu.signal import CHANNELS, load_recording, resample

RATE = 50.0


def _modality(**overrides) -> ImuModality:
    """The demo preset at one rate in and out (no resampling) unless overridden."""
    settings = {"sample_rate": RATE, "input_rate": RATE, "window": 64, **overrides}
    return ImuModality(ImuModality.config_preset("demo", **settings))


def _readings(n: int = 100, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 3, (n, 6)) + np.array([0, 0, G, 0, 0, 0])  # [n, 6]


def _write_csv(path: Path, table: np.ndarray, header: str | None) -> Path:
    np.savetxt(path, table, delimiter=",", header=header or "", comments="", fmt="%.10g")
    return path


def test_npy_csv_and_array_forms_give_the_same_tensor(tmp_path: Path) -> None:
    m = _modality()
    readings = _readings()
    times = np.arange(len(readings)) / RATE
    timed = np.concatenate([times[:, None], readings], axis=1)  # [T, 7]
    np.save(tmp_path / "plain.npy", readings)
    np.save(tmp_path / "timed.npy", timed)
    _write_csv(tmp_path / "bare.csv", readings, None)
    _write_csv(tmp_path / "named.csv", timed, "time,ax,ay,az,gx,gy,gz")
    # A header in another column order, with aliases and an extra column, is read by name.
    shuffled = np.concatenate([readings[:, 3:], np.zeros((len(readings), 1)), times[:, None], readings[:, :3]], 1)
    _write_csv(tmp_path / "aliases.csv", shuffled, "Gyro_X,gyro_y,GYRO_Z,label,timestamp,acc_x,acc_y,acc z")
    expected = m.preprocess(readings)
    assert expected.shape == (6, 64) and expected.dtype == torch.float32
    by_hand = (readings[18:82] / np.array([G, G, G, 2, 2, 2])).T  # centre crop of 100 -> 64, default std
    assert torch.allclose(expected, torch.from_numpy(by_hand).float(), atol=1e-6)
    sources = [
        "plain.npy",
        "timed.npy",
        "bare.csv",
        "named.csv",
        "aliases.csv",
    ]
    for name in sources:
        assert torch.allclose(m.preprocess(tmp_path / name), expected, atol=1e-5), name
    assert torch.allclose(m.preprocess(torch.from_numpy(readings)), expected, atol=1e-6)
    assert torch.allclose(m.preprocess((readings, RATE)), expected, atol=1e-6)


def test_units_g_and_degrees_per_second_are_converted() -> None:
    readings = _readings()
    si = _modality().preprocess(readings)
    converted = readings * np.array([1 / G, 1 / G, 1 / G, 180 / math.pi, 180 / math.pi, 180 / math.pi])
    other = _modality(accel_unit="g", gyro_unit="deg/s").preprocess(converted)
    assert torch.allclose(other, si, atol=1e-5)


def _sine(rate: float, seconds: float, freq: float, amplitude: float = 5.0) -> tuple[np.ndarray, np.ndarray]:
    t = np.arange(int(seconds * rate)) / rate
    return t, amplitude * np.repeat(np.sin(2 * math.pi * freq * t)[:, None], 6, axis=1)


def test_resampling_from_timestamps_matches_sampling_at_the_target_rate(tmp_path: Path) -> None:
    # 2 Hz at 100 Hz with jittery timestamps, read at 25 Hz, against the same sine sampled at 25 Hz directly.
    t, fast = _sine(100.0, 4.0, 2.0)
    t[1:] += np.random.default_rng(0).uniform(-0.002, 0.002, t.size - 1)  # the first stays at 0, the grid's start
    fast = 5.0 * np.repeat(np.sin(2 * math.pi * 2.0 * t)[:, None], 6, axis=1)
    _write_csv(tmp_path / "fast.csv", np.concatenate([t[:, None], fast], 1), "time,ax,ay,az,gx,gy,gz")
    m = _modality(sample_rate=25.0, input_rate=25.0, window=96, std=(1.0,) * 6)
    _, slow = _sine(25.0, 4.0, 2.0)
    # The 5-tap anti-alias average scales a 2 Hz sine at 100 Hz by sin(5 pi 2/100) / (5 sin(pi 2/100)) = 0.984,
    # i.e. by at most 0.08 of the amplitude 5; a time shift of the average would cost more than that.
    assert torch.allclose(m.preprocess(tmp_path / "fast.csv"), m.preprocess(slow), atol=0.1)


def test_downsampling_attenuates_content_above_the_new_nyquist_frequency() -> None:
    # 20 Hz is above 25 Hz's Nyquist (12.5 Hz): without the low-pass it would fold to 5 Hz at full amplitude.
    _, fast = _sine(100.0, 4.0, 20.0, amplitude=1.0)
    rec = load_recording((fast, 100.0), input_rate=25.0)
    slow = resample(rec, 25.0)
    assert slow.shape == (100, 6)  # 0 to 3.99 s at 25 Hz
    assert np.abs(slow[4:-4]).max() < 0.35


def test_a_uniform_recording_at_the_target_rate_is_not_resampled() -> None:
    readings = _readings()
    rec = load_recording(readings, input_rate=RATE)
    assert resample(rec, RATE) is rec.values


def test_training_rotation_keeps_each_sensor_magnitude_and_is_seeded() -> None:
    m = _modality(window=100, scale_jitter=0.0, rotate_degrees=30.0)
    readings = _readings()
    still = m.preprocess(readings)
    torch.manual_seed(0)
    turned = m.preprocess(readings, train=True)
    torch.manual_seed(0)
    assert torch.equal(turned, m.preprocess(readings, train=True))
    assert not torch.allclose(turned, still, atol=1e-3)
    for rows in (slice(0, 3), slice(3, 6)):  # a rotation keeps the length of each sensor's vector
        assert torch.allclose(turned[rows].norm(dim=0), still[rows].norm(dim=0), atol=1e-4)


def test_short_recordings_are_padded_and_long_ones_centre_cropped() -> None:
    m = _modality(window=64, std=(1.0,) * 6)
    ramp = np.repeat(np.arange(80, dtype=np.float64)[:, None], 6, axis=1)
    assert m.preprocess(ramp)[0, 0].item() == 8.0  # (80 - 64) // 2 steps cut at the start
    short = m.preprocess(np.ones((40, 6)))
    assert short[:, :40].eq(1).all() and short[:, 40:].eq(0).all()


@pytest.mark.parametrize(
    ("table", "problem"),
    [
        (np.zeros((50, 5)), "5 columns"),
        (np.zeros((50, 8)), "8 columns"),
        (np.zeros((6, 50)), "transpose it"),
        (np.zeros((0, 6)), "empty recording"),
        (np.zeros((1, 6)), "a single time step"),
        (np.zeros(50), "array of shape"),
    ],
)
def test_bad_arrays_are_typed_errors(table: np.ndarray, problem: str) -> None:
    with pytest.raises(InputError, match=problem):
        _modality().preprocess(table)


def test_nan_is_a_typed_error_naming_the_file_and_channel(tmp_path: Path) -> None:
    readings = _readings()
    readings[12, 4] = np.nan
    path = tmp_path / "gap.npy"
    np.save(path, readings)
    with pytest.raises(InputError, match=r"NaN or infinite value\(s\), first at time step 12 in channel gy") as err:
        _modality().preprocess(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize(
    ("filename", "content", "problem"),
    [
        ("empty.csv", "", "empty file"),
        ("empty.npy", "", "empty file"),
        ("header_only.csv", "time,ax,ay,az,gx,gy,gz\n", "no data rows"),
        ("missing.csv", "time,ax,ay,az,gx,gy\n0,1,2,3,4,5\n", "lacks the column"),
        ("words.csv", "1,2,3,4,5,6\n1,2,x,4,5,6\n", "non-numeric"),
        ("ragged.csv", "1,2,3,4,5,6\n1,2,3,4,5\n", "data row 2 has 5 columns"),
        ("backwards.csv", "time,ax,ay,az,gx,gy,gz\n0.1,0,0,0,0,0,0\n0.0,0,0,0,0,0,0\n", "does not increase"),
        ("millis.csv", "time,ax,ay,az,gx,gy,gz\n0,0,0,0,0,0,0\n20,0,0,0,0,0,0\n40,0,0,0,0,0,0\n", "in seconds"),
        ("notes.txt", "1,2,3,4,5,6\n", "unsupported file type"),
        ("garbage.npy", "not numpy at all", "npy"),
    ],
)
def test_bad_files_are_typed_errors_naming_the_file(tmp_path: Path, filename: str, content: str, problem: str) -> None:
    path = tmp_path / filename
    path.write_text(content)
    with pytest.raises(InputError, match=problem) as err:
        _modality().preprocess(path)
    assert str(path) in str(err.value)


def test_missing_file_and_object_arrays_are_typed_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="file not found"):
        _modality().preprocess(tmp_path / "nope.npy")
    np.save(tmp_path / "objects.npy", np.array([{"a": 1}] * 6, dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match="not a plain numeric"):
        _modality().preprocess(tmp_path / "objects.npy")
    with pytest.raises(InputError, match="sample_rate"):
        _modality().preprocess((_readings(), 50.0, "extra"))


def test_demo_data_is_deterministic_and_the_splits_differ(tmp_path: Path) -> None:
    m = ImuModality(ImuModality.config_preset("demo"))
    a, b, other = tmp_path / "a", tmp_path / "b", tmp_path / "other"
    m.make_demo_data(a, seed=0)
    m.make_demo_data(b, seed=0)
    m.make_demo_data(other, seed=1)
    assert len(CONCEPTS) >= 6
    rates = {}
    for split in SPLITS:
        entries = read_manifest(a / f"{split.name}.jsonl")  # also checks that every listed file exists
        assert len(entries) == split.per_concept * len(CONCEPTS)
        assert {e.label for e in entries} == {c.label for c in CONCEPTS}
        assert all(len(set(e.captions)) == 3 for e in entries)
        assert {e.path.suffix for e in entries} == {".npy", ".csv"}
        assert (a / f"{split.name}.jsonl").read_bytes() == (b / f"{split.name}.jsonl").read_bytes()
        for entry in entries[:: split.per_concept + 1]:  # every activity, both file kinds
            rel = entry.path.relative_to(a)
            assert (a / rel).read_bytes() == (b / rel).read_bytes()
            assert (a / rel).read_bytes() != (other / rel).read_bytes()
            x = m.preprocess(entry.path)
            assert x.shape == (6, m.config.window) and torch.isfinite(x).all()
        rec = load_recording(entries[0].path, input_rate=1.0)
        rates[split.name] = (len(rec.times) - 1) / rec.times[-1]
    assert rates["train"] == pytest.approx(50.0, rel=0.01) and rates["test"] == pytest.approx(60.0, rel=0.01)


def test_demo_activities_differ_in_how_hard_the_wrist_moves() -> None:
    """A sanity check of the motion models against everyday physics: at rest the accelerometer reads 1 g and
    the gyroscope nothing; running shakes the wrist far more than walking, which moves it more than sitting."""
    from lbind_imu.demo import synthesize

    spread = {}
    for concept in CONCEPTS:
        _, x = synthesize(concept.label, np.random.default_rng(5), 50.0, 6.0)
        spread[concept.label] = np.linalg.norm(x[:, :3], axis=1).std()
        if concept.label == "sitting still":
            assert np.linalg.norm(x[:, :3], axis=1).mean() == pytest.approx(G, rel=0.05)
            assert np.abs(x[:, 3:]).mean() < 0.05
    assert spread["sitting still"] < spread["walking"] < spread["running"]
    assert list(CHANNELS) == ["ax", "ay", "az", "gx", "gy", "gz"]
