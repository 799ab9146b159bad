"""lbind plugin: RGB images with CLIP preprocessing (LanguageBind_Image is a plain CLIP vision tower)."""

from lbcore import hookimpl


@hookimpl
def register_modalities(register):
    from lbind_image.modality import ImageModality

    register(ImageModality)
