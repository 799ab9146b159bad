"""Prompt templates: LanguageBind's sound template by default, a named set for speech (`--templates speech`)."""

from __future__ import annotations

from lbind_audio.modality import AudioModality


def test_sounds_keep_languagebinds_template_and_speech_has_its_own_set() -> None:
    AudioModality.check_definition()
    assert AudioModality.template_set() == ("a sound of {}.",)
    speech = AudioModality.template_set("speech")
    assert len(speech) >= 3 and all(t.count("{}") == 1 for t in speech)
    assert not set(speech) & set(AudioModality.templates)
    assert speech[0].format("yes") == "a person saying yes."
