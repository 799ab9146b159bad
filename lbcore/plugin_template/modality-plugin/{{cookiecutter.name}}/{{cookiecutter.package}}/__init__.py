"""lbind plugin: the {{ cookiecutter.name }} modality ({{ cookiecutter.description }}).

This module is the plugin: the ``lbind`` entry point in pyproject.toml names it, and lbind calls its hooks.
Importing it does no work; the modality module is imported when the hook runs.
"""

from lbcore import hookimpl


@hookimpl
def register_modalities(register):
    from {{ cookiecutter.package }}.modality import {{ cookiecutter.class_prefix }}Modality

    register({{ cookiecutter.class_prefix }}Modality)
