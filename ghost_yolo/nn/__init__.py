"""Neural network pieces: modality fusion blocks, fake quantizers, the quantized conv and the ghost detection model."""

from .fusion import DualStreamStem, ModalityAttention, SqueezeExcite
from .model import GhostDetectionModel, load_model_yaml
from .qconv import QConv2d
from .quantizers import (
           QUANTIZERS,
           DoReFaAct,
           DoReFaWeight,
           FakeQuantizer,
           LSQAct,
           LSQWeight,
)

__all__ = (
           "QUANTIZERS",
           "DoReFaAct",
           "DoReFaWeight",
           "DualStreamStem",
           "FakeQuantizer",
           "GhostDetectionModel",
           "LSQAct",
           "LSQWeight",
           "ModalityAttention",
           "QConv2d",
           "SqueezeExcite",
           "load_model_yaml",
)
