"""lbcore.image (reading, conversion, resizing) and lbcore.templates."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms

from lbcore.config import ImageConfig
from lbcore.errors import InputError
from lbcore.image import (
    DemoConcept,
    load_rgb,
    read_image,
    resize_crop,
    resize_crop_normalize,
    to_rgb_float,
    write_image,
    write_image_demo,
)
from lbcore.manifest import read_manifest
from lbcore.templates import IMAGENET_TEMPLATES, imagenet_templates

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _cfg(**kw) -> ImageConfig:
    return ImageConfig(**{"image_size": 32, **kw})


def _grey(h: int = 40, w: int = 52, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w), dtype=np.uint8)


# -- read_image: every format variant --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "channels"), [("L", None), ("LA", 2), ("RGB", 3), ("RGBA", 4)], ids=["grey", "grey+alpha", "rgb", "rgba"]
)
def test_eight_bit_png_round_trips_exactly(tmp_path, mode, channels):
    rng = np.random.default_rng(1)
    shape = (30, 44) if channels is None else (30, 44, channels)
    arr = rng.integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(arr, mode=mode).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8
    assert np.array_equal(out, arr)


def test_sixteen_bit_png_keeps_its_values(tmp_path):
    arr = np.array([[0, 1, 255], [256, 40000, 65535]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint16
    assert np.array_equal(out, arr)


def test_sixteen_bit_pgm_read_through_mode_i_becomes_uint16(tmp_path):
    # Netpbm's 16-bit samples are big-endian; Pillow widens them to mode I (int32).
    arr = np.array([[1, 513, 65535], [300, 0, 12345]], dtype=">u2")
    (tmp_path / "d.pgm").write_bytes(b"P5\n3 2\n65535\n" + arr.tobytes())
    with Image.open(tmp_path / "d.pgm") as img:
        assert img.mode.startswith("I")
    out = read_image(tmp_path / "d.pgm")
    assert out.dtype == np.uint16
    assert np.array_equal(out, arr.astype(np.uint16))


def test_palette_png_is_expanded_to_rgb_and_rgba(tmp_path):
    palette = [0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 9)
    idx = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette(palette)
    img.save(tmp_path / "p.png")
    rgb = read_image(tmp_path / "p.png")
    assert rgb.shape == (2, 2, 3)
    assert rgb[0, 1].tolist() == [255, 0, 0] and rgb[1, 0].tolist() == [0, 255, 0]
    img.save(tmp_path / "pt.png", transparency=0)
    rgba = read_image(tmp_path / "pt.png")
    assert rgba.shape == (2, 2, 4)
    assert rgba[0, 0, 3] == 0 and rgba[0, 1, 3] == 255


def test_one_bit_image_reads_as_grey(tmp_path):
    Image.fromarray(np.array([[True, False]])).save(tmp_path / "b.png")
    out = read_image(tmp_path / "b.png")
    assert out.dtype == np.uint8 and out.tolist() == [[255, 0]]


def test_jpeg_grey_and_rgb(tmp_path):
    grey = np.full((16, 16), 120, dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.jpg", quality=95)
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "c.jpg", quality=95)
    g, c = read_image(tmp_path / "g.jpg"), read_image(tmp_path / "c.jpg")
    assert g.shape == (16, 16) and c.shape == (16, 16, 3)
    assert np.abs(g.astype(int) - 120).max() <= 2 and np.abs(c.astype(int) - 120).max() <= 2


def test_cmyk_jpeg_is_converted_to_rgb(tmp_path):
    Image.new("CMYK", (8, 6), (0, 0, 0, 0)).save(tmp_path / "k.jpg")
    out = read_image(tmp_path / "k.jpg")
    assert out.shape == (6, 8, 3) and out.min() >= 250  # no ink = white


# -- read_image: errors name the file ----------------------------------------------------------------------


def _truncated(tmp_path, suffix: str):
    path = tmp_path / f"full{suffix}"
    Image.fromarray(_grey(64, 64)).save(path)
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return cut


def _bad_file(kind: str, folder):
    if kind == "empty":
        (folder / "empty.png").write_bytes(b"")
        return folder / "empty.png"
    if kind.startswith("truncated"):
        return _truncated(folder, "." + kind.split("-")[1])
    if kind == "not-an-image":
        (folder / "notes.png").write_text("hello, not an image")
        return folder / "notes.png"
    if kind == "missing":
        return folder / "missing.png"
    return folder  # a directory


@pytest.mark.parametrize(
    ("kind", "problem"),
    [
        ("empty", "empty"),
        ("truncated-png", "truncated"),
        ("truncated-jpg", "truncated"),
        ("not-an-image", "not an image"),
        ("missing", "not found"),
        ("directory", "directory"),
    ],
)
def test_bad_files_raise_input_error_naming_the_file(tmp_path, kind, problem):
    path = _bad_file(kind, tmp_path)
    with pytest.raises(InputError) as info:
        read_image(path)
    assert str(path) in str(info.value)
    assert problem in info.value.problem


# -- to_rgb_float ----------------------------------------------------------------------------------------


def test_grey_is_repeated_and_scaled_by_255():
    arr = np.array([[0, 51], [255, 102]], dtype=np.uint8)
    x = to_rgb_float(arr)
    assert x.shape == (3, 2, 2) and x.dtype == torch.float32
    for c in range(3):
        assert torch.allclose(x[c], torch.tensor([[0.0, 0.2], [1.0, 0.4]]))


def test_sixteen_bit_is_scaled_by_65535():
    x = to_rgb_float(np.array([[65535, 0, 13107]], dtype=np.uint16))
    assert torch.allclose(x[0], torch.tensor([[1.0, 0.0, 0.2]]))


def test_alpha_is_dropped():
    rgb = np.random.default_rng(2).integers(0, 256, (5, 6, 3), dtype=np.uint8)
    alpha = np.random.default_rng(3).integers(0, 256, (5, 6, 1), dtype=np.uint8)
    assert torch.equal(to_rgb_float(np.concatenate([rgb, alpha], -1)), to_rgb_float(rgb))
    grey = rgb[:, :, :1]
    assert torch.equal(to_rgb_float(np.concatenate([grey, alpha], -1)), to_rgb_float(grey[:, :, 0]))


def test_float_and_tensor_input():
    arr = np.random.default_rng(4).random((4, 5, 3))
    x = to_rgb_float(torch.from_numpy(arr))
    assert torch.allclose(x, torch.from_numpy(arr).permute(2, 0, 1).float())


@pytest.mark.parametrize(
    "arr",
    [
        np.zeros((4, 5, 6), dtype=np.uint8),
        np.zeros((0, 5), dtype=np.uint8),
        np.zeros((4,), dtype=np.uint8),
        np.full((4, 5), 1.5, dtype=np.float32),
        np.full((4, 5), np.nan, dtype=np.float32),
        np.zeros((4, 5), dtype=np.int64),
    ],
    ids=["six-channels", "no-pixels", "1-d", "float-above-1", "nan", "int64"],
)
def test_bad_arrays_raise_input_error(arr):
    with pytest.raises(InputError):
        to_rgb_float(arr)


def test_load_rgb_reads_paths_and_arrays_alike(tmp_path):
    arr = _grey()
    write_image(tmp_path / "g.png", arr)
    assert torch.equal(load_rgb(tmp_path / "g.png"), load_rgb(arr))
    assert torch.equal(load_rgb(str(tmp_path / "g.png")), load_rgb(arr))


def test_write_image_round_trips_uint16(tmp_path):
    arr = np.random.default_rng(5).integers(0, 65536, (9, 7), dtype=np.uint16)
    assert np.array_equal(read_image(write_image(tmp_path / "x.png", arr)), arr)


# -- resize, crop, normalise -----------------------------------------------------------------------------


def test_constant_image_normalises_to_hand_computed_values():
    x = torch.full((3, 50, 70), 0.5)
    out = resize_crop_normalize(x, _cfg())
    assert out.shape == (3, 32, 32)
    for c in range(3):
        expected = (0.5 - CLIP_MEAN[c]) / CLIP_STD[c]
        assert torch.allclose(out[c], torch.full((32, 32), expected), atol=1e-5)


@pytest.mark.parametrize("antialias", [False, True])
def test_eval_path_matches_torchvision_resize_and_centre_crop(antialias):
    # torchvision's v1 transforms as the reference for the short-side size rule and the crop offsets.
    x = to_rgb_float(np.random.default_rng(6).integers(0, 256, (45, 77, 3), dtype=np.uint8))
    ref = transforms.Compose(
        [
            transforms.Resize(32, interpolation=transforms.InterpolationMode.BICUBIC, antialias=antialias),
            transforms.CenterCrop(32),
            transforms.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )(x)
    assert torch.allclose(resize_crop_normalize(x, _cfg(antialias=antialias)), ref, atol=1e-6)


def test_antialias_settings_match_interpolate_and_differ_on_a_sharp_edge():
    # Random black/white pixels: every pixel boundary is a sharp edge.
    x = (torch.rand(1, 1, 256, 256, generator=torch.Generator().manual_seed(0)) > 0.5).float().expand(1, 3, -1, -1)
    for antialias in (False, True):
        ours = resize_crop(x[0], _cfg(antialias=antialias))
        ref = F.interpolate(x, size=(32, 32), mode="bicubic", align_corners=False, antialias=antialias)[0]
        assert torch.allclose(ours, ref, atol=1e-5)
    plain, smooth = resize_crop(x[0], _cfg(antialias=False)), resize_crop(x[0], _cfg(antialias=True))
    # Antialiasing averages 8 x 8 pixels towards mid-grey; without it, bicubic samples keep the extremes.
    assert smooth.std() < 0.1 < 0.3 < plain.std()
    assert (plain - smooth).abs().max() > 0.5


def test_default_antialias_is_the_languagebind_one():
    field = ImageConfig.model_fields["antialias"]
    assert field.default is False
    assert "LanguageBind" in field.description and "0.14" in field.description


def test_eval_is_deterministic_and_train_augments():
    x = to_rgb_float(np.random.default_rng(7).integers(0, 256, (40, 90, 3), dtype=np.uint8))
    cfg = _cfg()
    assert torch.equal(resize_crop_normalize(x, cfg), resize_crop_normalize(x, cfg))
    evaluated = resize_crop_normalize(x, cfg)
    trained = [resize_crop_normalize(x, cfg, train=True, generator=torch.Generator().manual_seed(s)) for s in range(6)]
    assert all(t.shape == evaluated.shape for t in trained)
    assert any(not torch.equal(t, evaluated) for t in trained)
    assert len({t.sum().item() for t in trained}) > 1  # different draws, different crops/flips
    again = resize_crop_normalize(x, cfg, train=True, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again, trained[3])


def test_a_frame_stack_gets_one_crop_and_flip():
    frame = to_rgb_float(np.random.default_rng(8).integers(0, 200, (40, 90, 3), dtype=np.uint8))
    stack = torch.stack([frame + 0.1 * t for t in range(4)])  # [T, 3, H, W], frames differ by a constant
    for seed in range(4):
        out = resize_crop_normalize(stack, _cfg(), train=True, generator=torch.Generator().manual_seed(seed))
        assert out.shape == (4, 3, 32, 32)
        std = torch.tensor(CLIP_STD).view(3, 1, 1)
        for t in range(1, 4):  # the same crop everywhere leaves exactly the constant offset
            assert torch.allclose((out[t] - out[0]) * std, torch.full_like(out[0], 0.1 * t), atol=1e-4)


# -- demo writer -----------------------------------------------------------------------------------------


def _render(concept: DemoConcept, rng: np.random.Generator, test: bool) -> np.ndarray:
    level = 200 if concept.label == "bright" else 30
    return (np.full((8, 10), level) + rng.integers(0, 20, (8, 10)) + (5 if test else 0)).astype(np.uint8)


def test_write_image_demo_is_deterministic_and_writes_manifests(tmp_path):
    concepts = [DemoConcept("bright", ("a bright square", "a light patch")), DemoConcept("dark", ("a dark square",))]
    kwargs = {"counts": {"train": 4, "test": 2}, "suffixes": (".png", ".jpg")}
    first = write_image_demo(tmp_path / "a", concepts, _render, seed=3, **kwargs)
    write_image_demo(tmp_path / "b", concepts, _render, seed=3, **kwargs)
    write_image_demo(tmp_path / "c", concepts, _render, seed=4, **kwargs)
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 2 * (4 + 2) + 2
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert any((tmp_path / "a" / f).read_bytes() != (tmp_path / "c" / f).read_bytes() for f in files)
    train = read_manifest(first["train"])
    assert [e.label for e in train] == ["bright"] * 4 + ["dark"] * 4
    assert {e.path.suffix for e in train} == {".png", ".jpg"}
    assert set(train[0].captions) <= {"a bright square", "a light patch"}
    rows = [json.loads(line) for line in first["test"].read_text().splitlines()]
    assert set(rows[0]) == {"path", "captions", "label"} and len(rows) == 4


# -- templates -------------------------------------------------------------------------------------------


def test_imagenet_templates_are_the_80_clip_templates():
    assert len(IMAGENET_TEMPLATES) == 80
    assert len(set(IMAGENET_TEMPLATES)) == 80
    assert all(t.count("{}") == 1 for t in IMAGENET_TEMPLATES)
    # First, last and a few in between, as listed in CLIP's published ImageNet prompt-engineering notebook.
    assert IMAGENET_TEMPLATES[0] == "a bad photo of a {}."
    assert IMAGENET_TEMPLATES[35] == "a {} in a video game."
    assert IMAGENET_TEMPLATES[59] == "itap of the {}."
    assert IMAGENET_TEMPLATES[-1] == "a tattoo of the {}."


def test_photo_word_is_replaced_as_a_whole_word():
    depth = imagenet_templates("depth photo")
    assert len(depth) == 80
    assert depth[0] == "a bad depth photo of a {}."
    with_photo = [i for i, t in enumerate(IMAGENET_TEMPLATES) if re.search(r"\bphoto\b", t)]
    assert len(with_photo) > 40
    assert all("depth photo" in depth[i] for i in with_photo)
    assert all(depth[i] == IMAGENET_TEMPLATES[i] for i in range(80) if i not in with_photo)
    assert imagenet_templates() == IMAGENET_TEMPLATES
    assert imagenet_templates("video")[1] == "a video of many {}."


# -- bounded cost ------------------------------------------------------------------------------------------

BOUND_SCRIPT = """
import resource, sys
import torch
from lbcore.config import ImageConfig
from lbcore.errors import InputError
from lbcore.image import load_rgb, resize_crop_normalize

cfg = ImageConfig(image_size=224)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    x = resize_crop_normalize(load_rgb(sys.argv[1]), cfg)
    outcome = f"tensor {tuple(x.shape)} finite={bool(torch.isfinite(x).all())}"
except InputError as err:
    outcome = f"InputError {err}"
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(outcome)
print(grown // 1024)  # MiB (ru_maxrss is in KiB on Linux)
"""


@pytest.mark.slow
@pytest.mark.parametrize("width", [20_000, 100_000])
def test_a_one_pixel_high_strip_costs_memory_of_the_output_size(tmp_path, width):
    import subprocess
    import sys

    path = tmp_path / "strip.png"
    Image.fromarray(np.arange(width, dtype=np.uint32).astype(np.uint8)[None, :]).save(path)
    done = subprocess.run(
        [sys.executable, "-c", BOUND_SCRIPT, str(path)], capture_output=True, text=True, timeout=300, check=True
    )
    outcome, grown_mib = done.stdout.strip().splitlines()
    assert outcome == "tensor (3, 224, 224) finite=True"
    # Unbounded, the 224-px short side makes the strip 224 x (224 * width) floats: 12 GB at 20 000 pixels.
    assert int(grown_mib) < 200, f"preprocessing grew the process by {grown_mib} MiB"


def test_extreme_aspect_ratios_are_centre_cropped_to_four_to_one_first():
    from lbcore.image import MAX_ASPECT_RATIO, limit_aspect

    assert MAX_ASPECT_RATIO == 4
    x = torch.arange(2 * 3 * 50, dtype=torch.float32).reshape(2, 3, 50)  # [C, 3, 50]: 50 / 3 > 4
    assert torch.equal(limit_aspect(x), x[..., :, 19:31])  # the centre 12 = 4 x 3 columns
    assert torch.equal(limit_aspect(x.transpose(1, 2)), x.transpose(1, 2)[..., 19:31, :])
    within = torch.zeros(3, 10, 40)
    assert limit_aspect(within) is within
    # Up to 4:1 the output is the plain resize + centre crop (torchvision's reference).
    img = torch.rand(3, 10, 40)
    bicubic = transforms.InterpolationMode.BICUBIC
    reference = transforms.CenterCrop(32)(transforms.Resize(32, interpolation=bicubic, antialias=False)(img))
    torch.testing.assert_close(resize_crop(img, _cfg()), reference)


def test_a_header_declaring_huge_dimensions_is_refused_before_decoding(tmp_path, monkeypatch):
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    # Pillow itself only warns between its limit and twice that; lbind refuses everything over the limit.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1_000_000)
    header = struct.pack(">IIBBBBB", 1500, 1000, 8, 0, 0, 0, 0)  # 8-bit grey, 1.5 megapixels
    png = (
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")
    )
    (tmp_path / "huge.png").write_bytes(png)
    with pytest.raises(InputError, match=r"huge\.png: 1500 x 1000 pixels \(1,500,000\) is more than the 1,000,000"):
        read_image(tmp_path / "huge.png")
