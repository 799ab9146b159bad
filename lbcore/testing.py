"""The contract battery every modality plugin inherits, plus helpers for plugin tests.

In a plugin's tests::

    from lbcore.testing import ModalityContract
    from lbind_audio.modality import AudioModality

    class TestAudioContract(ModalityContract):
        modality_cls = AudioModality
"""

from __future__ import annotations

import importlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from lbcore.config import deep_merge
from lbcore.loss import LogitScale, contrastive_loss
from lbcore.modality import REQUIRED_PRESETS, Modality
from lbcore.plugins import PluginRegistry


def realdata_dir() -> Path | None:
    """The shared real-sample folder: ``$LBIND_REALDATA``, else ``<repo>/../shared/realdata``; None if absent."""
    env = os.environ.get("LBIND_REALDATA")
    candidates = [Path(env)] if env else []
    repo = Path(__file__).resolve().parents[1]
    candidates += [repo.parent / "shared" / "realdata", Path.cwd().parent / "shared" / "realdata"]
    for c in candidates:
        if c.is_dir():
            return c
    return None


def tiny_modality(cls: type[Modality], overrides: dict[str, Any] | None = None) -> Modality:
    """The ``demo`` preset shrunk to a 2-layer, width-32 trunk (plus ``overrides``): fast enough for tests."""
    tiny = {"encoder": {"width": 32, "depth": 2, "heads": 2}}
    return cls(cls.config_preset("demo", **deep_merge(tiny, overrides or {})))


class ModalityContract:
    """pytest base class: subclass it in a plugin's tests and set ``modality_cls``."""

    modality_cls: ClassVar[type[Modality]]
    tiny_overrides: ClassVar[dict[str, Any]] = {}
    embed_dim: ClassVar[int] = 16

    def modality(self) -> Modality:
        return tiny_modality(self.modality_cls, self.tiny_overrides)

    def batch(self, modality: Modality, n: int = 4) -> torch.Tensor:
        return modality.collate([modality.preprocess(modality.example_input(seed=i)) for i in range(n)])

    def test_definition_is_complete(self) -> None:
        self.modality_cls.check_definition()

    def test_presets_validate_and_round_trip(self) -> None:
        for name in REQUIRED_PRESETS:
            cfg = self.modality_cls.config_preset(name)
            again = self.modality_cls.Config.model_validate(json.loads(cfg.model_dump_json()))
            assert again == cfg, f"preset {name!r} does not survive a JSON round trip"

    def test_every_config_field_is_described(self) -> None:
        schema = self.modality_cls.Config.model_json_schema()
        undocumented = []
        for model_name, model in [("Config", schema), *schema.get("$defs", {}).items()]:
            for field, spec in model.get("properties", {}).items():
                if not spec.get("description"):
                    undocumented.append(f"{model_name}.{field}")
        assert not undocumented, f"config fields without a description: {undocumented}"

    def test_templates_fill_in(self) -> None:
        prompts = self.modality().prompts("dog")
        assert prompts and all("dog" in p for p in prompts)

    def test_preprocess_is_deterministic_at_eval(self) -> None:
        m = self.modality()
        raw = m.example_input(seed=0)
        a, b = m.preprocess(raw), m.preprocess(raw)
        assert torch.equal(a, b)
        assert torch.isfinite(a).all()
        assert a.dtype == torch.float32

    def test_preprocess_train_keeps_shape(self) -> None:
        m = self.modality()
        raw = m.example_input(seed=1)
        assert m.preprocess(raw, train=True).shape == m.preprocess(raw).shape

    def test_example_input_encodes_to_unit_embedding(self) -> None:
        m = self.modality()
        torch.manual_seed(0)
        encoder = m.build_encoder(self.embed_dim).eval()
        with torch.no_grad():
            out = F.normalize(encoder(self.batch(m, 2)), dim=-1)
        assert out.shape == (2, self.embed_dim)
        assert torch.isfinite(out).all()
        assert torch.allclose(out.norm(dim=-1), torch.ones(2), atol=1e-5)

    def test_gradients_reach_the_stem(self) -> None:
        m = self.modality()
        torch.manual_seed(0)
        encoder = m.build_encoder(self.embed_dim).train()
        encoder(self.batch(m, 2)).pow(2).sum().backward()
        stem_grads = [p.grad for p in encoder.stem.parameters()] if hasattr(encoder, "stem") else []
        if not stem_grads:  # encoders that wrap the stem deeper: any parameter named like a stem
            stem_grads = [p.grad for n, p in encoder.named_parameters() if "stem" in n]
        assert stem_grads, "no stem parameters found (expose the stem as `encoder.stem`)"
        assert all(g is not None and g.abs().sum() > 0 for g in stem_grads)

    def test_a_few_steps_lower_the_loss(self) -> None:
        m = self.modality()
        torch.manual_seed(0)
        encoder = m.build_encoder(self.embed_dim).train()
        scale = LogitScale()
        batch = self.batch(m, 4)
        text = F.normalize(torch.randn(4, self.embed_dim, generator=torch.Generator().manual_seed(1)), dim=-1)
        opt = torch.optim.AdamW([*encoder.parameters(), *scale.parameters()], lr=1e-3)

        def loss() -> torch.Tensor:
            return contrastive_loss(F.normalize(encoder(batch), dim=-1), text, scale(), gather=False)

        with torch.no_grad():
            encoder.eval()
            before = loss().item()
        encoder.train()
        for _ in range(8):
            opt.zero_grad()
            loss().backward()
            opt.step()
        with torch.no_grad():
            encoder.eval()
            after = loss().item()
        assert after < before, f"loss did not decrease: {before:.4f} -> {after:.4f}"

    def test_registers_through_the_hook(self) -> None:
        plugin = importlib.import_module(self.modality_cls.__module__.split(".")[0])
        registry = PluginRegistry(eps=[])
        info = registry.add_plugin(plugin, "under-test")
        assert info.status == "ok", info.error
        assert self.modality_cls.name in registry.modality_names()
        assert registry.registered(self.modality_cls.name).cls is self.modality_cls
