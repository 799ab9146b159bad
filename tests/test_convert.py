"""Converting released LanguageBind checkpoints (lbcore.convert, ``lbind convert languagebind``, ``--init
languagebind:``), finding a release's modality through what plugins declare, and refusing pickles that run code.

Every release here is built in the test with LanguageBind's exact layout: a tiny transformers ``CLIPModel``
(text and vision towers), its state dict renamed or extended the way the released files are (peft's LoRA
nesting, video's temporal keys, audio's resized positions, old transformers' ``position_ids`` buffers), a
config.json with ``model_type`` LanguageBind* and the vision_config extras, and CLIP tokenizer files naming
LanguageBind's own tokenizer class. References are transformers' and peft's modules, never lbcore's.
"""

from __future__ import annotations

import json
import math
import os
import pickle
import string
from pathlib import Path
from typing import Any, ClassVar

import click
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from pydantic import Field
from safetensors.torch import load_file, save_file
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

import lbcore
from lbcore import hookimpl
from lbcore.checkpoint import META_FILE
from lbcore.cli.convert import convert
from lbcore.config import ImageConfig
from lbcore.convert import load_clip_vision_into, load_languagebind_into
from lbcore.convert.writer import convert_languagebind
from lbcore.errors import CheckpointError, ConfigError, ModalityNotFoundError, UnknownReleaseError
from lbcore.image import ImageLikeModality
from lbcore.plugins import default_registry, reset_default_registry
from lbcore.release import ReleaseLayout

EMBED = 16
BOS, EOS = 52, 53  # the tiny vocabulary below: 26 letters, 26 word-final letters, then the two specials
TEXT = {
    "vocab_size": 54,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "max_position_embeddings": 77,
    "hidden_act": "gelu",
    "bos_token_id": BOS,
    "eos_token_id": EOS,
    "pad_token_id": EOS,
}
VISION = {
    "hidden_size": 32,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "image_size": 32,
    "patch_size": 8,
    "hidden_act": "gelu",
}
TEXTS = ["a dog", "a photo of a zebra crossing the road", "cat"]
RELEASE_SCALE = 4.0  # the logit scale (log) every tiny release carries


@pytest.fixture(autouse=True)
def _builtin_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    # conftest disables plugins; the converter needs the real modalities (image only if its plugin is installed).
    monkeypatch.setenv("LBIND_PLUGINS", "audio,depth,infrared,video,image")
    reset_default_registry()


def image_installed() -> bool:
    return "image" in default_registry().modality_names()


# ------------------------------------------------------------------------------------------------ builders
def write_tokenizer(root: Path, tokenizer_class: str) -> None:
    """CLIP BPE files with a 54-token vocabulary (no merges: every word is its letters, the last one word-final)."""
    letters = string.ascii_lowercase
    vocab = {c: i for i, c in enumerate(letters)}
    vocab.update({f"{c}</w>": 26 + i for i, c in enumerate(letters)})
    vocab.update({"<|startoftext|>": BOS, "<|endoftext|>": EOS})
    (root / "vocab.json").write_text(json.dumps(vocab))
    (root / "merges.txt").write_text("#version: 0.2\n")
    special = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}
    (root / "special_tokens_map.json").write_text(json.dumps({**special, "pad_token": "<|endoftext|>"}))
    config = {"tokenizer_class": tokenizer_class, "model_max_length": 77, **special, "pad_token": "<|endoftext|>"}
    (root / "tokenizer_config.json").write_text(json.dumps(config))


def reference_tokenizer(root: Path) -> CLIPTokenizer:
    return CLIPTokenizer(str(root / "vocab.json"), str(root / "merges.txt"), pad_token="<|endoftext|>")


def tiny_clip(seed: int, **vision: Any) -> CLIPModel:
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=TEXT, vision_config={**VISION, **vision}, projection_dim=EMBED))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1 and "embedding" not in name:  # LayerNorms and biases away from their 1 / 0 init
                p.add_(0.2 * torch.randn_like(p))
        model.logit_scale.fill_(RELEASE_SCALE)
    return model.eval()


def write_release(
    root: Path,
    model: CLIPModel,
    model_type: str,
    vision_extra: dict[str, Any] | None = None,
    state: dict[str, torch.Tensor] | None = None,
    fmt: str = "safetensors",
    tokenizer: bool = True,
) -> Path:
    root.mkdir(parents=True)
    config = model.config.to_dict()
    config.update(model_type=model_type, architectures=[model_type])
    extras = {"lora_r": 0, "lora_alpha": 16, "add_time_attn": False, "num_frames": 1}
    config["vision_config"] = {**config["vision_config"], **extras, **(vision_extra or {})}
    (root / "config.json").write_text(json.dumps(config))
    state = dict(model.state_dict() if state is None else state)
    if fmt == "bin":
        torch.save(state, root / "pytorch_model.bin")  # a pickle, as the released files are
    else:
        save_file({k: v.contiguous() for k, v in state.items()}, str(root / "model.safetensors"))
    if tokenizer:
        write_tokenizer(root, f"{model_type}Tokenizer")
    return root


def clip_image_embeds(model: CLIPModel, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.get_image_features(pixel_values=x)
    return F.normalize(getattr(out, "pooler_output", out), dim=-1)


def clip_text_embeds(model: CLIPModel, tokenizer: CLIPTokenizer, texts: list[str]) -> torch.Tensor:
    batch = tokenizer(texts, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # the comparison must cover padding
    with torch.no_grad():
        out = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    return F.normalize(getattr(out, "pooler_output", out), dim=-1)


def encoder_state(directory: Path, modality: str) -> dict[str, torch.Tensor]:
    return load_file(str(directory / f"{modality}.safetensors"))


# ------------------------------------------------------------------------------------ image-like releases
@pytest.mark.parametrize("fmt", ["bin", "safetensors"])
def test_depth_release_matches_transformers_clip(tmp_path: Path, fmt: str) -> None:
    clip = tiny_clip(0)
    state = clip.state_dict()
    # Buffers that transformers 4.2x saved with the weights: they must be ignored, not reported as unknown.
    state["text_model.embeddings.position_ids"] = torch.arange(77)[None]
    state["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    src = write_release(tmp_path / "LanguageBind_Depth", clip, "LanguageBindDepth", {"max_depth": 8.0}, state, fmt)
    out = tmp_path / "converted"

    result = convert_languagebind(src, out)
    assert (result.modality, result.anchor_shared, result.lora) == ("depth", False, None)
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "anchor", "depth.safetensors", META_FILE]
    meta = json.loads((out / META_FILE).read_text())
    assert meta["anchor"]["config"]["name"] == "./anchor"
    assert meta["converted"]["depth"]["model_type"] == "LanguageBindDepth"
    tok_config = json.loads((out / "anchor" / "tokenizer_config.json").read_text())
    assert tok_config["tokenizer_class"] == "CLIPTokenizer"  # LanguageBindDepthTokenizer is unknown to transformers

    model = lbcore.load(out)
    cfg = model.modalities["depth"].config
    assert (cfg.max_depth, cfg.image_size, cfg.encoder.width, cfg.encoder.patch_size, cfg.lora.rank) == (
        8.0,
        32,
        32,
        8,
        0,
    )
    assert math.isclose(model.logit_scale("depth"), math.exp(RELEASE_SCALE), rel_tol=1e-6)
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(model.embed("depth", x), clip_image_embeds(clip, x), atol=1e-5, rtol=0)
    expected_text = clip_text_embeds(clip, reference_tokenizer(src), TEXTS)
    torch.testing.assert_close(model.embed_text(TEXTS), expected_text, atol=1e-5, rtol=0)


def test_image_release_without_the_image_plugin_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LBIND_PLUGINS", "audio,depth,infrared,video")  # as if lbind-image were not installed
    reset_default_registry()
    assert not image_installed()
    src = write_release(tmp_path / "LanguageBind_Image", tiny_clip(0), "LanguageBindImage")
    # Only the image plugin declares LanguageBindImage: without it the release is unknown, and the error says which
    # releases the installed plugins do declare.
    message = (
        r"LanguageBind_Image/config\.json: model_type 'LanguageBindImage' is not a release any installed plugin "
        r"declares \(known: LanguageBindAudio \(audio\), LanguageBindDepth \(depth\), LanguageBindThermal "
        r"\(infrared\), LanguageBindVideo \(video\)\)"
    )
    with pytest.raises(UnknownReleaseError, match=message) as err:
        convert_languagebind(src, tmp_path / "out")
    assert isinstance(err.value, ModalityNotFoundError) and isinstance(err.value, CheckpointError)
    assert not (tmp_path / "out").exists()


def test_image_release_matches_transformers_clip(tmp_path: Path) -> None:
    if not image_installed():
        pytest.skip("the image plugin is not installed")
    clip = tiny_clip(3)
    src = write_release(tmp_path / "LanguageBind_Image", clip, "LanguageBindImage", fmt="bin")
    convert_languagebind(src, tmp_path / "out")
    model = lbcore.load(tmp_path / "out")
    assert model.modalities["image"].config.image_size == 32
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.embed("image", x), clip_image_embeds(clip, x), atol=1e-5, rtol=0)
    expected_text = clip_text_embeds(clip, reference_tokenizer(src), TEXTS)
    torch.testing.assert_close(model.embed_text(TEXTS), expected_text, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------ a third-party plugin's own release
class TactileConfig(ImageConfig):
    pressure_scale: float = Field(1.0, gt=0, description="Newtons per unit of the sensor's pressure image.")


class TactileModality(ImageLikeModality):
    """A third-party modality that declares its own released checkpoint (nothing about it is in lbcore)."""

    name = "tactile"
    Config = TactileConfig
    presets: ClassVar = {"languagebind": {}, "demo": {"image_size": 32}}
    templates = ("the feel of {}.",)
    extensions = (".png",)
    releases = (
        ReleaseLayout(
            "LanguageBindTactile",
            settings={"tactile_pressure_scale": "pressure_scale"},
            required=("tactile_pressure_scale",),
        ),
    )

    def example_input(self, seed: int = 0) -> np.ndarray:
        return np.random.default_rng(seed).integers(0, 256, (40, 40, 3), dtype=np.uint8)


class _TactilePlugin:
    @hookimpl
    def register_modalities(self, register: Any) -> None:
        register(TactileModality)


@pytest.mark.slow
def test_a_plugin_declares_its_own_release_and_the_converter_finds_it(tmp_path: Path) -> None:
    registry = default_registry().load()  # the built-in plugins first, then the test's
    registry.add_plugin(_TactilePlugin(), "tactile-test")
    clip = tiny_clip(13)
    src = write_release(tmp_path / "LanguageBind_Tactile", clip, "LanguageBindTactile", {"tactile_pressure_scale": 2.5})

    result = convert_languagebind(src, tmp_path / "out")
    assert (result.modality, result.model_type) == ("tactile", "LanguageBindTactile")
    assert result.settings == {"pressure_scale": 2.5, "image_size": 32, "in_chans": 3}
    model = lbcore.load(tmp_path / "out")
    assert model.modalities["tactile"].config.pressure_scale == 2.5
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.embed("tactile", x), clip_image_embeds(clip, x), atol=1e-5, rtol=0)

    # --init languagebind: checks the release against what the modality declares.
    depth = lbcore.get_modality("depth")
    with pytest.raises(CheckpointError, match=r"LanguageBindTactile checkpoint \(the 'depth' modality declares "):
        load_languagebind_into(depth.build_encoder(EMBED), depth, src)
    bare = write_release(tmp_path / "bare", clip, "LanguageBindTactile")
    with pytest.raises(CheckpointError, match=r"vision_config\.tactile_pressure_scale is missing or 0"):
        convert_languagebind(bare, tmp_path / "out2")


def lora_clip(seed: int) -> CLIPModel:
    """LanguageBind's LoRA release: the vision encoder wrapped by peft (rank 2, alpha 16) with trained adapters."""
    from peft import LoraConfig, get_peft_model

    clip = tiny_clip(seed)
    peft_cfg = LoraConfig(r=2, lora_alpha=16, target_modules=["q_proj", "k_proj", "v_proj", "out_proj"])
    clip.vision_model.encoder = get_peft_model(clip.vision_model.encoder, peft_cfg)
    with torch.no_grad():
        for name, p in clip.named_parameters():
            if "lora_B" in name:  # peft starts B at zero, which would make the merge invisible
                p.normal_(0, 0.2)
    return clip.eval()


@pytest.mark.parametrize("layout", ["peft-0.4", "peft-0.7"])
def test_lora_release_matches_the_unmerged_peft_model(tmp_path: Path, layout: str) -> None:
    clip = lora_clip(1)
    state = clip.state_dict()
    assert any(k.startswith("vision_model.encoder.base_model.model.layers.0.") for k in state)
    if layout == "peft-0.4":  # LanguageBind's peft kept the base weight at <module>.weight
        state = {k.replace(".base_layer.", "."): v for k, v in state.items()}
    vision = {"lora_r": 2, "lora_alpha": 16}
    src = write_release(tmp_path / "LanguageBind_Thermal", clip, "LanguageBindThermal", vision, state)

    result = convert_languagebind(src, tmp_path / "out")
    assert result.lora == {"rank": 2, "alpha": 16.0, "modules": 2 * 4}
    model = lbcore.load(tmp_path / "out")
    assert model.modalities["infrared"].config.lora.rank == 2  # what was merged, recorded
    x = torch.randn(3, 3, 32, 32)
    torch.testing.assert_close(model.embed("infrared", x), clip_image_embeds(clip, x), atol=1e-5, rtol=0)


def test_lora_rank_must_match_the_adapters(tmp_path: Path) -> None:
    clip = lora_clip(1)
    src = write_release(tmp_path / "rel", clip, "LanguageBindThermal", {"lora_r": 4}, clip.state_dict())
    with pytest.raises(CheckpointError, match=r"model\.safetensors: LoRA on .* vision_config\.lora_r 4"):
        convert_languagebind(src, tmp_path / "out")


# -------------------------------------------------------------------------------------------------- video
def video_state(clip: CLIPModel, frames: int, zero_temporal: bool, seed: int) -> dict[str, torch.Tensor]:
    """The CLIP state plus LanguageBind's per-layer temporal embedding, temporal attention and its LayerNorm."""
    gen = torch.Generator().manual_seed(seed)
    state = dict(clip.state_dict())
    width = VISION["hidden_size"]
    for i in range(VISION["num_hidden_layers"]):
        layer = f"vision_model.encoder.layers.{i}"
        emb = torch.zeros(1, frames, width) if zero_temporal else 0.3 * torch.randn(1, frames, width, generator=gen)
        state[f"{layer}.temporal_embedding"] = emb
        state[f"{layer}.temporal_layer_norm1.weight"] = 1 + 0.2 * torch.randn(width, generator=gen)
        state[f"{layer}.temporal_layer_norm1.bias"] = 0.2 * torch.randn(width, generator=gen)
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            weight = 0.2 * torch.randn(width, width, generator=gen)
            bias = 0.2 * torch.randn(width, generator=gen)
            if zero_temporal and proj == "out_proj":  # the temporal attention then adds nothing to the stream
                weight, bias = torch.zeros_like(weight), torch.zeros_like(bias)
            state[f"{layer}.temporal_attn.{proj}.weight"] = weight
            state[f"{layer}.temporal_attn.{proj}.bias"] = bias
    return state


def test_video_with_silent_temporal_parts_is_the_mean_of_per_frame_clip(tmp_path: Path) -> None:
    clip, frames = tiny_clip(2), 3
    state = video_state(clip, frames, zero_temporal=True, seed=0)
    vision = {"num_frames": frames, "add_time_attn": True}
    src = write_release(tmp_path / "LanguageBind_Video", clip, "LanguageBindVideo", vision, state, fmt="bin")
    convert_languagebind(src, tmp_path / "out")
    model = lbcore.load(tmp_path / "out")
    assert model.modalities["video"].config.num_frames == frames

    x = torch.randn(2, 3, frames, 32, 32)  # [B, C, T, H, W]
    with torch.no_grad():
        per_frame = x.transpose(1, 2).reshape(2 * frames, 3, 32, 32)  # [B*T, C, H, W]
        pooled = clip.vision_model(pixel_values=per_frame).pooler_output  # post-LayerNorm class tokens [B*T, D]
        expected = F.normalize(clip.visual_projection(pooled.view(2, frames, -1).mean(dim=1)), dim=-1)
    torch.testing.assert_close(model.embed("video", x), expected, atol=1e-5, rtol=0)


def test_video_lora_on_temporal_attention_is_merged_and_temporal_tensors_land_per_layer(tmp_path: Path) -> None:
    clip, frames, rank, alpha = tiny_clip(4), 4, 2, 8.0
    plain = video_state(clip, frames, zero_temporal=False, seed=1)
    gen = torch.Generator().manual_seed(2)
    # LanguageBind's video LoRA: adapters on the temporal attention only, the whole encoder nested by peft.
    state: dict[str, torch.Tensor] = {}
    adapters: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    for key, value in plain.items():
        nested = key.replace("vision_model.encoder.", "vision_model.encoder.base_model.model.")
        state[nested] = value
        if ".temporal_attn." in key and key.endswith(".weight"):
            module = nested[: -len(".weight")]
            a = torch.randn(rank, value.shape[1], generator=gen)
            b = torch.randn(value.shape[0], rank, generator=gen)
            state[f"{module}.lora_A.default.weight"], state[f"{module}.lora_B.default.weight"] = a, b
            adapters[key] = (a, b)
    vision = {"num_frames": frames, "add_time_attn": True, "lora_r": rank, "lora_alpha": alpha}
    src = write_release(tmp_path / "LanguageBind_Video", clip, "LanguageBindVideo", vision, state)

    result = convert_languagebind(src, tmp_path / "out")
    assert result.lora == {"rank": rank, "alpha": alpha, "modules": 2 * 4}
    got = encoder_state(tmp_path / "out", "video")
    assert got["trunk.temporal_embedding"].shape == (2, frames, 32)
    for i in range(2):
        layer = f"vision_model.encoder.layers.{i}"
        assert torch.equal(got["trunk.temporal_embedding"][i], plain[f"{layer}.temporal_embedding"][0])
        assert torch.equal(got[f"trunk.temporal_norm.{i}.bias"], plain[f"{layer}.temporal_layer_norm1.bias"])
        assert torch.equal(got[f"trunk.temporal_attn.{i}.k_proj.bias"], plain[f"{layer}.temporal_attn.k_proj.bias"])
        a, b = adapters[f"{layer}.temporal_attn.q_proj.weight"]
        expected = plain[f"{layer}.temporal_attn.q_proj.weight"] + alpha / rank * b @ a
        torch.testing.assert_close(got[f"trunk.temporal_attn.{i}.q_proj.weight"], expected, atol=1e-6, rtol=0)
        # Spatial weights sat under the peft nesting without adapters: unchanged.
        assert torch.equal(got[f"trunk.blocks.{i}.attn.q_proj.weight"], plain[f"{layer}.self_attn.q_proj.weight"])
    assert lbcore.load(tmp_path / "out").modalities["video"].config.lora.rank == rank


def test_video_release_without_temporal_tensors_is_refused(tmp_path: Path) -> None:
    src = write_release(tmp_path / "rel", tiny_clip(2), "LanguageBindVideo", {"num_frames": 2})
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: trunk\.temporal.*no temporal tensors"):
        convert_languagebind(src, tmp_path / "out")


def test_clip_image_tower_into_a_video_encoder_copies_spatial_into_temporal(tmp_path: Path) -> None:
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(11)
    vision = CLIPVisionModelWithProjection(CLIPVisionConfig(**VISION, projection_dim=EMBED)).eval()
    vision.save_pretrained(tmp_path / "clip")
    video = lbcore.get_modality("video")
    video = video.with_config(
        video.config_preset("demo", image_size=32, num_frames=2, encoder={"width": 32, "depth": 2, "heads": 2})
    )
    encoder = video.build_encoder(EMBED)
    with torch.no_grad():
        encoder.trunk.temporal_embedding.fill_(0.5)
    report = load_clip_vision_into(encoder, tmp_path / "clip")
    assert any("temporal attention and LayerNorms start as copies" in line for line in report)
    for i, layer in enumerate(vision.vision_model.encoder.layers):
        assert torch.equal(encoder.trunk.temporal_attn[i].v_proj.weight, layer.self_attn.v_proj.weight)
        assert torch.equal(encoder.trunk.temporal_norm[i].bias, layer.layer_norm1.bias)
    assert torch.equal(encoder.trunk.temporal_embedding, torch.full_like(encoder.trunk.temporal_embedding, 0.5))


# -------------------------------------------------------------------------------------------------- audio
def test_audio_release_keeps_its_positions_and_preprocessing(tmp_path: Path) -> None:
    clip = tiny_clip(5)
    mel_bins, target_length = 24, 48  # patch 8: a 3 x 6 grid, 1 + 18 positions (upstream: 1 + 9 x 74)
    state = dict(clip.state_dict())
    positions = torch.randn(1 + 3 * 6, 32, generator=torch.Generator().manual_seed(0))
    state["vision_model.embeddings.position_embedding.weight"] = positions
    vision = {
        "num_mel_bins": mel_bins,
        "target_length": target_length,
        "audio_mean": -3.5,
        "audio_std": 5.5,
        "audio_sample_rate": 16000,
        "image_size": [mel_bins, target_length],  # upstream's resize_pos rewrites it so
    }
    src = write_release(tmp_path / "LanguageBind_Audio", clip, "LanguageBindAudio", vision, state)
    result = convert_languagebind(src, tmp_path / "out")
    assert result.settings == {"mel_bins": 24, "target_length": 48, "mean": -3.5, "std": 5.5, "sample_rate": 16000}

    assert torch.equal(encoder_state(tmp_path / "out", "audio")["trunk.position_embedding"], positions)
    model = lbcore.load(tmp_path / "out")
    cfg = model.modalities["audio"].config
    assert (cfg.mel_bins, cfg.target_length, cfg.mean, cfg.std, cfg.sample_rate) == (24, 48, -3.5, 5.5, 16000)
    assert tuple(model.encoders["audio"].stem.grid_size) == (3, 6)
    wave = np.random.default_rng(0).standard_normal(16000).astype(np.float32) * 0.1
    emb = model.embed("audio", [wave])  # the carried settings preprocess into the encoder's grid
    assert emb.shape == (1, EMBED) and torch.isfinite(emb).all()


def test_audio_release_must_state_its_mel_bins(tmp_path: Path) -> None:
    src = write_release(tmp_path / "rel", tiny_clip(5), "LanguageBindAudio", {"target_length": 48})
    with pytest.raises(CheckpointError, match=r"vision_config\.num_mel_bins is missing"):
        convert_languagebind(src, tmp_path / "out")


# --------------------------------------------------------------------------------- one folder, one anchor
def test_two_modalities_share_one_anchor_and_another_text_tower_is_refused(tmp_path: Path) -> None:
    base = tiny_clip(6)
    depth_src = write_release(tmp_path / "LanguageBind_Depth", base, "LanguageBindDepth", {"max_depth": 10.0})
    thermal = tiny_clip(7)  # another vision tower, the same text tower (as every release of one version)
    thermal.load_state_dict({k: v for k, v in base.state_dict().items() if k.startswith("text_")}, strict=False)
    thermal_src = write_release(tmp_path / "LanguageBind_Thermal", thermal, "LanguageBindThermal")
    out = tmp_path / "lb"

    result = CliRunner().invoke(convert, ["languagebind", str(depth_src), str(thermal_src), "--output", str(out)])
    assert result.exit_code == 0, result.output
    assert "shared" in result.output and "written" in result.output
    names = ["README.md", "anchor", "depth.safetensors", "infrared.safetensors", META_FILE]
    assert sorted(p.name for p in out.iterdir()) == names
    readme = (out / "README.md").read_text()  # the card is rewritten when a modality joins
    assert "| depth |" in readme and "| infrared |" in readme and "- infrared" in readme
    model = lbcore.load(out)
    assert sorted(model.modalities) == ["depth", "infrared"]
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model.embed("infrared", x), clip_image_embeds(thermal, x), atol=1e-5, rtol=0)
    torch.testing.assert_close(model.embed("depth", x), clip_image_embeds(base, x), atol=1e-5, rtol=0)

    other = write_release(
        tmp_path / "other", tiny_clip(8), "LanguageBindAudio", {"num_mel_bins": 32, "target_length": 32}
    )
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    with pytest.raises(CheckpointError, match="different text tower"):
        convert_languagebind(other, out)
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no staged anchor left behind


def test_convert_is_an_lbind_command_and_needs_tokenizer_files(tmp_path: Path) -> None:
    from lbcore.cli import cli

    with click.Context(cli) as ctx:
        assert cli.get_command(ctx, "convert") is convert
    src = write_release(tmp_path / "rel", tiny_clip(0), "LanguageBindDepth", tokenizer=False)
    with pytest.raises(CheckpointError, match=r"no tokenizer files.*--tokenizer"):
        convert_languagebind(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    tok = tmp_path / "tok"
    tok.mkdir()
    write_tokenizer(tok, "CLIPTokenizer")
    assert convert_languagebind(src, tmp_path / "out", tokenizer=tok).modality == "depth"
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointError, match="junk: exists and is not an lbind checkpoint"):
        convert_languagebind(src, tmp_path / "junk", tokenizer=tok)


# ------------------------------------------------------------------------------------ --init languagebind:
def test_load_languagebind_into_checks_modality_resizes_grid_and_explains_dimensions(tmp_path: Path) -> None:
    clip = tiny_clip(9)
    src = write_release(tmp_path / "LanguageBind_Depth", clip, "LanguageBindDepth", {"max_depth": 10.0})
    depth_cls = default_registry().registered("depth").cls
    infrared_cls = default_registry().registered("infrared").cls
    tiny = {"encoder": {"width": 32, "depth": 2, "heads": 2, "patch_size": 8}, "max_depth": 5.0}

    depth = depth_cls(depth_cls.config_preset("languagebind", image_size=48, **tiny))  # 6 x 6 grid vs 4 x 4
    encoder = depth.build_encoder(EMBED)
    loaded = load_languagebind_into(encoder, depth, src)
    assert loaded.logit_scale == pytest.approx(RELEASE_SCALE)
    assert "resized position embedding from 4x4 to 6x6" in loaded.report
    assert "the release was trained with max_depth=10.0; this run uses 5.0" in loaded.report
    assert torch.equal(encoder.stem.proj.weight, clip.vision_model.embeddings.patch_embedding.weight)

    with pytest.raises(CheckpointError, match="projects into its own text tower's 16-d space"):
        load_languagebind_into(depth.build_encoder(8), depth, src)
    infrared = infrared_cls(infrared_cls.config_preset("languagebind", image_size=32, encoder=tiny["encoder"]))
    with pytest.raises(CheckpointError, match=r"LanguageBindDepth checkpoint .* cannot initialise the 'infrared'"):
        load_languagebind_into(infrared.build_encoder(EMBED), infrared, src)


def test_train_init_languagebind_continues_from_the_release(tmp_path: Path) -> None:
    from lbcore.manifest import write_manifest
    from lbcore.runconfig import TrainConfig

    clip = tiny_clip(10)
    src = write_release(tmp_path / "LanguageBind_Depth", clip, "LanguageBindDepth", {"max_depth": 10.0})
    converted = tmp_path / "converted"
    convert_languagebind(src, converted)  # for its anchor: the release's own text tower
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for i in range(8):
        np.save(data / f"d{i}.npy", rng.uniform(0.5, 9.0, size=(40, 40)).astype(np.float32))
    manifest = write_manifest(data / "train.jsonl", [{"path": f"d{i}.npy", "caption": TEXTS[i % 3]} for i in range(8)])
    depth = {
        "preset": "languagebind",
        "image_size": 32,
        "encoding": "metres_npy",
        "encoder": {"width": 32, "depth": 2, "heads": 2, "patch_size": 8},
        "mask_ratio": 0.0,
        "lora": {"rank": 2},
        "optim": {"lr": 1e-3, "warmup_steps": 1, "epochs": 1, "batch_size": 4},
    }
    train = {
        "data": {"depth": str(manifest)},
        "max_steps": 2,
        "init": f"languagebind:{src}",
        "output_dir": str(tmp_path / "run"),
        "save_every": 0,
        "num_workers": 0,
    }
    final = lbcore.train(
        {"anchor": {"name": str(converted / "anchor")}, "modalities": {"depth": depth}, "train": train}
    )
    # Whatever form the run saved (full weights, or the adapter on the release as its base), it loads back whole.
    got = lbcore.load(final).encoders["depth"].state_dict()
    emb = clip.vision_model.embeddings
    # Frozen under LoRA, so still exactly the release's ...
    assert torch.equal(got["stem.proj.weight"], emb.patch_embedding.weight.detach())
    assert torch.equal(got["trunk.position_embedding"], emb.position_embedding.weight.detach())
    # ... while the attention moved a little through the adapters, and the temperature continued from the release's.
    q = clip.vision_model.encoder.layers[0].self_attn.q_proj.weight.detach()
    assert 0 < (got["trunk.blocks.0.attn.q_proj.weight"] - q).abs().max() < 0.05
    scale = json.loads((final / META_FILE).read_text())["modalities"]["depth"]["logit_scale"]
    assert abs(scale - RELEASE_SCALE) < 0.05

    assert TrainConfig(init={"depth": "languagebind:/x"}).init == {"depth": "languagebind:/x"}
    for bad in ("languagebind:", "imagebind:/x"):
        with pytest.raises(ValueError, match="languagebind:PATH"):
            TrainConfig(init=bad)
    thermal = write_release(tmp_path / "LanguageBind_Thermal", clip, "LanguageBindThermal")
    train.update(init=f"languagebind:{thermal}", output_dir=str(tmp_path / "run2"))
    with pytest.raises((CheckpointError, ConfigError), match="cannot initialise the 'depth' encoder"):
        lbcore.train({"anchor": {"name": str(converted / "anchor")}, "modalities": {"depth": depth}, "train": train})


# ------------------------------------------------------------------------------------------------- safety
class _OpensAFile:
    """Unpickling this calls open(path, 'w'): code execution that leaves a file behind."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


class _RunsAShell:
    """Unpickling this calls os.system('touch path')."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, (f"touch {self.path}",))


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:Detected pickle protocol")  # the pickle.dump container: refused anyway
@pytest.mark.parametrize("payload", [_OpensAFile, _RunsAShell])
@pytest.mark.parametrize("container", ["torch.save", "pickle.dump"])
def test_a_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, payload: type, container: str) -> None:
    clip = tiny_clip(0)
    src = write_release(tmp_path / "LanguageBind_Depth", clip, "LanguageBindDepth")
    (src / "model.safetensors").unlink()
    marker = tmp_path / "pwned"
    evil = {"vision_model.embeddings.class_embedding": payload(marker), "logit_scale": torch.tensor(1.0)}
    weights = src / "pytorch_model.bin"
    if container == "torch.save":
        torch.save(evil, weights)
    else:
        with open(weights, "wb") as f:
            pickle.dump(evil, f)
    assert not marker.exists()  # writing the payload ran nothing

    with pytest.raises(
        CheckpointError, match=r"LanguageBind_Depth/pytorch_model\.bin: cannot be loaded as plain tensors"
    ):
        convert_languagebind(src, tmp_path / "out")
    with pytest.raises(CheckpointError, match=r"pytorch_model\.bin.*weights_only=True"):
        load_clip_vision_into(lbcore.get_modality("depth").build_encoder(EMBED), src)
    assert not marker.exists()
    assert not (tmp_path / "out").exists()


def test_converted_image_and_depth_share_one_space_for_emergent_retrieval(tmp_path: Path) -> None:
    """Image + Depth releases of one version -> one directory; `lbind eval --emergent` ranks depth maps against
    images through the shared space, as an independent cosine ranking of the converted embeddings does."""
    if not image_installed():
        pytest.skip("the image plugin is not installed")
    from PIL import Image

    from lbcore.cli import cli

    base = tiny_clip(11)
    depth_src = write_release(tmp_path / "LanguageBind_Depth", base, "LanguageBindDepth", {"max_depth": 10.0})
    image = tiny_clip(12)
    image.load_state_dict({k: v for k, v in base.state_dict().items() if k.startswith("text_")}, strict=False)
    image_src = write_release(tmp_path / "LanguageBind_Image", image, "LanguageBindImage")
    out = tmp_path / "lb"
    assert CliRunner().invoke(convert, ["languagebind", str(image_src), str(depth_src), "-o", str(out)]).exit_code == 0

    data = tmp_path / "pairs"
    data.mkdir()
    rng = np.random.default_rng(0)
    rows = []
    for i in range(4):  # each scene: an RGB picture and a depth map (16-bit millimetres) of different content
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(data / f"rgb{i}.png")
        Image.fromarray(rng.integers(300, 9000, (40, 48), dtype=np.uint16)).save(data / f"depth{i}.png")
        rows.append(json.dumps({"image": f"rgb{i}.png", "depth": f"depth{i}.png"}))
    (data / "pairs.jsonl").write_text("\n".join(rows) + "\n")
    card = tmp_path / "card.json"
    args = ["eval", "-c", str(out), "-m", "image", "--emergent", "depth", "--data", str(data / "pairs.jsonl")]
    result = CliRunner().invoke(cli, [*args, "-o", str(card), "--no-plot", "--num-workers", "0"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(card.read_text())["metrics"]

    model = lbcore.load(out)
    rgb = model.embed("image", [data / f"rgb{i}.png" for i in range(4)])
    dep = model.embed("depth", [data / f"depth{i}.png" for i in range(4)])
    sim = torch.nn.functional.normalize(rgb, dim=-1) @ torch.nn.functional.normalize(dep, dim=-1).t()
    ranks = (sim > sim.diagonal()[:, None]).sum(1) + 1  # rank of each image's own depth map among all four
    assert metrics["image_to_depth_R@1"] == pytest.approx(100 * (ranks == 1).float().mean().item())
    assert metrics["image_to_depth_mean_rank"] == pytest.approx(ranks.float().mean().item())
