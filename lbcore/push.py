"""Uploading a checkpoint folder to the Hugging Face Hub with its model card (``lbind push``).

The upload goes through :class:`huggingface_hub.HfApi`: ``create_repo`` (kept if it exists), ``create_branch``
for a revision other than ``main``, then one ``upload_folder`` commit of the checkpoint folder with the card
(:mod:`lbcore.modelcard`) rewritten first, so that it lists the result cards found beside the checkpoint. The
token is the one given, else huggingface_hub's own (``HF_TOKEN``, or ``hf auth login``). Training state and
hidden files stay behind. ``lbcore.load("hf://ORG/NAME")`` reads the result.
"""

from __future__ import annotations

import logging
from pathlib import Path

from huggingface_hub import HfApi

from lbcore.cards import cards_of
from lbcore.checkpoint import TRAIN_STATE_DIR, read_meta
from lbcore.errors import HubError
from lbcore.hub import parse_hub_id
from lbcore.modelcard import portability_problems, write_model_card

log = logging.getLogger(__name__)

__all__ = ["IGNORED_FILES", "push_checkpoint"]

IGNORED_FILES = (f"{TRAIN_STATE_DIR}/*", ".*", "*/.*")  # optimiser state, staging and editor files


def push_checkpoint(
    path: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    token: str | None = None,
    commit_message: str | None = None,
    license: str | None = None,
) -> str:
    """Upload the checkpoint folder ``path`` to the Hub model repository ``repo_id`` (``org/name``, also
    ``hf://org/name`` or ``org/name@branch``); return the
    URL of what was uploaded (the repository, or its ``revision`` branch).

    The repository is created when missing (``private`` applies then), ``revision`` names the branch to commit
    to (created from ``main`` when missing). The folder's README.md is rewritten as the model card with
    ``license`` and the metrics of its result cards, unless someone else wrote it (see
    :func:`lbcore.modelcard.write_model_card`). Raises :class:`~lbcore.errors.CheckpointError` when ``path`` is
    not a checkpoint, :class:`~lbcore.errors.HubError` for a malformed ``repo_id``; what would keep the
    checkpoint from loading elsewhere is logged as warnings first.
    """
    folder = Path(path).expanduser()
    meta = read_meta(folder)
    hub = parse_hub_id(repo_id, bare=True)
    if hub is None or (hub.revision and revision and hub.revision != revision):
        raise HubError(
            f"{repo_id!r}: not a Hub repository id; expected ORG/NAME (a user or organisation, then the model name), "
            "with the branch given once (ORG/NAME@BRANCH or revision=BRANCH)"
        )
    repo_id, revision = hub.repo_id, revision or hub.revision
    for problem in portability_problems(meta):
        log.warning("%s: %s", folder, problem)
    write_model_card(folder, meta, repo_id=repo_id, license=license, results=cards_of(folder))
    api = HfApi(token=token)
    url = api.create_repo(repo_id, private=private, repo_type="model", exist_ok=True)
    if revision and revision != "main":
        api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
    names = ", ".join(meta["modalities"])
    api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="model",
        revision=revision,
        commit_message=commit_message or f"Upload lbind checkpoint ({names})",
        ignore_patterns=list(IGNORED_FILES),
    )
    target = str(url).rstrip("/")
    return f"{target}/tree/{revision}" if revision and revision != "main" else target
