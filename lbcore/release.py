"""ReleaseLayout: how a modality's published checkpoint is laid out, as its plugin declares it.

LanguageBind publishes one checkpoint per modality (``LanguageBind/LanguageBind_Audio``, ``_Depth``, ...): a
transformers ``CLIPModel`` whose config.json names the release in ``model_type`` (``LanguageBindAudio``) and
states, in ``vision_config``, the preprocessing its vision tower was trained on (mel bins, frames, maximum
depth, ...). lbcore's converter (:mod:`lbcore.convert`) knows the CLIP layout every release shares; what differs
per modality is declared by the plugin that provides the modality, in ``Modality.releases``::

    class TactileModality(Modality):
        releases = (ReleaseLayout("LanguageBindTactile", settings={"pressure_scale": "scale"}),)

A layout whose patch grid does not follow ``image_size`` (a spectrogram's mel bins x frames) subclasses
:class:`ReleaseLayout` and overrides :meth:`ReleaseLayout.grid`. This module is a ground-layer building block:
it imports nothing of lbcore but its errors.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lbcore.errors import CheckpointError

# What transformers' CLIPVisionConfig assumes when config.json leaves a field out.
CLIP_VISION_DEFAULTS: dict[str, Any] = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "patch_size": 32,
    "image_size": 224,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}


def _is_positive_int(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and int(value) == value and value > 0


def vision_count(vision_config: Mapping[str, Any], key: str, source: str) -> int:
    """``vision_config[key]`` (or transformers' default) as a positive integer; :class:`CheckpointError`
    naming ``source`` (the config.json) otherwise."""
    value = vision_config.get(key, CLIP_VISION_DEFAULTS.get(key))
    if not _is_positive_int(value):
        raise CheckpointError(f"{source}: vision_config.{key} is {value!r}; expected a positive integer")
    return int(value)


def image_hw(size: Any, source: str) -> tuple[int, int]:
    """``image_size`` of a CLIP vision config as (height, width): an int, or [h, w] (LanguageBind's audio
    towers rewrite it to [mel_bins, target_length])."""
    if _is_positive_int(size):
        return int(size), int(size)
    if isinstance(size, (list, tuple)) and len(size) == 2 and all(_is_positive_int(v) for v in size):
        return int(size[0]), int(size[1])
    raise CheckpointError(f"{source}: image_size {size!r} is not a positive integer or a [height, width] pair")


@dataclass(frozen=True)
class ReleaseLayout:
    """One published checkpoint of a modality: how to recognise it and what its config.json carries.

    ``model_type``: config.json's ``model_type`` (e.g. ``"LanguageBindDepth"``), unique across installed plugins.
    ``settings``: ``vision_config`` field -> field of the plugin's config, for the preprocessing settings the
    weights were trained with (copied into the converted modality config when present).
    ``required``: ``vision_config`` fields the release must state (non-zero), e.g. those that decide the grid.
    ``carries_image_size``: the release's square ``image_size`` and ``num_channels`` become the config's
    ``image_size`` and ``in_chans`` (an :class:`lbcore.config.ImageConfig`); False for non-image inputs.
    """

    model_type: str
    settings: Mapping[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = ()
    carries_image_size: bool = True

    def grid(self, vision_config: Mapping[str, Any], source: str = "<vision_config>") -> tuple[int, int]:
        """The (rows, cols) patch grid of the release's position embedding: ``image_size // patch_size`` per side.

        Override when the tower was resized to another input (a spectrogram's mel bins x frames)."""
        patch = vision_count(vision_config, "patch_size", source)
        height, width = image_hw(vision_config.get("image_size", CLIP_VISION_DEFAULTS["image_size"]), source)
        return height // patch, width // patch

    def read_settings(self, vision_config: Mapping[str, Any], source: str = "<vision_config>") -> dict[str, Any]:
        """The preprocessing settings the release was trained with, by the plugin config's field names."""
        for key in self.required:
            if not vision_config.get(key):
                raise CheckpointError(
                    f"{source}: vision_config.{key} is missing or 0; a {self.model_type} release must state it"
                )
        settings = {ours: vision_config[key] for key, ours in self.settings.items() if key in vision_config}
        if self.carries_image_size:
            size = vision_config.get("image_size", CLIP_VISION_DEFAULTS["image_size"])
            height, width = image_hw(size, source)
            if height != width:
                raise CheckpointError(f"{source}: image_size {height}x{width} is not square")
            settings["image_size"] = height
            settings["in_chans"] = vision_count({"num_channels": 3, **vision_config}, "num_channels", source)
        return settings
