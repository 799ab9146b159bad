"""Captioning evaluation and generation: the runners behind ``lbind eval --task captioning`` and ``lbind caption``.

The checkpoint's caption decoder writes one caption per held-out item (greedy or beam search) and the captions
are scored against the item's reference captions with BLEU-4 and CIDEr (:mod:`lbcore.captionmetrics`). Beside
it, the *nearest-caption* baseline: the first caption of the training item (the decoder's training manifest)
nearest to the held-out item in the embedding space (the group's fused embedding for a group decoder).
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from lbcore import __version__, cards
from lbcore.captioning import Captioner, encoder_tokens, load_captioner
from lbcore.captionmetrics import caption_scores
from lbcore.captiontrain import caption_manifest
from lbcore.checkpoint import read_meta
from lbcore.datasets import EvalDataset, read_eval_manifest
from lbcore.errors import EvaluationError
from lbcore.grouping import fused_features
from lbcore.model import BindModel, load, modality_of

__all__ = ["caption_items", "evaluate_captioning", "nearest_captions"]

EXAMPLES = 10  # items shown with their captions in a result card


def caption_items(
    model: BindModel,
    captioner: Captioner,
    files: Mapping[str, Sequence[str | Path]],
    *,
    beams: int = 1,
    max_length: int | None = None,
    batch_size: int = 32,
) -> list[str]:
    """Captions of items given as aligned file lists per source modality (``{"video": [...], "audio": [...]}``)."""
    sources = list(captioner.cfg.sources)
    missing = [m for m in sources if m not in files]
    if missing:
        raise EvaluationError(f"the decoder reads {', '.join(sources)}; no {', '.join(missing)} files given")
    count = {len(files[m]) for m in sources}
    if len(count) != 1:
        raise EvaluationError(f"the sources' file lists differ in length ({', '.join(sources)})")
    n = count.pop()
    out: list[str] = []
    for start in range(0, n, batch_size):
        tokens = {}
        for m in sources:
            modality_of(model, m)
            batch = model.preprocess(m, [str(p) for p in files[m][start : start + batch_size]]).to(model.device)
            tokens[m] = encoder_tokens(model.encoders[m], batch)
        out += captioner.generate(tokens, beams=beams, max_length=max_length)
    return out


def _embeddings(model: BindModel, datasets: Mapping[str, EvalDataset]) -> torch.Tensor:
    feats = {m: model.embed(m, [str(i.path) for i in ds.items]).cpu() for m, ds in datasets.items()}
    if len(feats) == 1:
        return next(iter(feats.values()))
    fused, _ = fused_features(model.groups.to("cpu"), list(feats), feats)
    return fused


def nearest_captions(model: BindModel, train: Mapping[str, EvalDataset], test: Mapping[str, EvalDataset]) -> list[str]:
    """Per test item, the first caption of the training item nearest to it (cosine of the embeddings)."""
    nearest = (_embeddings(model, test) @ _embeddings(model, train).t()).argmax(dim=1)
    items = next(iter(train.values())).items
    return [items[int(i)].captions[0] for i in nearest]


def evaluate_captioning(
    checkpoint: str | Path,
    *,
    manifest: str | Path | None = None,
    beams: int = 1,
    max_length: int | None = None,
    batch_size: int = 32,
    baseline: bool = True,
    model: BindModel | None = None,
) -> dict[str, Any]:
    """Caption every item of ``manifest`` (default: the decoder's sources' demo test split) and return the result
    card: BLEU-4 and CIDEr of the decoder, and of the nearest-caption baseline (``baseline``)."""
    started = time.perf_counter()
    checkpoint = Path(checkpoint)
    meta = read_meta(checkpoint)
    model = model if model is not None else load(checkpoint)
    captioner = load_captioner(checkpoint, model.device)
    sources = list(captioner.cfg.sources)
    seed = int(((meta.get("train") or {}).get("config") or {}).get("demo_seed", 0))
    test_path = caption_manifest(model, sources, "test", seed, Path(manifest) if manifest else None)
    test = read_eval_manifest(test_path, sources, "retrieval")
    files = {m: [i.path for i in ds.items] for m, ds in test.items()}
    hypotheses = caption_items(model, captioner, files, beams=beams, max_length=max_length, batch_size=batch_size)
    references = [list(i.captions) for i in next(iter(test.values())).items]
    card: dict[str, Any] = {
        "format": cards.CARD_FORMAT, "format_version": cards.CARD_VERSION, "lbind_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": str(checkpoint.resolve()), **cards.checkpoint_digest(checkpoint)},
        "anchor": {"name": meta["anchor"].get("name"), "fingerprint": meta["anchor"].get("fingerprint")},
        "modality": "+".join(sources), "fuse": None, "emergent": None, "task": "captioning",
        "dataset": {"reader": "manifest", "name": test_path.name, "root": str(test_path.parent.resolve()),
                    "manifest": str(test_path.resolve()), "split": test_path.stem, "options": {},
                    "num_items": len(references), "items_sha256": cards.items_digest(test), "classes": []},
        "decoding": {"beams": beams, "max_length": max_length or captioner.cfg.max_length},
        "metrics": caption_scores(references, hypotheses), "metrics_per_modality": {},
    }  # fmt: skip
    examples = [{"references": r, "caption": h} for r, h in zip(references, hypotheses, strict=True)]
    if baseline:
        train_path = Path((meta.get("captioner") or {}).get("trained", {}).get("manifest") or test_path)
        train = read_eval_manifest(train_path, sources, "retrieval")
        nearest = nearest_captions(model, train, test)
        card["baseline"] = {"nearest_caption": caption_scores(references, nearest), "train_manifest": str(train_path)}
        for example, caption in zip(examples, nearest, strict=True):
            example["nearest_caption"] = caption
    card["examples"] = examples[:EXAMPLES]
    card["time_s"] = round(time.perf_counter() - started, 3)
    return card
