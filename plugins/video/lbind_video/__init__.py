"""lbind plugin: video clips, LanguageBind recipe."""

from lbcore import hookimpl


@hookimpl
def register_modalities(register):
    from lbind_video.modality import VideoModality

    register(VideoModality)
