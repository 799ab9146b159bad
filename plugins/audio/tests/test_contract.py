from lbind_audio.modality import AudioModality

from lbcore.testing import ModalityContract


class TestAudioContract(ModalityContract):
    modality_cls = AudioModality
