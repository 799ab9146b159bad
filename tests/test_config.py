"""Config models, run-config validation and the `lbind config` commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import ClassVar

import pytest
import yaml
from click.testing import CliRunner

from lbcore.cli import cli
from lbcore.config import AnchorConfig, EncoderConfig, ModalityConfig, RunConfig, deep_merge
from lbcore.errors import ConfigError
from lbcore.plugins import reset_default_registry
from lbcore.runconfig import load_run_config


@pytest.fixture
def signal_plugin(fakes, monkeypatch: pytest.MonkeyPatch) -> str:
    fakes.add("lbfake-cfg", "lbfake_cfg", fakes.plugin("signal"))
    monkeypatch.setenv("LBIND_PLUGINS", "lbfake_cfg")
    reset_default_registry()
    return "signal"


def undocumented(model) -> list[str]:
    schema = model.model_json_schema()
    missing = []
    for name, sub in [("root", schema), *schema.get("$defs", {}).items()]:
        missing += [f"{name}.{f}" for f, spec in sub.get("properties", {}).items() if not spec.get("description")]
    return missing


def test_every_core_config_field_is_described() -> None:
    for model in (RunConfig, ModalityConfig, EncoderConfig, AnchorConfig):
        assert undocumented(model) == []


def test_extra_fields_are_forbidden_and_types_checked() -> None:
    with pytest.raises(ValueError, match="Extra inputs"):
        EncoderConfig(widht=3)
    with pytest.raises(ValueError):
        EncoderConfig(width=0)
    cfg = EncoderConfig()
    with pytest.raises(ValueError):
        cfg.depth = -1  # assignments are validated too


def test_deep_merge_keeps_base_and_overrides_leaves() -> None:
    base = {"a": {"b": 1, "c": 2}, "d": [1]}
    merged = deep_merge(base, {"a": {"c": 3}, "d": [2]})
    assert merged == {"a": {"b": 1, "c": 3}, "d": [2]}
    assert base == {"a": {"b": 1, "c": 2}, "d": [1]}


def test_run_config_validation_points_at_the_exact_field(tmp_path: Path, signal_plugin: str) -> None:
    bad = tmp_path / "run.yaml"
    bad.write_text(
        yaml.safe_dump(
            {"anchor": {"name": "minilm"}, "modalities": {"signal": {"preset": "demo", "encoder": {"heads": "x"}}}}
        )
    )
    with pytest.raises(ConfigError) as err:
        load_run_config(bad)
    assert f"{bad}: modalities.signal.encoder.heads:" in str(err.value)

    bad.write_text(yaml.safe_dump({"anchor": {"nme": "minilm"}}))
    with pytest.raises(ConfigError, match=r"anchor\.nme: Extra inputs are not permitted"):
        load_run_config(bad)

    bad.write_text(yaml.safe_dump({"modalities": {"signal": {"preset": "huge"}}}))
    with pytest.raises(ConfigError, match=r"modalities\.signal\.preset: unknown preset 'huge'"):
        load_run_config(bad)


def test_run_config_merges_preset_and_overrides(tmp_path: Path, signal_plugin: str) -> None:
    good = tmp_path / "run.yaml"
    good.write_text(yaml.safe_dump({"modalities": {"signal": {"preset": "demo", "mask_ratio": 0.25}}}))
    run, mods = load_run_config(good)
    assert mods["signal"].mask_ratio == 0.25
    assert mods["signal"].encoder.width == 32  # from the demo preset
    assert run.anchor.name == "minilm"


def test_cli_validate_reports_the_field_and_exits_nonzero(tmp_path: Path, signal_plugin: str) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("modalities:\n  signal:\n    preset: demo\n    mask_ratio: 1.5\n")
    from lbcore.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["config", "validate", str(bad)])
    assert exc.value.code == 2
    good = tmp_path / "good.yaml"
    good.write_text("modalities:\n  signal:\n    preset: demo\n")
    result = CliRunner().invoke(cli, ["config", "validate", str(good)])
    assert result.exit_code == 0 and "valid" in result.stdout


def test_cli_validate_message(tmp_path: Path, signal_plugin: str, capsys: pytest.CaptureFixture) -> None:
    from lbcore.cli import main

    bad = tmp_path / "bad.yaml"
    bad.write_text("modalities:\n  signal:\n    preset: demo\n    mask_ratio: 1.5\n")
    with pytest.raises(SystemExit):
        main(["config", "validate", str(bad)])
    err = capsys.readouterr().err
    assert "modalities.signal.mask_ratio" in err and "less than 1" in err


def test_cli_schema_and_show(signal_plugin: str) -> None:
    result = CliRunner().invoke(cli, ["config", "schema"])
    schema = json.loads(result.stdout)
    assert schema["additionalProperties"] is False and "anchor" in schema["properties"]
    result = CliRunner().invoke(cli, ["config", "schema", "--modality", "signal"])
    assert "mask_ratio" in json.loads(result.stdout)["properties"]
    result = CliRunner().invoke(cli, ["config", "show", "--modality", "signal", "--preset", "demo"])
    shown = yaml.safe_load(result.stdout)
    assert shown["encoder"]["width"] == 32 and shown["mask_ratio"] == 0.0


def test_config_file_errors_name_the_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=r"nope\.yaml: cannot read"):
        load_run_config(missing)
    broken = tmp_path / "broken.yaml"
    broken.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_run_config(broken)


def test_run_config_train_section_is_validated(tmp_path: Path, signal_plugin: str) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text("modalities:\n  signal: {preset: demo}\ntrain:\n  max_steps: 5\n  seed: 3\n")
    run, _ = load_run_config(cfg)
    assert run.train == {"max_steps": 5, "seed": 3}
    cfg.write_text("modalities:\n  signal: {preset: demo}\ntrain:\n  max_step: 5\n")
    with pytest.raises(ConfigError, match=r"train\.max_step: Extra inputs are not permitted"):
        load_run_config(cfg)


def test_non_finite_and_out_of_range_optimiser_settings_are_rejected(tmp_path: Path, signal_plugin: str) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        "modalities:\n  signal:\n    preset: demo\n    optim:\n      lr: .inf\n      betas: [1.5, -1]\n"
        "      weight_decay: .nan\n      eps: 0\n"
    )
    with pytest.raises(ConfigError) as err:
        load_run_config(cfg)
    text = str(err.value)
    for field in ("optim.lr", "optim.betas.0", "optim.betas.1", "optim.weight_decay", "optim.eps"):
        assert f"modalities.signal.{field}:" in text, (field, text)
    assert "finite" in text
    cfg.write_text(
        "modalities:\n  signal:\n    preset: demo\n    optim:\n      lr: 1.0e-3\n      betas: [0.0, 0.999]\n"
    )
    _, mods = load_run_config(cfg)
    assert mods["signal"].optim.betas == (0.0, 0.999)


def test_cross_field_rules_and_every_bad_section_are_reported_at_once(tmp_path: Path, signal_plugin: str) -> None:
    cfg = tmp_path / "run.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "anchor": {"max_length": 0},
                "modalities": {"signal": {"preset": "demo", "encoder": {"width": 30, "heads": 4}, "mask_ratio": 2}},
                "train": {"max_steps": -1, "seed": "x"},
            }
        )
    )
    with pytest.raises(ConfigError) as err:
        load_run_config(cfg)
    lines = str(err.value).splitlines()
    for expected in ("anchor.max_length", "train.max_steps", "train.seed", "modalities.signal.mask_ratio"):
        assert any(f"{cfg}: {expected}:" in line for line in lines), (expected, lines)
    # A cross-field rule runs once the fields themselves are valid.
    cfg.write_text(yaml.safe_dump({"modalities": {"signal": {"preset": "demo", "encoder": {"width": 30, "heads": 4}}}}))
    with pytest.raises(ConfigError, match=r"modalities\.signal\.encoder: .*heads \(4\) must divide width \(30\)"):
        load_run_config(cfg)


def test_image_config_checks_patch_size_and_per_channel_lists() -> None:
    from lbcore.config import ImageConfig
    from lbcore.config import validate_model as check

    with pytest.raises(ConfigError) as err:
        check(ImageConfig, {"image_size": 8, "encoder": {"patch_size": 14}, "mean": [0.5, 0.5], "std": [1, 0, 1]})
    text = str(err.value)
    assert "image_size (8) is smaller than one encoder.patch_size (14) patch" in text
    assert "mean has 2 entries but in_chans is 3" in text and "std [1.0, 0.0, 1.0] must be positive" in text
    one = check(ImageConfig, {"in_chans": 1, "mean": [0.5], "std": [0.25]})
    assert one.in_chans == 1


def test_an_rgb_modality_refuses_in_chans_its_preprocessing_cannot_give() -> None:
    from lbcore.image import ImageLikeModality

    class Rgb(ImageLikeModality):
        name = "rgbtest"
        presets: ClassVar = {"languagebind": {}, "demo": {}}

        def example_input(self, seed: int = 0):
            return None

    with pytest.raises(ConfigError, match="in_chans is 1, but rgbtest preprocessing yields 3-channel input"):
        Rgb({"in_chans": 1, "mean": [0.5], "std": [0.5]})
    assert Rgb.config_problems(Rgb.Config()) == []
