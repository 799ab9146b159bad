"""lbind plugin: infrared (thermal) images, LanguageBind recipe."""

from lbcore import hookimpl


@hookimpl
def register_modalities(register):
    from lbind_infrared.modality import InfraredModality

    register(InfraredModality)
