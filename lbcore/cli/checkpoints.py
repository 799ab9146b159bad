"""The ``--checkpoint`` option of ``lbind eval``, ``embed`` and ``similarity``: a checkpoint folder, a run folder
or a hub id, resolved to one checkpoint folder (:func:`lbcore.checkpoint.resolve_checkpoint_dir`)."""

from __future__ import annotations

from lbcore.checkpoint import read_meta, resolve_checkpoint_dir
from lbcore.errors import ConfigError

CHECKPOINT_HELP = "Checkpoint folder, run folder, or a hub id hf://ORG/NAME[@REVISION]."


def checkpoint_dir(path: str) -> str:
    """A checkpoint folder; a run folder stands for its final (else newest) checkpoint, a hub id for its copy in the
    Hugging Face cache."""
    return str(resolve_checkpoint_dir(path))


def only_modality(checkpoint: str, modality: str | None) -> str:
    """``modality``, or the checkpoint's only modality (a :class:`ConfigError` when it holds several)."""
    if modality:
        return modality
    names = list(read_meta(resolve_checkpoint_dir(checkpoint))["modalities"])
    if len(names) != 1:
        raise ConfigError(f"{checkpoint} holds {', '.join(names)}: choose one with --modality")
    return names[0]
