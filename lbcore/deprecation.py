"""Old import paths of public names that moved to another module: they keep working for one release, with a
:class:`DeprecationWarning` naming the new place. A module keeps its old names with
``__getattr__ = moved_names(__name__, {"old_name": "lbcore.new_module", ...})``."""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["moved_names"]


def moved_names(module: str, moved: Mapping[str, str]) -> Callable[[str], Any]:
    """A module-level ``__getattr__`` for ``module`` that serves each name of ``moved`` from its new module."""

    def __getattr__(name: str) -> Any:
        target = moved.get(name)
        if target is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        warnings.warn(
            f"{module}.{name} moved to {target}.{name}; the old import path will be removed in the next release",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(importlib.import_module(target), name)  # imported on use: the new module may import this one

    return __getattr__
