"""Zero-shot evaluation of one checkpoint on one dataset: the runner behind ``lbind eval``.

The data comes from a reader's layout (``dataset_readers()`` of the modality's plugin), an evaluation manifest
(:func:`lbcore.datasets.read_eval_manifest`: plain rows for one modality, or paired rows for *fused* zero-shot and *emergent*
retrieval between two modalities), or the modality's demo test split.

The scores are those of :mod:`lbcore.metrics`; caption and prompt embeddings come from the checkpoint's anchor
through the text-embedding cache (:meth:`BindModel.embed_text`). Every run produces a result card
(:mod:`lbcore.cards`) and what its plot shows (:mod:`lbcore.plot`): the confusion matrix for classification, a
similarity heatmap otherwise.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from lbcore import cards, metrics
from lbcore.checkpoint import read_meta, resolve_checkpoint_dir
from lbcore.datasets import EvalDataset, TaskChoice, read_eval_manifest
from lbcore.demo import demo_data
from lbcore.deprecation import moved_names
from lbcore.embedding import UnreadableInputsError, embed_files
from lbcore.errors import EvaluationError
from lbcore.grouping import fused_features
from lbcore.model import BindModel, load, modality_of
from lbcore.pairdata import paired_demo_manifest
from lbcore.plot import PlotData, shorten

__all__ = [
    "DataSource",
    "EvalResult",
    "Evaluation",
    "EvaluationError",
    "emergent_retrieval",
    "evaluate_checkpoint",
    "read_eval_manifest",
    "zero_shot",
]

PLOT_ITEMS = 48  # heatmaps show at most this many rows / columns
ProgressCallback = Callable[[str, int, int], None]  # (what, done, total)

# Public names that moved out of this module: the old import path works for one release, with a warning.
_MOVED = {
    **dict.fromkeys(metrics.__all__, "lbcore.metrics"),  # every metric lived here
    **dict.fromkeys(
        (
            "CARD_FORMAT",
            "CARD_VERSION",
            "checkpoint_digest",
            "default_card_path",
            "headline",
            "items_digest",
            "write_card",
        ),
        "lbcore.cards",
    ),
    "write_plot": "lbcore.plot",
    "RESERVED_KEYS": "lbcore.manifest",
}


__getattr__ = moved_names(__name__, _MOVED)


@dataclass(frozen=True)
class DataSource:
    """Where the evaluated items came from (for the result card)."""

    reader: str  # a reader name, "manifest", "paired-manifest" or "demo"
    root: Path
    split: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    manifest: Path | None = None


# ---------------------------------------------------------------------------------------------- scoring
@dataclass
class EvalResult:
    """The outcome of one evaluation: its task, the headline metrics and, for fused inputs, each input alone."""

    task: str
    metrics: dict[str, Any]
    per_modality: dict[str, dict[str, Any]]
    templates: dict[str, list[str]]
    num_items: int
    plot: PlotData | None = None
    group: dict[str, Any] | None = None  # grouped evaluation: the group, its fusion, and the logit fusion's metrics


def _templates_for(model: BindModel, modality: str, templates: Sequence[str] | None) -> list[str]:
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
        return metrics.zero_shot_logits(model.embed_text(captions).cpu(), features)
    prototypes = metrics.class_embeddings(lambda texts: model.embed_text(texts).cpu(), dataset.classes, templates)
    return metrics.zero_shot_logits(features, prototypes)


def _metrics(dataset: EvalDataset, scores: torch.Tensor) -> dict[str, Any]:
    if dataset.task == "retrieval":
        _, owner = _caption_index(dataset)
        return {
            **metrics.retrieval_metrics_from_scores(scores, owner),
            "num_items": len(dataset.items),
            "num_captions": len(owner),
        }
    targets = _class_targets(dataset)
    if dataset.task == "multilabel":
        return {**metrics.multilabel_metrics(scores, targets, dataset.classes), "num_classes": len(dataset.classes)}
    out = metrics.classification_metrics(scores, targets, dataset.classes)
    out["mean_class_accuracy"] = sum(out["per_class"].values()) / max(len(out["per_class"]), 1)
    out["num_classes"] = len(dataset.classes)
    out["chance_top1"] = 100.0 / len(dataset.classes)
    return out


def _plot_data(dataset: EvalDataset, scores: torch.Tensor, results: Mapping[str, Any], title: str) -> PlotData:
    if dataset.task == "classification":
        title = f"{title}: top-1 {results['top1']:.1f}%"
        return PlotData(
            "confusion", results["confusion"], list(dataset.classes), list(dataset.classes), title, "predicted", "true"
        )
    names = [item.path.name for item in dataset.items]
    if dataset.task == "multilabel":
        k, c = min(PLOT_ITEMS, scores.shape[0]), min(PLOT_ITEMS, scores.shape[1])
        matrix = (scores[:k, :c] / metrics.LOGIT_SCALE).tolist()
        return PlotData("similarity", matrix, names[:k], list(dataset.classes[:c]), title, "class", "item")
    # Retrieval: the first caption of each of the first items against those items; a bright diagonal is good.
    captions, owner = _caption_index(dataset)
    k = min(PLOT_ITEMS, len(dataset.items))
    first = [int((owner == m).nonzero()[0]) for m in range(k)]
    matrix = (scores[first][:, :k] / metrics.LOGIT_SCALE).tolist()
    return PlotData("similarity", matrix, [shorten(captions[i]) for i in first], names[:k], title, "item", "caption")


def zero_shot(
    model: BindModel,
    datasets: Mapping[str, EvalDataset],
    *,
    templates: Sequence[str] | None = None,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: ProgressCallback | None = None,
    group: bool = False,
) -> EvalResult:
    """Zero-shot classification (or mAP, or retrieval) of each modality's dataset; with two or more aligned
    datasets (a paired manifest) also of the fused inputs: the average of the modalities' logits.

    ``templates`` replaces every modality's own prompt templates. The headline metrics are the fused ones when
    several modalities are given, with each modality alone in ``per_modality``. With ``group``, the headline
    is the group's: its fused embedding (:func:`lbcore.grouping.fused_features`) scored against the prompts of
    every member's templates, with the logit fusion's metrics in ``EvalResult.group``.
    """
    if not datasets:
        raise EvaluationError("zero_shot: no dataset given")
    first = next(iter(datasets.values()))
    for name, ds in datasets.items():
        if len(ds.items) != len(first.items) or ds.task != first.task or ds.classes != first.classes:
            raise EvaluationError(f"{name}: fused datasets must list the same items, task and classes")
    chosen = {name: _templates_for(model, name, templates) for name in datasets}
    per: dict[str, dict[str, Any]] = {}
    logits, features = [], {}
    for name, ds in datasets.items():
        features[name] = _embed_dataset(model, name, ds, batch_size, num_workers, progress)
        scores = _scores(model, ds, features[name], chosen[name])
        logits.append(scores)
        per[name] = _metrics(ds, scores)
    label = "+".join(datasets)
    if len(datasets) == 1:
        scores, results, per = logits[0], per[label], {}
    else:
        scores = metrics.fuse_logits(*logits)
        results = _metrics(first, scores)
    info = None
    if group:
        fused, info = fused_features(model.groups, list(datasets), features)
        chosen["group"] = list(dict.fromkeys(t for name in datasets for t in chosen[name]))
        scores, info["logit_fusion"] = _scores(model, first, fused, chosen["group"]), results
        results = _metrics(first, scores)
    plot = _plot_data(first, scores, results, f"{label} on {first.name}")
    shown = chosen if first.task != "retrieval" else {}
    return EvalResult(first.task, results, per, shown, len(first.items), plot, info)


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
    results = {**metrics.emergent_retrieval_metrics(feats_a, feats_b, a, b), "num_items": len(ds_a.items)}
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
    return EvalResult("emergent_retrieval", results, {}, {}, len(ds_a.items), plot)


# ------------------------------------------------------------------------------------------ checkpoints
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
    train = read_meta(checkpoint).get("train") or {}
    return int((train.get("config") or {}).get("demo_seed", 0))


def _evaluated_modalities(
    checkpoint: Path, meta: Mapping[str, Any], modality: str | None, fuse: str | None, emergent: str | None
) -> list[str]:
    """The evaluated modality (the checkpoint's only one when not named) followed by its fuse/emergent partner."""
    if fuse and emergent:
        raise EvaluationError("choose --fuse or --emergent, not both")
    if modality is None:
        names = list(meta["modalities"])
        if len(names) != 1:
            raise EvaluationError(f"{checkpoint} holds {', '.join(names)}: name the one to evaluate (--modality)")
        modality = names[0]
    partner = fuse or emergent
    if partner == modality:
        raise EvaluationError(f"--fuse/--emergent names {partner!r}, the evaluated modality itself")
    return [modality] + ([partner] if partner else [])


def _group_members(group: Sequence[str] | None, fuse: str | None, emergent: str | None) -> list[str]:
    """The members of a grouped evaluation (none without ``group``); two or more, without fuse or emergent."""
    if group and (len(set(group)) < 2 or fuse or emergent):
        raise EvaluationError("--group needs two or more distinct modalities, without --fuse or --emergent")
    return list(group or [])


def _reader_datasets(
    model: BindModel,
    modality: str,
    dataset: str,
    data_root: str | Path,
    split: str | None,
    reader_options: Mapping[str, Any] | None,
    task: TaskChoice,
) -> tuple[dict[str, EvalDataset], DataSource]:
    """The items of a dataset reader of the modality's plugin, read from ``data_root``."""
    readers = dict(modality_of(model, modality).dataset_readers())
    if dataset not in readers:
        raise EvaluationError(
            f"modality {modality!r} has no dataset reader {dataset!r}; its readers: {', '.join(sorted(readers)) or 'none'}"
        )
    options = dict(reader_options or {})
    if split is not None:
        options["split"] = split
    root = Path(data_root)
    read = _reader_call(readers[dataset], dataset, root, options)
    if task != "auto" and (task == "retrieval") != (read.task == "retrieval"):
        raise EvaluationError(f"dataset {dataset!r} is a {read.task} dataset; it cannot be evaluated as {task}")
    source = DataSource(dataset, root.resolve(), read.split, {k: v for k, v in options.items() if k != "split"})
    return {modality: read}, source


def _datasets(
    model: BindModel,
    checkpoint: Path,
    wanted: list[str],
    task: TaskChoice,
    *,
    emergent: str | None,
    manifest: str | Path | None,
    dataset: str | None,
    data_root: str | Path | None,
    split: str | None,
    reader_options: Mapping[str, Any] | None,
) -> tuple[dict[str, EvalDataset], DataSource]:
    """The evaluated items, per modality, and where they came from: a manifest, a reader, or the demo split."""
    modality, partner = wanted[0], (wanted[1] if len(wanted) > 1 else None)
    if manifest is not None:
        manifest = Path(manifest)
        datasets = read_eval_manifest(manifest, wanted, task, pairs_only=emergent is not None)
        kind = "paired-manifest" if partner is not None else "manifest"
        return datasets, DataSource(kind, manifest.parent.resolve(), manifest.stem, {}, manifest.resolve())
    if partner is not None:
        raise EvaluationError(
            f"--{'emergent' if emergent else 'fuse'} needs a paired manifest (--data): rows with one path per modality, "
            f'e.g. {{"{modality}": "x", "{partner}": "y", "label": "..."}}'
        )
    if dataset is not None and data_root is not None:
        return _reader_datasets(model, modality, dataset, data_root, split, reader_options, task)
    seed = _demo_seed(checkpoint)
    test = demo_data(modality_of(model, modality), seed=seed)["test"]
    datasets = read_eval_manifest(test, [modality], task)
    return datasets, DataSource("demo", test.parent.resolve(), "test", {"seed": seed}, test.resolve())


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
    group: Sequence[str] | None = None,
) -> Evaluation:
    """Evaluate a checkpoint folder and return its result card.

    Data: a reader of the modality's plugin (``dataset`` + ``data_root``, with ``split`` and ``reader_options``
    passed to it), a ``manifest`` (plain or paired, see the module docs), or neither: the modality's demo test
    split. ``fuse=M2``: fused zero-shot of ``modality`` and ``M2`` on a paired manifest; ``emergent=M2``:
    retrieval between the two. ``model`` skips loading when the caller has the checkpoint's model already.
    ``group=[M1, M2, ...]``: grouped evaluation of those modalities (see :func:`zero_shot`) on a paired manifest
    (default: a member's paired demo test split), each member alone and the logit fusion beside it.
    """
    started = time.perf_counter()
    checkpoint = resolve_checkpoint_dir(checkpoint)  # a run folder or hf://org/name[@rev]
    meta = read_meta(checkpoint)
    if dataset is not None and manifest is not None:
        raise EvaluationError("give either --dataset/--data-root or --data, not both")
    if (dataset is None) != (data_root is None):
        raise EvaluationError("--dataset NAME and --data-root DIR go together")
    wanted = _group_members(group, fuse, emergent) or _evaluated_modalities(checkpoint, meta, modality, fuse, emergent)
    digest = cards.checkpoint_digest(checkpoint)
    model = model if model is not None else load(checkpoint)
    for name in wanted:
        modality_of(model, name)
    if group and manifest is None and dataset is None:
        manifest = paired_demo_manifest(model.modalities, wanted, "test", _demo_seed(checkpoint))
    datasets, source = _datasets(
        model, checkpoint, wanted, task, emergent=emergent, manifest=manifest, dataset=dataset,
        data_root=data_root, split=split, reader_options=reader_options,
    )  # fmt: skip
    if emergent:
        result = emergent_retrieval(model, datasets, batch_size=batch_size, num_workers=num_workers, progress=progress)
    else:
        result = zero_shot(
            model, datasets, templates=templates, batch_size=batch_size, num_workers=num_workers, progress=progress,
            group=bool(group),
        )  # fmt: skip
    card = cards.result_card(
        checkpoint, meta, datasets, source, result, modality=wanted[0], fuse=fuse, emergent=emergent, digest=digest,
        batch_size=batch_size, device=str(model.device),
    )  # fmt: skip
    card["time_s"] = round(time.perf_counter() - started, 3)
    return Evaluation(card, result.plot)
