"""A run folder (what `lbind train --output` writes) stands for its final/ checkpoint, else its newest step one,
wherever a checkpoint folder is taken: resolve_checkpoint_dir and lbcore.load here; the commands in
test_eval_cli.py (eval, templates) and test_cli_output.py (similarity, in a subprocess)."""

from __future__ import annotations

import importlib
import logging
from pathlib import Path

import pytest
import torch

from lbcore.checkpoint import read_meta, resolve_checkpoint_dir
from lbcore.errors import CheckpointError


def fake_checkpoint(path: Path) -> Path:
    """A folder that holds an lbind.json (all that resolution looks at)."""
    path.mkdir(parents=True)
    (path / "lbind.json").write_text("{}")
    return path


def test_a_checkpoint_folder_is_itself(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ckpt = fake_checkpoint(tmp_path / "run" / "final")
    with caplog.at_level(logging.INFO, logger="lbcore.checkpoint"):
        assert resolve_checkpoint_dir(ckpt) == ckpt
        assert resolve_checkpoint_dir(str(ckpt)) == ckpt
    assert not caplog.records  # nothing to say when nothing was chosen


def test_a_run_folder_stands_for_its_final_checkpoint_even_before_newer_steps(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = tmp_path / "run"
    final = fake_checkpoint(run / "final")
    fake_checkpoint(run / "step-00000900")
    with caplog.at_level(logging.INFO, logger="lbcore.checkpoint"):
        assert resolve_checkpoint_dir(run) == final
    (record,) = caplog.records
    assert record.levelno == logging.INFO and str(run) in record.getMessage() and str(final) in record.getMessage()


def test_without_final_the_newest_complete_step_checkpoint_is_taken(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fake_checkpoint(run / "step-00000100")
    newest = fake_checkpoint(run / "step-00000300")
    fake_checkpoint(run / "step-200")  # compared by number, not by name
    (run / "step-00000400").mkdir()  # no lbind.json: not a checkpoint (e.g. being written)
    (run / "final").mkdir()  # likewise
    fake_checkpoint(run / "steps-99999999")  # not a step folder name
    assert resolve_checkpoint_dir(run) == newest


def test_a_folder_that_is_neither_keeps_the_clear_error(tmp_path: Path) -> None:
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "step-x").mkdir()
    assert resolve_checkpoint_dir(folder) == folder
    with pytest.raises(CheckpointError, match=r"not an lbind checkpoint .* nor a run folder"):
        read_meta(resolve_checkpoint_dir(folder))
    missing = tmp_path / "missing"
    assert resolve_checkpoint_dir(missing) == missing
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        read_meta(missing)


@pytest.fixture
def sig_run(fakes, tmp_path: Path) -> Path:
    """A run folder with a step checkpoint and a final one whose encoders differ."""
    from lbcore.config import AnchorConfig
    from lbcore.model import BindModel
    from lbcore.plugins import default_registry

    fakes.add("lbfake-runsig", "lbfake_runsig", fakes.plugin("runsig"))
    importlib.invalidate_caches()
    default_registry().add_plugin(importlib.import_module("lbfake_runsig"), "lbfake_runsig")
    cls = default_registry().registered("runsig").cls
    run = tmp_path / "run"
    for seed, name in ((0, "step-00000002"), (1, "final")):
        torch.manual_seed(seed)
        mod = cls(cls.config_preset("demo"))
        model = BindModel(
            AnchorConfig(), {"runsig": mod.build_encoder(8)}, {"runsig": mod}, anchor_fingerprint="f" * 64, embed_dim=8
        )
        model.save_pretrained(run / name)
    return run


def test_lbcore_load_takes_a_run_folder(sig_run: Path) -> None:
    from safetensors.torch import load_file

    import lbcore

    model = lbcore.load(sig_run)
    final = load_file(sig_run / "final" / "runsig.safetensors")
    step = load_file(sig_run / "step-00000002" / "runsig.safetensors")
    state = model.encoders["runsig"].state_dict()
    assert any(not torch.equal(final[k], step[k]) for k in final)
    for key, value in final.items():
        torch.testing.assert_close(state[key], value, rtol=0, atol=0)
