"""`lbind app`: the web page over tiny checkpoints, driven through gradio_client (the page's API) and, for one
real recording, through a real headless browser.

Fake plugins whose encoders are the identity: the embedding of a .npy file is the vector stored in it, normalised,
so every expected number is worked out with numpy from the vectors the tests write. Texts and prompts get
hand-chosen embeddings in the text-embedding cache; no anchor runs for them.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio  # the app extra, which `make install` installs with dev
import numpy as np
import pytest
from gradio_client import Client, handle_file

# gradio's queue (not lbind) uses pandas options that pandas 3 deprecates
pytestmark = pytest.mark.filterwarnings("ignore:.*(no_silent_downcasting|copy keyword).*")

PLUGIN = "lbfake_appvec"
DIM = 4

PLUGIN_SOURCE = """
import numpy as np
import torch
from torch import nn

from lbcore import hookimpl
from lbcore.config import ModalityConfig
from lbcore.errors import InputError
from lbcore.modality import Modality

DIM = 4


class Identity(nn.Module):
    def __init__(self, embed_dim):
        super().__init__()
        self.embed_dim = embed_dim
        self.proj = nn.Linear(DIM, embed_dim, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(embed_dim, DIM))

    def forward(self, x):
        return self.proj(x)


class Vec(Modality):
    name = "vec"
    Config = ModalityConfig
    presets = {"languagebind": {}, "demo": {}}
    templates = ("a {} vector.",)
    extensions = (".npy",)

    def preprocess(self, item, train=False):
        if not isinstance(item, np.ndarray):
            try:
                item = np.load(item, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise InputError(item, f"cannot read: {err}", "a .npy vector") from err
        return torch.as_tensor(np.asarray(item, dtype=np.float32))

    def example_input(self, seed=0):
        return np.ones(DIM, dtype=np.float32)

    def build_stem(self):
        return nn.Identity()

    def build_encoder(self, embed_dim):
        return Identity(embed_dim)


class Vec2(Vec):
    name = "vec2"


class Vec3(Vec):
    name = "vec3"


class Snd(Vec):
    name = "snd"
    widget = "audio"
    extensions = (".wav",)


@hookimpl
def register_modalities(register):
    for cls in (Vec, Vec2, Vec3, Snd):
        register(cls)
"""

MAX_UPLOAD = 64 * 1024  # bytes: the test server's upload limit
TEXTS = {"pointing up": [0, 0, 1, 0], "mostly first": [1, 0.5, 0, 0]}
PROMPTS = {"a cat vector.": [1, 0, 0, 0], "a dog vector.": [0, 1, 0, 0], "a owl vector.": [0, 0, 1, 0]}


def unit(values: Any) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v / np.linalg.norm(v)


def write_vec(path: Path, values: Any) -> Path:
    np.save(path, np.asarray(values, dtype=np.float32))
    return path


def register() -> None:
    from lbcore.plugins import default_registry

    importlib.invalidate_caches()
    default_registry().add_plugin(importlib.import_module(PLUGIN), PLUGIN)


def save_checkpoint(folder: Path, names: list[str], fingerprint: str) -> Path:
    from lbcore.config import AnchorConfig
    from lbcore.model import BindModel
    from lbcore.plugins import default_registry

    mods = {n: default_registry().registered(n).cls() for n in names}
    encoders = {n: m.build_encoder(DIM) for n, m in mods.items()}
    model = BindModel(AnchorConfig(), encoders, mods, anchor_fingerprint=fingerprint, embed_dim=DIM)
    return model.save_pretrained(folder)


def fill_cache(cache: Path, fingerprint: str) -> None:
    import torch

    from lbcore.anchor import TextEmbeddingCache

    for text, v in {**TEXTS, **PROMPTS}.items():
        t = torch.tensor(v, dtype=torch.float32)
        TextEmbeddingCache(cache / "text").put(fingerprint, text, t / t.norm())


def widgets(modalities: list[str], **files: Any) -> list[Any]:
    """One value per upload widget, in the page's modality order (sorted names); None where nothing is uploaded."""
    return [None if files.get(n) is None else files[n] for n in modalities]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, plugin_dist: Any, session_cache: Path) -> Iterator[Any]:
    """The app over three checkpoints: A = vec + vec2 and B = vec3 share an anchor; C = snd has its own."""
    from lbcore.app import AppSession
    from lbcore.appview import start
    from lbcore.plugins import reset_default_registry

    root = tmp_path_factory.mktemp("app")
    site = root / "site"
    plugin_dist(site, PLUGIN.replace("_", "-"), PLUGIN, PLUGIN_SOURCE)
    shared = hashlib.sha256(str(root).encode()).hexdigest()
    other = hashlib.sha256(str(site).encode()).hexdigest()
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(site))
        mp.setenv("LBIND_PLUGINS", "")
        mp.setenv("LBIND_CACHE", str(session_cache))
        reset_default_registry()
        register()
        ckpts = {
            "a": save_checkpoint(root / "a" / "final", ["vec", "vec2"], shared),
            "b": save_checkpoint(root / "b" / "final", ["vec3"], shared),
            "c": save_checkpoint(root / "c" / "final", ["snd"], other),
        }
        for fp in (shared, other):
            fill_cache(session_cache, fp)
        card = {"format": "lbind-eval-card", "modality": "vec", "dataset": {"reader": "folders"}}
        (root / "a" / "eval.json").write_text(json.dumps({**card, "metrics": {"top1": 87.5}}))
        session = AppSession(list(ckpts.values()))
        running = start(session=session, port=free_port(), max_file_size=MAX_UPLOAD)
        reset_default_registry()
        try:
            yield running, ckpts, Client(running.url, verbose=False, download_files=False)
        finally:
            running.close()
        sys.modules.pop(PLUGIN, None)


def run_cli(args: list[str]) -> None:
    from lbcore.cli import main

    main(args)


# --------------------------------------------------------------------------------------------- text x media
@pytest.mark.slow
def test_similarity_equals_the_cli_and_reaches_the_page_api(
    served: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    running, ckpts, client = served
    a = write_vec(tmp_path / "a.npy", [1, 0, 0, 0])
    b = write_vec(tmp_path / "b.npy", [0, 0, 3, 4])
    texts = list(TEXTS)
    result = running.session.similarity(texts, [("vec", a), ("vec2", b)]).as_json()

    monkeypatch.syspath_prepend(str(Path(importlib.import_module(PLUGIN).__file__).parent))
    register()
    base = ["similarity", "-c", str(ckpts["a"]), "-t", texts[0], "-t", texts[1], "--vec", str(a), "--vec2", str(b)]
    run_cli([*base, "--json"])
    cli_cosine = json.loads(capsys.readouterr().out)["cosine"]
    run_cli([*base, "--softmax", "--json"])
    cli_softmax = json.loads(capsys.readouterr().out)["softmax"]
    assert result["cosine"] == cli_cosine  # the same library calls: the same numbers, bit for bit
    assert result["softmax"] == cli_softmax
    want = np.array([[unit(t) @ unit(v) for v in ([1, 0, 0, 0], [0, 0, 3, 4])] for t in TEXTS.values()])
    np.testing.assert_allclose(cli_cosine, want, atol=1e-6)

    # Through the page: the files go by upload, one gr.File per modality (vec, vec2, vec3, snd in name order).
    files = widgets(running.session.modalities, vec=[handle_file(a)], vec2=[handle_file(b)])
    softmax, cosine, heatmap, raw = client.predict("\n".join(texts) + "\n\n", *files, api_name="/similarity")
    assert raw["cosine"] == cli_cosine and raw["softmax"] == cli_softmax
    assert [Path(m["path"]).name for m in raw["media"]] == ["a.npy", "b.npy"]
    assert cosine["headers"] == ["text", "vec: a.npy", "vec2: b.npy"]
    np.testing.assert_allclose([row[1:] for row in softmax["data"]], cli_softmax, atol=1e-4)
    assert heatmap["path"].endswith(".png")


def test_files_of_two_checkpoints_sharing_an_anchor_in_one_matrix(served: Any, tmp_path: Path) -> None:
    running, _, client = served
    a = write_vec(tmp_path / "a.npy", [0, 1, 1, 0])
    c = write_vec(tmp_path / "c.npy", [2, 1, 0, 0])
    files = widgets(running.session.modalities, vec=[handle_file(a)], vec3=[handle_file(c)])
    *_, raw = client.predict("pointing up\nmostly first", *files, api_name="/similarity")
    want = np.array([[unit(t) @ unit(v) for v in ([0, 1, 1, 0], [2, 1, 0, 0])] for t in TEXTS.values()])
    np.testing.assert_allclose(raw["cosine"], want, atol=1e-6)
    assert [m["modality"] for m in raw["media"]] == ["vec", "vec3"]


# ---------------------------------------------------------------------------------------------- zero-shot
def test_zero_shot_ranks_the_typed_labels_with_the_template_ensemble(served: Any, tmp_path: Path) -> None:
    running, _, client = served
    item = write_vec(tmp_path / "item.npy", [1, 0.2, 0, 0])
    files = widgets(running.session.modalities, vec=handle_file(item))
    best, table = client.predict("vec", "dog\nowl\ncat\n", 2, *files, api_name="/classify")
    cos = {
        k: unit([1, 0.2, 0, 0]) @ unit(v)
        for k, v in {"cat": [1, 0, 0, 0], "dog": [0, 1, 0, 0], "owl": [0, 0, 1, 0]}.items()
    }
    logits = 100 * np.array([cos["dog"], cos["owl"], cos["cat"]])
    probs = np.exp(logits - logits.max()) / np.exp(logits - logits.max()).sum()
    assert [row[1] for row in table["data"]] == ["cat", "dog"]  # top 2 of 3
    np.testing.assert_allclose([row[2] for row in table["data"]], [cos["cat"], cos["dog"]], atol=1e-4)
    np.testing.assert_allclose([row[3] for row in table["data"]], [probs[2], probs[0]], atol=1e-4)
    assert best["label"] == "cat"


# ------------------------------------------------------------------------------------------ media x media
def test_media_to_media_through_the_shared_space_and_not_across_anchors(served: Any, tmp_path: Path) -> None:
    running, _, client = served
    mods = running.session.modalities
    a = write_vec(tmp_path / "a.npy", [1, 2, 0, 0])
    b = write_vec(tmp_path / "b.npy", [0, 2, 0, 1])
    # Each picker has one widget per modality: the first picker's, then the second's.
    files = [*widgets(mods, vec=handle_file(a)), *widgets(mods, vec3=handle_file(b))]
    score = client.predict("vec", "vec3", *files, api_name="/cross")
    assert score == pytest.approx(unit([1, 2, 0, 0]) @ unit([0, 2, 0, 1]), abs=1e-4)
    snd = write_vec(tmp_path / "s.npy", [1, 0, 0, 0])
    with pytest.raises(Exception, match="different anchors") as err:
        files = [*widgets(mods, vec=handle_file(a)), *widgets(mods, snd=handle_file(snd))]
        client.predict("vec", "snd", *files, api_name="/cross")
    assert "Traceback" not in str(err.value)


# ------------------------------------------------------------------------------------------- bad requests
def test_bad_input_is_a_message_naming_the_file_and_the_server_stays_up(served: Any, tmp_path: Path) -> None:
    running, _, client = served
    mods = running.session.modalities
    broken = tmp_path / "broken.npy"
    broken.write_bytes(b"this is not numpy")
    with pytest.raises(Exception) as err:
        client.predict("pointing up", *widgets(mods, vec=[handle_file(broken)]), api_name="/similarity")
    message = str(err.value)
    assert "broken.npy: cannot read" in message and "expected a .npy vector" in message
    assert "/gradio/" not in message and "Traceback" not in message  # the name, not the server's temp path
    with pytest.raises(Exception, match="texts: none given"):
        ok = write_vec(tmp_path / "ok.npy", [1, 0, 0, 0])
        client.predict("  \n", *widgets(mods, vec=[handle_file(ok)]), api_name="/similarity")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(Exception, match="Invalid file type"):  # the upload widget takes the plugin's .npy only
        client.predict("pointing up", *widgets(mods, vec=[handle_file(notes)]), api_name="/similarity")
    big = write_vec(tmp_path / "big.npy", np.ones(MAX_UPLOAD // 4 + 16))  # just over the limit
    with pytest.raises(Exception, match=r"big\.npy exceeds the maximum file size"):
        client.predict("pointing up", *widgets(mods, vec=[handle_file(big)]), api_name="/similarity")
    *_, raw = client.predict("pointing up", *widgets(mods, vec=[handle_file(ok)]), api_name="/similarity")
    assert raw["cosine"] == [[pytest.approx(0.0, abs=1e-6)]]


def test_a_file_of_the_wrong_type_is_refused_by_name(served: Any, tmp_path: Path) -> None:
    from lbcore.errors import InputError

    running, _, _ = served
    wav = write_vec(tmp_path / "x.npy", [1, 0, 0, 0])
    with pytest.raises(InputError, match=r"x\.npy: is a \.npy file \(expected a snd file: \.wav\)"):
        running.session.check_file("snd", wav)


# ------------------------------------------------------------------------------------------ widgets, model
def test_each_modality_gets_the_upload_widget_its_plugin_names(served: Any) -> None:
    running, _, _ = served
    by_id = {b.elem_id: b for b in running.page.blocks.values() if getattr(b, "elem_id", None)}
    assert isinstance(by_id["zs-vec"], gradio.File)  # the Modality default: a plain file upload
    assert by_id["zs-vec"].file_types == [".npy"]
    assert isinstance(by_id["zs-snd"], gradio.Audio)  # widget = "audio"
    assert isinstance(by_id["sim-vec3"], gradio.File) and by_id["sim-vec3"].file_count == "multiple"
    assert {k for k in by_id if k.startswith("mm-a-")} == {
        "mm-a-modality",
        "mm-a-vec",
        "mm-a-vec2",
        "mm-a-vec3",
        "mm-a-snd",
    }


def test_model_tab_lists_modalities_plugins_anchor_and_cards(served: Any) -> None:
    running, _, _ = served
    described = {Path(d["checkpoint"]).parent.name: d for d in running.session.describe()}
    a = described["a"]
    assert set(a["modalities"]) == {"vec", "vec2"}
    assert a["modalities"]["vec"]["plugin"] == PLUGIN and a["modalities"]["vec"]["logit_scale"] == pytest.approx(
        1 / 0.07
    )
    assert (
        a["anchor"]["fingerprint"] == described["b"]["anchor"]["fingerprint"] != described["c"]["anchor"]["fingerprint"]
    )
    assert [Path(p).name for p in a["cards"]] == ["eval.json"] and described["b"]["cards"] == {}


def test_app_without_demo_checkpoints_says_how_to_make_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(["app"])
    assert exit_info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "runs/demo: no demo checkpoints" in err and "lbind demo" in err


# ------------------------------------------------------------------------------------------ real browser
def _browser_or_fail() -> Any:
    """Playwright driving the system chromium; missing either is a failure under CI, a skip elsewhere."""
    problem = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as err:
        problem, sync_playwright = f"playwright is not installed: {err}", None
    chromium = shutil.which("chromium") or ("/usr/bin/chromium" if os.path.exists("/usr/bin/chromium") else None)
    if chromium is None:
        problem = "no chromium (apt-get install chromium)"
    if problem:
        if os.environ.get("CI") == "true":
            pytest.fail(problem)
        pytest.skip(problem)
    return sync_playwright, chromium


# The body cells of a Gradio table, row by row, as the page shows them (its grid cells, not the hidden sizer).
ROWS_JS = """sel => [...document.querySelectorAll(sel + ' [role=row]')]
    .map(row => [...row.querySelectorAll('[role=gridcell]')].map(cell => cell.innerText.trim()))
    .filter(cells => cells.length)"""


@pytest.fixture
def real_clip() -> Path:
    from lbcore.testing import realdata_dir

    root = realdata_dir()
    if root is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the shared realdata folder is missing (LBIND_REALDATA or ../shared/realdata)")
        pytest.skip("the shared realdata folder is missing")
    return root / "imagebind_assets" / "dog_audio.wav"


@pytest.mark.slow
def test_browser_uploads_a_real_recording_and_reads_the_matrix(
    anchor_dir: Path, real_clip: Path, tmp_path: Path
) -> None:
    import torch

    from lbcore.anchor import Anchor
    from lbcore.app import AppSession
    from lbcore.appview import start
    from lbcore.config import AnchorConfig
    from lbcore.model import BindModel
    from lbcore.plugins import default_registry
    from lbcore.testing import tiny_modality

    sync_playwright, chromium = _browser_or_fail()
    default_registry().add_plugin(importlib.import_module("lbind_audio"), "audio")
    audio = tiny_modality(default_registry().registered("audio").cls)
    anchor_cfg = AnchorConfig(name=str(anchor_dir), max_length=16)
    anchor = Anchor.from_config(anchor_cfg)
    torch.manual_seed(0)
    model = BindModel(anchor_cfg, {"audio": audio.build_encoder(anchor.embed_dim)}, {"audio": audio},
                      anchor_fingerprint=anchor.fingerprint, embed_dim=anchor.embed_dim)  # fmt: skip
    ckpt = model.save_pretrained(tmp_path / "audio" / "final")
    texts = ["a dog barking", "rain on a roof"]
    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF but not really a wave file")
    running = start(session=AppSession([ckpt]), port=free_port())
    try:
        want = running.session.similarity(texts, [("audio", real_clip)]).softmax[:, 0].tolist()
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--headless", "--no-sandbox",
                "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])  # fmt: skip
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(running.url)
            page.locator("#sim-texts textarea").fill("\n".join(texts))
            page.locator("#sim-audio input[type=file]").set_input_files(str(real_clip))
            page.locator("#sim-audio").get_by_text("dog_audio").first.wait_for()  # uploaded
            page.locator("#sim-run").click()
            page.locator("#sim-softmax").get_by_text("audio: dog_audio.wav").first.wait_for(timeout=60_000)
            rows = page.evaluate(ROWS_JS, "#sim-softmax")
            page.screenshot(path=str(tmp_path / "similarity.png"), full_page=True)

            page.locator("#sim-audio input[type=file]").set_input_files(str(broken))
            page.locator("#sim-audio").get_by_text("broken").first.wait_for()
            page.locator("#sim-run").click()
            page.get_by_text("broken.wav: cannot decode audio", exact=False).first.wait_for(timeout=60_000)
            page.screenshot(path=str(tmp_path / "error.png"))
            assert "Traceback" not in page.content()

            page.get_by_role("tab", name="Model").click()
            page.get_by_text(anchor.fingerprint[:12], exact=False).first.wait_for()  # the anchor, in the summary
            browser.close()
    finally:
        running.close()
    assert [r[0] for r in rows] == texts
    np.testing.assert_allclose([float(r[1]) for r in rows], want, atol=1e-4)
    assert (tmp_path / "similarity.png").stat().st_size > 10_000
