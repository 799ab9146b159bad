"""The Modality contract: what a plugin supplies for one modality.

A plugin subclasses :class:`Modality`, sets ``name``, ``Config`` (a :class:`~lbcore.config.ModalityConfig`
subclass), ``presets`` (at least ``languagebind`` and ``demo``) and ``templates`` (optionally further named
``template_sets``), implements
:meth:`preprocess` and :meth:`build_stem` (or overrides :meth:`build_encoder`), and registers the class
through the ``register_modalities`` hook. Optional declarations: ``extensions`` (the file suffixes
:meth:`preprocess` reads) and ``releases`` (published checkpoints :mod:`lbcore.convert` can convert into this
modality, each a :class:`~lbcore.release.ReleaseLayout`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from lbcore.config import ModalityConfig, deep_merge, validate_model
from lbcore.errors import ConfigError, PluginError
from lbcore.nn import ViTEncoder
from lbcore.release import ReleaseLayout

REQUIRED_PRESETS = ("languagebind", "demo")
DEFAULT_TEMPLATE_SET = "default"  # the name of Modality.templates among the template sets


class Modality(ABC):
    """One modality: preprocessing, encoder construction, prompt templates, readers and demo data.

    Class attributes a plugin sets: ``name`` (an identifier), ``Config``, ``presets`` (at least
    ``languagebind`` and ``demo``), ``default_preset``, ``templates`` (zero-shot prompts, each with ``{}``),
    ``description``, ``demo_version`` (the demo dataset's cache key), and:

    ``extensions``: the lower-case file suffixes, dot included, that :meth:`preprocess` reads from disk
    (e.g. ``(".wav", ".flac")``); tools that pick files by modality (``lbind embed``) go by them.
    ``releases``: the published checkpoints of this modality, one :class:`~lbcore.release.ReleaseLayout`
    each (config.json's ``model_type``, the ``vision_config`` settings carried into ``Config``, the patch
    grid). ``lbind convert languagebind`` and ``--init languagebind:PATH`` find a release's modality by its
    ``model_type`` among the installed plugins' declarations.
    """

    name: ClassVar[str]
    Config: ClassVar[type[ModalityConfig]] = ModalityConfig
    presets: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
    default_preset: ClassVar[str] = "languagebind"
    templates: ClassVar[Sequence[str]] = ("{}",)
    # Further named prompt template sets (e.g. {"speech": (...)}), chosen with `lbind eval --templates NAME`;
    # `templates` is the set named "default".
    template_sets: ClassVar[Mapping[str, Sequence[str]]] = {}
    description: ClassVar[str] = ""
    demo_version: ClassVar[str] = "1"  # bump when the demo generator's output changes (cache key)
    # The file suffixes this modality reads, lower-case with the dot (".wav", ".flac"); () means any file.
    # `lbind embed DIR` takes only files with one of them when a folder is walked.
    extensions: ClassVar[tuple[str, ...]] = ()
    releases: ClassVar[Sequence[ReleaseLayout]] = ()
    # The upload widget `lbind app` shows for this modality's files: "audio", "video" or "image" (the browser
    # previews the file; it reaches preprocess() unchanged), or "file" (a plain file upload, for anything else).
    widget: ClassVar[str] = "file"

    def __init__(self, config: ModalityConfig | Mapping[str, Any] | None = None) -> None:
        if config is None:
            config = self.config_preset(self.default_preset)
        elif not isinstance(config, self.Config):
            data = config.model_dump() if isinstance(config, ModalityConfig) else config
            config = validate_model(self.Config, data, prefix=("modalities", self.name))
        problems = self.config_problems(config)
        if problems:
            raise ConfigError("\n".join(f"modalities.{self.name}: {p}" for p in problems))
        self.config: ModalityConfig = config

    # -- definition checks -----------------------------------------------------------------------------
    @classmethod
    def check_definition(cls) -> None:
        """Raise :class:`PluginError` if the subclass misses a required piece (run at registration)."""
        problems = []
        if not isinstance(getattr(cls, "name", None), str) or not cls.name.isidentifier():
            problems.append("`name` must be a string usable as an identifier")
        if not (isinstance(cls.Config, type) and issubclass(cls.Config, ModalityConfig)):
            problems.append("`Config` must subclass lbcore.config.ModalityConfig")
        missing = [p for p in REQUIRED_PRESETS if p not in cls.presets]
        if missing:
            problems.append(f"`presets` lacks {', '.join(missing)}")
        if not cls.templates or any("{}" not in t for t in cls.templates):
            problems.append("`templates` must be non-empty and each must contain '{}'")
        problems.extend(cls._declaration_problems())
        for set_name, chosen in cls.template_sets.items():
            if set_name == DEFAULT_TEMPLATE_SET or isinstance(chosen, str):
                problems.append(f"`template_sets[{set_name!r}]`: a sequence of templates named other than 'default'")
            elif not chosen or any("{}" not in t for t in chosen):
                problems.append(f"`template_sets[{set_name!r}]` must be non-empty and each must contain '{{}}'")
        if problems:
            raise PluginError(f"modality class {cls.__module__}.{cls.__qualname__}: " + "; ".join(problems))

    @classmethod
    def _declaration_problems(cls) -> list[str]:
        problems = []
        ext = cls.extensions
        if not isinstance(ext, tuple) or not all(
            isinstance(e, str) and e.startswith(".") and len(e) > 1 and e == e.lower() for e in ext
        ):
            problems.append(f"`extensions` must be a tuple of lower-case suffixes such as '.wav', got {ext!r}")
        layouts = list(cls.releases) if isinstance(cls.releases, (tuple, list)) else None
        if layouts is None or not all(isinstance(r, ReleaseLayout) for r in layouts):
            problems.append(f"`releases` must be a sequence of lbcore.release.ReleaseLayout, got {cls.releases!r}")
        elif len({r.model_type for r in layouts}) != len(layouts):
            problems.append(f"`releases` declares a model_type twice: {[r.model_type for r in layouts]}")
        return problems

    # -- configuration ---------------------------------------------------------------------------------
    @classmethod
    def config_preset(cls, name: str | None = None, **overrides: Any) -> ModalityConfig:
        """The named preset (default: ``languagebind``), with optional nested overrides, validated."""
        name = name or cls.default_preset
        if name not in cls.presets:
            raise ConfigError(
                f"modality {cls.name!r} has no preset {name!r}; available: {', '.join(sorted(cls.presets))}"
            )
        data = deep_merge(cls.presets[name], overrides)
        return validate_model(cls.Config, data, prefix=("modalities", cls.name))

    @classmethod
    def config_problems(cls, config: ModalityConfig) -> list[str]:
        """Rules that tie a valid config to this modality's preprocessing or encoder, one message per broken
        rule (default: none). ``lbind config validate`` and the constructor report them all; rules between fields
        of the config alone belong in the config model's validators instead."""
        return []

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> Modality:
        """Build from a run-config entry: ``{preset: NAME, ...overrides}``."""
        spec = dict(spec)
        preset = spec.pop("preset", None)
        return cls(cls.config_preset(preset, **spec))

    def with_config(self, config: ModalityConfig) -> Modality:
        return type(self)(config)

    # -- data ------------------------------------------------------------------------------------------
    @abstractmethod
    def preprocess(self, item: Any, train: bool = False) -> torch.Tensor:
        """A file path or an in-memory array/tensor -> the encoder's input tensor for one sample.

        Deterministic when ``train`` is False; random augmentation only when ``train`` is True.
        Bad input raises :class:`lbcore.errors.InputError` naming the source.
        """

    def collate(self, samples: Sequence[torch.Tensor]) -> torch.Tensor:
        """Stack preprocessed samples into a batch (override for variable-size inputs)."""
        return torch.stack(list(samples))

    @abstractmethod
    def example_input(self, seed: int = 0) -> Any:
        """A small raw input (array) generated from ``seed``, accepted by :meth:`preprocess` (tests, docs)."""

    def dataset_readers(self) -> Mapping[str, Callable[..., Any]]:
        """Readers of this modality's standard evaluation layouts, by name."""
        return {}

    def make_demo_data(self, root: Path, seed: int = 0) -> None:
        """Write the procedural demo dataset as real media files under ``root``, with the manifests
        ``root/train.jsonl`` and ``root/test.jsonl`` (rows carry ``label``, the concept's class name).
        Deterministic by ``seed``; the test split is drawn with different generation parameters.
        Use :func:`lbcore.demo.demo_data` to get a cached copy."""
        raise NotImplementedError(f"modality {self.name!r} has no demo dataset generator")

    # -- model -----------------------------------------------------------------------------------------
    @abstractmethod
    def build_stem(self) -> nn.Module:
        """The tokenizer-to-patch stem: input batch -> tokens [B, N, width]; exposes ``grid_size``."""

    def build_encoder(self, embed_dim: int) -> nn.Module:
        """The encoder: input batch -> embedding [B, embed_dim] (not normalised).

        Default: this modality's stem + the core ViT trunk + the CLIP head.
        """
        return ViTEncoder(self.build_stem(), self.config.encoder, embed_dim, mask_ratio=self.config.mask_ratio)

    # -- prompts ---------------------------------------------------------------------------------------
    @classmethod
    def template_set(cls, name: str | None = None) -> tuple[str, ...]:
        """The prompt templates named ``name``: ``"default"`` (or None) is :attr:`templates`, any other name one
        of :attr:`template_sets`; an unknown name raises :class:`ConfigError` listing the names there are."""
        if name is None or name == DEFAULT_TEMPLATE_SET:
            return tuple(cls.templates)
        if name not in cls.template_sets:
            names = ", ".join([DEFAULT_TEMPLATE_SET, *cls.template_sets])
            raise ConfigError(f"modality {cls.name!r} has no template set {name!r}; its template sets: {names}")
        return tuple(cls.template_sets[name])

    def prompts(self, label: str) -> list[str]:
        """Every template filled with ``label`` (zero-shot class prompts)."""
        return [t.format(label) for t in self.templates]

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "description": self.description,
            "presets": sorted(self.presets),
            "templates": len(self.templates),
            "template_sets": [DEFAULT_TEMPLATE_SET, *self.template_sets],
        }
