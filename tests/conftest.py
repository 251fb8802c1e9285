"""Shared fixtures: a tiny generated vedai-synth set and a 1-epoch model trained on it (built once per session)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")

IMGSZ = 64


@pytest.fixture
def log(caplog):
    """Ultralytics' logger does not propagate to root: attach pytest's handler to it."""
    logger = logging.getLogger("ultralytics")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


@pytest.fixture(scope="session")
def synth_yaml(tmp_path_factory) -> Path:
    """16 train / 8 val pairs at 96 px, with a data YAML pointing at them (absolute path)."""
    from ultralytics.utils import YAML

    from ghost_yolo.data.synthetic import VEDAI_NAMES, generate_vedai_synth

    root = tmp_path_factory.mktemp("data") / "synth"
    generate_vedai_synth(root, n_train=16, n_val=8, imgsz=96, seed=1, workers=1)
    yaml = root / "synth.yaml"
    YAML.save(yaml, {"path": str(root), "train": "images/train", "val": "images/val", "pairing": "suffix",
                     "names": VEDAI_NAMES})
    return yaml


@pytest.fixture(scope="session")
def trained(synth_yaml, tmp_path_factory) -> Path:
    """Train ghost-n in float (bits=32) for 1 epoch on the tiny set; returns the run directory."""
    from ghost_yolo import GhostYOLO

    project = tmp_path_factory.mktemp("runs")
    model = GhostYOLO("ghost-n.yaml")
    model.train(data=str(synth_yaml), bits=32, epochs=1, imgsz=IMGSZ, batch=8, workers=0, project=str(project), name="train",
                exist_ok=True, plots=True, seed=0, deterministic=True, val=True)
    return project / "train"


@pytest.fixture(scope="session")
def qtrained(synth_yaml, tmp_path_factory) -> Path:
    """The whole pipeline: one float epoch (fp_epochs = epochs // 2), the HQ search, one quantized (LSQ) epoch with
    OST self-distillation from the co-trained float self; returns the run directory."""
    from ghost_yolo import GhostYOLO

    project = tmp_path_factory.mktemp("qruns")
    GhostYOLO("ghost-n.yaml").train(data=str(synth_yaml), epochs=2, hq_threshold=0.05, kd="ost", float_self="cotrain",
                                    imgsz=IMGSZ, batch=8, workers=0, project=str(project), name="q", exist_ok=True,
                                    plots=True, seed=0, deterministic=True)
    return project / "q"
