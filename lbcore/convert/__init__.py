"""Weights in: Hugging Face CLIP vision towers and released LanguageBind checkpoints -> our encoders.

- :mod:`lbcore.convert.weights`: config.json and weight files (safetensors, sharded, or ``pytorch_model.bin``
  through ``torch.load(weights_only=True)`` only: arbitrary pickles are never executed); exact loading.
- :mod:`lbcore.convert.clip`: CLIP vision key mapping, :func:`encoder_config_from_clip`,
  :func:`load_clip_vision_into` (``lbind train --init clip:PATH``).
- :mod:`lbcore.convert.languagebind`: reading a release (LoRA merged, its modality found by the ``model_type``
  a plugin declares in ``Modality.releases``), key mapping with temporal parts, the modality config it implies,
  :func:`load_languagebind_into` (``--init languagebind:PATH``).
- :mod:`lbcore.convert.text_tower`: a release's text tower as a CLIP anchor folder.
- :mod:`lbcore.convert.writer`: :func:`~lbcore.convert.writer.convert_languagebind` (``lbind convert
  languagebind``), which assembles a :class:`lbcore.model.BindModel`.

This ``__init__`` re-exports the first four only. :mod:`lbcore.model` imports the loaders from here, and
:mod:`lbcore.convert.writer` imports :mod:`lbcore.model`: importing the writer here would make a cycle, so
import ``convert_languagebind`` and ``ConversionResult`` from :mod:`lbcore.convert.writer`.
"""

from __future__ import annotations

from lbcore.convert.clip import (
    ANCHOR_KEY,
    CLIP_VISION_DEFAULTS,
    CLIP_VISION_RULES,
    HF_ACTIVATIONS,
    TEMPORAL_PREFIXES,
    TEXT_PREFIXES,
    VisionStateMapping,
    clip_vision_to_encoder_state,
    encoder_config_from_clip,
    guess_prefix,
    load_clip_vision_into,
    map_clip_vision_keys,
)
from lbcore.convert.languagebind import (
    ARCHITECTURE_FIELDS,
    LANGUAGEBIND_LORA_DEFAULTS,
    LanguageBindEncoder,
    LanguageBindInit,
    LanguageBindRelease,
    languagebind_grid,
    languagebind_modality_config,
    languagebind_settings,
    load_languagebind_into,
    map_languagebind_vision_keys,
    merge_languagebind_lora,
    read_languagebind,
    release_modality,
)
from lbcore.convert.text_tower import ANCHOR_MAX_LENGTH, TOKENIZER_FILES, write_languagebind_anchor
from lbcore.convert.weights import WEIGHT_FILES

__all__ = [
    "ANCHOR_KEY",
    "ANCHOR_MAX_LENGTH",
    "ARCHITECTURE_FIELDS",
    "CLIP_VISION_DEFAULTS",
    "CLIP_VISION_RULES",
    "HF_ACTIVATIONS",
    "LANGUAGEBIND_LORA_DEFAULTS",
    "TEMPORAL_PREFIXES",
    "TEXT_PREFIXES",
    "TOKENIZER_FILES",
    "WEIGHT_FILES",
    "LanguageBindEncoder",
    "LanguageBindInit",
    "LanguageBindRelease",
    "VisionStateMapping",
    "clip_vision_to_encoder_state",
    "encoder_config_from_clip",
    "guess_prefix",
    "languagebind_grid",
    "languagebind_modality_config",
    "languagebind_settings",
    "load_clip_vision_into",
    "load_languagebind_into",
    "map_clip_vision_keys",
    "map_languagebind_vision_keys",
    "merge_languagebind_lora",
    "read_languagebind",
    "release_modality",
    "write_languagebind_anchor",
]
