"""Pure zero-shot and retrieval metrics on embeddings already computed.

Every function here works on tensors only (no model, no files), so it can be checked by hand and reused for any
modality pair: text->X, X->text, and emergent X->Y through the shared space. Class prototypes are the template
ensemble (mean of the normalised embeddings of every prompt, normalised again) and logits are 100 x cosine.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "LOGIT_SCALE",
    "average_precision",
    "class_embeddings",
    "classification_metrics",
    "emergent_retrieval_metrics",
    "fuse_logits",
    "multilabel_metrics",
    "retrieval_metrics",
    "retrieval_metrics_from_scores",
    "zero_shot_logits",
]

LOGIT_SCALE = 100.0  # zero-shot logits are 100 x cosine, as in CLIP and LanguageBind


def class_embeddings(
    embed_text: Callable[[list[str]], torch.Tensor], classes: Sequence[str], templates: Sequence[str]
) -> torch.Tensor:
    """Template ensembling: per class, the mean of the normalised embeddings of every filled-in template,
    normalised again. -> [C, E]."""
    prompts = [t.format(c) for c in classes for t in templates]
    emb = F.normalize(embed_text(prompts).float(), dim=-1)  # [C * T, E]
    emb = emb.view(len(classes), len(templates), -1).mean(1)  # [C, T, E] -> [C, E]
    return F.normalize(emb, dim=-1)


def zero_shot_logits(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """[N, E] x [C, E] -> [N, C] logits = 100 x cosine (both sides normalised here)."""
    return LOGIT_SCALE * F.normalize(features.float(), dim=-1) @ F.normalize(prototypes.float(), dim=-1).t()


def fuse_logits(*logits: torch.Tensor) -> torch.Tensor:
    """Fused inputs (LanguageBind Table 6): the average of several modalities' logits for the same items."""
    return torch.stack(logits).mean(0)


def classification_metrics(logits: torch.Tensor, targets: torch.Tensor, classes: Sequence[str]) -> dict:
    """Top-1 / top-5 accuracy (%), per-class accuracy (%) and the confusion matrix (rows: truth)."""
    n, c = logits.shape
    if targets.shape != (n,):
        raise ValueError(f"targets must be [N]={n}, got {tuple(targets.shape)}")
    order = logits.argsort(dim=1, descending=True)  # [N, C]
    hit = order == targets[:, None]
    top1 = hit[:, :1].any(1).float()
    top5 = hit[:, : min(5, c)].any(1).float()
    confusion = torch.zeros(c, c, dtype=torch.long)
    confusion.index_put_((targets, order[:, 0]), torch.ones(n, dtype=torch.long), accumulate=True)
    per_class = {}
    for i, name in enumerate(classes):
        mask = targets == i
        if mask.any():
            per_class[name] = 100.0 * top1[mask].mean().item()
    return {
        "top1": 100.0 * top1.mean().item(),
        "top5": 100.0 * top5.mean().item(),
        "per_class": per_class,
        "confusion": confusion.tolist(),
        "num_items": n,
    }


def average_precision(scores: torch.Tensor, positives: torch.Tensor) -> float:
    """AP of one class: mean over its positives of the precision at each positive's rank (ties broken by order)."""
    order = scores.argsort(descending=True)
    rel = positives[order].float()
    if rel.sum() == 0:
        raise ValueError("average precision is undefined for a class without positives")
    precision_at_k = rel.cumsum(0) / torch.arange(1, rel.numel() + 1)
    return (precision_at_k * rel).sum().item() / rel.sum().item()


def multilabel_metrics(scores: torch.Tensor, targets: torch.Tensor, classes: Sequence[str]) -> dict:
    """mAP (%) over the classes that have at least one positive; ``targets`` is multi-hot [N, C]."""
    aps = {
        classes[i]: 100.0 * average_precision(scores[:, i], targets[:, i].bool())
        for i in range(scores.shape[1])
        if targets[:, i].any()
    }
    return {"mAP": sum(aps.values()) / max(len(aps), 1), "per_class_ap": aps, "num_items": scores.shape[0]}


def _rank_metrics(ranks: torch.Tensor, prefix: str) -> dict:
    ranks = ranks.float()
    out = {f"{prefix}_R@{k}": 100.0 * (ranks <= k).float().mean().item() for k in (1, 5, 10)}
    out[f"{prefix}_median_rank"] = ranks.median().item()
    out[f"{prefix}_mean_rank"] = ranks.mean().item()
    return out


def retrieval_metrics(text: torch.Tensor, items: torch.Tensor, caption_item: torch.Tensor) -> dict:
    """Retrieval both ways with several captions per item.

    ``text`` [T, E] caption embeddings, ``items`` [M, E] media embeddings, ``caption_item`` [T] the index of
    each caption's item. text->item: the rank (1-based) of each caption's item among all items.
    item->text: for each item, the best rank among its captions over all captions. Embeddings are normalised
    before ranking (upstream ranked unnormalised ones).
    """
    sim = F.normalize(text.float(), dim=-1) @ F.normalize(items.float(), dim=-1).t()  # [T, M]
    return retrieval_metrics_from_scores(sim, caption_item)


def retrieval_metrics_from_scores(scores: torch.Tensor, caption_item: torch.Tensor) -> dict:
    """:func:`retrieval_metrics` on a score matrix [T, M] (caption x item; higher is closer), e.g. the average of
    two modalities' logits for fused inputs. Ties count in the item's favour (strictly higher scores only)."""
    sim = scores.float()
    t2i_target = sim.gather(1, caption_item[:, None])  # [T, 1]
    t2i_ranks = (sim > t2i_target).sum(1) + 1  # items scored strictly higher, +1
    sim_t = sim.t()  # [M, T]
    num_items = sim.shape[1]
    i2t_ranks = torch.empty(num_items, dtype=torch.long)
    for m in range(num_items):
        own = (caption_item == m).nonzero().flatten()
        if own.numel() == 0:
            raise ValueError(f"item {m} has no caption")
        best = sim_t[m, own].max()
        i2t_ranks[m] = (sim_t[m] > best).sum() + 1
    return {**_rank_metrics(t2i_ranks, "text_to_item"), **_rank_metrics(i2t_ranks, "item_to_text")}


def emergent_retrieval_metrics(a: torch.Tensor, b: torch.Tensor, a_name: str, b_name: str) -> dict:
    """Retrieval between two modalities through the shared space: row i of ``a`` [N, E] and of ``b`` [N, E] are
    one pair. ``<a>_to_<b>``: the rank of each item's partner among all of ``b``; ``<b>_to_<a>`` the reverse."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"paired embeddings differ in length: {a.shape[0]} {a_name} vs {b.shape[0]} {b_name}")
    sim = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).t()  # [N, N]
    pair = torch.arange(a.shape[0])
    out = retrieval_metrics_from_scores(sim, pair)  # one "caption" (row of a) per item (row of b)
    renamed = {}
    for key, value in out.items():
        key = key.replace("text_to_item", f"{a_name}_to_{b_name}").replace("item_to_text", f"{b_name}_to_{a_name}")
        renamed[key] = value
    return renamed
