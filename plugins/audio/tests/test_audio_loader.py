"""Loading: every file format and in-memory form, resampling, channel handling, and the errors for bad input."""

from __future__ import annotations

import struct
import time

import numpy as np
import pytest
import soundfile as sf
import torch
from lbind_audio.modality import AudioModality
from lbind_audio.waveform import load_waveform

from lbcore.errors import InputError


def tones(rate: int, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t) + 0.3 * np.sin(2 * np.pi * 1500 * t) + 0.2 * np.sin(2 * np.pi * 3000 * t)
    return x.astype(np.float32)


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24"])
def test_pcm_wav_samples_equal_an_independent_decoder(tmp_path, signal, decode_pcm_wav, subtype) -> None:
    path = tmp_path / f"x_{subtype}.wav"
    sf.write(path, signal(0.5), 16000, subtype=subtype)
    got = load_waveform(path, 16000)
    np.testing.assert_array_equal(got.numpy(), decode_pcm_wav(path)[0])


@pytest.mark.parametrize(
    ("fmt", "subtype", "mean_tol"),
    [
        ("WAV", "PCM_U8", 0.01),  # 8-bit quantisation noise shows in the quiet mel bins
        ("WAV", "PCM_16", 1e-4),
        ("WAV", "PCM_24", 1e-5),
        ("WAV", "FLOAT", 1e-7),
        ("FLAC", "PCM_16", 1e-4),
        ("FLAC", "PCM_24", 1e-5),
        ("OGG", "VORBIS", 0.1),  # lossy
    ],
)
def test_file_formats_match_the_float_signal(tmp_path, languagebind, signal, fmt, subtype, mean_tol) -> None:
    x = signal(3.0)
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(path, x, 16000, format=fmt, subtype=subtype)
    got, ref = languagebind.preprocess(path), languagebind.preprocess(x)
    assert got.shape == (3, 126, 1036) and torch.isfinite(got).all()
    assert (got - ref).abs().mean() < mean_tol


def test_the_first_resampled_file_logs_one_line_naming_the_rates_and_sample_rate(
    tmp_path, demo, monkeypatch, caplog
) -> None:
    import lbind_audio.waveform as waveform

    monkeypatch.setattr(waveform, "_resampling_noted", False)  # as in a fresh process
    paths = []
    for name, rate in (("native", 16000), ("first", 44100), ("second", 44100), ("third", 22050)):
        paths.append(tmp_path / f"{name}.wav")
        sf.write(paths[-1], tones(rate, 0.5), rate, subtype="FLOAT")
    with caplog.at_level("INFO", logger="lbind_audio"):
        demo.preprocess(paths[0])
        assert not caplog.records  # a file at the model's rate is not resampled
        for path in paths[1:]:
            demo.preprocess(path)
    (record,) = caplog.records
    message = record.getMessage()
    assert str(paths[1]) in message and "44100 Hz" in message and "16000 Hz" in message
    assert "sample_rate: 44100" in message


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_any_rate_is_resampled_to_16k(tmp_path, languagebind, rate) -> None:
    path = tmp_path / f"tones_{rate}.wav"
    sf.write(path, tones(rate), rate, subtype="FLOAT")
    ref = languagebind.preprocess(tones(16000))[0, :, :150].mean(-1)  # time-averaged mel spectrum [126]
    peaks = ref.topk(12).indices  # the bins holding the three tones
    for got in (languagebind.preprocess(path), languagebind.preprocess((tones(rate), rate))):
        spectrum = got[0, :, :150].mean(-1)
        assert set(spectrum.topk(12).indices.tolist()) == set(peaks.tolist())
        assert (spectrum - ref)[peaks].abs().max() < 0.02


def test_stereo_is_mixed_or_first_channel(tmp_path, signal) -> None:
    stereo = signal(1.5, channels=2)  # [2, samples], different noise per channel
    path = tmp_path / "stereo.wav"
    sf.write(path, stereo.T, 16000, subtype="FLOAT")  # soundfile takes [samples, channels]
    mix = AudioModality(AudioModality.config_preset("demo"))
    first = AudioModality(AudioModality.config_preset("demo", channels="first"))
    torch.testing.assert_close(mix.preprocess(path), mix.preprocess(stereo.mean(0)), rtol=0, atol=1e-5)
    torch.testing.assert_close(first.preprocess(path), first.preprocess(stereo[0]), rtol=0, atol=1e-5)
    assert not torch.allclose(mix.preprocess(path), first.preprocess(path))
    torch.testing.assert_close(mix.preprocess(torch.from_numpy(stereo)), mix.preprocess(path), rtol=0, atol=1e-5)


def test_in_memory_forms_agree(demo, signal) -> None:
    x44 = signal(1.0, rate=44100)
    a = demo.preprocess((x44, 44100))
    assert torch.equal(a, demo.preprocess({"array": x44, "sampling_rate": 44100}))  # Hugging Face datasets
    assert torch.equal(a, demo.preprocess({"array": torch.from_numpy(x44), "sample_rate": 44100.0}))
    x16 = signal(1.0)
    assert torch.equal(demo.preprocess(x16), demo.preprocess((x16, 16000)))  # bare array = config rate
    assert torch.equal(demo.preprocess(x16), demo.preprocess(x16.tolist()))
    assert not torch.allclose(demo.preprocess(x44), a)  # a bare 44.1 kHz array is read as 16 kHz


def test_integer_arrays_are_scaled_like_files(tmp_path, demo, signal) -> None:
    pcm = np.round(signal(1.0) * 32767).astype(np.int16)
    path = tmp_path / "int16.wav"
    sf.write(path, pcm, 16000, subtype="PCM_16")
    assert torch.equal(demo.preprocess(pcm), demo.preprocess(path))
    as_int32 = pcm.astype(np.int32) << 16
    torch.testing.assert_close(demo.preprocess(as_int32), demo.preprocess(path), rtol=0, atol=1e-6)
    as_uint8 = (pcm // 256 + 128).astype(np.uint8)
    assert (demo.preprocess(as_uint8) - demo.preprocess(path)).abs().mean() < 0.05


def test_very_short_and_very_long_files(tmp_path, languagebind, signal) -> None:
    short = tmp_path / "short.wav"
    sf.write(short, signal(0.01, rate=44100), 44100)  # 441 samples -> 160 at 16 kHz: less than one frame
    x = languagebind.preprocess(short)
    assert x.shape == (3, 126, 1036) and torch.isfinite(x).all()
    assert torch.equal(x[:, :, :1], x[:, :, 1:2].expand(3, 126, 1))  # one frame, tiled
    long = tmp_path / "long.flac"
    sf.write(long, signal(180.0), 16000)  # three minutes
    start = time.perf_counter()
    x = languagebind.preprocess(long)
    assert time.perf_counter() - start < 10
    assert x.shape == (3, 126, 1036) and torch.isfinite(x).all()
    assert not torch.allclose(x[0], x[2])


def test_silent_file_is_valid(tmp_path, demo) -> None:
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    x = demo.preprocess(path)
    floor = (np.log(np.finfo(np.float32).eps) + 4.2677393) / (2 * 4.5689974)  # Kaldi's log-energy floor
    torch.testing.assert_close(x, torch.full_like(x, floor), rtol=0, atol=1e-5)


def _wav_bytes(tmp_path, signal) -> bytes:
    path = tmp_path / "good.wav"
    sf.write(path, signal(1.0), 16000, subtype="PCM_16")
    return path.read_bytes()


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.wav", lambda good: b"", "empty"),
        ("header_cut.wav", lambda good: good[:30], "cannot decode"),
        ("no_samples.wav", lambda good: good[:44], "truncated WAV"),
        ("half.wav", lambda good: good[: len(good) // 2], "truncated WAV"),
        ("text.wav", lambda good: b"this is not audio at all\n" * 40, "cannot decode"),
        ("random.flac", lambda good: bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)), "cannot"),
    ],
)
def test_bad_files_raise_input_error_naming_the_file(tmp_path, demo, signal, name, content, message) -> None:
    path = tmp_path / name
    path.write_bytes(content(_wav_bytes(tmp_path, signal)))
    with pytest.raises(InputError, match=message) as info:
        demo.preprocess(path)
    assert str(path) in str(info.value)


def test_truncated_flac_raises(tmp_path, demo, signal) -> None:
    path = tmp_path / "cut.flac"
    sf.write(path, signal(3.0), 16000)
    path.write_bytes(path.read_bytes()[:4000])
    with pytest.raises(InputError, match="cannot decode") as info:
        demo.preprocess(path)
    assert str(path) in str(info.value)


def test_streamed_wav_without_a_data_size_is_read(tmp_path, demo, signal) -> None:
    good = _wav_bytes(tmp_path, signal)
    data_at = good.index(b"data")
    streamed = good[: data_at + 4] + struct.pack("<I", 0xFFFFFFFF) + good[data_at + 8 :]
    path = tmp_path / "streamed.wav"
    path.write_bytes(streamed)
    assert torch.equal(demo.preprocess(path), demo.preprocess(tmp_path / "good.wav"))


def test_missing_file_and_folder(tmp_path, demo) -> None:
    with pytest.raises(InputError, match="file not found"):
        demo.preprocess(tmp_path / "absent.wav")
    with pytest.raises(InputError, match="is a directory"):
        demo.preprocess(str(tmp_path))
    loop = tmp_path / "loop.wav"
    loop.symlink_to(loop)
    with pytest.raises(InputError, match="symbolic link loop"):
        demo.preprocess(loop)
    dangling = tmp_path / "dangling.wav"
    dangling.symlink_to(tmp_path / "gone.wav")
    with pytest.raises(InputError, match=r"broken symbolic link \(points to .*gone\.wav"):
        demo.preprocess(dangling)


def test_finite_samples_that_overflow_the_features_are_an_input_error(tmp_path, demo) -> None:
    # Every sample is finite in float32, but its power (1e40) is not: the log-mel image would be NaN/inf.
    path = tmp_path / "loud.wav"
    sf.write(path, np.full(8000, 1e20, np.float32) * np.sign(np.sin(np.arange(8000))), 16000, subtype="FLOAT")
    with pytest.raises(InputError, match="NaN or infinite") as info:
        demo.preprocess(path)
    assert str(path) in str(info.value)


def test_nan_file_is_rejected(tmp_path, demo) -> None:
    path = tmp_path / "nan.wav"
    sf.write(path, np.full(8000, np.nan, np.float32), 16000, subtype="FLOAT")
    with pytest.raises(InputError, match="all samples are NaN") as info:
        demo.preprocess(path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("item", "message"),
    [
        (np.full(8000, np.nan, np.float32), "all samples are NaN or infinite"),
        (np.r_[np.zeros(7999, np.float32), np.inf], "1 of 8000 samples are NaN or infinite"),
        (np.zeros(0, np.float32), "holds no samples"),
        (np.zeros((2, 0), np.float32), "holds no samples"),
        (np.array(0.5, np.float32), "shape"),
        (np.float32(0.5), "unsupported input type"),
        (np.zeros((1, 2, 8000), np.float32), "shape"),
        (np.zeros((8000, 2), np.float32), "transpose"),
        (np.arange(8000), "dtype int64"),
        (np.zeros(8000, bool), "dtype bool"),
        ((np.zeros(8000, np.float32), 0), "sample rate"),
        ((np.zeros(8000, np.float32), 44100.5), "sample rate"),
        ((np.zeros(8000, np.float32), "16k"), "not a number"),
        ((np.zeros(8000, np.float32), 47999), "shares no useful factor"),
        ((np.zeros(8000, np.float32), 16000, 1), "tuple of 3"),
        ({"array": np.zeros(8000, np.float32)}, "sampling_rate"),
        ({"audio": np.zeros(8000, np.float32), "sampling_rate": 16000}, "mapping with keys"),
        (b"RIFF", "unsupported input type bytes"),
    ],
)
def test_bad_arrays_raise_input_error(demo, item, message) -> None:
    with pytest.raises(InputError, match=message):
        demo.preprocess(item)
