"""ghost-yolo: tiny, low-bit detectors for multimodal (colour + infrared) remote sensing, on Ultralytics YOLO.

Importing the package registers its modules (needed by DDP workers and checkpoint loading) and switches Ultralytics
to offline mode: nothing is downloaded at run time.
"""

import os

os.environ.setdefault("YOLO_OFFLINE", "1")  # before Ultralytics is imported: no hub, font or weight downloads
# the user's own OMP_NUM_THREADS, read before Ultralytics' import sets it to 1 where unset (utils.threads)
os.environ.setdefault("GHOST_USER_OMP_THREADS", os.environ.get("OMP_NUM_THREADS", "") if "ultralytics" not in
                      __import__("sys").modules else "")

__version__ = "0.1.0"

from ghost_yolo.engine import GhostPredictor, GhostTrainer, GhostValidator, GhostYOLO
from ghost_yolo.models import GhostDetectionModel, model as _model_module
from ghost_yolo.nn import DualStreamStem

import sys as _sys

# Checkpoints written before the model moved to ghost_yolo.models pickled it as ghost_yolo.nn.model
_sys.modules.setdefault("ghost_yolo.nn.model", _model_module)

__all__ = (
           "DualStreamStem",
           "GhostDetectionModel",
           "GhostPredictor",
           "GhostTrainer",
           "GhostValidator",
           "GhostYOLO",
           "__version__",
)
