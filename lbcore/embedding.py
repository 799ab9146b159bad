"""Embedding media files in bulk, and the resumable ``lbind embed`` job.

:func:`iter_embeddings` runs a model over files through a DataLoader whose workers preprocess them
(:mod:`lbcore.samples`); a file that fails to load is reported by name (with the reason) instead of stopping the
run, and the caller decides what that means (evaluation refuses to score a partial dataset, the embed job
carries on and lists it).

The embed job writes the embeddings and their sidecar (:mod:`lbcore.embedstore`: the format, the atomic commit
and the lock). Running the job again with the same output embeds only the inputs not listed yet (files that
failed before are tried again) and appends their rows; a run that stops early, even killed, keeps what it had
committed at its last save. A second job on the same output is refused while the first runs.

How the job runs (:mod:`lbcore.prefetch`): ``num_workers`` (default: the thread policy's, :mod:`lbcore.threads`,
from ``threads``, the environment or the cores) preprocess a bounded number of items ahead of the encoder, in
worker processes started before the model is loaded (so they hold none of its weights and their first items
overlap its loading) or, with ``prefetch="threads"``, in threads of the job's process (less memory; as parallel
as the plugin's preprocessing releases the GIL, which decoders and torch operations do). The encoder takes all
the process's cores as torch threads while it is the slower side and the cores the workers leave while it waits
for them (:class:`~lbcore.prefetch.EncoderThreads`; a count set in ``threads`` or the environment is kept).
``precision="bfloat16"`` runs the encoder under bfloat16 autocast (faster where the CPU or GPU has bfloat16
matrix units; rows differ from float32's in about the third significant digit) and still writes float32 rows.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from lbcore import __version__
from lbcore.cards import checkpoint_digest
from lbcore.checkpoint import read_meta, resolve_checkpoint_dir
from lbcore.deprecation import moved_names
from lbcore.embedstore import SIDECAR_FORMAT, SIDECAR_VERSION, EmbedStore, check_output, lock_output, sidecar_path
from lbcore.encoders import checkpoint_modality
from lbcore.errors import CheckpointError, InputError, LbindError
from lbcore.modality import Modality
from lbcore.model import BindModel, load, modality_of
from lbcore.prefetch import (
    EMBED_WORKER_SHARE,
    EncoderThreads,
    Prefetch,
    ThreadFetches,
    preprocess_workers,
    regroup,
    start_fetches,
)
from lbcore.samples import Collated
from lbcore.threads import ThreadsConfig, choose_policy

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

ProgressCallback = Callable[[int, int], None]  # (inputs done, inputs in all)

# Public names that moved out of this module: the old import path works for one release, with a warning.
_MOVED = dict.fromkeys(("OUTPUT_SUFFIXES", "SAFETENSORS_KEY"), "lbcore.embedstore")


__getattr__ = moved_names(__name__, _MOVED)


class UnreadableInputsError(LbindError):
    """Some input files could not be preprocessed; ``failures`` maps each file to the reason."""

    def __init__(self, failures: Mapping[str, str], what: str) -> None:
        self.failures = dict(failures)
        listing = "\n  ".join(f"{path}: {reason}" for path, reason in list(self.failures.items())[:50])
        more = f"\n  ... and {len(self.failures) - 50} more" if len(self.failures) > 50 else ""
        super().__init__(f"{what}: {len(self.failures)} file(s) could not be read:\n  {listing}{more}")


# ------------------------------------------------------------------------------------------ batched embedding
@dataclass
class EmbeddedBatch:
    """One batch: ``embeddings`` [b, E] of the items at ``indices``; ``failures`` item index -> reason."""

    indices: list[int]
    embeddings: torch.Tensor
    failures: dict[int, str]


Precision = Literal["float32", "bfloat16"]
PRECISIONS: tuple[str, ...] = ("float32", "bfloat16")
"""The encoder's compute precision in embedding jobs (rows are written as float32 either way)."""


def _encoded(
    model: BindModel,
    modality: str,
    batches: Iterator[Collated],
    precision: Precision = "float32",
    threads: EncoderThreads | None = None,
) -> Iterator[EmbeddedBatch]:
    """Run the encoder over ``batches`` (no autograd state kept; ``bfloat16``: under autocast); embeddings
    float32 on the CPU, normalised. ``threads`` hears how long each batch was waited for and encoded."""
    if precision not in PRECISIONS:
        raise InputError(None, f"precision {precision!r}", " or ".join(PRECISIONS))
    was_training = model.training
    model.eval()
    cuda = model.device.type == "cuda"
    try:
        while True:
            started = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                return
            ready = time.perf_counter()
            if batch.inputs is None:
                emb = torch.empty(0, model.embed_dim or 0)
            else:
                inputs = batch.inputs.pin_memory() if cuda else batch.inputs  # pinned: an async copy to the GPU
                with torch.inference_mode(), _autocast(model.device, precision):
                    emb = model.encode(modality, inputs.to(model.device, non_blocking=cuda)).float().cpu()
            if threads is not None:
                threads.after_batch(ready - started, time.perf_counter() - ready)
            yield EmbeddedBatch(batch.indices, emb, batch.failures)
    finally:
        model.train(was_training)


def _autocast(device: torch.device, precision: Precision) -> Any:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bfloat16")


def iter_embeddings(
    model: BindModel,
    modality: str,
    items: Sequence[Any],
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
) -> Iterator[EmbeddedBatch]:
    """Embed ``items`` (paths or arrays) batch by batch, in order; embeddings are float32 CPU, normalised.

    Workers (``num_workers``, default: :func:`~lbcore.prefetch.preprocess_workers`) preprocess with ``train=False``, one torch thread
    each (:func:`~lbcore.threads.worker_init_fn`), a bounded number of items ahead of the encoder, which runs
    in the calling process without gradients. Batches hold the same items as :meth:`BindModel.embed`'s.
    """
    if batch_size <= 0:
        raise InputError(None, f"batch size {batch_size}", "a positive batch size")
    mod = modality_of(model, modality)
    fetches = start_fetches(mod, items, preprocess_workers(num_workers))
    yield from _encoded(model, modality, regroup(mod, fetches, batch_size))


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
@dataclass
class EmbedJobResult:
    """What one run of the embed job did."""

    output: Path
    sidecar: Path
    rows: int  # rows in the file now
    embedded: list[str] = field(default_factory=list)  # inputs embedded in this run
    already_done: int = 0  # requested inputs that were in the file already
    failed: dict[str, str] = field(default_factory=dict)  # requested inputs that could not be read, with why


def _sidecar_header(modality: str, checkpoint: Path, digest: str, embed_dim: Any) -> dict[str, Any]:
    """The sidecar's description of the job: everything but its rows and failures (``anchor`` is filled in
    from the loaded model, see :func:`_anchor_entry`)."""
    if not isinstance(embed_dim, int) or embed_dim <= 0:
        raise CheckpointError(f"{checkpoint}: the model does not record its embedding size")
    return {
        "format": SIDECAR_FORMAT,
        "format_version": SIDECAR_VERSION,
        "lbind_version": __version__,
        "modality": modality,
        "embed_dim": embed_dim,
        "dtype": "float32",
        "normalized": True,
        "array": None,  # set by embed_job: the output's file name
        "checkpoint": {"path": str(checkpoint.resolve()), "sha256": digest},
        "anchor": None,
    }


def _anchor_entry(model: BindModel, checkpoint: Path, embed_dim: int) -> dict[str, Any]:
    if model.embed_dim != embed_dim:
        raise CheckpointError(f"{checkpoint}: the model embeds into {model.embed_dim} dimensions, not {embed_dim}")
    return {"name": model.anchor_cfg.name, "fingerprint": model.anchor_fingerprint}


def _plan(store: EmbedStore, files: Sequence[Path], missing: Mapping[str, str], result: EmbedJobResult) -> list[Path]:
    """The files still to embed; inputs that do not exist are recorded as failed (in the store and the result)."""
    done = set(store.inputs)
    todo = [p for p in files if str(p) not in done]
    result.already_done = len(files) - len(todo)
    for path in todo:
        store.failed.pop(str(path), None)  # tried again
    for path, reason in missing.items():
        store.failed[path] = reason
        result.failed[path] = reason
        log.warning("%s: %s", path, reason)
    return todo


def _embed_into(
    store: EmbedStore,
    todo: Sequence[Path],
    batches: Iterator[EmbeddedBatch],
    result: EmbedJobResult,
    *,
    save_every: int,
    progress: ProgressCallback | None,
) -> None:
    """Write ``batches`` (of ``todo``) into ``store``, saving every ``save_every`` new rows and at the end (also
    on interruption)."""
    completed = 0
    try:
        for batch in batches:
            names = [str(todo[i]) for i in batch.indices]
            if names:
                store.append(names, batch.embeddings.numpy())
                result.embedded.extend(names)
            for index, reason in batch.failures.items():
                store.failed[str(todo[index])] = result.failed[str(todo[index])] = reason
                log.warning("%s: skipped: %s", todo[index], reason)
            completed += len(batch.indices) + len(batch.failures)
            if progress is not None:
                progress(completed, len(todo))
            if store.unsaved >= save_every:
                store.save()
    finally:
        if store.pending:
            store.save()
        result.rows = len(store)


def _job_modality(checkpoint: Path, modality: str, model: BindModel | None) -> tuple[Modality, Any]:
    """The job's modality and the embedding size the checkpoint records, without loading weights."""
    if model is not None:
        return modality_of(model, modality), model.embed_dim
    return checkpoint_modality(checkpoint, modality), read_meta(checkpoint)["anchor"].get("embed_dim")


def embed_job(
    checkpoint: str | Path,
    modality: str,
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    batch_size: int = 32,
    num_workers: int | None = None,
    threads: ThreadsConfig | None = None,
    precision: Precision = "float32",
    prefetch: Prefetch = "processes",
    save_every: int = 4096,
    progress: ProgressCallback | None = None,
    model: BindModel | None = None,
) -> EmbedJobResult:
    """Embed the files ``inputs`` names (see :func:`collect_inputs`) into ``output`` (.npy or .safetensors) with
    the checkpoint (or run folder) ``checkpoint``; ``progress(done, total)`` is called as files are embedded.

    Resumes: inputs already listed in the sidecar are skipped, new rows are appended. Unreadable files are
    logged, listed in the sidecar's ``failed`` and in the result, and the job carries on. The output is
    committed (atomically, see :mod:`lbcore.embedstore`) every ``save_every`` new rows and at the end, also when
    the run is interrupted; :class:`~lbcore.embedstore.OutputLockedError` if another job writes ``output``.

    Threads, ``num_workers``, ``prefetch`` and ``precision``: see the module docstring.
    """
    if batch_size <= 0 or precision not in PRECISIONS:
        raise InputError(None, f"batch size {batch_size}, precision {precision!r}", f"> 0, {' or '.join(PRECISIONS)}")
    output = Path(output)
    check_output(output)
    checkpoint = resolve_checkpoint_dir(checkpoint)  # a run folder or hf://org/name[@rev]
    mod, embed_dim = _job_modality(checkpoint, modality, model)
    header = _sidecar_header(modality, checkpoint, checkpoint_digest(checkpoint)["sha256"], embed_dim)
    header["array"] = output.name
    policy = choose_policy(threads, worker_share=EMBED_WORKER_SHARE)
    workers = preprocess_workers(num_workers if num_workers is not None else policy.workers)
    auto = policy.sources.get("torch_threads") == "auto"  # else the user's count, kept all along
    with lock_output(output):
        store = EmbedStore.open(output, header)
        result = EmbedJobResult(output, sidecar_path(output), len(store))
        files, missing = collect_inputs(inputs, mod.extensions)
        todo = _plan(store, files, missing, result)
        fetches = start_fetches(mod, todo, workers, prefetch)  # workers start now, before the weights are in memory
        encoder_threads = EncoderThreads(policy.torch_threads, policy.cores if auto else policy.torch_threads)
        try:
            model = model if model is not None else load(checkpoint)
            store.header["anchor"] = _anchor_entry(model, checkpoint, embed_dim)
            store.claim()
            batches = _encoded(model, modality, regroup(mod, fetches, batch_size), precision, encoder_threads)
            _embed_into(store, todo, batches, result, save_every=save_every, progress=progress)
        finally:
            encoder_threads.restore()
            if isinstance(fetches, ThreadFetches):
                fetches.close()
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
