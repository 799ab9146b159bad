"""The anchor fingerprint: a sha256 naming everything that decides a text encoder's embeddings.

Two anchors with the same fingerprint compute the same embeddings, so their cached caption embeddings
(:mod:`lbcore.textstore`) are shared; any change of weights, config, pooling, token limit or tokenizer gives
a new fingerprint and a new cache folder.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import torch

__all__ = ["compute_fingerprint"]

# Config fields that describe where or how a model was saved, not what it computes: left out of the
# fingerprint so that the same weights loaded from a copy, a hub id or memory share one cache folder.
_VOLATILE_CONFIG_KEYS = (
    "_name_or_path",
    "name_or_path",
    "transformers_version",
    "architectures",
    "dtype",
    "torch_dtype",
)
_FINGERPRINT_VERSION = "lbind-anchor-fingerprint-v1"


def _tokenizer_spec(tokenizer: Any) -> dict[str, Any]:
    """What in the tokenizer decides the token ids: its vocabulary, normaliser and special tokens.

    The truncation and padding state of a fast tokenizer changes with every call, so it is dropped.
    """
    spec: dict[str, Any] = {"class": type(tokenizer).__name__}
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        # The tokenizers library serialises vocab and merges in id order, so this JSON is stable.
        full = json.loads(backend.to_str())
        full.pop("truncation", None)
        full.pop("padding", None)
        spec["backend"] = full
    else:
        spec["vocab"] = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
        spec["init"] = {
            k: v for k, v in getattr(tokenizer, "init_kwargs", {}).items() if isinstance(v, (str, int, float, bool))
        }
    spec["special"] = {k: str(v) for k, v in sorted(tokenizer.special_tokens_map.items())}
    return spec


def _model_config_spec(model: torch.nn.Module) -> dict[str, Any]:
    """The model config (layer norm eps, activation, head count...): it changes outputs without changing weights."""
    config = getattr(model, "config", None)
    if config is None:
        return {}
    data = json.loads(config.to_json_string(use_diff=False))
    return {k: v for k, v in data.items() if k not in _VOLATILE_CONFIG_KEYS and not k.startswith("_")}


def compute_fingerprint(model: torch.nn.Module, tokenizer: Any, family: str, pooling: str, max_length: int) -> str:
    """Hex sha256 naming everything that decides an anchor's text embeddings.

    Hashes every state_dict tensor in sorted name order (name, dtype, shape, raw bytes), then the model config,
    family, pooling, token limit and the tokenizer's vocabulary and settings.
    """
    h = hashlib.sha256()
    h.update(_FINGERPRINT_VERSION.encode() + b"\0")
    state = model.state_dict()
    for name in sorted(state):
        t = state[name].detach().to("cpu").contiguous()
        h.update(name.encode() + b"\0" + str(t.dtype).encode() + b"\0" + repr(tuple(t.shape)).encode() + b"\0")
        # Raw bytes of any dtype (bf16 included, which numpy lacks): reinterpret the flat tensor as uint8.
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    meta = {
        "family": family,
        "pooling": pooling,
        "max_length": max_length,
        "config": _model_config_spec(model),
        "tokenizer": _tokenizer_spec(tokenizer),
    }
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    return h.hexdigest()
