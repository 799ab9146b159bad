"""The space-time encoder (lbcore.nn.temporal) as the video modality builds it."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from lbind_video.modality import VideoModality

from lbcore.config import EncoderConfig
from lbcore.image import image_stem
from lbcore.nn import SpaceTimeEncoder, ViTEncoder
from lbcore.nn.temporal import keep_tokens, sample_shared_keep
from lbcore.testing import tiny_modality

T = 4
EMBED = 16


def video(**overrides) -> VideoModality:
    m = tiny_modality(VideoModality, {"num_frames": T, "image_size": 32, **overrides})
    assert isinstance(m, VideoModality)
    return m


def clips(b: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, 3, T, 32, 32, generator=torch.Generator().manual_seed(seed))


def silence_temporal(encoder: SpaceTimeEncoder) -> None:
    with torch.no_grad():
        encoder.trunk.temporal_embedding.zero_()
        for attn in encoder.trunk.temporal_attn:
            attn.out_proj.weight.zero_()
            attn.out_proj.bias.zero_()


def test_silenced_temporal_path_equals_the_per_frame_image_encoder() -> None:
    m = video()
    torch.manual_seed(0)
    image = ViTEncoder(image_stem(m.config), m.config.encoder, EMBED).eval()
    encoder = m.build_encoder(EMBED).eval()
    missing, unexpected = encoder.load_state_dict(image.state_dict(), strict=False)
    assert not unexpected
    assert missing and all(k.startswith("trunk.temporal_") for k in missing)
    silence_temporal(encoder)
    x = clips()
    with torch.no_grad():
        got = encoder(x)
        # Reference: the image encoder on each frame; post-LayerNorm per frame, mean over frames, projection.
        frames = x.permute(0, 2, 1, 3, 4).reshape(-1, 3, 32, 32)  # [B*T, 3, H, W]
        cls = image.trunk(image.stem(frames))[:, 0]
        expected = image.head.proj(image.head.norm(cls).view(2, T, -1).mean(1))
    assert got.shape == (2, EMBED)
    assert torch.allclose(got, expected, atol=1e-5)


def test_temporal_parts_start_as_copies_of_the_spatial_ones() -> None:
    encoder = video().build_encoder(EMBED)
    trunk = encoder.trunk
    assert trunk.temporal_embedding.shape == (len(trunk.blocks), T, trunk.width)
    for block, norm, attn in zip(trunk.blocks, trunk.temporal_norm, trunk.temporal_attn, strict=True):
        for name, value in block.norm1.state_dict().items():
            assert torch.equal(norm.state_dict()[name], value)
        for name, value in block.attn.state_dict().items():
            assert torch.equal(attn.state_dict()[name], value)
    with torch.no_grad():
        trunk.blocks[0].attn.q_proj.weight.add_(1.0)
    encoder.init_temporal_from_spatial()
    assert torch.equal(trunk.temporal_attn[0].q_proj.weight, trunk.blocks[0].attn.q_proj.weight)


def test_temporal_mix_matches_a_per_position_loop() -> None:
    trunk = video().build_encoder(EMBED).trunk.eval()
    with torch.no_grad():
        trunk.temporal_embedding[1].normal_()
    b, n, d = 2, 5, trunk.width
    x = torch.randn(b * T, n, d)
    with torch.no_grad():
        got = trunk.temporal_mix(1, x, T)
        expected = torch.empty_like(x)
        frames = x.view(b, T, n, d)
        for clip in range(b):
            for pos in range(n):
                seq = frames[clip, :, pos] + trunk.temporal_embedding[1]  # [T, D]
                out = seq + trunk.temporal_attn[1](trunk.temporal_norm[1](seq)[None])[0]
                expected.view(b, T, n, d)[clip, :, pos] = out
    assert torch.allclose(got, expected, atol=1e-5)


def test_temporal_attention_mixes_frames_only_at_the_same_position() -> None:
    trunk = video().build_encoder(EMBED).trunk.eval()
    x = torch.randn(2 * T, 6, trunk.width)
    poked = x.clone()
    poked[0, 3] += torch.randn(trunk.width)  # clip 0, frame 0, token 3 (not a constant: LayerNorm drops it)
    with torch.no_grad():
        changed = (trunk.temporal_mix(0, poked, T) - trunk.temporal_mix(0, x, T)).abs().sum(-1) > 1e-6
    changed = changed.view(2, T, 6)
    assert changed[0, :, 3].all(), "every frame of the clip sees the poked token"
    assert changed.sum() == T, "nothing else changes: other positions and the other clip"


def test_later_frames_depend_on_earlier_ones_only_through_the_temporal_path() -> None:
    encoder = video().build_encoder(EMBED).eval()
    x = clips(1)
    poked = x.clone()
    poked[:, :, 0] += 1.0  # change frame 0 only
    stem = encoder.stem

    def last_frame_tokens(e: SpaceTimeEncoder, inp: torch.Tensor) -> torch.Tensor:
        frames = inp.transpose(1, 2).reshape(T, 3, 32, 32)
        return e.trunk(stem(frames), T)[T - 1]

    with torch.no_grad():
        assert not torch.allclose(last_frame_tokens(encoder, x), last_frame_tokens(encoder, poked))
        silence_temporal(encoder)
        assert torch.allclose(last_frame_tokens(encoder, x), last_frame_tokens(encoder, poked))


def test_shared_keep_indices_are_the_same_in_every_frame_of_a_clip() -> None:
    keep = sample_shared_keep(3, T, 49, 0.3, generator=torch.Generator().manual_seed(0))
    assert keep.shape == (3 * T, int(49 * 0.7))
    per_clip = keep.view(3, T, -1)
    assert (per_clip == per_clip[:, :1]).all()
    assert not torch.equal(per_clip[0, 0], per_clip[1, 0]), "clips draw their own positions"
    assert (keep.diff(dim=1) > 0).all() and keep.min() >= 0 and keep.max() < 49


def test_trunk_masking_keeps_class_token_and_shared_positions() -> None:
    m = video(mask_ratio=0.5)
    trunk = m.build_encoder(EMBED).trunk.train()
    n = trunk.position_embedding.shape[0] - 1
    # Tokens that carry their own position: row p holds p everywhere.
    x = torch.arange(n + 1, dtype=torch.float32).view(1, n + 1, 1).expand(2 * T, n + 1, trunk.width)
    torch.manual_seed(0)
    kept, keep = trunk.mask_tokens(x, T)
    assert keep is not None and kept.shape == (2 * T, 1 + n // 2, trunk.width)
    assert (kept[:, 0] == 0).all(), "class token first"
    positions = kept[:, 1:, 0].long() - 1  # [B*T, K]: which patches survived
    assert torch.equal(positions, keep)
    assert (positions.view(2, T, -1) == positions.view(2, T, -1)[:, :1]).all()
    assert torch.equal(keep_tokens(x, keep), kept)
    with torch.no_grad():
        out = trunk(torch.randn(2 * T, n, trunk.width))
    assert out.shape == (2 * T, 1 + n // 2, trunk.width)
    trunk.eval()
    assert trunk.mask_tokens(x, T)[1] is None
    with torch.no_grad():
        assert trunk(torch.randn(2 * T, n, trunk.width)).shape == (2 * T, 1 + n, trunk.width)


def test_gradients_reach_stem_and_every_temporal_parameter() -> None:
    encoder = video().build_encoder(EMBED).train()
    encoder(clips()).pow(2).sum().backward()
    named = dict(encoder.named_parameters())
    for name, p in named.items():
        if name.startswith(("stem.", "trunk.temporal_")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert "trunk.temporal_embedding" in named


def test_gradient_checkpointing_changes_nothing() -> None:
    m = video()
    torch.manual_seed(0)
    a = m.build_encoder(EMBED).train()
    b = m.build_encoder(EMBED).train()
    b.load_state_dict(a.state_dict())
    b.set_grad_checkpointing(True)
    x = clips()
    torch.manual_seed(1)
    out_a = a(x)
    torch.manual_seed(1)  # same token mask
    out_b = b(x)
    assert torch.allclose(out_a, out_b, atol=1e-6)
    out_a.sum().backward()
    out_b.sum().backward()
    ga, gb = a.trunk.temporal_attn[0].v_proj.weight.grad, b.trunk.temporal_attn[0].v_proj.weight.grad
    assert torch.allclose(ga, gb, atol=1e-6)


def test_wrong_number_of_frames_is_refused() -> None:
    encoder = video().build_encoder(EMBED)
    with pytest.raises(ValueError, match="frames"):
        encoder(torch.randn(1, 3, T + 1, 32, 32))


def test_lora_goes_on_the_temporal_attention_only() -> None:
    pytest.importorskip("peft")
    from lbcore.lora import apply_lora

    m = video(lora={"rank": 4})
    encoder = m.build_encoder(EMBED)
    apply_lora(encoder, m.config)
    names = [n for n, _ in encoder.named_parameters()]
    adapted = {n.split(".lora_")[0] for n in names if ".lora_" in n}
    depth = m.config.encoder.depth
    projections = ("q_proj", "k_proj", "v_proj", "out_proj")
    assert adapted == {f"trunk.temporal_attn.{i}.{p}" for i in range(depth) for p in projections}
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert {"trunk.class_embedding", "trunk.temporal_embedding", "head.proj.weight"} <= trainable
    assert {f"trunk.temporal_norm.{i}.weight" for i in range(depth)} <= trainable
    assert not any(
        n.startswith(("stem.", "trunk.blocks.", "trunk.position_embedding", "trunk.pre_norm")) for n in trainable
    )
    assert not any(n.startswith("trunk.temporal_attn.") and ".lora_" not in n for n in trainable)
    out = encoder(clips())
    assert out.shape == (2, EMBED) and torch.isfinite(out).all()


def test_encoder_config_defaults_feed_the_space_time_encoder() -> None:
    # The trunk is built from an EncoderConfig directly too (for modalities other than video).
    cfg = EncoderConfig(width=32, depth=1, heads=2, patch_size=8)
    stem = image_stem(video().config.model_copy(update={"encoder": cfg}))
    encoder = SpaceTimeEncoder(stem, cfg, EMBED, num_frames=2)
    out = F.normalize(encoder(torch.randn(3, 3, 2, 32, 32)), dim=-1)
    assert out.shape == (3, EMBED) and torch.allclose(out.norm(dim=-1), torch.ones(3))
