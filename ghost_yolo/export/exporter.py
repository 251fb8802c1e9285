"""Export: one dispatch (``export_model``) deciding the route of every format, and ``GhostExporter``, Ultralytics'
Exporter writing integer QDQ ONNX for quantized models.

``export_model`` is the only place an export is decided: the ghost options are checked, ghost's own formats
(``GHOST_FORMATS``: ``ghost``, the packed checkpoint) are written by their function, and everything else goes through
``GhostExporter``. A quantized model exports only to the formats in ``QUANTIZED_FORMATS``; any other format is
refused with the reason (``refuse_quantized``), since Ultralytics' other exporters trace the fake-quant ops as float
math or convert from a float graph, and no tested runtime then computes in integers.

Float models export exactly as with Ultralytics. For a quantized model, ``export_onnx`` takes the 8-bit output grids
of the block convs from training (``out_quant=True``; older models get them fitted on a few images of the model's
data), swaps every quantized conv for its Q/DQ form (``ghost_yolo.export.qdq``), lets Ultralytics trace, simplify and
add metadata, then stores the weights as int8 (or INT4) initializers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from ultralytics.engine.exporter import Exporter
from ultralytics.utils import DEFAULT_CFG, LOGGER, colorstr

from ghost_yolo.export.qdq import (
    active_qconvs,
    calibrate_outputs,
    finalize_qdq,
    to_qdq,
    trained_output_grids,
)
from ghost_yolo.quant import QuantState, quant_state
from ghost_yolo.utils.hints import ghost_hints

EXPORT_KEYS = ("int4", "calib")  # ghost keys that are export options
# formats a quantized model exports to, and what it becomes there
QUANTIZED_FORMATS = {
    "onnx": "integer QDQ ONNX (int8 or INT4 weights, QLinearConv in onnxruntime)",
    "ghost": "packed checkpoint (weights bit-packed at their own widths), loadable with GhostYOLO('model.ghost')",
}


def export_packed(model: torch.nn.Module, path: Path, overrides: dict[str, Any]) -> str:
    """``format=ghost``: the packed ``.ghost`` checkpoint next to the source checkpoint."""
    from ghost_yolo.cfg import split_ghost_args
    from ghost_yolo.export.packed import save_packed

    return str(save_packed(model, path.with_suffix(".ghost"), names=model.names, args=split_ghost_args(overrides)[0]))


# ghost's own formats: name -> writer(model, source checkpoint path, model overrides) -> exported file
GHOST_FORMATS: dict[str, Callable[[torch.nn.Module, Path, dict[str, Any]], str]] = {"ghost": export_packed}


def refuse_quantized(fmt: str) -> None:
    """Say why a quantized model does not export to ``fmt`` (a format outside ``QUANTIZED_FORMATS``)."""
    raise ValueError(
        f"format={fmt} cannot hold a quantized model: Ultralytics' {fmt} export traces the fake-quant ops as float "
        f"math (or converts from a float graph), so the file would run at float cost with nothing computed in "
        f"integers. A quantized model exports as {' or '.join(f'format={f}' for f in QUANTIZED_FORMATS)}; toolchains "
        "that import ONNX with QuantizeLinear/DequantizeLinear (TensorRT, OpenVINO, ...) can build from the QDQ ONNX "
        "with their own converter. For a float file of this model, export its float self (as_float=True, co-trained "
        "runs) or the float phase's best_fp.pt")


def export_model(model: torch.nn.Module, kwargs: dict[str, Any], overrides: dict[str, Any], source: Path,
                 callbacks: dict | None = None) -> str:
    """Export ``model`` as ``kwargs`` ask (Ultralytics' export keys plus ``EXPORT_KEYS``): the one dispatch point.

    Args:
        model: The PyTorch model to export (the quantized model, or its float self with ``as_float``).
        kwargs: The export call's keys (``format``, ``imgsz``, ``int4``, ...).
        overrides: The model's saved args (``GhostYOLO.overrides``): defaults for export keys, and the data.
        source: The checkpoint the model came from (ghost's own formats are written next to it).
        callbacks: Ultralytics callbacks for the exporter.
    """
    from ghost_yolo.cfg import ghost_defaults, split_ghost_args
    from ghost_yolo.data.io import modality_for_channels
    stock, ghost = split_ghost_args(kwargs)
    opts = {**{k: v for k, v in ghost_defaults().items() if k in EXPORT_KEYS}, **ghost}
    quantized = quant_state(model) is QuantState.ACTIVE  # a float self or a float-phase model exports as float
    fmt = str(stock.get("format") or "").lower()
    if not fmt and quantized:  # Ultralytics' default (torchscript) cannot hold a quantized model
        LOGGER.info(f"{colorstr('ghost:')} quantized model: exporting format=onnx (integer QDQ)")
        fmt = stock["format"] = "onnx"
    if opts["int4"] and fmt != "onnx":
        raise ValueError("int4=True applies to format=onnx only")
    if quantized and fmt not in QUANTIZED_FORMATS:
        refuse_quantized(fmt or "torchscript")
    if fmt in GHOST_FORMATS:
        return GHOST_FORMATS[fmt](model, source, overrides)
    custom = {"imgsz": model.args["imgsz"], "batch": 1, "data": None, "device": None, "verbose": False}
    args = {**split_ghost_args(overrides)[0], **custom, **stock, "mode": "export"}
    exporter = GhostExporter(overrides=args, _callbacks=callbacks, int4=opts["int4"], calib=opts["calib"],
                             calib_data=stock.get("data") or overrides.get("data"),
                             modality=modality_for_channels(int(model.yaml.get("channels", 3))))
    return exporter(model=model)


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
