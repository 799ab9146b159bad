"""Hub ids: model folders named by their Hugging Face Hub repository, resolved to local snapshot folders.

Wherever lbind takes a model folder it also takes a hub id:

* ``hf://org/name`` or ``hf://org/name@revision`` (a branch, tag or commit) everywhere: checkpoints
  (:func:`lbcore.load`, ``--checkpoint``), CLIP towers, LanguageBind releases, anchors, adapter bases;
* a bare ``org/name[@revision]`` where a hub id is what one usually names (``--init clip:org/name``,
  ``lbind convert languagebind org/name``, ``anchor.name``), when no local folder of that name exists.
  A checkpoint needs the ``hf://`` prefix, so that a mistyped run folder is reported as missing, not looked up.

:func:`resolve` fetches only the files lbind reads (:data:`FILE_SETS`) with ``huggingface_hub.snapshot_download``
into the standard cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``, else ``~/.cache/huggingface/hub``) and returns
the snapshot folder. With ``HF_HUB_OFFLINE=1`` (or ``TRANSFORMERS_OFFLINE=1``) only the cache is read; a hub id
that is not cached raises :class:`~lbcore.errors.HubNotCachedError` naming the id, the revision and the cache
folder. Environment variables are read at each call, not at import.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from huggingface_hub import snapshot_download
from huggingface_hub.errors import (
    HfHubHTTPError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from lbcore.errors import HubError, HubNotCachedError

__all__ = [
    "FILE_SETS",
    "HUB_SCHEME",
    "FileSet",
    "HubId",
    "SourceKind",
    "cache_folder",
    "checkpoint_folder",
    "download",
    "hub_origin",
    "is_offline",
    "looks_like_path",
    "parse_hub_id",
    "resolve",
]

HUB_SCHEME = "hf://"
SourceKind = Literal["checkpoint", "clip", "languagebind", "anchor"]

# A Hub repository id: namespace/name, letters, digits, '.', '_' and '-' (the Hub also forbids '--' and '..').
_REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}/[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class HubId:
    """A Hub model repository and the revision to take (None: the default branch, ``main``)."""

    repo_id: str
    revision: str | None = None

    def __str__(self) -> str:
        return HUB_SCHEME + self.repo_id + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class FileSet:
    """The files lbind reads from a repository of one kind: ``patterns`` (fnmatch, as ``allow_patterns``),
    ``fallback`` fetched only when the snapshot holds no safetensors weights (pickled weights are large and
    usually duplicate them), and the ``required`` file without which the snapshot is not what was asked for."""

    what: str
    patterns: tuple[str, ...]
    required: str
    fallback: tuple[str, ...] = ()


_MODEL_FILES = ("*.json", "*.txt", "*.model", "*.safetensors")  # config, tokenizer files, weights
_PICKLED_WEIGHTS = ("pytorch_model*.bin",)
FILE_SETS: dict[str, FileSet] = {
    "checkpoint": FileSet("lbind checkpoint", ("lbind.json", "*.safetensors", "README.md", "anchor/*"), "lbind.json"),
    "clip": FileSet("transformers CLIP checkpoint", _MODEL_FILES, "config.json", _PICKLED_WEIGHTS),
    "languagebind": FileSet("LanguageBind release", _MODEL_FILES, "config.json", _PICKLED_WEIGHTS),
    "anchor": FileSet("Hugging Face text encoder", _MODEL_FILES, "config.json", _PICKLED_WEIGHTS),
}
_BARE_IDS = ("clip", "languagebind", "anchor")  # kinds that take ``org/name`` without the hf:// prefix


def is_offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE`` asks Hugging Face libraries not to use the network."""
    return any(os.environ.get(var, "").strip().lower() in _TRUE for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def cache_folder() -> Path:
    """The Hugging Face hub cache: ``HF_HUB_CACHE`` (or the older ``HUGGINGFACE_HUB_CACHE``), else
    ``HF_HOME/hub``, else ``$XDG_CACHE_HOME/huggingface/hub`` (default ``~/.cache/huggingface/hub``)."""
    env = os.environ
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if env.get(var):
            return Path(env[var]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    xdg = env.get("XDG_CACHE_HOME") or str(Path("~/.cache"))
    return Path(xdg).expanduser() / "huggingface" / "hub"


def looks_like_path(name: str) -> bool:
    """Names no hub id can have: absolute, home- or dot-relative paths, deeper than org/name, OS separators."""
    return (
        os.path.isabs(name)
        or name.startswith(("~", "./", "../", ".\\"))
        or name.split("@", 1)[0].count("/") > 1
        or (os.sep != "/" and os.sep in name)
    )


def parse_hub_id(text: str, *, bare: bool = False) -> HubId | None:
    """The :class:`HubId` that ``text`` names: ``hf://org/name[@revision]``, or with ``bare`` also
    ``org/name[@revision]``; None when ``text`` is not a hub id. A malformed ``hf://`` id raises :class:`HubError`."""
    prefixed = text.startswith(HUB_SCHEME)
    if not prefixed and (not bare or looks_like_path(text)):
        return None
    body = text[len(HUB_SCHEME) :] if prefixed else text
    repo_id, sep, revision = body.partition("@")
    if not _REPO_ID.fullmatch(repo_id) or "--" in repo_id or ".." in repo_id or (sep and not revision):
        if prefixed:
            raise HubError(
                f"{text}: not a valid hub id; expected {HUB_SCHEME}ORG/NAME or {HUB_SCHEME}ORG/NAME@REVISION "
                "(a branch, tag or commit)"
            )
        return None
    return HubId(repo_id, revision or None)


def hub_origin(path: str | Path) -> HubId | None:
    """The repository and commit of a folder inside a hub cache snapshot (``models--org--name/snapshots/<commit>``,
    or a folder below it); None for any other folder."""
    parts = Path(path).parts
    for i in range(len(parts) - 2, 0, -1):
        if parts[i] == "snapshots" and parts[i - 1].startswith("models--"):
            repo_id = parts[i - 1][len("models--") :].replace("--", "/")
            return HubId(repo_id, parts[i + 1]) if _REPO_ID.fullmatch(repo_id) else None
    return None


def _fetch_hint(hub: HubId) -> str:
    revision = f" --revision {hub.revision}" if hub.revision else ""
    return f"`hf download {hub.repo_id}{revision}`"


def _snapshot(hub: HubId, patterns: tuple[str, ...], bare: bool) -> Path:
    """``snapshot_download`` of ``patterns`` into :func:`cache_folder`, cache only when offline; typed errors."""
    cache, offline = cache_folder(), is_offline()
    revision = hub.revision or "main"
    local = " (there is no local folder of that name either)" if bare else ""
    try:
        folder = snapshot_download(
            hub.repo_id,
            revision=hub.revision,
            allow_patterns=list(patterns),
            cache_dir=str(cache),
            local_files_only=offline,
        )
    except LocalEntryNotFoundError as err:
        why = "offline mode is on (HF_HUB_OFFLINE)" if offline else "the Hub cannot be reached"
        raise HubNotCachedError(
            f"{hub}: revision {revision!r} is not in the Hugging Face cache {cache}{local}, and {why}; fetch it "
            f"once with network access ({_fetch_hint(hub)}, with the same HF_HOME / HF_HUB_CACHE), or pass a "
            f"local folder (cause: {err})",
            hub.repo_id,
            hub.revision,
            cache,
        ) from err
    except RevisionNotFoundError as err:
        raise HubError(f"{hub}: the repository has no revision {revision!r} (a branch, tag or commit)") from err
    except RepositoryNotFoundError as err:  # also gated repositories
        raise HubError(
            f"{hub}: no model repository {hub.repo_id!r} on the Hub that this login may read{local}; check the "
            "name, or log in (`hf auth login`, or set HF_TOKEN) for a private or gated one"
        ) from err
    except (HfHubHTTPError, OSError) as err:
        raise HubError(f"{hub}: download into {cache} failed: {err}") from err
    return Path(folder)


def download(hub: HubId, kind: SourceKind, *, bare: bool = False) -> Path:
    """The local snapshot folder of ``hub`` holding the files of ``kind`` (:data:`FILE_SETS`), downloaded when
    missing (cache only when offline). Raises :class:`HubError` / :class:`HubNotCachedError`."""
    files = FILE_SETS[kind]
    folder = _snapshot(hub, files.patterns, bare)
    if files.fallback and not any(folder.glob("*.safetensors")):
        folder = _snapshot(hub, files.patterns + files.fallback, bare)
    if not (folder / files.required).is_file():
        how = "in the cache" if is_offline() else "in the repository"
        raise HubError(
            f"{hub}: the snapshot {folder} holds no {files.required} {how}; expected a {files.what} "
            f"(fetch the whole repository with {_fetch_hint(hub)} if the cached copy is partial)"
        )
    return folder


def resolve(source: str | os.PathLike[str], kind: SourceKind) -> Path:
    """The local folder (or file) ``source`` names: a hub id's snapshot folder (see the module docs for which
    spellings are hub ids for ``kind``), otherwise ``source`` as a path, unchecked: the caller's loader says
    what is missing there. A :class:`os.PathLike` is always a local path."""
    if not isinstance(source, str):
        return Path(source).expanduser()
    bare = kind in _BARE_IDS and not source.startswith(HUB_SCHEME) and not Path(source).expanduser().exists()
    hub = parse_hub_id(source, bare=bare)
    if hub is None:
        return Path(source).expanduser()
    return download(hub, kind, bare=bare)


def checkpoint_folder(source: str | os.PathLike[str]) -> Path:
    """An lbind checkpoint folder: ``hf://org/name[@revision]`` resolved through the cache, or a local path."""
    return resolve(source, "checkpoint")
