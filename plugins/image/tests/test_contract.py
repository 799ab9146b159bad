from lbind_image.modality import ImageModality

from lbcore.testing import ModalityContract


class TestImageContract(ModalityContract):
    modality_cls = ImageModality
