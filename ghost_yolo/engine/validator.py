"""GhostValidator / GhostOBBValidator: Ultralytics' DetectionValidator / OBBValidator on paired data, with
both-modality plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from ultralytics.models.yolo.detect import DetectionValidator
from ultralytics.models.yolo.obb import OBBValidator
from ultralytics.utils import LOGGER, ops

from ghost_yolo.cfg import ghost_defaults, split_ghost_args
from ghost_yolo.data.check import apply_modality, build_dataset, resolve_data
from ghost_yolo.utils.metrics import voc07_map50
from ghost_yolo.utils.plotting import plot_paired_images

VOC07_KEY = "metrics/mAP50-VOC07(B)"  # the VOC07 11-point mAP50 column of an OBB run's results.csv


class GhostValidator(DetectionValidator):
    """Detection validator whose dataset pairs colour and IR; the modality is the model's (set by GhostYOLO.val)."""

    def __init__(self, dataloader=None, save_dir=None, args: Any = None, _callbacks: dict | None = None) -> None:
        """Strip ghost keys before Ultralytics re-checks args against its own defaults, then keep them."""
        stock, ghost = split_ghost_args(args)
        if stock.get("data"):
            stock["data"] = resolve_data(stock["data"])
        super().__init__(dataloader, save_dir, stock, _callbacks)
        for k, v in {**ghost_defaults(), **ghost}.items():
            setattr(self.args, k, v)

    def build_dataset(self, img_path: str, mode: str = "val", batch: int | None = None):
        """Paired dataset in the model's modality (channels are settled here, before Ultralytics' warmup)."""
        if "modality" not in self.data or (self.args.modality and self.data["modality"] != self.args.modality):
            apply_modality(self.data, self.args.modality, vars(self.args))
        return build_dataset(self.args, img_path, batch, self.data, mode=mode, stride=self.stride)

    @property
    def modality(self) -> str:
        """Modality of the data being validated (the loader's paired dataset says it when the data dict does not: a
        trainer's final validation reuses its loader with a freshly checked data dict)."""
        dataset = getattr(self.dataloader, "dataset", None)
        return self.data.get("modality") or getattr(dataset, "modality", None) or "rgb"

    def plot_val_samples(self, batch: dict[str, Any], ni: int) -> None:
        """Ground truth on colour and IR side by side."""
        plot_paired_images(batch, batch["img"], self.modality, paths=batch["im_file"],
                           fname=self.save_dir / f"val_batch{ni}_labels.jpg", names=self.names, on_plot=self.on_plot)

    def plot_predictions(self, batch: dict[str, Any], preds: list[dict[str, torch.Tensor]], ni: int,
                         max_det: int | None = None) -> None:
        """Predictions on colour and IR side by side."""
        if not preds:
            return
        for i, pred in enumerate(preds):
            pred["batch_idx"] = torch.ones_like(pred["conf"]) * i
        max_det = max_det or self.args.max_det
        batched = {k: torch.cat([x[k][:max_det] for x in preds], dim=0) for k in preds[0].keys()}
        if batched["bboxes"].shape[-1] == 4:  # detect: xyxy -> xywh; obb boxes are xywhr already
            batched["bboxes"] = ops.xyxy2xywh(batched["bboxes"])
        plot_paired_images(batched, batch["img"], self.modality, paths=batch["im_file"],
                           fname=self.save_dir / f"val_batch{ni}_pred.jpg", names=self.names, on_plot=self.on_plot)


class GhostOBBValidator(GhostValidator, OBBValidator):
    """Oriented-box validator on paired data: Ultralytics' rotated matching and metrics (``OBBValidator``), plots of
    colour and IR side by side, and the VOC07 11-point mAP50 that MMRotate-based OBB papers quote beside Ultralytics'
    mAP50 (printed, in ``results.csv`` as ``metrics/mAP50-VOC07(B)``, on the returned metrics as ``voc07_map50``, and
    with ``ghost val`` in ``metrics.json``)."""

    def get_stats(self) -> dict[str, Any]:
        """Ultralytics' statistics plus the VOC07 figure, computed from the same matches before they are cleared."""
        voc07 = voc07_map50(self.metrics.stats)
        stats = super().get_stats()
        self.metrics.voc07_map50 = voc07
        stats[VOC07_KEY] = voc07
        return stats

    def print_results(self) -> None:
        """Ultralytics' table, then both mAP50 figures by name (saved to ``metrics.json`` outside training)."""
        super().print_results()
        voc07, map50 = getattr(self.metrics, "voc07_map50", None), float(self.metrics.box.map50)
        if voc07 is None:
            return
        LOGGER.info(f"{'':>22}mAP50 {map50:.3f} (Ultralytics)   mAP50 {voc07:.3f} (VOC07 11-point, as "
                    "MMRotate's eval_rbbox_map)")
        if not self.training and self.save_dir:
            figures = {"mAP50": map50, "mAP50-95": float(self.metrics.box.map), "mAP50_voc07_11point": voc07}
            Path(self.save_dir, "metrics.json").write_text(json.dumps(figures, indent=2))
