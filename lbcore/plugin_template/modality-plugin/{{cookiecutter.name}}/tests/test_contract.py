"""The contract battery every lbind modality plugin inherits (lbcore.testing.ModalityContract)."""

from lbcore.testing import ModalityContract

from {{ cookiecutter.package }}.modality import {{ cookiecutter.class_prefix }}Modality


class Test{{ cookiecutter.class_prefix }}Contract(ModalityContract):
    modality_cls = {{ cookiecutter.class_prefix }}Modality
