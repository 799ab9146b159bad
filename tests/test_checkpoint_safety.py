"""Checkpoint loading and saving refuse what is unsafe or broken: weights outside the folder, a weights file under
another modality's name, malformed ``lbind.json`` fields, mismatched shapes, NaN weights (on load and on save);
embeddings are checked finite."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

import lbcore
from lbcore.errors import CheckpointError, ConfigError, NonFiniteError

# The fake ``sig`` plugin and its fixtures live with the trainer tests (pytest runs in importlib mode, where test
# modules cannot import each other by name).
_spec = importlib.util.spec_from_file_location("lbind_test_train_shared", Path(__file__).with_name("test_train.py"))
_train = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_train)
site, fk, tiny_model = _train.site, _train.fk, _train.tiny_model


def saved(fk: Any, tmp_path: Path, names: tuple[str, ...] = ("sig", "sig2")) -> Path:
    return tiny_model(fk, names).save_pretrained(tmp_path / "ckpt")


def edit_meta(ckpt: Path, change: Any) -> None:
    meta = json.loads((ckpt / "lbind.json").read_text())
    change(meta)
    (ckpt / "lbind.json").write_text(json.dumps(meta))


def test_a_good_checkpoint_still_loads_and_records_each_files_modality(fk: Any, tmp_path: Path) -> None:
    from safetensors import safe_open

    ckpt = saved(fk, tmp_path)
    with safe_open(str(ckpt / "sig2.safetensors"), framework="pt") as f:
        assert f.metadata()["modality"] == "sig2"
    model = lbcore.load(ckpt)
    assert set(model.encoders) == {"sig", "sig2"}


@pytest.mark.parametrize("file", ["../other/sig.safetensors", "/etc/passwd", "sub/../../x.safetensors", "C:\\w.st"])
def test_weight_files_must_lie_inside_the_checkpoint(fk: Any, tmp_path: Path, file: str) -> None:
    ckpt = saved(fk, tmp_path)
    edit_meta(ckpt, lambda m: m["modalities"]["sig"].update(file=file))
    with pytest.raises(CheckpointError, match=r"modalities\.sig\.file .*relative path inside the checkpoint"):
        lbcore.load(ckpt)


def test_a_symlink_leading_out_of_the_checkpoint_is_refused(fk: Any, tmp_path: Path) -> None:
    ckpt = saved(fk, tmp_path)
    outside = tmp_path / "outside.safetensors"
    os.replace(ckpt / "sig.safetensors", outside)
    (ckpt / "sig.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match="symbolic link leading out of the checkpoint folder"):
        lbcore.load(ckpt)


def test_a_renamed_modality_entry_does_not_load_another_modalitys_encoder(fk: Any, tmp_path: Path) -> None:
    ckpt = saved(fk, tmp_path)
    # sig2 now points at sig's file: same architecture, other modality's weights.
    edit_meta(ckpt, lambda m: m["modalities"]["sig2"].update(file="sig.safetensors"))
    with pytest.raises(CheckpointError, match=r"sig\.safetensors: holds 'sig' weights but is listed under .*'sig2'"):
        lbcore.load(ckpt)
    # A file from before the modality was recorded loads under its entry's name.
    state = load_file(str(ckpt / "sig.safetensors"))
    save_file(state, str(ckpt / "sig.safetensors"), metadata={"format": "pt"})
    model = lbcore.load(ckpt)
    for key, value in model.encoders["sig2"].state_dict().items():
        assert torch.equal(value, state[key])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda m: m.update(modalities={}), "modalities is empty"),
        (lambda m: m.update(modalities=[]), "modalities is a list; expected a mapping"),
        (lambda m: m.update(format_version="1"), r"format_version is '1'; expected an integer from 1 to 2"),
        (lambda m: m.update(format_version=3), "format version 3 is newer than this lbind supports"),
        (lambda m: m["modalities"].update(sig=["x"]), "modalities.sig is a list; expected a mapping"),
        (lambda m: m["modalities"]["sig"].update(logit_scale="abc"), r"modalities\.sig\.logit_scale is 'abc'"),
        (lambda m: m["modalities"]["sig"].update(logit_scale=float("nan")), r"logit_scale is nan; expected a finite"),
        (lambda m: m["modalities"]["sig"].update(file=12), r"modalities\.sig\.file is 12"),
        (lambda m: m["modalities"]["sig"].update(weights="half"), r"modalities\.sig\.weights is 'half'"),
        (lambda m: m["modalities"]["sig"].update(file="gone.safetensors"), r"gone\.safetensors: the sig weights file"),
        (lambda m: m["anchor"].update(fingerprint=5), "anchor.fingerprint must be a string"),
    ],
)
def test_malformed_descriptions_are_checkpoint_errors_naming_the_field(
    fk: Any, tmp_path: Path, change: Any, message: str
) -> None:
    ckpt = saved(fk, tmp_path)
    edit_meta(ckpt, change)
    with pytest.raises(CheckpointError, match=message) as info:
        lbcore.load(ckpt)
    assert "lbind.json" in str(info.value)


def test_a_config_list_where_a_mapping_belongs_is_a_config_error_naming_the_file(fk: Any, tmp_path: Path) -> None:
    ckpt = saved(fk, tmp_path)
    edit_meta(ckpt, lambda m: m["modalities"]["sig"].update(config=[1, 2]))
    with pytest.raises(ConfigError, match=r"lbind\.json: modalities\.sig\.config"):
        lbcore.load(ckpt)


def test_a_shape_mismatch_is_a_checkpoint_error_naming_the_file(fk: Any, tmp_path: Path) -> None:
    ckpt = saved(fk, tmp_path)
    edit_meta(ckpt, lambda m: m["modalities"]["sig"]["config"]["encoder"].update(width=64))
    pattern = r"sig\.safetensors: does not fit the sig encoder .*: stem\.proj\.weight is \[32, 1, 4\] in the file"
    with pytest.raises(CheckpointError, match=pattern):
        lbcore.load(ckpt)
    # Refused from the file's header, before an encoder of the edited (here enormous) size is allocated.
    edit_meta(ckpt, lambda m: m["modalities"]["sig"]["config"]["encoder"].update(width=2**20, heads=2))
    with pytest.raises(CheckpointError, match=r"\[32, 1, 4\] in the file, \[1048576, 1, 4\] in the encoder"):
        lbcore.load(ckpt)


def test_nan_weights_fail_to_load_naming_the_file_and_tensor(fk: Any, tmp_path: Path) -> None:
    ckpt = saved(fk, tmp_path)
    state = load_file(str(ckpt / "sig.safetensors"))
    key = sorted(state)[0]
    state[key].view(-1)[0] = float("nan")
    save_file(state, str(ckpt / "sig.safetensors"), metadata={"format": "pt", "modality": "sig"})
    with pytest.raises(CheckpointError, match=rf"sig\.safetensors: tensor '{key}' holds 1 NaN or infinite"):
        lbcore.load(ckpt)


def test_no_checkpoint_is_written_with_nan_weights(fk: Any, tmp_path: Path) -> None:
    model = tiny_model(fk)
    with torch.no_grad():
        next(model.encoders["sig"].parameters()).view(-1)[3] = float("inf")
    with pytest.raises(CheckpointError, match=r"cannot save the sig encoder: tensor .* NaN or infinite"):
        model.save_pretrained(tmp_path / "ckpt")
    assert not (tmp_path / "ckpt").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_embed_refuses_non_finite_inputs_and_embeddings(fk: Any) -> None:
    from lbcore.errors import InputError

    model = tiny_model(fk)
    good = fk.pattern(1, __import__("numpy").random.default_rng(0))
    assert torch.isfinite(model.embed("sig", [good])).all()
    with pytest.raises(InputError, match="sig input batch: 1 of 32 are NaN or infinite"):
        model.embed("sig", torch.full((1, 1, 32), float("nan")).index_fill_(2, torch.arange(1, 32), 0.0))
    with torch.no_grad():
        for param in model.encoders["sig"].parameters():
            param.fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="the sig encoder gave NaN or infinite embeddings for input"):
        model.embed("sig", [good, good])
