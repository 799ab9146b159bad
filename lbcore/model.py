"""BindModel: the anchor (by reference) plus one encoder and one logit scale per modality; save and load.

The anchor is never stored in a checkpoint: ``lbind.json`` names it (config, fingerprint, embedding size) and
text embeddings come from the text-embedding cache, which runs the anchor only for texts it has not seen. The
anchor is loaded lazily, on the first cache miss, and must have the fingerprint the checkpoint recorded.

Encoder weights are saved in full (LoRA merged), or, for LoRA-trained modalities with ``adapter_only``, as the
adapter plus the trained extras and a reference to the base weights (``base_sources``: ``clip:PATH`` or
``lbind:DIR``) with the base's sha256; loading rebuilds the base, checks its hash and merges the adapter (see
:mod:`lbcore.checkpoint` and :mod:`lbcore.lora`). A scratch-initialised encoder has no base to point to, so it is
always saved in full.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lbcore import __version__
from lbcore.anchor import Anchor, TextEmbeddingCache
from lbcore.checkpoint import (
    ADAPTER_FORMAT_VERSION,
    FORMAT,
    FULL_FORMAT_VERSION,
    META_FILE,
    atomic_dir,
    read_meta,
    resolve_checkpoint_dir,
    state_sha256,
    write_json,
)
from lbcore.config import AnchorConfig, validate_model
from lbcore.encoders import load_modality, plugin_info
from lbcore.errors import (
    AnchorError,
    CheckpointError,
    InputError,
    ModalityNotFoundError,
    NonFiniteError,
    check_finite,
)
from lbcore.grouping import GroupSet, read_groups, write_groups
from lbcore.lora import (
    LORA_A,
    adapter_state,
    base_encoder_state,
    export_encoder_state,
    lora_layers,
    split_extras,
)
from lbcore.loss import LogitScale
from lbcore.modality import Modality
from lbcore.modelcard import write_model_card
from lbcore.weights import (
    base_reference,
    check_finite_state,
    load_base,
    load_encoder_weights,
)

__all__ = ["BindModel", "base_reference", "load", "load_base", "load_encoder_weights", "modality_of", "plugin_info"]

log = logging.getLogger(__name__)


class _RecordedAnchor:
    """The anchor a checkpoint names, loaded on the first cache miss and checked against the recorded fingerprint."""

    def __init__(self, cfg: AnchorConfig, fingerprint: str, embed_dim: int) -> None:
        self.cfg = cfg
        self.fingerprint = fingerprint
        self.embed_dim = embed_dim
        self._anchor: Any = None

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        if self._anchor is None:
            anchor = Anchor.from_config(self.cfg)
            if anchor.fingerprint != self.fingerprint:
                raise AnchorError(
                    f"anchor {self.cfg.name!r} loaded with fingerprint {anchor.fingerprint[:12]}, but the model was "
                    f"trained against {self.fingerprint[:12]}: its text embeddings would not match; load the same "
                    "anchor weights and tokenizer the checkpoint names"
                )
            self._anchor = anchor
        return self._anchor.encode(texts, batch_size=batch_size)


def modality_of(model: BindModel, name: str) -> Modality:
    """The model's configured :class:`Modality` called ``name`` (an error lists the ones it has)."""
    if name not in model.modalities:
        raise ModalityNotFoundError(
            f"this model has no {name!r} encoder (it has: {', '.join(sorted(model.modalities))})"
        )
    return model.modalities[name]


class BindModel(nn.Module):
    """Encoders (one per modality) bound to a frozen text anchor's embedding space.

    ``encoders`` map modality name -> encoder (input batch -> [B, E], not normalised); ``modalities`` the
    configured :class:`Modality` objects that preprocess inputs for them; ``logit_scales`` the learned log
    inverse temperatures (default: the initial value). ``anchor_fingerprint`` / ``embed_dim`` identify the
    anchor; they are required to save and are filled in by the trainer. ``base_sources`` name, per modality,
    the weights its encoder was initialised from (``clip:PATH`` or ``lbind:DIR``; see :func:`base_reference`),
    which an adapter-only checkpoint refers to instead of storing them.
    """

    def __init__(
        self,
        anchor_cfg: AnchorConfig,
        encoders: Mapping[str, nn.Module],
        modalities: Mapping[str, Modality],
        logit_scales: Mapping[str, float | torch.Tensor | LogitScale] | None = None,
        *,
        anchor_fingerprint: str | None = None,
        embed_dim: int | None = None,
        base_sources: Mapping[str, str] | None = None,
        groups: GroupSet | None = None,
    ) -> None:
        super().__init__()
        if set(encoders) != set(modalities):
            raise ValueError(
                f"encoders ({', '.join(sorted(encoders))}) and modalities ({', '.join(sorted(modalities))}) differ"
            )
        self.anchor_cfg = anchor_cfg
        self.modalities: dict[str, Modality] = dict(modalities)
        self.encoders = nn.ModuleDict(dict(encoders))
        scales = nn.ModuleDict()
        for name in encoders:
            given = (logit_scales or {}).get(name)
            if isinstance(given, LogitScale):
                scales[name] = given
            else:
                scale = LogitScale()
                if given is not None:
                    with torch.no_grad():
                        scale.value.fill_(float(given))
                scales[name] = scale
        self.logit_scales = scales
        self.groups = groups if groups is not None else GroupSet()  # grouped modalities (lbcore.grouping)
        self.anchor_fingerprint = anchor_fingerprint
        dims = {getattr(e, "embed_dim", None) for e in encoders.values()} - {None}
        self.embed_dim = embed_dim if embed_dim is not None else (dims.pop() if len(dims) == 1 else None)
        self.base_sources: dict[str, str] = dict(base_sources or {})
        self._verified_bases: set[tuple[str, str, str]] = set()  # (modality, source, sha256) checked by verify_base
        self._text_anchor: Any = None
        self._text_cache: TextEmbeddingCache | None = None  # one store per model: opened once, refreshed per call

    # ------------------------------------------------------------------------------------------- embedding
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        """A preprocessed batch -> L2-normalised float32 embeddings [B, E], differentiable."""
        modality_of(self, modality)
        return F.normalize(self.encoders[modality](batch).float(), dim=-1)

    def forward(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        return self.encode(modality, batch)

    def preprocess(self, modality: str, inputs: Any) -> torch.Tensor:
        """Paths / arrays -> a batch through the modality's deterministic (eval) preprocessing."""
        mod = modality_of(self, modality)
        if isinstance(inputs, (str, os.PathLike, np.ndarray)):
            items: list[Any] = [inputs]
        elif isinstance(inputs, list):
            items = inputs
        else:
            raise InputError(
                None,
                f"embed() got a {type(inputs).__name__}",
                "a list of paths or arrays, one path or array, or a preprocessed batch tensor",
            )
        if not items:
            raise InputError(None, "embed() got an empty list", "at least one input")
        samples = []
        for item in items:
            sample = mod.preprocess(item, train=False)
            check_finite(sample, item if isinstance(item, (str, os.PathLike)) else None, f"{modality} input tensor")
            samples.append(sample)
        return mod.collate(samples)

    def _embed_batch(self, modality: str, batch: torch.Tensor, first: int) -> torch.Tensor:
        """:meth:`encode` of one batch, refusing NaN / infinite embeddings (rows numbered from ``first``)."""
        out = self.encode(modality, batch.to(self.device))
        bad = (~torch.isfinite(out).all(dim=-1)).nonzero().flatten().tolist()
        if bad:
            rows = ", ".join(str(first + r) for r in bad[:10]) + (" ..." if len(bad) > 10 else "")
            raise NonFiniteError(
                f"the {modality} encoder gave NaN or infinite embeddings for input(s) {rows}: its weights or "
                "those inputs overflow (check the inputs' value range, or the checkpoint)"
            )
        return out

    @torch.no_grad()
    def embed(self, modality: str, inputs: Any, batch_size: int = 32) -> torch.Tensor:
        """Normalised embeddings [N, E] (float32, on the model's device) of ``inputs`` for ``modality``.

        ``inputs``: a list of paths / arrays (preprocessed with ``train=False``), a single path or array, or an
        already preprocessed batch tensor [N, ...]. Runs without gradients, ``batch_size`` samples at a time.
        """
        mod = modality_of(self, modality)
        was_training = self.training
        self.eval()
        try:
            if isinstance(inputs, torch.Tensor):
                check_finite(inputs, None, f"{modality} input batch")
                batches = list(inputs.split(batch_size))
                return torch.cat([self._embed_batch(modality, b, i * batch_size) for i, b in enumerate(batches)])
            items = inputs if isinstance(inputs, list) else [inputs]
            out = []
            for start in range(0, len(items), batch_size):
                batch = self.preprocess(modality, items[start : start + batch_size])
                out.append(self._embed_batch(modality, batch, start))
            if not out:
                raise InputError(None, f"embed({mod.name!r}) got no inputs", "at least one input")
            return torch.cat(out)
        finally:
            self.train(was_training)

    def _anchor_source(self) -> Any:
        if self._text_anchor is None:
            if self.anchor_fingerprint is not None and self.embed_dim is not None:
                self._text_anchor = _RecordedAnchor(self.anchor_cfg, self.anchor_fingerprint, self.embed_dim)
            else:
                anchor = Anchor.from_config(self.anchor_cfg)
                self.anchor_fingerprint = anchor.fingerprint
                self.embed_dim = anchor.embed_dim
                self._text_anchor = anchor
        return self._text_anchor

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised anchor embeddings [N, E] of ``texts`` through the text-embedding cache (anchor loaded only
        for texts not cached yet), on the model's device."""
        if isinstance(texts, str):
            texts = [texts]
        if self._text_cache is None:
            self._text_cache = TextEmbeddingCache(self.anchor_cfg.cache_dir)
        return self._text_cache.embed(self._anchor_source(), list(texts), batch_size=self.anchor_cfg.batch_size).to(
            self.device
        )

    @staticmethod
    def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Cosine similarities [N, M] of normalised embeddings ``a`` [N, E] and ``b`` [M, E]."""
        return a @ b.t()

    def logit_scale(self, modality: str) -> float:
        """The learned inverse temperature exp(logit_scale) of ``modality``."""
        modality_of(self, modality)
        return float(self.logit_scales[modality].value.detach().exp())

    # ------------------------------------------------------------------------------------------- saving
    def describe(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The ``lbind.json`` content of this model."""
        if self.anchor_fingerprint is None or self.embed_dim is None:
            raise CheckpointError(
                "cannot save: the anchor's fingerprint and embedding size are unknown "
                "(pass anchor_fingerprint and embed_dim, or call embed_text once)"
            )
        anchor_cfg = self.anchor_cfg.model_dump(mode="json", exclude={"cache_dir"})
        meta: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FULL_FORMAT_VERSION,
            "lbind_version": __version__,
            "anchor": {
                "name": self.anchor_cfg.name,
                "fingerprint": self.anchor_fingerprint,
                "embed_dim": self.embed_dim,
                "config": anchor_cfg,
            },
            "modalities": {},
        }
        for name, mod in self.modalities.items():
            meta["modalities"][name] = {
                **plugin_info(mod),
                "config": mod.config.model_dump(mode="json"),
                "logit_scale": float(self.logit_scales[name].value.detach()),
                "weights": "full",
                "file": f"{name}.safetensors",
                "lora": {"merged_rank": mod.config.lora.rank},
            }
        if extra:
            meta.update(extra)
        return meta

    def base_fingerprint(self, modality: str) -> tuple[str, int]:
        """(sha256, tensor count) of the tensors an adapter-only checkpoint of ``modality`` takes from its base:
        every encoder tensor except the LoRA factors and the ``lora.trainable_extras``, unmerged."""
        prefixes = modality_of(self, modality).config.lora.trainable_extras
        base = base_encoder_state(_unwrap(self.encoders[modality]))
        _, keys = split_extras(list(base), prefixes)
        return state_sha256({k: base[k] for k in keys}), len(keys)

    def verify_base(self, modality: str) -> tuple[str, int]:
        """Check that ``base_sources[modality]`` rebuilds exactly the encoder's base weights; return
        :meth:`base_fingerprint`. Raises :class:`CheckpointError` when there is no source, it cannot be loaded,
        or it gives other weights (an adapter saved against it would not load back). Checked once per
        (modality, source, hash): the base is frozen during LoRA training."""
        source = self.base_sources.get(modality)
        mod = modality_of(self, modality)
        if not source:
            raise CheckpointError(
                f"{modality}: no base weights are recorded for this encoder (it was initialised from scratch, or "
                f"base_sources[{modality!r}] is unset), so its LoRA adapter cannot be saved alone: save full weights "
                f"(adapter_only=False, `lbind train --save-full`), or set base_sources[{modality!r}] to the "
                "'clip:PATH', 'languagebind:PATH' or 'lbind:DIR' the encoder was initialised from"
            )
        expected, count = self.base_fingerprint(modality)
        if (modality, source, expected) in self._verified_bases:
            return expected, count
        if self.embed_dim is None:
            raise CheckpointError(f"{modality}: the embedding size is unknown; pass embed_dim to BindModel")
        with torch.random.fork_rng(devices=[]):  # building the encoder must not move the caller's random stream
            fresh = mod.build_encoder(self.embed_dim)
        load_base(fresh, source, mod)
        base = base_encoder_state(fresh)
        _, keys = split_extras(list(base), mod.config.lora.trainable_extras)
        got = state_sha256({k: base[k] for k in keys})
        if got != expected:
            raise CheckpointError(
                f"{modality}: the base {source} loads as weights with sha256 {got}, but the encoder's frozen "
                f"weights have sha256 {expected}: the encoder was not initialised from this source (or was changed "
                "since), so an adapter saved against it would not load back; save full weights instead"
            )
        self._verified_bases.add((modality, source, expected))
        return expected, count

    def _adapter_modalities(self, adapter_only: bool | Collection[str]) -> list[str]:
        """The modalities to save as adapters: with True every LoRA-configured one, or the names given."""
        if adapter_only is False:
            return []
        if isinstance(adapter_only, str):
            adapter_only = [adapter_only]
        if adapter_only is True:
            names = [n for n, m in self.modalities.items() if m.config.lora.rank > 0]
        else:
            names = [n for n in self.modalities if n in set(adapter_only)]
            for name in adapter_only:
                modality_of(self, name)
        problems = []
        for name in names:
            if self.modalities[name].config.lora.rank <= 0:
                problems.append(
                    f"{name}: trained without LoRA (lora.rank 0), so every weight is trained; save it in full"
                )
            elif not lora_layers(_unwrap(self.encoders[name])):
                problems.append(
                    f"{name}: the encoder holds no LoRA adapters (merged when loaded, or never applied), so there is "
                    "no adapter to save; save it in full"
                )
        if problems:
            raise CheckpointError("cannot save adapter weights: " + "; ".join(problems))
        return names

    def _export(self, name: str, adapter: bool) -> tuple[dict[str, torch.Tensor], float | None]:
        """The tensors a checkpoint stores for ``name`` (adapter + extras, or full merged weights) and the LoRA
        scaling of an adapter; refuses NaN or infinite values, so no checkpoint is written with broken weights."""
        encoder = _unwrap(self.encoders[name])
        scaling = None
        if adapter:
            tensors, scaling = adapter_state(encoder, self.modalities[name].config.lora.trainable_extras)
            state = {k: v.to("cpu").contiguous().clone() for k, v in tensors.items()}
        else:
            state = export_encoder_state(encoder)
        check_finite_state(
            {**state, "logit_scale": self.logit_scales[name].value.detach()},
            f"cannot save the {name} encoder",
            advice="training diverged; lower the learning rate or resume from an earlier checkpoint",
        )
        return state, scaling

    def write_files(
        self, directory: Path, extra: Mapping[str, Any] | None = None, *, adapter_only: bool | Collection[str] = False
    ) -> None:
        """Write ``lbind.json`` and the encoder weights into an existing folder (not atomic; see save_pretrained).

        ``adapter_only``: see :meth:`save_pretrained`; a collection names the modalities to save as adapters.
        """
        adapters = self._adapter_modalities(adapter_only)
        bases = {name: self.verify_base(name) for name in adapters}  # every base checked before anything is written
        meta = self.describe(extra)
        exported = {name: self._export(name, name in adapters) for name in meta["modalities"]}  # all checked first
        for name, spec in meta["modalities"].items():
            state, scaling = exported[name]
            if name in adapters:
                lora = self.modalities[name].config.lora
                digest, count = bases[name]
                spec["weights"] = "adapter"
                spec["base"] = {"source": self.base_sources[name], "sha256": digest, "tensors": count}
                spec["lora"] = {
                    "rank": lora.rank,
                    "alpha": lora.alpha,
                    "targets": list(lora.targets),
                    "scaling": scaling,
                    "layers": sum(k.endswith(LORA_A) for k in state),
                }
            metadata = {"format": "pt", "modality": name, "weights": spec["weights"]}
            save_file(state, str(directory / spec["file"]), metadata=metadata)
        if len(self.groups):
            meta["groups"] = write_groups(directory, self.groups)
        meta["format_version"] = ADAPTER_FORMAT_VERSION if adapters else FULL_FORMAT_VERSION
        write_json(directory / META_FILE, meta)
        write_model_card(directory, meta)

    def save_pretrained(
        self,
        directory: str | Path,
        adapter_only: bool | Collection[str] = False,
        *,
        extra: Mapping[str, Any] | None = None,
    ) -> Path:
        """Write the checkpoint folder atomically (safetensors weights, ``lbind.json``, the model card
        ``README.md``: :mod:`lbcore.modelcard`); return its path.

        ``adapter_only``: save every LoRA-trained modality as its LoRA factors plus trained extras, with a
        reference to its base weights (``base_sources``) and their sha256, instead of full merged weights; the
        other modalities are saved in full. The base is loaded once to check that it reproduces the encoder's
        frozen weights. Raises :class:`CheckpointError` for a LoRA modality without a base (scratch
        initialisation) or without live adapters.
        """
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            self.write_files(tmp, extra, adapter_only=adapter_only)
        return directory

    @classmethod
    def from_pretrained(
        cls,
        directory: str | Path,
        map_location: str | torch.device = "cpu",
        *,
        base: Mapping[str, str] | None = None,
    ) -> BindModel:
        """Load a checkpoint folder (or ``hf://org/name[@revision]``, see :mod:`lbcore.hub`): each modality through
        its installed plugin, weights from safetensors.

        Adapter-only modalities are rebuilt from their recorded base (checked against its sha256) with the
        adapter merged in. ``base`` replaces recorded base sources by modality (e.g. ``{"depth": "clip:/new/path"}``
        when the base weights moved); the hash must still match.
        """
        directory = resolve_checkpoint_dir(directory)  # a run folder or hf://org/name[@rev]
        meta = read_meta(directory)
        anchor = meta["anchor"]
        anchor_cfg = validate_model(AnchorConfig, anchor.get("config", {}), prefix=("anchor",), source=str(directory))
        if anchor_cfg.name.startswith(("./", "../")):
            # A relative anchor ("./anchor", as `lbind convert` writes) lives inside or beside the checkpoint
            # folder, wherever the process runs.
            anchor_cfg = anchor_cfg.model_copy(update={"name": str((directory / anchor_cfg.name).resolve())})
        embed_dim = anchor.get("embed_dim")
        if not isinstance(embed_dim, int) or embed_dim <= 0:
            raise CheckpointError(f"{directory / META_FILE}: anchor.embed_dim must be a positive integer")
        modalities: dict[str, Modality] = {}
        encoders: dict[str, nn.Module] = {}
        scales: dict[str, float] = {}
        for name, spec in meta["modalities"].items():
            modalities[name], encoders[name], scales[name] = load_modality(directory, name, spec, embed_dim, base)
        fingerprint = anchor.get("fingerprint")
        if fingerprint is not None and not isinstance(fingerprint, str):
            raise CheckpointError(f"{directory / META_FILE}: anchor.fingerprint must be a string, got {fingerprint!r}")
        groups = read_groups(directory, meta["groups"], embed_dim) if "groups" in meta else None
        model = cls(
            anchor_cfg, encoders, modalities, scales, anchor_fingerprint=fingerprint, embed_dim=embed_dim,
            groups=groups,
        )  # fmt: skip
        return model.to(map_location).eval()


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / torch.compile wrappers."""
    while True:
        if isinstance(module, DistributedDataParallel):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


def load(
    directory: str | Path, map_location: str | torch.device = "cpu", *, base: Mapping[str, str] | None = None
) -> BindModel:
    """Load a checkpoint folder written by ``lbind train`` or :meth:`BindModel.save_pretrained`, or a run folder
    (its ``final/`` checkpoint, else its newest step checkpoint; see :func:`lbcore.checkpoint.resolve_checkpoint_dir`).
    ``base``: see :meth:`BindModel.from_pretrained`."""
    return BindModel.from_pretrained(directory, map_location=map_location, base=base)
