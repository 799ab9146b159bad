from lbind_video.modality import VideoModality

from lbcore.testing import ModalityContract


class TestVideoContract(ModalityContract):
    modality_cls = VideoModality
