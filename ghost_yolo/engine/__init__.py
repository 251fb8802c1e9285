"""Engine: the model API, trainers, validators and predictors of the detect and obb tasks (Ultralytics subclasses)."""

from .model import GhostYOLO
from .predictor import GhostOBBPredictor, GhostPredictor
from .trainer import GhostOBBTrainer, GhostTrainer
from .validator import GhostOBBValidator, GhostValidator

__all__ = ("GhostOBBPredictor", "GhostOBBTrainer", "GhostOBBValidator", "GhostPredictor", "GhostTrainer",
           "GhostValidator", "GhostYOLO")
