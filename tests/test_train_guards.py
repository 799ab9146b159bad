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
