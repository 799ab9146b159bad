"""Captioning: encoder tokens, the caption metrics by hand, a decoder that learns a tiny caption set (greedy and
beam search), its save/load round trip, and the CLI (train --caption, caption, eval --task captioning).

The fake ``capv`` modality reads 4-d ``.npy`` vectors through a linear encoder without ``tokens``: its
embedding is the decoder's one conditioning token.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lbcore.captioning import DecoderConfig, load_captioner, word_tokenizer
from lbcore.captionmetrics import caption_scores
from lbcore.config import AnchorConfig, EncoderConfig
from lbcore.model import BindModel
from lbcore.plugins import default_registry

PLUGIN = "lbfake_capvec"
DIM = 8
CAPTIONS = {
    0: ["a red ball rising up", "a red ball going up"],
    1: ["a blue square falling down", "a blue square dropping down"],
    2: ["a green light blinking fast", "a green light flashing fast"],
}

PLUGIN_SOURCE = """
import numpy as np
import torch
from torch import nn

from lbcore import hookimpl
from lbcore.config import ModalityConfig
from lbcore.modality import Modality


class Lin(nn.Module):
    def __init__(self, embed_dim):
        super().__init__()
        self.embed_dim = embed_dim
        self.proj = nn.Linear(4, embed_dim)

    def forward(self, x):
        return self.proj(x)


class CapV(Modality):
    name = "capv"
    Config = ModalityConfig
    presets = {"languagebind": {}, "demo": {}}
    templates = ("a {}.",)

    def preprocess(self, item, train=False):
        if not isinstance(item, np.ndarray):
            item = np.load(item)
        return torch.as_tensor(np.asarray(item, dtype=np.float32))

    def example_input(self, seed=0):
        return np.random.default_rng(seed).standard_normal(4).astype(np.float32)

    def build_stem(self):
        return nn.Identity()

    def build_encoder(self, embed_dim):
        return Lin(embed_dim)


@hookimpl
def register_modalities(register):
    register(CapV)
"""


@pytest.fixture
def capv(load_plugin: Any) -> Any:
    return load_plugin(PLUGIN, PLUGIN_SOURCE)


def checkpoint(path: Path) -> Path:
    mod = default_registry().registered("capv").cls()
    torch.manual_seed(0)
    model = BindModel(AnchorConfig(), {"capv": mod.build_encoder(DIM)}, {"capv": mod}, anchor_fingerprint="0" * 64,
                      embed_dim=DIM)  # fmt: skip
    return model.save_pretrained(path)


def write_split(root: Path, name: str, per_class: int, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    root.mkdir(parents=True, exist_ok=True)
    for k, captions in CAPTIONS.items():
        for i in range(per_class):
            v = np.eye(4, dtype=np.float32)[k] + 0.05 * rng.standard_normal(4).astype(np.float32)
            np.save(root / f"{name}-{k}-{i}.npy", v)
            rows.append({"path": f"{name}-{k}-{i}.npy", "captions": captions})
    (root / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / f"{name}.jsonl"


# ----------------------------------------------------------------------------------------------- tokens
def test_vit_tokens_hold_the_class_token_the_embedding_is_projected_from() -> None:
    from lbcore.nn import PatchStem1d, SpaceTimeEncoder
    from lbcore.nn.encoder import ViTEncoder

    cfg = EncoderConfig(width=32, depth=1, heads=2, patch_size=4)
    enc = ViTEncoder(PatchStem1d(1, 32, 4, 16), cfg, DIM).eval()
    x = torch.randn(3, 1, 16)
    tokens = enc.tokens(x)
    assert tokens.shape == (3, 1 + 4, 32)
    torch.testing.assert_close(enc.head.proj(tokens[:, 0]), enc(x))
    video = SpaceTimeEncoder(PatchStem1d(1, 32, 4, 16), cfg, DIM, num_frames=2).eval()
    clips = torch.randn(3, 1, 2, 16)
    seq = video.tokens(clips)  # [B, T * (1 + N), width], frame by frame
    assert seq.shape == (3, 2 * 5, 32)
    torch.testing.assert_close(video.head.proj(seq[:, [0, 5]].mean(1)), video(clips))


# ---------------------------------------------------------------------------------------------- metrics
def test_bleu4_and_cider_by_hand() -> None:
    # One hypothesis, one reference differing in the last word: n-gram precisions 4/5, 3/4, 2/3, 1/2, equal
    # lengths (no brevity penalty): BLEU-4 = (0.2) ** (1/4).
    refs = [["a b c d f"], ["g h i j k"]]
    scores = caption_scores(refs, ["A b, C d e!", "g h i j k"])
    per_item = (0.2**0.25 + 1.0) / 2  # not what corpus BLEU averages; the corpus value is below
    assert scores["bleu4"] == pytest.approx(100 * ((9 / 10) * (7 / 8) * (5 / 6) * (3 / 4)) ** 0.25, rel=1e-6)
    assert scores["bleu4"] != pytest.approx(100 * per_item)
    # CIDEr-D: a hypothesis equal to its only reference has cosine 1 for n = 1..4 and no length penalty: 10 per
    # item (x 100 here); a hypothesis sharing no n-gram with its reference scores 0.
    same = caption_scores([["a red ball rising up"], ["the blue box falls down"]],
                          ["a red ball rising up", "the blue box falls down"])  # fmt: skip
    assert same["cider"] == pytest.approx(1000.0) and same["bleu4"] == pytest.approx(100.0)
    none = caption_scores([["a red ball rising up"], ["the blue box falls down"]],
                          ["zebra zebra zebra zebra zebra", "the blue box falls down"])  # fmt: skip
    assert none["cider"] == pytest.approx(500.0)


def test_the_word_tokenizer_reads_words_and_marks_unknown_ones() -> None:
    tok = word_tokenizer(["A red ball, rising!", "a blue square"])
    ids = tok("a Red ball zebra", add_special_tokens=False)["input_ids"]
    assert tok.convert_ids_to_tokens(ids) == ["a", "red", "ball", "[UNK]"]
    assert tok.decode(tok("red ball rising", add_special_tokens=False)["input_ids"]) == "red ball rising"


# ------------------------------------------------------------------------------------------- the decoder
@pytest.mark.slow
@pytest.mark.parametrize("conditioning", ["cross-attention", "prefix"])
def test_a_decoder_learns_the_captions_and_loads_back_identical(capv: Any, tmp_path: Path, conditioning: str) -> None:
    from lbcore.captioneval import caption_items
    from lbcore.captiontrain import train_captioner

    ckpt = checkpoint(tmp_path / "ckpt")
    train = write_split(tmp_path / "data", "train", 6, seed=0)
    decoder = DecoderConfig(sources=["capv"], layers=1, width=32, heads=2, conditioning=conditioning)
    out = train_captioner({"checkpoint": ckpt, "decoder": decoder, "data": train, "output": tmp_path / "with-dec",
                           "steps": 150, "batch_size": 12, "lr": 5e-3, "warmup_steps": 10})  # fmt: skip
    assert (ckpt / "decoder.safetensors").exists() is False  # written into the copy
    meta = json.loads((out / "lbind.json").read_text())
    assert meta["captioner"]["config"]["conditioning"] == conditioning
    model = __import__("lbcore").load(out)
    captioner = load_captioner(out)
    files = {"capv": [str(tmp_path / "data" / f"train-{k}-0.npy") for k in CAPTIONS]}
    greedy = caption_items(model, captioner, files)
    beam = caption_items(model, captioner, files, beams=3)
    assert all(g in CAPTIONS[k] for k, g in enumerate(greedy)), greedy
    if conditioning == "cross-attention":  # the default; the prefix decoder is too weak here to beam well
        assert all(b in CAPTIONS[k] for k, b in enumerate(beam)), beam
    one_by_one = [caption_items(model, captioner, {"capv": [f]}, beams=3)[0] for f in files["capv"]]
    assert one_by_one == beam  # beams are expanded per item: a batch gives each item's own search
    again = load_captioner(out)
    for name, tensor in captioner.state_dict().items():
        assert torch.equal(again.state_dict()[name], tensor), name
    assert caption_items(model, again, files) == greedy


@pytest.mark.slow
def test_cli_trains_captions_and_evaluates_a_decoder(
    capv: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from lbcore.cli import main

    ckpt = checkpoint(tmp_path / "ckpt")
    train = write_split(tmp_path / "data", "train", 6, seed=0)
    test = write_split(tmp_path / "data", "test", 2, seed=1)
    main(["train", "--caption", "--checkpoint", str(ckpt), "--data", str(train), "--caption-steps", "100"])
    assert (ckpt / "decoder.safetensors").is_file() and (ckpt / "decoder_tokenizer").is_dir()
    capsys.readouterr()
    main(["caption", "-c", str(ckpt), str(tmp_path / "data" / "test-1-0.npy"), "--beam", "2", "--json"])
    line = json.loads(capsys.readouterr().out.strip())
    assert line["caption"] in CAPTIONS[1]
    card_path = tmp_path / "cap.json"
    main(["eval", "-c", str(ckpt), "--task", "captioning", "--data", str(test), "-o", str(card_path)])
    card = json.loads(card_path.read_text())
    assert card["task"] == "captioning" and card["dataset"]["num_items"] == 6
    # Every caption is one of its item's two references: BLEU-4 100, and CIDEr-D as computed for them.
    assert card["metrics"]["bleu4"] == pytest.approx(100.0)
    refs = [CAPTIONS[k] for k in CAPTIONS for _ in range(2)]
    expected = caption_scores(refs, [e["caption"] for e in card["examples"]] + [])
    assert card["metrics"]["cider"] == pytest.approx(expected["cider"])
    # The nearest training item has the same captions: its first caption is the baseline's answer.
    assert [e["nearest_caption"] for e in card["examples"]] == [CAPTIONS[k][0] for k in CAPTIONS for _ in range(2)]
