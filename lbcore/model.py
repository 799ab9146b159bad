"""BindModel: the anchor (by reference) plus one encoder and one logit scale per modality; save and load.

The anchor is never stored in a checkpoint: ``lbind.json`` names it (config, fingerprint, embedding size) and
text embeddings come from the text-embedding cache, which runs the anchor only for texts it has not seen. The
anchor is loaded lazily, on the first cache miss, and must have the fingerprint the checkpoint recorded.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from lbcore.checkpoint import FORMAT, FORMAT_VERSION, META_FILE, atomic_dir, export_encoder_state, read_meta, write_json
from lbcore.config import AnchorConfig, validate_model
from lbcore.errors import AnchorError, CheckpointError, InputError, ModalityNotFoundError
from lbcore.loss import LogitScale
from lbcore.modality import Modality

log = logging.getLogger(__name__)


def plugin_info(modality: Modality) -> dict[str, Any]:
    """Which plugin provides ``modality`` (name, distribution, version), as recorded in ``lbind.json``."""
    from lbcore.plugins import default_registry

    info: dict[str, Any] = {"module": type(modality).__module__, "class": type(modality).__qualname__}
    try:
        reg = default_registry().registered(modality.name)
    except ModalityNotFoundError:
        return {"plugin": None, "distribution": None, "version": None, **info}
    return {
        "plugin": reg.plugin.name,
        "distribution": reg.plugin.distribution,
        "version": reg.plugin.version,
        **info,
    }


class _RecordedAnchor:
    """The anchor a checkpoint names, loaded on the first cache miss and checked against the recorded fingerprint."""

    def __init__(self, cfg: AnchorConfig, fingerprint: str, embed_dim: int) -> None:
        self.cfg = cfg
        self.fingerprint = fingerprint
        self.embed_dim = embed_dim
        self._anchor: Any = None

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        if self._anchor is None:
            from lbcore.anchor import Anchor

            anchor = Anchor.from_config(self.cfg)
            if anchor.fingerprint != self.fingerprint:
                raise AnchorError(
                    f"anchor {self.cfg.name!r} loaded with fingerprint {anchor.fingerprint[:12]}, but the model was "
                    f"trained against {self.fingerprint[:12]}: its text embeddings would not match; load the same "
                    "anchor weights and tokenizer the checkpoint names"
                )
            self._anchor = anchor
        return self._anchor.encode(texts, batch_size=batch_size)


class BindModel(nn.Module):
    """Encoders (one per modality) bound to a frozen text anchor's embedding space.

    ``encoders`` map modality name -> encoder (input batch -> [B, E], not normalised); ``modalities`` the
    configured :class:`Modality` objects that preprocess inputs for them; ``logit_scales`` the learned log
    inverse temperatures (default: the initial value). ``anchor_fingerprint`` / ``embed_dim`` identify the
    anchor; they are required to save and are filled in by the trainer.
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
        self.anchor_fingerprint = anchor_fingerprint
        dims = {getattr(e, "embed_dim", None) for e in encoders.values()} - {None}
        self.embed_dim = embed_dim if embed_dim is not None else (dims.pop() if len(dims) == 1 else None)
        self._text_anchor: Any = None

    # ------------------------------------------------------------------------------------------- embedding
    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        return torch.device("cpu")

    def _modality(self, modality: str) -> Modality:
        if modality not in self.modalities:
            raise ModalityNotFoundError(
                f"this model has no {modality!r} encoder (it has: {', '.join(sorted(self.modalities))})"
            )
        return self.modalities[modality]

    def encode(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        """A preprocessed batch -> L2-normalised float32 embeddings [B, E], differentiable."""
        self._modality(modality)
        return F.normalize(self.encoders[modality](batch).float(), dim=-1)

    def forward(self, modality: str, batch: torch.Tensor) -> torch.Tensor:
        return self.encode(modality, batch)

    def preprocess(self, modality: str, inputs: Any) -> torch.Tensor:
        """Paths / arrays -> a batch through the modality's deterministic (eval) preprocessing."""
        mod = self._modality(modality)
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
        return mod.collate([mod.preprocess(item, train=False) for item in items])

    @torch.no_grad()
    def embed(self, modality: str, inputs: Any, batch_size: int = 32) -> torch.Tensor:
        """Normalised embeddings [N, E] (float32, on the model's device) of ``inputs`` for ``modality``.

        ``inputs``: a list of paths / arrays (preprocessed with ``train=False``), a single path or array, or an
        already preprocessed batch tensor [N, ...]. Runs without gradients, ``batch_size`` samples at a time.
        """
        mod = self._modality(modality)
        was_training = self.training
        self.eval()
        try:
            if isinstance(inputs, torch.Tensor):
                batches = list(inputs.split(batch_size))
                return torch.cat([self.encode(modality, b.to(self.device)) for b in batches])
            items = inputs if isinstance(inputs, list) else [inputs]
            out = []
            for start in range(0, len(items), batch_size):
                batch = self.preprocess(modality, items[start : start + batch_size])
                out.append(self.encode(modality, batch.to(self.device)))
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
                from lbcore.anchor import Anchor

                anchor = Anchor.from_config(self.anchor_cfg)
                self.anchor_fingerprint = anchor.fingerprint
                self.embed_dim = anchor.embed_dim
                self._text_anchor = anchor
        return self._text_anchor

    def embed_text(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised anchor embeddings [N, E] of ``texts`` through the text-embedding cache (anchor loaded only
        for texts not cached yet), on the model's device."""
        from lbcore.anchor import TextEmbeddingCache

        if isinstance(texts, str):
            texts = [texts]
        cache = TextEmbeddingCache(self.anchor_cfg.cache_dir)
        return cache.embed(self._anchor_source(), list(texts), batch_size=self.anchor_cfg.batch_size).to(self.device)

    @staticmethod
    def similarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        """Cosine similarities [N, M] of normalised embeddings ``a`` [N, E] and ``b`` [M, E]."""
        return a @ b.t()

    def logit_scale(self, modality: str) -> float:
        """The learned inverse temperature exp(logit_scale) of ``modality``."""
        self._modality(modality)
        return float(self.logit_scales[modality].value.detach().exp())

    # ------------------------------------------------------------------------------------------- saving
    def describe(self, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """The ``lbind.json`` content of this model."""
        from lbcore import __version__

        if self.anchor_fingerprint is None or self.embed_dim is None:
            raise CheckpointError(
                "cannot save: the anchor's fingerprint and embedding size are unknown "
                "(pass anchor_fingerprint and embed_dim, or call embed_text once)"
            )
        anchor_cfg = self.anchor_cfg.model_dump(mode="json", exclude={"cache_dir"})
        meta: dict[str, Any] = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
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
                "weights": f"{name}.safetensors",
                "lora": {"merged_rank": mod.config.lora.rank},
            }
        if extra:
            meta.update(extra)
        return meta

    def write_files(self, directory: Path, extra: Mapping[str, Any] | None = None) -> None:
        """Write ``lbind.json`` and the encoder weights into an existing folder (not atomic; see save_pretrained)."""
        from safetensors.torch import save_file

        meta = self.describe(extra)
        for name, spec in meta["modalities"].items():
            state = export_encoder_state(_unwrap(self.encoders[name]))
            save_file(state, str(directory / spec["weights"]), metadata={"format": "pt", "modality": name})
        write_json(directory / META_FILE, meta)

    def save_pretrained(self, directory: str | Path, extra: Mapping[str, Any] | None = None) -> Path:
        """Write the checkpoint folder atomically (safetensors weights + ``lbind.json``); return its path."""
        directory = Path(directory)
        with atomic_dir(directory) as tmp:
            self.write_files(tmp, extra)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, map_location: str | torch.device = "cpu") -> BindModel:
        """Load a checkpoint folder: each modality through its installed plugin, weights from safetensors."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        from lbcore.plugins import default_registry

        directory = Path(directory)
        meta = read_meta(directory)
        anchor = meta["anchor"]
        anchor_cfg = validate_model(AnchorConfig, anchor.get("config", {}), prefix=("anchor",), source=str(directory))
        embed_dim = anchor.get("embed_dim")
        if not isinstance(embed_dim, int) or embed_dim <= 0:
            raise CheckpointError(f"{directory / META_FILE}: anchor.embed_dim must be a positive integer")
        modalities: dict[str, Modality] = {}
        encoders: dict[str, nn.Module] = {}
        scales: dict[str, float] = {}
        for name, spec in meta["modalities"].items():
            try:
                reg = default_registry().registered(name)
            except ModalityNotFoundError as err:
                raise ModalityNotFoundError(
                    f"{directory}: the checkpoint needs modality {name!r} from plugin "
                    f"{spec.get('distribution') or spec.get('plugin') or spec.get('module')!r}: {err}"
                ) from err
            if spec.get("version") and reg.plugin.version and spec["version"] != reg.plugin.version:
                log.warning(
                    "%s: %s was saved with plugin %s %s; %s is installed",
                    directory,
                    name,
                    spec.get("plugin"),
                    spec["version"],
                    reg.plugin.version,
                )
            config = validate_model(
                reg.cls.Config, spec.get("config", {}), ("modalities", name, "config"), str(directory)
            )
            modality = reg.cls(config)
            encoder = modality.build_encoder(embed_dim)
            weights = directory / str(spec.get("weights", f"{name}.safetensors"))
            try:
                state = load_file(str(weights), device=str(map_location))
            except (OSError, SafetensorError) as err:
                raise CheckpointError(f"{weights}: cannot read encoder weights: {err}") from err
            result = encoder.load_state_dict(state, strict=False)
            if result.missing_keys or result.unexpected_keys:
                raise CheckpointError(
                    f"{weights}: does not fit the {name} encoder built from the saved config: "
                    f"missing {result.missing_keys or 'none'}, unexpected {result.unexpected_keys or 'none'}"
                )
            modalities[name] = modality
            encoders[name] = encoder
            scales[name] = float(spec.get("logit_scale", LogitScale().value.item()))
        model = cls(
            anchor_cfg, encoders, modalities, scales, anchor_fingerprint=anchor.get("fingerprint"), embed_dim=embed_dim
        )
        return model.to(map_location).eval()


def _unwrap(module: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / torch.compile wrappers."""
    from torch.nn.parallel import DistributedDataParallel

    while True:
        if isinstance(module, DistributedDataParallel):
            module = module.module
        elif isinstance(getattr(module, "_orig_mod", None), nn.Module):
            module = module._orig_mod
        else:
            return module


def load(directory: str | Path, map_location: str | torch.device = "cpu") -> BindModel:
    """Load a checkpoint folder written by ``lbind train`` or :meth:`BindModel.save_pretrained`."""
    return BindModel.from_pretrained(directory, map_location=map_location)
