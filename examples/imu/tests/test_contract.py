"""The contract battery every lbind modality plugin inherits (lbcore.testing.ModalityContract)."""

from lbcore.testing import ModalityContract

from lbind_imu.modality import ImuModality


class TestImuContract(ModalityContract):
    modality_cls = ImuModality
