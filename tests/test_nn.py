"""The encoder core (lbcore.nn) and the HF CLIP vision weight mapping (lbcore.convert).

Parity is checked against transformers' own CLIP implementation, and the position-embedding resize against
torch.nn.functional.interpolate on a grid reshaped here, not against our own code.
"""

from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

import lbcore.nn.trunk as trunk_module
from lbcore.config import EncoderConfig
from lbcore.convert import clip_vision_to_encoder_state, encoder_config_from_clip, load_clip_vision_into
from lbcore.errors import CheckpointError, ConfigError
from lbcore.nn import PatchStem1d, PatchStem2d, ViTEncoder, ViTTrunk, resize_position_embedding

WIDTH, IMAGE, PATCH, PROJ = 32, 32, 8, 16  # a 4x4 patch grid
TOL = 1e-5


def tiny_vision_config(act: str = "gelu", **overrides) -> CLIPVisionConfig:
    kwargs = dict(
        hidden_size=WIDTH,
        intermediate_size=80,  # mlp_ratio 2.5: not the default 4
        num_hidden_layers=2,
        num_attention_heads=4,
        image_size=IMAGE,
        patch_size=PATCH,
        projection_dim=PROJ,
        hidden_act=act,
        layer_norm_eps=1e-5,
    )
    kwargs.update(overrides)
    return CLIPVisionConfig(**kwargs)


def scramble_(model: torch.nn.Module, seed: int) -> None:
    """Move every parameter away from its initial value (LayerNorms start at 1/0, biases at 0): a swapped or
    dropped tensor in the mapping must show up in the outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn(p.shape, generator=gen))


def hf_vision_model(act: str = "gelu", seed: int = 0) -> CLIPVisionModelWithProjection:
    torch.manual_seed(seed)
    model = CLIPVisionModelWithProjection(tiny_vision_config(act)).eval()
    scramble_(model, seed)
    return model


def our_encoder(cfg: EncoderConfig, input_size=(IMAGE, IMAGE), mask_ratio: float = 0.0) -> ViTEncoder:
    stem = PatchStem2d(3, cfg.width, cfg.patch_size, input_size)
    return ViTEncoder(stem, cfg, embed_dim=PROJ, mask_ratio=mask_ratio).eval()


def images(n: int = 2, size=(IMAGE, IMAGE), seed: int = 1) -> torch.Tensor:
    return torch.randn(n, 3, *size, generator=torch.Generator().manual_seed(seed))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


def tiny_encoder_config(**overrides) -> EncoderConfig:
    return EncoderConfig(**{"width": WIDTH, "depth": 2, "heads": 4, "patch_size": PATCH, **overrides})


# --- parity with transformers -------------------------------------------------------------------------


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_parity_with_transformers_state_dict(act: str) -> None:
    hf = hf_vision_model(act)
    cfg = encoder_config_from_clip(hf.config)
    assert (cfg.width, cfg.depth, cfg.heads, cfg.patch_size, cfg.act) == (WIDTH, 2, 4, PATCH, act)
    assert cfg.mlp_ratio == 2.5
    ours = our_encoder(cfg)
    ours.load_state_dict(clip_vision_to_encoder_state(hf.state_dict()), strict=True)
    x = images()
    with torch.no_grad():
        expected = hf(pixel_values=x).image_embeds
        got = ours(x)
    assert got.shape == expected.shape == (2, PROJ)
    assert max_diff(got, expected) <= TOL


def test_activation_matters_for_parity() -> None:
    # Guards the parity test itself: the wrong activation must be visible at this tolerance.
    hf = hf_vision_model("quick_gelu")
    cfg = encoder_config_from_clip(hf.config).model_copy(update={"act": "gelu"})
    ours = our_encoder(cfg)
    ours.load_state_dict(clip_vision_to_encoder_state(hf.state_dict()), strict=True)
    x = images()
    with torch.no_grad():
        assert max_diff(ours(x), hf(pixel_values=x).image_embeds) > 1e-3


@pytest.mark.parametrize("act", ["gelu", "quick_gelu"])
def test_parity_through_checkpoint_directory(tmp_path: Path, act: str) -> None:
    hf = hf_vision_model(act, seed=3)
    hf.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "config.json").is_file()
    ours = our_encoder(encoder_config_from_clip(json.loads((tmp_path / "config.json").read_text())))
    report = load_clip_vision_into(ours, tmp_path)
    assert not [line for line in report if "unused" in line or "resized" in line]
    x = images(3)
    with torch.no_grad():
        assert max_diff(ours(x), hf(pixel_values=x).image_embeds) <= TOL


def test_sharded_safetensors_directory(tmp_path: Path) -> None:
    hf = hf_vision_model(seed=4)
    hf.save_pretrained(tmp_path, max_shard_size="20KB")
    assert (tmp_path / "model.safetensors.index.json").is_file()
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ours = our_encoder(encoder_config_from_clip(hf.config))
    load_clip_vision_into(ours, tmp_path)
    x = images()
    with torch.no_grad():
        assert max_diff(ours(x), hf(pixel_values=x).image_embeds) <= TOL

    (tmp_path / sorted(tmp_path.glob("model-*.safetensors"))[-1].name).unlink()
    with pytest.raises(CheckpointError, match=r"index\.json: shard model-.*missing"):
        load_clip_vision_into(ours, tmp_path)


def test_full_clip_model_directory_skips_text_tower(tmp_path: Path) -> None:
    torch.manual_seed(5)
    text = dict(
        hidden_size=WIDTH,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        vocab_size=64,
        max_position_embeddings=16,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    config = CLIPConfig(text_config=text, vision_config=tiny_vision_config().to_dict(), projection_dim=PROJ)
    hf = CLIPModel(config).eval()
    scramble_(hf, 5)
    hf.save_pretrained(tmp_path)

    # config.json of a full CLIPModel nests the vision tower under vision_config
    cfg = encoder_config_from_clip(json.loads((tmp_path / "config.json").read_text()))
    ours = our_encoder(cfg)
    report = load_clip_vision_into(ours, tmp_path)
    assert any(line.startswith("skipped") and "text-tower" in line for line in report)
    assert "unused source key: logit_scale" in report
    assert not any(line.startswith("unused source key: text_") for line in report)
    x = images()
    with torch.no_grad():
        expected = hf.visual_projection(hf.vision_model(pixel_values=x).pooler_output)
        assert max_diff(ours(x), expected) <= TOL


def test_pytorch_bin_is_read_with_weights_only(tmp_path: Path) -> None:
    hf = hf_vision_model(seed=7)
    hf.config.to_json_file(tmp_path / "config.json")
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    ours = our_encoder(encoder_config_from_clip(hf.config))
    load_clip_vision_into(ours, tmp_path)
    x = images()
    with torch.no_grad():
        assert max_diff(ours(x), hf(pixel_values=x).image_embeds) <= TOL

    # A pickle holding anything but tensors and containers is refused, never executed.
    bad = tmp_path / "bad"
    bad.mkdir()
    torch.save({"vision_model.embeddings.class_embedding": Fraction(1, 3)}, bad / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"bad/pytorch_model\.bin.*weights_only"):
        load_clip_vision_into(ours, bad)


def test_prefixed_keys_are_found() -> None:
    hf = hf_vision_model()
    state = {f"clip.{k}": v for k, v in hf.state_dict().items()}
    mapped = clip_vision_to_encoder_state(state)
    assert mapped.keys() == clip_vision_to_encoder_state(hf.state_dict()).keys()
    with pytest.raises(CheckpointError, match=r"vision_model\.embeddings\.class_embedding"):
        clip_vision_to_encoder_state(state, prefix_guess=False)
    with pytest.raises(CheckpointError, match="no CLIP vision tower"):
        clip_vision_to_encoder_state({"foo.weight": torch.zeros(1)})


# --- strictness ----------------------------------------------------------------------------------------


def test_missing_key_is_named() -> None:
    hf = hf_vision_model()
    state = dict(hf.state_dict())
    del state["vision_model.encoder.layers.1.mlp.fc2.bias"]
    ours = our_encoder(encoder_config_from_clip(hf.config))
    before = {k: v.clone() for k, v in ours.state_dict().items()}
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint: trunk\.blocks\.1\.mlp\.fc2\.bias"):
        load_clip_vision_into(ours, state)
    # nothing was half-loaded
    assert all(torch.equal(before[k], v) for k, v in ours.state_dict().items())


def test_extra_layer_and_shape_mismatch_are_named(tmp_path: Path) -> None:
    hf = hf_vision_model()
    hf.save_pretrained(tmp_path)
    shallow = our_encoder(tiny_encoder_config(depth=1))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*not in the encoder: trunk\.blocks\.1\."):
        load_clip_vision_into(shallow, tmp_path)
    narrow_head = ViTEncoder(PatchStem2d(3, WIDTH, PATCH, (IMAGE, IMAGE)), tiny_encoder_config(), embed_dim=PROJ + 1)
    with pytest.raises(CheckpointError, match=r"head\.proj\.weight: checkpoint \(16, 32\), encoder \(17, 32\)"):
        load_clip_vision_into(narrow_head, tmp_path)
    one_channel = ViTEncoder(PatchStem2d(1, WIDTH, PATCH, (IMAGE, IMAGE)), tiny_encoder_config(), embed_dim=PROJ)
    with pytest.raises(CheckpointError, match=r"stem\.proj\.weight"):
        load_clip_vision_into(one_channel, tmp_path)


def test_architecture_invisible_in_weights_is_checked_against_config(tmp_path: Path) -> None:
    hf = hf_vision_model("quick_gelu")
    hf.save_pretrained(tmp_path)
    cfg = encoder_config_from_clip(hf.config)
    with pytest.raises(CheckpointError, match="heads: checkpoint 4, encoder 2"):
        load_clip_vision_into(our_encoder(cfg.model_copy(update={"heads": 2})), tmp_path)
    with pytest.raises(CheckpointError, match="activation: checkpoint quick_gelu"):
        load_clip_vision_into(our_encoder(cfg.model_copy(update={"act": "gelu"})), tmp_path)
    with pytest.raises(CheckpointError, match="layer_norm_eps"):
        load_clip_vision_into(our_encoder(cfg.model_copy(update={"layer_norm_eps": 1e-6})), tmp_path)


def test_missing_checkpoint_files(tmp_path: Path) -> None:
    ours = our_encoder(tiny_encoder_config())
    with pytest.raises(CheckpointError, match="no weights found"):
        load_clip_vision_into(ours, tmp_path)
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_clip_vision_into(ours, tmp_path / "absent")


def test_encoder_config_from_clip_rejects_what_it_cannot_build() -> None:
    with pytest.raises(ConfigError, match="gelu_new"):
        encoder_config_from_clip({"hidden_act": "gelu_new"})
    with pytest.raises(ConfigError, match="num_attention_heads"):
        encoder_config_from_clip({"hidden_size": 30, "num_attention_heads": 4})
    # config.json fields left out take transformers' CLIPVisionConfig defaults
    defaults = CLIPVisionConfig()
    cfg = encoder_config_from_clip({"vision_config": {"hidden_size": 64, "num_attention_heads": 4}})
    assert cfg.width == 64 and cfg.heads == 4
    assert cfg.depth == defaults.num_hidden_layers and cfg.patch_size == defaults.patch_size
    assert cfg.act == defaults.hidden_act and cfg.mlp_ratio * 64 == defaults.intermediate_size


# --- position embedding resize -------------------------------------------------------------------------


def reference_resize(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    d = pos.shape[-1]
    # [1 + gh*gw, D] -> [1, D, gh, gw]
    grid = pos[1:].reshape(old[0], old[1], d).permute(2, 0, 1).unsqueeze(0)
    # antialias=True as LanguageBind resized the CLIP grid for audio (and OpenCLIP resize_pos_embed)
    out = F.interpolate(grid, size=new, mode="bicubic", align_corners=False, antialias=True)
    # [1, D, gh', gw'] -> [gh'*gw', D]
    out = out[0].permute(1, 2, 0).reshape(new[0] * new[1], d)
    return torch.cat([pos[:1], out])


@pytest.mark.parametrize("new", [(2, 7), (9, 3), (1, 12)])
def test_resize_position_embedding_matches_bicubic_reference(new: tuple[int, int]) -> None:
    pos = torch.randn(1 + 16, 8, generator=torch.Generator().manual_seed(0))
    out = resize_position_embedding(pos, new)
    assert out.shape == (1 + new[0] * new[1], 8)
    assert torch.equal(out[0], pos[0])
    assert max_diff(out, reference_resize(pos, (4, 4), new)) <= 1e-6
    # the batched [1, 1 + N, D] form gives the same
    assert torch.equal(resize_position_embedding(pos.unsqueeze(0), new)[0], out)


def test_resize_position_embedding_identity_and_bad_grids() -> None:
    pos = torch.randn(1 + 12, 8)
    assert torch.equal(resize_position_embedding(pos, (3, 4), old_grid=(3, 4)), pos)
    square = torch.randn(1 + 16, 8)
    assert torch.equal(resize_position_embedding(square, (4, 4)), square)
    back = resize_position_embedding(resize_position_embedding(pos, (3, 4), old_grid=(3, 4)), (4, 3), (4, 3))
    assert back.shape == pos.shape
    with pytest.raises(ValueError, match="square"):
        resize_position_embedding(pos, (4, 4))  # 12 positions, no old_grid
    with pytest.raises(ValueError, match="old grid"):
        resize_position_embedding(pos, (4, 4), old_grid=(4, 4))


def test_load_resizes_positions_for_another_grid(tmp_path: Path) -> None:
    hf = hf_vision_model()
    hf.save_pretrained(tmp_path)
    cfg = encoder_config_from_clip(hf.config)
    ours = our_encoder(cfg, input_size=(24, 40))  # 3x5 patches, e.g. a spectrogram-shaped input
    report = load_clip_vision_into(ours, tmp_path)
    assert "resized position embedding from 4x4 to 3x5" in report
    source = hf.vision_model.embeddings.position_embedding.weight.detach()
    loaded = ours.trunk.position_embedding.detach()
    assert loaded.shape == (1 + 15, WIDTH)
    assert torch.equal(loaded[0], source[0])
    assert max_diff(loaded, reference_resize(source, (4, 4), (3, 5))) <= 1e-6
    with torch.no_grad():
        assert ours(images(size=(24, 40))).shape == (2, PROJ)

    with pytest.raises(CheckpointError, match=r"resize_positions=False.*trunk\.position_embedding"):
        load_clip_vision_into(our_encoder(cfg, input_size=(24, 40)), tmp_path, resize_positions=False)

    # a checkpoint already on the non-square grid (as LanguageBind's audio tower ships) loads as it is
    state = dict(hf.state_dict())
    state["vision_model.embeddings.position_embedding.weight"] = ours.trunk.position_embedding.detach().clone()
    again = our_encoder(cfg, input_size=(24, 40))
    report = load_clip_vision_into(again, state)
    assert not any("resized" in line for line in report)
    assert torch.equal(again.trunk.position_embedding, ours.trunk.position_embedding)
    # ... but a count that fits neither grid is an error
    with pytest.raises(CheckpointError, match=r"15 patch positions.*4x2 grid holds 8"):
        load_clip_vision_into(our_encoder(cfg, input_size=(32, 16)), state)


def test_trunk_resize_grid_keeps_frozen_flag() -> None:
    trunk = ViTTrunk(tiny_encoder_config(), (4, 4))
    trunk.position_embedding.requires_grad_(False)
    before = trunk.position_embedding.detach().clone()
    trunk.resize_grid((2, 6))
    assert trunk.grid_size == (2, 6) and trunk.position_embedding.shape == (13, WIDTH)
    assert not trunk.position_embedding.requires_grad
    assert max_diff(trunk.position_embedding.detach(), reference_resize(before, (4, 4), (2, 6))) <= 1e-6


# --- token masking -------------------------------------------------------------------------------------


def test_patch_dropout_keeps_class_token_in_training_only() -> None:
    trunk = ViTTrunk(tiny_encoder_config(), (4, 4), mask_ratio=0.5)
    tokens = torch.randn(3, 16, WIDTH)
    trunk.train()
    assert trunk(tokens).shape == (3, 1 + 8, WIDTH)
    with torch.no_grad():
        full = trunk.add_class_and_position(tokens)  # [3, 17, D]
        kept = trunk.patch_dropout(full)  # [3, 9, D]
    assert kept.shape == (3, 9, WIDTH)
    assert torch.equal(kept[:, 0], full[:, 0])
    for b in range(3):
        # every kept row is one of this sample's patch rows (never the class token again), each at most once
        match = (kept[b, 1:, None, :] == full[b, None, 1:, :]).all(-1)  # [8, 16]
        assert (match.sum(1) == 1).all()
        assert match.any(0).sum() == 8

    trunk.eval()
    with torch.no_grad():
        assert torch.equal(trunk.patch_dropout(full), full)
        first, second = trunk(tokens), trunk(tokens)
    assert first.shape == (3, 17, WIDTH)
    assert torch.equal(first, second)


def test_encoder_with_masking_trains_and_evaluates() -> None:
    enc = our_encoder(tiny_encoder_config(), mask_ratio=0.5).train()
    x = images(4)
    out = enc(x)
    assert out.shape == (4, PROJ) and torch.isfinite(out).all()
    out.sum().backward()
    assert enc.stem.proj.weight.grad is not None and enc.stem.proj.weight.grad.abs().sum() > 0
    enc.eval()
    with torch.no_grad():
        assert torch.equal(enc(x), enc(x))


# --- gradient checkpointing ----------------------------------------------------------------------------


def run_step(enc: ViTEncoder, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    enc.zero_grad(set_to_none=True)
    torch.manual_seed(123)  # drop_path draws random numbers: both runs must see the same ones
    out = enc(x)
    (out * torch.linspace(-1, 1, out.shape[-1])).sum().backward()
    return out.detach(), {n: p.grad.clone() for n, p in enc.named_parameters()}


def test_grad_checkpointing_changes_nothing_but_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []
    real_checkpoint = trunk_module.checkpoint

    def counting_checkpoint(*args, **kwargs):
        calls.append(1)
        return real_checkpoint(*args, **kwargs)

    monkeypatch.setattr(trunk_module, "checkpoint", counting_checkpoint)
    torch.manual_seed(0)
    enc = our_encoder(tiny_encoder_config(drop_path=0.2)).train()
    x = images(2)

    plain_out, plain_grads = run_step(enc, x)
    assert not calls
    enc.set_grad_checkpointing(True)
    ckpt_out, ckpt_grads = run_step(enc, x)
    assert len(calls) == 2  # one per block
    assert torch.equal(plain_out, ckpt_out)
    assert plain_grads.keys() == ckpt_grads.keys()
    for name, grad in plain_grads.items():
        assert torch.equal(grad, ckpt_grads[name]), name

    # off in eval mode and without autograd, even when switched on
    calls.clear()
    enc.eval()
    with torch.no_grad():
        enc(x)
    enc(x)
    enc.train()
    with torch.no_grad():
        enc(x)
    assert not calls


def test_grad_checkpointing_from_config() -> None:
    enc = our_encoder(tiny_encoder_config(grad_checkpointing=True))
    assert enc.trunk.grad_checkpointing
    enc.set_grad_checkpointing(False)
    assert not enc.trunk.grad_checkpointing


# --- stems ---------------------------------------------------------------------------------------------


def test_patch_stem_1d_shapes() -> None:
    stem = PatchStem1d(in_chans=6, width=WIDTH, patch_size=10, length=105)
    assert stem.grid_size == (1, 10) and stem.num_patches == 10
    tokens = stem(torch.randn(2, 6, 105))
    assert tokens.shape == (2, 10, WIDTH)
    enc = ViTEncoder(stem, tiny_encoder_config(), embed_dim=PROJ).eval()
    assert enc.trunk.position_embedding.shape == (11, WIDTH)
    with torch.no_grad():
        assert enc(torch.randn(2, 6, 105)).shape == (2, PROJ)
    with pytest.raises(ValueError, match="shorter than one patch"):
        PatchStem1d(6, WIDTH, 10, 9)


def test_patch_stem_2d_shapes_and_wrong_input_size() -> None:
    stem = PatchStem2d(3, WIDTH, PATCH, (20, 35))  # trailing pixels that do not fill a patch are dropped
    assert stem.grid_size == (2, 4) and stem.num_patches == 8
    assert stem(torch.randn(1, 3, 20, 35)).shape == (1, 8, WIDTH)
    enc = ViTEncoder(stem, tiny_encoder_config(), embed_dim=PROJ)
    with pytest.raises(ValueError, match="stem produced 16 patches"):
        enc(torch.randn(1, 3, 32, 32))
