"""Caption store: open and look up in the sharded, memory-mapped store vs. the earlier one-file-per-caption cache.

Writes N random float32 rows (default 1 M x 384) as a few shards through :class:`lbcore.textstore.TextStore`,
then times, in this process: opening the store (cold: the shard files evicted from the page cache with
``posix_fadvise(DONTNEED)``; warm: again), looking up 100 k random captions, building a caption table and
gathering one batch, hashing every row (``verify``) and merging the shards (``compact``). For the per-file
layout it writes 10 k entries the way ``TextEmbeddingCache.put`` did before (one ``.npy`` per caption,
``np.save`` to a temporary file + ``os.replace``) and reads them back the way its ``get`` did (``np.load`` per
file, dtype/shape/finite checks), cold and warm, then times their one-time migration into a shard.

    python benchmarks/textstore.py --write        # appends/replaces the "Caption store" section of RESULTS.md
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from lbcore.textstore import TextStore

FP = hashlib.sha256(b"benchmark-anchor").hexdigest()
HEADING = "# Caption store"
NOTE = """
Where a lookup's time goes (100 k captions, 4 shards, warm, same machine, measured separately): hashing the
captions (sha256 in Python) 0.37 s, binary search in the 4 shards' keys 0.38 s, reading the 100 k random rows
(150 MB) 0.74 s. Training does not repeat this: it builds the caption table once and then gathers only a
batch's rows. The per-file numbers are for 10 k captions only; at 30 M captions that layout means 30 M files
to create, list and open on every node. The migration time is mostly deleting the 10 k files and their 256
folders (file-system metadata operations are slow on this disk: writing the same 10 k files took 3.5 s).
"""


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def evict(paths: list[Path]) -> None:
    """Drop the files' clean pages from the page cache (no root needed), so the next read hits the disk."""
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def captions(n: int) -> list[str]:
    return [f"a caption about thing number {i}" for i in range(n)]


def bench_store(root: Path, rows: int, dim: int, shards: int, queries: int) -> dict[str, float]:
    texts = captions(rows)
    store = TextStore(root, FP, embed_dim=dim)
    rng = np.random.default_rng(0)
    per = -(-rows // shards)
    write_s = 0.0
    for start in range(0, rows, per):
        block = rng.standard_normal((min(per, rows - start), dim), dtype=np.float32)
        _, s = timed(lambda b=block, a=start: store.write_shard(texts[a : a + len(b)], b))
        write_s += s
    store = None  # the readers below open the folder afresh
    paths = TextStore(root, FP).shard_paths()
    pick = [texts[i] for i in np.random.default_rng(1).integers(0, rows, queries)]
    out: dict[str, float] = {"write_s": write_s}
    for label in ("cold", "warm"):
        if label == "cold":
            evict(paths)
        before = rss_mib()
        reader, out[f"open_{label}_s"] = timed(lambda: TextStore(root, FP))
        out[f"open_rss_{label}_mib"] = rss_mib() - before
        got, out[f"lookup_{label}_s"] = timed(lambda r=reader: r.lookup(pick))
        assert got.shape == (queries, dim)
    table, out["table_s"] = timed(lambda: reader.table(texts))
    batch = np.random.default_rng(2).integers(0, rows, 256)
    _, out["gather256_s"] = timed(lambda: table.gather(batch))
    stats = reader.stats()
    out.update(files=stats["files"], bytes=stats["bytes"], shards=stats["shards"])
    _, out["verify_s"] = timed(reader.verify)
    _, out["compact_s"] = timed(reader.compact)
    out["files_compact"] = reader.stats()["files"]
    return out


def legacy_put(folder: Path, text: str, row: np.ndarray) -> Path:
    key = hashlib.sha256(text.encode()).hexdigest()
    target = folder / key[:2] / f"{key}.npy"
    target.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, row, allow_pickle=False)
    fd, tmp = tempfile.mkstemp(dir=target.parent, suffix=".tmp")
    with os.fdopen(fd, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, target)
    return target


def legacy_get(folder: Path, text: str, dim: int) -> np.ndarray | None:
    key = hashlib.sha256(text.encode()).hexdigest()
    try:
        with open(folder / key[:2] / f"{key}.npy", "rb") as f:
            arr = np.load(f, allow_pickle=False)
    except FileNotFoundError:
        return None
    if arr.dtype != np.float32 or arr.shape != (dim,) or not np.isfinite(arr).all():
        return None
    return arr


def bench_legacy(root: Path, n: int, dim: int) -> dict[str, float]:
    folder = root / FP
    texts = captions(n)
    rows = np.random.default_rng(0).standard_normal((n, dim), dtype=np.float32)
    files, write_s = timed(lambda: [legacy_put(folder, t, r) for t, r in zip(texts, rows, strict=True)])
    (folder / "meta.json").write_text(f'{{"embed_dim": {dim}}}')
    out: dict[str, float] = {"write_s": write_s, "files": len(files) + 1}
    for label in ("cold", "warm"):
        if label == "cold":
            evict(files)
        got, out[f"lookup_{label}_s"] = timed(lambda: np.stack([legacy_get(folder, t, dim) for t in texts]))
        assert np.array_equal(got, rows)
    store, out["migrate_s"] = timed(lambda: TextStore(root, FP))
    assert np.array_equal(store.lookup(texts), rows)
    return out


def report(args: argparse.Namespace, new: dict[str, float], old: dict[str, float]) -> str:
    per_k_new = new["lookup_warm_s"] / args.queries * 1000
    per_k_old = old["lookup_warm_s"] / args.legacy * 1000
    return f"""{HEADING}

The sharded, memory-mapped caption store (`lbcore.textstore`) against the earlier one-`.npy`-per-caption
cache. Cold: the files evicted from the page cache first (`posix_fadvise(DONTNEED)`); warm: read again.

Command: `python benchmarks/textstore.py --write` (rows {args.rows:,} x {args.dim}, float32, written as
{args.shards} shards; {args.queries:,} random lookups; per-file cache: {args.legacy:,} captions)

Machine: {platform.platform()}, {os.cpu_count()} CPU cores visible, local disk.

| store | captions | files | bytes | write | open (cold / warm) | lookup (cold / warm) | per 1 k lookups (warm) |
|---|---:|---:|---:|---:|---:|---:|---:|
| sharded (`TextStore`) | {args.rows:,} | {new["files"]} | {new["bytes"] / 2**20:,.0f} MiB | {new["write_s"]:.1f} s | \
{new["open_cold_s"] * 1000:.0f} / {new["open_warm_s"] * 1000:.0f} ms | {args.queries:,}: {new["lookup_cold_s"]:.2f} / \
{new["lookup_warm_s"]:.2f} s | {per_k_new * 1000:.1f} ms |
| per-file (before) | {args.legacy:,} | {old["files"]:,} | - | {old["write_s"]:.1f} s | - | {args.legacy:,}: \
{old["lookup_cold_s"]:.2f} / {old["lookup_warm_s"]:.2f} s | {per_k_old * 1000:.1f} ms |

Sharded store, further: opening it adds {new["open_rss_cold_mib"]:.0f} MiB to the process's resident memory
(keys and rows stay memory-mapped); a caption table over all {args.rows:,} captions builds in
{new["table_s"]:.2f} s and gathers a batch of 256 rows in {new["gather256_s"] * 1000:.2f} ms; hashing every row
(`verify`) takes {new["verify_s"]:.1f} s; `compact` merges the {new["shards"]} shards into one in
{new["compact_s"]:.1f} s ({new["files_compact"]} files then, meta.json included). Migrating the {args.legacy:,}
per-file entries into one shard takes {old["migrate_s"]:.2f} s, once.
{NOTE}"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--queries", type=int, default=100_000)
    parser.add_argument("--legacy", type=int, default=10_000)
    parser.add_argument("--root", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--write", action="store_true", help="write the section into benchmarks/RESULTS.md")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(dir=args.root))
    try:
        new = bench_store(scratch / "sharded", args.rows, args.dim, args.shards, args.queries)
        old = bench_legacy(scratch / "per-file", args.legacy, args.dim)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    text = report(args, new, old)
    print(text)
    if args.write:
        from resultsfile import replace_section  # beside this script

        replace_section(HEADING, text)


if __name__ == "__main__":
    main()
