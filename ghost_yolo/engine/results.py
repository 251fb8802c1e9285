"""Results that keep the infrared half of a pair, so plots show colour and IR side by side."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cv2
import numpy as np
from ultralytics.engine.results import Results


class PairedResults(Results):
    """Ultralytics Results on the colour image (boxes, ``save_txt`` and crops in its pixels) plus ``ir_img``."""

    def __init__(self, orig_img: np.ndarray, *args: Any, ir_img: np.ndarray | None = None, **kwargs: Any) -> None:
        """``ir_img`` is the H x W infrared band of the pair, or None for single-modality input."""
        super().__init__(orig_img, *args, **kwargs)
        self.ir_img = ir_img

    def plot(self, *args: Any, show: bool = False, save: bool = False, filename: str | None = None,
             **kwargs: Any) -> np.ndarray:
        """Plot on the colour image and, for pairs, on the IR image too, side by side (BGR array)."""
        im = super().plot(*args, **kwargs)
        if self.ir_img is not None and kwargs.get("img") is None and not kwargs.get("pil"):
            ir = cv2.cvtColor(self.ir_img, cv2.COLOR_GRAY2BGR)
            if ir.shape[:2] != im.shape[:2]:
                ir = cv2.resize(ir, (im.shape[1], im.shape[0]))
            im = np.hstack((im, super().plot(*args, img=ir, **kwargs)))
        if show:
            cv2.imshow(str(self.path), im)
            cv2.waitKey(1)
        if save:
            cv2.imwrite(filename or f"results_{Path(self.path).name}", im)
        return im
