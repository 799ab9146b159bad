"""Hub ids (lbcore.hub): checkpoints, LanguageBind releases, CLIP towers and anchors named by their Hugging Face
repository, resolved offline from a hub cache built in the test.

:func:`put_in_hub_cache` lays files out exactly as huggingface_hub stores a download (``models--org--name`` with
``blobs/``, ``refs/<ref>`` holding the commit and ``snapshots/<commit>/`` of relative symlinks into the blobs);
the first test checks that huggingface_hub's own cache readers accept it. Every other test runs with
``HF_HUB_OFFLINE=1`` and ``HF_HUB_CACHE`` pointing at such a cache, and compares what a hub id loads with what the
same files load from a plain folder.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import pytest
import torch
from click.testing import CliRunner
from huggingface_hub import scan_cache_dir, snapshot_download, try_to_load_from_cache
from safetensors.torch import load_file

import lbcore
from lbcore.anchor import Anchor
from lbcore.cards import default_card_path
from lbcore.checkpoint import META_FILE
from lbcore.cli.convert import convert
from lbcore.convert import load_clip_vision_into
from lbcore.convert.writer import convert_languagebind
from lbcore.errors import AnchorError, CheckpointError, HubError, HubNotCachedError
from lbcore.hub import HubId, cache_folder, hub_origin, parse_hub_id, resolve
from lbcore.model import base_reference
from lbcore.plugins import default_registry, reset_default_registry


def _sibling(name: str) -> ModuleType:
    """Another test module's builders, imported by path (tests is not a package)."""
    spec = importlib.util.spec_from_file_location(f"_lbind_hub_{name}", Path(__file__).with_name(f"{name}.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


releases = _sibling("test_convert")  # tiny LanguageBind releases in the released layout
adapters = _sibling("test_adapter")  # a tiny image-like modality and tiny CLIP vision towers


def put_in_hub_cache(
    cache: Path, repo_id: str, folder: Path, refs: Sequence[str] = ("main",), commit: str | None = None
) -> Path:
    """Store every file under ``folder`` in the hub cache ``cache`` as huggingface_hub does after a download of
    the model repository ``repo_id``: content in ``blobs/<sha256>``, ``snapshots/<commit>/<path>`` a relative
    symlink to its blob, each of ``refs`` (branch or tag names) a file holding the commit. Returns the snapshot."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    if commit is None:
        listing = hashlib.sha1()
        for path in files:
            listing.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
        commit = listing.hexdigest()
    snapshot = repo / "snapshots" / commit
    for path in files:
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        if not blob.exists():
            blob.write_bytes(data)
        link = snapshot / path.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    for ref in refs:
        (repo / "refs" / ref).parent.mkdir(parents=True, exist_ok=True)
        (repo / "refs" / ref).write_text(commit)
    return snapshot


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty hub cache that lbcore.hub reads (offline, as conftest sets HF_HUB_OFFLINE=1)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.chdir(tmp_path)  # no local folder shadows a bare hub id
    return cache


@pytest.fixture
def converter_plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LBIND_PLUGINS", "depth")
    reset_default_registry()


def depth_release(root: Path, seed: int) -> Path:
    return releases.write_release(root, releases.tiny_clip(seed), "LanguageBindDepth", {"max_depth": 8.0})


# ------------------------------------------------------------------------------------------- the fake cache
def test_the_test_cache_is_what_huggingface_hub_reads(tmp_path: Path) -> None:
    src = tmp_path / "src"
    (src / "anchor").mkdir(parents=True)
    (src / "config.json").write_text('{"a": 1}')
    (src / "anchor" / "vocab.json").write_text('{"b": 2}')
    (src / "copy.json").write_text('{"a": 1}')  # same bytes: one blob
    cache = tmp_path / "cache"
    snap = put_in_hub_cache(cache, "org/name", src, refs=("main", "v1"))

    assert try_to_load_from_cache("org/name", "config.json", cache_dir=cache) == str(snap / "config.json")
    assert try_to_load_from_cache("org/name", "anchor/vocab.json", cache_dir=cache, revision="v1") == str(
        snap / "anchor" / "vocab.json"
    )
    assert try_to_load_from_cache("org/name", "missing.json", cache_dir=cache) is None
    info = scan_cache_dir(cache)
    assert info.warnings == []
    (repo,) = info.repos
    assert (repo.repo_id, repo.repo_type, repo.nb_files) == ("org/name", "model", 2)  # files: distinct blobs
    (revision,) = repo.revisions
    assert revision.commit_hash == snap.name and revision.refs == frozenset({"main", "v1"})
    assert {f.file_name for f in revision.files} == {"config.json", "vocab.json", "copy.json"}
    assert snapshot_download("org/name", revision="v1", cache_dir=cache, local_files_only=True) == str(snap)


# ---------------------------------------------------------------------------------------------- parsing
def test_hub_ids_are_parsed_and_cache_paths_traced_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert parse_hub_id("hf://org/name") == HubId("org/name")
    assert parse_hub_id("hf://org/na.me_1@v1.0") == HubId("org/na.me_1", "v1.0")
    assert str(HubId("org/name", "refs/pr/1")) == "hf://org/name@refs/pr/1"
    assert parse_hub_id("org/name") is None  # bare only where asked for
    assert parse_hub_id("org/name@dev", bare=True) == HubId("org/name", "dev")
    for path in ("./org/name", "/abs/org", "~/x/y", "runs/x/final", "a--b/c"):
        assert parse_hub_id(path, bare=True) is None, path
    for bad in ("hf://org", "hf://org/name@", "hf://org/a/b"):
        with pytest.raises(HubError, match="not a valid hub id"):
            parse_hub_id(bad)
    snap = tmp_path / "hub" / "models--Org--some-name" / "snapshots" / ("ab" * 20)
    assert hub_origin(snap / "anchor") == HubId("Org/some-name", "ab" * 20)
    assert hub_origin(tmp_path / "plain") is None

    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_folder() == tmp_path / "xdg" / "huggingface" / "hub"
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    assert cache_folder() == tmp_path / "home" / "hub"
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "c"))
    assert cache_folder() == tmp_path / "c"


# ------------------------------------------------------------------------------------------- checkpoints
def test_load_a_checkpoint_by_hub_id_with_revisions(tmp_path: Path, hub_cache: Path, converter_plugins: None) -> None:
    first = convert_languagebind(depth_release(tmp_path / "rel0", 0), tmp_path / "ck0").output
    second = convert_languagebind(depth_release(tmp_path / "rel1", 1), tmp_path / "ck1").output
    put_in_hub_cache(hub_cache, "lbind-tests/depth", first, refs=("main",))
    pinned = put_in_hub_cache(hub_cache, "lbind-tests/depth", second, refs=("v2",))

    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    texts = ["a dog", "a zebra"]
    local, hub = lbcore.load(first), lbcore.load("hf://lbind-tests/depth")
    torch.testing.assert_close(hub.embed("depth", x), local.embed("depth", x), atol=0, rtol=0)
    torch.testing.assert_close(hub.embed_text(texts), local.embed_text(texts), atol=0, rtol=0)  # ./anchor inside
    for revision in ("v2", pinned.name):
        other = lbcore.load(f"hf://lbind-tests/depth@{revision}")
        torch.testing.assert_close(other.embed("depth", x), lbcore.load(second).embed("depth", x), atol=0, rtol=0)
        assert not torch.allclose(other.embed("depth", x), local.embed("depth", x))
    card = default_card_path("hf://lbind-tests/depth", {"modality": "depth", "dataset": {"reader": "demo"}})
    assert card == tmp_path / "eval" / "lbind-tests--depth" / "depth-demo.json"  # not into the cache


def test_offline_and_not_cached_is_a_typed_error_saying_how_to_fetch(hub_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(HubNotCachedError) as caught:
        lbcore.load("hf://lbind-tests/absent@v3")
    err = caught.value
    assert (err.repo_id, err.revision, err.cache) == ("lbind-tests/absent", "v3", hub_cache)
    message = str(err)
    for part in ("hf://lbind-tests/absent@v3", "'v3'", str(hub_cache), "offline", "hf download lbind-tests/absent"):
        assert part in message, part
    # A checkpoint needs hf://: a missing run folder is reported as such, never looked up.
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        lbcore.load("runs/x")
    # Anchors go through the same resolution: the same message, as an AnchorError caused by it.
    with pytest.raises(AnchorError, match=r"lbind-tests/no-anchor.*hf download") as anchor_err:
        Anchor.from_pretrained("lbind-tests/no-anchor")
    assert isinstance(anchor_err.value.__cause__, HubNotCachedError)


def test_a_cached_snapshot_without_the_needed_file_is_named(tmp_path: Path, hub_cache: Path) -> None:
    src = tmp_path / "notes"
    src.mkdir()
    (src / "README.md").write_text("no weights here")
    snap = put_in_hub_cache(hub_cache, "lbind-tests/notes", src)
    with pytest.raises(HubError, match=rf"(?s)hf://lbind-tests/notes.*{snap.name}.*no lbind.json"):
        lbcore.load("hf://lbind-tests/notes")


# ------------------------------------------------------------------------------- releases, towers, anchors
def test_convert_a_release_by_hub_id(tmp_path: Path, hub_cache: Path, converter_plugins: None) -> None:
    src = depth_release(tmp_path / "downloads" / "LanguageBind_Depth", 3)
    local = convert_languagebind(src, tmp_path / "local").output
    snap = put_in_hub_cache(hub_cache, "LanguageBind/LanguageBind_Depth", src)

    result = CliRunner().invoke(convert, ["languagebind", "LanguageBind/LanguageBind_Depth", "-o", "from-hub"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "from-hub"
    got, want = load_file(str(out / "depth.safetensors")), load_file(str(local / "depth.safetensors"))
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    meta = json.loads((out / META_FILE).read_text())
    assert meta["converted"]["depth"]["hub"] == {"repo_id": "LanguageBind/LanguageBind_Depth", "revision": snap.name}
    assert meta["anchor"]["fingerprint"] == json.loads((local / META_FILE).read_text())["anchor"]["fingerprint"]
    assert not any(p.is_symlink() for p in out.rglob("*"))  # files copied out of the cache, not linked
    readme = (out / "README.md").read_text()
    assert "base_model:\n- LanguageBind/LanguageBind_Depth" in readme

    missing = CliRunner().invoke(convert, ["languagebind", "LanguageBind/LanguageBind_Audio", "-o", "x"])
    assert isinstance(missing.exception, HubNotCachedError)
    assert "there is no local folder of that name either" in str(missing.exception)


def test_init_from_a_clip_tower_by_hub_id_and_an_adapter_that_refers_to_it(tmp_path: Path, hub_cache: Path) -> None:
    default_registry().add_plugin(adapters._Plugin(), "adapter-test")
    tower = adapters.write_clip(tmp_path / "downloads" / "clip", seed=5)
    put_in_hub_cache(hub_cache, "openai/clip-tiny", tower)
    from_folder, from_hub = adapters.model_on(), adapters.model_on()
    load_clip_vision_into(from_folder.encoders["pic"], tower)
    load_clip_vision_into(from_hub.encoders["pic"], "openai/clip-tiny")
    for key, value in from_folder.encoders["pic"].state_dict().items():
        torch.testing.assert_close(from_hub.encoders["pic"].state_dict()[key], value, atol=0, rtol=0)

    assert base_reference("clip:openai/clip-tiny") == "clip:hf://openai/clip-tiny"
    assert base_reference(f"clip:{tower}") == f"clip:{tower.resolve()}"  # an existing folder stays a folder
    from_hub.base_sources["pic"] = base_reference("clip:openai/clip-tiny")
    adapters.train_adapters(from_hub)
    saved = from_hub.save_pretrained(tmp_path / "adapter", adapter_only=True)
    meta = json.loads((saved / META_FILE).read_text())
    assert meta["modalities"]["pic"]["base"]["source"] == "clip:hf://openai/clip-tiny"
    x = adapters.inputs()
    torch.testing.assert_close(lbcore.load(saved).embed("pic", x), from_hub.embed("pic", x), atol=1e-5, rtol=0)
    assert "base_model:\n- openai/clip-tiny" in (saved / "README.md").read_text()


def test_an_anchor_by_hub_id_is_the_same_anchor(anchor_dir: Path, hub_cache: Path) -> None:
    put_in_hub_cache(hub_cache, "lbind-tests/tiny-anchor", anchor_dir)
    direct = Anchor.from_pretrained(str(anchor_dir), max_length=16)
    for name in ("lbind-tests/tiny-anchor", "hf://lbind-tests/tiny-anchor@main"):
        via_hub = Anchor.from_pretrained(name, max_length=16)
        assert via_hub.fingerprint == direct.fingerprint and via_hub.name == name
        torch.testing.assert_close(via_hub.encode(["a dog"]), direct.encode(["a dog"]), atol=0, rtol=0)
    assert resolve(anchor_dir, "anchor") == anchor_dir  # a path object is always local
