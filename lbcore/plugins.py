"""Plugin loading on pluggy: entry points of the ``lbind`` group, loaded lazily on first use.

One broken plugin (raises on import, or inside a hook, or implements a hook that does not exist) is recorded
with its error and reported by ``lbind plugins``; every other plugin keeps working. ``LBIND_PLUGINS``
(comma-separated entry-point names) limits which plugins load; set it empty to load none.
"""

from __future__ import annotations

import difflib
import functools
import logging
import os
import traceback
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import TYPE_CHECKING, Any

import pluggy

from lbcore import hookspecs
from lbcore.errors import DuplicateModalityError, ModalityNotFoundError, PluginError

if TYPE_CHECKING:
    import click

    from lbcore.modality import Modality

log = logging.getLogger(__name__)

ENV_VAR = "LBIND_PLUGINS"
GROUP = hookspecs.PROJECT


@dataclass
class PluginInfo:
    """What ``lbind plugins`` shows about one plugin."""

    name: str
    module: str
    distribution: str | None = None
    version: str | None = None
    status: str = "ok"  # "ok", "broken" or "disabled"
    error: str | None = None
    hooks: list[str] = field(default_factory=list)
    modalities: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RegisteredModality:
    """A modality class and the plugin that registered it."""

    cls: type[Modality]
    plugin: PluginInfo


def _short_error(err: BaseException) -> str:
    """The exception and the innermost frame that raised it (enough to find the bug)."""
    frames = traceback.extract_tb(err.__traceback__)
    where = f" [{frames[-1].filename}:{frames[-1].lineno}]" if frames else ""
    return f"{type(err).__name__}: {err}{where}"


def _selected_names() -> set[str] | None:
    raw = os.environ.get(ENV_VAR)
    if raw is None:
        return None
    return {part.strip() for part in raw.split(",") if part.strip()}


class PluginRegistry:
    """The plugin manager plus what the plugins registered. Nothing happens until the first query."""

    def __init__(self, eps: Iterable[EntryPoint] | None = None) -> None:
        self._eps = list(eps) if eps is not None else None
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self._plugins: dict[str, PluginInfo] = {}
        self._modalities: dict[str, RegisteredModality] = {}
        self._conflicts: dict[str, list[str]] = {}
        self._loaded = False

    # -- loading ---------------------------------------------------------------------------------------
    def load(self) -> PluginRegistry:
        """Load every selected entry point once; later calls do nothing."""
        if self._loaded:
            return self
        self._loaded = True
        selected = _selected_names()
        eps = self._eps if self._eps is not None else list(entry_points(group=GROUP))
        for ep in sorted(eps, key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            info = PluginInfo(
                name=ep.name,
                module=ep.value,
                distribution=dist.name if dist is not None else None,
                version=dist.version if dist is not None else None,
            )
            if selected is not None and ep.name not in selected:
                info.status = "disabled"
                info.error = f"not in {ENV_VAR}"
                self._plugins[ep.name] = info
                continue
            try:
                obj = ep.load()
            except Exception as err:  # a plugin must never take the others down
                self._mark_broken(info, f"import failed: {_short_error(err)}")
                self._plugins[ep.name] = info
                continue
            self.add_plugin(obj, info)
        return self

    def add_plugin(self, obj: Any, info: PluginInfo | str) -> PluginInfo:
        """Register one plugin object (a module or any object with hook implementations) and run its
        ``register_modalities`` hook. Used for entry points and by tests that register a plugin in-process."""
        if isinstance(info, str):
            info = PluginInfo(name=info, module=getattr(obj, "__name__", type(obj).__name__))
        self._loaded = True
        self._plugins[info.name] = info
        try:
            self.pm.register(obj, name=info.name)
            self._check_hook_names(obj, info)
        except Exception as err:
            if self.pm.is_registered(obj):
                self.pm.unregister(obj)
            self._mark_broken(info, f"invalid hook implementation: {err}")
            return info
        info.hooks = sorted(
            caller.name for caller in self.pm.get_hookcallers(obj) or [] if not caller.name.startswith("_")
        )
        impl = self._impl_of("register_modalities", info.name)
        if impl is not None:
            added: list[str] = []
            try:
                impl.function(**self._kwargs(impl, register=lambda cls: self._register(cls, info, added)))
            except Exception as err:
                for name in added:
                    self._modalities.pop(name, None)
                info.modalities = []
                self._mark_broken(info, f"register_modalities failed: {_short_error(err)}")
        return info

    def _check_hook_names(self, obj: Any, info: PluginInfo) -> None:
        """A hook implementation whose name matches no hook spec is a typo: fail loudly."""
        known = [name for name in dir(hookspecs) if getattr(getattr(hookspecs, name), "lbind_spec", None)]
        for attr in dir(obj):
            fn = getattr(obj, attr, None)
            if getattr(fn, "lbind_impl", None) is None:
                continue
            if attr not in known:
                hint = difflib.get_close_matches(attr, known, n=1)
                did_you_mean = f"; did you mean {hint[0]!r}?" if hint else ""
                raise PluginError(
                    f"plugin {info.name!r} implements unknown hook {attr!r}{did_you_mean} "
                    f"(known hooks: {', '.join(known)})"
                )

    def _impl_of(self, hook: str, plugin_name: str) -> Any:
        for impl in getattr(self.pm.hook, hook).get_hookimpls():
            if impl.plugin_name == plugin_name:
                return impl
        return None

    @staticmethod
    def _kwargs(impl: Any, **available: Any) -> dict[str, Any]:
        return {name: available[name] for name in impl.argnames if name in available}

    def _mark_broken(self, info: PluginInfo, message: str) -> None:
        info.status = "broken"
        info.error = message
        log.error("lbind plugin %r (%s) is broken: %s", info.name, info.module, message)

    def _register(self, cls: Any, info: PluginInfo, added: list[str]) -> None:
        from lbcore.modality import Modality  # deferred: torch; `lbind --help` loads the registry without it

        if isinstance(cls, Modality):
            cls = type(cls)
        if not (isinstance(cls, type) and issubclass(cls, Modality)):
            raise PluginError(f"plugin {info.name!r} registered {cls!r}, which is not a Modality subclass")
        cls.check_definition()
        name = cls.name
        if name in self._modalities:
            other = self._modalities.pop(name).plugin
            other.modalities = [m for m in other.modalities if m != name]
            self._conflicts[name] = [other.name, info.name]
            raise DuplicateModalityError(
                f"modality {name!r} is registered by two plugins: {other.name!r} ({other.module}) and "
                f"{info.name!r} ({info.module}); uninstall one of them or limit loading with {ENV_VAR}"
            )
        if name in self._conflicts:
            self._conflicts[name].append(info.name)
            raise DuplicateModalityError(
                f"modality {name!r} is registered by several plugins: {', '.join(self._conflicts[name])}"
            )
        self._modalities[name] = RegisteredModality(cls, info)
        info.modalities.append(name)
        added.append(name)

    # -- queries ---------------------------------------------------------------------------------------
    @property
    def plugins(self) -> dict[str, PluginInfo]:
        """Every plugin seen (ok, broken or disabled), by entry-point name."""
        self.load()
        return self._plugins

    def modality_names(self) -> list[str]:
        self.load()
        return sorted(self._modalities)

    def registered(self, name: str) -> RegisteredModality:
        self.load()
        if name in self._conflicts:
            raise DuplicateModalityError(
                f"modality {name!r} is registered by several plugins: {', '.join(self._conflicts[name])}; "
                f"uninstall all but one or limit loading with {ENV_VAR}"
            )
        try:
            return self._modalities[name]
        except KeyError:
            broken = [p.name for p in self._plugins.values() if p.status == "broken"]
            hint = f"; broken plugins: {', '.join(broken)} (see `lbind plugins`)" if broken else ""
            known = ", ".join(sorted(self._modalities)) or "none"
            raise ModalityNotFoundError(f"no plugin provides modality {name!r} (installed: {known}){hint}") from None

    def add_commands(self, cli: click.Group) -> None:
        """Let every plugin add its commands; a plugin whose hook raises is marked broken."""
        self.load()
        for impl in self.pm.hook.register_commands.get_hookimpls():
            try:
                impl.function(**self._kwargs(impl, cli=cli))
            except Exception as err:
                info = self._plugins.get(impl.plugin_name)
                if info is not None:
                    self._mark_broken(info, f"register_commands failed: {_short_error(err)}")


@functools.cache
def default_registry() -> PluginRegistry:
    """The process-wide registry (created on first use, never at import time)."""
    return PluginRegistry()


def reset_default_registry() -> None:
    """Forget loaded plugins, e.g. after changing ``LBIND_PLUGINS`` (tests)."""
    default_registry.cache_clear()


def list_modalities() -> list[str]:
    """Names of every modality the installed (and selected) plugins register."""
    return default_registry().modality_names()


def get_modality(name: str, config: Any = None) -> Modality:
    """An instance of the named modality, configured with ``config`` or its default preset."""
    return default_registry().registered(name).cls(config)
