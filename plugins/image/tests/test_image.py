"""Image preprocessing (against torchvision's PIL transform, OpenCLIP's), readers and demo data, on generated
files and real samples."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from lbind_image.demo import CONCEPTS, render
from lbind_image.modality import ImageModality
from lbind_image.readers import read_imagefolder
from PIL import Image
from torchvision import transforms as T

from lbcore.datasets import LayoutError
from lbcore.errors import InputError
from lbcore.image import read_image
from lbcore.manifest import read_manifest
from lbcore.testing import realdata_dir

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
MEAN = torch.tensor(CLIP_MEAN).view(3, 1, 1)
STD = torch.tensor(CLIP_STD).view(3, 1, 1)


def _modality(**kw) -> ImageModality:
    return ImageModality(ImageModality.config_preset("demo", image_size=32, **kw))


def _openclip_transform(size: int) -> T.Compose:
    """OpenCLIP's eval transform for CLIP weights: PIL bicubic resize of the short side, centre crop, normalise."""
    return T.Compose(
        [
            T.Resize(size, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(size),
            T.ToTensor(),
            T.Normalize(CLIP_MEAN, CLIP_STD),
        ]
    )


def _rgb(seed: int = 0, shape: tuple[int, int] = (40, 56)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (*shape, 3), dtype=np.uint8)


# -- preprocessing -----------------------------------------------------------------------------------------


def test_downscaling_follows_the_pil_transform_of_openclip(tmp_path):
    # A smooth picture with a sharp edge, shrunk 3x: antialiasing decides what the edge looks like.
    y, x = np.mgrid[0:96, 0:144]
    arr = np.stack([(x * 255 / 143), (y * 255 / 95), ((x // 6 + y // 6) % 2) * 255], -1).astype(np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    reference = _openclip_transform(32)(Image.open(tmp_path / "a.png"))
    ours = _modality().preprocess(tmp_path / "a.png")
    assert ours.shape == reference.shape == (3, 32, 32)
    # PIL rounds to uint8 after resizing and uses a slightly different cubic; the two agree closely ...
    assert (ours - reference).abs().mean() < 0.02
    # ... and much more closely than the non-antialiased resize LanguageBind's tensor pipeline used.
    plain = _modality(antialias=False).preprocess(tmp_path / "a.png")
    assert (plain - reference).abs().mean() > 5 * (ours - reference).abs().mean()


def test_grey_rgba_palette_and_sixteen_bit_files_become_the_same_rgb(tmp_path):
    grey = _rgb()[..., 0]
    Image.fromarray(np.stack([grey] * 3, -1)).save(tmp_path / "rgb.png")
    Image.fromarray(grey).save(tmp_path / "grey.png")
    Image.fromarray(grey.astype(np.uint16) * 257).save(tmp_path / "grey16.png")  # v * 257 / 65535 == v / 255
    alpha = np.full(grey.shape, 128, dtype=np.uint8)
    Image.fromarray(np.dstack([grey, grey, grey, alpha])).save(tmp_path / "rgba.png")
    Image.fromarray(grey).convert("P").save(tmp_path / "palette.png")
    m = _modality()
    reference = m.preprocess(tmp_path / "rgb.png")
    for name in ("grey.png", "grey16.png", "rgba.png", "palette.png"):
        assert torch.allclose(m.preprocess(tmp_path / name), reference, atol=1e-5), name


def test_colour_channels_stay_in_rgb_order():
    arr = np.zeros((40, 40, 3), dtype=np.uint8)
    arr[..., 2] = 255  # pure blue
    out = _modality().preprocess(arr) * STD + MEAN
    assert torch.allclose(out[2], torch.ones(32, 32), atol=1e-5)
    assert torch.allclose(out[:2], torch.zeros(2, 32, 32), atol=1e-5)


def test_training_crops_at_random_and_flips_while_eval_takes_the_centre():
    arr = _rgb(seed=3, shape=(32, 48))  # short side already 32: the resize keeps every pixel
    m = _modality()
    pixels = (torch.from_numpy(arr).permute(2, 0, 1).float() / 255 - MEAN) / STD  # [3, 32, 48]
    assert torch.allclose(m.preprocess(arr), pixels[:, :, 8:40], atol=1e-5)
    crops = [pixels[:, :, left : left + 32] for left in range(17)]
    candidates = crops + [c.flip(-1) for c in crops]
    torch.manual_seed(0)
    seen = set()
    for _ in range(12):
        out = m.preprocess(arr, train=True)
        matches = [i for i, c in enumerate(candidates) if torch.allclose(out, c, atol=1e-5)]
        assert matches, "a training crop is not a flipped or unflipped 32 x 32 window of the image"
        seen.add(matches[0])
    assert any(i >= 17 for i in seen) and any(i < 17 for i in seen), "flips never (or always) happened"
    assert len({i % 17 for i in seen}) > 2, "the crop position does not vary"


def test_bad_input_is_refused_with_the_file_named(tmp_path):
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "empty.jpg").write_bytes(b"")
    m = _modality()
    for name, problem in (("text.png", "not an image"), ("empty.jpg", "empty")):
        with pytest.raises(InputError) as info:
            m.preprocess(tmp_path / name)
        assert problem in info.value.problem and name in str(info.value)
    with pytest.raises(InputError):
        m.preprocess(np.zeros((40, 56, 5), dtype=np.uint8))


# -- presets and templates ---------------------------------------------------------------------------------


def test_languagebind_preset_is_a_plain_clip_vit_l14():
    cfg = ImageModality.config_preset("languagebind")
    assert (cfg.image_size, cfg.encoder.width, cfg.encoder.depth, cfg.encoder.heads) == (224, 1024, 24, 16)
    assert (cfg.encoder.patch_size, cfg.encoder.act, cfg.encoder.layer_norm_eps) == (14, "gelu", 1e-5)
    assert (cfg.mask_ratio, cfg.lora.rank, cfg.optim.lr) == (0.0, 0, 1e-4)
    assert (cfg.interpolation, cfg.antialias) == ("bicubic", True)
    assert (cfg.mean, cfg.std) == (CLIP_MEAN, CLIP_STD)
    assert ImageModality(cfg).build_stem().grid_size == (16, 16)


def test_templates_are_the_80_standard_ones():
    assert len(ImageModality.templates) == 80
    assert ImageModality.templates[0] == "a bad photo of a {}."


# -- the shared real samples -------------------------------------------------------------------------------

REAL = realdata_dir()


@pytest.mark.skipif(REAL is None, reason="shared realdata folder not found")
@pytest.mark.parametrize(
    "path",
    [
        "languagebind_assets/image/0.jpg",
        "languagebind_assets/image/1.jpg",
        "imagebind_assets/dog_image.jpg",
        "imagebind_assets/car_image.jpg",
        "imagebind_assets/bird_image.jpg",
    ],
)
def test_real_images_match_the_openclip_transform(path):
    m = ImageModality(ImageModality.config_preset("languagebind"))
    out = m.preprocess(REAL / path)
    assert out.shape == (3, 224, 224) and out.dtype == torch.float32
    with Image.open(REAL / path) as img:
        reference = _openclip_transform(224)(img.convert("RGB"))
    diff = (out - reference).abs()
    assert diff.mean() < 0.01 and diff.flatten().quantile(0.99) < 0.03
    assert torch.equal(out, m.preprocess(REAL / path))


# -- readers -----------------------------------------------------------------------------------------------


def test_imagefolder_layout_and_errors(tmp_path):
    for cls in ("golden_retriever", "tabby cat"):
        for i in range(2):
            path = tmp_path / "val" / cls / f"{i}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(_rgb(i)[:8, :8]).save(path)
    ds = read_imagefolder(tmp_path, split="val")
    assert ds.name == "imagefolder" and ds.classes == ["golden retriever", "tabby cat"] and len(ds) == 4
    assert _modality().dataset_readers()["imagefolder"] is read_imagefolder
    (tmp_path / "val" / "empty_class").mkdir()
    with pytest.raises(LayoutError, match="empty_class"):
        read_imagefolder(tmp_path, split="val")
    with pytest.raises(LayoutError):
        read_imagefolder(tmp_path, split="train")


# -- demo data ---------------------------------------------------------------------------------------------


def test_demo_data_is_deterministic_by_seed_and_well_formed(tmp_path):
    m = _modality()
    m.make_demo_data(tmp_path / "a", seed=0)
    m.make_demo_data(tmp_path / "b", seed=0)
    train, test = read_manifest(tmp_path / "a" / "train.jsonl"), read_manifest(tmp_path / "a" / "test.jsonl")
    labels = [c.label for c in CONCEPTS]
    assert len(labels) >= 6 and len(set(labels)) == len(labels)
    assert len(train) == 40 * len(labels) and len(test) == 10 * len(labels)
    assert {e.path.suffix for e in train} == {".png", ".jpg"}
    files = sorted(e.path.relative_to(tmp_path / "a") for e in train + test)
    assert all((tmp_path / "a" / f).read_bytes() == (tmp_path / "b" / f).read_bytes() for f in files)
    sample = read_image(train[0].path)
    assert sample.dtype == np.uint8 and sample.ndim == 3 and sample.shape[2] == 3
    assert m.preprocess(train[0].path).shape == (3, 32, 32)


def test_demo_scenes_show_what_their_captions_say():
    rng = np.random.default_rng(0)
    for concept in CONCEPTS:
        for _ in range(3):
            img = render(concept, rng, test=False).astype(float) / 255  # [H, W, 3]
            r, g, b = img[..., 0], img[..., 1], img[..., 2]
            if concept.label == "red circle":
                assert ((r > 0.6) & (g < 0.3) & (b < 0.3)).mean() > 0.05
            elif concept.label == "blue square":
                assert ((b > 0.6) & (r < 0.3) & (g < 0.4)).mean() > 0.05
            elif concept.label == "green triangle":
                assert ((g > 0.5) & (r < 0.3) & (b < 0.3)).mean() > 0.03
            elif concept.label == "checkerboard":
                grey = img.mean(-1)
                assert (grey < 0.25).mean() > 0.3 and (grey > 0.75).mean() > 0.3
            elif concept.label == "starry night":
                assert (b > r).mean() > 0.8 and (img.mean(-1) > 0.7).mean() > 0.001
            elif concept.label == "sunset":
                top, middle = img[: img.shape[0] // 4], img[img.shape[0] // 2 : img.shape[0] * 3 // 4]
                assert middle[..., 0].mean() > top[..., 0].mean() and top[..., 2].mean() > middle[..., 2].mean()
    held_out = render(CONCEPTS[0], np.random.default_rng([0, 1, 0]), test=True)
    assert min(held_out.shape[:2]) >= 72
