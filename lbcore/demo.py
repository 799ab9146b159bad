"""The embedded default: each modality's procedural demo dataset, generated once and cached."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from lbcore.config import default_cache_dir
from lbcore.modality import Modality

log = logging.getLogger(__name__)

SPLITS = ("train", "test")


def demo_data(modality: Modality, seed: int = 0, cache_dir: Path | None = None) -> dict[str, Path]:
    """Manifests of the modality's demo dataset (``{"train": ..., "test": ...}``), generating it on first use.

    The generator writes into a temporary folder that is renamed into place, so an interrupted or concurrent
    generation never leaves a half-written dataset behind.
    """
    root = Path(cache_dir) if cache_dir is not None else default_cache_dir() / "demo"
    target = root / modality.name / f"v{modality.demo_version}-seed{seed}"
    manifests = {split: target / f"{split}.jsonl" for split in SPLITS}
    if all(p.is_file() for p in manifests.values()):
        return manifests
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}-", dir=target.parent))
    try:
        log.info("generating the %s demo dataset (seed %d) in %s", modality.name, seed, target)
        modality.make_demo_data(tmp, seed=seed)
        missing = [s for s in SPLITS if not (tmp / f"{s}.jsonl").is_file()]
        if missing:
            raise RuntimeError(
                f"{type(modality).__module__}: make_demo_data wrote no {', '.join(missing)} manifest in {tmp}"
            )
        try:
            tmp.rename(target)
        except OSError:
            if not all(p.is_file() for p in manifests.values()):  # not a concurrent winner: a real failure
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return manifests
