"""lbind plugin: depth maps, LanguageBind recipe."""

from lbcore import hookimpl


@hookimpl
def register_modalities(register):
    from lbind_depth.modality import DepthModality

    register(DepthModality)
