"""Turn a detection model into a mixed-precision one and back into an inference model, and talk to its quantized layers.

Two verbs, in the torchao manner:

- ``prepare(model, QuantConfig(...))`` swaps every ``nn.Conv2d`` for a ``QConv2d`` in place (same parameter tensors and
  names), sets the widths (a bit map as written, or one width with the layer policy: first conv and head prediction
  convs at 8 bit), adds the output grids and the float self's BatchNorm set the config asks for, and records the config
  on the model (``quant.config``), so checkpoints, resume and DDP workers rebuild the same quantized model.
  ``quantize_model(model, bits=4)`` is its keyword form.
- ``convert(model)`` freezes a quantized model for inference and export: the float self's BatchNorm set is dropped and
  each BatchNorm is folded into its quantized conv on the conv's integer grid (``QConv2d.fold_bn``). Ghost models call
  it from ``fuse()``; the exporter then swaps the folded convs for their Q/DQ form (``quant.qdq.to_qdq``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from enum import Enum

import torch
from torch import nn
from ultralytics.nn.modules import DFL, Conv, Detect
from ultralytics.utils.torch_utils import unwrap_model

from ghost_yolo.nn.qblocks import quantize_residuals
from ghost_yolo.nn.qconv import OUT_BITS, QConv2d, QuantAct
from ghost_yolo.nn.quantizers import FLOAT_BITS, QUANTIZERS, check_bits
from ghost_yolo.nn.switch_bn import (
    SwitchableBatchNorm2d,
    add_float_bn,
    float_bn_layers,
    has_float_bn,
)

from .config import QuantConfig, update_quant_config
from .ties import tensor_grid_ready, tie_inputs

__all__ = (
    "KEEP_BITS",
    "add_float_self",
    "average_bits",
    "calibrate",
    "conv_layers",
    "convert",
    "drop_float_bn",
    "float_mode",
    "get_bits",
    "output_quantizers",
    "policy_layers",
    "prepare",
    "QuantState",
    "quant_state",
    "quant_layers",
    "quantize_model",
    "set_bits",
    "set_quant_enabled",
    "to_float_self",
)

GRIDS = ("auto", "layer", "tensor")  # the grids= choices (QuantConfig.grids)
KEEP_BITS = 8  # width of the layers the policy keeps at high precision (first conv, head prediction convs)


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Every conv that can be quantized, by state-dict name in network order (DFL's fixed integral conv excluded)."""
    model = unwrap_model(model)
    skip = {id(m.conv) for m in model.modules() if isinstance(m, DFL)}
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and id(m) not in skip}


def quant_layers(model: nn.Module) -> dict[str, QConv2d]:
    """The quantized convs of a model, by name in network order."""
    return {n: m for n, m in conv_layers(model).items() if isinstance(m, QConv2d)}


class QuantState(str, Enum):
    """Where a model stands: ``float`` (no conv below 32 bit), ``prepared`` (quantized convs with their quantizers off:
    the float phase, or a float self) or ``active`` (quantizers on: it computes as the integer model will)."""

    FLOAT = "float"
    PREPARED = "prepared"
    ACTIVE = "active"


def quant_state(model: nn.Module) -> QuantState:
    """The one answer to "is this model quantized, and are its quantizers on", read from its layers."""
    low = [m for m in quant_layers(model).values() if m.bits < FLOAT_BITS]
    if not low:
        return QuantState.FLOAT
    return QuantState.ACTIVE if any(m.quant_enabled for m in low) else QuantState.PREPARED


def policy_layers(model: nn.Module) -> tuple[list[str], list[str]]:
    """Names of (the first layer's convs, the head's final prediction convs), which the policy keeps at 8 bit.

    The first layer is every layer that reads the input image: ``model.0`` (a plain first conv, or both streams of a
    dual-stream stem), or where ``model.0`` holds no conv and passes the image on (a mid-fusion model), the first conv
    of each branch reading it; the head's prediction convs are the last conv of every box and class branch of a
    ``Detect`` head.
    """
    model = unwrap_model(model)
    names = {id(m): n for n, m in conv_layers(model).items()}
    first = [names[id(m)] for layer in _input_layers(model) for m in layer.modules() if id(m) in names]
    if not first and names:
        first = [next(iter(names.values()))]
    head = []
    for m in model.modules():
        if isinstance(m, Detect):  # its one-to-many branches, and the one-to-one ones of end-to-end heads
            heads = [m.one2many] + ([m.one2one] if getattr(m, "one2one_cv2", None) is not None else [])
            for branches in (b for h in heads for b in h.values() if b is not None):
                for branch in branches:
                    last = [c for c in branch.modules() if id(c) in names][-1:]
                    head += [names[id(c)] for c in last]
    return first, head


def _input_layers(model: nn.Module) -> list[nn.Module]:
    """The layers that read the input image: layer 0, and past layers without convs that only pass it on (layer 0 of a
    mid-fusion model), the layers reading those."""
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential):
        return []
    image, out = {-1}, []  # indices whose output is the image (-1: the input itself)
    for i, m in enumerate(layers):
        f = getattr(m, "f", -1)
        sources = {i - 1 if j == -1 and i > 0 else j for j in (f if isinstance(f, list) else [f])}
        if not sources <= image:
            continue
        if any(isinstance(c, nn.Conv2d) for c in m.modules()):
            out.append(m)
        else:
            image.add(i)
    return out


def quantize_model(model: nn.Module, bits: int | dict[str, int] = KEEP_BITS, quantizer: str | None = None,
                   keep_first: bool | None = None, keep_head: bool | None = None, enabled: bool = True,
                   out_quant: bool | None = None) -> nn.Module:
    """``prepare`` with the config as keywords; returns the model. Keys left None take cfg/default.yaml's values.

    Args:
        model: An Ultralytics/ghost detection model (or any module with convs).
        bits: One width for all layers (2..8, 32 = float) or ``{layer name: width}`` (applied as written; unnamed
            layers take 8).
        quantizer: ``lsq`` (learned step sizes) or ``dorefa`` (the GHOST reference; needs a ReLU model).
        keep_first: Keep the first layer's convs at 8 bit when ``bits`` is one width.
        keep_head: Keep the head's prediction convs at 8 bit when ``bits`` is one width.
        enabled: Start with the quantizers on (off: float until ``set_quant_enabled(model, True)``).
        out_quant: Also quantize every conv block's output to 8 bit (``QuantAct``), as integer ONNX runs it (output
            grids a model already has are kept either way).
    """
    from ghost_yolo.cfg import ghost_defaults

    d = ghost_defaults()
    pick = lambda v, k: d[k] if v is None else v  # noqa: E731
    old = QuantConfig.of(model)
    config = QuantConfig(quantizer=pick(quantizer, "quantizer"), bits=bits, keep_first=bool(pick(keep_first, "keep_first")),
                         keep_head=bool(pick(keep_head, "keep_head")), enabled=bool(enabled),
                         out_bits=OUT_BITS if pick(out_quant, "out_quant") else (old.out_bits if old else None),
                         float_bn=bool(old and old.float_bn), extra=old.extra if old else {})
    return prepare(model, config)


def prepare(model: nn.Module, config: QuantConfig) -> nn.Module:
    """Make ``model`` the quantized model ``config`` describes (in place) and record the config on it; returns it.

    Layers already quantized keep their quantizer state (a rebuild from a checkpoint's YAML loads it afterwards);
    a layer quantized with another quantizer is refused.
    """
    quantizer, bits = config.quantizer, config.bits
    if quantizer not in QUANTIZERS:
        raise ValueError(f"unknown quantizer '{quantizer}': use one of {', '.join(QUANTIZERS)}")
    if QUANTIZERS[quantizer][1].needs_relu:
        check_relu(model, quantizer)
    root = unwrap_model(model)
    for name, conv in conv_layers(root).items():
        if isinstance(conv, QConv2d):
            if conv.quantizer != quantizer:
                raise ValueError(f"layer '{name}' is already quantized with '{conv.quantizer}', not '{quantizer}'")
            continue
        parent_name, _, attr = name.rpartition(".")
        parent = root.get_submodule(parent_name) if parent_name else root
        setattr(parent, attr, QConv2d.from_float(conv, bits=KEEP_BITS, quantizer=quantizer))
    layers = quant_layers(root)
    widths = {**dict.fromkeys(layers, KEEP_BITS), **bits} if isinstance(bits, dict) else \
        uniform_bits(root, bits, config.keep_first, config.keep_head)
    _check_names(widths, layers)
    for name, b in widths.items():
        layers[name].bits = check_bits(b, f"bits[{name}]")
    grids = resolve_grids(root, config)
    out_bits = config.out_bits or (OUT_BITS if grids == "tensor" else None)
    if out_bits:
        for block in root.modules():
            if isinstance(block, Conv) and isinstance(block.conv, QConv2d) and not isinstance(block.act, QuantAct):
                block.act = QuantAct(block.act, block.conv, bits=out_bits, post=grids == "tensor")
    for m in layers.values():
        m.quant_enabled = False
    if grids == "tensor":  # 8-bit activations on one grid per tensor, read by every consumer (quant.ties)
        quantize_residuals(root, OUT_BITS)
        for m in layers.values():
            m.input_bits = OUT_BITS
            m.bits = m.bits  # re-applies the input width
        tie_inputs(root, _channels(root))
    for m in layers.values():
        m.quant_enabled = config.enabled
    if config.float_bn:
        add_float_bn(root)
    config.replace(bits=get_bits(root), grids=grids, out_bits=out_bits).write(root)  # the one write: as the layers are
    return model


def resolve_grids(model: nn.Module, config: QuantConfig) -> str:
    """``layer`` or ``tensor`` for ``config.grids`` (``auto``: tensor where every activation folds into an integer
    conv and the quantizer is LSQ, the deploy-fast ReLU models; layer otherwise, as GHOST quantizes; ``tensor`` also
    for SiLU models, whose SiLU then runs as an integer sigmoid and product)."""
    grids = config.grids
    if grids not in GRIDS:
        raise ValueError(f"grids={grids!r}: use one of {', '.join(GRIDS)}")
    lsq = (f"the {config.quantizer} quantizer clamps each layer's input to a range of its own"
           if config.quantizer != "lsq" else None)
    if grids == "auto":  # the deploy-fast models; SiLU models keep GHOST's grids unless asked
        return "layer" if lsq or tensor_grid_ready(model, folding=True) else "tensor"
    why = tensor_grid_ready(model) or lsq
    if grids == "tensor" and why:
        raise ValueError(f"grids=tensor: {why}")
    return grids


def _channels(model: nn.Module) -> int:
    """The model's input channels (its YAML's, else the first conv's)."""
    return (getattr(model, "yaml", None) or {}).get("channels") or next(iter(conv_layers(model).values())).in_channels


def convert(model: nn.Module) -> nn.Module:
    """Freeze a quantized model for inference/export (in place); returns it.

    The float self's BatchNorm set is dropped (inference runs the quantized model), and every BatchNorm that follows a
    quantized conv is folded into it after the weight is quantized, so the folded weight stays on the conv's integer
    grid and the converted model computes what the unconverted one did. Float convs are left for Ultralytics' fuse.
    """
    root = unwrap_model(model)
    drop_float_bn(root, keep="quantized")
    for m in root.modules():
        if isinstance(m, Conv) and hasattr(m, "bn") and isinstance(m.conv, QConv2d):
            m.conv.fold_bn(m.bn)
            delattr(m, "bn")
            m.forward = m.forward_fuse
    return model


def output_quantizers(model: nn.Module) -> dict[str, QuantAct]:
    """The conv-block output quantizers (``QuantAct``) of a model, by name."""
    return {n: m for n, m in unwrap_model(model).named_modules() if isinstance(m, QuantAct)}


def uniform_bits(model: nn.Module, bits: int, keep_first: bool, keep_head: bool) -> dict[str, int]:
    """One width for every quantized layer, with the policy's layers kept at 8 bit (never lowered below ``bits``)."""
    bits = check_bits(bits)
    first, head = policy_layers(model)
    kept = set(first * bool(keep_first) + head * bool(keep_head))
    return {n: max(bits, KEEP_BITS) if n in kept else bits for n in quant_layers(model)}


def check_relu(model: nn.Module, quantizer: str = "dorefa") -> None:
    """DoReFa clamps activations to [0, 1]: refuse models whose convs use another activation (such as SiLU)."""
    acts = {type(m.act).__name__ for m in unwrap_model(model).modules() if isinstance(getattr(m, "act", None), nn.Module)
            and not isinstance(m.act, (nn.Identity, nn.ReLU))}
    if acts:
        raise ValueError(f"quantizer={quantizer} clamps activations to [0, 1] and needs a ReLU model, but this model uses "
                         f"{', '.join(sorted(acts))}: set 'act: ReLU' in the model YAML (and train it), or use "
                         "quantizer=lsq")


def get_bits(model: nn.Module) -> dict[str, int]:
    """``{layer name: bits}`` of every quantized conv."""
    return {n: m.bits for n, m in quant_layers(model).items()}


def _check_names(bits: dict[str, int], layers: dict[str, QConv2d]) -> None:
    """Refuse a bit map naming layers the model does not have, naming them and how layers are named."""
    unknown = [n for n in bits if n not in layers]
    if unknown:
        shown = ", ".join(list(layers)[:6]) + (", ..." if len(layers) > 6 else "")
        raise ValueError(f"bit map names {len(unknown)} unknown layer(s): {', '.join(unknown[:5])}"
                         f"{' ...' if len(unknown) > 5 else ''}. Layers are named like {shown} "
                         "('ghost info model=...' lists them all)")


def set_bits(model: nn.Module, bits: dict[str, int]) -> None:
    """Set per-layer widths by name; unknown names and invalid widths raise with the names that exist."""
    layers = quant_layers(model)
    _check_names(bits, layers)
    for n, b in bits.items():
        layers[n].bits = check_bits(b, f"bits[{n}]")
    update_quant_config(unwrap_model(model), bits=get_bits(model))


def set_quant_enabled(model: nn.Module, on: bool) -> None:
    """Switch every quantizer on or off, without copying the model (off: the same weights compute in float)."""
    for m in quant_layers(model).values():
        m.quant_enabled = on
    update_quant_config(unwrap_model(model), enabled=bool(on))


@contextmanager
def float_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Run a quantized model in float inside the block (its own full-precision teacher), then restore each layer.

    A model with a float self's BatchNorm set (``SwitchableBatchNorm2d``, the co-trained teacher) normalises with it
    inside the block.
    """
    layers = quant_layers(model)
    states = {n: m.quant_enabled for n, m in layers.items()}
    bns = float_bn_layers(unwrap_model(model))
    bn_states = [m.use_float for m in bns]
    try:
        for m in layers.values():
            m.quant_enabled = False
        for m in bns:
            m.use_float = True
        yield model
    finally:
        for n, m in layers.items():
            m.quant_enabled = states[n]
        for m, on in zip(bns, bn_states):
            m.use_float = on


def drop_float_bn(model: nn.Module, keep: str = "quantized") -> int:
    """Replace every switchable BatchNorm by a plain one holding the ``keep`` set (``quantized`` or ``float``).

    ``keep="quantized"`` is what inference and export of the quantized model do (no float set travels with it);
    ``keep="float"`` turns the model into its float self (with ``set_quant_enabled(model, False)``). Returns how many
    were replaced.
    """
    if keep not in {"quantized", "float"}:
        raise ValueError(f"keep={keep!r}: use 'quantized' or 'float'")
    root = unwrap_model(model)
    n = 0
    for m in list(root.modules()):
        for attr, child in list(m.named_children()):
            if isinstance(child, SwitchableBatchNorm2d):
                src = child.float_bn if keep == "float" else child
                bn = nn.BatchNorm2d(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats).to(child.weight.device, child.weight.dtype)
                bn.load_state_dict({k: v for k, v in src.state_dict().items() if not k.startswith("float_bn.")})
                bn.train(child.training)
                setattr(m, attr, bn)
                n += 1
    update_quant_config(root, float_bn=False)
    return n


def add_float_self(model: nn.Module) -> int:
    """Give the model a float self's BatchNorm set (in place, recorded in its quantization config so every rebuild has
    it); both sets start equal. Returns how many BatchNorms were switched."""
    root = unwrap_model(model)
    n = add_float_bn(root)
    update_quant_config(root, float_bn=True)
    return n


def to_float_self(model: nn.Module) -> nn.Module:
    """Turn a quantized model into its float self in place: quantizers off, the float self's BatchNorm set.

    Only models trained with a co-trained float self (``float_self=cotrain``) carry that BatchNorm set; for others the
    latent weights in float mode are not a model anybody trained, so this refuses them.
    """
    root = unwrap_model(model)
    if not has_float_bn(root):
        raise ValueError("this model has no float self: only runs with a co-trained float self (kd with "
                         "float_self=cotrain) train one; evaluate it as the quantized model (as_float=False)")
    drop_float_bn(root, keep="float")
    set_quant_enabled(root, False)
    return model


@torch.no_grad()
def calibrate(model: nn.Module, images: torch.Tensor, recalibrate: bool = True) -> None:
    """Set every quantizer's range from one batch of training images, without touching BatchNorm statistics.

    Runs in training mode (so activations look like they will in training) with BN momentum at 0; layers calibrate in
    forward order, each on the input produced by the already-quantized layers before it.
    """
    root = unwrap_model(model)
    layers = quant_layers(root)
    if recalibrate:
        for m in layers.values():
            m.weight_quant.calibrated.fill_(False)
            m.input_quant.calibrated.fill_(False)
        for m in output_quantizers(root).values():
            for q in (m.quant, getattr(m, "pre", None)):  # pre: a SiLU block's conv-output grid (grids=tensor)
                if q is not None:
                    q.calibrated.fill_(False)
    bns = [m for m in root.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    training = root.training
    try:
        for bn in bns:
            bn.momentum = 0.0
        root.train()
        root(images)
    finally:
        for bn, mom in zip(bns, momenta):
            bn.momentum = mom
        root.train(training)


def average_bits(model: nn.Module, weighted: bool = True) -> float:
    """Average weight width over quantized convs, weighted by parameter count (float layers count 32)."""
    layers = quant_layers(model)
    if not layers:
        return float(FLOAT_BITS)
    w = [m.weight.numel() if weighted else 1 for m in layers.values()]
    return sum(m.bits * n for m, n in zip(layers.values(), w)) / sum(w)
