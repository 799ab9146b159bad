"""Model cards (lbcore.modelcard) and ``lbind push`` (lbcore.push): the card read back with huggingface_hub's own
parser, and the upload checked up to the HfApi calls, which are replaced here (no network)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from click.testing import CliRunner
from huggingface_hub import HfApi, ModelCard

from lbcore.cards import CARD_FORMAT, cards_of, checkpoint_digest, write_card
from lbcore.cli import load_command
from lbcore.cli.push import push
from lbcore.errors import CheckpointError, HubError
from lbcore.modelcard import GENERATED_MARK, base_models, portability_problems
from lbcore.plugins import default_registry
from lbcore.push import push_checkpoint


def _sibling(name: str) -> ModuleType:
    """Another test module's builders, imported by path (tests is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_lbind_push_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


adapters = _sibling("test_adapter")  # a tiny image-like modality "pic"
TRAIN = {"step": 12, "epoch": 3.0, "total_steps": 12, "config": {"init": "clip:openai/clip-vit-base-patch32"}}


@pytest.fixture
def checkpoint(tmp_path: Path) -> Path:
    """A saved two-modality checkpoint of a run initialised from a CLIP tower named by hub id, with result cards
    beside it: one of these weights, one of other weights, and a file that is not JSON."""
    default_registry().add_plugin(adapters._Plugin(), "adapter-test")
    folder = adapters.model_on(("pic", "pic2"), rank=0).save_pretrained(
        tmp_path / "run" / "final", extra={"train": TRAIN}
    )
    digest = checkpoint_digest(folder)
    card = {
        "format": CARD_FORMAT,
        "checkpoint": {"path": str(folder), **digest},
        "modality": "pic",
        "fuse": None,
        "emergent": None,
        "task": "classification",
        "dataset": {"reader": "manifest", "name": "toy", "split": "test", "num_items": 40},
        "metrics": {"top1": 62.5, "top5": 90.0, "mean_class_accuracy": 61.0, "chance_top1": 25.0},
    }
    write_card(card, tmp_path / "run" / "eval" / "pic-manifest-test.json")
    stale = {**card, "checkpoint": {"sha256": "0" * 64}, "metrics": {"top1": 11.0}}
    write_card(stale, tmp_path / "run" / "eval" / "pic-old.json")
    (tmp_path / "run" / "eval" / "notes.json").write_text("not json")
    (folder / "train_state").mkdir()  # as a trainer's checkpoint has
    return folder


class FakeHub:
    """Records the HfApi calls (with the token the HfApi was made with) instead of making them."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.uploaded_card = ""
        hub = self

        def create_repo(api: HfApi, repo_id: str, **kwargs: Any) -> str:
            hub.calls.append(("create_repo", {"repo_id": repo_id, "token": api.token, **kwargs}))
            return f"https://huggingface.co/{repo_id}"

        def create_branch(api: HfApi, repo_id: str, **kwargs: Any) -> None:
            hub.calls.append(("create_branch", {"repo_id": repo_id, **kwargs}))

        def upload_folder(api: HfApi, **kwargs: Any) -> None:
            hub.calls.append(("upload_folder", {"token": api.token, **kwargs}))
            hub.uploaded_card = (Path(kwargs["folder_path"]) / "README.md").read_text()

        monkeypatch.setattr(HfApi, "create_repo", create_repo)
        monkeypatch.setattr(HfApi, "create_branch", create_branch)
        monkeypatch.setattr(HfApi, "upload_folder", upload_folder)

    def names(self) -> list[str]:
        return [name for name, _ in self.calls]

    def call(self, name: str) -> dict[str, Any]:
        return next(kwargs for n, kwargs in self.calls if n == name)


# ---------------------------------------------------------------------------------------------- the card
def test_save_pretrained_writes_a_card_the_hub_parser_reads(checkpoint: Path) -> None:
    card = ModelCard.load(checkpoint / "README.md")
    data = card.data.to_dict()
    assert data["library_name"] == "lbind" and data["pipeline_tag"] == "feature-extraction"
    assert data["tags"] == ["lbind", "language-bind", "multimodal-embeddings", "pic", "pic2"]
    assert data["base_model"] == ["openai/clip-vit-base-patch32"]  # from train.init, a hub id
    assert "license" not in data
    text = card.text
    assert GENERATED_MARK in text
    assert "| pic |" in text and "| pic2 |" in text and "minilm" in text
    assert "Saved at step 12 of 12 (epoch 3.00)." in text and "init: clip:openai/clip-vit-base-patch32" in text
    assert 'lbcore.load("path/to/checkpoint")' in text
    assert "## Evaluation" not in text  # save_pretrained does not look for result cards


def test_result_cards_of_these_weights_only(checkpoint: Path, caplog: pytest.LogCaptureFixture) -> None:
    found = cards_of(checkpoint)
    assert [c["metrics"]["top1"] for c in found] == [62.5]
    assert "notes.json: not a readable result card" in caplog.text


def test_bases_and_portability_come_from_lbind_json() -> None:
    meta: dict[str, Any] = {
        "anchor": {"name": "/home/me/anchor"},
        "modalities": {
            "a": {"base": {"source": "clip:hf://org/tower@v1"}},
            "b": {"base": {"source": "clip:/data/tower"}},
            "c": {},
        },
        "converted": {"c": {"source": "/x/hub/models--LanguageBind--LanguageBind_Depth/snapshots/" + "f" * 40}},
        "train": {"config": {"init": {"a": "clip:org/tower", "c": "scratch"}}},
    }
    assert base_models(meta) == ["org/tower", "LanguageBind/LanguageBind_Depth"]
    problems = portability_problems(meta)
    assert len(problems) == 2 and "/home/me/anchor" in problems[0] and "clip:/data/tower" in problems[1]
    meta["anchor"]["name"] = "./anchor"
    meta["modalities"].pop("b")
    assert portability_problems(meta) == []


# --------------------------------------------------------------------------------------------- the upload
def test_push_creates_the_repo_and_uploads_the_folder_with_the_card(
    checkpoint: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    hub = FakeHub(monkeypatch)
    url = push_checkpoint(
        checkpoint, "me/pic-model", private=True, revision="dev", token="hf_abc", commit_message="v1", license="mit"
    )
    assert url == "https://huggingface.co/me/pic-model/tree/dev"
    assert hub.names() == ["create_repo", "create_branch", "upload_folder"]
    assert hub.call("create_repo") == {
        "repo_id": "me/pic-model",
        "token": "hf_abc",
        "private": True,
        "repo_type": "model",
        "exist_ok": True,
    }
    assert hub.call("create_branch") == {
        "repo_id": "me/pic-model",
        "branch": "dev",
        "repo_type": "model",
        "exist_ok": True,
    }
    upload = hub.call("upload_folder")
    assert upload["repo_id"] == "me/pic-model" and upload["folder_path"] == str(checkpoint)
    assert (upload["revision"], upload["commit_message"], upload["token"]) == ("dev", "v1", "hf_abc")
    assert "train_state/*" in upload["ignore_patterns"]

    card = ModelCard(hub.uploaded_card)
    assert card.data.license == "mit"
    assert 'lbcore.load("hf://me/pic-model")' in card.text and "lbind eval --checkpoint hf://me/pic-model" in card.text
    assert "## Evaluation" in card.text and "top1 62.50" in card.text and "top5 90.00" in card.text
    assert "11.00" not in card.text  # the stale card is of other weights
    assert card.text.splitlines()[3] == "# pic-model"


def test_push_to_main_keeps_a_readme_someone_else_wrote(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = FakeHub(monkeypatch)
    (checkpoint / "README.md").write_text("# My model\n\nMy own words.\n")
    url = push_checkpoint(checkpoint, "hf://me/pic-model")
    assert url == "https://huggingface.co/me/pic-model"
    assert hub.names() == ["create_repo", "upload_folder"]  # no branch to create
    assert hub.call("upload_folder")["revision"] is None
    assert hub.call("upload_folder")["commit_message"] == "Upload lbind checkpoint (pic, pic2)"
    assert hub.uploaded_card == "# My model\n\nMy own words.\n"


def test_push_refuses_what_it_cannot_upload(tmp_path: Path, checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = FakeHub(monkeypatch)
    with pytest.raises(CheckpointError, match="not an lbind checkpoint"):
        push_checkpoint(tmp_path, "me/x")
    for bad in ("justaname", "me/x/y", "hf://me/x@a"):
        with pytest.raises(HubError, match="not a Hub repository id"):
            push_checkpoint(checkpoint, bad, revision="b")
    assert hub.calls == []


def test_the_push_command(checkpoint: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_command("push") is push
    hub = FakeHub(monkeypatch)
    args = [str(checkpoint), "me/pic-model", "--private", "--license", "apache-2.0", "-m", "first", "--branch", "b1"]
    result = CliRunner().invoke(push, args, env={"HF_TOKEN": "hf_env"})
    assert result.exit_code == 0, result.output
    assert f"pushed {checkpoint} to https://huggingface.co/me/pic-model/tree/b1" in result.output
    assert 'lbcore.load("hf://me/pic-model")' in result.output
    assert hub.call("create_repo")["private"] is True and hub.call("create_repo")["token"] == "hf_env"
    assert (hub.call("upload_folder")["commit_message"], hub.call("upload_folder")["revision"]) == ("first", "b1")
    assert json.loads(json.dumps(ModelCard(hub.uploaded_card).data.to_dict()))["license"] == "apache-2.0"

    missing = CliRunner().invoke(push, [str(checkpoint / "nope"), "me/x"])
    assert missing.exit_code == 2 and "does not exist" in missing.output
