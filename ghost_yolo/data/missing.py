"""A missing or failed sensor: one fill rule for a band that is not there, used in training, validation and prediction.

A missing band (an orphan image's absent partner, ``drop_modality=``, ``modality_dropout=``) is a flat image of
``FILL`` = 114 in every channel of that band. It is the value Ultralytics pads letterbox, mosaic and perspective borders
with, so the network already reads a flat 114 as "no image here"; it is also close to the mean of natural and aerial
images (ImageNet's mean is 0.45 x 255 = 115), so the other band's first-layer statistics stay near those of training.
Zero is a real reading instead (black, or cold water in near-infrared), and a dataset mean would differ between the
data a model was trained on and the images it is later given.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

FILL = 114  # value of every pixel of a missing band (uint8, before the /255 normalisation)
BANDS = ("ir", "rgb")  # the bands of an rgb+ir input that can go missing


def missing_band(shape: tuple[int, int], band: str) -> np.ndarray:
    """A filled stand-in for an absent image: H x W x 3 BGR for ``rgb``, H x W for ``ir``."""
    return np.full((*shape, 3) if band == "rgb" else shape, FILL, dtype=np.uint8)


def blank_band(im: np.ndarray, band: str) -> np.ndarray:
    """Fill one band of a stacked rgb+ir array (H x W x 4: R, G, B, IR) in place, and return it."""
    if band == "rgb":
        im[..., :3] = FILL
    else:
        im[..., 3] = FILL
    return im


def check_drop_modality(value: Any, modality: str | None = None) -> str | None:
    """``drop_modality`` as ``ir``, ``rgb`` or None; refused with the reason on a model or data of one modality."""
    if value in (None, "", False, "none", "None"):
        return None
    band = str(value).lower().strip()
    if band not in BANDS:
        raise ValueError(f"drop_modality={value} is not a band: use ir or rgb (the sensor to treat as missing)")
    if modality is not None and modality != "rgb+ir":
        raise ValueError(f"drop_modality={band} needs an rgb+ir model, but this one takes {modality} only: with that "
                         "band gone there is nothing left to evaluate")
    return band


def check_modality_dropout(value: Any, modality: str | None = None) -> float:
    """``modality_dropout`` as a probability; refused outside [0, 1] or on single-modality training."""
    try:
        p = float(value or 0.0)
    except (TypeError, ValueError):
        raise ValueError(f"modality_dropout={value} is not a number: give a probability in [0, 1]") from None
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"modality_dropout={value} is outside [0, 1]: it is the probability that a training sample "
                         "loses its IR or its colour band")
    if p and modality is not None and modality != "rgb+ir":
        raise ValueError(f"modality_dropout={value} needs rgb+ir data, but this run is modality={modality}: there is "
                         "no second band to fall back on")
    return p


class ModalityDropout:
    """Training transform: with probability ``p`` blank a sample's IR or its colour band (each half the time).

    It runs after every other augmentation, on the finished sample, so the model sees exactly what it is given when
    that sensor is missing at inference: a flat ``FILL`` band. Boxes and the other band are untouched. ``p=1`` with one
    band is ``drop_modality`` (the same transform blanks that band in every validation sample).
    """

    def __init__(self, p: float = 0.0, bands: tuple[str, ...] = BANDS) -> None:
        """Probability of blanking a band, and the bands it chooses from (uniformly)."""
        self.p, self.bands = float(p), tuple(bands)

    def __call__(self, labels: dict[str, Any]) -> dict[str, Any]:
        """Blank ``labels['img']`` (H x W x 4) with probability ``p``."""
        if self.p and (self.p >= 1.0 or random.random() < self.p):
            band = self.bands[0] if len(self.bands) == 1 else random.choice(self.bands)
            labels["img"] = blank_band(labels["img"].copy(), band)  # a copy: the array may be a cached image
        return labels

    def __repr__(self) -> str:
        """Readable in Ultralytics' transform listings."""
        return f"{type(self).__name__}(p={self.p}, bands={self.bands})"
