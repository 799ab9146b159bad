"""Depth decoding, preprocessing, readers and demo data, on generated files and the shared real samples."""

from __future__ import annotations

import json
import re
import time

import numpy as np
import pytest
import torch
from lbind_depth.demo import CONCEPTS, render
from lbind_depth.encoding import decode_depth, read_depth_file
from lbind_depth.modality import DepthModality
from lbind_depth.readers import NYUD_CLASSES, depth_png_path, read_nyud, read_nyud_json
from PIL import Image

from lbcore.datasets import LayoutError
from lbcore.errors import InputError
from lbcore.image import read_image
from lbcore.manifest import read_manifest
from lbcore.testing import realdata_dir

CLIP_MEAN = torch.tensor((0.48145466, 0.4578275, 0.40821073)).view(3, 1, 1)
CLIP_STD = torch.tensor((0.26862954, 0.26130258, 0.27577711)).view(3, 1, 1)


def _modality(encoding: str = "mm_png", **kw) -> DepthModality:
    return DepthModality(DepthModality.config_preset("demo", encoding=encoding, image_size=32, **kw))


def _save16(path, arr) -> None:
    Image.fromarray(np.asarray(arr, dtype=np.uint16)).save(path)


def _le_pgm(path, arr) -> None:
    """A raw NYU-style PGM: header says maxval 65535, samples are little-endian anyway."""
    h, w = arr.shape
    path.write_bytes(f"P5\n{w} {h}\n65535\n".encode() + np.asarray(arr, dtype="<u2").tobytes())


def _normalised(unit_depth: float) -> torch.Tensor:
    return ((unit_depth - CLIP_MEAN) / CLIP_STD).expand(3, 32, 32)


# -- every encoding against a hand-computed value ----------------------------------------------------------


def test_mm_png_pixel(tmp_path):
    _save16(tmp_path / "d.png", [[2500, 0], [10, 65535]])
    metres = decode_depth(read_depth_file(tmp_path / "d.png", "mm_png"), "mm_png")
    np.testing.assert_allclose(metres, [[2.5, 0.0], [0.01, 65.535]], rtol=1e-6)


def test_sunrgbd_pixel_undoes_the_three_bit_rotation(tmp_path):
    # 8193 mm = 0b0010_0000_0000_0001; rotated left by 3 bits it is stored as 0b0000_0000_0000_1001 = 9.
    # 2500 mm is stored as 2500 * 8 = 20000 (no bits wrap around).
    _save16(tmp_path / "d.png", [[9, 20000]])
    metres = decode_depth(read_depth_file(tmp_path / "d.png", "sunrgbd"), "sunrgbd")
    np.testing.assert_allclose(metres, [[8.193, 2.5]], rtol=1e-6)


def test_tum_pixel(tmp_path):
    _save16(tmp_path / "d.png", [[12500, 5000]])
    np.testing.assert_allclose(decode_depth(read_image(tmp_path / "d.png"), "tum"), [[2.5, 1.0]], rtol=1e-6)


def test_metres_npy_pixel_and_invalid_values(tmp_path):
    np.save(tmp_path / "d.npy", np.array([[2.5, np.nan], [-1.0, np.inf]], dtype=np.float32))
    metres = decode_depth(read_depth_file(tmp_path / "d.npy", "metres_npy"), "metres_npy")
    np.testing.assert_allclose(metres, [[2.5, 0.0], [0.0, 0.0]], rtol=1e-6)


def test_nyu_disparity_pgm_is_little_endian(tmp_path):
    _le_pgm(tmp_path / "d.pgm", np.array([[1000, 2047], [700, 0]]))
    raw = read_depth_file(tmp_path / "d.pgm", "nyu_disparity")
    assert raw.tolist() == [[1000, 2047], [700, 0]]
    metres = decode_depth(raw, "nyu_disparity")
    # 351.3 / (1092.5 - raw); Kinect's 2047 (no reading) lands past the pole and counts as no reading.
    np.testing.assert_allclose(metres, [[351.3 / 92.5, 0.0], [351.3 / 392.5, 351.3 / 1092.5]], rtol=1e-6)


@pytest.mark.parametrize(
    ("encoding", "stored", "metres"),
    [("mm_png", 2500, 2.5), ("sunrgbd", 20000, 2.5), ("tum", 37500, 7.5), ("mm_png", 25000, 25.0), ("mm_png", 0, 0.0)],
)
def test_constant_file_preprocesses_to_the_clipped_normalised_value(tmp_path, encoding, stored, metres):
    _save16(tmp_path / "d.png", np.full((40, 60), stored))
    out = _modality(encoding).preprocess(tmp_path / "d.png")
    unit = min(max(metres, 0.01), 10.0) / 10.0  # clip to [min_depth, max_depth], divide by max_depth
    assert out.shape == (3, 32, 32)
    assert torch.allclose(out, _normalised(unit), atol=1e-5)


def test_metres_npy_and_disparity_files_preprocess(tmp_path):
    np.save(tmp_path / "d.npy", np.full((20, 30), 4.0))
    assert torch.allclose(_modality("metres_npy").preprocess(tmp_path / "d.npy"), _normalised(0.4), atol=1e-5)
    _le_pgm(tmp_path / "d.pgm", np.full((20, 30), 1000))
    expected = _normalised(351.3 / 92.5 / 10.0)
    assert torch.allclose(_modality("nyu_disparity").preprocess(tmp_path / "d.pgm"), expected, atol=1e-5)


def test_in_memory_arrays_and_tensors_decode_like_files(tmp_path):
    arr = _modality().example_input(seed=3)
    _save16(tmp_path / "d.png", arr)
    m = _modality()
    from_file = m.preprocess(tmp_path / "d.png")
    assert torch.equal(m.preprocess(arr), from_file)
    assert torch.equal(m.preprocess(torch.from_numpy(arr.astype(np.int32))), from_file)
    assert torch.equal(m.preprocess(str(tmp_path / "d.png")), from_file)


def test_languagebind_max_depth_and_clip_are_configurable(tmp_path):
    _save16(tmp_path / "d.png", np.full((10, 10), 3000))
    out = _modality(max_depth=5.0).preprocess(tmp_path / "d.png")
    assert torch.allclose(out, _normalised(0.6), atol=1e-5)
    with pytest.raises(Exception, match="min_depth"):
        DepthModality.config_preset("demo", min_depth=6.0, max_depth=5.0)


# -- errors ----------------------------------------------------------------------------------------------


def test_eight_bit_rgb_png_as_millimetres_is_refused(tmp_path):
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(InputError) as info:
        _modality().preprocess(tmp_path / "rgb.png")
    assert str(tmp_path / "rgb.png") in str(info.value)
    assert "16-bit single-channel" in str(info.value)
    assert "3 channels" in info.value.problem


def test_eight_bit_grey_png_is_refused(tmp_path):
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(tmp_path / "grey.png")
    with pytest.raises(InputError, match=r"8-bit single-channel image.*16-bit single-channel"):
        _modality("sunrgbd").preprocess(tmp_path / "grey.png")


def test_float_array_for_an_integer_encoding_points_at_metres_npy():
    with pytest.raises(InputError, match="metres_npy"):
        _modality().preprocess(np.full((8, 8), 2.5))


@pytest.mark.parametrize("encoding", ["mm_png", "metres_npy", "nyu_disparity"])
def test_empty_file_is_refused(tmp_path, encoding):
    path = tmp_path / {"mm_png": "d.png", "metres_npy": "d.npy", "nyu_disparity": "d.pgm"}[encoding]
    path.write_bytes(b"")
    with pytest.raises(InputError, match="empty"):
        _modality(encoding).preprocess(path)


def test_truncated_files_are_refused(tmp_path):
    _save16(tmp_path / "full.png", np.random.default_rng(0).integers(0, 9000, (64, 64)))
    (tmp_path / "cut.png").write_bytes((tmp_path / "full.png").read_bytes()[:300])
    with pytest.raises(InputError, match="truncated"):
        _modality().preprocess(tmp_path / "cut.png")
    _le_pgm(tmp_path / "full.pgm", np.full((10, 10), 900))
    (tmp_path / "cut.pgm").write_bytes((tmp_path / "full.pgm").read_bytes()[:-7])
    with pytest.raises(InputError, match="truncated"):
        _modality("nyu_disparity").preprocess(tmp_path / "cut.pgm")
    np.save(tmp_path / "full.npy", np.ones((30, 30)))
    (tmp_path / "cut.npy").write_bytes((tmp_path / "full.npy").read_bytes()[:200])
    with pytest.raises(InputError):
        _modality("metres_npy").preprocess(tmp_path / "cut.npy")


def test_not_an_image_and_pickled_npy_are_refused(tmp_path):
    (tmp_path / "d.png").write_text("not a depth map")
    with pytest.raises(InputError, match="not an image") as info:
        _modality().preprocess(tmp_path / "d.png")
    assert "mm_png" in str(info.value)  # the message says what the configured encoding expects
    np.save(tmp_path / "obj.npy", np.array([{"depth": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(InputError, match=r"not a plain \.npy"):
        _modality("metres_npy").preprocess(tmp_path / "obj.npy")


# -- determinism and augmentation ------------------------------------------------------------------------


def test_eval_is_deterministic_and_training_augments():
    m = _modality()
    raw = m.example_input(seed=5)
    assert torch.equal(m.preprocess(raw), m.preprocess(raw))
    torch.manual_seed(0)
    trained = [m.preprocess(raw, train=True) for _ in range(6)]
    assert any(not torch.equal(t, m.preprocess(raw)) for t in trained)


def test_templates_are_the_80_with_depth_photo():
    templates = DepthModality.templates
    assert len(templates) == 80
    assert templates[0] == "a bad depth photo of a {}."
    assert not any("photo" in t and "depth photo" not in t for t in templates)


def test_languagebind_preset():
    cfg = DepthModality.config_preset("languagebind")
    assert (cfg.image_size, cfg.encoder.width, cfg.encoder.depth, cfg.encoder.patch_size) == (224, 1024, 24, 14)
    assert (cfg.mask_ratio, cfg.lora.rank, cfg.lora.alpha) == (0.5, 2, 16.0)
    assert cfg.lora.targets == ["q_proj", "k_proj", "v_proj", "out_proj"]
    assert (cfg.optim.lr, cfg.optim.warmup_steps, cfg.optim.epochs, cfg.optim.batch_size) == (5e-4, 200, 1, 1024)
    assert (cfg.encoding, cfg.min_depth, cfg.max_depth, cfg.interpolation) == ("mm_png", 0.01, 10.0, "bicubic")


# -- the shared real samples -----------------------------------------------------------------------------

REAL = realdata_dir()
needs_real = pytest.mark.skipif(REAL is None, reason="shared realdata folder not found")


@needs_real
@pytest.mark.parametrize(
    ("stored", "encoding", "derived"),
    [
        ("sun_open3d/SUN_depth.png", "sunrgbd", "sun_open3d/SUN_depth_mm_derived.png"),
        ("nyu_vitlens/NYU0001_in_SUNrgbd.png", "sunrgbd", "nyu_vitlens/NYU0001_depth_mm_derived.png"),
        ("nyu_vitlens/NYU0002_in_SUNrgbd.png", "sunrgbd", "nyu_vitlens/NYU0002_depth_mm_derived.png"),
        ("tum_open3d/TUM_depth.png", "tum", "tum_open3d/TUM_depth_mm_derived.png"),
        ("nyu_open3d/NYU_depth.pgm", "nyu_disparity", "nyu_open3d/NYU_depth_mm_derived.png"),
    ],
)
def test_real_decodings_agree_with_the_derived_millimetre_files(stored, encoding, derived):
    metres = decode_depth(read_depth_file(REAL / "depth" / stored, encoding), encoding)
    reference = read_image(REAL / "depth" / derived).astype(np.float64)  # uint16 mm, 0 = no reading
    ours = np.minimum(metres.astype(np.float64) * 1000.0, 10000.0)  # the NYU file was clipped at 10 m
    assert ours.shape == reference.shape
    assert np.array_equal(ours > 0, reference > 0)
    assert np.abs(ours - reference).max() <= 0.5  # the derived files are rounded to whole millimetres
    assert (reference > 0).mean() > 0.5


@needs_real
@pytest.mark.parametrize(
    ("path", "encoding"),
    [
        ("languagebind_assets/depth/0.png", "mm_png"),
        ("languagebind_assets/depth/1.png", "mm_png"),
        ("depth/nyu_mmseg/bookstore_0001d_00001_depth.png", "mm_png"),
        ("depth/kinect2_esanet/sample_depth.png", "mm_png"),
        ("depth/sun_open3d/SUN_depth.png", "sunrgbd"),
        ("depth/tum_open3d/TUM_depth.png", "tum"),
        ("depth/nyu_open3d/NYU_depth.pgm", "nyu_disparity"),
    ],
)
def test_real_files_preprocess_with_the_languagebind_config(path, encoding):
    m = DepthModality(DepthModality.config_preset("languagebind", encoding=encoding))
    out = m.preprocess(REAL / path)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    unit = out * CLIP_STD + CLIP_MEAN  # back to clipped depth / max_depth, in [0.001, 1] before resizing
    # Bicubic resampling without antialias overshoots around holes and 0-10 m edges (by up to ~0.3 here).
    assert unit.min() > -0.4 and unit.max() < 1.4
    assert ((unit > -0.01) & (unit < 1.01)).float().mean() > 0.9
    assert out.std() > 0.05  # a real scene, not a constant
    assert torch.equal(out, m.preprocess(REAL / path))


@needs_real
def test_real_depth_png_is_not_accepted_as_another_bit_depth():
    with pytest.raises(InputError, match="16-bit single-channel"):
        DepthModality().preprocess(REAL / "depth" / "nyu_open3d" / "NYU_color.png")


# -- readers ---------------------------------------------------------------------------------------------


def _tiny_png(path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    _save16(path, np.full((4, 4), 1000))


def test_nyud_folder_per_class(tmp_path):
    for cls in NYUD_CLASSES:
        for i in range(2):
            _tiny_png(tmp_path / "val" / cls.replace(" ", "_") / f"{i}.png")
    (tmp_path / "val" / "kitchen" / "rgb.jpg").write_bytes(b"ignored")
    ds = read_nyud(tmp_path, split="val")
    assert ds.classes == sorted(NYUD_CLASSES) and len(ds) == 20 and ds.task == "classification"
    assert {it.labels for it in ds.items} == {(c,) for c in NYUD_CLASSES}
    assert all(it.path.suffix == ".png" for it in ds.items)


def test_nyud_lists_missing_class_folders(tmp_path):
    for cls in ("bedroom", "kitchen"):
        _tiny_png(tmp_path / cls / "0.png")
    with pytest.raises(LayoutError) as info:
        read_nyud(tmp_path)
    assert "living_room" in str(info.value) and "bathroom" in str(info.value)
    with pytest.raises(LayoutError, match="does not exist"):
        read_nyud(tmp_path / "nowhere")


def _json_rows() -> list[dict]:
    return [
        {"image_path": "kv1/A/image/A.jpg", "depth_path": "kv1/A/depth_bfx/A.png", "benchmark_label": "kitchen"},
        {
            "image_path": "kv1/B/image/B.jpg",
            "depth_path": "kv1/B/depth_bfx/B_disparity.pt",
            "benchmark_label": "others",
        },
    ]


def test_nyud_json_layout(tmp_path):
    (tmp_path / "NYU-Depth-v2_val.json").write_text(json.dumps(_json_rows()))
    _tiny_png(tmp_path / "kv1/A/depth_bfx/A.png")
    with pytest.raises(LayoutError, match=re.escape("kv1/B/depth_bfx/B.png")):  # the .pt pickle is never used
        read_nyud_json(tmp_path)
    _tiny_png(tmp_path / "kv1/B/depth_bfx/B.png")
    ds = read_nyud_json(tmp_path)
    assert [it.path for it in ds.items] == [tmp_path / "kv1/A/depth_bfx/A.png", tmp_path / "kv1/B/depth_bfx/B.png"]
    assert ds.classes == ["kitchen", "others"] and ds.split == "val"


def test_nyud_json_rejects_malformed_rows(tmp_path):
    (tmp_path / "NYU-Depth-v2_val.json").write_text(json.dumps([{"image_path": "x.jpg"}]))
    with pytest.raises(LayoutError, match="benchmark_label"):
        read_nyud_json(tmp_path)
    with pytest.raises(LayoutError, match=re.escape("NYU-Depth-v2_train.json")):
        read_nyud_json(tmp_path, split="train")


@needs_real
def test_nyud_json_reads_the_real_label_list(tmp_path):
    ann = REAL / "depth" / "nyu_scene_labels" / "NYU-Depth-v2_val.json"
    with pytest.raises(LayoutError, match="654 path"):  # the SUN RGB-D tree itself is not shipped
        read_nyud_json(tmp_path, annotations=ann)
    rows = json.loads(ann.read_text())
    for row in rows:
        _tiny_png(tmp_path / depth_png_path(row))
    ds = read_nyud_json(tmp_path, annotations=ann)
    assert len(ds) == 654 and ds.classes == sorted(NYUD_CLASSES)


# -- demo data -------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_demo_data_is_deterministic_by_seed_and_well_formed(tmp_path):
    m = _modality()
    start = time.perf_counter()
    m.make_demo_data(tmp_path / "a", seed=0)
    assert time.perf_counter() - start < 20
    m.make_demo_data(tmp_path / "b", seed=0)
    train, test = read_manifest(tmp_path / "a" / "train.jsonl"), read_manifest(tmp_path / "a" / "test.jsonl")
    labels = [c.label for c in CONCEPTS]
    assert len(labels) >= 6 and len(set(labels)) == len(labels)
    assert [e.label for e in train].count(labels[0]) == 40 and [e.label for e in test].count(labels[0]) == 10
    assert len(train) == 40 * len(labels) and len(test) == 10 * len(labels)
    assert all(len(c.captions) >= 3 for c in CONCEPTS)
    files = sorted(e.path.relative_to(tmp_path / "a") for e in train + test)
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    assert (tmp_path / "a" / "train.jsonl").read_bytes() == (tmp_path / "b" / "train.jsonl").read_bytes()
    sample = read_image(train[0].path)
    assert sample.dtype == np.uint16 and sample.ndim == 2 and 64 <= min(sample.shape) <= max(sample.shape) <= 96
    assert 0 < np.median(sample) < 20000  # millimetres of an indoor scene
    assert m.preprocess(train[0].path).shape == (3, 32, 32)


def test_demo_scenes_depend_on_the_seed_and_split():
    for concept in CONCEPTS:
        first = [render(concept, np.random.default_rng([0, 0, 1]), False) for _ in range(2)]
        other = render(concept, np.random.default_rng([1, 0, 1]), False)
        held_out = render(concept, np.random.default_rng([0, 0, 1]), True)
        assert np.array_equal(first[0], first[1])
        assert other.shape != first[0].shape or not np.array_equal(other, first[0])
        assert 72 <= min(held_out.shape)  # the test split is drawn with other (larger) image sizes
