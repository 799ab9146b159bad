"""A text decoder conditioned on modality tokens (VALOR's multimodal grouping captioning, for any modality or group).

The decoder is a transformers causal LM: by default a small GPT-2 built from a config (random initialisation;
``decoder: random`` with ``layers``/``width``/``heads``), or any Hub causal LM by name (``decoder: gpt2``,
loaded through ``AutoModelForCausalLM``). It reads the *encoder tokens* of one modality or of a group: each
source encoder's output tokens (``encoder.tokens(x)``: the trunk's tokens after the head's LayerNorm, class
token first; an encoder without ``tokens`` gives its embedding as one token), projected to the decoder width
(LayerNorm + linear per source) plus a learned per-source embedding, concatenated over the sources.

Conditioning (``conditioning``): ``cross-attention`` (default) passes them as ``encoder_hidden_states`` to
cross-attention layers in every block (GPT-2 ``add_cross_attention=True``); ``prefix`` prepends them to the
caption's token embeddings (for decoders without cross-attention). Cross-attention is the default because the
sequence the decoder self-attends over stays the caption's length, whatever the number of encoder tokens.

Tokenizer: with a random decoder, a word-level tokenizer built from the training captions (lower-cased, split
on non-letters: the same tokens the caption metrics count; it needs nothing downloaded, and its vocabulary of
a few hundred words keeps the output layer small); with a Hub decoder, that decoder's own tokenizer. Captions
are ``[BOS] words [EOS]``.

Saved with a checkpoint: ``decoder.safetensors`` (decoder, projections and source embeddings),
``decoder_tokenizer/`` (tokenizer files) and ``lbind.json``'s ``captioner`` entry (settings, the decoder's
config, the source token widths). Generation (greedy or beam search) goes through transformers' ``generate``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from lbcore.checkpoint import META_FILE, read_meta, write_json
from lbcore.config import StrictModel, validate_model
from lbcore.errors import CheckpointError

__all__ = [
    "DECODER_FILE",
    "TOKENIZER_DIR",
    "Captioner",
    "DecoderConfig",
    "encoder_tokens",
    "load_captioner",
    "save_captioner",
    "word_tokenizer",
    "words",
]

DECODER_FILE = "decoder.safetensors"
TOKENIZER_DIR = "decoder_tokenizer"
SPECIALS = ("[PAD]", "[BOS]", "[EOS]", "[UNK]")


class DecoderConfig(StrictModel):
    """The caption decoder: which LM, its size (random initialisation), how it reads the encoder tokens."""

    sources: list[str] = Field(min_length=1, description="Modalities whose tokens condition the decoder.")
    decoder: str = Field("random", description="'random' (a GPT-2 config) or a Hub causal LM name / local path.")
    layers: int = Field(2, gt=0, description="Random decoder: transformer blocks.")
    width: int = Field(128, gt=0, description="Random decoder: hidden size.")
    heads: int = Field(4, gt=0, description="Random decoder: attention heads.")
    conditioning: Literal["cross-attention", "prefix"] = Field(
        "cross-attention", description="Encoder tokens as cross-attention memory, or as a prefix."
    )
    max_length: int = Field(32, gt=2, description="Longest caption in tokens, [BOS] and [EOS] included.")


def words(text: str) -> list[str]:
    """Lower-cased runs of letters: how captions are tokenised for the word tokenizer and the metrics."""
    return re.findall(r"[a-z]+", text.lower())


def word_tokenizer(captions: Sequence[str]) -> Any:
    """A word-level tokenizer (transformers fast tokenizer) over the words of ``captions``, specials first."""
    from tokenizers import (  # deferred: tokenizers/transformers take seconds to import
        Regex,
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
    )
    from transformers import PreTrainedTokenizerFast  # deferred: as above

    vocab = {t: i for i, t in enumerate(SPECIALS)}
    for word in sorted({w for c in captions for w in words(c)}):
        vocab[word] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("[^a-z]+"), behavior="removed")
    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="[PAD]", bos_token="[BOS]", eos_token="[EOS]", unk_token="[UNK]"
    )


def _special_ids(tokenizer: Any) -> tuple[int, int, int]:
    """(bos, eos, pad) ids; a tokenizer without BOS or PAD (GPT-2) uses its EOS for them."""
    eos = tokenizer.eos_token_id
    if eos is None:
        raise CheckpointError("the decoder's tokenizer has no end-of-sequence token")
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else eos
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    return bos, eos, pad


@torch.no_grad()
def encoder_tokens(encoder: nn.Module, batch: torch.Tensor) -> torch.Tensor:
    """An encoder's output tokens [B, L, D] for a preprocessed batch (its embedding as one token when the
    encoder has no ``tokens`` method)."""
    if hasattr(encoder, "tokens"):
        return encoder.tokens(batch).float()
    return encoder(batch).float().unsqueeze(1)


def _build_lm(cfg: DecoderConfig, vocab_size: int, ids: tuple[int, int, int], lm_config: Mapping | None) -> Any:
    from transformers import (  # deferred: transformers takes seconds to import
        AutoConfig,
        AutoModelForCausalLM,
        GPT2Config,
    )

    cross = cfg.conditioning == "cross-attention"
    if lm_config is not None:  # rebuilding a saved decoder: its exact config, weights loaded afterwards
        spec = dict(lm_config)
        return AutoModelForCausalLM.from_config(AutoConfig.for_model(spec.pop("model_type"), **spec))
    if cfg.decoder == "random":
        bos, eos, pad = ids
        config = GPT2Config(
            vocab_size=vocab_size, n_positions=1024, n_embd=cfg.width, n_layer=cfg.layers, n_head=cfg.heads,
            add_cross_attention=cross, bos_token_id=bos, eos_token_id=eos, pad_token_id=pad,
        )  # fmt: skip
        return AutoModelForCausalLM.from_config(config)
    return AutoModelForCausalLM.from_pretrained(cfg.decoder, add_cross_attention=cross)


class Captioner(nn.Module):
    """Projections of the sources' encoder tokens + a causal LM (see the module docs)."""

    def __init__(
        self,
        cfg: DecoderConfig,
        source_widths: Mapping[str, int],
        tokenizer: Any,
        lm_config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.bos, self.eos, self.pad = _special_ids(tokenizer)
        self.lm = _build_lm(cfg, len(tokenizer), (self.bos, self.eos, self.pad), lm_config)
        width = self.lm.config.hidden_size
        self.source_widths = {m: int(source_widths[m]) for m in cfg.sources}
        self.project = nn.ModuleDict(
            {m: nn.Sequential(nn.LayerNorm(w), nn.Linear(w, width)) for m, w in self.source_widths.items()}
        )
        self.source_embedding = nn.Parameter(torch.zeros(len(cfg.sources), width))

    def condition(self, tokens: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Sources' encoder tokens {m: [B, L_m, D_m]} -> decoder-width memory [B, sum L_m, width]."""
        parts = [self.project[m](tokens[m]) + self.source_embedding[i] for i, m in enumerate(self.cfg.sources)]
        return torch.cat(parts, dim=1)

    def encode_text(self, captions: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``[BOS] caption [EOS]`` ids, right-padded, at most ``max_length`` -> (ids [B, T], mask [B, T])."""
        rows = [self.tokenizer(c, add_special_tokens=False)["input_ids"][: self.cfg.max_length - 2] for c in captions]
        rows = [[self.bos, *r, self.eos] for r in rows]
        longest = max(len(r) for r in rows)
        ids = torch.full((len(rows), longest), self.pad, dtype=torch.long)
        mask = torch.zeros((len(rows), longest), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, : len(r)] = torch.tensor(r)
            mask[i, : len(r)] = 1
        return ids, mask

    def forward(self, tokens: Mapping[str, torch.Tensor], ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Mean next-token cross-entropy of the captions ``ids`` given the sources' tokens."""
        memory = self.condition(tokens)
        labels = ids.masked_fill(mask == 0, -100)
        if self.cfg.conditioning == "cross-attention":
            return self.lm(input_ids=ids, attention_mask=mask, encoder_hidden_states=memory, labels=labels).loss
        embeds = torch.cat([memory, self.lm.get_input_embeddings()(ids)], dim=1)
        full_mask = torch.cat([mask.new_ones(memory.shape[:2]), mask], dim=1)
        full_labels = torch.cat([labels.new_full(memory.shape[:2], -100), labels], dim=1)
        return self.lm(inputs_embeds=embeds, attention_mask=full_mask, labels=full_labels).loss

    @torch.no_grad()
    def generate(self, tokens: Mapping[str, torch.Tensor], beams: int = 1, max_length: int | None = None) -> list[str]:
        """Captions of a batch: greedy (``beams`` 1) or beam search, through transformers' ``generate``."""
        memory = self.condition(tokens)
        b = memory.shape[0]
        bos = torch.full((b, 1), self.bos, dtype=torch.long, device=memory.device)
        settings = {
            "max_new_tokens": (max_length or self.cfg.max_length) - 1, "num_beams": beams, "do_sample": False,
            "eos_token_id": self.eos, "pad_token_id": self.pad, "bos_token_id": self.bos,
        }  # fmt: skip
        if self.cfg.conditioning == "cross-attention":
            out = self.lm.generate(
                input_ids=bos, attention_mask=torch.ones_like(bos), encoder_hidden_states=memory, **settings
            )
        else:
            embeds = torch.cat([memory, self.lm.get_input_embeddings()(bos)], dim=1)
            mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=memory.device)
            out = self.lm.generate(inputs_embeds=embeds, attention_mask=mask, **settings)
        return [t.strip() for t in self.tokenizer.batch_decode(out, skip_special_tokens=True)]


# ------------------------------------------------------------------------------------------- saving
def save_captioner(directory: Path, captioner: Captioner, extra: Mapping[str, Any] | None = None) -> None:
    """Write the decoder into the checkpoint ``directory``: weights, tokenizer and ``lbind.json``'s entry."""
    meta = read_meta(directory)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in captioner.state_dict().items()}
    save_file(state, str(directory / DECODER_FILE), metadata={"format": "pt", "part": "caption decoder"})
    captioner.tokenizer.save_pretrained(str(directory / TOKENIZER_DIR))
    meta["captioner"] = {
        "config": captioner.cfg.model_dump(mode="json"),
        "source_widths": captioner.source_widths,
        "lm_config": captioner.lm.config.to_dict(),
        "file": DECODER_FILE,
        "tokenizer": TOKENIZER_DIR,
        **dict(extra or {}),
    }
    write_json(directory / META_FILE, meta)


def load_captioner(directory: str | Path, map_location: str | torch.device = "cpu") -> Captioner:
    """The caption decoder saved in a checkpoint (:class:`CheckpointError` when it has none)."""
    from transformers import AutoTokenizer  # deferred: transformers takes seconds to import

    directory = Path(directory)
    spec = read_meta(directory).get("captioner")
    if not isinstance(spec, dict):
        raise CheckpointError(
            f"{directory}: holds no caption decoder; train one with `lbind train --caption --checkpoint {directory}`"
        )
    cfg = validate_model(DecoderConfig, spec.get("config", {}), ("captioner", "config"), str(directory))
    tokenizer = AutoTokenizer.from_pretrained(str(directory / spec.get("tokenizer", TOKENIZER_DIR)))
    captioner = Captioner(cfg, spec["source_widths"], tokenizer, lm_config=spec["lm_config"])
    path = directory / spec.get("file", DECODER_FILE)
    try:
        state = load_file(str(path), device="cpu")
    except (OSError, SafetensorError) as err:
        raise CheckpointError(f"{path}: cannot read the caption decoder: {err}") from err
    result = captioner.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("attn.bias")]  # GPT-2's causal-mask buffers
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{path}: does not fit the saved decoder config: missing {missing or 'none'}, "
                              f"unexpected {result.unexpected_keys or 'none'}")  # fmt: skip
    return captioner.to(map_location).eval()
