"""GhostExporter: Ultralytics' Exporter, writing integer QDQ ONNX for quantized models.

Float models export exactly as with Ultralytics. For a quantized model, ``export_onnx`` takes the 8-bit output grids
of the block convs from training (``out_quant=True``; older models get them fitted on a few images of the model's
data), swaps every quantized conv for its Q/DQ form (``ghost_yolo.quant.qdq``), lets Ultralytics trace, simplify and
add metadata, then stores the weights as int8 (or INT4) initializers.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import torch
from ultralytics.engine.exporter import Exporter
from ultralytics.utils import DEFAULT_CFG, LOGGER, colorstr

from ghost_yolo.quant.qdq import (
    active_qconvs,
    calibrate_outputs,
    finalize_qdq,
    to_qdq,
    trained_output_grids,
)
from ghost_yolo.utils.hints import ghost_hints


class GhostExporter(Exporter):
    """Exporter with integer ONNX for quantized models.

    Args:
        int4 (bool): Store weights of layers at 4 bits or less as INT4 initializers (opset 21).
        calib (int): Images that fit the block convs' 8-bit output grids of models trained without ``out_quant``.
        calib_data (str | None): Data YAML the calibration images come from (its val split).
        modality (str): Input modality of the model (selects the paired channels).
    """

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None,
                 int4: bool = False, calib: int = 32, calib_data: str | None = None, modality: str | None = None):
        """Ultralytics' exporter plus the integer-export options."""
        super().__init__(cfg, overrides, _callbacks)
        self.int4, self.calib, self.calib_data, self.modality = bool(int4), int(calib), calib_data, modality

    def __call__(self, model: torch.nn.Module) -> str:
        """Export like Ultralytics; its closing 'Predict:'/'Validate:' hints print ``ghost`` commands (4-channel models
        fail under ``yolo``), in the Python API too."""
        with ghost_hints():
            return super().__call__(model)

    def calibration_images(self) -> Iterator[torch.Tensor]:
        """Letterboxed val images of the calibration data, as float batches in [0, 1] on the export device."""
        from ghost_yolo.data.check import calibration_batches

        if not self.calib_data:
            raise ValueError("integer ONNX export calibrates the convs' output ranges on images: pass data=your.yaml "
                             "(the model does not name its training data)")
        for b in calibration_batches(self.calib_data, self.imgsz[0], self.calib, self.modality):
            yield b.to(self.device)

    def export_onnx(self, prefix: str = colorstr("ONNX:")):
        """Float models: Ultralytics' export. Quantized models: output grids, swap to Q/DQ, export, integer weights."""
        qconvs = active_qconvs(self.model)
        if not qconvs:
            if self.int4:
                raise ValueError("int4=True needs a quantized model, but every layer of this one is float (32 bit): "
                                 "train with bits=4 or bits=hq first")
            return super().export_onnx(prefix)
        ranges = trained_output_grids(self.model)
        if ranges:
            LOGGER.info(f"{prefix} quantized model: {len(qconvs)} integer convs, output grids from training")
        else:
            LOGGER.warning(f"{prefix} this model was trained without out_quant=True: fitting the 8-bit conv output grids "
                           f"that onnxruntime's integer convs need on {self.calib} images of {self.calib_data}. The "
                           "ONNX model then rounds once more per block than training did (retrain with out_quant=True "
                           "for an exact match)")
            ranges = calibrate_outputs(self.model, self.calibration_images())
        bits = to_qdq(self.model, ranges)
        self.metadata["quantized"] = json.dumps({"int4": self.int4, "bits": sorted(set(bits.values())),
                                                 "layers": len(bits)})
        if self.int4:
            self.args.opset = min(self.args.opset or 20, 20)  # traced at <= 20, raised to 21 by finalize_qdq
        f = super().export_onnx(prefix)
        counts = finalize_qdq(f, int4=self.int4)
        LOGGER.info(f"{prefix} integer weights: {counts['int8']} int8 and {counts['int4']} INT4 initializers")
        return f
