from lbind_infrared.modality import InfraredModality

from lbcore.testing import ModalityContract


class TestInfraredContract(ModalityContract):
    modality_cls = InfraredModality
