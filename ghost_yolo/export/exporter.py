"""Export: one dispatch (``export_model``) deciding the route of every format, and ``GhostExporter``, Ultralytics'
Exporter writing integer QDQ ONNX for quantized models.

``export_model`` is the only place an export is decided: the ghost options are checked, whether the model exports as
the integer model (quantizers active) or in float is settled, and the format's writer is called with that
(``ExportJob``). Formats with a writer of their own are registered with ``@register_export_format(name, quantized=)``
(``onnx``; ``ghost``, the packed checkpoint); every other format goes to Ultralytics' exporter (``GhostExporter``). A
quantized model exports only to the formats registered with ``quantized=``; any other format is refused with the reason
(``refuse_quantized``), since Ultralytics' other exporters trace the fake-quant ops as float math or convert from a
float graph, and no tested runtime then computes in integers.

Float models export exactly as with Ultralytics. For a quantized model, ``GhostExporter.export_onnx`` takes the 8-bit
output grids of the block convs from training (``out_quant=True``; older models get them fitted on a few images of the
model's data), swaps every quantized conv for its Q/DQ form (``ghost_yolo.export.qdq``), lets Ultralytics trace,
simplify and add metadata, then stores the weights as int8 (or INT4) initializers.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from ultralytics.engine.exporter import Exporter
from ultralytics.utils import DEFAULT_CFG, LOGGER, colorstr

from ghost_yolo.export.decode import fast_decoding
from ghost_yolo.export.qdq import (
    active_qconvs,
    calibrate_outputs,
    finalize_qdq,
    to_qdq,
    trained_output_grids,
)
from ghost_yolo.quant import QuantState, output_quantizers, quant_state
from ghost_yolo.utils.cpu import cpu_isa, has_vnni
from ghost_yolo.utils.hints import ghost_hints

EXPORT_KEYS = ("int4", "calib", "u8_weights")  # ghost keys that are export options


@dataclass
class ExportJob:
    """One export as ``export_model`` decided it: everything a format writer needs.

    Attributes:
        model: The PyTorch model to export.
        format: The format name (lower case).
        stock: Ultralytics' export keys of the call.
        int4: Store weights at 4 bits or less as INT4 initializers (integer ONNX).
        calib: Images that fit the output grids of quantized models trained without ``out_quant``.
        u8_weights: Store int8 weights that can overflow CPUs without VNNI as uint8 (``u8_weights=auto`` resolved).
        integer: Whether the model is exported as the integer model (quantizers active) rather than in float.
        overrides: The model's saved args (``GhostYOLO.overrides``).
        source: The checkpoint the model came from (ghost's own formats are written next to it).
        callbacks: Ultralytics callbacks for the exporter.
    """

    model: torch.nn.Module
    format: str
    stock: dict[str, Any]
    int4: bool
    calib: int
    integer: bool
    overrides: dict[str, Any]
    source: Path
    u8_weights: bool
    callbacks: dict | None = None


Writer = Callable[[ExportJob], str]  # a format's writer: the job -> the exported file


@dataclass(frozen=True)
class ExportFormat:
    """A registered format: its writer, and what a quantized model becomes there (None: it cannot hold one)."""

    writer: Writer
    quantized: str | None = None


EXPORT_FORMATS: dict[str, ExportFormat] = {}  # formats with a writer of their own; the rest go to Ultralytics


def register_export_format(name: str, quantized: str | None = None) -> Callable[[Writer], Writer]:
    """Decorator: ``writer(job) -> exported file`` writes ``format=name``; ``quantized`` says what a quantized model
    becomes in it (None: a quantized model is refused, as for every format not registered)."""

    def register(writer: Writer) -> Writer:
        key = name.lower()
        if not key or key in EXPORT_FORMATS and EXPORT_FORMATS[key].writer is not writer:
            raise ValueError(f"export format name {name!r} is empty or taken")
        EXPORT_FORMATS[key] = ExportFormat(writer, quantized)
        return writer

    return register


def quantized_formats() -> list[str]:
    """The formats a quantized model exports to, in registration order."""
    return [name for name, f in EXPORT_FORMATS.items() if f.quantized]


def export_ultralytics(job: ExportJob, exporter_cls: type[GhostExporter] | None = None) -> str:
    """Every format without a writer of its own: Ultralytics' exporter (``GhostExporter``, or the subclass a format's
    writer passes), integer ONNX when asked."""
    from ghost_yolo.cfg import split_ghost_args
    from ghost_yolo.data.io import modality_for_channels

    custom = {"imgsz": job.model.args["imgsz"], "batch": 1, "data": None, "device": None, "verbose": False}
    args = {**split_ghost_args(job.overrides)[0], **custom, **job.stock, "mode": "export"}
    exporter = (exporter_cls or GhostExporter)(overrides=args, _callbacks=job.callbacks, int4=job.int4,
                                               calib=job.calib, u8_weights=job.u8_weights,
                                               calib_data=job.stock.get("data") or job.overrides.get("data"),
                                               modality=modality_for_channels(int(job.model.yaml.get("channels", 3))),
                                               integer=job.integer)
    return exporter(model=job.model)


@register_export_format("onnx", quantized="integer QDQ ONNX (int8 or INT4 weights, QLinearConv in onnxruntime)")
def export_onnx_file(job: ExportJob) -> str:
    """``format=onnx``: Ultralytics' ONNX export, as the integer QDQ graph for a quantized model."""
    return export_ultralytics(job)


@register_export_format("ghost", quantized="packed checkpoint (weights bit-packed at their own widths), loadable with "
                                           "GhostYOLO('model.ghost')")
def export_packed(job: ExportJob) -> str:
    """``format=ghost``: the packed ``.ghost`` checkpoint next to the source checkpoint."""
    from ghost_yolo.cfg import split_ghost_args
    from ghost_yolo.export.packed import save_packed

    return str(save_packed(job.model, job.source.with_suffix(".ghost"), names=job.model.names,
                           args=split_ghost_args(job.overrides)[0]))


def refuse_quantized(fmt: str) -> None:
    """Say why a quantized model does not export to ``fmt`` (a format not registered with ``quantized=``)."""
    raise ValueError(
        f"format={fmt} cannot hold a quantized model: Ultralytics' {fmt} export traces the fake-quant ops as float "
        f"math (or converts from a float graph), so the file would run at float cost with nothing computed in "
        f"integers. A quantized model exports as {' or '.join(f'format={f}' for f in quantized_formats())}; "
        "toolchains that import ONNX with QuantizeLinear/DequantizeLinear (TensorRT, ...) can build from the "
        "QDQ ONNX with their own converter. For a float file of this model, export its float self (as_float=True, "
        "co-trained runs) or the float phase's best_fp.pt")


def resolve_u8_weights(value: Any) -> bool:
    """``u8_weights``: True/False as given; ``auto`` is True on a CPU without VNNI (where int8 weights can saturate)."""
    if isinstance(value, bool):
        return value
    v = str(value).strip().lower()
    if v in ("true", "1", "yes"):
        return True
    if v in ("false", "0", "no", "none", ""):
        return False
    if v != "auto":
        raise ValueError(f"u8_weights={value} is not one of True, False, auto")
    return has_vnni() is False


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

    stock, ghost = split_ghost_args(kwargs)
    opts = {**{k: v for k, v in ghost_defaults().items() if k in EXPORT_KEYS}, **ghost}
    quantized = quant_state(model) is QuantState.ACTIVE  # a float self or a float-phase model exports as float
    fmt = str(stock.get("format") or "").lower()
    if not fmt and quantized:  # Ultralytics' default (torchscript) cannot hold a quantized model
        LOGGER.info(f"{colorstr('ghost:')} quantized model: exporting format=onnx (integer QDQ)")
        fmt = stock["format"] = "onnx"
    if opts["int4"] and fmt != "onnx":
        raise ValueError("int4=True applies to format=onnx only")
    if opts["int4"] and not quantized:
        raise ValueError("int4=True needs a quantized model, but every layer of this one is float (32 bit): train "
                         "with bits=4 or bits=hq first")
    registered = EXPORT_FORMATS.get(fmt)
    if quantized and not (registered and registered.quantized):
        refuse_quantized(fmt or "torchscript")
    job = ExportJob(model, fmt, stock, bool(opts["int4"]), int(opts["calib"]), quantized, overrides, source,
                    resolve_u8_weights(opts["u8_weights"]), callbacks)
    return (registered.writer if registered else export_ultralytics)(job)


class GhostExporter(Exporter):
    """Exporter with integer ONNX for quantized models.

    Args:
        int4 (bool): Store weights of layers at 4 bits or less as INT4 initializers (opset 21).
        u8_weights (bool | str): Store int8 weights that can overflow CPUs without VNNI as uint8 with zero point 128
            (``auto``: where this CPU has no VNNI).
        calib (int): Images that fit the block convs' 8-bit output grids of models trained without ``out_quant``.
        calib_data (str | None): Data YAML the calibration images come from (its val split).
        modality (str): Input modality of the model (selects the paired channels).
        integer (bool): Write the integer QDQ graph (a quantized model, as ``export_model`` decided) for ONNX.
    """

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None,
                 int4: bool | None = None, calib: int | None = None, calib_data: str | None = None,
                 modality: str | None = None, integer: bool = False, u8_weights: bool | str | None = None):
        """Ultralytics' exporter plus the integer-export options (None: cfg/default.yaml's)."""
        from ghost_yolo.cfg import ghost_defaults

        super().__init__(cfg, overrides, _callbacks)
        d = ghost_defaults()
        int4, calib = d["int4"] if int4 is None else int4, d["calib"] if calib is None else calib
        self.int4, self.calib, self.calib_data, self.modality = bool(int4), int(calib), calib_data, modality
        self.integer = bool(integer)
        self.u8_weights = resolve_u8_weights(d["u8_weights"] if u8_weights is None else u8_weights)

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
        """Float: Ultralytics' export. Integer (``export_model``'s choice): output grids, Q/DQ swap, integer weights."""
        fast_decoding(self.model)  # the same boxes, a tenth of the decoding time in CPU runtimes
        if not self.integer:
            return super().export_onnx(prefix)
        qconvs = active_qconvs(self.model)
        ranges = trained_output_grids(self.model)
        if ranges or any(getattr(q, "post", False) for q in output_quantizers(self.model).values()):
            LOGGER.info(f"{prefix} quantized model: {len(qconvs)} integer convs, output grids from training")
        else:
            LOGGER.warning(f"{prefix} this model was trained without out_quant=True: fitting the 8-bit conv output grids "
                           f"that onnxruntime's integer convs need on {self.calib} images of {self.calib_data}. The "
                           "ONNX model then rounds once more per block than training did (retrain with out_quant=True "
                           "for an exact match)")
            ranges = calibrate_outputs(self.model, self.calibration_images())
        bits = to_qdq(self.model, ranges)
        fast_decoding(self.model)  # the box logits now have exact bounds: the softmax may drop its max-subtraction
        self.metadata["quantized"] = json.dumps({"int4": self.int4, "bits": sorted(set(bits.values())),
                                                 "layers": len(bits), "u8_weights": self.u8_weights})
        if self.int4:
            self.args.opset = min(self.args.opset or 20, 20)  # traced at <= 20, raised to 21 by finalize_qdq
        f = super().export_onnx(prefix)
        counts = finalize_qdq(f, int4=self.int4, u8_weights=self.u8_weights)
        LOGGER.info(f"{prefix} integer weights: {counts['int8']} int8, {counts['uint8']} uint8 and {counts['int4']} "
                    "INT4 initializers")
        if risk := counts["at_risk"]:
            what = (f"{len(risk)} of {counts['int8'] + counts['uint8'] + counts['int4']} integer convs have 8-bit "
                    "weights whose pairwise products can overflow 16 bits on CPUs without VNNI (AVX2, AVX512 without "
                    "VNNI: onnxruntime and OpenVINO saturate there)")
            if self.u8_weights:
                LOGGER.info(f"{prefix} {what}: stored as uint8 with zero point 128, exact on every CPU "
                            "(u8_weights=False keeps int8: faster on VNNI/AMX CPUs, wrong boxes on the others)")
            else:
                LOGGER.warning(f"{prefix} {what}: stored as int8, exact on CPUs with VNNI or AMX only ({cpu_isa()} "
                               "here). For AVX2 machines export with u8_weights=True")
        return f
