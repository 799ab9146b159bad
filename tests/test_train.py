"""The contrastive trainer: optimiser groups and schedule, LoRA, gradient accumulation, error budget, the anchor
staying out of training steps, checkpoints (round trip, kill/resume), 2 processes vs 1, several modalities, CLI.

Everything runs on a fake 1-D signal modality (``sig``, and ``sig2`` for multi-modality runs) that reads ``.npy``
files the tests write, against a tiny BERT anchor saved in a session folder.
"""

from __future__ import annotations

import copy
import importlib
import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import lbcore
from lbcore.config import AnchorConfig
from lbcore.data import Batch, ErrorBudgetExceeded
from lbcore.errors import ConfigError
from lbcore.loss import LOGIT_SCALE_MAX, contrastive_loss
from lbcore.manifest import ManifestError, write_manifest
from lbcore.model import BindModel
from lbcore.plugins import default_registry

PLUGIN = "lbfake_sigtrain"
EMBED = 16

PLUGIN_SOURCE = """
import os
import time
from pathlib import Path

import numpy as np
import torch

from lbcore import hookimpl
from lbcore.config import ModalityConfig
from lbcore.manifest import write_manifest
from lbcore.errors import InputError
from lbcore.modality import Modality
from lbcore.nn import PatchStem1d, PatchStem2d

LENGTH = 32
TINY = {
    "encoder": {"width": 32, "depth": 2, "heads": 2, "patch_size": 4},
    "lora": {"rank": 0},
    "optim": {"lr": 1e-3, "warmup_steps": 2, "epochs": 2, "batch_size": 8},
}


def pattern(label, rng):
    t = np.linspace(0, 1, LENGTH, dtype=np.float32)
    return (np.sin(2 * np.pi * (label + 1) * t) + 0.1 * rng.standard_normal(LENGTH)).astype(np.float32)


def write_signals(root, n, classes=4, seed=0, corrupt=(), missing=(), name="train.jsonl"):
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % classes
        path = root / f"s{seed}-{i:04d}.npy"
        if i in corrupt:
            path.write_bytes(b"this is not an npy file")
        elif i not in missing:
            np.save(path, pattern(label, rng))
        rows.append({"path": path.name, "captions": [f"a signal of class {label}", f"class {label} wave"]})
    return write_manifest(root / name, rows)


class Sig(Modality):
    name = "sig"
    Config = ModalityConfig
    presets = {"languagebind": TINY, "demo": TINY}
    templates = ("a signal of {}.",)

    def preprocess(self, item, train=False):
        delay = float(os.environ.get("LBFAKE_SIG_DELAY", "0"))
        if delay:
            time.sleep(delay)
        source = item if isinstance(item, (str, os.PathLike)) else None
        if source is not None:
            try:
                item = np.load(source, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise InputError(source, f"cannot read: {err}", "a .npy array") from err
        x = torch.as_tensor(np.asarray(item, dtype=np.float32)).reshape(1, -1)
        if x.shape[1] != LENGTH:
            raise InputError(source, f"{x.shape[1]} samples", f"{LENGTH} samples")
        if train:
            x = x + 0.05 * torch.randn_like(x)  # augmentation from the global generator
        return x

    def example_input(self, seed=0):
        return pattern(seed % 4, np.random.default_rng(seed))

    def build_stem(self):
        return PatchStem1d(1, self.config.encoder.width, self.config.encoder.patch_size, LENGTH)

    def make_demo_data(self, root, seed=0):
        write_signals(root, 32, seed=seed)
        write_signals(root, 16, seed=seed + 1, name="test.jsonl")


class Sig2(Sig):
    name = "sig2"
    presets = {
        "languagebind": TINY,
        "demo": {**TINY, "optim": {"lr": 5e-4, "warmup_steps": 3, "epochs": 1, "batch_size": 4}},
    }


IMG = {
    "encoder": {"width": 32, "depth": 2, "heads": 2, "patch_size": 8},
    "lora": {"rank": 2},
    "optim": {"lr": 1e-3, "warmup_steps": 1, "epochs": 1, "batch_size": 4},
}


def write_images(root, n):
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        np.save(root / f"im{i}.npy", rng.standard_normal((3, 16, 24)).astype(np.float32))
    return write_manifest(root / "train.jsonl", [{"path": f"im{i}.npy", "caption": f"picture {i % 3}"} for i in range(n)])


class Img(Sig):
    # A 2-D input (3 x 16 x 24, a 2 x 3 patch grid), to load CLIP vision weights into.

    name = "img"
    presets = {"languagebind": IMG, "demo": IMG}

    def preprocess(self, item, train=False):
        return torch.as_tensor(np.load(item, allow_pickle=False))

    def build_stem(self):
        return PatchStem2d(3, self.config.encoder.width, self.config.encoder.patch_size, (16, 24))


@hookimpl
def register_modalities(register):
    register(Sig)
    register(Sig2)
    register(Img)
"""


# ------------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="session")
def site(plugin_site: Any) -> Path:
    """A folder with the fake plugin module and a dist-info that declares its ``lbind`` entry point."""
    return plugin_site(PLUGIN, PLUGIN_SOURCE)


@pytest.fixture
def fk(load_plugin: Any) -> Any:
    """The fake plugin module, registered in the default registry."""
    return load_plugin(PLUGIN, PLUGIN_SOURCE)


def run_config(anchor_dir: Path, output: Path, data: dict[str, Path] | None = None, **train: Any) -> dict[str, Any]:
    modalities = {name: {} for name in (data or {"sig": None})}
    settings = {"output_dir": str(output), "num_workers": 0, "save_every": 0, "log_every": 1}
    settings.update(train)
    if data:
        settings["data"] = {k: str(v) for k, v in data.items()}
    return {
        "anchor": {"name": str(anchor_dir), "max_length": 16},
        "modalities": {n: ({"preset": "demo"} if data else {}) | m for n, m in modalities.items()},
        "train": settings,
    }


def tiny_model(fk: Any, names: tuple[str, ...] = ("sig",), overrides: dict[str, Any] | None = None) -> BindModel:
    mods = {}
    for name in names:
        cls = default_registry().registered(name).cls
        mods[name] = cls(cls.config_preset("demo", **(overrides or {})))
    torch.manual_seed(0)
    encoders = {n: m.build_encoder(EMBED) for n, m in mods.items()}
    return BindModel(AnchorConfig(), encoders, mods, anchor_fingerprint="0" * 64, embed_dim=EMBED)


def cpu_accelerator() -> Any:
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def weights(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


# ------------------------------------------------------------------------------------ optimiser and schedule
def expected_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up to 1 over ``warmup`` steps (first step at 1 / warmup), then half a cosine to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_each_group_keeps_its_own_learning_rate_through_the_schedule(fk: Any) -> None:
    from lbcore.optim import build_optimizer, build_scheduler

    model = tiny_model(fk, ("sig", "sig2"))
    total = 20
    opt = build_optimizer(model, {"sig.head.": 10.0})
    sched = build_scheduler(opt, model, total)
    base = {"sig": 1e-3, "sig2": 5e-4}
    warmup = {"sig": 2, "sig2": 3}
    head_groups = [g for g in opt.param_groups if g["name"].endswith("/x10")]
    assert head_groups and all(n.startswith("sig.head.") for g in head_groups for n in g["param_names"])
    seen = set()
    for step in range(total):
        for group in opt.param_groups:
            mult = 10.0 if group in head_groups else 1.0
            want = base[group["modality"]] * mult * expected_factor(step, warmup[group["modality"]], total)
            assert group["lr"] == pytest.approx(want, rel=1e-12, abs=1e-15), (step, group["name"])
        seen.add(round(opt.param_groups[0]["lr"], 12))
        opt.step()
        sched.step()
    assert len(seen) > 10  # the schedule really moved


def test_no_weight_decay_on_1d_params_embeddings_and_logit_scale(fk: Any) -> None:
    from lbcore.optim import parameter_groups

    model = tiny_model(fk)
    groups = parameter_groups(model)
    decay_of = {name: g["weight_decay"] for g in groups for name in g["param_names"]}
    params = dict(model.encoders["sig"].named_parameters())
    assert decay_of["sig.logit_scale"] == 0.0
    assert decay_of["sig.trunk.class_embedding"] == 0.0
    assert decay_of["sig.trunk.position_embedding"] == 0.0
    for name, p in params.items():
        if p.ndim < 2:
            assert decay_of[f"sig.{name}"] == 0.0, name
    for name in ("trunk.blocks.0.attn.q_proj.weight", "trunk.blocks.1.mlp.fc1.weight", "head.proj.weight"):
        assert decay_of[f"sig.{name}"] == pytest.approx(0.2)
    assert len(decay_of) == len(params) + 1  # every trainable parameter plus the logit scale, each once


def test_unknown_lr_multiplier_is_a_config_error(fk: Any) -> None:
    from lbcore.optim import parameter_groups

    with pytest.raises(ConfigError, match="lr_multipliers"):
        parameter_groups(tiny_model(fk), {"sig.nope.": 2.0})


def test_logit_scale_is_clamped_after_a_step(fk: Any) -> None:
    from lbcore.engine import ContrastiveEngine
    from lbcore.optim import build_optimizer

    model = tiny_model(fk)
    with torch.no_grad():
        model.logit_scales["sig"].value.fill_(math.log(150.0))
    engine = ContrastiveEngine(
        cpu_accelerator(), model, {"sig": F.normalize(torch.randn(8, EMBED), dim=-1)}, build_optimizer(model)
    )
    x = torch.randn(8, 1, 32)
    engine.step({"sig": [Batch(x, torch.arange(8), torch.arange(8))]}, step=0)
    assert model.logit_scales["sig"].value.item() == pytest.approx(LOGIT_SCALE_MAX)
    assert model.logit_scale("sig") == pytest.approx(100.0, rel=1e-5)


# ------------------------------------------------------------------------------------------------------ LoRA
def test_lora_trainable_counts_match_peft_and_the_right_parts_are_frozen(fk: Any) -> None:
    from peft import LoraConfig, get_peft_model

    from lbcore.lora import apply_lora

    cls = default_registry().registered("sig").cls
    mod = cls(cls.config_preset("demo", lora={"rank": 2}))
    torch.manual_seed(0)
    encoder = mod.build_encoder(EMBED)
    plain = copy.deepcopy(encoder)
    counts = apply_lora(encoder, mod.config)

    reference = get_peft_model(
        copy.deepcopy(plain),
        LoraConfig(r=2, lora_alpha=16, lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"]),
    )
    peft_trainable, peft_total = reference.get_nb_trainable_parameters()
    extras = sum(
        p.numel() for n, p in plain.named_parameters() if n == "trunk.class_embedding" or n.startswith("head.")
    )
    assert counts["lora"] == peft_trainable
    assert counts["total"] == peft_total
    assert counts["trainable"] == peft_trainable + extras
    grad = {n: p.requires_grad for n, p in encoder.named_parameters()}
    assert not grad["stem.proj.weight"]
    assert not grad["trunk.position_embedding"]
    assert not grad["trunk.pre_norm.weight"] and not grad["trunk.pre_norm.bias"]
    assert not grad["trunk.blocks.0.attn.q_proj.base_layer.weight"]
    assert grad["trunk.class_embedding"] and grad["head.proj.weight"] and grad["head.norm.weight"]
    assert grad["trunk.blocks.1.attn.out_proj.lora_A.default.weight"]


def test_lora_with_unknown_target_is_a_config_error(fk: Any) -> None:
    from lbcore.lora import apply_lora

    cls = default_registry().registered("sig").cls
    mod = cls(cls.config_preset("demo", lora={"rank": 2, "targets": ["no_such_proj"]}))
    with pytest.raises(ConfigError, match=r"lora\.targets"):
        apply_lora(mod.build_encoder(EMBED), mod.config, where="modalities.sig.")


# --------------------------------------------------------------------------------------- gradient accumulation
def _grads(model: BindModel, name: str = "sig") -> dict[str, torch.Tensor]:
    out = {n: p.grad.clone() for n, p in model.encoders[name].named_parameters()}
    out["logit_scale"] = model.logit_scales[name].value.grad.clone()
    return out


def test_two_micro_batches_give_the_gradients_of_one_double_batch(fk: Any) -> None:
    from lbcore.engine import ContrastiveEngine

    torch.manual_seed(1)
    x = torch.randn(8, 1, 32)
    table = F.normalize(torch.randn(8, EMBED), dim=-1)
    ids = torch.arange(8)
    acc = cpu_accelerator()

    one = tiny_model(fk)
    ContrastiveEngine(acc, one, {"sig": table}).forward_backward({"sig": [Batch(x, ids, ids)]}, step=0)
    two = tiny_model(fk)
    micro = [Batch(x[:4], ids[:4], ids[:4]), Batch(x[4:], ids[4:], ids[4:])]
    ContrastiveEngine(acc, two, {"sig": table}).forward_backward({"sig": micro}, step=0)

    # An independent reference: plain autograd on the whole batch.
    ref = tiny_model(fk)
    feats = F.normalize(ref.encoders["sig"](x), dim=-1)
    contrastive_loss(feats, table, ref.logit_scales["sig"].value, gather=False).backward()

    g1, g2, gr = _grads(one), _grads(two), _grads(ref)
    for name in gr:
        torch.testing.assert_close(g1[name], gr[name], atol=1e-6, rtol=0)
        torch.testing.assert_close(g2[name], gr[name], atol=1e-6, rtol=0)
    # Plain accumulation (mean of two half-batch losses) would differ: the negatives span the whole batch.
    half = tiny_model(fk)
    for part in (slice(0, 4), slice(4, 8)):
        f = F.normalize(half.encoders["sig"](x[part]), dim=-1)
        (contrastive_loss(f, table[part], half.logit_scales["sig"].value, gather=False) / 2).backward()
    assert (_grads(half)["logit_scale"] - gr["logit_scale"]).abs().item() > 1e-4


def test_gradient_checkpointing_gives_the_same_gradients(fk: Any) -> None:
    from lbcore.engine import ContrastiveEngine

    torch.manual_seed(2)
    x = torch.randn(6, 1, 32)
    table = F.normalize(torch.randn(6, EMBED), dim=-1)
    ids = torch.arange(6)
    acc = cpu_accelerator()
    plain, ckpt = tiny_model(fk), tiny_model(fk)
    ckpt.encoders["sig"].set_grad_checkpointing(True)
    for model in (plain, ckpt):
        ContrastiveEngine(acc, model, {"sig": table}).forward_backward({"sig": [Batch(x, ids, ids)]}, step=0)
    for name, grad in _grads(plain).items():
        torch.testing.assert_close(_grads(ckpt)[name], grad, atol=1e-6, rtol=0)


# ----------------------------------------------------------------------------------------- whole training runs
def test_init_from_a_clip_vision_checkpoint_with_lora(fk: Any, anchor_dir: Path, tmp_path: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(0)
    clip_cfg = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=32,
        patch_size=8,
        projection_dim=EMBED,
        hidden_act="gelu",
    )
    clip = CLIPVisionModelWithProjection(clip_cfg)
    clip.save_pretrained(tmp_path / "clip")
    cfg = run_config(anchor_dir, tmp_path / "run", {"img": fk.write_images(tmp_path / "data", 8)}, max_steps=2)
    cfg["train"]["init"] = f"clip:{tmp_path / 'clip'}"
    cfg["train"]["save_full"] = True  # full merged weights, so the frozen parts can be compared with CLIP's
    final = lbcore.train(cfg)
    got = weights(final / "img.safetensors")
    emb = clip.vision_model.embeddings
    # Frozen under LoRA, so still exactly the checkpoint's: the patch embedding and pre-norm ...
    assert torch.equal(got["stem.proj.weight"], emb.patch_embedding.weight.detach())
    assert torch.equal(got["trunk.pre_norm.weight"], clip.vision_model.pre_layrnorm.weight.detach())
    # ... and the position embedding, resized from CLIP's 4 x 4 grid to this modality's 2 x 3 (class row kept).
    pos = emb.position_embedding.weight.detach()
    assert got["trunk.position_embedding"].shape == (1 + 6, 32)
    assert torch.equal(got["trunk.position_embedding"][0], pos[0])
    # Attention weights trained through LoRA: merged weights moved away from CLIP's, but not far.
    q = clip.vision_model.encoder.layers[0].self_attn.q_proj.weight.detach()
    assert not torch.equal(got["trunk.blocks.0.attn.q_proj.weight"], q)
    assert (got["trunk.blocks.0.attn.q_proj.weight"] - q).abs().max() < 0.05


def test_tensorboard_without_the_package_is_a_clear_error(fk: Any, anchor_dir: Path, tmp_path: Path) -> None:
    from accelerate.utils import is_tensorboard_available

    if is_tensorboard_available():
        pytest.skip("tensorboard is installed")
    manifest = fk.write_signals(tmp_path / "data", 8)
    with pytest.raises(ConfigError, match="tensorboard"):
        lbcore.train(run_config(anchor_dir, tmp_path / "run", {"sig": manifest}, tensorboard=True))


def test_one_corrupt_file_in_200_is_skipped_and_logged(
    fk: Any, anchor_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = fk.write_signals(tmp_path / "data", 200, corrupt={57})
    bad = str((tmp_path / "data" / "s0-0057.npy").resolve())
    cfg = run_config(anchor_dir, tmp_path / "run", {"sig": manifest}, max_steps=25)
    with caplog.at_level("WARNING", logger="lbcore.trainer"):
        final = lbcore.train(cfg)
    assert any(bad in r.getMessage() and "cannot read" in r.getMessage() for r in caplog.records)
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert list(summary["skipped_files"]["sig"]) == [bad]
    # 25 steps x 8 = the 200 samples of one epoch, less the one skipped: nothing was substituted for it.
    assert summary["samples_seen"] == 199
    assert (final / "sig.safetensors").is_file()


def test_more_bad_files_than_the_budget_stop_the_run_listing_them(fk: Any, anchor_dir: Path, tmp_path: Path) -> None:
    manifest = fk.write_signals(tmp_path / "data", 100, corrupt={3, 41, 88})
    cfg = run_config(anchor_dir, tmp_path / "run", {"sig": manifest}, max_steps=1, error_budget=0.01)
    cfg["modalities"]["sig"]["optim"] = {"batch_size": 100}
    with pytest.raises(ErrorBudgetExceeded) as info:
        lbcore.train(cfg)
    message = str(info.value)
    for i in (3, 41, 88):
        assert f"s0-{i:04d}.npy" in message
    assert "3 of 100 files failed" in message and "budget of 1" in message
    assert len(info.value.failures) == 3
    assert not (tmp_path / "run" / "final").exists()


def test_missing_files_are_all_listed_before_training(fk: Any, anchor_dir: Path, tmp_path: Path) -> None:
    manifest = fk.write_signals(tmp_path / "data", 20, missing={2, 5, 17})
    with pytest.raises(ManifestError) as info:
        lbcore.train(run_config(anchor_dir, tmp_path / "run", {"sig": manifest}))
    assert "3 of 20 media file(s) missing" in str(info.value)
    for i in (2, 5, 17):
        assert f"s0-{i:04d}.npy" in str(info.value)


def test_the_anchor_never_runs_inside_a_training_step(
    fk: Any, anchor_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lbcore.anchor import Anchor

    calls = []
    original = Anchor.forward

    def counting(self: Anchor, *args: Any, **kwargs: Any) -> torch.Tensor:
        calls.append(1)
        return original(self, *args, **kwargs)

    def refuse(self: Anchor, *args: Any, **kwargs: Any) -> torch.Tensor:
        raise AssertionError("the anchor ran during training")

    monkeypatch.setattr(Anchor, "forward", counting)

    events: list[tuple[str, int, int]] = []

    def on_event(event: Any) -> None:
        events.append((event.kind, event.step, event.total_steps))
        if event.kind == "start":  # precompute is over: from here on the anchor must not run
            monkeypatch.setattr(Anchor, "forward", refuse)

    manifest = fk.write_signals(tmp_path / "data", 32)
    cfg = run_config(anchor_dir, tmp_path / "run", {"sig": manifest}, max_steps=4)
    cfg["anchor"]["cache_dir"] = str(tmp_path / "fresh-cache")  # nothing cached: precompute must run the anchor
    cfg["anchor"]["batch_size"] = 3
    final = lbcore.train(cfg, progress=on_event)
    assert calls, "precompute did not use the anchor"
    assert (final / "sig.safetensors").is_file()
    # The caption pre-pass reports its progress first: 8 distinct captions (4 classes x 2), in batches of 3.
    captions = [(step, total) for kind, step, total in events if kind == "captions"]
    assert captions == [(0, 8), (3, 8), (6, 8), (8, 8)]
    assert [kind for kind, _, _ in events][: len(captions) + 1] == ["captions"] * len(captions) + ["start"]


def test_checkpoint_round_trip_gives_the_same_embeddings(fk: Any, tmp_path: Path) -> None:
    from lbcore.lora import apply_lora

    model = tiny_model(fk, ("sig", "sig2"), overrides={"lora": {"rank": 2}})
    for name, mod in model.modalities.items():
        apply_lora(model.encoders[name], mod.config)
    torch.manual_seed(3)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.1)  # non-zero adapters, so the merge matters
        model.logit_scales["sig2"].value.fill_(3.0)
    inputs = [fk.pattern(i % 4, __import__("numpy").random.default_rng(i)) for i in range(5)]
    before = {n: model.embed(n, inputs) for n in ("sig", "sig2")}

    out = model.save_pretrained(tmp_path / "ckpt")
    meta = json.loads((out / "lbind.json").read_text())
    assert meta["format_version"] == 1 and meta["anchor"]["fingerprint"] == "0" * 64
    assert meta["modalities"]["sig"]["plugin"] == PLUGIN
    assert meta["modalities"]["sig"]["config"]["lora"]["rank"] == 2
    assert meta["modalities"]["sig2"]["logit_scale"] == pytest.approx(3.0)
    assert not list(out.glob("*.bin")) and not list(out.glob("*.pkl"))

    loaded = lbcore.load(out)
    for name in ("sig", "sig2"):
        torch.testing.assert_close(loaded.embed(name, inputs), before[name], atol=1e-5, rtol=1e-5)
        assert not any("lora" in k for k in loaded.encoders[name].state_dict())
    assert loaded.logit_scales["sig2"].value.item() == pytest.approx(3.0)
    batch = loaded.preprocess("sig", inputs)
    assert torch.equal(loaded.embed("sig", batch), loaded.embed("sig", inputs))


def test_loaded_model_reads_text_embeddings_from_the_cache_and_checks_the_anchor(
    fk: Any, anchor_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lbcore.anchor import Anchor, TextEmbeddingCache
    from lbcore.errors import AnchorError

    manifest = fk.write_signals(tmp_path / "data", 8)
    model = lbcore.load(lbcore.train(run_config(anchor_dir, tmp_path / "run", {"sig": manifest}, max_steps=1)))
    anchor = Anchor.from_pretrained(str(anchor_dir), max_length=16)
    expected = TextEmbeddingCache().embed(anchor, ["a signal of class 1"])

    def no_loading(*args: Any, **kwargs: Any) -> Anchor:
        raise AssertionError("the anchor was loaded for a cached caption")

    monkeypatch.setattr(Anchor, "from_pretrained", no_loading)
    assert torch.equal(model.embed_text(["a signal of class 1"]), expected)
    # A caption that is not cached needs the anchor, which must be the one the checkpoint recorded.
    monkeypatch.undo()
    model.anchor_fingerprint = "f" * 64
    model._text_anchor = None
    with pytest.raises(AnchorError, match="fingerprint"):
        model.embed_text(["a caption nobody has embedded yet"])


def test_unreadable_checkpoints_are_typed_errors(fk: Any, tmp_path: Path) -> None:
    from lbcore.errors import CheckpointError, ModalityNotFoundError

    out = tiny_model(fk).save_pretrained(tmp_path / "ckpt")
    (out / "sig.safetensors").write_bytes(b"truncated")
    with pytest.raises(CheckpointError, match=r"sig\.safetensors"):
        lbcore.load(out)
    meta = json.loads((out / "lbind.json").read_text())
    (out / "lbind.json").write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(CheckpointError, match="newer"):
        lbcore.load(out)
    (out / "lbind.json").write_text(json.dumps({**meta, "modalities": {"nosuch": meta["modalities"]["sig"]}}))
    with pytest.raises(ModalityNotFoundError, match="nosuch"):
        lbcore.load(out)


def test_multi_modality_run_trains_each_encoder_with_its_own_temperature(
    fk: Any, anchor_dir: Path, tmp_path: Path
) -> None:
    data = {
        "sig": fk.write_signals(tmp_path / "a", 24, seed=1),
        "sig2": fk.write_signals(tmp_path / "b", 16, seed=2),
    }
    final = lbcore.train(run_config(anchor_dir, tmp_path / "run", data, max_steps=4))
    meta = json.loads((final / "lbind.json").read_text())
    assert set(meta["modalities"]) == {"sig", "sig2"}
    assert meta["modalities"]["sig"]["logit_scale"] != meta["modalities"]["sig2"]["logit_scale"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss/sig"]) and math.isfinite(r["loss/sig2"]) for r in rows)
    assert rows[0]["lr/sig"] == pytest.approx(1e-3 / 2) and rows[0]["lr/sig2"] == pytest.approx(5e-4 / 3)
    model = lbcore.load(final)
    assert set(model.encoders) == {"sig", "sig2"}
    e = model.embed("sig2", [str(tmp_path / "b" / "s2-0000.npy")])
    assert e.shape == (1, EMBED)


def test_no_data_trains_the_demo_preset_on_the_demo_dataset(fk: Any, anchor_dir: Path, tmp_path: Path) -> None:
    final = lbcore.train(run_config(anchor_dir, tmp_path / "run", None, max_steps=2))
    meta = json.loads((final / "lbind.json").read_text())
    cls = default_registry().registered("sig").cls
    assert meta["modalities"]["sig"]["config"] == cls.config_preset("demo").model_dump(mode="json")
    assert "demo" in meta["train"]["manifests"]["sig"]
    assert meta["train"]["step"] == 2


def test_existing_run_needs_resume(fk: Any, anchor_dir: Path, tmp_path: Path) -> None:
    manifest = fk.write_signals(tmp_path / "data", 16)
    cfg = run_config(anchor_dir, tmp_path / "run", {"sig": manifest}, max_steps=1)
    lbcore.train(cfg)
    with pytest.raises(ConfigError, match="--resume"):
        lbcore.train(cfg)
    cfg["train"]["resume"] = True
    cfg["train"]["max_steps"] = 2
    final = lbcore.train(cfg)
    assert json.loads((final / "lbind.json").read_text())["train"]["step"] == 2


def write_paired(fk: Any, root: Path, both: int = 16, sig_only: int = 8) -> Path:
    """Rows with a sig and a sig2 file, then rows with a sig file only; returns the paired manifest."""
    fk.write_signals(root, both + sig_only, seed=1)
    fk.write_signals(root, both, seed=2)
    rows = [
        {"sig": f"s1-{i:04d}.npy", **({"sig2": f"s2-{i:04d}.npy"} if i < both else {}), "caption": f"wave {i % 4}"}
        for i in range(both + sig_only)
    ]
    return write_manifest(root / "paired.jsonl", rows)


def test_modalities_sharing_a_paired_manifest_take_the_rows_with_their_key(fk: Any, tmp_path: Path) -> None:
    from contextlib import nullcontext
    from types import SimpleNamespace

    from lbcore.runconfig import apply_overrides, resolve_config
    from lbcore.traindata import open_datasets

    paired = write_paired(fk, tmp_path / "data")
    plan = resolve_config(apply_overrides({}, modalities=["sig", "sig2"], data=[str(paired)]))
    acc = SimpleNamespace(local_main_process_first=nullcontext)
    _, manifests, datasets = open_datasets(plan, acc)
    assert manifests == {"sig": paired, "sig2": paired}
    root = (tmp_path / "data").resolve()
    assert list(datasets["sig"].paths) == [root / f"s1-{i:04d}.npy" for i in range(24)]
    assert list(datasets["sig2"].paths) == [root / f"s2-{i:04d}.npy" for i in range(16)]
    assert list(datasets["sig2"].captions.texts) == ["wave 0", "wave 1", "wave 2", "wave 3"]

    plain = fk.write_signals(tmp_path / "plain", 8)  # rows with one 'path' serve every modality that reads them
    _, _, datasets = open_datasets(
        resolve_config(apply_overrides({}, modalities=["sig", "sig2"], data=[str(plain)])), acc
    )
    assert (
        list(datasets["sig"].paths)
        == list(datasets["sig2"].paths)
        == [plain.parent.resolve() / f"s0-{i:04d}.npy" for i in range(8)]
    )
    bad = write_manifest(
        tmp_path / "bad" / "p.jsonl", [{"sig": "a.npy", "caption": "x"}, {"sig": "b.npy", "sig2": 3, "caption": "y"}]
    )
    with pytest.raises(ManifestError, match=r"p\.jsonl:2: 'sig2' is 3, not a file path"):
        open_datasets(resolve_config(apply_overrides({}, modalities=["sig", "sig2"], data=[str(bad)])), acc)


# ---------------------------------------------------------------------------------------------------- the CLI
def test_cli_train_writes_checkpoint_and_metrics(fk: Any, anchor_dir: Path, tmp_path: Path) -> None:
    from lbcore.cli import main

    manifest = fk.write_signals(tmp_path / "data", 24)
    config = tmp_path / "run.yaml"
    config.write_text(f"anchor:\n  name: {anchor_dir}\n  max_length: 16\n")
    out = tmp_path / "run"
    args = ["train", "--modality", "sig", "--config", str(config), "--data", str(manifest), "--output", str(out)]
    main([*args, "--max-steps", "3", "--num-workers", "0", "--lr", "2e-3", "--save-every", "2"])
    meta = json.loads((out / "final" / "lbind.json").read_text())
    assert meta["modalities"]["sig"]["config"]["optim"]["lr"] == pytest.approx(2e-3)
    assert (out / "final" / "sig.safetensors").is_file()
    assert (out / "step-00000002" / "train_state" / "progress.json").is_file()
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3]


def test_cli_trains_two_modalities_from_one_paired_manifest(fk: Any, anchor_dir: Path, tmp_path: Path) -> None:
    from lbcore.cli import main

    paired = write_paired(fk, tmp_path / "data")
    config = tmp_path / "run.yaml"
    config.write_text(f"anchor:\n  name: {anchor_dir}\n  max_length: 16\n")
    out = tmp_path / "run"
    main(["train", "--modality", "sig", "--modality", "sig2", "--config", str(config), "--data", str(paired),
          "--output", str(out), "--max-steps", "2", "--num-workers", "0"])  # fmt: skip
    meta = json.loads((out / "final" / "lbind.json").read_text())
    assert set(meta["modalities"]) == {"sig", "sig2"}
    assert meta["train"]["manifests"] == {"sig": str(paired), "sig2": str(paired)}
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2]
    assert all(math.isfinite(r["loss/sig"]) and math.isfinite(r["loss/sig2"]) for r in rows)


def test_cli_reports_a_bad_setting_with_its_field_path(
    fk: Any, anchor_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lbcore.cli import main

    with pytest.raises(SystemExit) as info:
        main(["train", "--modality", "sig", "--batch-size", "0", "--output", str(tmp_path / "run")])
    assert info.value.code == 2
    assert "modalities.sig.optim.batch_size" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- processes: kill, 2 ranks
def subprocess_env(site: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(PYTHONPATH=os.pathsep.join([str(site), env.get("PYTHONPATH", "")]), LBIND_PLUGINS=PLUGIN)
    env.update(OMP_NUM_THREADS="1", **extra)
    return env


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(fk: Any, site: Path, anchor_dir: Path, tmp_path: Path) -> None:
    manifest = fk.write_signals(tmp_path / "data", 48)
    config = tmp_path / "run.yaml"
    # Token masking on, so that the masks too must be reproduced after the resume.
    config.write_text(f"anchor:\n  name: {anchor_dir}\n  max_length: 16\nmodalities:\n  sig:\n    mask_ratio: 0.25\n")

    def command(out: Path, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "lbcore.cli", "train", "--modality", "sig", "--config", str(config),
            "--data", str(manifest), "--output", str(out), "--epochs", "3", "--grad-accum", "2",
            "--save-every", "5", "--num-workers", "1", *extra,
        ]  # fmt: skip

    # 48 samples / 8 = 6 steps per epoch, 18 steps: checkpoints at 5, 10, 15 fall in the middle of epochs.
    killed = tmp_path / "killed"
    proc = subprocess.Popen(
        command(killed), env=subprocess_env(site, LBFAKE_SIG_DELAY="0.01"), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while not (killed / "step-00000005").is_dir():
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else "exited"
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists(), "the run finished before it could be killed"

    resumed = subprocess.run(command(killed, "--resume"), env=subprocess_env(site), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr

    # The uninterrupted reference runs in this process (same settings, one thread like the subprocesses).
    cfg = run_config(anchor_dir, tmp_path / "whole", {"sig": manifest}, epochs=3, grad_accum=2, save_every=5)
    cfg["modalities"]["sig"] = {"mask_ratio": 0.25}
    cfg["train"]["num_workers"] = 1
    cfg["threads"] = {"torch_threads": 1}  # what OMP_NUM_THREADS=1 gives the subprocesses
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lbcore.train(cfg)
    finally:
        torch.set_num_threads(threads)

    a, b = weights(killed / "final" / "sig.safetensors"), weights(tmp_path / "whole" / "final" / "sig.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    meta_a = json.loads((killed / "final" / "lbind.json").read_text())
    meta_b = json.loads((tmp_path / "whole" / "final" / "lbind.json").read_text())
    assert meta_a["modalities"]["sig"]["logit_scale"] == meta_b["modalities"]["sig"]["logit_scale"]
    steps = [json.loads(line)["step"] for line in (killed / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 19))


TWO_PROCESS_SCRIPT = """
import json, sys
import torch
import torch.nn.functional as F
from accelerate import Accelerator

import lbfake_sigtrain as fk
from lbcore.config import AnchorConfig
from lbcore.data import Batch
from lbcore.loss import contrastive_loss
from lbcore.model import BindModel
from lbcore.engine import ContrastiveEngine

def build():
    torch.manual_seed(0)
    mod = fk.Sig(fk.Sig.config_preset("demo"))
    return BindModel(AnchorConfig(), {"sig": mod.build_encoder(16)}, {"sig": mod}, anchor_fingerprint="0" * 64,
                     embed_dim=16)

acc = Accelerator(cpu=True)
assert acc.num_processes == 2
g = torch.Generator().manual_seed(1)
n = 12
x = torch.randn(n, 1, 32, generator=g)
table = F.normalize(torch.randn(n, 16, generator=g), dim=-1)
ids = torch.arange(n)
shares = {"even": [6, 6], "uneven": [7, 5]}  # uneven: a process lost samples to unreadable files
report = {}
for label, share in shares.items():
    start = sum(share[: acc.process_index])
    mine = ids[start : start + share[acc.process_index]]
    for accum, local in ((1, False), (2, False), (1, True), (2, True)):
        model = build()
        engine = ContrastiveEngine(acc, model, {"sig": table}, local_loss=local)
        parts = mine.tensor_split(accum)
        result = engine.forward_backward({"sig": [Batch(x[p], p, p) for p in parts]}, step=0)
        engine.sync_gradients()
        grads = {k: p.grad for k, p in model.encoders["sig"].named_parameters()}
        grads["logit_scale"] = model.logit_scales["sig"].value.grad
        if acc.is_main_process:
            ref = build()
            feats = F.normalize(ref.encoders["sig"](x), dim=-1)
            loss = contrastive_loss(feats, table, ref.logit_scales["sig"].value, gather=False)
            loss.backward()
            ref_grads = {k: p.grad for k, p in ref.encoders["sig"].named_parameters()}
            ref_grads["logit_scale"] = ref.logit_scales["sig"].value.grad
            report[f"{label}/accum{accum}" + ("/local" if local else "")] = {
                "loss": abs(result.losses["sig"] - loss.item()),
                "grad": max((grads[k] - ref_grads[k]).abs().max().item() for k in ref_grads),
                "samples": result.samples["sig"],
            }
if acc.is_main_process:
    json.dump(report, open(sys.argv[1], "w"))
acc.wait_for_everyone()
"""


@pytest.mark.slow
def test_two_processes_give_the_loss_and_gradients_of_one_global_and_local_loss(
    fk: Any, site: Path, tmp_path: Path
) -> None:
    script = tmp_path / "two.py"
    script.write_text(textwrap.dedent(TWO_PROCESS_SCRIPT))
    out = tmp_path / "report.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(script),
        str(out),
    ]
    done = subprocess.run(cmd, env=subprocess_env(site), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    report = json.loads(out.read_text())
    # global and local loss (each process's [b, N] rows), even and uneven shares, with and without micro-batches
    assert set(report) == {f"{s}/accum{a}{loc}" for s in ("even", "uneven") for a in (1, 2) for loc in ("", "/local")}
    for key, diffs in report.items():
        assert diffs["samples"] == 12, key
        assert diffs["loss"] < 1e-6, (key, diffs)
        assert diffs["grad"] < 1e-6, (key, diffs)


# ----------------------------------------------------------------------------------------- a real plugin, e2e
@pytest.mark.slow
def test_a_real_plugin_trains_on_its_demo_data(anchor_dir: Path, tmp_path: Path) -> None:
    try:
        module = importlib.import_module("lbind_audio")
    except ImportError as err:
        pytest.skip(f"lbind_audio not importable: {err}")
    default_registry().add_plugin(module, "audio")
    if "audio" not in default_registry().modality_names():
        pytest.skip("the audio plugin did not register")
    cfg = run_config(anchor_dir, tmp_path / "run", None, max_steps=2)
    cfg["modalities"] = {"audio": {"optim": {"batch_size": 8}}}
    try:
        final = lbcore.train(cfg)
    except NotImplementedError as err:
        pytest.skip(f"no demo dataset yet: {err}")
    model = lbcore.load(final)
    manifest = json.loads((final / "lbind.json").read_text())["train"]["manifests"]["audio"]
    first = json.loads(Path(manifest).read_text().splitlines()[0])["path"]
    emb = model.embed("audio", [str(Path(manifest).parent / first)])
    assert emb.shape == (1, EMBED) and torch.isfinite(emb).all()


# ------------------------------------------------------------------------------------------------ at scale
def distinct_captions(fk: Any, root: Path, n: int) -> Path:
    """``n`` signals, each with its own caption (so the caption table is larger than a batch)."""
    fk.write_signals(root, n)
    return write_manifest(
        root / "distinct.jsonl", [{"path": f"s0-{i:04d}.npy", "caption": f"signal {i}"} for i in range(n)]
    )


def test_caption_rows_stay_on_the_host_and_each_step_gathers_only_its_batch(
    fk: Any, anchor_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lbcore.runconfig import resolve_config
    from lbcore.textstore import CaptionTable
    from lbcore.trainer import Trainer

    gathered: list[int] = []
    original = CaptionTable.gather

    def spy(self: CaptionTable, ids: Any, pin_memory: bool = False) -> torch.Tensor:
        rows = original(self, ids, pin_memory)
        gathered.append(rows.shape[0])
        return rows

    monkeypatch.setattr(CaptionTable, "gather", spy)
    manifest = distinct_captions(fk, tmp_path / "data", 40)
    trainer = Trainer(resolve_config(run_config(anchor_dir, tmp_path / "run", {"sig": manifest}, max_steps=3)))
    trainer.fit()
    table = trainer.engine.text_tables["sig"]
    assert isinstance(table, CaptionTable) and len(table) == 40
    assert gathered == [8, 8, 8]  # one gather of the batch's 8 rows per step, never the table's 40
    # No tensor with a row per caption was made for the engine (on the host or the device).
    held = [v for v in vars(trainer.engine).values() if isinstance(v, torch.Tensor)]
    held += [v for t in trainer.engine.text_tables.values() for v in vars(t).values() if isinstance(v, torch.Tensor)]
    assert not [t for t in held if t.ndim == 2 and t.shape[0] == 40]
    # The rows the engine trained with are the anchor's embeddings of the chosen captions.
    from lbcore.anchor import Anchor

    anchor = Anchor.from_config(trainer.plan.anchor)
    texts = [f"signal {i}" for i in (0, 17, 39)]
    ids = [trainer.datasets["sig"].captions.texts.index(t) for t in texts]
    torch.testing.assert_close(original(table, ids), anchor.encode(texts), atol=1e-6, rtol=0)


def test_the_thread_policy_sets_the_loaders_workers_and_the_local_loss_reaches_the_engine(
    fk: Any, anchor_dir: Path, tmp_path: Path
) -> None:
    from lbcore.runconfig import resolve_config
    from lbcore.threads import worker_init_fn
    from lbcore.trainer import Trainer

    manifest = fk.write_signals(tmp_path / "data", 16)
    cfg = run_config(anchor_dir, tmp_path / "run", {"sig": manifest}, max_steps=1, local_loss=True)
    del cfg["train"]["num_workers"]  # the threads section decides
    threads = torch.get_num_threads()
    cfg["threads"] = {"workers": 1, "torch_threads": threads + 1}
    seen: list[int] = []
    trainer = Trainer(resolve_config(cfg), progress=lambda event: seen.append(torch.get_num_threads()))
    trainer.fit()
    assert set(seen) == {threads + 1}  # the run's policy while it runs
    assert torch.get_num_threads() == threads  # and the caller's setting back afterwards
    assert trainer.threads.workers == 1 and trainer.threads.sources["workers"] == "config"
    assert trainer.loaders["sig"].num_workers == 1 and trainer.loaders["sig"].worker_init_fn is worker_init_fn
    assert trainer.engine.local_loss is True
    cfg["train"].update(num_workers=0, output_dir=str(tmp_path / "run0"))  # train.num_workers wins over threads
    fixed = Trainer(resolve_config(cfg))
    fixed._prepare()
    assert fixed.threads.workers == 0 and fixed.loaders["sig"].num_workers == 0
    with pytest.raises(ConfigError, match=r"threads\.workers"):
        resolve_config({**cfg, "threads": {"workers": -1}})


def test_training_streams_webdataset_shards_and_resumes_them_exactly(fk: Any, anchor_dir: Path, tmp_path: Path) -> None:
    import shutil

    from lbcore.shards import write_shards

    manifest = fk.write_signals(tmp_path / "data", 40)
    write_shards(manifest, tmp_path / "shards", shard_size=8)
    pattern = str(tmp_path / "shards" / "shard-{000000..000004}.tar")
    # 40 samples in 5 shards, batches of 8: 5 steps an epoch; 2 epochs, a checkpoint every 3 steps.
    whole = lbcore.train(run_config(anchor_dir, tmp_path / "whole", {"sig": pattern}, epochs=2, save_every=3))
    metrics = [json.loads(line) for line in (tmp_path / "whole" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 11)) and all(math.isfinite(m["loss"]) for m in metrics)
    # Interrupted after step 6 (mid-epoch 2), then resumed: the same weights, bit for bit.
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", cut)
    shutil.rmtree(cut / "final")
    shutil.rmtree(cut / "step-00000009")
    assert sorted(p.name for p in cut.glob("step-*")) == ["step-00000006"]
    resumed = lbcore.train(run_config(anchor_dir, cut, {"sig": pattern}, epochs=2, save_every=3, resume=True))
    a, b = weights(resumed / "sig.safetensors"), weights(whole / "sig.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)


def test_a_resumed_run_keeps_the_thread_count_its_run_was_given(
    fk: Any, anchor_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The automatic thread count follows the load of the moment; a resume under another load must still end
    with the uninterrupted run's weights, bit for bit (CPU kernels split their sums by thread)."""
    import shutil

    from lbcore import threads

    manifest = fk.write_signals(tmp_path / "data", 40)
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    monkeypatch.setattr(threads, "busy_cores", lambda *args, **kwargs: 0.0)  # idle: 2 torch threads (no workers)
    before = torch.get_num_threads()
    whole = lbcore.train(run_config(anchor_dir, tmp_path / "whole", {"sig": manifest}, epochs=2, save_every=3))
    progress = json.loads((tmp_path / "whole" / "step-00000006" / "train_state" / "progress.json").read_text())
    assert progress["torch_threads"] == 2
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "whole", cut)
    shutil.rmtree(cut / "final")
    shutil.rmtree(cut / "step-00000009")
    monkeypatch.setattr(threads, "busy_cores", lambda *args, **kwargs: 1.0)  # now busy: the policy would pick 1
    seen: list[int] = []
    config = run_config(anchor_dir, cut, {"sig": manifest}, epochs=2, save_every=3, resume=True)
    resumed = lbcore.train(config, progress=lambda event: seen.append(torch.get_num_threads()))
    assert set(seen) == {2}
    a, b = weights(resumed / "sig.safetensors"), weights(whole / "sig.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert torch.get_num_threads() == before
    # A count the user sets is theirs: the resume does not override it.
    shutil.rmtree(cut)
    shutil.copytree(tmp_path / "whole", cut)
    shutil.rmtree(cut / "final")
    shutil.rmtree(cut / "step-00000009")
    seen.clear()
    lbcore.train(
        {**config, "threads": {"torch_threads": 1}}, progress=lambda event: seen.append(torch.get_num_threads())
    )
    assert set(seen) == {1}
