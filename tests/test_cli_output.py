"""What the commands print: tables that fit an 80-column terminal, and no third-party progress bars or info logs
(transformers' "Loading weights") unless -v is given. Run as real `lbind` processes, so nothing of the test
process's logging or progress-bar state leaks in."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

PLUGIN_SOURCE = """
import os

import numpy as np
import torch
from torch import nn

from lbcore import hookimpl
from lbcore.config import ModalityConfig
from lbcore.modality import Modality


class Lin(nn.Module):
    def __init__(self, embed_dim):
        super().__init__()
        self.embed_dim = embed_dim
        self.proj = nn.Linear(4, embed_dim, bias=False)

    def forward(self, x):
        return self.proj(x)


class OutVec(Modality):
    name = "outvec_with_a_rather_long_modality_name"
    Config = ModalityConfig
    presets = {"languagebind": {}, "demo": {}, "another_long_preset_name": {}, "and_one_more_preset": {}}
    templates = ("a {} vector.",)

    def preprocess(self, item, train=False):
        if isinstance(item, (str, os.PathLike)):
            item = np.load(item, allow_pickle=False)
        return torch.as_tensor(np.asarray(item, dtype=np.float32))

    def example_input(self, seed=0):
        return np.ones(4, dtype=np.float32)

    def build_stem(self):
        return nn.Identity()

    def build_encoder(self, embed_dim):
        return Lin(embed_dim)


@hookimpl
def register_modalities(register):
    register(OutVec)
"""
MODALITY = "outvec_with_a_rather_long_modality_name"
BROKEN = "import os\nraise RuntimeError('this plugin cannot start: ' + 'a long explanation of why, ' * 6)\n"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory, plugin_dist: Any) -> Path:
    root = tmp_path_factory.mktemp("outsite")
    plugin_dist(root, "lbfake-outvec-distribution-with-a-long-name", "lbfake_outvec", PLUGIN_SOURCE)
    plugin_dist(root, "lbfake-outbroken", "lbfake_outbroken", BROKEN)
    return root


def lbind(args: list[str], site: Path, tmp_path: Path, **extra: str) -> subprocess.CompletedProcess[str]:
    """`lbind ARGS` in a fresh process that imports what this one does, plus the fake plugins in ``site``."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRANSFORMERS_VERBOSITY", "HF_HUB_DISABLE_PROGRESS_BARS")}
    env["PYTHONPATH"] = os.pathsep.join([str(site), *(p for p in sys.path if p)])
    env.update(LBIND_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    code = "import sys; from lbcore.cli import main; main(sys.argv[1:])"
    tmp_path.mkdir(parents=True, exist_ok=True)
    return subprocess.run(
        [sys.executable, "-c", code, *args], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
@pytest.mark.parametrize("command", ["plugins", "modalities"])
def test_tables_fit_an_80_column_terminal(site: Path, tmp_path: Path, command: str) -> None:
    done = lbind([command], site, tmp_path, COLUMNS="80", LBIND_PLUGINS="lbfake_outvec,lbfake_outbroken")
    shown = done.stdout + done.stderr
    assert MODALITY[:8] in shown and "lbfake_outbroken" in shown
    if command == "plugins":
        assert "cannot start" in shown  # the broken plugin's error is printed in full
    too_long = [line for line in shown.splitlines() if len(line) > 80]
    assert not too_long, "\n".join(too_long)


@pytest.mark.slow
def test_anchor_loading_prints_no_progress_bars_without_v(
    site: Path, tmp_path: Path, anchor_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lbcore.anchor import Anchor
    from lbcore.config import AnchorConfig
    from lbcore.model import BindModel
    from lbcore.plugins import default_registry

    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    default_registry().add_plugin(importlib.import_module("lbfake_outvec"), "lbfake_outvec")
    cls = default_registry().registered(MODALITY).cls
    anchor_cfg = AnchorConfig(name=str(anchor_dir), max_length=16)
    anchor = Anchor.from_config(anchor_cfg)
    mod = cls()
    model = BindModel(
        anchor_cfg,
        {MODALITY: mod.build_encoder(anchor.embed_dim)},
        {MODALITY: mod},
        anchor_fingerprint=anchor.fingerprint,
        embed_dim=anchor.embed_dim,
    )
    run = tmp_path / "run"
    model.save_pretrained(run / "final")
    item = tmp_path / "x.npy"
    np.save(item, np.ones(4, dtype=np.float32))
    args = ["similarity", "-c", str(run), "-t", "a cat", "--input", f"{MODALITY}={item}", "--json"]

    quiet = lbind(args, site, tmp_path / "q", LBIND_PLUGINS="lbfake_outvec")
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert '"cosine"' in quiet.stdout
    assert "Loading weights" not in quiet.stderr and "it/s" not in quiet.stderr, quiet.stderr
    assert "isarunfolder" in "".join(quiet.stderr.split()), quiet.stderr  # lbind's own notice is still shown

    # The same command with -v (and an empty cache again, so the anchor runs): the bar is there.
    loud = lbind(["-v", *args], site, tmp_path / "v", LBIND_PLUGINS="lbfake_outvec")
    assert loud.returncode == 0, loud.stderr[-3000:]
    assert "Loading weights" in loud.stderr
