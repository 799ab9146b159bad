from lbind_depth.modality import DepthModality

from lbcore.testing import ModalityContract


class TestDepthContract(ModalityContract):
    modality_cls = DepthModality
