"""Embedding media files in bulk, and the resumable ``lbind embed`` job.

:func:`iter_embeddings` runs a model over files through a DataLoader whose workers preprocess them; a file that
fails to load is reported by name (with the reason) instead of stopping the run, and the caller decides what
that means (evaluation refuses to score a partial dataset, the embed job carries on and lists it).

The embed job writes two files: the embeddings (``.npy``, or ``.safetensors`` with one tensor named
``embeddings``), float32 [rows, E] and L2-normalised, and a sidecar ``<output>.json`` (e.g. ``emb.npy.json``)
whose ``inputs`` list names the file of every row, in row order, as a resolved absolute path. The sidecar also
records the modality, the checkpoint's sha256 and the files that could not be read (``failed``: path -> reason).
Running the job again with the same output embeds only the inputs not listed yet (files that failed before are
tried again) and appends their rows; a run that stops early keeps what it had written at its last save.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lbcore import __version__
from lbcore.cards import checkpoint_digest
from lbcore.checkpoint import resolve_checkpoint_dir, write_json
from lbcore.data import default_workers
from lbcore.errors import CheckpointError, InputError, LbindError
from lbcore.model import BindModel, load, modality_of

if TYPE_CHECKING:
    from lbcore.modality import Modality

log = logging.getLogger(__name__)

__all__ = [
    "EmbedJobResult",
    "EmbeddedBatch",
    "UnreadableInputsError",
    "collect_inputs",
    "embed_files",
    "embed_job",
    "iter_embeddings",
    "media_similarity",
    "sidecar_path",
]

SIDECAR_FORMAT = "lbind-embeddings"
SIDECAR_VERSION = 1
OUTPUT_SUFFIXES = (".npy", ".safetensors")
SAFETENSORS_KEY = "embeddings"

ProgressCallback = Callable[[int, int], None]  # (inputs done, inputs in all)


class UnreadableInputsError(LbindError):
    """Some input files could not be preprocessed; ``failures`` maps each file to the reason."""

    def __init__(self, failures: Mapping[str, str], what: str) -> None:
        self.failures = dict(failures)
        listing = "\n  ".join(f"{path}: {reason}" for path, reason in list(self.failures.items())[:50])
        more = f"\n  ... and {len(self.failures) - 50} more" if len(self.failures) > 50 else ""
        super().__init__(f"{what}: {len(self.failures)} file(s) could not be read:\n  {listing}{more}")


# ------------------------------------------------------------------------------------------ batched embedding
class _FileDataset(torch.utils.data.Dataset):
    """Item ``i`` -> ``(i, tensor, None)``, or ``(i, None, reason)`` when preprocessing it failed."""

    def __init__(self, modality: Modality, items: Sequence[Any]) -> None:
        self.modality = modality
        self.items = list(items)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str | None]:
        try:
            return index, self.modality.preprocess(self.items[index], train=False), None
        except Exception as err:  # any loader failure is returned by name to the caller, which reports it
            return index, None, f"{type(err).__name__}: {err}"


class _Collate:
    """Stack the samples that loaded through the modality's ``collate``; pass the failures on."""

    def __init__(self, modality: Modality) -> None:
        self.modality = modality

    def __call__(
        self, samples: Sequence[tuple[int, torch.Tensor | None, str | None]]
    ) -> tuple[list[int], torch.Tensor | None, dict[int, str]]:
        ok = [(i, t) for i, t, err in samples if err is None]
        failures = {i: err for i, _, err in samples if err is not None}
        batch = self.modality.collate([t for _, t in ok]) if ok else None
        return [i for i, _ in ok], batch, failures


@dataclass
class EmbeddedBatch:
    """One batch: ``embeddings`` [b, E] of the items at ``indices``; ``failures`` item index -> reason."""

    indices: list[int]
    embeddings: torch.Tensor
    failures: dict[int, str]


def iter_embeddings(
    model: BindModel,
    modality: str,
    items: Sequence[Any],
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
) -> Iterator[EmbeddedBatch]:
    """Embed ``items`` (paths or arrays) batch by batch, in order; embeddings are float32 CPU, normalised.

    Workers preprocess with ``train=False``; the model runs in the calling process, without gradients.
    """
    if batch_size <= 0:
        raise InputError(None, f"batch size {batch_size}", "a positive batch size")
    mod = modality_of(model, modality)
    workers = default_workers() if num_workers is None else num_workers
    loader = torch.utils.data.DataLoader(
        _FileDataset(mod, items),
        batch_size=batch_size,
        shuffle=False,
        num_workers=min(workers, max(len(items) // batch_size, 1)) if workers else 0,
        collate_fn=_Collate(mod),
    )
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for indices, batch, failures in loader:
                if batch is None:
                    emb = torch.empty(0, model.embed_dim or 0)
                else:
                    emb = model.encode(modality, batch.to(model.device)).float().cpu()
                yield EmbeddedBatch(indices, emb, failures)
    finally:
        model.train(was_training)


@dataclass
class EmbeddedFiles:
    """All items: ``embeddings`` [n_ok, E] in the order of ``indices``; ``failures`` item index -> reason."""

    embeddings: torch.Tensor
    indices: list[int]
    failures: dict[int, str]


def embed_files(
    model: BindModel,
    modality: str,
    items: Sequence[Any],
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    progress: ProgressCallback | None = None,
) -> EmbeddedFiles:
    """Embed every item; unreadable ones are left out and listed in ``failures``."""
    parts: list[torch.Tensor] = []
    indices: list[int] = []
    failures: dict[int, str] = {}
    done = 0
    for batch in iter_embeddings(model, modality, items, batch_size=batch_size, num_workers=num_workers):
        parts.append(batch.embeddings)
        indices.extend(batch.indices)
        failures.update(batch.failures)
        done += len(batch.indices) + len(batch.failures)
        if progress is not None:
            progress(done, len(items))
    dim = model.embed_dim or 0
    embeddings = torch.cat(parts) if parts else torch.empty(0, dim)
    return EmbeddedFiles(embeddings, indices, failures)


# ------------------------------------------------------------------------------------------------- inputs
def _hidden(path: Path, base: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(base).parts)


def _expand(path: Path, extensions: set[str] | None, found: list[Path], missing: dict[str, str]) -> None:
    if path.is_dir():
        files = sorted(
            p
            for p in path.rglob("*")
            if p.is_file() and not _hidden(p, path) and (extensions is None or p.suffix.lower() in extensions)
        )
        if not files:
            shown = "/".join(sorted(extensions)) if extensions else "files"
            log.warning("%s: folder holds no %s", path, shown)
        found.extend(files)
    elif path.exists():
        found.append(path)
    else:
        missing[str(path)] = "no such file or folder"


def collect_inputs(
    inputs: Sequence[str | Path], extensions: Sequence[str] | None = None
) -> tuple[list[Path], dict[str, str]]:
    """Resolve the embed job's INPUTS into files, in order and without duplicates.

    Each input is a file, a folder (every file below it, recursively, in sorted order, skipping hidden files
    and folders; with ``extensions``, only files with one of them) or ``@LIST``: a text file with one file or
    folder per line (blank lines and lines starting with ``#`` skipped; relative paths are taken from the
    list file's folder). Returns the files and the inputs that do not exist (path -> reason).
    """
    exts = {e.lower() if e.startswith(".") else "." + e.lower() for e in extensions} if extensions else None
    found: list[Path] = []
    missing: dict[str, str] = {}
    for item in inputs:
        text = str(item)
        if text.startswith("@"):
            listing = Path(text[1:]).expanduser()
            try:
                lines = listing.read_text(encoding="utf-8").splitlines()
            except OSError as err:
                raise InputError(listing, f"cannot read the input list: {err.strerror or err}", "a text file") from err
            except UnicodeDecodeError as err:
                raise InputError(listing, f"the input list is not UTF-8 text: {err}", "one path per line") from err
            for line in lines:
                line = line.strip()
                if line and not line.startswith("#"):
                    entry = Path(line).expanduser()
                    _expand(entry if entry.is_absolute() else listing.parent / entry, exts, found, missing)
        else:
            _expand(Path(text).expanduser(), exts, found, missing)
    unique = list(dict.fromkeys(p.resolve() for p in found))
    return unique, missing


# -------------------------------------------------------------------------------------------- the embed job
def sidecar_path(output: str | Path) -> Path:
    """The JSON that lists the rows of an embeddings file: ``<output>.json``."""
    output = Path(output)
    return output.with_name(output.name + ".json")


def _check_output(output: Path) -> None:
    if output.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(
            output, f"unsupported embeddings file type {output.suffix or '(none)'!r}", ".npy or .safetensors"
        )


def _read_array(output: Path) -> np.ndarray:
    try:
        if output.suffix.lower() == ".npy":
            return np.load(output, allow_pickle=False)
        from safetensors.numpy import load_file

        tensors = load_file(str(output))
    except Exception as err:  # any reader failure: the file is not what the sidecar says
        raise InputError(
            output, f"cannot read the existing embeddings: {err}", "a file written by lbind embed"
        ) from err
    if SAFETENSORS_KEY not in tensors:
        raise InputError(output, f"has no tensor {SAFETENSORS_KEY!r}", "a file written by lbind embed")
    return tensors[SAFETENSORS_KEY]


def _write_array(output: Path, array: np.ndarray, modality: str) -> None:
    """Atomically (temporary file + rename) write [rows, E] float32."""
    tmp = output.with_name(f".{output.name}.tmp")
    if output.suffix.lower() == ".npy":
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
    else:
        from safetensors.numpy import save_file

        save_file({SAFETENSORS_KEY: np.ascontiguousarray(array)}, str(tmp), metadata={"modality": modality})
    os.replace(tmp, output)


@dataclass
class EmbedJobResult:
    """What one run of the embed job did."""

    output: Path
    sidecar: Path
    rows: int  # rows in the file now
    embedded: list[str] = field(default_factory=list)  # inputs embedded in this run
    already_done: int = 0  # requested inputs that were in the file already
    failed: dict[str, str] = field(default_factory=dict)  # requested inputs that could not be read, with why


def _load_state(output: Path, modality: str, digest: str, dim: int) -> tuple[list[str], dict[str, str], np.ndarray]:
    """The rows already in ``output`` (their inputs, the recorded failures, the array), checked against the job."""
    import json

    side = sidecar_path(output)
    if not output.exists() and not side.exists():
        return [], {}, np.zeros((0, dim), np.float32)
    if not side.is_file():
        raise InputError(output, f"exists without its sidecar {side.name}", "both files (or neither: delete it)")
    if not output.is_file():
        raise InputError(side, f"exists without the embeddings file {output.name}", "both files (or delete it)")
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise InputError(side, f"unreadable sidecar: {err}", "the JSON written by lbind embed") from err
    if not isinstance(meta, dict) or meta.get("format") != SIDECAR_FORMAT:
        raise InputError(side, "not an lbind embeddings sidecar", f"format {SIDECAR_FORMAT!r}")
    if meta.get("modality") != modality:
        raise InputError(
            output, f"holds {meta.get('modality')!r} embeddings, not {modality!r}", "another --output for this job"
        )
    recorded = (meta.get("checkpoint") or {}).get("sha256")
    if recorded != digest:
        raise InputError(
            output,
            f"was written with checkpoint {(meta.get('checkpoint') or {}).get('path')} (sha256 {str(recorded)[:12]}), "
            f"not this one (sha256 {digest[:12]}); rows from two models cannot share a file",
            "another --output, or delete the old file and its sidecar",
        )
    inputs = meta.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(p, str) for p in inputs):
        raise InputError(side, "'inputs' is not a list of paths", "the JSON written by lbind embed")
    array = _read_array(output)
    if array.ndim != 2 or array.shape[0] != len(inputs) or array.shape[1] != dim:
        raise InputError(
            output,
            f"holds an array of shape {list(array.shape)} but its sidecar lists {len(inputs)} inputs of a {dim}-d model",
            "the two files of one run (delete both to start again)",
        )
    return inputs, dict(meta.get("failed") or {}), array.astype(np.float32, copy=False)


def embed_job(
    checkpoint: str | Path,
    modality: str,
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    save_every: int = 4096,
    progress: ProgressCallback | None = None,
    model: BindModel | None = None,
) -> EmbedJobResult:
    """Embed the files ``inputs`` names (see :func:`collect_inputs`) into ``output`` (.npy or .safetensors) with
    the checkpoint (or run folder) ``checkpoint``; ``progress(done, total)`` is called as files are embedded.

    Resumes: inputs already listed in the sidecar are skipped, new rows are appended. Unreadable files are
    logged, listed in the sidecar's ``failed`` and in the result, and the job carries on. The files are
    rewritten (atomically) every ``save_every`` new rows and at the end, also when the run is interrupted.
    """
    output = Path(output)
    _check_output(output)
    checkpoint = resolve_checkpoint_dir(checkpoint)  # a run folder or hf://org/name[@rev]
    digest = checkpoint_digest(checkpoint)["sha256"]
    model = model if model is not None else load(checkpoint)
    mod = modality_of(model, modality)
    if model.embed_dim is None:
        raise CheckpointError(f"{checkpoint}: the model does not record its embedding size")
    dim = int(model.embed_dim)
    done, failed_before, array = _load_state(output, modality, digest, dim)
    files, missing = collect_inputs(inputs, getattr(mod, "extensions", None))
    done_set = set(done)
    todo = [p for p in files if str(p) not in done_set]
    result = EmbedJobResult(output, sidecar_path(output), len(done), already_done=len(files) - len(todo))
    failed = dict(failed_before)
    for path in todo:
        failed.pop(str(path), None)  # tried again below
    for path, reason in missing.items():
        failed[path] = reason
        result.failed[path] = reason
        log.warning("%s: %s", path, reason)

    rows = list(done)
    parts = [array]
    unsaved = 0

    def save() -> None:
        stacked = np.concatenate(parts) if len(parts) > 1 else parts[0]
        parts[:] = [stacked]
        output.parent.mkdir(parents=True, exist_ok=True)
        _write_array(output, stacked, modality)
        meta = {
            "format": SIDECAR_FORMAT,
            "format_version": SIDECAR_VERSION,
            "lbind_version": __version__,
            "modality": modality,
            "embed_dim": dim,
            "dtype": "float32",
            "normalized": True,
            "array": output.name,
            "checkpoint": {"path": str(checkpoint.resolve()), "sha256": digest},
            "anchor": {"name": model.anchor_cfg.name, "fingerprint": model.anchor_fingerprint},
            "inputs": rows,
            "failed": failed,
            "updated": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        }
        write_json(sidecar_path(output), meta)
        result.rows = len(rows)

    total = len(todo)
    completed = 0
    try:
        for batch in iter_embeddings(model, modality, todo, batch_size=batch_size, num_workers=num_workers):
            if batch.indices:
                parts.append(batch.embeddings.numpy().astype(np.float32, copy=False))
                names = [str(todo[i]) for i in batch.indices]
                rows.extend(names)
                result.embedded.extend(names)
                unsaved += len(names)
            for index, reason in batch.failures.items():
                path = str(todo[index])
                failed[path] = reason
                result.failed[path] = reason
                log.warning("%s: skipped: %s", path, reason)
            completed += len(batch.indices) + len(batch.failures)
            if progress is not None:
                progress(completed, total)
            if unsaved >= save_every:
                save()
                unsaved = 0
    finally:
        if unsaved or not output.exists() or failed != failed_before:
            save()
    return result


# --------------------------------------------------------------------------------------------- similarity
def media_similarity(model: BindModel, texts: Sequence[str], media: Sequence[tuple[str, Any]]) -> torch.Tensor:
    """Cosine similarities [T, M] of ``texts`` with ``media`` items, given as (modality, path or array) pairs
    in column order. Any unreadable item raises (the caller asked for exactly these)."""
    if not texts:
        raise InputError(None, "no text given", "at least one text")
    if not media:
        raise InputError(None, "no media given", "at least one (modality, file) pair")
    text = model.embed_text(list(texts))  # [T, E]
    columns = torch.empty(len(media), text.shape[1], device=text.device)
    by_modality: dict[str, list[int]] = {}
    for column, (modality, _) in enumerate(media):
        by_modality.setdefault(modality, []).append(column)
    for modality, cols in by_modality.items():
        columns[cols] = model.embed(modality, [media[c][1] for c in cols])  # [m, E] of this modality
    return model.similarity(text, columns)
