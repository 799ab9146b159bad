"""Paired training data: manifest rows that name several modalities of one item, for grouped alignment.

A paired row has one key per modality instead of ``path`` (``{"video": "a.mp4", "audio": "a.wav", "captions":
[...]}``); a row may lack some modalities. The members of a group (``train.groups``) train on one such manifest
through one :class:`PairedDataset`: every step's rows are the same items for every member, and a row's caption
(drawn once per row and epoch) is shared by its members, so the group's fused embedding has one caption.

Each member sees the dataset through a :class:`MemberView` (length, captions), which is what the trainer's
per-modality code (caption tables, steps per epoch, error budgets) reads; the loader of a group yields
``{modality: Batch}`` per micro-batch (:class:`PairedCollator`), and :func:`draw_micro` spreads those into the
per-modality micro-batch lists the engine takes. ``Batch.indices`` are manifest row ids, shared by the members.

Without a manifest, a group trains on a member plugin's paired demo manifest (``paired-train.jsonl`` beside its
demo ``train.jsonl``, see :func:`paired_demo_manifest`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lbcore.data import Batch, CaptionIndex, ManifestError, Sample, SampleCollator, derive_seed, seeded_rng
from lbcore.demo import demo_data
from lbcore.errors import ConfigError
from lbcore.modality import Modality

__all__ = [
    "MemberView",
    "PairedCollator",
    "PairedDataset",
    "PairedEntry",
    "draw_micro",
    "open_group",
    "paired_demo_manifest",
    "read_paired_manifest",
]

NON_MEDIA_KEYS = frozenset({"label", "labels", "caption", "captions", "id", "split"})


@dataclass(frozen=True)
class PairedEntry:
    """One item: an absolute path per modality it has, its captions and optional label."""

    paths: dict[str, Path]
    captions: tuple[str, ...]
    label: str | None = None


def _entry(row: Any, members: Sequence[str], base: Path, where: str) -> PairedEntry:
    if not isinstance(row, dict):
        raise ManifestError(f"{where}: expected a JSON object")
    if "path" in row:
        raise ManifestError(
            f"{where}: a group needs paired rows (one key per modality, e.g. {members[0]!r}), not 'path'"
        )
    captions = row.get("captions", row.get("caption"))
    captions = [captions] if isinstance(captions, str) else captions
    if not captions or not all(isinstance(c, str) and c.strip() for c in captions):
        raise ManifestError(f"{where}: expected 'captions' as a non-empty list of strings")
    paths = {m: row[m] for m in members if row.get(m) is not None}
    bad = [m for m, p in paths.items() if not isinstance(p, str) or not p.strip()]
    if bad:
        raise ManifestError(f"{where}: {', '.join(bad)}: expected a path string")
    label = row.get("label")
    return PairedEntry({m: (base / p).resolve() for m, p in paths.items()}, tuple(captions), label)


def read_paired_manifest(manifest: str | Path, members: Sequence[str], check_files: bool = True) -> list[PairedEntry]:
    """Rows of a paired JSONL manifest, keeping the ``members`` columns; a row with none of them is an error.
    With ``check_files`` every missing file is listed in one :class:`ManifestError`."""
    manifest = Path(manifest)
    if not manifest.is_file():
        raise ManifestError(f"{manifest}: manifest not found")
    entries = []
    for lineno, line in enumerate(manifest.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise ManifestError(f"{manifest}:{lineno}: not valid JSON: {err.msg}") from err
        entry = _entry(row, members, manifest.parent, f"{manifest}:{lineno}")
        if not entry.paths:
            raise ManifestError(f"{manifest}:{lineno}: names none of {', '.join(members)}")
        entries.append(entry)
    if not entries:
        raise ManifestError(f"{manifest}: manifest lists no items")
    if check_files:
        missing = [str(p) for e in entries for p in e.paths.values() if not p.is_file()]
        if missing:
            shown = "\n  ".join(missing[:50]) + (f"\n  ... and {len(missing) - 50} more" if len(missing) > 50 else "")
            raise ManifestError(f"{manifest}: {len(missing)} media file(s) missing:\n  {shown}")
    return entries


class PairedDataset:
    """Map-style dataset over paired entries, keyed by ``(epoch, index)`` like :class:`lbcore.data.TrainDataset`.

    An item gives ``{modality: Sample}`` for the modalities its row has; one caption per row and epoch, shared
    by them. Each member's file is preprocessed with its own seed of (seed, epoch, index, member); a failure
    becomes that member's failed :class:`Sample` (the other members of the row still train).
    """

    def __init__(self, entries: Sequence[PairedEntry], modalities: Mapping[str, Modality], seed: int = 0) -> None:
        self.entries = list(entries)
        self.modalities = dict(modalities)
        self.captions = CaptionIndex.from_entries(self.entries)  # type: ignore[arg-type]  # needs .captions only
        self.seed = seed

    def __len__(self) -> int:
        return len(self.entries)

    def caption_choice(self, epoch: int, index: int) -> int:
        choices = self.captions.ids[index]
        return choices[0] if len(choices) == 1 else choices[derive_seed(self.seed, epoch, index, 0x0CA9) % len(choices)]

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Sample]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        entry = self.entries[index]
        caption_id = self.caption_choice(epoch, index)
        out = {}
        for m_index, (name, modality) in enumerate(self.modalities.items()):
            path = entry.paths.get(name)
            if path is None:
                continue
            try:
                with seeded_rng(derive_seed(self.seed, epoch, index, 0xA06, m_index)):
                    tensor = modality.preprocess(path, train=True)
            except Exception as err:  # reported and counted against the error budget, never hidden
                out[name] = Sample(index, caption_id, None, str(path), f"{type(err).__name__}: {err}")
                continue
            out[name] = Sample(index, caption_id, tensor, str(path))
        return out


class MemberView:
    """One member's view of a :class:`PairedDataset`: its length and captions (what per-modality code reads)."""

    def __init__(self, paired: PairedDataset, name: str) -> None:
        self.paired = paired
        self.name = name
        self.captions = paired.captions

    def __len__(self) -> int:
        return len(self.paired)


class PairedCollator:
    """``[{modality: Sample}]`` -> ``{modality: Batch}`` through each member's collate (a member absent from
    every row gets an empty batch)."""

    def __init__(self, modalities: Mapping[str, Modality]) -> None:
        self.collators = {name: SampleCollator(m) for name, m in modalities.items()}

    def __call__(self, items: Sequence[Mapping[str, Sample]]) -> dict[str, Batch]:
        return {name: collate([i[name] for i in items if name in i]) for name, collate in self.collators.items()}


def draw_micro(iterators: Mapping[str, Iterator[Any]], k: int) -> dict[str, list[Batch]]:
    """``k`` micro-batches from every loader, as per-modality lists: a loader yields a :class:`Batch` (its key is
    the modality) or, for a group, ``{modality: Batch}``."""
    micro: dict[str, list[Batch]] = {}
    for key, iterator in iterators.items():
        for _ in range(k):
            got = next(iterator)
            for name, batch in got.items() if isinstance(got, Mapping) else ((key, got),):
                micro.setdefault(name, []).append(batch)
    return micro


def paired_demo_manifest(modalities: Mapping[str, Modality], members: Sequence[str], split: str, seed: int) -> Path:
    """A member plugin's paired demo manifest (``paired-<split>.jsonl`` in its demo folder) whose first row names
    every member; :class:`ConfigError` when no member's demo has one."""
    for name in members:
        folder = demo_data(modalities[name], seed=seed)[split].parent
        candidate = folder / f"paired-{split}.jsonl"
        if candidate.is_file():
            first = candidate.read_text(encoding="utf-8").splitlines()[0]
            if all(m in json.loads(first) for m in members):
                return candidate
    raise ConfigError(
        f"group {'+'.join(members)}: no paired manifest given and no member's demo data has one; pass the same "
        f"paired manifest to every member (--data {members[0]}=PATH --data {members[1]}=PATH)"
    )


def open_group(
    members: Sequence[str], modalities: Mapping[str, Modality], manifests: Mapping[str, Path], seed: int
) -> dict[str, MemberView]:
    """The members' views of the group's one paired dataset; every member must name the same manifest."""
    paths = {m: Path(manifests[m]).resolve() for m in members}
    if len(set(paths.values())) != 1:
        listing = ", ".join(f"{m}={p}" for m, p in paths.items())
        raise ConfigError(f"train.groups: {'+'.join(members)} read different manifests ({listing}); a group trains "
                          "on one paired manifest naming every member")  # fmt: skip
    manifest = paths[members[0]]
    entries = read_paired_manifest(manifest, members, check_files=True)
    paired = PairedDataset(entries, {m: modalities[m] for m in members}, seed=seed)
    return {m: MemberView(paired, m) for m in members}
