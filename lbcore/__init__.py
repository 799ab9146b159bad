"""lbind's core: language-anchored multimodal embeddings with modality plugins.

Importing ``lbcore`` does no work: plugins load on first use, models load when asked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from lbcore.hookspecs import hookimpl

__version__ = "0.1.0"

__all__ = ["BindModel", "Modality", "__version__", "get_modality", "hookimpl", "list_modalities", "load", "train"]

_LAZY = {
    "list_modalities": ("lbcore.plugins", "list_modalities"),
    "get_modality": ("lbcore.plugins", "get_modality"),
    "Modality": ("lbcore.modality", "Modality"),
    "BindModel": ("lbcore.model", "BindModel"),
    "load": ("lbcore.model", "load"),
    "train": ("lbcore.trainer", "train"),
}

if TYPE_CHECKING:
    from lbcore.modality import Modality
    from lbcore.model import BindModel, load
    from lbcore.plugins import get_modality, list_modalities
    from lbcore.trainer import train


def __getattr__(name: str) -> Any:
    # Lazy so that `import lbcore` (e.g. for hookimpl in a plugin) does not import torch.
    if name in _LAZY:
        import importlib  # deferred: the lazy public API (see above)

        module, attr = _LAZY[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module 'lbcore' has no attribute {name!r}")
