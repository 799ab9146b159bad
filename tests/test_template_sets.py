"""Named prompt template sets: Modality.template_sets beside the default `templates`, chosen by name."""

from __future__ import annotations

from typing import ClassVar

import pytest
from torch import nn

from lbcore.config import ModalityConfig
from lbcore.errors import ConfigError, PluginError
from lbcore.modality import Modality


class Voice(Modality):
    name = "voice"
    Config = ModalityConfig
    presets: ClassVar = {"languagebind": {}, "demo": {}}
    templates = ("a sound of {}.",)
    template_sets: ClassVar = {"speech": ("a person saying {}.", "the word {}."), "short": ("{}",)}

    def preprocess(self, item, train=False):
        raise NotImplementedError

    def example_input(self, seed=0):
        return None

    def build_stem(self):
        return nn.Identity()


def test_the_default_set_is_templates_and_named_sets_are_returned_whole() -> None:
    Voice.check_definition()
    assert Voice.template_set() == ("a sound of {}.",)
    assert Voice.template_set("default") == ("a sound of {}.",)
    assert Voice.template_set("speech") == ("a person saying {}.", "the word {}.")


def test_an_unknown_set_lists_the_names_there_are() -> None:
    with pytest.raises(
        ConfigError, match="modality 'voice' has no template set 'music'; its template sets: default, speech, short"
    ):
        Voice.template_set("music")


@pytest.mark.parametrize(
    ("sets", "problem"),
    [
        ({"speech": ()}, "must be non-empty"),
        ({"speech": ("no placeholder",)}, "must contain '{}'"),
        ({"speech": "a person saying {}."}, "a sequence of templates"),
        ({"default": ("{}",)}, "named other than 'default'"),
    ],
)
def test_bad_template_sets_fail_the_definition_check(sets: dict, problem: str) -> None:
    bad = type("BadVoice", (Voice,), {"template_sets": sets})
    with pytest.raises(PluginError, match="template_sets") as err:
        bad.check_definition()
    assert problem in str(err.value)
