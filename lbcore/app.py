"""The web app (``lbind app``): LanguageBind's interactive demo as a local page, for every installed modality.

:class:`AppSession` loads one or more checkpoints once (by default the demo checkpoints ``runs/demo/<modality>/final``
that ``lbind demo`` writes: single-modality models that share one anchor) and answers the page's questions with
the same library calls as the command line: text x media similarity (:func:`lbcore.embedding.media_similarity`,
the numbers of ``lbind similarity``), zero-shot classification (:func:`lbcore.evaluate.class_embeddings`, the
modality's prompt templates averaged), media x media similarity through the shared space, and what the
checkpoints hold. Text embeddings come from the anchor's text-embedding cache; each anchor is loaded at most
once, on the first text it has not seen. :func:`start` serves the page (built by :mod:`lbcore.appview`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from lbcore.cards import CARD_FORMAT
from lbcore.checkpoint import FINAL_NAME, META_FILE, read_meta
from lbcore.embedding import media_similarity
from lbcore.errors import CheckpointError, ConfigError, InputError, ModalityNotFoundError
from lbcore.metrics import LOGIT_SCALE, class_embeddings, zero_shot_logits
from lbcore.model import load

if TYPE_CHECKING:
    from lbcore.modality import Modality
    from lbcore.model import BindModel

log = logging.getLogger(__name__)

__all__ = [
    "DEMO_ROOT",
    "MAX_FILE_SIZE",
    "WIDGETS",
    "AppSession",
    "Loaded",
    "RankedLabel",
    "SimilarityResult",
    "demo_checkpoints",
    "find_cards",
    "split_lines",
]

DEMO_ROOT = Path("runs/demo")
MAX_FILE_SIZE = 200 * 1024 * 1024  # bytes per uploaded file
WIDGETS = ("audio", "video", "image", "file")  # the values of Modality.widget the page knows


def demo_checkpoints(root: str | Path = DEMO_ROOT) -> list[Path]:
    """The demo checkpoints ``<root>/<modality>/final`` (sorted); an error says how to make them."""
    root = Path(root)
    found = sorted(p.parent for p in root.glob(f"*/{FINAL_NAME}/{META_FILE}"))
    if not found:
        raise CheckpointError(
            f"{root}: no demo checkpoints (<modality>/{FINAL_NAME}) found; train them with `lbind demo` "
            "(e.g. `lbind demo -m audio -m image`, a few minutes on a CPU), or pass --checkpoint DIR"
        )
    return found


def split_lines(text: str | None) -> list[str]:
    """One entry per non-blank line, stripped (the page's texts and labels boxes)."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def find_cards(checkpoint: str | Path) -> dict[str, dict[str, Any]]:
    """Result cards beside a checkpoint: JSON files of the eval-card format in its parent folder and in
    ``<parent>/eval`` (where ``lbind demo`` and ``lbind eval`` write them), by path."""
    parent = Path(checkpoint).resolve().parent
    cards: dict[str, dict[str, Any]] = {}
    for path in sorted([*parent.glob("*.json"), *parent.glob("eval/*.json")]):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            log.warning("%s: not readable as a result card (%s); skipped", path, err)
            continue
        if isinstance(data, dict) and data.get("format") == CARD_FORMAT:
            cards[str(path)] = data
    return cards


@dataclass
class Loaded:
    """One checkpoint as the app holds it: its folder, the model and its ``lbind.json``."""

    path: Path
    model: BindModel
    meta: dict[str, Any]

    @property
    def anchor(self) -> str:
        return str(self.meta["anchor"].get("fingerprint"))


@dataclass
class SimilarityResult:
    """Texts x media: ``cosine`` [T, M] and, per file (column), the ``softmax`` over the texts of scale x cosine."""

    texts: list[str]
    media: list[tuple[str, str]]  # (modality, path) per column
    cosine: torch.Tensor
    softmax: torch.Tensor
    scales: list[float] = field(default_factory=list)  # the learned logit scale of each column's modality

    def as_json(self) -> dict[str, Any]:
        """The shape of ``lbind similarity --json``, with both matrices."""
        return {
            "texts": self.texts,
            "media": [{"modality": m, "path": p} for m, p in self.media],
            "cosine": self.cosine.tolist(),
            "softmax": self.softmax.tolist(),
            "logit_scale": self.scales,
        }


@dataclass
class RankedLabel:
    """One zero-shot answer: the label, its cosine with the item (template ensemble) and its probability."""

    label: str
    cosine: float
    probability: float


class AppSession:
    """The checkpoints the page serves, loaded once. A modality may come from one checkpoint only."""

    def __init__(self, checkpoints: Sequence[str | Path]) -> None:
        if not checkpoints:
            raise ConfigError("the app needs at least one checkpoint")
        self.loaded: list[Loaded] = []
        self._by_modality: dict[str, Loaded] = {}
        self._text_models: dict[str, BindModel] = {}  # anchor fingerprint -> the model that embeds its texts
        for checkpoint in checkpoints:
            path = Path(checkpoint)
            entry = Loaded(path, load(path), read_meta(path))
            entry.model.eval()
            for name in entry.model.modalities:
                if name in self._by_modality:
                    raise ConfigError(
                        f"modality {name!r} is in two checkpoints ({self._by_modality[name].path} and {path}); "
                        "pass only one of them"
                    )
                self._by_modality[name] = entry
            self._text_models.setdefault(entry.anchor, entry.model)
            self.loaded.append(entry)
        log.info("app: %s from %d checkpoint(s)", ", ".join(self.modalities), len(self.loaded))

    # ----------------------------------------------------------------------------------------- lookups
    @property
    def modalities(self) -> list[str]:
        return sorted(self._by_modality)

    def entry(self, modality: str) -> Loaded:
        if modality not in self._by_modality:
            raise ModalityNotFoundError(
                f"no loaded checkpoint has a {modality!r} encoder (loaded: {', '.join(self.modalities)})"
            )
        return self._by_modality[modality]

    def modality(self, name: str) -> Modality:
        return self.entry(name).model.modalities[name]

    def widget(self, name: str) -> str:
        """The modality's ``widget`` (see :class:`~lbcore.modality.Modality`); an unknown one is shown as "file"."""
        widget = getattr(self.modality(name), "widget", "file")
        if widget not in WIDGETS:
            log.warning("modality %s: unknown widget %r (expected one of %s); using 'file'", name, widget, WIDGETS)
            return "file"
        return widget

    def extensions(self, name: str) -> list[str] | None:
        """The file suffixes the modality's plugin declares (lower case, with the dot), or None (any file)."""
        declared = getattr(self.modality(name), "extensions", None)
        if not declared:
            return None
        return sorted({e.lower() if e.startswith(".") else f".{e.lower()}" for e in declared})

    def check_file(self, modality: str, path: str | Path | None) -> str:
        """A present file of a type the modality takes, as a string path; else :class:`InputError`."""
        exts = self.extensions(modality)
        if path is None or not str(path):
            raise InputError(f"{modality} file", "none given", f"a {modality} file")
        path = Path(path)
        if not path.is_file():
            raise InputError(path, "no such file", f"a {modality} file")
        if exts is not None and path.suffix.lower() not in exts:
            raise InputError(path, f"is a {path.suffix or 'suffix-less'} file", f"a {modality} file: {', '.join(exts)}")
        return str(path)

    def embed_text(self, anchor: str, texts: Sequence[str]) -> torch.Tensor:
        """Normalised text embeddings [N, E] under one anchor, through its cache (the anchor loads once)."""
        return self._text_models[anchor].embed_text(list(texts))

    # ---------------------------------------------------------------------------------------- requests
    def similarity(self, texts: Sequence[str], media: Sequence[tuple[str, str | Path]]) -> SimilarityResult:
        """Texts x media exactly as ``lbind similarity`` computes it (cosine, and the softmax over the texts of
        the column modality's learned logit scale x cosine). Files of several checkpoints may be mixed; each
        column is scored in its own checkpoint's space against the texts under that checkpoint's anchor."""
        texts = list(texts)
        if not texts:
            raise InputError("texts", "none given", "at least one text, one per line")
        if not media:
            raise InputError("files", "none given", "at least one file of a loaded modality")
        columns = [(m, self.check_file(m, p)) for m, p in media]
        cosine = torch.empty(len(texts), len(columns))
        by_entry: dict[int, list[int]] = {}
        for j, (name, _) in enumerate(columns):
            by_entry.setdefault(id(self.entry(name)), []).append(j)
        for cols in by_entry.values():
            entry = self.entry(columns[cols[0]][0])
            self.embed_text(entry.anchor, texts)  # fills the cache through the anchor's one text model
            cosine[:, cols] = media_similarity(entry.model, texts, [columns[j] for j in cols]).float().cpu()
        scales = [self.entry(m).model.logit_scale(m) for m, _ in columns]
        softmax = torch.softmax(cosine * torch.tensor(scales), dim=0)  # per file: a distribution over the texts
        return SimilarityResult(texts, columns, cosine, softmax, scales)

    def classify(self, modality: str, path: str | Path, labels: Sequence[str], top_k: int = 5) -> list[RankedLabel]:
        """Zero-shot: ``labels`` ranked for one file, by the cosine with each label's prompt-template ensemble;
        probabilities are the softmax of the zero-shot logits (100 x cosine, as ``lbind eval``)."""
        labels = list(dict.fromkeys(labels))
        if not labels:
            raise InputError("labels", "none given", "at least one label, one per line")
        entry = self.entry(modality)
        item = entry.model.embed(modality, [self.check_file(modality, path)])  # [1, E]
        templates = list(self.modality(modality).templates)
        prototypes = class_embeddings(lambda t: self.embed_text(entry.anchor, t), labels, templates)
        logits = zero_shot_logits(item, prototypes.to(item.device))[0].float().cpu()  # [C]
        probabilities = torch.softmax(logits, dim=0)
        order = logits.argsort(descending=True)[: max(1, int(top_k))]
        return [RankedLabel(labels[i], float(logits[i]) / LOGIT_SCALE, float(probabilities[i])) for i in order]

    def cross_similarity(
        self, query: tuple[str, str | Path], candidates: Sequence[tuple[str, str | Path]]
    ) -> list[float]:
        """Cosines of one file with others, of any modalities whose checkpoints share the query's anchor
        (the shared space): two modalities of one checkpoint, or two demo checkpoints bound to one anchor."""
        if not candidates:
            raise InputError("files to compare with", "none given", "at least one file")
        q_mod, q_path = query
        anchor = self.entry(q_mod).anchor
        for name, _ in candidates:
            other = self.entry(name)
            if other.anchor != anchor:
                raise ConfigError(
                    f"{q_mod} ({self.entry(q_mod).path}) and {name} ({other.path}) were bound to different anchors "
                    f"({anchor[:12]} vs {other.anchor[:12]}): their embeddings do not share a space"
                )
        q = self.entry(q_mod).model.embed(q_mod, [self.check_file(q_mod, q_path)]).float().cpu()
        rows = [self.entry(m).model.embed(m, [self.check_file(m, p)]).float().cpu() for m, p in candidates]
        return (q @ torch.cat(rows).t())[0].tolist()

    def describe(self) -> list[dict[str, Any]]:
        """Per checkpoint: its folder, modalities (plugin, version, learned scale, config), anchor, the training
        record of ``lbind.json`` and the result cards found beside it."""
        out = []
        for entry in self.loaded:
            meta = entry.meta
            live = entry.model.describe()
            modalities = {
                name: {
                    "plugin": info.get("plugin"),
                    "distribution": info.get("distribution"),
                    "version": info.get("version"),
                    "logit_scale": entry.model.logit_scale(name),
                    "templates": len(entry.model.modalities[name].templates),
                    "config": live["modalities"][name]["config"],
                }
                for name, info in meta["modalities"].items()
            }
            extra = {k: v for k, v in meta.items() if k not in ("format", "anchor", "modalities")}
            out.append(
                {
                    "checkpoint": str(entry.path),
                    "modalities": modalities,
                    "anchor": meta["anchor"],
                    "record": extra,
                    "cards": find_cards(entry.path),
                }
            )
        return out
