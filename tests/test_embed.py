"""`lbind embed` (batched, resumable, unreadable files reported) and `lbind similarity`, on a fake plugin whose
encoder is the identity: the expected embedding of a file is the vector stored in it, normalised (numpy)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

PLUGIN = "lbfake_embedvec"
DIM = 4

PLUGIN_SOURCE = """
import os

import numpy as np
import torch
from torch import nn

from lbcore import hookimpl
from lbcore.config import ModalityConfig
from lbcore.errors import InputError
from lbcore.modality import Modality

DIM = 4


class Identity(nn.Module):
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
    presets = {"languagebind": {}, "demo": {}}
    templates = ("a {} vector.",)
    extensions = (".npy",)

    def preprocess(self, item, train=False):
        log = os.environ.get("LBFAKE_VEC_LOG")
        if log and isinstance(item, (str, os.PathLike)):
            with open(log, "a") as f:
                f.write(f"{item}\\n")
        threads_log = os.environ.get("LBFAKE_VEC_THREADS_LOG")
        if threads_log:
            decoder = os.environ.get("LBIND_DECODER_THREADS")
            with open(threads_log, "a") as f:
                f.write(f"{os.getpid()} {torch.get_num_threads()} {decoder}\\n")
        if isinstance(item, (str, os.PathLike)):
            try:
                item = np.load(item, allow_pickle=False)
            except (OSError, ValueError) as err:
                raise InputError(item, f"cannot read: {err}", "a .npy vector") from err
        return torch.as_tensor(np.asarray(item, dtype=np.float32))

    def example_input(self, seed=0):
        return np.ones(DIM, dtype=np.float32)

    def build_stem(self):
        return nn.Identity()

    def build_encoder(self, embed_dim):
        return Identity(embed_dim)


@hookimpl
def register_modalities(register):
    register(Vec)
"""


@pytest.fixture
def ckpt(load_plugin: Any, tmp_path: Path) -> Path:
    """A checkpoint of the identity encoder, its anchor fingerprint unique to the test."""
    from lbcore.config import AnchorConfig
    from lbcore.model import BindModel
    from lbcore.plugins import default_registry

    load_plugin(PLUGIN, PLUGIN_SOURCE)
    mod = default_registry().registered("vec").cls()
    fp = hashlib.sha256(str(tmp_path).encode()).hexdigest()
    model = BindModel(
        AnchorConfig(), {"vec": mod.build_encoder(DIM)}, {"vec": mod}, anchor_fingerprint=fp, embed_dim=DIM
    )
    return model.save_pretrained(tmp_path / "ckpt")


def write_vec(path: Path, values: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.asarray(values, dtype=np.float32))
    return path


def unit(values: Any) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    return v / np.linalg.norm(v)


def run_cli(args: list[str]) -> None:
    from lbcore.cli import main

    main(args)


def read_sidecar(output: Path) -> dict[str, Any]:
    return json.loads(output.with_name(output.name + ".json").read_text())


VECTORS = {
    "a": [1, 2, 0, 0],
    "sub/b": [0, 0, 3, 4],
    "sub/deeper/c": [1, 1, 1, 1],
    ".hidden/h": [9, 9, 9, 9],
}


def make_inputs(root: Path) -> None:
    for name, v in VECTORS.items():
        write_vec(root / f"{name}.npy", v)
    (root / "notes.txt").write_text("not an input")  # not a .npy: ignored when walking the folder


def test_embed_folders_files_and_lists_in_order(ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    make_inputs(data)
    extra = write_vec(tmp_path / "lists" / "x" / "d.npy", [0, 5, 0, 0])
    (tmp_path / "lists" / "inputs.txt").write_text("# one per line, relative to this file\n\nx/d.npy\n")
    out = tmp_path / "out" / "emb.npy"
    run_cli(["embed", "-c", str(ckpt), str(data), f"@{tmp_path / 'lists' / 'inputs.txt'}", "-o", str(out),
             "--num-workers", "0"])  # fmt: skip
    side = read_sidecar(out)
    expected_order = [data / "a.npy", data / "sub" / "b.npy", data / "sub" / "deeper" / "c.npy", extra]
    assert side["inputs"] == [str(p.resolve()) for p in expected_order]
    assert side["modality"] == "vec" and side["embed_dim"] == DIM and side["failed"] == {}
    rows = np.load(out)
    want = np.stack([unit(VECTORS["a"]), unit(VECTORS["sub/b"]), unit(VECTORS["sub/deeper/c"]), unit([0, 5, 0, 0])])
    assert rows.dtype == np.float32 and rows.shape == (4, DIM)
    np.testing.assert_allclose(rows, want, atol=1e-6)
    assert "embed summary" in capsys.readouterr().out


def test_rerunning_with_more_inputs_embeds_only_the_new_ones(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    make_inputs(data)
    out = tmp_path / "emb.safetensors"
    log = tmp_path / "preprocessed.log"
    monkeypatch.setenv("LBFAKE_VEC_LOG", str(log))
    run_cli(["embed", "-c", str(ckpt), str(data), "-o", str(out), "--num-workers", "0"])
    assert len(log.read_text().splitlines()) == 3
    first = read_sidecar(out)["inputs"]

    log.unlink()
    new = write_vec(data / "sub" / "e.npy", [0, 0, 0, 2])
    # Two workers and batches of 1: the new file goes through the DataLoader's worker processes.
    run_cli(["embed", "-c", str(ckpt), str(data), "-o", str(out), "--num-workers", "2", "--batch-size", "1"])
    assert log.read_text().splitlines() == [str(new.resolve())]
    side = read_sidecar(out)
    assert side["inputs"] == [*first, str(new.resolve())]  # appended, earlier rows untouched
    from safetensors.numpy import load_file

    rows = load_file(str(out))["embeddings"]
    assert rows.shape == (4, DIM)
    np.testing.assert_allclose(rows[-1], unit([0, 0, 0, 2]), atol=1e-6)
    np.testing.assert_allclose(rows[0], unit(VECTORS["a"]), atol=1e-6)


def test_unreadable_files_are_listed_and_the_rest_is_embedded(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    make_inputs(data)
    bad = data / "sub" / "broken.npy"
    bad.write_bytes(b"not numpy at all")
    gone = tmp_path / "missing.npy"
    out = tmp_path / "emb.npy"
    args = ["embed", "-c", str(ckpt), str(data), str(gone), "-o", str(out), "--num-workers", "0"]
    with pytest.raises(SystemExit) as info:
        run_cli(args)
    assert info.value.code == 1
    side = read_sidecar(out)
    assert set(side["failed"]) == {str(bad.resolve()), str(gone)}
    assert "cannot read" in side["failed"][str(bad.resolve())]
    assert len(side["inputs"]) == 3 and np.load(out).shape == (3, DIM)
    err = capsys.readouterr().err.replace("\n", "")
    assert "broken.npy" in err and "missing.npy" in err

    write_vec(bad, [2, 0, 0, 0])  # fixed: tried again on the next run, the missing one still fails
    with pytest.raises(SystemExit):
        run_cli(args)
    side = read_sidecar(out)
    assert set(side["failed"]) == {str(gone)}
    assert side["inputs"][-1] == str(bad.resolve())
    np.testing.assert_allclose(np.load(out)[-1], [1, 0, 0, 0], atol=1e-6)


def test_a_file_from_another_checkpoint_is_not_appended_to(ckpt: Path, tmp_path: Path) -> None:
    from safetensors.numpy import load_file, save_file

    from lbcore.embedding import embed_job
    from lbcore.errors import InputError

    data = tmp_path / "data"
    make_inputs(data)
    out = tmp_path / "emb.npy"
    embed_job(ckpt, "vec", [data], out, num_workers=0)
    weights = ckpt / "vec.safetensors"
    tensors = load_file(str(weights))
    save_file({k: v * 2 for k, v in tensors.items()}, str(weights))  # other weights: another checkpoint
    with pytest.raises(InputError, match="sha256"):
        embed_job(ckpt, "vec", [data], out, num_workers=0)
    with pytest.raises(InputError, match=r"\.npy or \.safetensors"):
        embed_job(ckpt, "vec", [data], tmp_path / "emb.pt", num_workers=0)


# ------------------------------------------------------------------------------------------------ similarity
TEXTS = {"pointing up": [0, 0, 1, 0], "mostly first": [1, 0.5, 0, 0]}


def fill_cache(ckpt: Path) -> None:
    import torch

    from lbcore.anchor import TextEmbeddingCache

    fp = json.loads((ckpt / "lbind.json").read_text())["anchor"]["fingerprint"]
    for text, v in TEXTS.items():
        t = torch.tensor(v, dtype=torch.float32)
        TextEmbeddingCache().put(fp, text, t / t.norm())


def test_similarity_matrix_from_modality_options(
    ckpt: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill_cache(ckpt)
    a = write_vec(tmp_path / "a.npy", [1, 0, 0, 0])
    b = write_vec(tmp_path / "b.npy", [0, 0, 3, 4])
    png = tmp_path / "sim.png"
    run_cli(["similarity", "-c", str(ckpt), "--text", "pointing up", "--text", "mostly first", "--vec", str(a),
             "--input", f"vec={b}", "--json", "--plot", str(png)])  # fmt: skip
    out = json.loads(capsys.readouterr().out)
    want = np.array([[unit(t) @ unit(v) for v in ([1, 0, 0, 0], [0, 0, 3, 4])] for t in TEXTS.values()])
    np.testing.assert_allclose(out["cosine"], want, atol=1e-6)
    assert [m["path"] for m in out["media"]] == [str(a), str(b)]
    assert png.read_bytes()[:4] == b"\x89PNG"

    run_cli(["similarity", "-c", str(ckpt), "-t", "pointing up", "-t", "mostly first", "--vec", str(a), "--vec",
             str(b), "--softmax", "--json"])  # fmt: skip
    probs = np.array(json.loads(capsys.readouterr().out)["softmax"])
    np.testing.assert_allclose(probs.sum(0), [1.0, 1.0], atol=1e-6)  # per file: a distribution over the texts
    scale = 1 / 0.07  # the initial learned temperature of a fresh model
    logits = want * scale
    expected = np.exp(logits - logits.max(0)) / np.exp(logits - logits.max(0)).sum(0)
    np.testing.assert_allclose(probs, expected, atol=1e-5)

    run_cli(["similarity", "-c", str(ckpt), "-t", "pointing up", "--vec", str(a)])
    assert "cosine similarity" in capsys.readouterr().out


def test_similarity_help_lists_one_option_per_modality(ckpt: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_cli(["similarity", "--help"])
    out = capsys.readouterr().out
    assert "--vec FILE" in out and "--input" in out
    assert out.index("--vec FILE") < out.index("--help")


# ------------------------------------------------------------------------ file types, atomic commit, one writer
def test_a_folder_gives_only_files_with_the_modality_extensions(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lbcore.embedding import embed_job
    from lbcore.modality import Modality
    from lbcore.plugins import default_registry

    assert Modality.extensions == ()  # the contract's default: any file
    data = tmp_path / "data"
    make_inputs(data)
    upper = write_vec(data / "up.npy", [0, 1, 0, 0]).rename(data / "UP.NPY")  # suffixes match in any case
    result = embed_job(ckpt, "vec", [data], tmp_path / "a.npy", num_workers=0)
    assert result.failed == {} and len(result.embedded) == 4 and str(upper.resolve()) in result.embedded

    monkeypatch.setattr(default_registry().registered("vec").cls, "extensions", ())
    result = embed_job(ckpt, "vec", [data], tmp_path / "b.npy", num_workers=0)
    assert list(result.failed) == [str((data / "notes.txt").resolve())]  # no declared types: every file is tried
    assert len(result.embedded) == 4


@pytest.mark.parametrize(("dies_at", "committed"), [(2, 0), (3, 1)])
def test_a_failure_between_the_array_and_its_sidecar_loses_no_row(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, dies_at: int, committed: int
) -> None:
    import lbcore.embedstore
    from lbcore.embedding import embed_job

    data = tmp_path / "data"
    make_inputs(data)
    out = tmp_path / "emb.npy"
    real = lbcore.embedstore.write_json
    calls: list[int] = []

    def dies(path: Path, meta: dict[str, Any]) -> None:  # call 1 is the empty claim; each save writes one more
        calls.append(1)
        if len(calls) >= dies_at:
            raise OSError("killed")
        real(path, meta)

    monkeypatch.setattr(lbcore.embedstore, "write_json", dies)
    with pytest.raises(OSError, match="killed"):
        embed_job(ckpt, "vec", [data], out, num_workers=0, batch_size=1, save_every=1)
    assert len(read_sidecar(out)["inputs"]) == committed
    assert np.load(out).shape == (committed + 1, DIM)  # the array got ahead of its commit record

    monkeypatch.setattr(lbcore.embedstore, "write_json", real)
    result = embed_job(ckpt, "vec", [data], out, num_workers=0)
    assert result.already_done == committed and result.rows == 3
    names = ["a", "sub/b", "sub/deeper/c"]
    assert read_sidecar(out)["inputs"] == [str((data / f"{n}.npy").resolve()) for n in names]
    np.testing.assert_allclose(np.load(out), np.stack([unit(VECTORS[n]) for n in names]), atol=1e-6)


def test_a_second_writer_on_the_same_output_is_refused(ckpt: Path, tmp_path: Path) -> None:
    from filelock import FileLock

    from lbcore.embedding import embed_job
    from lbcore.embedstore import OutputLockedError

    data = tmp_path / "data"
    make_inputs(data)
    out = tmp_path / "emb.npy"
    held = FileLock(str(tmp_path / ".emb.npy.lock"))  # as another running job holds it
    with held:
        with pytest.raises(OutputLockedError, match=r"emb\.npy: another lbind embed job is writing this output"):
            embed_job(ckpt, "vec", [data], out, num_workers=0)
        assert not out.exists() and not out.with_name("emb.npy.json").exists()
    assert embed_job(ckpt, "vec", [data], out, num_workers=0).rows == 3


@pytest.mark.slow
def test_the_lock_holds_across_processes(ckpt: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    from lbcore.embedding import embed_job
    from lbcore.embedstore import OutputLockedError

    data = tmp_path / "data"
    make_inputs(data)
    out = tmp_path / "emb.npy"
    code = (
        "import sys\nfrom pathlib import Path\nfrom lbcore.embedstore import lock_output\n"
        "with lock_output(Path(sys.argv[1])):\n    print('held', flush=True)\n    sys.stdin.read()\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputLockedError):
            embed_job(ckpt, "vec", [data], out, num_workers=0)
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        assert holder.wait(timeout=60) == 0
    assert embed_job(ckpt, "vec", [data], out, num_workers=0).rows == 3  # released when that process ended


# ------------------------------------------------------------------------------------ the job's pipeline
def test_workers_preprocess_with_one_thread_each_and_the_job_restores_torch_threads(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import torch

    from lbcore.embedding import embed_job

    data = tmp_path / "data"
    for i in range(12):
        write_vec(data / f"v{i:02d}.npy", [i + 1, 1, 0, 0])
    log = tmp_path / "threads.log"
    monkeypatch.setenv("LBFAKE_VEC_THREADS_LOG", str(log))
    monkeypatch.delenv("LBIND_DECODER_THREADS", raising=False)
    before = torch.get_num_threads()
    result = embed_job(ckpt, "vec", [data], tmp_path / "emb.npy", num_workers=2, batch_size=5)
    assert torch.get_num_threads() == before
    assert len(result.embedded) == 12 and result.rows == 12
    lines = [line.split() for line in log.read_text().splitlines()]
    assert len(lines) == 12
    assert {pid for pid, _, _ in lines} - {str(os.getpid())} == {pid for pid, _, _ in lines}  # all in workers
    assert len({pid for pid, _, _ in lines}) == 2
    assert {(threads, decoder) for _, threads, decoder in lines} == {("1", "1")}  # worker_init_fn ran
    rows = np.load(tmp_path / "emb.npy")
    want = np.stack([unit([i + 1, 1, 0, 0]) for i in range(12)])
    np.testing.assert_allclose(rows, want, atol=1e-6)


def test_batches_hold_the_items_of_consecutive_slices_failures_included() -> None:
    from lbcore.prefetch import regroup
    from lbcore.samples import Preprocessed

    class Stack:
        name = "vec"

        @staticmethod
        def collate(tensors: list[Any]) -> Any:
            import torch

            return torch.stack(tensors)

    import torch

    items = [
        Preprocessed(i, None, "broken") if i in (3, 4, 9) else Preprocessed(i, torch.full((2,), float(i)), None)
        for i in range(11)
    ]
    fetches = iter([items[0:4], items[4:8], items[8:11]])  # fetches of 4 do not line up with batches of 3
    batches = list(regroup(Stack(), fetches, 3))  # type: ignore[arg-type]
    assert [b.indices for b in batches] == [[0, 1, 2], [5], [6, 7, 8], [10]]
    assert [sorted(b.failures) for b in batches] == [[], [3, 4], [], [9]]
    assert batches[2].inputs is not None and batches[2].inputs[:, 0].tolist() == [6.0, 7.0, 8.0]


def test_bfloat16_rows_are_close_to_float32_rows_and_other_precisions_are_refused(ckpt: Path, tmp_path: Path) -> None:
    from lbcore.embedding import embed_job
    from lbcore.errors import InputError

    data = tmp_path / "data"
    make_inputs(data)
    embed_job(ckpt, "vec", [data], tmp_path / "f32.npy", num_workers=0)
    embed_job(ckpt, "vec", [data], tmp_path / "bf16.npy", num_workers=0, precision="bfloat16")
    f32, bf16 = np.load(tmp_path / "f32.npy"), np.load(tmp_path / "bf16.npy")
    assert bf16.dtype == np.float32
    np.testing.assert_allclose(bf16, f32, atol=2e-2)
    assert np.all(np.sum(bf16 * f32, axis=1) > 0.999)
    with pytest.raises(InputError, match="precision"):
        embed_job(ckpt, "vec", [data], tmp_path / "x.npy", precision="float16")  # type: ignore[arg-type]


def test_prefetch_in_threads_preprocesses_in_this_process_with_the_same_rows(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import threading

    from lbcore.embedding import embed_job
    from lbcore.errors import InputError

    data = tmp_path / "data"
    for i in range(10):
        write_vec(data / f"v{i:02d}.npy", [1, i, 0, 2])
    (data / "v99.npy").write_bytes(b"broken")
    log = tmp_path / "threads.log"
    monkeypatch.setenv("LBFAKE_VEC_THREADS_LOG", str(log))
    before = threading.active_count()
    result = embed_job(ckpt, "vec", [data], tmp_path / "t.npy", num_workers=2, batch_size=3, prefetch="threads")
    assert {line.split()[0] for line in log.read_text().splitlines()} == {str(os.getpid())}
    assert list(result.failed) == [str((data / "v99.npy").resolve())]
    embed_job(ckpt, "vec", [data], tmp_path / "p.npy", num_workers=2, batch_size=3)
    np.testing.assert_array_equal(np.load(tmp_path / "t.npy"), np.load(tmp_path / "p.npy"))
    assert read_sidecar(tmp_path / "t.npy")["inputs"] == read_sidecar(tmp_path / "p.npy")["inputs"]
    for thread in threading.enumerate():  # the pool's threads end with the job
        if thread.name.startswith("lbind-preprocess"):
            thread.join(timeout=10)
    assert threading.active_count() <= before
    with pytest.raises(InputError, match="prefetch"):
        embed_job(ckpt, "vec", [data], tmp_path / "x.npy", prefetch="fibers")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- the output grows in place
def test_a_npy_output_grows_in_place_and_holds_no_committed_row_in_memory(ckpt: Path, tmp_path: Path) -> None:
    import os

    from lbcore.embedding import embed_job
    from lbcore.embedstore import EmbedStore

    data = tmp_path / "data"
    for i in range(5):
        write_vec(data / f"v{i}.npy", [i + 1, 0, 1, 0])
    out = tmp_path / "emb.npy"
    embed_job(ckpt, "vec", [data], out, num_workers=0, batch_size=2, save_every=1)
    inode = os.stat(out).st_ino
    for i in range(5, 9):
        write_vec(data / f"v{i}.npy", [i + 1, 0, 1, 0])
    result = embed_job(ckpt, "vec", [data], out, num_workers=0, batch_size=3, save_every=1)
    assert result.already_done == 5 and len(result.embedded) == 4
    assert os.stat(out).st_ino == inode  # appended to, not rewritten
    rows = np.load(out)
    np.testing.assert_allclose(rows, np.stack([unit([i + 1, 0, 1, 0]) for i in range(9)]), atol=1e-6)
    assert os.path.getsize(out) == 128 + rows.nbytes  # numpy's padded header, then exactly the rows

    store = EmbedStore.open(out, {**read_sidecar(out), "array": out.name})
    assert store.parts == [] and store.first_in_memory == 9 and len(store) == 9


def test_a_kill_between_the_new_rows_and_the_npy_header_keeps_the_committed_rows(
    ckpt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    import lbcore.embedstore
    from lbcore.embedding import embed_job

    data = tmp_path / "data"
    for i in range(3):
        write_vec(data / f"v{i}.npy", [0, i + 1, 0, 1])
    out = tmp_path / "emb.npy"
    embed_job(ckpt, "vec", [data], out, num_workers=0)
    size = os.path.getsize(out)
    for i in range(3, 6):
        write_vec(data / f"v{i}.npy", [0, i + 1, 0, 1])

    def killed(fd: int) -> None:  # the first fsync comes after the rows, before the header counts them
        raise OSError("killed")

    monkeypatch.setattr(lbcore.embedstore.os, "fsync", killed)
    with pytest.raises(OSError, match="killed"):
        embed_job(ckpt, "vec", [data], out, num_workers=0)
    assert os.path.getsize(out) > size  # the new rows are in the file ...
    assert np.load(out).shape == (3, DIM)  # ... but not counted: the header still says 3
    assert len(read_sidecar(out)["inputs"]) == 3

    monkeypatch.undo()
    result = embed_job(ckpt, "vec", [data], out, num_workers=0)
    assert result.already_done == 3 and result.rows == 6
    np.testing.assert_allclose(np.load(out), np.stack([unit([0, i + 1, 0, 1]) for i in range(6)]), atol=1e-6)


def test_cli_prefetch_and_precision_options(ckpt: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    make_inputs(data)
    out = tmp_path / "emb.npy"
    run_cli(["embed", "-c", str(ckpt), str(data), "-o", str(out), "--num-workers", "2",
             "--prefetch", "threads", "--precision", "bfloat16"])  # fmt: skip
    rows = np.load(out)
    want = np.stack([unit(VECTORS[n]) for n in ("a", "sub/b", "sub/deeper/c")])
    assert rows.dtype == np.float32
    np.testing.assert_allclose(rows, want, atol=2e-2)
    with pytest.raises(SystemExit) as info:
        run_cli(["embed", "-c", str(ckpt), str(data), "-o", str(tmp_path / "x.npy"), "--prefetch", "fibers"])
    assert info.value.code == 2  # click refuses the choice


def test_encoder_threads_follow_the_slower_side_and_are_restored() -> None:
    import torch

    from lbcore.prefetch import EncoderThreads

    before = torch.get_num_threads()
    threads = EncoderThreads(1, 3)
    try:
        assert torch.get_num_threads() == 3  # starts with every core: nothing measured yet
        threads.after_batch(waited=2.0, computed=0.1)  # the encoder waits for preprocessing
        assert torch.get_num_threads() == 1
        threads.after_batch(waited=0.01, computed=4.0)  # the workers are ahead
        assert torch.get_num_threads() == 3
    finally:
        threads.restore()
    assert torch.get_num_threads() == before
    fixed = EncoderThreads(2, 2)
    fixed.after_batch(waited=5.0, computed=0.0)
    assert torch.get_num_threads() == 2
    fixed.restore()
