"""`lbind eval` and `lbind demo`: the dataset-level runner, result cards and plots, on a fake plugin whose encoder
is the identity, so every expected metric is worked out by hand from the vectors the tests write. Caption and
prompt embeddings are hand-chosen vectors put into the text-embedding cache; no anchor runs for them.

Hand-made geometry used below (E = 4; e_k is the k-th unit vector). Prompts of the "vec" templates
("a {} vector.", "the {}."): cat -> e0 +- e3, dog -> e1 +- 0.2 e3, owl -> e2 +- 3 e3. Each template alone is
tilted towards e3 (owl most), but the ensemble (mean of the two normalised prompts) is exactly e_k.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

PLUGIN = "lbfake_vec"
DIM = 4

PLUGIN_SOURCE = '''
import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

from lbcore import hookimpl
from lbcore.config import ModalityConfig
from lbcore.manifest import write_manifest
from lbcore.datasets import folder_per_class
from lbcore.errors import InputError
from lbcore.modality import Modality

DIM = 4
TRAINABLE = {"lora": {"rank": 0}, "optim": {"lr": 0.05, "warmup_steps": 1, "epochs": 2, "batch_size": 8}}


class Identity(nn.Module):
    """[B, DIM] -> [B, embed_dim]: the identity (zero-padded) until trained."""

    def __init__(self, embed_dim):
        super().__init__()
        self.embed_dim = embed_dim
        self.proj = nn.Linear(DIM, embed_dim, bias=False)
        with torch.no_grad():
            self.proj.weight.copy_(torch.eye(embed_dim, DIM))

    def forward(self, x):
        return self.proj(x)


class Vec(Modality):
    name = "vec"
    Config = ModalityConfig
    presets = {"languagebind": {}, "demo": TRAINABLE}
    templates = ("a {} vector.", "the {}.")
    template_sets = {"first": ("a {} vector.",)}
    extensions = (".npy",)

    def preprocess(self, item, train=False):
        log = os.environ.get("LBFAKE_VEC_LOG")
        if log and isinstance(item, (str, os.PathLike)):
            with open(log, "a") as f:
                f.write(f"{item}\\n")
        if isinstance(item, (str, os.PathLike)):
            try:
                item = np.load(item, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise InputError(item, f"cannot read: {err}", "a .npy vector") from err
        x = torch.as_tensor(np.asarray(item, dtype=np.float32))
        if x.shape != (DIM,):
            raise InputError(None, f"shape {tuple(x.shape)}", f"a vector of {DIM}")
        return x

    def example_input(self, seed=0):
        return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)

    def build_stem(self):
        return nn.Identity()

    def build_encoder(self, embed_dim):
        return Identity(embed_dim)

    def dataset_readers(self):
        def folders(root, split=""):
            return folder_per_class(root, [".npy"], "folders", split)

        return {"folders": folders}

    def make_demo_data(self, root, seed=0):
        # Class k is the unit vector e_k (a little noise in training); the test split holds one wrong item.
        rng = np.random.default_rng(seed)
        root = Path(root)
        classes = ("cat", "dog", "owl")
        for split, n in (("train", 24), ("test", 6)):
            rows = []
            for i in range(n):
                k = i % 3
                v = np.eye(DIM, dtype=np.float32)[k]
                if split == "train":
                    v = v + 0.05 * rng.standard_normal(DIM).astype(np.float32)
                elif i == 5:
                    v = np.eye(DIM, dtype=np.float32)[0]  # an owl that looks like a cat
                name = f"{split}-{i}.npy"
                np.save(root / name, v)
                rows.append({"path": name, "captions": [f"a {classes[k]} vector."], "label": classes[k]})
            write_manifest(root / f"{split}.jsonl", rows)


class Vec2(Vec):
    name = "vec2"
    templates = ("a {} thing.",)


@hookimpl
def register_modalities(register):
    register(Vec)
    register(Vec2)
'''


@pytest.fixture
def vec(load_plugin: Any) -> Any:
    """The fake plugin, registered in the default registry."""
    return load_plugin(PLUGIN, PLUGIN_SOURCE)


def fingerprint(tag: Any) -> str:
    """A fake anchor fingerprint, unique per test so that tests never share cache entries."""
    return hashlib.sha256(str(tag).encode()).hexdigest()


def fill_text_cache(fp: str, texts: Mapping[str, Sequence[float]]) -> None:
    """Put hand-chosen embeddings (normalised here, as an anchor's are) into the text-embedding cache."""
    from lbcore.anchor import TextEmbeddingCache

    cache = TextEmbeddingCache()
    for text, vec in texts.items():
        v = torch.tensor(vec, dtype=torch.float32)
        cache.put(fp, text, v / v.norm())


def make_model(fp: str, names: Sequence[str] = ("vec",)) -> Any:
    from lbcore.config import AnchorConfig
    from lbcore.model import BindModel
    from lbcore.plugins import default_registry

    mods = {n: default_registry().registered(n).cls() for n in names}
    encoders = {n: m.build_encoder(DIM) for n, m in mods.items()}
    return BindModel(AnchorConfig(), encoders, mods, anchor_fingerprint=fp, embed_dim=DIM)


def make_checkpoint(path: Path, fp: str, names: Sequence[str] = ("vec",)) -> Path:
    return make_model(fp, names).save_pretrained(path)


def write_vec(path: Path, values: Sequence[float]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(values, dtype=np.float32))
    return path


def write_jsonl(path: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def unit(values: Sequence[float]) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v / np.linalg.norm(v)


# ------------------------------------------------------------------------------------------------ the data
PROMPTS = {
    "a cat vector.": [1, 0, 0, 1],
    "the cat.": [1, 0, 0, -1],
    "a dog vector.": [0, 1, 0, 0.2],
    "the dog.": [0, 1, 0, -0.2],
    "a owl vector.": [0, 0, 1, 3],
    "the owl.": [0, 0, 1, -3],
    "a cat thing.": [1, 0, 0, 0],
    "a dog thing.": [0, 1, 0, 0],
    "a owl thing.": [0, 0, 1, 0],
}
# (label, item vector, the class whose ensemble prototype e_k is closest)
CLASS_ITEMS = [
    ("cat", [1, 0, 0, 0], "cat"),
    ("cat", [0.6, 0.8, 0, 0], "dog"),
    ("dog", [0.1, 0.5, 0.2, 0.8], "dog"),  # with the first template alone: owl (0.82 > dog 0.65)
    ("owl", [0, 0, 1, 0], "owl"),
    ("owl", [0.7, 0, 0.3, 0], "cat"),
    ("dog", [0, 1, 0, 0], "dog"),
]


@pytest.fixture
def fp(tmp_path: Path, vec: Any) -> str:
    value = fingerprint(tmp_path)
    fill_text_cache(value, PROMPTS)
    return value


def classification_manifest(root: Path) -> Path:
    rows = []
    for i, (label, v, _) in enumerate(CLASS_ITEMS):
        write_vec(root / f"item{i}.npy", v)
        rows.append({"path": f"item{i}.npy", "label": label})
    return write_jsonl(root / "test.jsonl", rows)


def run_cli(args: list[str]) -> None:
    from lbcore.cli import main

    main(args)


def sha256_file(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# --------------------------------------------------------------------------------------- the runner by hand
def test_zero_shot_classification_runner_matches_the_hand_computed_answer(fp: str, tmp_path: Path) -> None:
    from lbcore.evaluate import read_eval_manifest, zero_shot

    datasets = read_eval_manifest(classification_manifest(tmp_path / "data"), ["vec"])
    result = zero_shot(make_model(fp), datasets, num_workers=0)
    m = result.metrics
    assert result.task == "classification"
    assert datasets["vec"].classes == ["cat", "dog", "owl"]
    assert m["top1"] == pytest.approx(400 / 6)  # items 2 and 5 are wrong
    assert m["top5"] == pytest.approx(100.0)
    assert m["per_class"] == pytest.approx({"cat": 50.0, "dog": 100.0, "owl": 50.0})
    assert m["mean_class_accuracy"] == pytest.approx(200 / 3)
    assert m["chance_top1"] == pytest.approx(100 / 3)
    # rows: truth (cat, dog, owl); columns: prediction
    assert m["confusion"] == [[1, 1, 0], [0, 2, 0], [1, 0, 1]]
    assert result.plot is not None and result.plot.kind == "confusion"


def test_cli_eval_writes_a_result_card_with_hashes_a_table_and_a_plot(
    fp: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = make_checkpoint(tmp_path / "run" / "final", fp)
    manifest = classification_manifest(tmp_path / "data")
    card_path = tmp_path / "card.json"
    run_cli(["eval", "-c", str(ckpt), "--data", str(manifest), "-o", str(card_path), "--num-workers", "0"])
    card = json.loads(card_path.read_text())
    weights = ckpt / "vec.safetensors"
    # the checkpoint hash is defined over "<name>\0<sha256>\n" lines of its safetensors files, then lbind.json
    meta_sha = sha256_file(ckpt / "lbind.json")
    expected = hashlib.sha256(f"vec.safetensors\0{sha256_file(weights)}\nlbind.json\0{meta_sha}\n".encode())
    assert card["checkpoint"]["sha256"] == expected.hexdigest()
    assert card["checkpoint"]["files"] == {"vec.safetensors": sha256_file(weights), "lbind.json": meta_sha}
    assert card["anchor"]["fingerprint"] == fp
    assert card["lbind_version"] and card["time_s"] > 0
    assert card["task"] == "classification" and card["modality"] == "vec"
    assert card["dataset"]["reader"] == "manifest" and card["dataset"]["num_items"] == 6
    assert card["dataset"]["manifest"] == str(manifest.resolve())
    assert len(card["dataset"]["items_sha256"]) == 64
    assert card["templates"] == {"vec": ["a {} vector.", "the {}."]}
    assert card["metrics"]["top1"] == pytest.approx(400 / 6)
    png = Path(card["plot"])
    assert png == card_path.with_suffix(".png") and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = capsys.readouterr().out
    assert "66.67" in out and "top1" in out


def test_one_template_instead_of_the_ensemble_changes_the_answer(fp: str, tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", fp)
    manifest = classification_manifest(tmp_path / "data")
    card_path = tmp_path / "one.json"
    run_cli(["eval", "-c", str(ckpt), "--data", str(manifest), "-o", str(card_path), "--no-plot", "--num-workers", "0",
             "--template", "a {} vector."])  # fmt: skip
    card = json.loads(card_path.read_text())
    assert card["templates"] == {"vec": ["a {} vector."]}
    assert card["metrics"]["top1"] == pytest.approx(50.0)  # item 2 flips to owl
    assert card["metrics"]["confusion"][1] == [0, 1, 1]
    assert "plot" not in card and not card_path.with_suffix(".png").exists()


def test_a_named_template_set_is_chosen_with_templates(
    fp: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", fp)
    manifest = classification_manifest(tmp_path / "data")
    card_path = tmp_path / "first.json"
    args = ["eval", "-c", str(ckpt), "--data", str(manifest), "--no-plot", "--num-workers", "0"]
    run_cli([*args, "-o", str(card_path), "--templates", "first"])
    card = json.loads(card_path.read_text())
    assert card["templates"] == {"vec": ["a {} vector."]}
    assert card["metrics"]["top1"] == pytest.approx(50.0)  # as with --template "a {} vector." above
    run_cli([*args, "-o", str(card_path), "--templates", "default"])
    assert json.loads(card_path.read_text())["templates"] == {"vec": ["a {} vector.", "the {}."]}
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        run_cli([*args, "--templates", "speech"])
    assert info.value.code == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "no template set 'speech'" in err and "its template sets: default, first" in err


def test_cli_eval_takes_a_run_folder_and_says_which_checkpoint(
    fp: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    final = make_checkpoint(run / "final", fp)
    make_checkpoint(run / "step-00000003", fp)
    card_path = tmp_path / "card.json"
    manifest = classification_manifest(tmp_path / "data")
    run_cli(["eval", "-c", str(run), "--data", str(manifest), "-o", str(card_path), "--no-plot", "--num-workers", "0"])
    assert json.loads(card_path.read_text())["checkpoint"]["path"] == str(final.resolve())
    err = "".join(capsys.readouterr().err.split())  # rich wraps long paths anywhere
    assert f"{run}isarunfolder:usingitscheckpoint{final}" in err  # the INFO line is shown without -v


def test_the_item_hash_ignores_the_root_but_not_the_labels(fp: str, tmp_path: Path) -> None:
    import shutil

    from lbcore.evaluate import evaluate_checkpoint

    ckpt = make_checkpoint(tmp_path / "ckpt", fp)
    first = classification_manifest(tmp_path / "a")
    copy = tmp_path / "b"
    shutil.copytree(tmp_path / "a", copy)

    def digest(manifest: Path) -> str:
        return evaluate_checkpoint(ckpt, manifest=manifest, num_workers=0).card["dataset"]["items_sha256"]

    assert digest(first) == digest(copy / "test.jsonl")
    rows = [json.loads(line) for line in (copy / "test.jsonl").read_text().splitlines()]
    rows[0]["label"] = "dog"
    assert digest(write_jsonl(copy / "test.jsonl", rows)) != digest(first)


def test_retrieval_with_several_captions_per_item_by_hand(vec: Any, tmp_path: Path) -> None:
    # Items A = e0, B = e1, C = e2. Captions (normalised): A: "first zero" (A 0.98), "second zero" (B 0.89,
    # C 0.45, A 0); B: "only one" (C 0.93 > B 0.37); C: "only two" (C 0.96).
    fp = fingerprint(tmp_path)
    fill_text_cache(
        fp,
        {**PROMPTS, "first zero": [1, 0.2, 0, 0], "second zero": [0, 1, 0.5, 0], "only one": [0, 0.4, 1, 0],
         "only two": [0, 0, 1, 0.3]},
    )  # fmt: skip
    ckpt = make_checkpoint(tmp_path / "ckpt", fp)
    data = tmp_path / "data"
    for name, v in (("A", [1, 0, 0, 0]), ("B", [0, 1, 0, 0]), ("C", [0, 0, 1, 0])):
        write_vec(data / f"{name}.npy", v)
    manifest = write_jsonl(
        data / "pairs.jsonl",
        [
            {"path": "A.npy", "captions": ["first zero", "second zero"], "label": "cat"},
            {"path": "B.npy", "caption": "only one", "label": "dog"},
            {"path": "C.npy", "captions": ["only two"], "label": "owl"},
        ],
    )
    card_path = tmp_path / "r.json"
    run_cli(["eval", "-c", str(ckpt), "--data", str(manifest), "--task", "retrieval", "-o", str(card_path),
             "--num-workers", "0"])  # fmt: skip
    card = json.loads(card_path.read_text())
    m = card["metrics"]
    assert card["task"] == "retrieval" and m["num_captions"] == 4
    # text -> item ranks: 1, 3, 2, 1
    assert m["text_to_item_R@1"] == pytest.approx(50.0)
    assert m["text_to_item_R@5"] == pytest.approx(100.0) and m["text_to_item_R@10"] == pytest.approx(100.0)
    assert m["text_to_item_mean_rank"] == pytest.approx(1.75)
    assert m["text_to_item_median_rank"] == pytest.approx(1.0)
    # item -> text (best own caption): A 1, B 2 ("second zero" beats "only one"), C 1
    assert m["item_to_text_R@1"] == pytest.approx(200 / 3)
    assert m["item_to_text_mean_rank"] == pytest.approx(4 / 3)
    assert card["templates"] == {}
    assert Path(card["plot"]).is_file()
    # The same manifest in auto mode is labelled, hence classification: A, B, C are e_cat, e_dog, e_owl.
    auto = tmp_path / "auto.json"
    run_cli(["eval", "-c", str(ckpt), "--data", str(manifest), "-o", str(auto), "--no-plot", "--num-workers", "0"])
    assert json.loads(auto.read_text())["metrics"]["top1"] == pytest.approx(100.0)


def test_multilabel_manifest_is_scored_by_map(fp: str, tmp_path: Path) -> None:
    from lbcore.evaluate import evaluate_checkpoint

    ckpt = make_checkpoint(tmp_path / "ckpt", fp)
    data = tmp_path / "data"
    items = [
        ([1, 0, 0, 0], ["cat", "dog"]),
        ([0.8, 0.6, 0, 0], ["dog"]),
        ([0, 0.5, 0.866, 0], ["owl"]),
        ([0.1, 0.05, 1, 0], ["owl", "cat"]),
    ]
    rows = []
    for i, (v, labels) in enumerate(items):
        write_vec(data / f"m{i}.npy", v)
        rows.append({"path": f"m{i}.npy", "label": labels})
    card = evaluate_checkpoint(ckpt, manifest=write_jsonl(data / "ml.jsonl", rows), num_workers=0).card
    # cat: ranking m0, m1, m3, m2 -> positives at 1, 3: AP (1 + 2/3) / 2. dog: m1, m2, m3, m0 -> positives at 1, 4:
    # (1 + 2/4) / 2. owl: m3, m2 -> 1.
    aps = {"cat": 100 * (1 + 2 / 3) / 2, "dog": 100 * (1 + 2 / 4) / 2, "owl": 100.0}
    assert card["task"] == "multilabel"
    assert card["metrics"]["per_class_ap"] == pytest.approx(aps)
    assert card["metrics"]["mAP"] == pytest.approx(sum(aps.values()) / 3)


def test_emergent_retrieval_between_two_modalities_of_one_checkpoint(fp: str, tmp_path: Path) -> None:
    # vec rows a = e0, e1, e2; vec2 rows b = e0, (0, .3, 1, 0), (0, 0, .5, 1). a->b ranks 1, 1, 2 (a2 prefers b1);
    # b->a ranks 1, 2, 1 (b1 prefers a2).
    ckpt = make_checkpoint(tmp_path / "ckpt", fp, ("vec", "vec2"))
    data = tmp_path / "data"
    a = [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0]]
    b = [[1, 0, 0, 0], [0, 0.3, 1, 0], [0, 0, 0.5, 1]]
    rows = []
    for i in range(3):
        write_vec(data / f"a{i}.npy", a[i])
        write_vec(data / f"b{i}.npy", b[i])
        rows.append({"vec": f"a{i}.npy", "vec2": f"b{i}.npy", "id": i})
    manifest = write_jsonl(data / "paired.jsonl", rows)
    card_path = tmp_path / "em.json"
    run_cli(["eval", "-c", str(ckpt), "-m", "vec", "--emergent", "vec2", "--data", str(manifest), "-o", str(card_path),
             "--num-workers", "0"])  # fmt: skip
    card = json.loads(card_path.read_text())
    m = card["metrics"]
    assert card["task"] == "emergent_retrieval" and card["emergent"] == "vec2"
    assert card["dataset"]["reader"] == "paired-manifest"
    assert m["vec_to_vec2_R@1"] == pytest.approx(200 / 3) and m["vec_to_vec2_mean_rank"] == pytest.approx(4 / 3)
    assert m["vec2_to_vec_R@1"] == pytest.approx(200 / 3) and m["vec2_to_vec_mean_rank"] == pytest.approx(4 / 3)
    assert m["vec_to_vec2_R@5"] == pytest.approx(100.0)


def test_fused_inputs_average_the_two_modalities_logits(fp: str, tmp_path: Path) -> None:
    # Classes cat (e0), dog (e1), with each modality's own templates. vec alone: rows 1 and 4 wrong; vec2 alone:
    # rows 2 and 4 wrong; the average of the logits gets rows 1-3 right.
    ckpt = make_checkpoint(tmp_path / "ckpt", fp, ("vec", "vec2"))
    data = tmp_path / "data"
    table = [
        ("cat", [0.4, 0.6, 0, 0], [0.9, 0.1, 0, 0]),
        ("dog", [0, 1, 0, 0], [0.55, 0.45, 0, 0]),
        ("cat", [1, 0, 0, 0], [1, 0, 0, 0]),
        ("dog", [0.6, 0.4, 0, 0], [0.7, 0.3, 0, 0]),
    ]
    rows = []
    for i, (label, va, vb) in enumerate(table):
        write_vec(data / f"v{i}.npy", va)
        write_vec(data / f"d{i}.npy", vb)
        rows.append({"vec": f"v{i}.npy", "vec2": f"d{i}.npy", "label": label})
    manifest = write_jsonl(data / "paired.jsonl", rows)
    card_path = tmp_path / "fused.json"
    run_cli(["eval", "-c", str(ckpt), "-m", "vec", "--fuse", "vec2", "--data", str(manifest), "-o", str(card_path),
             "--num-workers", "0"])  # fmt: skip
    card = json.loads(card_path.read_text())
    assert card["fuse"] == "vec2"
    assert card["metrics_per_modality"]["vec"]["top1"] == pytest.approx(50.0)
    assert card["metrics_per_modality"]["vec2"]["top1"] == pytest.approx(50.0)
    assert card["metrics"]["top1"] == pytest.approx(75.0)
    assert card["templates"] == {"vec": ["a {} vector.", "the {}."], "vec2": ["a {} thing."]}


def test_grouped_evaluation_scores_the_trained_fusion_beside_members_and_logit_fusion(fp: str, tmp_path: Path) -> None:
    from lbcore.grouping import build_groups

    model = make_model(fp, ("vec", "vec2"))
    model.groups = build_groups([["vec", "vec2"]], DIM)
    rng = np.random.default_rng(3)
    weight = np.eye(DIM) + 0.4 * rng.standard_normal((DIM, DIM))
    with torch.no_grad():
        model.groups["vec+vec2"].mix.copy_(torch.tensor([0.8, -0.3]))
        model.groups["vec+vec2"].proj.weight.copy_(torch.tensor(weight, dtype=torch.float32))
    ckpt = model.save_pretrained(tmp_path / "ckpt")
    data = tmp_path / "data"
    labels = ["cat", "dog", "owl"]
    rows, va, vb = [], rng.standard_normal((9, DIM)), rng.standard_normal((9, DIM))
    for i in range(9):
        write_vec(data / f"v{i}.npy", va[i])
        write_vec(data / f"d{i}.npy", vb[i])
        rows.append({"vec": f"v{i}.npy", "vec2": f"d{i}.npy", "label": labels[i % 3]})
    manifest = write_jsonl(data / "paired.jsonl", rows)
    card_path = tmp_path / "group.json"
    run_cli(["eval", "-c", str(ckpt), "--group", "vec,vec2", "--data", str(manifest), "-o", str(card_path),
             "--num-workers", "0", "--no-plot"])  # fmt: skip
    card = json.loads(card_path.read_text())

    # Independent computation: softmax weights, the linear map, normalise; prototypes from all three templates.
    w = np.exp([0.8, -0.3]) / np.exp([0.8, -0.3]).sum()
    fused = np.stack([unit(weight @ (w[0] * unit(a) + w[1] * unit(b))) for a, b in zip(va, vb, strict=True)])
    templates = ["a {} vector.", "the {}.", "a {} thing."]
    protos = np.stack([unit(sum(unit(PROMPTS[t.format(c)]) for t in templates)) for c in labels])
    predicted = (fused @ protos.T).argmax(1)
    expected_top1 = 100 * np.mean(predicted == np.arange(9) % 3)
    assert card["metrics"]["top1"] == pytest.approx(expected_top1)
    confusion = np.zeros((3, 3), int)
    for i, p in enumerate(predicted):
        confusion[i % 3, p] += 1
    assert card["metrics"]["confusion"] == confusion.tolist()
    assert set(card["metrics_per_modality"]) == {"vec", "vec2"}
    group = card["group"]
    assert group["members"] == ["vec", "vec2"] and group["fusion"] == "learned" and group["trained"]
    assert group["member_weights"] == pytest.approx({"vec": w[0], "vec2": w[1]})
    assert "top1" in group["logit_fusion"] and card["templates"]["group"] == templates
    assert card_path.name == "group.json"
    from lbcore.cards import default_card_path

    assert default_card_path(ckpt, card).name == "group-vec+vec2-paired-manifest-paired.json"


def test_a_plugin_reader_by_name_and_its_options(fp: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", fp)
    root = tmp_path / "layout"
    for i, (label, v, _) in enumerate(CLASS_ITEMS):
        write_vec(root / "val" / label / f"x{i}.npy", v)
    card_path = tmp_path / "reader.json"
    run_cli(["eval", "-c", str(ckpt), "--dataset", "folders", "--data-root", str(root), "--split", "val",
             "-o", str(card_path), "--no-plot", "--num-workers", "0"])  # fmt: skip
    card = json.loads(card_path.read_text())
    assert card["dataset"]["reader"] == "folders" and card["dataset"]["split"] == "val"
    assert card["dataset"]["root"] == str(root.resolve())
    assert card["metrics"]["top1"] == pytest.approx(400 / 6)
    with pytest.raises(SystemExit) as info:
        run_cli(["eval", "-c", str(ckpt), "--dataset", "folders", "--data-root", str(root), "--option", "fold=1"])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert "fold" in err and "split" in err  # names the bad option and the accepted ones
    with pytest.raises(SystemExit):
        run_cli(["eval", "-c", str(ckpt), "--dataset", "nosuch", "--data-root", str(root)])
    assert "folders" in capsys.readouterr().err


def test_no_data_argument_evaluates_the_demo_test_split(fp: str, tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path / "run" / "final", fp)
    run_cli(["eval", "-c", str(ckpt), "--num-workers", "0"])
    card_path = tmp_path / "run" / "eval" / "vec-demo-test.json"  # the default place, beside the checkpoint
    card = json.loads(card_path.read_text())
    assert card["dataset"]["reader"] == "demo" and card["dataset"]["split"] == "test"
    assert card["dataset"]["num_items"] == 6
    assert card["metrics"]["top1"] == pytest.approx(500 / 6)  # the test split's one odd owl is called a cat
    assert card_path.with_suffix(".png").is_file()


def test_an_unreadable_file_stops_the_evaluation_naming_it(
    fp: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", fp)
    manifest = classification_manifest(tmp_path / "data")
    (tmp_path / "data" / "item3.npy").write_bytes(b"not numpy")
    with pytest.raises(SystemExit) as info:
        run_cli(["eval", "-c", str(ckpt), "--data", str(manifest), "--num-workers", "0"])
    assert info.value.code == 2
    assert "item3.npy" in capsys.readouterr().err.replace("\n", "")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--fuse", "vec2"], "paired manifest"),
        (["--dataset", "folders"], "--data-root"),
        (["--emergent", "vec2", "--fuse", "vec2"], "not both"),
    ],
)
def test_inconsistent_eval_arguments_are_explained(
    fp: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    ckpt = make_checkpoint(tmp_path / "ckpt", fp, ("vec", "vec2"))
    with pytest.raises(SystemExit) as info:
        run_cli(["eval", "-c", str(ckpt), "-m", "vec", *extra])
    assert info.value.code == 2
    assert message in capsys.readouterr().err.replace("\n", " ")


def test_a_plain_manifest_cannot_feed_fusion(fp: str, tmp_path: Path) -> None:
    from lbcore.evaluate import EvaluationError, read_eval_manifest

    with pytest.raises(EvaluationError, match="paired manifest"):
        read_eval_manifest(classification_manifest(tmp_path / "data"), ["vec", "vec2"])


# ------------------------------------------------------------------------------------------------- lbind demo
@pytest.mark.slow
def test_demo_trains_evaluates_and_holds_each_modality_to_the_bar(
    vec: Any, anchor_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "demo.yaml"
    config.write_text(f"anchor:\n  name: {anchor_dir}\n  max_length: 16\ntrain:\n  num_workers: 0\n  save_every: 0\n")
    out = tmp_path / "demo"
    args = ["demo", "-m", "vec", "--config", str(config), "--output", str(out), "--num-workers", "0"]
    with pytest.raises(SystemExit) as info:
        run_cli([*args, "--min-top1", "101"])  # no model reaches 101 %
    assert info.value.code == 1
    summary = json.loads((out / "summary.json").read_text())
    row = summary["modalities"][0]
    assert not summary["passed"] and row["modality"] == "vec" and row["status"] == "below bar"
    card = json.loads((out / "vec" / "eval.json").read_text())
    assert card["dataset"]["reader"] == "demo" and card["dataset"]["split"] == "test"
    assert row["top1"] == pytest.approx(card["metrics"]["top1"])
    assert row["steps"] == 6  # 2 epochs of 24 items in batches of 8
    assert (out / "vec" / "eval.png").is_file() and (out / "vec" / "final" / "vec.safetensors").is_file()
    captured = capsys.readouterr()
    assert "vec" in captured.out and "demo failed: vec" in captured.err

    run_cli([*args, "--min-top1", "0"])  # the finished run is resumed (nothing to train) and evaluated again
    summary = json.loads((out / "summary.json").read_text())
    assert summary["passed"] and summary["modalities"][0]["status"] == "ok"
    assert summary["modalities"][0]["steps"] == 6
    assert summary["modalities"][0]["top1"] == pytest.approx(row["top1"])

    # Another config for vec (as when a plugin's demo preset changes): the old run is trained again, not resumed.
    config.write_text(config.read_text() + "modalities:\n  vec:\n    optim:\n      lr: 0.01\n")
    run_cli([*args, "--min-top1", "0"])
    meta = json.loads((out / "vec" / "final" / "lbind.json").read_text())
    assert meta["modalities"]["vec"]["config"]["optim"]["lr"] == pytest.approx(0.01)
    assert meta["train"]["step"] == 6
