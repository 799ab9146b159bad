"""Zero-shot metrics against values computed by hand (and AP against scikit-learn); result-card digests."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lbcore.metrics import (
    average_precision,
    class_embeddings,
    classification_metrics,
    fuse_logits,
    multilabel_metrics,
    retrieval_metrics,
    zero_shot_logits,
)


def test_classification_by_hand() -> None:
    # 3 classes, 4 items. Predictions (argmax): 0, 2, 2, 1; truth: 0, 1, 2, 1
    logits = torch.tensor([[9.0, 1, 0], [0, 5, 6], [1, 2, 3], [0, 4, 1]])
    targets = torch.tensor([0, 1, 2, 1])
    m = classification_metrics(logits, targets, ["a", "b", "c"])
    assert m["top1"] == pytest.approx(75.0)
    assert m["top5"] == pytest.approx(100.0)  # only 3 classes: top-5 covers all
    assert m["per_class"] == pytest.approx({"a": 100.0, "b": 50.0, "c": 100.0})
    assert m["confusion"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]


def test_top5_with_many_classes() -> None:
    logits = torch.arange(10.0).repeat(2, 1)  # ranking 9, 8, 7, 6, 5, ...
    m = classification_metrics(logits, torch.tensor([5, 4]), [str(i) for i in range(10)])
    assert m["top1"] == 0.0 and m["top5"] == pytest.approx(50.0)  # 5 is 5th, 4 is 6th


def test_average_precision_by_hand_and_against_sklearn() -> None:
    scores = torch.tensor([0.9, 0.8, 0.7, 0.6, 0.5])
    pos = torch.tensor([1, 0, 1, 0, 1]).bool()
    # precision at the positives' ranks: 1/1, 2/3, 3/5 -> AP = (1 + 2/3 + 3/5) / 3
    assert average_precision(scores, pos) == pytest.approx((1 + 2 / 3 + 3 / 5) / 3)
    sklearn = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(0)
    s = torch.rand(50, 4, generator=g)
    t = (torch.rand(50, 4, generator=g) > 0.6).int()
    ours = multilabel_metrics(s, t, list("abcd"))["mAP"]
    ref = 100 * sklearn.average_precision_score(t.numpy(), s.numpy(), average="macro")
    assert ours == pytest.approx(ref, abs=1e-4)


def test_retrieval_with_several_captions_per_item_by_hand() -> None:
    items = torch.eye(3)  # item m is the unit vector e_m
    # captions: two for item 0, one each for items 1 and 2
    text = torch.tensor([[1.0, 0.1, 0], [0.2, 1.0, 0], [0, 1.0, 0.1], [0.9, 0, 1.0]])
    caption_item = torch.tensor([0, 0, 1, 2])
    m = retrieval_metrics(text, items, caption_item)
    # text->item ranks: caption0 -> item0 rank 1; caption1 prefers item1 -> rank 2; caption2 rank 1; caption3 rank 1
    assert m["text_to_item_R@1"] == pytest.approx(75.0)
    assert m["text_to_item_mean_rank"] == pytest.approx(1.25)
    assert m["text_to_item_median_rank"] == pytest.approx(1.0)
    # item->text: item0's best caption is caption0 (cos .995) vs others (.196 .. .669): rank 1;
    # item1: caption2 (.995) ranks first; item2: caption3 (cos .743) ranks 1st (others .0 / .099 / 0)
    assert m["item_to_text_R@1"] == pytest.approx(100.0)


def test_retrieval_normalises_before_ranking() -> None:
    items = torch.tensor([[100.0, 0.0], [0.7, 0.7]])  # item 0 has a huge norm
    # caption 0 belongs to item 1: closest in angle to it, but its raw dot product with item 0 is far larger
    text = torch.tensor([[10.0, 9.0], [1.0, 0.0]])
    m = retrieval_metrics(text, items, torch.tensor([1, 0]))
    assert m["text_to_item_R@1"] == 100.0
    assert (text @ items.t()).argmax(1).tolist() == [0, 0]  # unnormalised ranking would miss caption 0


def test_class_embeddings_average_normalised_templates() -> None:
    table = {"a x": [1.0, 0, 0], "b x": [0, 2.0, 0], "a y": [0, 0, 3.0], "b y": [0, 1.0, 0]}
    proto = class_embeddings(lambda ps: torch.tensor([table[p] for p in ps]), ["a", "b"], ["{} x", "{} y"])
    expected_a = F.normalize(torch.tensor([0.5, 0, 0.5]), dim=0)
    assert torch.allclose(proto[0], expected_a)
    assert torch.allclose(proto[1], torch.tensor([0.0, 1, 0]))


def test_zero_shot_logits_are_100_cosine_and_fusion_averages() -> None:
    f = torch.tensor([[3.0, 4.0]])
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    logits = zero_shot_logits(f, p)
    assert torch.allclose(logits, torch.tensor([[60.0, 80.0]]))
    assert torch.allclose(fuse_logits(logits, torch.zeros_like(logits)), torch.tensor([[30.0, 40.0]]))


def test_checkpoint_digest_covers_weights_and_adapter_bases(tmp_path) -> None:
    import hashlib
    import json

    from lbcore.cards import checkpoint_digest
    from lbcore.checkpoint import FORMAT, FORMAT_VERSION, META_FILE

    (tmp_path / "depth.safetensors").write_bytes(b"weights")
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "anchor": {}, "modalities": {"depth": {}}}
    (tmp_path / META_FILE).write_text(json.dumps(meta))
    full = checkpoint_digest(tmp_path)
    line = f"depth.safetensors\0{hashlib.sha256(b'weights').hexdigest()}\n"

    def meta_line() -> str:
        return f"{META_FILE}\0{hashlib.sha256((tmp_path / META_FILE).read_bytes()).hexdigest()}\n"

    assert full["sha256"] == hashlib.sha256((line + meta_line()).encode()).hexdigest() and "bases" not in full
    for base in ("a" * 64, "b" * 64):  # same adapter file, different base weights -> different digest
        meta["modalities"]["depth"] = {"base": {"source": "clip:/x", "sha256": base}}
        (tmp_path / META_FILE).write_text(json.dumps(meta))
        got = checkpoint_digest(tmp_path)
        assert got["bases"] == {"depth": base}
        expected = line + meta_line() + f"base:depth\0{base}\n"
        assert got["sha256"] == hashlib.sha256(expected.encode()).hexdigest()
    # The same weights under a renamed modality are another checkpoint.
    (tmp_path / META_FILE).write_text(json.dumps({**meta, "modalities": {"audio": {}}}))
    assert checkpoint_digest(tmp_path)["sha256"] != got["sha256"]


def test_moved_names_keep_their_old_import_path_with_a_deprecation_warning() -> None:
    import lbcore.cards
    import lbcore.evaluate
    import lbcore.metrics

    with pytest.warns(DeprecationWarning, match=r"lbcore\.evaluate\.checkpoint_digest moved to lbcore\.cards"):
        from lbcore.evaluate import checkpoint_digest
    assert checkpoint_digest is lbcore.cards.checkpoint_digest
    with pytest.warns(DeprecationWarning, match="lbcore.metrics.zero_shot_logits"):
        assert lbcore.evaluate.zero_shot_logits is lbcore.metrics.zero_shot_logits
    with pytest.raises(AttributeError, match="no_such_name"):
        lbcore.evaluate.no_such_name  # noqa: B018
