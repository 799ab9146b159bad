"""Zero-shot evaluation: metrics, the dataset-level runner, result cards, plots and the demo benchmark.

The metric functions at the top work on embeddings already computed (L2-normalised), so they can be checked by
hand and reused for any modality pair (text->X, X->text, and emergent X->Y through the shared space).

The runner below them evaluates one checkpoint on one dataset: a reader's layout (``dataset_readers()`` of the
modality's plugin), a manifest, or the modality's demo test split. Manifests for evaluation are JSONL (or CSV)
rows whose media paths are relative to the manifest:

* single modality: ``{"path": "a.wav", "label": "dog"}`` (zero-shot classification over the distinct labels;
  a list of labels makes it multi-label, scored by mAP) or ``{"path": "a.wav", "captions": ["...", "..."]}``
  (retrieval both ways; ``"caption"`` for one). Rows with both are classified unless the task says retrieval.
* paired: one key per modality instead of ``path``, e.g. ``{"video": "a.mp4", "depth": "a.png", "label":
  "kitchen"}``. Row i of every modality is one item seen through several sensors. Such a manifest serves
  *fused* zero-shot (each modality's logits, then their average, as LanguageBind's Table 6) and *emergent*
  retrieval between two modalities that never saw each other in training, only the text anchor (``<a>_to_<b>``:
  the rank of each item's partner among all items of the other modality). Keys that are not a modality of the
  evaluation are ignored.

Class prototypes are the template ensemble (mean of the normalised embeddings of every prompt, normalised) and
logits are 100 x cosine. Caption and prompt embeddings come from the checkpoint's anchor through the text-embedding
cache (:meth:`BindModel.embed_text`). Every run produces a result card (JSON; :func:`evaluate_checkpoint`) and
optionally a PNG plot: the confusion matrix for classification, a similarity heatmap otherwise.
"""

from __future__ import annotations

import csv
import datetime as _dt
import hashlib
import inspect
import io
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import torch
import torch.nn.functional as F

from lbcore.checkpoint import META_FILE, read_meta
from lbcore.datasets import EvalDataset, EvalItem
from lbcore.errors import CheckpointError, LbindError

if TYPE_CHECKING:
    from lbcore.model import BindModel

log = logging.getLogger(__name__)

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


# =================================================================================================================
# The dataset-level runner
# =================================================================================================================

CARD_FORMAT = "lbind-eval-card"
CARD_VERSION = 1
RESERVED_KEYS = frozenset({"path", "label", "labels", "caption", "captions", "id", "split"})
PLOT_ITEMS = 48  # heatmaps show at most this many rows / columns
TaskChoice = Literal["auto", "classification", "retrieval"]
ProgressCallback = Callable[[str, int, int], None]  # (what, done, total)


class EvaluationError(LbindError):
    """An evaluation was asked for something its data or its checkpoint cannot give."""


@dataclass(frozen=True)
class DataSource:
    """Where the evaluated items came from (for the result card)."""

    reader: str  # a reader name, "manifest", "paired-manifest" or "demo"
    root: Path
    split: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    manifest: Path | None = None


# ------------------------------------------------------------------------------------------- manifests
@dataclass
class _Row:
    paths: dict[str, Any]  # column ("" for a single "path") -> path as written
    labels: tuple[str, ...]
    multi: bool  # the label was given as a list
    captions: tuple[str, ...]
    where: str


def _strings(value: Any, key: str, where: str) -> tuple[str, ...]:
    from lbcore.data import ManifestError

    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not items or not all(isinstance(v, str) and v.strip() for v in items):
        raise ManifestError(f"{where}: {key!r} must be a non-empty string or a list of non-empty strings")
    return tuple(items)


def _row(record: Mapping[str, Any], where: str) -> _Row:
    if "path" in record:
        paths: dict[str, Any] = {"": record["path"]}
    else:
        paths = {k: v for k, v in record.items() if k not in RESERVED_KEYS}
    label = record.get("label", record.get("labels"))
    return _Row(
        paths,
        _strings(label, "label", where),
        isinstance(label, list),
        _strings(record.get("captions", record.get("caption")), "captions", where),
        where,
    )


def _read_rows(manifest: Path) -> list[_Row]:
    from lbcore.data import ManifestError

    if not manifest.is_file():
        raise ManifestError(f"{manifest}: manifest not found")
    try:
        text = manifest.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ManifestError(f"{manifest}: cannot read the manifest: {err}") from err
    rows: list[_Row] = []
    if manifest.suffix.lower() == ".csv":
        # One row per caption; rows naming the same media merge their captions (as in training manifests).
        merged: dict[tuple[tuple[str, Any], ...], _Row] = {}
        reader = csv.DictReader(io.StringIO(text, newline=""))
        for lineno, record in enumerate(reader, 2):
            record = {k.strip(): (v or "").strip() for k, v in record.items() if k and (v or "").strip()}
            row = _row(record, f"{manifest}:{lineno}")
            key = tuple(sorted(row.paths.items()))
            if key in merged:
                merged[key].captions += row.captions
            else:
                merged[key] = row
        rows = list(merged.values())
    else:
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ManifestError(f"{manifest}:{lineno}: not valid JSON: {err.msg}") from err
            if not isinstance(record, dict):
                raise ManifestError(f"{manifest}:{lineno}: expected a JSON object")
            rows.append(_row(record, f"{manifest}:{lineno}"))
    if not rows:
        raise ManifestError(f"{manifest}: manifest lists no items")
    return rows


def _listing(wheres: Sequence[str], limit: int = 10) -> str:
    return ", ".join(wheres[:limit]) + (f" and {len(wheres) - limit} more" if len(wheres) > limit else "")


def _resolve_task(rows: Sequence[_Row], task: TaskChoice, manifest: Path) -> str:
    from lbcore.data import ManifestError

    unlabelled = [r.where for r in rows if not r.labels]
    uncaptioned = [r.where for r in rows if not r.captions]
    if task == "auto":
        if not unlabelled:
            task = "classification"
        elif len(unlabelled) == len(rows):
            task = "retrieval"
        else:
            raise ManifestError(
                f"{manifest}: some rows have a 'label' and others do not ({_listing(unlabelled)}); label every row "
                "for classification, or evaluate retrieval over the captions (task 'retrieval')"
            )
    if task == "classification":
        if unlabelled:
            raise ManifestError(
                f"{manifest}: classification needs a 'label' on every row; missing: {_listing(unlabelled)}"
            )
        return "multilabel" if any(r.multi for r in rows) else "classification"
    if task == "retrieval":
        if uncaptioned:
            raise ManifestError(
                f"{manifest}: retrieval needs 'captions' on every row; missing: {_listing(uncaptioned)}"
            )
        return "retrieval"
    raise EvaluationError(f"unknown task {task!r}: expected auto, classification or retrieval")


def read_eval_manifest(
    manifest: str | Path, modalities: Sequence[str], task: TaskChoice = "auto", *, pairs_only: bool = False
) -> dict[str, EvalDataset]:
    """Read an evaluation manifest (see the module docs) into one aligned :class:`EvalDataset` per modality.

    A manifest with a ``path`` per row serves exactly one modality; a paired manifest must have a key for every
    modality asked for. Every media file is checked up front and all missing ones are listed in one error.
    """
    from lbcore.data import ManifestError

    manifest = Path(manifest)
    if not modalities:
        raise EvaluationError("read_eval_manifest: no modality named")
    rows = _read_rows(manifest)
    plain = ["" in r.paths for r in rows]
    if any(plain) and not all(plain):
        raise ManifestError(
            f"{manifest}: mixes rows with a 'path' and paired rows (one key per modality); use one form throughout"
        )
    if all(plain):
        if len(modalities) != 1:
            raise EvaluationError(
                f"{manifest}: rows name one 'path', but {' and '.join(modalities)} need a paired manifest with one "
                f'key per modality, e.g. {{"{modalities[0]}": "x", "{modalities[1]}": "y", "label": "..."}}'
            )
        columns = {modalities[0]: ""}
    else:
        columns = {m: m for m in modalities}
    problems = [
        f"{r.where}: no {m!r} path" if col not in r.paths else f"{r.where}: {m!r} is not a path string"
        for r in rows
        for m, col in columns.items()
        if not isinstance(r.paths.get(col), str) or not r.paths[col].strip()
    ]
    if problems:
        raise ManifestError(f"{manifest}: {len(problems)} problem(s): " + "; ".join(problems[:10]))
    resolved = "retrieval" if pairs_only else _resolve_task(rows, task, manifest)
    base = manifest.parent
    wanted = sorted({os.path.normpath(base / r.paths[c]) for r in rows for c in columns.values()})
    missing = [p for p in wanted if not Path(p).is_file()]
    if missing:
        shown = "\n  ".join(missing[:50]) + (f"\n  ... and {len(missing) - 50} more" if len(missing) > 50 else "")
        raise ManifestError(f"{manifest}: {len(missing)} media file(s) missing:\n  {shown}")
    classes = sorted({label for r in rows for label in r.labels}) if resolved != "retrieval" else []
    out = {}
    for modality, col in columns.items():
        items = [
            EvalItem(
                Path(os.path.normpath(base / r.paths[col])),
                r.labels if resolved != "retrieval" else (),
                r.captions,
            )
            for r in rows
        ]
        out[modality] = EvalDataset(manifest.name, base, resolved, items, classes, split=manifest.stem)  # type: ignore[arg-type]
    return out


# ---------------------------------------------------------------------------------------------- scoring
@dataclass
class PlotData:
    """What a result plot shows: a confusion matrix (counts) or a similarity heatmap (cosines)."""

    kind: Literal["confusion", "similarity"]
    matrix: list[list[float]]
    rows: list[str]
    cols: list[str]
    title: str
    xlabel: str
    ylabel: str


@dataclass
class EvalResult:
    """The outcome of one evaluation: its task, the headline metrics and, for fused inputs, each input alone."""

    task: str
    metrics: dict[str, Any]
    per_modality: dict[str, dict[str, Any]]
    templates: dict[str, list[str]]
    num_items: int
    plot: PlotData | None = None


def _templates_for(model: BindModel, modality: str, templates: Sequence[str] | None) -> list[str]:
    from lbcore.embedding import modality_of

    chosen = list(templates) if templates else list(modality_of(model, modality).templates)
    bad = [t for t in chosen if "{}" not in t]
    if bad:
        raise EvaluationError(f"template(s) without a '{{}}' for the class name: {bad}")
    return chosen


def _embed_dataset(
    model: BindModel,
    modality: str,
    dataset: EvalDataset,
    batch_size: int,
    num_workers: int | None,
    progress: ProgressCallback | None,
) -> torch.Tensor:
    """[N, E] embeddings of every item, in order; any unreadable file stops the evaluation (listing them all)."""
    from lbcore.embedding import UnreadableInputsError, embed_files

    paths = [str(item.path) for item in dataset.items]
    report = None if progress is None else (lambda done, total: progress(f"embedding {modality}", done, total))
    out = embed_files(model, modality, paths, batch_size=batch_size, num_workers=num_workers, progress=report)
    if out.failures:
        raise UnreadableInputsError(
            {paths[i]: reason for i, reason in sorted(out.failures.items())},
            f"{dataset.name} ({modality}): evaluation needs every item",
        )
    return out.embeddings


def _class_targets(dataset: EvalDataset) -> torch.Tensor:
    """Class indices [N] (classification) or multi-hot [N, C] (multilabel)."""
    index = {c: i for i, c in enumerate(dataset.classes)}
    unknown = sorted({label for item in dataset.items for label in item.labels if label not in index})
    if unknown:
        raise EvaluationError(f"{dataset.root}: {dataset.name}: labels {unknown[:10]} are not among its classes")
    if dataset.task == "multilabel":
        targets = torch.zeros(len(dataset.items), len(dataset.classes), dtype=torch.long)
        for n, item in enumerate(dataset.items):
            targets[n, [index[label] for label in item.labels]] = 1
        return targets
    several = [str(item.path) for item in dataset.items if len(item.labels) != 1]
    if several:
        raise EvaluationError(
            f"{dataset.name}: single-label classification, but items have 0 or 2+ labels: {several[:5]}"
        )
    return torch.tensor([index[item.labels[0]] for item in dataset.items])


def _caption_index(dataset: EvalDataset) -> tuple[list[str], torch.Tensor]:
    """Every caption (item order) and the index of its item [T]."""
    captions = [c for item in dataset.items for c in item.captions]
    owner = [m for m, item in enumerate(dataset.items) for _ in item.captions]
    missing = [str(item.path) for item in dataset.items if not item.captions]
    if missing:
        raise EvaluationError(f"{dataset.name}: retrieval needs captions on every item; none for {missing[:5]}")
    return captions, torch.tensor(owner, dtype=torch.long)


def _scores(model: BindModel, dataset: EvalDataset, features: torch.Tensor, templates: list[str]) -> torch.Tensor:
    """Logits = 100 x cosine: [N, C] items x classes, or [T, N] captions x items for retrieval."""
    features = features.float().cpu()
    if dataset.task == "retrieval":
        captions, _ = _caption_index(dataset)
        return zero_shot_logits(model.embed_text(captions).cpu(), features)
    prototypes = class_embeddings(lambda texts: model.embed_text(texts).cpu(), dataset.classes, templates)
    return zero_shot_logits(features, prototypes)


def _metrics(dataset: EvalDataset, scores: torch.Tensor) -> dict[str, Any]:
    if dataset.task == "retrieval":
        _, owner = _caption_index(dataset)
        return {
            **retrieval_metrics_from_scores(scores, owner),
            "num_items": len(dataset.items),
            "num_captions": len(owner),
        }
    targets = _class_targets(dataset)
    if dataset.task == "multilabel":
        return {**multilabel_metrics(scores, targets, dataset.classes), "num_classes": len(dataset.classes)}
    out = classification_metrics(scores, targets, dataset.classes)
    out["mean_class_accuracy"] = sum(out["per_class"].values()) / max(len(out["per_class"]), 1)
    out["num_classes"] = len(dataset.classes)
    out["chance_top1"] = 100.0 / len(dataset.classes)
    return out


def _short(text: str, width: int = 40) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _plot_data(dataset: EvalDataset, scores: torch.Tensor, metrics: Mapping[str, Any], title: str) -> PlotData:
    if dataset.task == "classification":
        title = f"{title}: top-1 {metrics['top1']:.1f}%"
        return PlotData(
            "confusion", metrics["confusion"], list(dataset.classes), list(dataset.classes), title, "predicted", "true"
        )
    names = [item.path.name for item in dataset.items]
    if dataset.task == "multilabel":
        k, c = min(PLOT_ITEMS, scores.shape[0]), min(PLOT_ITEMS, scores.shape[1])
        matrix = (scores[:k, :c] / LOGIT_SCALE).tolist()
        return PlotData("similarity", matrix, names[:k], list(dataset.classes[:c]), title, "class", "item")
    # Retrieval: the first caption of each of the first items against those items; a bright diagonal is good.
    captions, owner = _caption_index(dataset)
    k = min(PLOT_ITEMS, len(dataset.items))
    first = [int((owner == m).nonzero()[0]) for m in range(k)]
    matrix = (scores[first][:, :k] / LOGIT_SCALE).tolist()
    return PlotData("similarity", matrix, [_short(captions[i]) for i in first], names[:k], title, "item", "caption")


def zero_shot(
    model: BindModel,
    datasets: Mapping[str, EvalDataset],
    *,
    templates: Sequence[str] | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> EvalResult:
    """Zero-shot classification (or mAP, or retrieval) of each modality's dataset; with two or more aligned
    datasets (a paired manifest) also of the fused inputs: the average of the modalities' logits.

    ``templates`` replaces every modality's own prompt templates. The headline metrics are the fused ones when
    several modalities are given, with each modality alone in ``per_modality``.
    """
    if not datasets:
        raise EvaluationError("zero_shot: no dataset given")
    first = next(iter(datasets.values()))
    for name, ds in datasets.items():
        if len(ds.items) != len(first.items) or ds.task != first.task or ds.classes != first.classes:
            raise EvaluationError(f"{name}: fused datasets must list the same items, task and classes")
    chosen = {name: _templates_for(model, name, templates) for name in datasets}
    per: dict[str, dict[str, Any]] = {}
    logits = []
    for name, ds in datasets.items():
        features = _embed_dataset(model, name, ds, batch_size, num_workers, progress)
        scores = _scores(model, ds, features, chosen[name])
        logits.append(scores)
        per[name] = _metrics(ds, scores)
    label = "+".join(datasets)
    if len(datasets) == 1:
        scores, metrics, per = logits[0], per[label], {}
    else:
        scores = fuse_logits(*logits)
        metrics = _metrics(first, scores)
    plot = _plot_data(first, scores, metrics, f"{label} on {first.name}")
    shown = chosen if first.task != "retrieval" else {}
    return EvalResult(first.task, metrics, per, shown, len(first.items), plot)


def emergent_retrieval(
    model: BindModel,
    datasets: Mapping[str, EvalDataset],
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> EvalResult:
    """Retrieval between exactly two modalities through the shared space; their datasets are aligned by row."""
    if len(datasets) != 2:
        raise EvaluationError(f"emergent retrieval needs two modalities, got {', '.join(datasets) or 'none'}")
    (a, ds_a), (b, ds_b) = datasets.items()
    if len(ds_a.items) != len(ds_b.items):
        raise EvaluationError(f"{a} and {b}: paired datasets differ in length")
    feats_a = _embed_dataset(model, a, ds_a, batch_size, num_workers, progress)
    feats_b = _embed_dataset(model, b, ds_b, batch_size, num_workers, progress)
    metrics = {**emergent_retrieval_metrics(feats_a, feats_b, a, b), "num_items": len(ds_a.items)}
    k = min(PLOT_ITEMS, len(ds_a.items))
    sim = F.normalize(feats_a[:k].float(), dim=-1) @ F.normalize(feats_b[:k].float(), dim=-1).t()  # [k, k]
    plot = PlotData(
        "similarity",
        sim.tolist(),
        [i.path.name for i in ds_a.items[:k]],
        [i.path.name for i in ds_b.items[:k]],
        f"{a} vs {b} on {ds_a.name}",
        b,
        a,
    )
    return EvalResult("emergent_retrieval", metrics, {}, {}, len(ds_a.items), plot)


# ------------------------------------------------------------------------------------------ result cards
def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_digest(directory: str | Path) -> dict[str, Any]:
    """``{"sha256": ..., "files": {name: sha256}}`` of a checkpoint's ``*.safetensors`` files. The checkpoint's
    sha256 is that of the lines ``<file name>\\0<file sha256>\\n`` in name order, so it changes with any weight;
    for adapter-only modalities the recorded base-weight hashes are folded in (``bases``)."""
    directory = Path(directory)
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise CheckpointError(f"{directory}: no .safetensors weights to hash (is this a checkpoint folder?)")
    per_file = {f.name: _file_sha256(f) for f in files}
    lines = [f"{name}\0{sha}\n" for name, sha in per_file.items()]
    # an adapter-only modality is only defined together with its base weights: fold their hashes in too
    bases = {}
    if (directory / META_FILE).is_file():
        for name, spec in sorted(read_meta(directory)["modalities"].items()):
            if isinstance(spec.get("base"), dict) and spec["base"].get("sha256"):
                bases[name] = spec["base"]["sha256"]
                lines.append(f"base:{name}\0{bases[name]}\n")
    combined = hashlib.sha256("".join(lines).encode())
    out: dict[str, Any] = {"sha256": combined.hexdigest(), "files": per_file}
    if bases:
        out["bases"] = bases
    return out


def _relative(path: Path, root: Path) -> str:
    try:
        return Path(os.path.relpath(path, root)).as_posix() if path.is_relative_to(root) else path.as_posix()
    except ValueError:  # another drive on Windows
        return path.as_posix()


def items_digest(datasets: Mapping[str, EvalDataset]) -> str:
    """sha256 of the item list: per row, each modality's path relative to its dataset root, the labels and the
    captions. The same items under another root hash alike; any change of file, order, label or caption shows."""
    columns = list(datasets.values())
    rows = []
    for n, item in enumerate(columns[0].items):
        paths = [_relative(ds.items[n].path, ds.root) for ds in columns]
        rows.append([paths, list(item.labels), list(item.captions)])
    return hashlib.sha256(json.dumps(rows, ensure_ascii=False).encode("utf-8")).hexdigest()


@dataclass
class Evaluation:
    """A finished evaluation: its result card (JSON-ready) and what its plot shows."""

    card: dict[str, Any]
    plot: PlotData | None = None


def _reader_call(reader: Callable[..., Any], name: str, root: Path, options: Mapping[str, Any]) -> EvalDataset:
    try:
        inspect.signature(reader).bind(root, **options)
    except TypeError as err:
        accepted = [p for p in inspect.signature(reader).parameters][1:]
        raise EvaluationError(
            f"dataset reader {name!r}: {err}; its options are: {', '.join(accepted) or 'none'}"
        ) from err
    dataset = reader(root, **options)
    if not isinstance(dataset, EvalDataset):
        raise EvaluationError(f"dataset reader {name!r} returned a {type(dataset).__name__}, not an EvalDataset")
    return dataset


def _demo_seed(checkpoint: Path) -> int:
    from lbcore.checkpoint import read_meta

    train = read_meta(checkpoint).get("train") or {}
    return int((train.get("config") or {}).get("demo_seed", 0))


def evaluate_checkpoint(
    checkpoint: str | Path,
    modality: str | None = None,
    *,
    dataset: str | None = None,
    data_root: str | Path | None = None,
    manifest: str | Path | None = None,
    split: str | None = None,
    reader_options: Mapping[str, Any] | None = None,
    task: TaskChoice = "auto",
    fuse: str | None = None,
    emergent: str | None = None,
    templates: Sequence[str] | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: ProgressCallback | None = None,
    model: BindModel | None = None,
) -> Evaluation:
    """Evaluate a checkpoint folder and return its result card.

    Data: a reader of the modality's plugin (``dataset`` + ``data_root``, with ``split`` and ``reader_options``
    passed to it), a ``manifest`` (plain or paired, see the module docs), or neither: the modality's demo test
    split. ``fuse=M2``: fused zero-shot of ``modality`` and ``M2`` on a paired manifest; ``emergent=M2``:
    retrieval between the two. ``model`` skips loading when the caller has the checkpoint's model already.
    """
    from lbcore import __version__
    from lbcore.checkpoint import read_meta
    from lbcore.embedding import modality_of
    from lbcore.model import load

    started = time.perf_counter()
    checkpoint = Path(checkpoint)
    meta = read_meta(checkpoint)
    if dataset is not None and manifest is not None:
        raise EvaluationError("give either --dataset/--data-root or --data, not both")
    if (dataset is None) != (data_root is None):
        raise EvaluationError("--dataset NAME and --data-root DIR go together")
    if fuse and emergent:
        raise EvaluationError("choose --fuse or --emergent, not both")
    if modality is None:
        names = list(meta["modalities"])
        if len(names) != 1:
            raise EvaluationError(f"{checkpoint} holds {', '.join(names)}: name the one to evaluate (--modality)")
        modality = names[0]
    partner = fuse or emergent
    wanted = [modality] + ([partner] if partner else [])
    if partner == modality:
        raise EvaluationError(f"--fuse/--emergent names {partner!r}, the evaluated modality itself")
    digest = checkpoint_digest(checkpoint)
    model = model if model is not None else load(checkpoint)
    for name in wanted:
        modality_of(model, name)

    if manifest is not None:
        manifest = Path(manifest)
        datasets = read_eval_manifest(manifest, wanted, task, pairs_only=emergent is not None)
        kind = "paired-manifest" if partner is not None else "manifest"
        source = DataSource(kind, manifest.parent.resolve(), manifest.stem, {}, manifest.resolve())
    elif partner is not None:
        raise EvaluationError(
            f"--{'fuse' if fuse else 'emergent'} needs a paired manifest (--data): rows with one path per modality, "
            f'e.g. {{"{modality}": "x", "{partner}": "y", "label": "..."}}'
        )
    elif dataset is not None:
        readers = dict(modality_of(model, modality).dataset_readers())
        if dataset not in readers:
            raise EvaluationError(
                f"modality {modality!r} has no dataset reader {dataset!r}; its readers: {', '.join(sorted(readers)) or 'none'}"
            )
        options = dict(reader_options or {})
        if split is not None:
            options["split"] = split
        root = Path(data_root)  # type: ignore[arg-type]
        read = _reader_call(readers[dataset], dataset, root, options)
        if task != "auto" and (task == "retrieval") != (read.task == "retrieval"):
            raise EvaluationError(f"dataset {dataset!r} is a {read.task} dataset; it cannot be evaluated as {task}")
        datasets = {modality: read}
        source = DataSource(dataset, root.resolve(), read.split, {k: v for k, v in options.items() if k != "split"})
    else:
        from lbcore.demo import demo_data

        seed = _demo_seed(checkpoint)
        test = demo_data(modality_of(model, modality), seed=seed)["test"]
        datasets = read_eval_manifest(test, [modality], task)
        source = DataSource("demo", test.parent.resolve(), "test", {"seed": seed}, test.resolve())

    if emergent:
        result = emergent_retrieval(model, datasets, batch_size=batch_size, num_workers=num_workers, progress=progress)
    else:
        result = zero_shot(
            model, datasets, templates=templates, batch_size=batch_size, num_workers=num_workers, progress=progress
        )
    first = next(iter(datasets.values()))
    card: dict[str, Any] = {
        "format": CARD_FORMAT,
        "format_version": CARD_VERSION,
        "lbind_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "checkpoint": {"path": str(checkpoint.resolve()), **digest},
        "anchor": {"name": meta["anchor"].get("name"), "fingerprint": meta["anchor"].get("fingerprint")},
        "modality": modality,
        "fuse": fuse,
        "emergent": emergent,
        "task": result.task,
        "dataset": {
            "reader": source.reader,
            "name": first.name,
            "root": str(source.root),
            "manifest": str(source.manifest) if source.manifest else None,
            "split": source.split,
            "options": source.options,
            "num_items": result.num_items,
            "items_sha256": items_digest(datasets),
            "classes": list(first.classes),
        },
        "templates": result.templates,
        "metrics": result.metrics,
        "metrics_per_modality": result.per_modality,
        "batch_size": batch_size,
        "device": str(model.device),
        "time_s": round(time.perf_counter() - started, 3),
    }
    return Evaluation(card, result.plot)


def default_card_path(checkpoint: str | Path, card: Mapping[str, Any]) -> Path:
    """``<checkpoint's parent>/eval/<modality>[+fuse | -emergent]-<reader>[-<split>].json``."""
    name = card["modality"]
    if card.get("fuse"):
        name += f"+{card['fuse']}"
    if card.get("emergent"):
        name += f"-{card['emergent']}"
    data = card["dataset"]
    name += f"-{data['reader']}" + (f"-{data['split']}" if data.get("split") else "")
    safe = "".join(c if c.isalnum() or c in "+-_." else "_" for c in name)
    return Path(checkpoint).resolve().parent / "eval" / f"{safe}.json"


def write_card(card: Mapping[str, Any], path: str | Path) -> Path:
    """Write a result card as indented JSON (atomically)."""
    from lbcore.checkpoint import write_json

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, dict(card))
    return path


def write_plot(plot: PlotData, path: str | Path) -> Path:
    """Render ``plot`` as a PNG with matplotlib (no pyplot: no global state, no display needed)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as err:
        raise EvaluationError("plots need matplotlib: `pip install matplotlib`, or evaluate without a plot") from err
    import numpy as np

    path = Path(path)
    matrix = np.asarray(plot.matrix, dtype=float)
    rows, cols = matrix.shape
    width = min(max(5.0, 0.3 * cols + 3.0), 24.0)
    height = min(max(4.0, 0.3 * rows + 2.5), 24.0)
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    confusion = plot.kind == "confusion"
    image = ax.imshow(matrix, cmap="Blues" if confusion else "viridis", aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, shrink=0.8, label="items" if confusion else "cosine similarity")
    if cols <= 60:
        ax.set_xticks(range(cols), labels=[_short(c, 30) for c in plot.cols], rotation=90, fontsize=7)
    if rows <= 60:
        ax.set_yticks(range(rows), labels=[_short(r, 40) for r in plot.rows], fontsize=7)
    if confusion and rows <= 25:
        peak = matrix.max() or 1.0
        for (i, j), value in np.ndenumerate(matrix):
            if value:
                ax.text(j, i, f"{int(value)}", ha="center", va="center", fontsize=7,
                        color="white" if value > peak / 2 else "black")  # fmt: skip
    ax.set_xlabel(plot.xlabel)
    ax.set_ylabel(plot.ylabel)
    ax.set_title(plot.title, fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def headline(card: Mapping[str, Any]) -> dict[str, float]:
    """The few numbers a table shows for a card: top-1/top-5 (classification), mAP, or R@1/R@5/R@10 both ways."""
    metrics = card["metrics"]
    task = card["task"]
    if task == "classification":
        keys = ["top1", "top5", "mean_class_accuracy", "chance_top1"]
    elif task == "multilabel":
        keys = ["mAP"]
    else:
        keys = [k for k in metrics if "_R@" in k or k.endswith("median_rank")]
    return {k: float(metrics[k]) for k in keys if k in metrics}


# =================================================================================================================
# The demo benchmark: train every modality's demo preset on its demo data, evaluate on the held-out split
# =================================================================================================================

DEMO_MIN_TOP1 = 80.0


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(float(value), 2)


def _has_demo_data(cls: type) -> bool:
    from lbcore.modality import Modality

    return getattr(cls, "make_demo_data", None) is not Modality.make_demo_data


def _stale_run(run_dir: Path, name: str, plan: Any) -> bool:
    """True when the demo run in ``run_dir`` was trained with another config or anchor than ``plan`` (e.g. the
    plugin's demo preset changed since): it cannot be resumed and is retrained from scratch."""
    from lbcore.checkpoint import find_latest, read_meta

    latest = find_latest(run_dir)
    if latest is None:
        return False
    meta = read_meta(latest)
    saved = (meta["modalities"].get(name) or {}).get("config")
    anchor = (meta["anchor"].get("config") or {}).get("name")
    stale = saved != plan.modalities[name].model_dump(mode="json") or anchor != plan.anchor.name
    if stale:
        log.warning("%s: trained with another %s config or anchor than now; training it again", latest, name)
    return stale


def run_demo(
    modalities: Sequence[str] | None = None,
    output: str | Path = "runs/demo",
    *,
    config: Mapping[str, Any] | None = None,
    min_top1: float = DEMO_MIN_TOP1,
    fresh: bool = False,
    plots: bool = True,
    num_workers: int | None = None,
    train_progress: Callable[[str, Any], None] | None = None,
    eval_progress: ProgressCallback | None = None,
    on_result: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Train each modality's ``demo`` preset on its demo dataset, evaluate it zero-shot on the held-out demo split
    and write ``<output>/summary.json`` (returned). Runs live in ``<output>/<modality>`` with their result card
    ``eval.json`` (and ``eval.png``). An earlier run in the same folder is resumed (a finished one is only
    re-evaluated) unless ``fresh`` or its config differs from today's (then it is trained again). ``config``: a run config whose ``anchor``, ``train`` and per-modality
    ``modalities`` sections apply to every run. A modality whose training or evaluation fails is recorded with its
    error and the others still run; one below ``min_top1`` is marked ``below bar``.
    """
    from lbcore import __version__
    from lbcore.checkpoint import read_meta, write_json
    from lbcore.plugins import default_registry
    from lbcore.runconfig import resolve_config
    from lbcore.trainer import train

    started = time.perf_counter()
    output = Path(output)
    registry = default_registry().load()
    names = list(modalities) if modalities else registry.modality_names()
    config = dict(config or {})
    unknown = sorted(set(config.get("modalities") or {}) - set(names))
    if unknown:
        raise EvaluationError(f"the demo config has settings for {', '.join(unknown)}, which this demo does not run")
    rows: list[dict[str, Any]] = []
    for name in names:
        cls = registry.registered(name).cls
        row: dict[str, Any] = {"modality": name, "status": "skipped", "top1": None, "top5": None}
        if not _has_demo_data(cls):
            row["error"] = "the plugin has no demo dataset generator"
            rows.append(row)
            if on_result is not None:
                on_result(row)
            continue
        run_dir = output / name
        spec = dict((config.get("modalities") or {}).get(name) or {})
        spec.setdefault("preset", "demo")
        plan = resolve_config(
            {
                "anchor": config.get("anchor") or {},
                "modalities": {name: spec},
                "train": {**(config.get("train") or {}), "output_dir": str(run_dir), "resume": True},
            },
            source="lbind demo",
        )
        if run_dir.exists() and (fresh or _stale_run(run_dir, name, plan)):
            shutil.rmtree(run_dir)
        try:
            t0 = time.perf_counter()
            final = train(plan, progress=None if train_progress is None else (lambda e, n=name: train_progress(n, e)))
            row["train_s"] = round(time.perf_counter() - t0, 2)
            row["steps"] = (read_meta(final).get("train") or {}).get("step")
            t0 = time.perf_counter()
            evaluation = evaluate_checkpoint(final, name, num_workers=num_workers, progress=eval_progress)
            row["eval_s"] = round(time.perf_counter() - t0, 2)
        except (LbindError, NotImplementedError) as err:
            log.error("demo %s failed: %s", name, err)
            row.update(status="failed", error=f"{type(err).__name__}: {err}")
            rows.append(row)
            if on_result is not None:
                on_result(row)
            continue
        card = evaluation.card
        card_path = write_card(card, run_dir / "eval.json")
        if plots and evaluation.plot is not None:
            row["plot"] = str(write_plot(evaluation.plot, run_dir / "eval.png"))
        metrics = card["metrics"]
        row.update(
            top1=_rounded(metrics.get("top1")),
            top5=_rounded(metrics.get("top5")),
            chance=_rounded(metrics.get("chance_top1")),
            classes=metrics.get("num_classes"),
            test_items=card["dataset"]["num_items"],
            checkpoint=str(final),
            card=str(card_path),
        )
        passed = card["task"] == "classification" and metrics["top1"] >= min_top1
        row["status"] = "ok" if passed else "below bar"
        rows.append(row)
        if on_result is not None:
            on_result(row)
    summary = {
        "lbind_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "min_top1": min_top1,
        "modalities": rows,
        "passed": all(r["status"] in ("ok", "skipped") for r in rows) and any(r["status"] == "ok" for r in rows),
        "total_s": round(time.perf_counter() - started, 2),
    }
    output.mkdir(parents=True, exist_ok=True)
    write_json(output / "summary.json", summary)
    return summary
