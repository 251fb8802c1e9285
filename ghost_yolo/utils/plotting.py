"""Plots that show both modalities: colour and infrared side by side, boxes drawn on each half."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from ultralytics.utils.plotting import plot_images


def side_by_side(images: torch.Tensor, modality: str) -> torch.Tensor:
    """B x C x H x W batch in the modality's channel order -> B x 3 x H x W' RGB (colour | IR for rgb+ir)."""
    if modality == "rgb+ir":
        return torch.cat((images[:, :3], images[:, 3:4].expand(-1, 3, -1, -1)), dim=3)
    if modality == "ir":
        return images[:, :1].expand(-1, 3, -1, -1)
    return images


def mirror_boxes(labels: dict[str, Any], width: int) -> dict[str, Any]:
    """Repeat boxes on the right (IR) half of a side-by-side image; normalised or pixel xywh boxes."""
    boxes = labels["bboxes"]
    if len(boxes) == 0:
        return dict(labels)
    lib = torch if isinstance(boxes, torch.Tensor) else np
    left, right = boxes.clone() if lib is torch else boxes.copy(), boxes.clone() if lib is torch else boxes.copy()
    if boxes[:, :4].max() <= 1.1:  # normalised, as plot_images decides
        left[:, [0, 2]] /= 2
        right[:, [0, 2]] /= 2
        right[:, 0] += 0.5
    else:
        right[:, 0] += width
    out = {k: labels[k] for k in ("cls", "batch_idx", "conf") if k in labels}
    out = {k: lib.cat((v, v)) if lib is torch else np.concatenate((v, v)) for k, v in out.items()}
    out["bboxes"] = lib.cat((left, right)) if lib is torch else np.concatenate((left, right))
    return out


def plot_paired_images(labels: dict[str, Any], images: torch.Tensor, modality: str, **kwargs: Any) -> Any:
    """Ultralytics' ``plot_images`` on a side-by-side view of a paired batch."""
    if modality != "rgb+ir":
        return plot_images(labels={k: v for k, v in labels.items() if k != "img"}, images=side_by_side(images, modality),
                           **kwargs)
    return plot_images(labels=mirror_boxes(labels, images.shape[3]), images=side_by_side(images, modality), **kwargs)
