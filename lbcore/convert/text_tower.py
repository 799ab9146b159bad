"""A release's text tower -> a CLIP anchor folder that :class:`lbcore.anchor.Anchor` loads.

Named ``text_tower`` rather than ``anchor`` so that it is never confused with :mod:`lbcore.anchor` (the
frozen text encoder itself), which the checkpoint writer imports next to it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from lbcore.convert.clip import POSITION_IDS, TEXT_PREFIXES
from lbcore.convert.languagebind import LanguageBindRelease
from lbcore.convert.weights import read_json
from lbcore.errors import CheckpointError

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.json",
    "merges.txt",
    "special_tokens_map.json",
    "added_tokens.json",
)
ANCHOR_MAX_LENGTH = 77


def _text_tower(release: LanguageBindRelease) -> dict[str, Tensor]:
    state = {k: v for k, v in release.state.items() if k.startswith(TEXT_PREFIXES) and not POSITION_IDS.fullmatch(k)}
    if not state:
        raise CheckpointError(f"{release.weights}: no text tower (text_model.*, text_projection.weight)")
    return state


def _text_config(release: LanguageBindRelease, text_state: Mapping[str, Tensor]) -> Any:
    """transformers CLIPTextConfig of the release's text tower, with the outer projection_dim."""
    from transformers import CLIPTextConfig  # heavy: transformers takes seconds to import; only export needs it

    raw = release.config.get("text_config")
    if not isinstance(raw, dict):
        raise CheckpointError(f"{release.config_file}: no text_config section")
    data = {k: v for k, v in raw.items() if not k.startswith("_")}
    data["model_type"] = "clip_text_model"
    config = CLIPTextConfig.from_dict(data)
    proj = text_state.get("text_projection.weight")
    if proj is None or proj.dim() != 2:
        raise CheckpointError(f"{release.weights}: no text_projection.weight [embed_dim, width]")
    outer = release.config.get("projection_dim")
    if outer is not None and outer != proj.shape[0]:
        raise CheckpointError(
            f"{release.config_file}: projection_dim {outer} but text_projection.weight is {tuple(proj.shape)}"
        )
    config.projection_dim = int(proj.shape[0])
    config.architectures = ["CLIPTextModelWithProjection"]
    return config


def _check_text_state(config: Any, text_state: Mapping[str, Tensor], source: str) -> None:
    """The text tower must fill CLIPTextModelWithProjection exactly (transformers would only warn and leave
    random weights)."""
    from transformers import CLIPTextModelWithProjection  # heavy (see _text_config)

    with torch.device("meta"):  # shapes only: no memory, no initialisation
        reference = CLIPTextModelWithProjection(config)
    expected = {k: v for k, v in reference.state_dict().items() if not POSITION_IDS.fullmatch(k)}
    missing = sorted(set(expected) - set(text_state))
    unexpected = sorted(set(text_state) - set(expected))
    shapes = [
        f"{k}: {tuple(text_state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in text_state and tuple(text_state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source}: the text tower does not match its text_config: missing {missing[:5] or 'none'}, "
            f"unexpected {unexpected[:5] or 'none'}, shapes {shapes[:5] or 'ok'}"
        )


def _copy_tokenizer(folder: Path, target: Path, source: Path) -> list[str]:
    """Copy the tokenizer files; make tokenizer_config.json name a class transformers knows (LanguageBind's
    files name its own LanguageBind*Tokenizer subclasses of CLIPTokenizer)."""
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name  # heavy (see _text_config)

    present = [name for name in TOKENIZER_FILES if (folder / name).is_file()]
    if "tokenizer.json" not in present and not {"vocab.json", "merges.txt"} <= set(present):
        raise CheckpointError(
            f"{folder}: no tokenizer files (tokenizer.json, or vocab.json + merges.txt); the anchor needs the "
            f"release's CLIP tokenizer: pass a folder that has them with --tokenizer (source: {source})"
        )
    for name in present:
        shutil.copyfile(folder / name, target / name)
    report = []
    config_path = target / "tokenizer_config.json"
    tok_config = read_json(config_path) if config_path.is_file() else {}
    cls = tok_config.get("tokenizer_class")
    if cls is None or tokenizer_class_from_name(str(cls)) is None:
        tok_config["tokenizer_class"] = "CLIPTokenizer"
        report.append(f"tokenizer_class {cls!r} -> 'CLIPTokenizer' (the same BPE, a class transformers knows)")
    if tok_config.pop("auto_map", None) is not None:
        report.append("dropped tokenizer_config.json's auto_map (it points at LanguageBind's own code)")
    config_path.write_text(json.dumps(tok_config, indent=2) + "\n", encoding="utf-8")
    return report


def write_languagebind_anchor(
    release: LanguageBindRelease, directory: str | Path, tokenizer: str | Path | None = None
) -> tuple[int, list[str]]:
    """Save a release's text tower as a CLIP anchor folder that :class:`lbcore.anchor.Anchor` loads.

    Writes config.json (clip_text_model, the release's text_config and projection), model.safetensors
    (``text_model.*`` and ``text_projection.weight``) and the tokenizer files of ``tokenizer`` (default: the
    release folder). Returns the token limit to use (the text tower's positions, at most 77) and a report.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text_state = _text_tower(release)
    config = _text_config(release, text_state)
    _check_text_state(config, text_state, release.weights)
    report = _copy_tokenizer(Path(tokenizer).expanduser() if tokenizer else release.source, directory, release.source)
    config.save_pretrained(directory)
    # safetensors refuses tensors that share memory; a contiguous copy of each is also what it writes.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in text_state.items()}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    max_length = min(ANCHOR_MAX_LENGTH, int(getattr(config, "max_position_embeddings", ANCHOR_MAX_LENGTH)))
    return max_length, report
