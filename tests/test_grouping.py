"""Grouped alignment: the group loss against a hand computation (rows missing a member left out), its
gradients reaching every member's encoder, the gradient cache with groups, fusion save/load, and a grouped run.

Two fake 1-D signal modalities (``gva``, ``gvb``) read ``.npy`` files; a paired manifest names both per row.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

import lbcore
from lbcore.config import AnchorConfig
from lbcore.data import Batch
from lbcore.errors import ConfigError
from lbcore.groupengine import GroupedEngine
from lbcore.grouping import GROUPS_FILE, GroupFusion, build_groups, shared_rows
from lbcore.model import BindModel
from lbcore.plugins import default_registry

PLUGIN = "lbfake_groupsig"
EMBED = 16

PLUGIN_SOURCE = """
from pathlib import Path

import numpy as np
import torch

from lbcore import hookimpl
from lbcore.config import ModalityConfig
from lbcore.modality import Modality
from lbcore.nn import PatchStem1d

TINY = {
    "encoder": {"width": 32, "depth": 1, "heads": 2, "patch_size": 4},
    "lora": {"rank": 0},
    "optim": {"lr": 1e-3, "warmup_steps": 1, "epochs": 1, "batch_size": 6},
}


class GvA(Modality):
    name = "gva"
    Config = ModalityConfig
    presets = {"languagebind": TINY, "demo": TINY}
    templates = ("a signal of {}.",)

    def preprocess(self, item, train=False):
        if isinstance(item, (str, Path)):
            item = np.load(item)
        return torch.as_tensor(np.asarray(item, dtype=np.float32)).reshape(1, -1)

    def example_input(self, seed=0):
        return np.random.default_rng(seed).standard_normal(16).astype(np.float32)

    def build_stem(self):
        return PatchStem1d(1, self.config.encoder.width, self.config.encoder.patch_size, 16)


class GvB(GvA):
    name = "gvb"


@hookimpl
def register_modalities(register):
    register(GvA)
    register(GvB)
"""


@pytest.fixture
def fk(load_plugin: Any) -> Any:
    return load_plugin(PLUGIN, PLUGIN_SOURCE)


def tiny_model(groups: list[list[str]] | None = None, fusion: str = "learned") -> BindModel:
    mods = {}
    for name in ("gva", "gvb"):
        cls = default_registry().registered(name).cls
        mods[name] = cls(cls.config_preset("demo"))
    torch.manual_seed(0)
    encoders = {n: m.build_encoder(EMBED) for n, m in mods.items()}
    return BindModel(
        AnchorConfig(), encoders, mods, anchor_fingerprint="0" * 64, embed_dim=EMBED,
        groups=build_groups(groups or [], EMBED, fusion),
    )  # fmt: skip


def cpu_accelerator() -> Any:
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def hand_clip_loss(a: torch.Tensor, b: torch.Tensor, scale: float) -> torch.Tensor:
    """Symmetric InfoNCE written out: mean over rows of -log softmax on the diagonal, both directions."""
    logits = scale * a @ b.t()
    rows = -(logits.diag() - logits.exp().sum(1).log()).mean()
    cols = -(logits.diag() - logits.exp().sum(0).log()).mean()
    return (rows + cols) / 2


def data(n: int = 8, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    xa, xb = torch.randn(n, 1, 16, generator=gen), torch.randn(n, 1, 16, generator=gen)
    table = F.normalize(torch.randn(n, EMBED, generator=gen), dim=-1)
    return xa, xb, table


def test_shared_rows_keeps_the_first_members_order() -> None:
    a, b = torch.tensor([5, 2, 9, 7]), torch.tensor([7, 5, 1])
    pa, pb = shared_rows([a, b])
    assert a[pa].tolist() == [5, 7] and b[pb].tolist() == [5, 7]


def test_rows_missing_a_member_are_left_out_of_the_group_loss(fk: Any) -> None:
    xa, xb, table = data()
    ids = torch.arange(8)
    have_b = torch.tensor([0, 2, 3, 5, 6])  # rows 1, 4, 7 lack gvb
    model = tiny_model([["gva", "gvb"]], fusion="mean")
    engine = GroupedEngine(cpu_accelerator(), model, {"gva": table, "gvb": table})
    micro = {"gva": [Batch(xa, ids, ids)], "gvb": [Batch(xb[have_b], have_b, have_b)]}
    result = engine.forward_backward(micro, step=0)

    ref = tiny_model()
    with torch.no_grad():
        fa = F.normalize(ref.encoders["gva"](xa), dim=-1)[have_b]
        fb = F.normalize(ref.encoders["gvb"](xb[have_b]), dim=-1)
    fused = F.normalize((fa + fb) / 2, dim=-1)
    expected = hand_clip_loss(fused, table[have_b], 1 / 0.07)
    assert result.losses["gva+gvb"] == pytest.approx(float(expected), rel=1e-5)
    # All eight rows (the missing ones filled with anything) would give another value.
    assert result.samples == {"gva": 8, "gvb": 5}
    with torch.no_grad():
        own = hand_clip_loss(F.normalize(ref.encoders["gva"](xa), dim=-1), table, 1 / 0.07)
    assert result.losses["gva"] == pytest.approx(float(own), rel=1e-5)


def _grads(model: BindModel) -> dict[str, torch.Tensor]:
    out = {f"{m}.{n}": p.grad.clone() for m in model.encoders for n, p in model.encoders[m].named_parameters()}
    out.update({f"group.{n}": p.grad.clone() for n, p in model.groups.named_parameters()})
    return out


def test_group_gradients_reach_both_encoders_and_match_autograd(fk: Any) -> None:
    xa, xb, table = data()
    ids = torch.arange(8)
    acc = cpu_accelerator()
    one = tiny_model([["gva", "gvb"]])
    GroupedEngine(acc, one, {"gva": table, "gvb": table}, group_weight=0.5).forward_backward(
        {"gva": [Batch(xa, ids, ids)], "gvb": [Batch(xb, ids, ids)]}, step=0
    )
    two = tiny_model([["gva", "gvb"]])
    GroupedEngine(acc, two, {"gva": table, "gvb": table}, group_weight=0.5).forward_backward(
        {"gva": [Batch(xa[:4], ids[:4], ids[:4]), Batch(xa[4:], ids[4:], ids[4:])],
         "gvb": [Batch(xb[:4], ids[:4], ids[:4]), Batch(xb[4:], ids[4:], ids[4:])]}, step=0,
    )  # fmt: skip

    ref = tiny_model([["gva", "gvb"]])
    fa = F.normalize(ref.encoders["gva"](xa), dim=-1)
    fb = F.normalize(ref.encoders["gvb"](xb), dim=-1)
    fusion = ref.groups["gva+gvb"]
    w = torch.softmax(fusion.mix, 0)
    fused = F.normalize(fusion.proj(w[0] * fa + w[1] * fb), dim=-1)
    s = ref.logit_scales
    loss = hand_clip_loss(fa, table, s["gva"].value.exp()) + hand_clip_loss(fb, table, s["gvb"].value.exp())
    (loss + 0.5 * hand_clip_loss(fused, table, fusion.logit_scale.value.exp())).backward()

    g1, g2, gr = _grads(one), _grads(two), _grads(ref)
    for name in gr:
        torch.testing.assert_close(g1[name], gr[name], atol=1e-6, rtol=1e-5)
        torch.testing.assert_close(g2[name], gr[name], atol=1e-6, rtol=1e-5)
    # Without the group loss, both encoders get other gradients: the group loss reaches each of them.
    alone = tiny_model()
    GroupedEngine(acc, alone, {"gva": table, "gvb": table}).forward_backward(
        {"gva": [Batch(xa, ids, ids)], "gvb": [Batch(xb, ids, ids)]}, step=0
    )
    ga = _grads(alone)
    for member in ("gva", "gvb"):
        w_name = f"{member}.head.proj.weight"
        assert (ga[w_name] - gr[w_name]).abs().max() > 1e-6
    assert gr["group.gva+gvb.mix"].abs().max() > 0 and gr["group.gva+gvb.proj.weight"].abs().max() > 0


def test_saved_group_fusion_loads_back_identical(fk: Any, tmp_path: Path) -> None:
    model = tiny_model([["gva", "gvb"]])
    fusion = model.groups["gva+gvb"]
    with torch.no_grad():
        fusion.mix.copy_(torch.tensor([0.7, -0.2]))
        fusion.proj.weight.add_(0.01 * torch.randn(EMBED, EMBED))
        fusion.logit_scale.value.fill_(3.1)
    model.save_pretrained(tmp_path / "ckpt")
    meta = json.loads((tmp_path / "ckpt" / "lbind.json").read_text())
    assert meta["groups"] == [
        {"members": ["gva", "gvb"], "fusion": "learned", "linear": True,
         "logit_scale": pytest.approx(3.1), "key": "gva+gvb", "file": GROUPS_FILE}
    ]  # fmt: skip
    loaded = lbcore.load(tmp_path / "ckpt").groups["gva+gvb"]
    for name, tensor in fusion.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    a, b = F.normalize(torch.randn(3, EMBED), dim=-1), F.normalize(torch.randn(3, EMBED), dim=-1)
    assert torch.equal(loaded([a, b]), fusion([a, b]))


def test_mean_fusion_is_the_renormalised_mean_and_learned_starts_there() -> None:
    a, b = F.normalize(torch.randn(4, 8), dim=-1), F.normalize(torch.randn(4, 8), dim=-1)
    expected = F.normalize(a + b, dim=-1)
    torch.testing.assert_close(GroupFusion(["x", "y"], 8, "mean")([a, b]), expected)
    torch.testing.assert_close(GroupFusion(["x", "y"], 8, "learned")([a, b]), expected)


def write_paired(root: Path, n: int, missing_b: set[int]) -> Path:
    import numpy as np

    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        label = i % 3
        t = np.linspace(0, 1, 16, dtype=np.float32)
        np.save(root / f"a{i}.npy", np.sin(2 * np.pi * (label + 1) * t) + 0.1 * rng.standard_normal(16))
        row = {"gva": f"a{i}.npy", "captions": [f"class {label} with tone {i % 2}"]}
        if i not in missing_b:
            np.save(root / f"b{i}.npy", np.cos(2 * np.pi * (i % 2 + 1) * t) + 0.1 * rng.standard_normal(16))
            row["gvb"] = f"b{i}.npy"
        rows.append(row)
    (root / "paired.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root / "paired.jsonl"


def run_config(anchor_dir: Path, output: Path, manifest: Path, **train: Any) -> dict[str, Any]:
    settings = {"output_dir": str(output), "num_workers": 0, "save_every": 0, "log_every": 1,
                "data": {"gva": str(manifest), "gvb": str(manifest)}, "groups": [["gva", "gvb"]]}  # fmt: skip
    return {
        "anchor": {"name": str(anchor_dir), "max_length": 16},
        "modalities": {"gva": {"preset": "demo"}, "gvb": {"preset": "demo"}},
        "train": {**settings, **train},
    }


def test_a_grouped_run_trains_saves_and_resumes_its_fusion(fk: Any, anchor_dir: Path, tmp_path: Path) -> None:
    manifest = write_paired(tmp_path / "data", 24, missing_b={1, 5, 9})
    final = lbcore.train(run_config(anchor_dir, tmp_path / "run", manifest, max_steps=4, save_every=2))
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss/gva+gvb"]) for r in rows)
    model = lbcore.load(final)
    assert model.groups["gva+gvb"].mix.abs().max() > 0  # trained away from equal weights
    # A resumed run from step 2 ends with the same fusion as the uninterrupted one.
    import shutil

    shutil.rmtree(tmp_path / "run" / "final")
    again = lbcore.train(run_config(anchor_dir, tmp_path / "run", manifest, max_steps=4, save_every=2, resume=True))
    resumed = lbcore.load(again).groups["gva+gvb"]
    for name, tensor in model.groups["gva+gvb"].state_dict().items():
        torch.testing.assert_close(resumed.state_dict()[name], tensor, atol=1e-6, rtol=0)


def test_group_config_errors_name_the_problem(fk: Any, anchor_dir: Path, tmp_path: Path) -> None:
    manifest = write_paired(tmp_path / "data", 12, missing_b=set())
    with pytest.raises(ConfigError, match="not trained in this run"):
        lbcore.train(run_config(anchor_dir, tmp_path / "r1", manifest, groups=[["gva", "nope"]]))
    other = write_paired(tmp_path / "other", 12, missing_b=set())
    cfg = run_config(anchor_dir, tmp_path / "r2", manifest)
    cfg["train"]["data"]["gvb"] = str(other)
    with pytest.raises(ConfigError, match="read different manifests"):
        lbcore.train(cfg)
