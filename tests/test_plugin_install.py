"""The N-th modality end to end: render the template, pip-install it (no network), see it listed, train a few
steps on its demo data, evaluate it, run its own tests, uninstall it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lbcore.scaffold import render_modality_plugin

NAME = "lbtest_nth"  # unique, so no other test can mistake it for one of theirs
BIN = Path(sys.executable).parent


def run(*args: str, env: dict[str, str], cwd: Path, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(args), env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_rendered_plugin_installs_trains_evaluates_and_uninstalls(tmp_path: Path) -> None:
    plugin = render_modality_plugin(NAME, tmp_path / "src")
    env = {k: v for k, v in os.environ.items() if k != "LBIND_PLUGINS"}  # see every installed plugin
    env.update(LBIND_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    # --no-build-isolation: build with the environment's setuptools, so nothing is fetched
    run(*pip, "install", "--no-deps", "--no-build-isolation", "--no-index", str(plugin), env=env, cwd=tmp_path)
    try:
        listed = run(str(BIN / "lbind"), "modalities", "--json", env=env, cwd=tmp_path)
        row = next(r for r in json.loads(listed.stdout) if r["modality"] == NAME)
        assert row["distribution"] == f"lbind-{NAME.replace('_', '-')}" and row["version"]

        out = tmp_path / "run"
        run(
            str(BIN / "lbind"),
            "train",
            "--modality",
            NAME,
            "--max-steps",
            "4",
            "--num-workers",
            "0",
            "--output",
            str(out),
            env=env,
            cwd=tmp_path,
        )
        assert (out / "final" / "lbind.json").is_file() and (out / "metrics.jsonl").is_file()

        card = tmp_path / "card.json"
        run(
            str(BIN / "lbind"),
            "eval",
            "--checkpoint",
            str(out / "final"),
            "--output",
            str(card),
            "--no-plot",
            env=env,
            cwd=tmp_path,
        )
        metrics = json.loads(card.read_text())["metrics"]
        assert 0.0 <= metrics["top1"] <= 100.0 and metrics["num_items"] > 0

        # the plugin's own tests, run against the installed distribution (not the source folder's path hack)
        run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(plugin / "tests"), env=env, cwd=plugin)
    finally:
        run(*pip, "uninstall", "-y", f"lbind-{NAME.replace('_', '-')}", env=env, cwd=tmp_path)
    listed = run(str(BIN / "lbind"), "modalities", "--json", env=env, cwd=tmp_path)
    assert NAME not in [r["modality"] for r in json.loads(listed.stdout)]
