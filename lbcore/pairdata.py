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

from lbcore.data import Batch, CaptionIndex, Sample, SampleCollator
from lbcore.demo import demo_data
from lbcore.errors import ConfigError
from lbcore.manifest import Manifest, ManifestError
from lbcore.modality import Modality
from lbcore.samples import PreprocessDataset, derive_seed

__all__ = [
    "MemberView",
    "PairedCollator",
    "PairedDataset",
    "PairedRows",
    "draw_micro",
    "open_group",
    "paired_demo_manifest",
    "read_paired_manifest",
]


@dataclass(frozen=True)
class PairedRows:
    """The rows of a paired manifest that name at least one member: per member, the row ids that have it and
    their files (absolute), and every row's captions."""

    source: Path
    files: dict[str, dict[int, Path]]  # member -> {row id: file}
    captions: list[tuple[str, ...]]

    def __len__(self) -> int:
        return len(self.captions)


def read_paired_manifest(manifest: str | Path, members: Sequence[str], check_files: bool = True) -> PairedRows:
    """The rows of a paired manifest (:class:`lbcore.manifest.Manifest`) naming one or more ``members``, every
    one with captions; with ``check_files`` every missing file is listed in one :class:`ManifestError`."""
    parsed = Manifest.read(manifest)
    if not parsed.paired:
        raise ManifestError(
            f"{parsed.source}: a group needs paired rows (one key per modality, e.g. {members[0]!r}), not 'path'"
        )
    keep = sorted({i for m in members for i in parsed.rows_with(m)})
    if not keep:
        raise ManifestError(f"{parsed.source}: no row names any of {', '.join(members)}")
    rows = parsed.select(keep)
    rows.require_captions("training")
    files = {}
    for m in members:
        have = rows.rows_with(m)
        if have:
            part = rows.select(have)
            if check_files:
                part.check_files([m])
            files[m] = dict(zip(have, part.paths(m), strict=True))
        else:
            files[m] = {}
    return PairedRows(parsed.source, files, [rows.captions(i) for i in range(len(rows))])


class PairedDataset:
    """Map-style dataset over paired rows, keyed by ``(epoch, index)`` like :class:`lbcore.data.TrainDataset`.

    An item gives ``{modality: Sample}`` for the modalities its row has; one caption per row and epoch, shared
    by them. Each member's files are preprocessed through its own :class:`lbcore.samples.PreprocessDataset`
    (augmentation seeded by (member seed, epoch, row)); a failure becomes that member's failed :class:`Sample`
    (the other members of the row still train).
    """

    def __init__(self, rows: PairedRows, modalities: Mapping[str, Modality], seed: int = 0) -> None:
        self.rows = rows
        self.modalities = dict(modalities)
        self.captions = CaptionIndex.from_captions(rows.captions)
        self.seed = seed
        self.files = {}
        for m_index, name in enumerate(self.modalities):
            ids = sorted(rows.files.get(name, {}))
            paths = [rows.files[name][i] for i in ids]
            local = {row: k for k, row in enumerate(ids)}
            data = PreprocessDataset(self.modalities[name], paths, train=True, seed=derive_seed(seed, m_index))
            self.files[name] = (local, paths, data)

    def __len__(self) -> int:
        return len(self.rows)

    def caption_choice(self, epoch: int, index: int) -> int:
        choices = self.captions.ids[index]
        return choices[0] if len(choices) == 1 else choices[derive_seed(self.seed, epoch, index, 0x0CA9) % len(choices)]

    def __getitem__(self, key: tuple[int, int] | int) -> dict[str, Sample]:
        epoch, index = key if isinstance(key, tuple) else (0, key)
        caption_id = self.caption_choice(epoch, index)
        out = {}
        for name, (local, paths, data) in self.files.items():
            if index in local:
                loaded = data[(epoch, local[index])]
                out[name] = Sample(index, caption_id, loaded.tensor, str(paths[local[index]]), loaded.error)
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
    rows = read_paired_manifest(manifest, members, check_files=True)
    paired = PairedDataset(rows, {m: modalities[m] for m in members}, seed=seed)
    return {m: MemberView(paired, m) for m in members}
