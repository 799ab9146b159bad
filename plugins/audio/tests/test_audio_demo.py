"""The procedural demo dataset: real WAV files, manifests, determinism by seed, distinct and separable splits."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from lbind_audio import demo as demo_data
from lbind_audio.modality import AudioModality

from lbcore.demo import demo_data as cached_demo_data
from lbcore.manifest import read_manifest


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("audio_demo")
    AudioModality(AudioModality.config_preset("demo")).make_demo_data(root, seed=0)
    return root


def digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()
    }


def test_layout_files_and_manifests(generated) -> None:
    for split, per_concept in (("train", 40), ("test", 10)):
        entries = read_manifest(generated / f"{split}.jsonl")  # also checks that every file exists
        counts = Counter(e.label for e in entries)
        assert len(counts) >= 6 and set(counts.values()) == {per_concept}
        for e in entries:
            assert len(e.captions) >= 2 and len(set(e.captions)) == len(e.captions)
            info = sf.info(e.path)
            assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
            assert 1.0 <= info.duration <= 3.05
    rows = [json.loads(line) for line in (generated / "train.jsonl").read_text().splitlines()]
    assert all(set(r) == {"path", "captions", "label"} and not Path(r["path"]).is_absolute() for r in rows)


def test_captions_tell_the_concepts_apart() -> None:
    pools = [set(c.captions) for c in demo_data.CONCEPTS]
    assert all(len(p) >= 4 for p in pools)
    assert not any(a & b for i, a in enumerate(pools) for b in pools[i + 1 :])
    assert len({c.label for c in demo_data.CONCEPTS}) == len(demo_data.CONCEPTS)


def test_same_seed_same_bytes_through_the_core_cache(generated, tmp_path) -> None:
    m = AudioModality(AudioModality.config_preset("demo"))
    manifests = cached_demo_data(m, seed=0, cache_dir=tmp_path)  # generated again, in lbcore's cache layout
    assert set(manifests) == {"train", "test"}
    assert digest(manifests["train"].parent) == digest(generated)


def test_seed_and_split_change_the_clips() -> None:
    concept, train, test = demo_data.CONCEPTS[0], *demo_data.SPLITS

    def clip(seed: int, split_index: int, split) -> np.ndarray:
        rng = np.random.default_rng([seed, split_index, 0])
        return demo_data.render_clip(concept, demo_data.Draw(rng, split.shift), split)

    assert np.array_equal(clip(0, 0, train), clip(0, 0, train))
    assert not np.array_equal(clip(0, 0, train), clip(1, 0, train))
    assert test.shift != train.shift and test.duration != train.duration and test.snr_db != train.snr_db


def test_train_and_test_are_distinct_and_differently_drawn(generated) -> None:
    hashes = digest(generated)
    train = {h for k, h in hashes.items() if k.startswith("train/")}
    test = {h for k, h in hashes.items() if k.startswith("test/")}
    assert len(train) == 320 and len(test) == 80 and not train & test
    durations = {s: [sf.info(p).duration for p in (generated / s).glob("*.wav")] for s in ("train", "test")}
    assert np.mean(durations["test"]) > np.mean(durations["train"]) + 0.2  # test clips are drawn longer


def test_concepts_are_acoustically_separable_on_held_out_clips(generated) -> None:
    """A nearest-centroid classifier on time-pooled log-mel statistics, fit on train, scores test: a cheap
    check that the concepts are distinct and the shifted test split stays learnable."""
    m = AudioModality(AudioModality.config_preset("demo"))

    def features(split: str) -> tuple[torch.Tensor, list[str]]:
        entries = read_manifest(generated / f"{split}.jsonl")
        stats = []
        for e in entries:
            x = m.preprocess(e.path)  # [3, mel, frames]
            stats.append(torch.cat([x.mean(-1), x.std(-1), x.diff(dim=-1).abs().mean(-1)]).flatten())
        return torch.stack(stats), [str(e.label) for e in entries]

    x_train, y_train = features("train")
    x_test, y_test = features("test")
    mu, sd = x_train.mean(0), x_train.std(0) + 1e-6
    labels = sorted(set(y_train))
    centroids = torch.stack([((x_train - mu) / sd)[[y == c for y in y_train]].mean(0) for c in labels])
    predicted = [labels[i] for i in torch.cdist((x_test - mu) / sd, centroids).argmin(1)]
    accuracy = np.mean([p == y for p, y in zip(predicted, y_test, strict=True)])
    assert accuracy >= 0.9
