"""Colour augmentation that knows which channels are colour and which are infrared.

Geometric transforms (Mosaic, RandomPerspective, MixUp, CopyPaste, flips, LetterBox) already move every channel of a
stacked array together; only Ultralytics' RandomHSV needs replacing, because it skips any image that is not 3-channel.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
from ultralytics.data.augment import Compose, RandomHSV


class PairedHSV(RandomHSV):
    """HSV jitter on the colour channels only, plus an optional brightness/contrast jitter on the IR band."""

    def __init__(self, hgain: float = 0.5, sgain: float = 0.5, vgain: float = 0.5, ir_jitter: float = 0.0,
                 modality: str = "rgb+ir") -> None:
        """Store gains; ``ir_jitter`` is the largest relative change of IR contrast and brightness."""
        super().__init__(hgain, sgain, vgain)
        self.ir_jitter = float(ir_jitter)
        self.modality = modality

    def __call__(self, labels: dict[str, Any]) -> dict[str, Any]:
        """Augment ``labels['img']`` in place, channel group by channel group."""
        img = labels["img"]
        if self.modality == "rgb":
            return super().__call__(labels)
        if self.modality == "rgb+ir":
            bgr = cv2.cvtColor(img, cv2.COLOR_RGBA2BGR)  # contiguous colour copy, IR left in img
            super().__call__({"img": bgr})
            if img.flags.c_contiguous:
                cv2.mixChannels([bgr], [img], [0, 2, 1, 1, 2, 0])  # write B,G,R back as R,G,B in place
            else:
                img[..., :3] = bgr[..., ::-1]
        if self.ir_jitter > 0:
            ir = img[..., -1].astype(np.float32)
            a, b = 1 + np.random.uniform(-1, 1, 2) * self.ir_jitter
            mean = ir.mean()
            img[..., -1] = np.clip((ir - mean) * a + mean * b, 0, 255).astype(np.uint8)
        return labels


def replace_hsv(transforms: Compose, hsv: PairedHSV) -> Compose:
    """Swap every RandomHSV in a (nested) Compose for the modality-aware one."""
    for i, t in enumerate(transforms.transforms):
        if isinstance(t, Compose):
            replace_hsv(t, hsv)
        elif type(t) is RandomHSV:
            transforms.transforms[i] = hsv
    return transforms
