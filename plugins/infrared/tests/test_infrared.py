"""Infrared preprocessing of every image variant, readers and demo data, on generated files and real samples."""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
from lbind_infrared.demo import CONCEPTS, render
from lbind_infrared.modality import InfraredModality
from lbind_infrared.readers import read_flir, read_llvip
from PIL import Image

from lbcore.datasets import LayoutError
from lbcore.errors import InputError
from lbcore.image import read_image
from lbcore.manifest import read_manifest
from lbcore.testing import realdata_dir

CLIP_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
CLIP_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)


def _modality(**kw) -> InfraredModality:
    return InfraredModality(InfraredModality.config_preset("demo", image_size=32, **kw))


def _grey(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (40, 56), dtype=np.uint8)


# -- every format variant becomes the same 3-channel input -----------------------------------------------


def test_grey_rgb_rgba_and_sixteen_bit_files_agree(tmp_path):
    grey = _grey()
    rgb = np.stack([grey] * 3, -1)
    alpha = np.random.default_rng(1).integers(0, 256, grey.shape, dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(np.dstack([rgb, alpha])).save(tmp_path / "rgba.png")
    Image.fromarray(np.dstack([grey, alpha]), mode="LA").save(tmp_path / "la.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")  # v * 257 / 65535 == v / 255
    Image.fromarray(grey).convert("P").save(tmp_path / "palette.png")
    m = _modality()
    reference = m.preprocess(tmp_path / "grey.png")
    assert reference.shape == (3, 32, 32) and reference.dtype == torch.float32
    assert torch.allclose(
        reference[0] * CLIP_STD[0] + CLIP_MEAN[0], reference[2] * CLIP_STD[2] + CLIP_MEAN[2], atol=1e-5
    )
    for name in ("rgb.png", "rgba.png", "la.png", "grey16.png", "palette.png"):
        assert torch.allclose(m.preprocess(tmp_path / name), reference, atol=1e-5), name


def test_jpeg_files_in_grey_and_rgb(tmp_path):
    flat = np.full((40, 56), 100, dtype=np.uint8)
    Image.fromarray(flat).save(tmp_path / "grey.jpg", quality=95)
    Image.fromarray(np.stack([flat] * 3, -1)).save(tmp_path / "rgb.jpg", quality=95)
    m = _modality()
    expected = (100 / 255 - CLIP_MEAN) / CLIP_STD
    for name in ("grey.jpg", "rgb.jpg"):
        out = m.preprocess(tmp_path / name)
        assert out.shape == (3, 32, 32)
        assert torch.allclose(out, expected.expand(3, 32, 32), atol=0.05)


@pytest.mark.parametrize("shape", [(40, 56), (40, 56, 1), (40, 56, 3), (40, 56, 4)])
def test_arrays_of_any_channel_count_work(shape):
    arr = np.random.default_rng(2).integers(0, 256, shape, dtype=np.uint8)
    out = _modality().preprocess(arr)
    assert out.shape == (3, 32, 32) and torch.isfinite(out).all()


def test_colour_is_kept_for_rgb_input():
    arr = np.zeros((40, 40, 3), dtype=np.uint8)
    arr[..., 0] = 255  # pure red
    out = _modality().preprocess(arr) * CLIP_STD + CLIP_MEAN
    assert torch.allclose(out[0], torch.ones(32, 32), atol=1e-5)
    assert torch.allclose(out[1:], torch.zeros(2, 32, 32), atol=1e-5)


# -- errors ----------------------------------------------------------------------------------------------


def test_bad_files_are_refused_with_the_file_named(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("not an image")
    Image.fromarray(_grey()).save(tmp_path / "full.jpg")
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "full.jpg").read_bytes()[:400])
    m = _modality()
    for name, problem in (("empty.jpg", "empty"), ("text.jpg", "not an image"), ("cut.jpg", "truncated")):
        with pytest.raises(InputError) as info:
            m.preprocess(tmp_path / name)
        assert problem in info.value.problem and name in str(info.value)


def test_bad_arrays_are_refused():
    with pytest.raises(InputError):
        _modality().preprocess(np.zeros((40, 56, 5), dtype=np.uint8))
    with pytest.raises(InputError):
        _modality().preprocess(np.full((40, 56), 300.0))


# -- determinism, augmentation, presets, templates -------------------------------------------------------


def test_eval_is_deterministic_and_training_augments():
    m = _modality()
    raw = m.example_input(seed=4)
    assert torch.equal(m.preprocess(raw), m.preprocess(raw))
    torch.manual_seed(0)
    assert any(not torch.equal(m.preprocess(raw, train=True), m.preprocess(raw)) for _ in range(6))


def test_templates_are_the_80_standard_ones():
    assert len(InfraredModality.templates) == 80
    assert InfraredModality.templates[0] == "a bad photo of a {}."


def test_languagebind_preset():
    cfg = InfraredModality.config_preset("languagebind")
    assert (cfg.image_size, cfg.encoder.width, cfg.encoder.depth, cfg.encoder.patch_size) == (224, 1024, 24, 14)
    assert (cfg.mask_ratio, cfg.lora.rank, cfg.lora.alpha) == (0.5, 2, 16.0)
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.epochs, cfg.optim.batch_size) == (1e-4, 200, 1, 1024)
    assert cfg.interpolation == "bicubic" and cfg.antialias is False


# -- the shared real samples -----------------------------------------------------------------------------

REAL = realdata_dir()


@pytest.mark.skipif(REAL is None, reason="shared realdata folder not found")
@pytest.mark.parametrize(
    "path",
    [
        "thermal/llvip_crops/person.jpg",  # a PNG with alpha behind a .jpg name
        "thermal/llvip_crops/background.jpg",
        "thermal/llvip_pairs/ir/190001.jpg",
        "languagebind_assets/thermal/0.jpg",
        "languagebind_assets/thermal/1.jpg",
    ],
)
def test_real_thermal_images_preprocess_with_the_languagebind_config(path):
    m = InfraredModality(InfraredModality.config_preset("languagebind"))
    out = m.preprocess(REAL / path)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    unit = out * CLIP_STD + CLIP_MEAN  # back to [0, 1] pixels, give or take bicubic overshoot
    assert unit.min() > -0.4 and unit.max() < 1.4
    assert ((unit > -0.01) & (unit < 1.01)).float().mean() > 0.9
    assert out.std() > 0.05
    assert torch.equal(out, m.preprocess(REAL / path))


# -- readers ---------------------------------------------------------------------------------------------


def _tiny(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_grey()[:8, :8]).save(path)


def test_llvip_layout(tmp_path):
    for cls in ("background", "person"):
        for i in range(3):
            _tiny(tmp_path / "test" / cls / f"{i}.jpg")
    ds = read_llvip(tmp_path, split="test")
    assert ds.name == "llvip" and ds.classes == ["background", "person"] and len(ds) == 6
    assert {it.labels[0] for it in ds.items} == {"background", "person"}


def test_llvip_lists_what_is_wrong(tmp_path):
    _tiny(tmp_path / "infrared" / "0.jpg")
    _tiny(tmp_path / "visible" / "0.jpg")
    with pytest.raises(LayoutError) as info:
        read_llvip(tmp_path)
    message = str(info.value)
    assert "background" in message and "person" in message and "infrared" in message and "visible" in message
    with pytest.raises(LayoutError, match="does not exist"):
        read_llvip(tmp_path / "nowhere")


def test_flir_layout_and_errors(tmp_path):
    for cls in ("bicycle", "car", "person"):
        _tiny(tmp_path / "v2" / cls / "a.png")
    ds = read_flir(tmp_path / "v2")
    assert ds.name == "flir" and ds.classes == ["bicycle", "car", "person"] and len(ds) == 3
    (tmp_path / "v2" / "dog").mkdir()
    with pytest.raises(LayoutError, match="dog"):
        read_flir(tmp_path / "v2")


def test_readers_are_registered():
    assert set(_modality().dataset_readers()) == {"llvip", "flir"}


# -- demo data -------------------------------------------------------------------------------------------


def test_demo_data_is_deterministic_by_seed_and_well_formed(tmp_path):
    m = _modality()
    start = time.perf_counter()
    m.make_demo_data(tmp_path / "a", seed=0)
    assert time.perf_counter() - start < 20
    m.make_demo_data(tmp_path / "b", seed=0)
    train, test = read_manifest(tmp_path / "a" / "train.jsonl"), read_manifest(tmp_path / "a" / "test.jsonl")
    labels = [c.label for c in CONCEPTS]
    assert len(labels) >= 6 and len(set(labels)) == len(labels)
    assert len(train) == 40 * len(labels) and len(test) == 10 * len(labels)
    assert all(len(c.captions) >= 3 for c in CONCEPTS)
    assert {e.path.suffix for e in train} == {".png", ".jpg"}
    files = sorted(e.path.relative_to(tmp_path / "a") for e in train + test)
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / "test.jsonl").read_bytes() == (tmp_path / "b" / "test.jsonl").read_bytes()
    sample = read_image(train[0].path)
    assert sample.dtype == np.uint8 and sample.ndim == 2 and 64 <= min(sample.shape) <= max(sample.shape) <= 96
    assert m.preprocess(train[0].path).shape == (3, 32, 32)


def test_demo_scenes_depend_on_the_seed_and_split():
    for concept in CONCEPTS:
        first = [render(concept, np.random.default_rng([0, 0, 1]), False) for _ in range(2)]
        other = render(concept, np.random.default_rng([1, 0, 1]), False)
        held_out = render(concept, np.random.default_rng([0, 0, 1]), True)
        assert np.array_equal(first[0], first[1])
        assert other.shape != first[0].shape or not np.array_equal(other, first[0])
        assert 72 <= min(held_out.shape)


def test_warm_things_are_brighter_than_the_background():
    rng = np.random.default_rng(0)
    for concept in CONCEPTS:
        image = render(concept, rng, False).astype(float)
        top = np.percentile(image, 99.5)
        if concept.label == "empty road":
            assert top < 140, "the empty scene must hold nothing hot"
        else:
            assert top > 150, f"{concept.label}: no warm object"
