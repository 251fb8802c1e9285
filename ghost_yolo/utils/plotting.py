"""Plots that show both modalities: colour and infrared side by side, boxes drawn on each half."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ultralytics.utils import LOGGER, colorstr
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


def plot_gates(csv: str | Path, path: str | Path, on_plot: Callable | None = None) -> Path:
    """Heat map of the OST gates' open fraction, epochs x distilled layers, from ``gates.csv`` (saved as PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    head, *rows = Path(csv).read_text().strip().splitlines()
    layers = [c.removeprefix("layer") for c in head.split(",")[1:]]
    epochs = [r.split(",")[0] for r in rows]
    data = np.array([[float(v) for v in r.split(",")[1:]] for r in rows]).reshape(len(rows), len(layers))
    fig, ax = plt.subplots(figsize=(max(6, len(layers) * 0.45), max(2.5, len(rows) * 0.35 + 1.2)), tight_layout=True)
    im = ax.imshow(data, vmin=0, vmax=1, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(layers)), layers, fontsize=7)
    ax.set_yticks(range(len(epochs)), epochs, fontsize=7)
    ax.set_xlabel("distilled layer")
    ax.set_ylabel("epoch")
    ax.set_title("OST gate: fraction of samples the teacher guides")
    fig.colorbar(im, ax=ax, fraction=0.03)
    path = Path(path)
    fig.savefig(path, dpi=200)
    plt.close(fig)
    LOGGER.info(f"{colorstr('ghost:')} gate activity plotted to {path}")
    if on_plot:
        on_plot(path)
    return path
