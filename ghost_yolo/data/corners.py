"""Oriented boxes given as four pixel corners, turned into Ultralytics OBB label rows.

Ultralytics refuses a label file whose normalized coordinates leave [0, 1] (``verify_image_label``), so the converters
(DroneVehicle, VEDAI with ``obb=True``) clip every box to its image here, in one way:
- a box whose corners all lie in the image is written as annotated (corner order kept);
- a box that crosses the image edge is cut to the part inside (convex hull of its corners intersected with the image)
  and written as the minimum-area rectangle around that part, clamped to the image;
- a box with less than ``MIN_AREA`` px² inside the image is cut to nothing and dropped (the caller counts it).
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_AREA = 1.0  # px²: a box with less than this inside the image is cut to nothing


def clip_corners(corners: np.ndarray, w: float, h: float, min_area: float = MIN_AREA) -> np.ndarray | None:
    """The box's four corners (4 x 2 pixels) clipped to a ``w`` x ``h`` image, or None if nothing of it is left."""
    pts = np.asarray(corners, dtype=np.float32).reshape(4, 2)
    inside = (pts >= 0).all() and (pts[:, 0] <= w).all() and (pts[:, 1] <= h).all()
    if inside:
        return pts if cv2.contourArea(cv2.convexHull(pts)) >= min_area else None
    image = np.array([[0, 0], [w, 0], [w, h], [0, h]], dtype=np.float32)
    area, part = cv2.intersectConvexConvex(cv2.convexHull(pts), image)
    if area < min_area:
        return None
    return np.clip(cv2.boxPoints(cv2.minAreaRect(part)), 0, [w, h]).astype(np.float32)


def obb_row(cls: int, corners: np.ndarray, w: float, h: float) -> str:
    """One label line ``class x1 y1 x2 y2 x3 y3 x4 y4``, corners normalized by the image size (6 decimals)."""
    xy = (np.asarray(corners, dtype=np.float64).reshape(4, 2) / [w, h]).ravel()
    return f"{cls} " + " ".join(f"{v:.6f}" for v in xy)
