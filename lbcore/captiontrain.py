"""Training the caption decoder of a checkpoint: the runner behind ``lbind train --caption``.

The encoders are frozen: the decoder (:mod:`lbcore.captioning`) learns to caption what the trained, contrastively
aligned encoders already see, and the checkpoint's embedding space does not move. Because they are frozen,
each item's encoder tokens are computed once (deterministic preprocessing) and kept in memory for the whole
run; every step then draws a batch of items and one of each item's captions (seeded by the run seed) and takes
an AdamW step on the captions' next-token cross-entropy (warm-up, then cosine decay).

Data: a manifest with captions on every row: plain rows (``path``) for one source modality, paired rows (one
key per modality) for a group. Without one, the source's demo train split (a group: a member's paired demo).
"""

from __future__ import annotations

import logging
import math
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from lbcore.captioning import Captioner, DecoderConfig, encoder_tokens, save_captioner, word_tokenizer
from lbcore.checkpoint import read_meta
from lbcore.config import StrictModel
from lbcore.datasets import EvalDataset, read_eval_manifest
from lbcore.demo import demo_data
from lbcore.model import BindModel, load, modality_of
from lbcore.pairdata import paired_demo_manifest

log = logging.getLogger(__name__)

__all__ = ["CaptionPlan", "caption_manifest", "item_tokens", "train_captioner"]


class CaptionPlan(StrictModel):
    """A captioner training run: the checkpoint, the data, the decoder and the loop settings."""

    checkpoint: Path = Field(description="Checkpoint folder whose (frozen) encoders condition the decoder.")
    decoder: DecoderConfig
    data: Path | None = Field(None, description="Manifest with captions (default: the demo train split).")
    output: Path | None = Field(None, description="Checkpoint folder to write (default: the checkpoint, in place).")
    steps: int = Field(800, gt=0)
    batch_size: int = Field(32, gt=0)
    lr: float = Field(2e-3, gt=0)
    warmup_steps: int = Field(50, ge=0)
    weight_decay: float = Field(0.01, ge=0)
    seed: int = Field(0, ge=0)
    batch_items: int = Field(32, gt=0, description="Items per forward pass when computing encoder tokens.")


def caption_manifest(model: BindModel, sources: Sequence[str], split: str, seed: int, given: Path | None) -> Path:
    """The manifest a captioner trains (``train``) or is evaluated (``test``) on: ``given``, or the demo split."""
    if given is not None:
        return Path(given)
    if len(sources) > 1:
        return paired_demo_manifest(model.modalities, sources, split, seed)
    return demo_data(modality_of(model, sources[0]), seed=seed)[split]


def item_tokens(
    model: BindModel, datasets: Mapping[str, EvalDataset], batch_items: int = 32
) -> dict[str, torch.Tensor]:
    """Every item's encoder tokens per source modality: {m: [N, L_m, D_m]} (frozen encoders, eval preprocessing)."""
    out = {}
    model.eval()
    for name, ds in datasets.items():
        paths = [str(item.path) for item in ds.items]
        chunks = []
        for start in range(0, len(paths), batch_items):
            batch = model.preprocess(name, paths[start : start + batch_items]).to(model.device)
            chunks.append(encoder_tokens(model.encoders[name], batch).cpu())
        out[name] = torch.cat(chunks)
    return out


def _schedule(plan: CaptionPlan) -> Callable[[int], float]:
    def factor(step: int) -> float:
        if step < plan.warmup_steps:
            return (step + 1) / plan.warmup_steps
        span = max(plan.steps - plan.warmup_steps, 1)
        return 0.5 * (1 + math.cos(math.pi * min((step - plan.warmup_steps) / span, 1.0)))

    return factor


def _fit(
    captioner: Captioner, tokens: Mapping[str, torch.Tensor], captions: Sequence[Sequence[str]], plan: CaptionPlan
) -> list[float]:
    """The training loop; returns the loss of every step."""
    optimizer = torch.optim.AdamW(captioner.parameters(), lr=plan.lr, weight_decay=plan.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _schedule(plan))
    rng = np.random.default_rng(plan.seed)
    n = len(captions)
    losses = []
    captioner.train()
    for step in range(plan.steps):
        rows = rng.choice(n, size=min(plan.batch_size, n), replace=False)
        texts = [captions[i][rng.integers(len(captions[i]))] for i in rows]
        ids, mask = captioner.encode_text(texts)
        index = torch.as_tensor(rows)
        loss = captioner({m: t[index] for m, t in tokens.items()}, ids, mask)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(captioner.parameters(), 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(float(loss.detach()))
        if (step + 1) % 100 == 0 or step + 1 == plan.steps:
            log.info("captioner step %d/%d  loss %.4f", step + 1, plan.steps, sum(losses[-100:]) / len(losses[-100:]))
    captioner.eval()
    return losses


def train_captioner(plan: CaptionPlan | Mapping[str, Any], *, model: BindModel | None = None) -> Path:
    """Train a caption decoder on a checkpoint's frozen encoders and save it with the checkpoint (the output
    folder: a copy of the checkpoint when ``plan.output`` is another folder). Returns the checkpoint folder."""
    plan = plan if isinstance(plan, CaptionPlan) else CaptionPlan.model_validate(plan)
    source = Path(plan.checkpoint)
    model = model if model is not None else load(source)
    sources = list(plan.decoder.sources)
    for name in sources:
        modality_of(model, name)
    manifest = caption_manifest(model, sources, "train", _demo_seed(source), plan.data)
    datasets = read_eval_manifest(manifest, sources, "retrieval")
    captions = [list(item.captions) for item in next(iter(datasets.values())).items]
    torch.manual_seed(plan.seed)
    tokens = item_tokens(model, datasets, plan.batch_items)
    if plan.decoder.decoder == "random":
        tokenizer = word_tokenizer([c for row in captions for c in row])
    else:
        from transformers import AutoTokenizer  # deferred: transformers takes seconds to import

        tokenizer = AutoTokenizer.from_pretrained(plan.decoder.decoder)
    captioner = Captioner(plan.decoder, {m: t.shape[-1] for m, t in tokens.items()}, tokenizer)
    losses = _fit(captioner, tokens, captions, plan)
    target = Path(plan.output) if plan.output is not None else source
    if target.resolve() != source.resolve():
        shutil.copytree(source, target, dirs_exist_ok=False)
    trained = {"manifest": str(manifest.resolve()), "items": len(captions), "steps": plan.steps,
               "batch_size": plan.batch_size, "lr": plan.lr, "seed": plan.seed, "final_loss": losses[-1]}  # fmt: skip
    save_captioner(target, captioner, {"trained": trained})
    log.info("caption decoder saved in %s (final loss %.4f)", target, losses[-1])
    return target


def _demo_seed(checkpoint: Path) -> int:
    train = read_meta(checkpoint).get("train") or {}
    return int((train.get("config") or {}).get("demo_seed", 0))
