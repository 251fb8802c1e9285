"""OpenVINO export of ghost models (``format=openvino``) and the check of which convolutions run in int8.

A quantized model is written as the integer QDQ ONNX graph exactly as ``format=onnx`` writes it (``GhostExporter``),
then converted with ``openvino.convert_model``: each QuantizeLinear/DequantizeLinear pair becomes a FakeQuantize, and
the CPU plugin runs a convolution in int8 when both its input and its weights pass through 256-level FakeQuantize.
Whether it does is decided when the model is compiled for a device, not in the file, so the export reads the compiled
model's runtime info (``conv_precisions``) and logs how many convolutions execute in int8 and which stay float.
Weights are saved as they are (``compress_to_fp16=False``); the IR sits in ``<stem>_openvino_model/`` with a
``metadata.yaml`` as Ultralytics writes it, plus ghost's keys (``modality``; ``quantized`` as in the ONNX metadata).

Float models take Ultralytics' own OpenVINO export (it traces 4-channel models as they are), with the same metadata.
Ultralytics' ``AutoBackend`` runs the folder for ``val`` and ``predict``; ``openvino_metadata`` is what ``GhostYOLO``
reads (and refuses without) when it loads one. For ghost's integer exports it runs through ``GhostOpenVINOBackend``:
the CPU plugin's default on CPUs with native bf16 computes the float layers left around the int8 convolutions (the box
decoding, the attention block) in bf16, whose 8-bit mantissa moves box coordinates by several pixels at 640 px; those
few layers are compiled in f32 instead, as the exported graph computes them (and as the latency benchmark times them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from ultralytics.engine.exporter import try_export
from ultralytics.nn.backends.openvino import OpenVINOBackend
from ultralytics.utils import LOGGER, YAML, colorstr

from ghost_yolo.export.exporter import ExportJob, GhostExporter, export_ultralytics, register_export_format

INSTALL = 'pip install openvino (or pip install "ghost-yolo[openvino]")'
INT8 = {"u8", "i8"}  # runtime precisions of a convolution that executes in integers
CONV_LAYERS = {"Convolution", "GroupConvolution"}  # the CPU plugin's layer types of (grouped) convolutions


def require_openvino() -> Any:
    """The ``openvino`` module, or one line saying how to install it."""
    try:
        import openvino
    except ImportError as e:
        raise ModuleNotFoundError(f"OpenVINO is not installed: {INSTALL}", name="openvino") from e
    return openvino


class GhostOpenVINOBackend(OpenVINOBackend):
    """Ultralytics' ``OpenVINOBackend`` with ``INFERENCE_PRECISION_HINT=f32`` on CPU for models whose metadata says
    ``quantized`` (ghost's integer exports: their convolutions run in int8 either way); others load unchanged."""

    def load_model(self, weight: str | Path) -> None:
        """Ultralytics' loading; a ghost integer model on CPU is then compiled again with the f32 hint."""
        super().load_model(weight)
        kw = self.compile_model.keywords
        config = kw.get("config") or {}
        if not self.metadata.get("quantized") or kw.get("device_name") != "CPU" or "INFERENCE_PRECISION_HINT" in config:
            return
        self.compile_model = partial(self.compile_model.func, device_name="CPU",
                                     config={**config, "INFERENCE_PRECISION_HINT": "f32"})
        xml = Path(weight) if Path(weight).is_file() else next(Path(weight).glob("*.xml"))
        self.ov_compiled_model = self.compile_model(self.ov.Core().read_model(str(xml), xml.with_suffix(".bin")))


def ghost_openvino_backend() -> type[GhostOpenVINOBackend]:
    """Register ``GhostOpenVINOBackend`` as ``AutoBackend``'s OpenVINO backend (idempotent) and return it."""
    from ultralytics.nn.autobackend import AutoBackend

    AutoBackend._BACKEND_MAP["openvino"] = GhostOpenVINOBackend
    return GhostOpenVINOBackend


def is_openvino_model(path: str | Path) -> bool:
    """Whether ``path`` names an OpenVINO export (``*_openvino_model``, as Ultralytics' ``AutoBackend`` routes it)."""
    from ultralytics.nn.autobackend import AutoBackend

    return isinstance(path, (str, Path)) and AutoBackend._model_type(str(path)) == "openvino"


def openvino_metadata(path: str | Path) -> dict[str, Any]:
    """The ``metadata.yaml`` of an OpenVINO export, refused in one line without it or without its input channels.

    Ghost needs the channels to know the model's modality (4: rgb+ir pairs, 3: colour, 1: IR) before it reads the data.
    """
    p = Path(path)
    folder = p.parent if p.suffix == ".xml" else p
    if not folder.is_dir():
        raise FileNotFoundError(f"OpenVINO model {folder} not found (a folder written by 'ghost export model=best.pt "
                                "format=openvino')")
    if not any(folder.glob("*.xml")):
        raise FileNotFoundError(f"OpenVINO model {folder} has no .xml model in it (a folder written by 'ghost export "
                                "model=best.pt format=openvino' holds <name>.xml, <name>.bin and metadata.yaml)")
    meta_file = folder / "metadata.yaml"
    if not meta_file.is_file():
        raise FileNotFoundError(f"OpenVINO model {folder} has no metadata.yaml: ghost reads the model's input channels "
                                "(its modality: 4 = rgb+ir, 3 = rgb, 1 = ir), class names, image size and stride from "
                                "it; re-export with 'ghost export model=best.pt format=openvino'")
    meta = YAML.load(meta_file) or {}
    if "channels" not in meta:
        raise ValueError(f"OpenVINO model {folder}: its metadata.yaml has no 'channels' (the input channels that say "
                         "whether the model reads rgb+ir pairs, colour or IR); re-export with 'ghost export "
                         "model=best.pt format=openvino'")
    return meta


@dataclass(frozen=True)
class ConvPrecision:
    """Which convolutions of a compiled OpenVINO model execute in int8, and at what precision the others run.

    Attributes:
        int8: Names of the convolution layers that execute in u8/i8.
        other: ``{layer: runtime precision}`` of the convolutions that run in float (f32, bf16, f16).
        device: The device the model was compiled for, as OpenVINO names it (``CPU`` and its full name).
    """

    int8: tuple[str, ...]
    other: dict[str, str] = field(default_factory=dict)
    device: str = "CPU"

    @property
    def total(self) -> int:
        """Convolution layers in the compiled model."""
        return len(self.int8) + len(self.other)

    def __str__(self) -> str:
        """'61 of 64 convolutions execute in int8 on this CPU (...); float: layer (f32), ...'."""
        line = f"{len(self.int8)} of {self.total} convolutions execute in int8 on this {self.device}"
        if self.other:
            line += "; float: " + ", ".join(f"{n} ({p})" for n, p in self.other.items())
        return line


def conv_precisions(model: Any, device: str = "CPU", config: dict[str, Any] | None = None) -> ConvPrecision:
    """Count the convolutions that EXECUTE in int8 once ``model`` is compiled for ``device``.

    The file only says which convolutions are wrapped in FakeQuantize; the plugin decides at compile time (per layer,
    by the instruction set and what it could fuse) whether each runs in integers. This reads the compiled model's
    runtime graph: every op's ``layerType`` and ``runtimePrecision``.

    Args:
        model: An ``_openvino_model`` folder, an ``.xml`` / ``.onnx`` file, an ``ov.Model`` or an ``ov.CompiledModel``.
        device: The OpenVINO device to compile for.
        config: Compile properties, e.g. ``{"INFERENCE_PRECISION_HINT": "f32"}`` for a like-for-like float baseline.
    """
    ov = require_openvino()
    core = ov.Core()
    if isinstance(model, (str, Path)):
        p = Path(model)
        model = str(next(p.glob("*.xml")) if p.is_dir() else p)
    compiled = model if isinstance(model, ov.CompiledModel) else core.compile_model(model, device, config or {})
    int8, other = [], {}
    for op in compiled.get_runtime_model().get_ordered_ops():
        info = op.get_rt_info()
        kind, precision = (str(info[k].astype(str)) if k in info else "" for k in ("layerType", "runtimePrecision"))
        if kind in CONV_LAYERS and precision in INT8:
            int8.append(op.get_friendly_name())
        elif kind in CONV_LAYERS:
            other[op.get_friendly_name()] = precision
    name = device
    try:
        name = f"{device} ({core.get_property(device, 'FULL_DEVICE_NAME')})"
    except Exception:  # a virtual device (AUTO, MULTI) has no single name
        pass
    return ConvPrecision(tuple(int8), other, name)


class OpenVINOExporter(GhostExporter):
    """``GhostExporter`` whose OpenVINO export converts the integer QDQ ONNX for a quantized model."""

    def export_openvino(self, prefix: str = colorstr("OpenVINO:")) -> str:
        """Float: Ultralytics' OpenVINO export. Integer: the QDQ ONNX converted to OpenVINO IR, int8 convs reported."""
        from ghost_yolo.data.io import modality_for_channels

        self.metadata["modality"] = modality_for_channels(int(self.metadata["channels"]))
        if not self.integer:
            return super().export_openvino(prefix)
        return self._export_integer_openvino(prefix)

    @try_export
    def _export_integer_openvino(self, prefix: str = colorstr("OpenVINO:")) -> str:
        """Write the QDQ ONNX into the output folder as ``format=onnx`` does, convert it, save the IR and metadata."""
        ov = require_openvino()
        out = self.file.parent / f"{self.file.stem}_openvino_model"
        out.mkdir(parents=True, exist_ok=True)
        file, fmt = self.file, self.args.format
        self.file, self.args.format = out / self.file.name, "onnx"  # the ONNX path unchanged, its file in the folder
        try:
            onnx_file = Path(self.export_onnx())
        finally:
            self.file, self.args.format = file, fmt
        LOGGER.info(f"\n{prefix} converting the integer QDQ ONNX with openvino {ov.__version__}...")
        ov_model = ov.convert_model(str(onnx_file))
        ov_model.set_rt_info("YOLO", ["model_info", "model_type"])  # as Ultralytics' OpenVINO export sets them
        ov_model.set_rt_info(int(self.metadata["channels"]) == 3, ["model_info", "reverse_input_channels"])
        ov_model.set_rt_info(114, ["model_info", "pad_value"])
        ov_model.set_rt_info([255.0], ["model_info", "scale_values"])
        ov_model.set_rt_info(self.args.iou, ["model_info", "iou_threshold"])
        ov_model.set_rt_info([v.replace(" ", "_") for v in self.model.names.values()], ["model_info", "labels"])
        ov_model.set_rt_info("fit_to_window_letterbox", ["model_info", "resize_type"])
        xml = out / f"{self.file.stem}.xml"
        ov.save_model(ov_model, str(xml), compress_to_fp16=False)  # int8 weights stay int8, float ones f32
        onnx_file.unlink()  # format=onnx writes this file where it belongs
        meta = dict(self.metadata)
        if isinstance(meta.get("quantized"), str):
            meta["quantized"] = json.loads(meta["quantized"])
        YAML.save(out / "metadata.yaml", meta)
        report = conv_precisions(xml)
        LOGGER.info(f"{prefix} {report}")
        layers = (meta.get("quantized") or {}).get("layers", 0)
        if len(report.int8) < layers:
            why = (" (weights stored as uint8 by u8_weights, so that a CPU without VNNI computes them exactly: OpenVINO "
                   "runs those in f32; u8_weights=False for int8 on VNNI/AMX CPUs)"
                   if (meta.get("quantized") or {}).get("u8_weights") else "")
            LOGGER.warning(f"{prefix} the model has {layers} quantized convolutions, but only {len(report.int8)} "
                           f"execute in int8 on this {report.device}: the others run in float{why}")
        return f"{out}{os.sep}"


@register_export_format("openvino", quantized="OpenVINO IR converted from the integer QDQ ONNX (int8 convolutions "
                                              "on CPU)")
def export_openvino(job: ExportJob) -> str:
    """``format=openvino``: ``<stem>_openvino_model/``, from the integer QDQ ONNX for a quantized model."""
    require_openvino()
    if job.integer and job.stock.get("quantize") not in (None, 32):
        raise ValueError(f"quantize={job.stock['quantize']} does not apply to a quantized model: format=openvino "
                         "exports its own trained integer grids (quantize= is for float models)")
    return export_ultralytics(job, exporter_cls=OpenVINOExporter)
