"""Adapter-only checkpoints: LoRA factors + trained extras + a hashed reference to the base weights.

The reference for every equality is peft itself: a full checkpoint merges the live peft adapters with peft's own
``get_delta_weight``; an adapter checkpoint of the same model, loaded onto its base, must give the same
embeddings. Bases are tiny transformers CLIP vision towers or other lbind checkpoints, written here.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

import lbcore
from lbcore import hookimpl
from lbcore.checkpoint import state_sha256
from lbcore.config import AnchorConfig, ModalityConfig
from lbcore.errors import CheckpointError
from lbcore.lora import LORA_A, LORA_B, adapter_state, apply_lora, base_encoder_state
from lbcore.manifest import write_manifest
from lbcore.modality import Modality
from lbcore.model import BindModel, base_reference
from lbcore.nn import PatchStem2d
from lbcore.plugins import default_registry

EMBED = 16
SIDE = 16  # input side: a 2 x 2 grid of 8-pixel patches
TINY: dict[str, Any] = {
    "encoder": {"width": 32, "depth": 2, "heads": 2, "patch_size": 8, "mlp_ratio": 2.0},
    "lora": {"rank": 2, "alpha": 16.0},
    "optim": {"lr": 1e-2, "warmup_steps": 1, "epochs": 1, "batch_size": 4},
}


class Pic(Modality):
    """A 3 x 16 x 16 float input read from .npy files: just enough of an image to hold CLIP weights."""

    name = "pic"
    Config = ModalityConfig
    presets = {"languagebind": TINY, "demo": TINY}  # noqa: RUF012
    templates = ("a picture of {}.",)

    def preprocess(self, item: Any, train: bool = False) -> torch.Tensor:
        if isinstance(item, (str, os.PathLike)):
            item = np.load(item, allow_pickle=False)
        return torch.as_tensor(np.asarray(item, dtype=np.float32)).reshape(3, SIDE, SIDE)

    def example_input(self, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).standard_normal((3, SIDE, SIDE)).astype(np.float32)

    def build_stem(self) -> PatchStem2d:
        return PatchStem2d(3, self.config.encoder.width, self.config.encoder.patch_size, (SIDE, SIDE))


class Pic2(Pic):
    name = "pic2"


class _Plugin:
    @hookimpl
    def register_modalities(self, register: Any) -> None:
        register(Pic)
        register(Pic2)


@pytest.fixture(autouse=True)
def _registered() -> None:
    default_registry().add_plugin(_Plugin(), "adapter-test")


def write_clip(path: Path, seed: int) -> Path:
    """A tiny transformers CLIP vision tower with projection, shaped like the TINY encoder, saved to ``path``."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=SIDE,
        patch_size=8,
        projection_dim=EMBED,
        hidden_act="gelu",
    )
    CLIPVisionModelWithProjection(cfg).save_pretrained(path)
    return path


def model_on(names: tuple[str, ...] = ("pic",), rank: int = 2) -> BindModel:
    """A BindModel of freshly built (random) encoders, as the trainer builds them before initialisation."""
    mods = {}
    for name in names:
        cls = default_registry().registered(name).cls
        mods[name] = cls(cls.config_preset("demo", lora={"rank": rank}))
    torch.manual_seed(0)
    encoders = {n: m.build_encoder(EMBED) for n, m in mods.items()}
    return BindModel(AnchorConfig(), encoders, mods, anchor_fingerprint="0" * 64, embed_dim=EMBED)


def train_adapters(model: BindModel, only: tuple[str, ...] | None = None, seed: int = 1) -> None:
    """Inject LoRA and move what training moves (adapters and extras) away from their initial values."""
    gen = torch.Generator().manual_seed(seed)
    for name, mod in model.modalities.items():
        if only is not None and name not in only:
            continue
        apply_lora(model.encoders[name], mod.config)
        with torch.no_grad():
            for _, p in model.encoders[name].named_parameters():
                if p.requires_grad:  # lora_A / lora_B, class token, post-norm, projection
                    p.add_(0.1 * torch.randn(p.shape, generator=gen))


def inputs(n: int = 5) -> torch.Tensor:
    return torch.randn(n, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(7))


# --------------------------------------------------------------------------------------------- round trips
def test_adapter_checkpoint_gives_the_embeddings_of_the_full_checkpoint(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    from lbcore.convert import load_clip_vision_into

    clip = write_clip(tmp_path / "clip", seed=0)
    model = model_on()
    load_clip_vision_into(model.encoders["pic"], clip)
    model.base_sources["pic"] = base_reference(f"clip:{clip}")
    train_adapters(model)
    live = model.embed("pic", inputs())

    full = model.save_pretrained(tmp_path / "full")
    small = model.save_pretrained(tmp_path / "adapter", adapter_only=True)
    meta = json.loads((small / "lbind.json").read_text())
    spec = meta["modalities"]["pic"]
    assert meta["format_version"] == 2 and json.loads((full / "lbind.json").read_text())["format_version"] == 1
    assert spec["weights"] == "adapter" and spec["file"] == "pic.safetensors"
    assert spec["base"]["source"] == f"clip:{clip.resolve()}" and len(spec["base"]["sha256"]) == 64
    assert spec["lora"] == {
        "rank": 2,
        "alpha": 16.0,
        "targets": ["q_proj", "k_proj", "v_proj", "out_proj"],
        "scaling": 8.0,
        "layers": 8,
    }
    stored = load_file(str(small / "pic.safetensors"))
    lora = sorted(k for k in stored if k.endswith((LORA_A, LORA_B)))
    assert len(lora) == 16 and stored["trunk.blocks.0.attn.q_proj.lora_A.weight"].shape == (2, 32)
    assert sorted(set(stored) - set(lora)) == [
        "head.norm.bias",
        "head.norm.weight",
        "head.proj.weight",
        "trunk.class_embedding",
    ]

    from_full, from_adapter = lbcore.load(full), lbcore.load(small)
    torch.testing.assert_close(from_adapter.embed("pic", inputs()), from_full.embed("pic", inputs()), atol=1e-6, rtol=0)
    torch.testing.assert_close(from_adapter.embed("pic", inputs()), live, atol=1e-5, rtol=0)
    for key, value in from_full.encoders["pic"].state_dict().items():
        torch.testing.assert_close(from_adapter.encoders["pic"].state_dict()[key], value, atol=1e-6, rtol=0)
    # The frozen tensors are CLIP's, bit for bit, and nothing is left unmerged.
    assert not any("lora" in k for k in from_adapter.encoders["pic"].state_dict())
    assert (small / "pic.safetensors").stat().st_size < (full / "pic.safetensors").stat().st_size / 3


def test_an_lbind_checkpoint_can_be_the_base_and_a_rank_zero_modality_stays_full(tmp_path: Path) -> None:
    base_model = model_on(("pic", "pic2"), rank=0)  # scratch-initialised, saved in full: a reusable base
    base_dir = base_model.save_pretrained(tmp_path / "base")
    model = lbcore.load(base_dir)
    model.modalities["pic"] = Pic(Pic.config_preset("demo"))  # fine-tune pic with LoRA rank 2 from that base
    model.base_sources["pic"] = base_reference(f"lbind:{base_dir}")
    with torch.no_grad():
        model.encoders["pic2"].head.proj.weight.mul_(2.0)  # pic2 keeps training in full
    train_adapters(model, only=("pic",))
    saved = model.save_pretrained(tmp_path / "tuned", adapter_only=True)
    meta = json.loads((saved / "lbind.json").read_text())
    assert meta["modalities"]["pic"]["weights"] == "adapter"
    assert meta["modalities"]["pic"]["base"]["source"] == f"lbind:{base_dir.resolve()}"
    assert meta["modalities"]["pic2"]["weights"] == "full"
    full = model.save_pretrained(tmp_path / "full")
    loaded, reference = lbcore.load(saved), lbcore.load(full)
    for name in ("pic", "pic2"):
        torch.testing.assert_close(loaded.embed(name, inputs()), reference.embed(name, inputs()), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------------------------- refusals
def test_a_changed_or_missing_base_is_refused_naming_both_hashes(tmp_path: Path) -> None:
    from lbcore.convert import load_clip_vision_into

    clip = write_clip(tmp_path / "clip", seed=0)
    model = model_on()
    load_clip_vision_into(model.encoders["pic"], clip)
    model.base_sources["pic"] = base_reference(f"clip:{clip}")
    train_adapters(model)
    saved = model.save_pretrained(tmp_path / "ckpt", adapter_only=True)
    recorded = json.loads((saved / "lbind.json").read_text())["modalities"]["pic"]["base"]["sha256"]

    shutil.move(clip, tmp_path / "moved")
    with pytest.raises(CheckpointError) as missing:
        lbcore.load(saved)
    assert str(clip.resolve()) in str(missing.value) and "base=" in str(missing.value)
    # Moved base weights load when told where they are; the hash still guards them.
    moved = lbcore.load(saved, base={"pic": f"clip:{tmp_path / 'moved'}"})
    torch.testing.assert_close(moved.embed("pic", inputs()), model.embed("pic", inputs()), atol=1e-5, rtol=0)

    write_clip(clip, seed=1)  # another model where the base used to be
    with pytest.raises(CheckpointError) as changed:
        lbcore.load(saved)
    message = str(changed.value)
    assert recorded in message and "clip:" in message
    other = [h for h in re.findall(r"\b[0-9a-f]{64}\b", message) if h != recorded]
    assert other, f"the base's actual hash is not named: {message}"


def test_adapter_only_needs_a_base_that_reproduces_the_frozen_weights(tmp_path: Path) -> None:
    scratch = model_on()
    train_adapters(scratch)
    with pytest.raises(CheckpointError, match="initialised from scratch"):
        scratch.save_pretrained(tmp_path / "a", adapter_only=True)
    assert not (tmp_path / "a").exists()
    # A base the encoder was not initialised from is caught when saving, not when loading.
    scratch.base_sources["pic"] = base_reference(f"clip:{write_clip(tmp_path / 'clip', seed=0)}")
    with pytest.raises(CheckpointError, match="not initialised from this source"):
        scratch.save_pretrained(tmp_path / "b", adapter_only=True)
    # Rank 0 has no adapter: adapter_only=True saves it in full, naming it explicitly is an error.
    plain = model_on(rank=0)
    saved = plain.save_pretrained(tmp_path / "c", adapter_only=True)
    assert json.loads((saved / "lbind.json").read_text())["modalities"]["pic"]["weights"] == "full"
    with pytest.raises(CheckpointError, match=r"lora\.rank 0"):
        plain.save_pretrained(tmp_path / "d", adapter_only=["pic"])
    # A loaded checkpoint holds merged weights: no adapter left to save alone.
    with pytest.raises(CheckpointError, match="no LoRA adapters"):
        lbcore.load(scratch.save_pretrained(tmp_path / "e")).save_pretrained(tmp_path / "f", adapter_only=["pic"])


def test_the_base_hash_covers_names_dtypes_shapes_and_every_byte() -> None:
    state = {"a": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4)}
    digest = state_sha256(state)
    assert digest == state_sha256({"b": torch.ones(4), "a": torch.arange(6, dtype=torch.float32).reshape(2, 3)})
    assert digest == state_sha256({"a": state["a"].t().contiguous().t(), "b": state["b"]})  # layout does not count
    bumped = state["a"].clone()
    bumped.view(-1)[5] = torch.nextafter(bumped.view(-1)[5], torch.tensor(10.0))
    for changed in (
        {"a": bumped, "b": state["b"]},
        {"a": state["a"].reshape(3, 2), "b": state["b"]},
        {"a": state["a"].double(), "b": state["b"]},
        {"a2": state["a"], "b": state["b"]},
    ):
        assert state_sha256(changed) != digest


# ------------------------------------------------------------------------------------------------- sizes
def vit_l_counts(rank: int) -> tuple[int, int]:
    """(adapter, full) parameter counts of a LanguageBind ViT-L/14 encoder (224 px, 768-d head) with LoRA of
    ``rank``, built without memory (meta tensors)."""
    from accelerate import init_empty_weights

    config = Pic.config_preset(
        "languagebind",
        encoder={"width": 1024, "depth": 24, "heads": 16, "patch_size": 14, "mlp_ratio": 4.0},
        lora={"rank": rank},
    )
    modality = Pic(config)
    modality.build_stem = lambda: PatchStem2d(3, 1024, 14, (224, 224))  # type: ignore[method-assign]
    with init_empty_weights():
        encoder = modality.build_encoder(768)
    full = sum(v.numel() for v in base_encoder_state(encoder).values())
    apply_lora(encoder, config)
    tensors, scaling = adapter_state(encoder, config.lora.trainable_extras)
    assert scaling == 16.0 / rank
    return sum(v.numel() for v in tensors.values()), full


@pytest.mark.parametrize("rank", [2, 16])
def test_a_vit_l14_adapter_is_a_small_fraction_of_the_encoder(rank: int) -> None:
    adapter, full = vit_l_counts(rank)
    width, layers, projections = 1024, 24, 4
    lora = layers * projections * rank * (width + width)  # A [r, in] + B [out, r] per q/k/v/out projection
    extras = width + 2 * width + width * 768  # class token, post-LayerNorm, projection
    assert adapter == lora + extras
    # CLIP ViT-L/14 vision tower: 303.2 M parameters without the projection (0.79 M).
    assert full == pytest.approx(303.97e6, rel=1e-3)
    assert adapter / full < (0.005 if rank == 2 else 0.015)


# ------------------------------------------------------------------------------------------------- trainer
@pytest.mark.slow
def test_training_saves_lora_adapters_by_default_and_full_weights_on_request(anchor_dir: Path, tmp_path: Path) -> None:
    clip = write_clip(tmp_path / "clip", seed=0)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(8):
        np.save(tmp_path / f"x{i}.npy", rng.standard_normal((3, SIDE, SIDE)).astype(np.float32))
        rows.append({"path": f"x{i}.npy", "caption": f"picture {i % 2}"})
    manifest = write_manifest(tmp_path / "train.jsonl", rows)

    def run(output: str, **train: Any) -> Path:
        return lbcore.train(
            {
                "anchor": {"name": str(anchor_dir), "max_length": 16},
                "modalities": {"pic": {"preset": "demo"}, "pic2": {"preset": "demo"}},
                "train": {
                    "output_dir": str(tmp_path / output),
                    "data": {"pic": str(manifest), "pic2": str(manifest)},
                    "init": {"pic": f"clip:{clip}", "pic2": "scratch"},
                    "max_steps": 2,
                    "save_every": 1,
                    "num_workers": 0,
                    **train,
                },
            }
        )

    final = run("lean")
    meta = json.loads((final / "lbind.json").read_text())
    assert meta["modalities"]["pic"]["weights"] == "adapter"
    assert meta["modalities"]["pic"]["base"]["source"] == f"clip:{clip.resolve()}"
    assert meta["modalities"]["pic2"]["weights"] == "full"  # LoRA from scratch: no base to refer to
    step_one = json.loads((tmp_path / "lean" / "step-00000001" / "lbind.json").read_text())
    assert step_one["modalities"]["pic"]["weights"] == "adapter"

    full = run("full", save_full=True)
    assert {s["weights"] for s in json.loads((full / "lbind.json").read_text())["modalities"].values()} == {"full"}
    lean, reference = lbcore.load(final), lbcore.load(full)
    for name in ("pic", "pic2"):
        torch.testing.assert_close(lean.embed(name, inputs()), reference.embed(name, inputs()), atol=1e-6, rtol=0)
    assert (final / "pic.safetensors").stat().st_size < (full / "pic.safetensors").stat().st_size / 3
