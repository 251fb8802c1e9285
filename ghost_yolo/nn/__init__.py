"""Neural network layers: modality fusion blocks, fake quantizers, the quantized conv and switchable BatchNorm (the
models built from them live in ``ghost_yolo.models``)."""

from .fusion import BandConv, DualStreamStem, ModalityAttention, SqueezeExcite
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
           "BandConv",
           "DoReFaAct",
           "DoReFaWeight",
           "DualStreamStem",
           "FakeQuantizer",
           "LSQAct",
           "LSQWeight",
           "ModalityAttention",
           "QConv2d",
           "SqueezeExcite",
)
