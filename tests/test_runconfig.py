"""apply_overrides: the `lbind train` flags merged into a run config mapping, checked against hand-written results."""

from __future__ import annotations

import copy

import pytest

from lbcore.errors import ConfigError
from lbcore.runconfig import apply_overrides


def test_flags_merge_into_a_one_modality_config_without_changing_it() -> None:
    raw = {
        "anchor": {"name": "minilm"},
        "modalities": {"audio": {"preset": "languagebind", "optim": {"weight_decay": 0.1, "lr": 1.0}}},
        "train": {"seed": 3, "epochs": 2},
    }
    before = copy.deepcopy(raw)
    merged = apply_overrides(
        raw,
        data=["clips/train.jsonl"],
        output="runs/x",
        batch_size=64,
        lr=5e-4,
        max_steps=10,
        seed=None,  # not given: the config's seed stays
        resume=False,  # a flag left off: not written
        tensorboard=True,
    )
    assert merged == {
        "anchor": {"name": "minilm"},
        "modalities": {
            "audio": {"preset": "languagebind", "optim": {"weight_decay": 0.1, "lr": 5e-4, "batch_size": 64}}
        },
        "train": {
            "seed": 3,
            "epochs": 2,
            "data": {"audio": "clips/train.jsonl"},
            "output_dir": "runs/x",
            "max_steps": 10,
            "tensorboard": True,
        },
    }
    assert raw == before


def test_named_modalities_join_the_run_with_the_preset_and_take_modality_eq_path_manifests() -> None:
    raw = {"modalities": {"audio": None}, "train": {"data": {"audio": "old.jsonl"}}}
    merged = apply_overrides(
        raw, modalities=["depth", "audio"], preset="demo", data=["depth=d.csv", "audio=a.jsonl"], lr=0.01
    )
    assert merged == {
        "modalities": {
            "audio": {"preset": "demo", "optim": {"lr": 0.01}},
            "depth": {"preset": "demo", "optim": {"lr": 0.01}},
        },
        "train": {"data": {"audio": "a.jsonl", "depth": "d.csv"}},
    }


def test_an_empty_config_with_one_modality_flag() -> None:
    assert apply_overrides({}, modalities=["audio"]) == {"modalities": {"audio": {}}, "train": {}}
    # A path that happens to contain '=' but names no modality is the manifest of the only modality.
    merged = apply_overrides({}, modalities=["audio"], data=["x=1.jsonl"])
    assert merged["train"]["data"] == {"audio": "x=1.jsonl"}


def test_a_bare_manifest_path_with_several_modalities_is_their_paired_manifest() -> None:
    merged = apply_overrides({}, modalities=["audio", "depth"], data=["p.jsonl"])
    assert merged["train"]["data"] == {"audio": "p.jsonl", "depth": "p.jsonl"}
    # MODALITY=PATH wins for that modality, whatever the order; the bare path serves the others.
    merged = apply_overrides({}, modalities=["audio", "depth", "video"], data=["depth=d.csv", "p.jsonl"])
    assert merged["train"]["data"] == {"audio": "p.jsonl", "depth": "d.csv", "video": "p.jsonl"}
    with pytest.raises(ConfigError, match=r"--data a\.jsonl b\.jsonl: several manifests without a modality"):
        apply_overrides({}, modalities=["audio", "depth"], data=["a.jsonl", "b.jsonl"])


def test_unknown_settings_and_malformed_sections_are_errors_naming_them() -> None:
    with pytest.raises(ConfigError, match=r"unknown train setting\(s\) bogus;"):
        apply_overrides({}, modalities=["audio"], bogus=1)
    with pytest.raises(ConfigError, match=r"run\.yaml: train: expected a mapping, got list"):
        apply_overrides({"train": [1, 2]}, modalities=["audio"], source="run.yaml")
    with pytest.raises(ConfigError, match=r"modalities\.audio\.optim: expected a mapping, got str"):
        apply_overrides({"modalities": {"audio": {"optim": "fast"}}}, lr=0.1)
