"""Training never lets a NaN reach the weights or a checkpoint: a non-finite loss or gradient norm drops the update,
within a budget of steps in a row, and then stops the run with a typed error naming the step and modality."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

import lbcore
import lbcore.engine
from lbcore.errors import NonFiniteError

# The fake ``sig`` plugin and its fixtures live with the trainer tests (pytest runs in importlib mode, where test
# modules cannot import each other by name).
_spec = importlib.util.spec_from_file_location("lbind_test_train_guards", Path(__file__).with_name("test_train.py"))
_train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_train)
site, fk, run_config = _train.site, _train.fk, _train.run_config


class NanGradient(torch.autograd.Function):
    """The identity forward; a NaN gradient backward (a finite loss whose gradient is not)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad * float("nan")


def break_loss_on(monkeypatch: pytest.MonkeyPatch, steps: set[int], how: str) -> None:
    """Make the contrastive loss of the given (1-based) optimiser steps NaN, or give it a NaN gradient."""
    real = lbcore.engine.contrastive_loss
    calls = {"n": 0}

    def patched(*args: Any, **kwargs: Any) -> torch.Tensor:
        calls["n"] += 1  # one call per step: one modality, no gradient accumulation
        loss = real(*args, **kwargs)
        if calls["n"] in steps:
            return loss * float("nan") if how == "loss" else NanGradient.apply(loss)
        return loss

    monkeypatch.setattr(lbcore.engine, "contrastive_loss", patched)


def finite(path: Path) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(str(path)).values())


def test_a_loss_that_turns_nan_stops_the_run_and_no_nan_checkpoint_is_written(
    fk: Any, anchor_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = fk.write_signals(tmp_path / "data", 32)
    out = tmp_path / "run"
    cfg = run_config(anchor_dir, out, {"sig": manifest}, max_steps=8, save_every=2, max_nonfinite_steps=1)
    break_loss_on(monkeypatch, set(range(3, 9)), "loss")  # the encoder "emits NaN" from step 3 on
    with pytest.raises(NonFiniteError, match=r"step 4: loss of sig is nan; 2 step\(s\) in a row") as info:
        lbcore.train(cfg)
    assert "max_nonfinite_steps: 1" in str(info.value)
    assert (out / "step-00000002").is_dir() and finite(out / "step-00000002" / "sig.safetensors")
    assert not (out / "step-00000004").exists() and not (out / "final").exists()


@pytest.mark.parametrize("how", ["loss", "gradient"])
def test_a_nan_step_within_the_budget_leaves_the_weights_untouched(
    fk: Any, anchor_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    manifest = fk.write_signals(tmp_path / "data", 32)
    out = tmp_path / "run"
    cfg = run_config(anchor_dir, out, {"sig": manifest}, max_steps=4, save_every=1, keep_checkpoints=4)
    break_loss_on(monkeypatch, {3}, how)
    final = lbcore.train(cfg)
    before, after = (load_file(str(out / f"step-0000000{s}" / "sig.safetensors")) for s in (2, 3))
    assert all(torch.equal(before[k], after[k]) for k in before), "the NaN step changed the weights"
    assert finite(final / "sig.safetensors")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["nonfinite_steps"] for r in rows] == [0, 0, 1, 1]
    meta2 = json.loads((out / "step-00000002" / "lbind.json").read_text())
    meta3 = json.loads((out / "step-00000003" / "lbind.json").read_text())
    assert meta2["modalities"]["sig"]["logit_scale"] == meta3["modalities"]["sig"]["logit_scale"]


# ------------------------------------------------------------------------------------------ resume without pickles
def test_train_state_is_safetensors_and_json_and_resuming_unpickles_nothing(
    fk: Any, anchor_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import pickle

    manifest = fk.write_signals(tmp_path / "data", 32)
    cfg = run_config(anchor_dir, tmp_path / "run", {"sig": manifest}, max_steps=2, save_every=1)
    lbcore.train(cfg)
    state = tmp_path / "run" / "step-00000001" / "train_state"
    names = sorted(p.name for p in state.iterdir())
    assert names == [
        "encoder-sig.safetensors",
        "logit_scales.safetensors",
        "optimizer.json",
        "optimizer.safetensors",
        "progress.json",
        "rng-0.safetensors",
        "scheduler.json",
    ]

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("resuming unpickled something")

    for module, name in ((torch, "load"), (pickle, "load"), (pickle, "loads")):
        monkeypatch.setattr(module, name, refuse)
    cfg["train"].update(resume=True, max_steps=3)
    final = lbcore.train(cfg)
    assert json.loads((final / "lbind.json").read_text())["train"]["step"] == 3


def corrupt_and_resume(
    fk: Any, anchor_dir: Path, tmp_path: Path, damage: dict[str, Any]
) -> tuple[dict[str, Any], Path]:
    """A run with checkpoints at steps 2, 3 and final (4); ``damage`` maps train_state file names of ``final`` to
    new bytes (or None: delete). Returns the resume config and the run folder."""
    manifest = fk.write_signals(tmp_path / "data", 32)
    out = tmp_path / "run"
    cfg = run_config(anchor_dir, out, {"sig": manifest}, max_steps=4, save_every=1, keep_checkpoints=2)
    lbcore.train(cfg)
    for name, content in damage.items():
        path = out / "final" / "train_state" / name
        if content is None:
            path.unlink()
        else:
            path.write_bytes(content)
    cfg["train"].update(resume=True, max_steps=6)
    return cfg, out


@pytest.mark.parametrize(
    "damage",
    [
        {"rng-0.safetensors": b"\x00" * 40},
        {"optimizer.safetensors": None},
        {"optimizer.json": b'{"param_groups": "x"}'},
        {"progress.json": b"{not json"},
    ],
    ids=["garbage-rng", "missing-optimizer", "bad-optimizer-json", "torn-progress"],
)
def test_a_corrupt_newest_checkpoint_falls_back_to_the_previous_one_with_a_warning(
    fk: Any, anchor_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, damage: dict[str, Any]
) -> None:
    cfg, out = corrupt_and_resume(fk, anchor_dir, tmp_path, damage)
    with caplog.at_level("INFO"):
        final = lbcore.train(cfg)
    assert any(
        "final" in r.getMessage() and ("corrupt" in r.getMessage() or "not resumable" in r.getMessage())
        for r in caplog.records
    ), [r.getMessage() for r in caplog.records]
    assert any(r.getMessage().startswith(f"resumed from {out / 'step-00000003'} at step 3") for r in caplog.records)
    rows = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows == [1, 2, 3, 4, 5, 6]
    assert json.loads((final / "lbind.json").read_text())["train"]["step"] == 6


def poisoned_rng(path: Path) -> bytes:
    from safetensors.torch import save_file

    tensors, metadata = load_file(str(path)), None
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        metadata = f.metadata()
    tensors["torch"] = tensors["torch"][:100]  # a generator state of the wrong size
    save_file(tensors, str(path), metadata=metadata)
    return path.read_bytes()


def test_when_no_checkpoint_is_readable_resuming_is_a_typed_error(fk: Any, anchor_dir: Path, tmp_path: Path) -> None:
    from lbcore.errors import CheckpointError

    manifest = fk.write_signals(tmp_path / "data", 32)
    out = tmp_path / "run"
    cfg = run_config(anchor_dir, out, {"sig": manifest}, max_steps=2)
    lbcore.train(cfg)
    poisoned_rng(out / "final" / "train_state" / "rng-0.safetensors")
    state = load_file(str(out / "final" / "train_state" / "optimizer.safetensors"))
    cfg["train"].update(resume=True, max_steps=3)
    with pytest.raises(CheckpointError, match=r"no checkpoint can be resumed: final: .*rng-0\.safetensors: the torch"):
        lbcore.train(cfg)
    # A poisoned optimiser state (NaN moments) is refused the same way, naming its file and tensor.
    from safetensors.torch import save_file

    key = sorted(k for k in state if k.endswith("exp_avg"))[0]
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(out / "final" / "train_state" / "optimizer.safetensors"))
    with pytest.raises(CheckpointError, match=rf"optimizer\.safetensors: tensor '{key}' holds NaN"):
        lbcore.train(cfg)


# --------------------------------------------------------------------------------------------------- full disk
def enospc(*args: Any, **kwargs: Any) -> None:
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_during_a_checkpoint_leaves_no_temporary_folder(
    fk: Any, anchor_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lbcore.runstate

    manifest = fk.write_signals(tmp_path / "data", 32)
    out = tmp_path / "run"
    monkeypatch.setattr(lbcore.runstate, "save_rng", enospc)  # the last file written: weights and state are there
    with pytest.raises(OSError, match="No space left on device"):
        lbcore.train(run_config(anchor_dir, out, {"sig": manifest}, max_steps=2, save_every=1))
    assert sorted(p.name for p in out.iterdir()) == ["metrics.jsonl"]


def test_atomic_writes_remove_their_temporary_files_on_a_full_disk(
    fk: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lbcore.checkpoint
    from lbcore.checkpoint import write_json

    target = tmp_path / "card.json"
    write_json(target, {"v": 1})
    monkeypatch.setattr(lbcore.checkpoint.os, "replace", enospc)
    with pytest.raises(OSError, match="No space left"):
        write_json(target, {"v": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json"]
    assert json.loads(target.read_text()) == {"v": 1}
    monkeypatch.undo()

    import lbcore.model

    monkeypatch.setattr(lbcore.model, "save_file", enospc)  # the safetensors writer the model saves with
    with pytest.raises(OSError, match="No space left"):
        _train.tiny_model(fk).save_pretrained(tmp_path / "ckpt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["card.json"]
