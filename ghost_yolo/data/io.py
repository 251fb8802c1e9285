"""Reading colour/infrared pairs and stacking them into one array in a fixed channel order.

Channel order, used in training, validation, prediction and export alike:
- ``rgb+ir``: R, G, B, IR (4 channels; a pretrained 3-channel first conv stays meaningful on the first three);
- ``rgb``: B, G, R (Ultralytics' own convention for 3 channels, flipped to RGB by its Format and predictor);
- ``ir``: IR (1 channel).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .missing import missing_band

MODALITIES = {"rgb+ir": 4, "rgb": 3, "ir": 1}


def check_modality(modality: str) -> str:
    """Return a valid modality name or raise with the accepted ones."""
    m = str(modality).lower().replace(" ", "")
    if m not in MODALITIES:
        raise ValueError(f"unknown modality '{modality}': use one of {', '.join(MODALITIES)}")
    return m


def modality_for_channels(channels: int) -> str:
    """The modality a model with this many input channels was trained on."""
    for m, c in MODALITIES.items():
        if c == channels:
            return m
    raise ValueError(f"a model with {channels} input channels matches no modality ({MODALITIES})")


def read_colour(path: str | Path) -> np.ndarray:
    """Read a colour image as 8-bit BGR, naming the file if it cannot be decoded."""
    im = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if im is None:
        raise FileNotFoundError(f"cannot read colour image {path} (missing or corrupt)")
    return im


def normalize_ir(im: np.ndarray) -> np.ndarray:
    """Turn an IR image given as 1 or 3 bands, 8 or 16 bit, into one 8-bit band.

    16-bit thermal data often spans a narrow range of raw counts, so it is stretched per image between its 0.5 and
    99.5 percentiles instead of Ultralytics' plain ``>> 8`` (which would leave it nearly constant).
    """
    if im.ndim == 3:
        im = im[..., 0] if im.shape[2] == 1 else cv2.cvtColor(im[..., :3], cv2.COLOR_BGR2GRAY)
    if im.dtype == np.uint8:
        return im
    lo, hi = np.percentile(im, (0.5, 99.5))
    scale = 255.0 / max(float(hi - lo), 1e-6)
    return np.clip((im.astype(np.float32) - lo) * scale, 0, 255).astype(np.uint8)


def read_ir(path: str | Path) -> np.ndarray:
    """Read an infrared image as one 8-bit band, naming the file if it cannot be decoded."""
    im = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if im is None:
        raise FileNotFoundError(f"cannot read infrared image {path} (missing or corrupt)")
    return normalize_ir(im)


def stack_modalities(bgr: np.ndarray | None, ir: np.ndarray | None, modality: str) -> np.ndarray:
    """Stack a BGR colour image and an IR band into the modality's channel order (H x W x C, uint8)."""
    if modality == "rgb":
        return bgr
    if modality == "ir":
        return ir[..., None]
    if ir.shape[:2] != bgr.shape[:2]:
        ir = cv2.resize(ir, (bgr.shape[1], bgr.shape[0]), interpolation=cv2.INTER_LINEAR)
    rgba = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGBA)  # OpenCV's channel shuffles are ~2x faster than numpy's
    cv2.mixChannels([ir], [rgba], [0, 3])
    return rgba


def split_modalities(im: np.ndarray, modality: str) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Inverse of ``stack_modalities`` for an H x W x C array: (BGR colour or None, IR band or None)."""
    if modality == "rgb":
        return im, None
    if modality == "ir":
        return None, im[..., 0]
    return cv2.cvtColor(np.ascontiguousarray(im), cv2.COLOR_RGBA2BGR), np.ascontiguousarray(im[..., 3])


def load_pair(colour: str | Path | None, ir: str | Path | None, modality: str) -> np.ndarray:
    """Read what a modality needs of a pair and stack it; IR of another size is resized to the colour size.

    A half given as None is missing (``fill_missing=True``): it is filled by the one rule of ``missing.py`` at the
    size of the half that is there.
    """
    if colour is None and ir is None:
        raise FileNotFoundError("a pair needs a colour or an IR image, got neither")
    bgr = read_colour(colour) if colour is not None and (modality != "ir" or ir is None) else None
    ir_im = read_ir(ir) if ir is not None and (modality != "rgb" or colour is None) else None
    if bgr is None and modality != "ir":
        bgr = missing_band(ir_im.shape[:2], "rgb")
    if ir_im is None and modality != "rgb":
        ir_im = missing_band(bgr.shape[:2], "ir")
    return stack_modalities(bgr, ir_im, modality)
