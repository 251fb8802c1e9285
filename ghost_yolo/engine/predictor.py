"""GhostPredictor / GhostOBBPredictor: Ultralytics' DetectionPredictor / OBBPredictor fed with image pairs, saving
colour | IR annotated images."""

from __future__ import annotations

from typing import Any

import cv2
import torch
from ultralytics.models.yolo.detect import DetectionPredictor
from ultralytics.models.yolo.obb import OBBPredictor
from ultralytics.utils import DEFAULT_CFG

from ghost_yolo.cfg import ghost_defaults, split_ghost_args
from ghost_yolo.data.io import modality_for_channels, split_modalities
from ghost_yolo.data.missing import blank_band, check_drop_modality
from ghost_yolo.data.pairing import Pairing
from ghost_yolo.data.sources import (
    LoadImagePairs,
    find_pairs,
    is_paired_source,
    looks_paired,
)

from .results import PairedResults


class GhostPredictor(DetectionPredictor):
    """Predictor whose folder/file sources are colour/IR pairs found by either convention."""

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None) -> None:
        """Strip ghost keys before Ultralytics' key check, then keep them on ``self.args``."""
        stock, ghost = split_ghost_args(overrides)
        super().__init__(cfg, stock, _callbacks)
        for k, v in {**ghost_defaults(), **ghost}.items():
            setattr(self.args, k, v)

    @property
    def modality(self) -> str:
        """The loaded model's modality, from its input channels (PyTorch, ONNX metadata alike)."""
        return modality_for_channels(int(getattr(self.model, "channels", 3)))

    def setup_source(self, source: Any, stride: int | None = None) -> None:
        """Pairs for file/folder sources; Ultralytics' own loaders for arrays, streams and plain colour images.

        A paired source is handed to Ultralytics' ``setup_source`` as a ready ``LoadImagePairs`` loader, which its
        ``load_inference_source`` takes as it is (a ``LoadImagesAndVideos``), so image size checks, source type and
        video writers stay Ultralytics' own.
        """
        names = {k: getattr(self.args, k, None) for k in ("rgb_suffix", "ir_suffix", "rgb_dir", "ir_dir")}
        pairing = Pairing(**{k: str(v) for k, v in names.items() if v}) if any(names.values()) else None
        self.drop_modality = check_drop_modality(getattr(self.args, "drop_modality", None), self.modality)
        if is_paired_source(source) and (self.modality != "rgb" or looks_paired(source, pairing)):
            fill = bool(getattr(self.args, "fill_missing", False)) and self.modality == "rgb+ir"  # as the dataset
            pairs = find_pairs(source, pairing, fill_missing=fill)
            source = LoadImagePairs(pairs, self.modality, batch=self.args.batch)
        super().setup_source(source, stride)

    def pre_transform(self, im: list) -> list:
        """Letterbox like Ultralytics, then fill the band ``drop_modality`` names (the input as if that sensor failed;
        the saved plots keep the real images)."""
        im = super().pre_transform(im)
        band = getattr(self, "drop_modality", None)
        return [blank_band(x.copy(), band) for x in im] if band else im

    def construct_result(self, pred: torch.Tensor, img: torch.Tensor, orig_img, img_path: str) -> PairedResults:
        """Results on the colour image (IR-only models: the IR band), keeping the IR band for side-by-side plots.

        The boxes are Ultralytics' own result's (scaled to the image; ``obb`` for an OBB model), moved onto the
        colour image.
        """
        stock = super().construct_result(pred, img, orig_img, img_path)
        found = {"obb": stock.obb.data} if stock.obb is not None else {"boxes": stock.boxes.data}
        bgr, ir = split_modalities(orig_img, self.modality) if orig_img.ndim == 3 else (orig_img, None)
        if bgr is None:  # ir-only model: draw on the IR band itself
            bgr, ir = cv2.cvtColor(ir, cv2.COLOR_GRAY2BGR), None
        return PairedResults(bgr, path=img_path, names=self.model.names, ir_img=ir, **found)


class GhostOBBPredictor(GhostPredictor, OBBPredictor):
    """Oriented-box predictor on pairs: rotated NMS (``task=obb``, set by ``OBBPredictor``), ``Results.obb``, rotated
    boxes drawn on colour and IR side by side, polygons in ``save_txt``."""
