"""Neural network pieces: modality fusion blocks and the ghost detection model."""

from .fusion import DualStreamStem, ModalityAttention, SqueezeExcite
from .model import GhostDetectionModel, load_model_yaml

__all__ = ("DualStreamStem", "ModalityAttention", "SqueezeExcite", "GhostDetectionModel", "load_model_yaml")
