"""Models: the ghost detection and oriented-box models (Ultralytics' DetectionModel / OBBModel with ghost modules and a
quantization config) and seeding from RGB checkpoints. Built from ``ghost_yolo.nn`` layers and ``ghost_yolo.quant``'s
verbs."""

from .model import TASKS, GhostDetectionModel, GhostOBBModel, build_model, load_model_yaml, model_task
from .pretrained import seed_first_layer

__all__ = ("TASKS", "GhostDetectionModel", "GhostOBBModel", "build_model", "load_model_yaml", "model_task",
           "seed_first_layer")
