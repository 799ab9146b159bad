"""lbind plugin: audio as a log-mel image, LanguageBind recipe."""

from lbcore import hookimpl


@hookimpl
def register_modalities(register):
    from lbind_audio.modality import AudioModality

    register(AudioModality)
