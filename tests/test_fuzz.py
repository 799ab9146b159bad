"""Property-based and corpus tests of everything a careless or hostile user can hand lbind: run configs, arrays
into the built-in plugins' preprocessing, edited ``lbind.json`` files and broken media files. Every case must end
in a typed lbind error or a correct result (a finite tensor of the documented shape, a valid config, a model whose
weights are the file's); never another exception.

Hypothesis runs derandomised (the same examples on every run) with a bounded number of examples per property, so
the suite is stable in CI and takes well under three minutes on two cores.
"""

from __future__ import annotations

import copy
import importlib
import json
import shutil
import struct
import wave
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import currently_in_test_context
from hypothesis.extra import numpy as hnp

import lbcore
from lbcore.config import AnchorConfig
from lbcore.errors import ConfigError, InputError, LbindError
from lbcore.model import BindModel
from lbcore.plugins import default_registry
from lbcore.runconfig import resolve_config, validate_run_config

PLUGINS = ("image", "depth", "infrared", "video", "audio")
FUZZ = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def builtin() -> dict[str, Any]:
    """The built-in plugins registered in the default registry: name -> a modality at its demo preset."""
    registry = default_registry()
    for name in PLUGINS:
        registry.add_plugin(importlib.import_module(f"lbind_{name}"), name)
    return {
        name: registry.registered(name).cls(registry.registered(name).cls.config_preset("demo")) for name in PLUGINS
    }


def expected_shape(modality: Any) -> tuple[int, ...]:
    """The documented preprocess output shape of each built-in plugin at its config."""
    cfg = modality.config
    if modality.name == "audio":
        return (3, cfg.mel_bins, cfg.target_length)
    if modality.name == "video":
        return (3, cfg.num_frames, cfg.image_size, cfg.image_size)
    return (cfg.in_chans, cfg.image_size, cfg.image_size)


def note(outcome: str) -> None:
    """Count an outcome (shown by ``pytest --hypothesis-show-statistics``) when inside a property."""
    if currently_in_test_context():
        event(outcome)


def check_outcome(modality: Any, item: Any) -> str:
    """Preprocess ``item``: a typed error, or a finite float32 tensor of the documented shape."""
    try:
        out = modality.preprocess(item, train=False)
    except LbindError as err:
        note(f"{modality.name}: {type(err).__name__}")
        return "error"
    note(f"{modality.name}: tensor")
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32
    assert tuple(out.shape) == expected_shape(modality), (modality.name, tuple(out.shape))
    assert torch.isfinite(out).all(), modality.name
    return "tensor"


# ---------------------------------------------------------------------------------------------- run configs
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)
FIELDS = [
    "anchor",
    "anchor.name",
    "anchor.max_length",
    "anchor.pooling",
    "anchor.batch_size",
    "modalities",
    "modalities.image",
    "modalities.image.preset",
    "modalities.image.image_size",
    "modalities.image.in_chans",
    "modalities.image.mean",
    "modalities.image.std",
    "modalities.image.mask_ratio",
    "modalities.image.encoder",
    "modalities.image.encoder.width",
    "modalities.image.encoder.heads",
    "modalities.image.encoder.patch_size",
    "modalities.image.optim.lr",
    "modalities.image.optim.betas",
    "modalities.image.optim.eps",
    "modalities.image.optim.weight_decay",
    "modalities.image.lora.rank",
    "modalities.audio.mel_bins",
    "modalities.audio.target_length",
    "modalities.audio.optim",
    "modalities.depth.min_depth",
    "modalities.video.num_frames",
    "train",
    "train.max_steps",
    "train.data",
    "train.init",
    "train.lr_multipliers",
    "train.max_nonfinite_steps",
    "train.error_budget",
]
PLAUSIBLE = st.sampled_from(
    [0, 1, 2, 3, 4, 7, 8, 16, 30, 32, 48, -1, 0.0, 0.1, 0.5, 0.9, 1.0, 1e-3, 1.5, "demo", "languagebind", [0.5, 0.5]]
)


def set_path(data: dict[str, Any], path: str, value: Any) -> None:
    node = data
    *parents, last = path.split(".")
    for key in parents:
        if not isinstance(node.get(key), dict):
            node[key] = {}
        node = node[key]
    node[last] = value


@FUZZ
@given(edits=st.lists(st.tuples(st.sampled_from(FIELDS), PLAUSIBLE | PLAUSIBLE | values), min_size=1, max_size=3))
def test_any_run_config_is_a_valid_plan_or_a_config_error(builtin: Any, edits: list[tuple[str, Any]]) -> None:
    data: dict[str, Any] = {"modalities": {"image": {"preset": "demo"}, "audio": {"preset": "demo"}}}
    for path, value in edits:
        set_path(data, path, value)
    try:
        run, configs = validate_run_config(copy.deepcopy(data))
        assert set(configs) == set(run.modalities)
        event("validate: valid")
    except ConfigError:
        event("validate: ConfigError")
    try:
        plan = resolve_config(copy.deepcopy(data))
        for name, cfg in plan.modalities.items():
            assert builtin[name].config_problems(cfg) == []
            assert cfg.encoder.width % cfg.encoder.heads == 0
            assert all(np.isfinite([cfg.optim.lr, cfg.optim.eps, cfg.optim.weight_decay, *cfg.optim.betas]))
        event("plan: valid")
    except ConfigError:
        event("plan: ConfigError")


# ------------------------------------------------------------------------------------ arrays into preprocess
def float_elements(dtype: Any) -> Any:
    return st.floats(width=32, allow_nan=True, allow_infinity=True) if np.dtype(dtype).kind == "f" else None


arrays = st.sampled_from([np.uint8, np.uint16, np.float32, np.int32, np.bool_]).flatmap(
    lambda dtype: hnp.arrays(
        dtype=dtype,
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=9),
        elements=float_elements(dtype),
    )
)
tall_or_wide = st.tuples(st.integers(1, 3), st.integers(1, 600)).map(
    lambda hw: np.full(hw if hw[0] % 2 else hw[::-1], 128, np.uint8)
)
# Arrays shaped and valued like real pixels (frames for video), so that the success path is exercised too.
plausible_pixels = st.tuples(
    st.sampled_from([(), (1,), (3,), (4,)]),
    st.integers(1, 12),
    st.integers(1, 12),
    st.sampled_from([(), (2,), (5,)]),
    st.sampled_from([np.uint8, np.uint16, np.float32]),
).flatmap(
    lambda spec: hnp.arrays(
        dtype=spec[4],
        shape=spec[3] + (spec[1], spec[2]) + spec[0],
        elements=st.floats(0, 1, width=32) if spec[4] == np.float32 else None,
    )
)


@FUZZ
@given(item=arrays | tall_or_wide | plausible_pixels, name=st.sampled_from(["image", "depth", "infrared", "video"]))
def test_arrays_into_image_like_preprocessing(builtin: Any, item: np.ndarray, name: str) -> None:
    check_outcome(builtin[name], item)


@FUZZ
@given(
    item=st.sampled_from([np.float32, np.int16, np.uint8, np.float64, np.int64]).flatmap(
        lambda dtype: hnp.arrays(
            dtype=dtype,
            shape=hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=700),
            elements=float_elements(dtype) if np.dtype(dtype).kind == "f" else None,
        )
    ),
    rate=st.none() | st.sampled_from([16000, 8000, 44100, 1, 0, -5, 47999]),
)
@pytest.mark.slow
def test_arrays_into_audio_preprocessing(builtin: Any, item: np.ndarray, rate: int | None) -> None:
    check_outcome(builtin["audio"], item if rate is None else (item, rate))


# ------------------------------------------------------------------------------------------ lbind.json edits
@pytest.fixture
def tiny_checkpoint(builtin: Any, tmp_path: Path) -> Path:
    cls = type(builtin["image"])
    modality = cls(cls.config_preset("demo", image_size=16, encoder={"width": 32, "depth": 1, "heads": 2}))
    torch.manual_seed(0)
    encoder = modality.build_encoder(8)
    model = BindModel(AnchorConfig(), {"image": encoder}, {"image": modality}, anchor_fingerprint="0" * 64, embed_dim=8)
    return model.save_pretrained(tmp_path / "ckpt")


def json_paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for key, value in node.items():
            out += json_paths(value, (*prefix, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            out += json_paths(value, (*prefix, index))
    return out


def mutate(meta: dict[str, Any], path: tuple[Any, ...], action: str, value: Any) -> None:
    parent = meta
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    if action == "delete":
        del parent[last]
    elif action == "rename" and isinstance(parent, dict):
        parent[str(value)[:8] or "x"] = parent.pop(last)
    else:
        parent[last] = value


@FUZZ
@given(data=st.data())
def test_edited_lbind_json_loads_correctly_or_is_a_typed_error(tiny_checkpoint: Path, data: Any) -> None:
    from safetensors.torch import load_file

    meta = json.loads((tiny_checkpoint / "lbind.json").read_text())
    edits = data.draw(st.integers(1, 3))
    for _ in range(edits):
        paths = json_paths(meta)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        action = data.draw(st.sampled_from(["set", "set", "delete", "rename"]))
        mutate(meta, path, action, data.draw(values | st.sampled_from(["image", "../x", "/etc/passwd", "1", 2, 3])))
    work = tiny_checkpoint.parent / "edited"
    if work.exists():
        shutil.rmtree(work)
    shutil.copytree(tiny_checkpoint, work)
    (work / "lbind.json").write_text(json.dumps(meta))
    try:
        model = lbcore.load(work)
    except LbindError as err:
        event(type(err).__name__)
        return
    event("loaded")
    saved = load_file(str(tiny_checkpoint / "image.safetensors"))  # the only weights there are
    for name, encoder in model.encoders.items():
        state = encoder.state_dict()
        assert set(state) == set(saved), name
        assert all(torch.equal(state[k], saved[k]) for k in saved), name
        assert np.isfinite(model.logit_scale(name))


# -------------------------------------------------------------------------------------- broken media corpus
def png_chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def write_wav(path: Path, samples: np.ndarray, rate: int = 16000) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(samples.astype("<i2").tobytes())
    return path


def write_mp4(path: Path, frames: int = 6) -> Path | None:
    try:
        import av
    except ImportError:
        return None
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=8)
        stream.width, stream.height, stream.pix_fmt = 32, 24, "yuv420p"
        for i in range(frames):
            img = np.full((24, 32, 3), 20 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Broken (and a few good) media files, generated here: name -> path."""
    from PIL import Image

    root = tmp_path_factory.mktemp("corpus")
    files: dict[str, Path] = {}

    def add(name: str, content: bytes) -> None:
        files[name] = root / name
        files[name].write_bytes(content)

    Image.fromarray(np.arange(24 * 32 * 3, dtype=np.uint32).astype(np.uint8).reshape(24, 32, 3)).save(root / "a.png")
    files["good.png"] = root / "a.png"
    good_png = files["good.png"].read_bytes()
    Image.fromarray(np.full((20, 30), 1500, np.uint16)).save(root / "depth16.png")
    files["depth16.png"] = root / "depth16.png"
    Image.fromarray(np.zeros((1, 100_000), np.uint8)).save(root / "strip.png")
    files["strip.png"] = root / "strip.png"
    add("truncated.png", good_png[: len(good_png) // 2])
    add("header-only.png", good_png[:33])
    add("zero.png", b"")
    add("text.png", b"this is not an image\n" * 10)
    huge = struct.pack(">IIBBBBB", 200_000, 200_000, 8, 0, 0, 0, 0)
    add("huge.png", b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", huge) + png_chunk(b"IEND", b""))
    files["good.wav"] = write_wav(root / "good.wav", 3000 * np.sin(np.arange(8000) / 5))
    good_wav = files["good.wav"].read_bytes()
    add("truncated.wav", good_wav[: len(good_wav) // 3])
    add("zero.wav", b"")
    add("garbage.wav", b"RIFF\xff\xff\xff\xffWAVEfmt " + b"\x00" * 40)
    add("png-named.wav", good_png)
    add("wav-named.png", good_wav)
    add("png-named.mp4", good_png)
    add("zero.mp4", b"")
    np.save(root / "nan.npy", np.full((8, 8), np.nan, np.float32))
    mp4 = write_mp4(root / "good.mp4")
    if mp4 is not None:
        files["good.mp4"] = mp4
        add("truncated.mp4", mp4.read_bytes()[: mp4.stat().st_size // 2])
    loop = root / "loop.png"
    loop.symlink_to(loop)
    files["loop.png"] = loop
    files["dangling.wav"] = root / "dangling.wav"
    files["dangling.wav"].symlink_to(root / "absent.wav")
    files["folder.png"] = root / "folder.png"
    files["folder.png"].mkdir()
    files["absent.mp4"] = root / "absent.mp4"
    return files


GOOD = {("image", "good.png"), ("infrared", "good.png"), ("image", "strip.png"), ("depth", "depth16.png")}
GOOD |= {("infrared", "strip.png"), ("infrared", "depth16.png"), ("image", "depth16.png"), ("audio", "good.wav")}
GOOD |= {("video", "good.mp4")}


@pytest.mark.parametrize("name", PLUGINS)
def test_broken_media_files_through_every_builtin_plugin(builtin: Any, corpus: dict[str, Path], name: str) -> None:
    modality = builtin[name]
    outcomes = {}
    for label, path in corpus.items():
        outcomes[label] = check_outcome(modality, path)
        if (name, label) in GOOD:
            assert outcomes[label] == "tensor", (name, label)
    for label in ("truncated.png", "zero.png", "text.png", "huge.png", "loop.png", "folder.png", "zero.wav"):
        assert outcomes[label] == "error", (name, label)
    for label in ("truncated.wav", "garbage.wav", "zero.mp4", "absent.mp4", "dangling.wav"):
        assert outcomes[label] == "error", (name, label)


def test_media_file_errors_say_what_is_wrong(builtin: Any, corpus: dict[str, Path]) -> None:
    image = builtin["image"]
    cases = {
        "loop.png": "symbolic link loop",
        "folder.png": "is a directory",
        "zero.png": "empty file",
        "huge.png": "pixels",  # Pillow refuses 4e10 pixels at open, lbind beyond MAX_IMAGE_PIXELS
        "truncated.png": "truncated or corrupt",
    }
    for label, problem in cases.items():
        with pytest.raises(InputError, match=problem) as info:
            image.preprocess(corpus[label])
        assert str(corpus[label]) in str(info.value)
    with pytest.raises(InputError, match=r"broken symbolic link \(points to .*absent\.wav"):
        builtin["audio"].preprocess(corpus["dangling.wav"])


@settings(max_examples=150, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.float16, np.float32, np.float64]),
        shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=9),
        elements={"allow_nan": True, "allow_infinity": True},
    ),
    st.booleans(),
)
def test_check_finite_refuses_exactly_the_arrays_numpy_calls_non_finite(arr: np.ndarray, as_tensor: bool) -> None:
    from lbcore.errors import check_finite

    values = torch.from_numpy(arr.copy()) if as_tensor else arr
    if np.isfinite(arr).all():  # including float64 values whose sum overflows: the exact count decides then
        check_finite(values, "x.bin")
    else:
        with pytest.raises(InputError, match=f"{int((~np.isfinite(arr)).sum())} of {arr.size} are NaN or infinite"):
            check_finite(values, "x.bin")
    check_finite(np.full(4, np.finfo(np.float64).max), "big.bin")  # finite, though their sum is not
