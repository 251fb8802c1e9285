"""GhostDetectionModel / GhostOBBModel: Ultralytics' DetectionModel / OBBModel built from ghost YAMLs, with custom
blocks and ``act:``. The task comes from the YAML's head (``OBB`` -> ``obb``), as in Ultralytics.

Ultralytics resolves YAML module names in its own namespace and does no channel bookkeeping for unknown ones, so a
custom block is first built as a shape-equivalent ``Conv`` stand-in and swapped in afterwards, reading its channels
from the stand-in. The original YAML stays in ``model.yaml`` so checkpoints, resume and DDP rebuild the same model.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path
from typing import Any

from torch import nn
from ultralytics.nn.modules import Conv
from ultralytics.nn.tasks import DetectionModel, OBBModel, guess_model_task, yaml_model_load
from ultralytics.utils import LOGGER, YAML, colorstr
from ultralytics.utils.torch_utils import initialize_weights

from ghost_yolo.cfg import resolve_yaml, shipped_models

from ghost_yolo.nn.fusion import BandConv, DualStreamStem
from .pretrained import seed_first_layer

# Blocks a YAML may name that Ultralytics does not know: name -> class (parsed as a Conv stand-in, see below).
GHOST_MODULES: dict[str, type[nn.Module]] = {"DualStreamStem": DualStreamStem, "BandConv": BandConv}
ACTIVATIONS = {"silu": "nn.SiLU()", "relu": "nn.ReLU()", "relu6": "nn.ReLU6()", "leakyrelu": "nn.LeakyReLU(0.1)",
               "hardswish": "nn.Hardswish()"}


def load_model_yaml(cfg: str | Path | dict) -> dict[str, Any]:
    """Load a model YAML by path or shipped name and normalise ``act:`` into Ultralytics' ``activation:``."""
    if isinstance(cfg, dict):
        d = deepcopy(cfg)
    else:
        path = resolve_yaml(cfg, "models")
        if Path(path).is_file():
            d = YAML.load(path)
            d["yaml_file"] = str(path)
        else:  # Ultralytics' own model YAMLs (yolo11n.yaml, yolov8s.yaml, ...) with their scale from the name
            try:
                d = yaml_model_load(str(cfg))
            except Exception as e:
                raise FileNotFoundError(f"model YAML '{cfg}' not found (shipped ones: {shipped_models()}; or "
                                        "Ultralytics' such as yolo11n.yaml)"
                                        ) from e
    if act := d.pop("act", None):
        key = str(act).lower().replace("nn.", "").replace("()", "")
        if key not in ACTIVATIONS:
            raise ValueError(f"unknown act '{act}' in model YAML: use one of {', '.join(ACTIVATIONS)}")
        d["activation"] = ACTIVATIONS[key]
    return d


def _with_stand_ins(d: dict[str, Any]) -> tuple[dict[str, Any], dict[int, tuple[str, list]]]:
    """Copy of the YAML with ghost blocks renamed to Conv, and {layer index: (block name, args)} to swap back."""
    d = deepcopy(d)
    swaps = {}
    for i, layer in enumerate(d["backbone"] + d["head"]):
        if layer[2] in GHOST_MODULES:
            swaps[i] = (layer[2], list(layer[3]))
            layer[2] = "Conv"
            layer[3] = list(layer[3][:3])  # c2, k, s: the stand-in's output matches the block's
    return d, swaps


class GhostDetectionModel(DetectionModel):
    """DetectionModel that understands ghost YAMLs (dual-stream stems, ``act:``) and remembers them for rebuilds."""

    def __init__(self, cfg: str | dict = "ghost-n.yaml", ch: int | None = None, nc: int | None = None,
                 verbose: bool = True):
        """Build from a YAML path, shipped name or dict; ``ch`` follows the data (4 for rgb+ir), else the YAML's."""
        yaml = load_model_yaml(cfg)
        ch = ch or yaml.get("channels", 3)
        parse_yaml, swaps = _with_stand_ins(yaml)
        default_act = Conv.default_act
        try:  # Ultralytics sets Conv.default_act globally for `activation:`; keep that local to this model
            super().__init__(parse_yaml, ch=ch, nc=nc, verbose=verbose and not swaps)
        finally:
            Conv.default_act = default_act
        for i, (name, args) in swaps.items():
            stand_in = self.model[i]
            try:
                block = GHOST_MODULES[name](stand_in.conv.in_channels, stand_in.conv.out_channels, *args[1:])
            except ValueError as e:  # e.g. a fusion block on single-modality data: name the YAML
                raise ValueError(f"{Path(yaml.get('yaml_file', 'model YAML')).name} layer {i}: {e}") from None
            for conv in (m for m in block.modules() if isinstance(m, Conv)):  # the block and the Convs inside it
                conv.act = stand_in.act  # the YAML's act: (Ultralytics sets it only while parsing)
            block.i, block.f, block.type = stand_in.i, stand_in.f, f"ghost_yolo.nn.{name}"
            block.np = sum(p.numel() for p in block.parameters())
            self.model[i] = block
        if swaps:
            initialize_weights(self)
            if verbose:
                self.info()
                LOGGER.info("")
        for k in ("channels", "nc"):
            yaml[k] = parse_yaml[k]
        self.yaml = yaml  # the real YAML (not the stand-in one): checkpoints and resume rebuild from it
        from ghost_yolo.quant.config import QuantConfig

        if config := QuantConfig.from_yaml(yaml):  # a quantized model rebuilds its quantized convs, widths, switches
            from ghost_yolo.quant.apply import prepare

            prepare(self, config)

    def load(self, weights: dict | nn.Module, verbose: bool = True) -> None:
        """Ultralytics' transfer of matching tensors, then the first layer seeded across input bands: RGB weights into
        RGB+IR, IR-only or dual-stream models keep their stem's response (``nn.pretrained``)."""
        source = (weights.get("ema") or weights["model"]) if isinstance(weights, dict) else weights
        super().load(weights, verbose=verbose)
        if (seeded := seed_first_layer(self, source)) is not None:
            level, message = seeded
            if level == "warning":
                LOGGER.warning(f"ghost: {message}")
            elif verbose:
                LOGGER.info(f"{colorstr('ghost:')} {message}")

    def loss(self, batch: dict[str, Any], preds: Any = None):
        """Ultralytics' detection loss, plus the OST self-distillation term when a distiller is attached."""
        if (distiller := getattr(self, "distiller", None)) is not None:
            return distiller.loss(self, batch, preds, super().loss)
        return super().loss(batch, preds)

    def fuse(self, verbose: bool = True, imgsz: int = 640):
        """Fold BatchNorm into quantized convs after quantizing their weights, then fuse the rest like Ultralytics.

        A fused model is an inference model: the distiller (OST gate projections, training only) and the float self's
        BatchNorm set are dropped. To fuse the float self instead, turn the model into it first (``to_float_self``, as
        ``val``, ``predict`` and ``export`` do with ``as_float=True``).
        """
        from ghost_yolo.quant.apply import convert

        if hasattr(self, "distiller"):
            del self.distiller
        convert(self)
        return super().fuse(verbose=verbose, imgsz=imgsz)

    @property
    def modality(self) -> str:
        """The input modality this model was built for, from its channel count."""
        from ghost_yolo.data.io import modality_for_channels

        return modality_for_channels(self.yaml.get("channels", 3))


class GhostOBBModel(GhostDetectionModel, OBBModel):
    """Oriented-box ghost model: a ghost YAML ending in Ultralytics' ``OBB`` head, trained with its rotated loss.

    Everything ghost adds to the detector (custom blocks, ``act:``, quantized rebuilds, seeding, the distiller's loss
    hook, quantized fusing) comes from ``GhostDetectionModel``; the criterion (``v8OBBLoss``) from ``OBBModel``.
    """


TASKS = {"detect": GhostDetectionModel, "obb": GhostOBBModel}  # ghost-yolo's tasks and their model classes


def model_task(cfg: str | Path | dict) -> str:
    """The task of a model YAML (path, shipped name or dict) from its head, as Ultralytics guesses it; only ghost
    tasks are accepted."""
    yaml = cfg if isinstance(cfg, dict) else load_model_yaml(cfg)
    task = guess_model_task(yaml)
    if task not in TASKS:
        raise ValueError(f"model YAML {yaml.get('yaml_file', '')} has a {task} head: ghost-yolo models are "
                         f"{' or '.join(TASKS)} models (a Detect or OBB head)")
    return task


def build_model(cfg: str | Path | dict, ch: int | None = None, nc: int | None = None,
                verbose: bool = True) -> GhostDetectionModel:
    """The ghost model of a YAML's task (``GhostOBBModel`` for an OBB head, else ``GhostDetectionModel``)."""
    return TASKS[model_task(cfg)](cfg, ch=ch, nc=nc, verbose=verbose)
