"""Engine: the model API, trainer, validator and predictor (Ultralytics subclasses)."""

from .model import GhostYOLO
from .predictor import GhostPredictor
from .trainer import GhostTrainer
from .validator import GhostValidator

__all__ = ("GhostPredictor", "GhostTrainer", "GhostValidator", "GhostYOLO")
