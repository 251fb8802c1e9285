"""Models: the ghost detection model (Ultralytics' DetectionModel with ghost modules and a quantization config) and
seeding from RGB checkpoints. Built from ``ghost_yolo.nn`` layers and ``ghost_yolo.quant``'s verbs."""

from .model import GhostDetectionModel, load_model_yaml
from .pretrained import seed_first_layer

__all__ = ("GhostDetectionModel", "load_model_yaml", "seed_first_layer")
