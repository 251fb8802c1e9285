"""Integer (QDQ) ONNX export of a quantized model: int8/INT4 weights, frozen activation grids, QLinearConv-ready.

A fused quantized model computes ``conv(Q_in(x), codes * scale)`` in float. For ONNX each active ``QConv2d`` becomes a
``QDQConv``: its input goes through QuantizeLinear/DequantizeLinear (uint8, the layer's own step and zero point; a
Clip first for sub-8-bit grids), its weight through DequantizeLinear of int8 codes with per-channel scales. The
convs inside ``Conv`` blocks (conv -> activation) also quantize their output to 8 bit: onnxruntime only runs a conv in
integer arithmetic (``QLinearConv``) when a QuantizeLinear follows it, and without that the graph runs slower than
float. Models trained with ``out_quant=True`` learned that grid (``QuantAct``), so the graph computes what training
validated; for older models it is fitted per layer on images to the least squared error (``calibrate_outputs``).

``finalize_qdq`` then rewrites the exported file: the quantized weight constants become int8 initializers (INT4 with
``int4=True``, opset 21), with no QuantizeLinear left on constants; sub-8-bit input grids saturate with a one-byte
``Clip`` after quantizing; SiLU becomes onnxruntime's ``QuickGelu`` so each dequantized conv output is read once.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from ultralytics.nn.modules import Conv
from ultralytics.utils import LOGGER

from ghost_yolo.nn.qconv import SIGMOID_GRID, QConv2d, QuantAct
from ghost_yolo.nn.quantizers import LSQAct

__all__ = ("QDQAct", "QDQConv", "active_qconvs", "calibrate_outputs", "finalize_qdq", "to_qdq", "trained_output_grids")

# ops that compute a quantization range at run time when they feed a QuantizeLinear's scale or zero point (the box
# decoding's ReduceMax does not; a plain ReduceMean is not one: the dual stem's squeeze-excite exports as ReduceMean)
DYNAMIC_RANGE_OPS = {"ReduceMax", "ReduceMin", "DynamicQuantizeLinear", "ArgMax"}
OUTPUT_CALIB_SAMPLES = 1 << 20  # values kept per layer for the output-range fit (a fixed strided subsample)


def active_qconvs(model: nn.Module) -> dict[str, QConv2d]:
    """``{name: conv}`` of the quantized convs that compute in integers (bits < 32, quantizers on)."""
    return {n: m for n, m in model.named_modules() if isinstance(m, QConv2d) and m.weight_quant.active}


def _block_convs(model: nn.Module) -> dict[str, Conv]:
    """``{conv name: its Conv block}`` for the active quantized convs inside a ``Conv`` block (conv -> act): those
    get an 8-bit output grid."""
    qconvs = active_qconvs(model)
    return {f"{n}.conv": m for n, m in model.named_modules() if isinstance(m, Conv) and f"{n}.conv" in qconvs}


def trained_output_grids(model: nn.Module) -> dict[str, tuple[float, int]]:
    """``{conv name: (step, zero point)}`` of the output grids learned in QAT (``out_quant=True``) on the conv output
    before the activation, active convs only (grids after the activation, ``grids=tensor``, export as ``QDQAct``;
    a SiLU block there has both)."""
    out = {}
    for n, b in _block_convs(model).items():
        if not isinstance(b.act, QuantAct):
            continue
        if not getattr(b.act, "post", False):
            out[n] = b.act.quant.qparams()[:2]
        elif getattr(b.act, "pre", None) is not None:
            out[n] = b.act.pre.qparams()[:2]
    return out


@torch.no_grad()
def calibrate_outputs(model: nn.Module, images: Iterable[torch.Tensor]) -> dict[str, tuple[float, int]]:
    """Fit an 8-bit ``(step, zero point)`` to each block conv's output over ``images`` (least squared error).

    ``model`` is the fused quantized model, ``images`` float batches in [0, 1] of its input channels.
    """
    names = set(_block_convs(model))
    modules = dict(model.named_modules())
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in names}

    def keep(name: str):
        def hook(_m, _i, out: torch.Tensor) -> None:
            v = out.detach().float().flatten()
            seen[name].append(v[:: max(1, v.numel() // (OUTPUT_CALIB_SAMPLES // 8))])

        return hook

    hooks = [modules[n].register_forward_hook(keep(n)) for n in names]
    try:
        for im in images:
            model(im)
    finally:
        for h in hooks:
            h.remove()
    ranges = {}
    for n, vals in seen.items():
        if not vals:
            continue
        q = LSQAct(8)
        q.calibrate(torch.cat(vals))
        ranges[n] = q.qparams()[:2]
    return ranges


class QDQConv(nn.Module):
    """Export-time stand-in for an active ``QConv2d``: the same computation written with ONNX-exportable Q/DQ ops.

    ``torch.fake_quantize_*`` export as QuantizeLinear + DequantizeLinear pairs; ``finalize_qdq`` turns the pair on the
    constant weight into an int8 initializer feeding the DequantizeLinear.
    """

    def __init__(self, conv: QConv2d, out_q: tuple[float, int] | None = None, name: str = "") -> None:
        """Freeze ``conv``'s grids (weight codes, input step/zero point) and the optional output grid ``out_q``."""
        super().__init__()
        codes, scale = conv.weight_codes()
        lo, hi, _ = conv.weight_quant.code_grid()
        sign = torch.where(scale < 0, -1.0, 1.0).to(scale)  # DequantizeLinear scales must be positive: flip codes
        codes = codes * sign.view(-1, 1, 1, 1)
        if hi > 127 or lo < -128:
            raise ValueError(f"layer {name}: {conv.quantizer} {conv.bits}-bit weights use codes {lo}..{hi}, which an "
                             "int8 ONNX initializer cannot hold (use bits <= 7 for this quantizer, or format=ghost)")
        self.clipped = int((codes > 127).sum())  # only -(-128) at 8 bit in a flipped channel
        codes = codes.clamp(-128, 127)
        self.w_scale = (scale * sign).float().contiguous()
        self.register_buffer("weight", (codes * self.w_scale.view(-1, 1, 1, 1)).float())
        self.bias = None if conv.bias is None else conv.bias.detach().float()
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.bits = conv.bits
        self.in_step, self.in_zero, levels = conv.input_qparams()
        self.in_clip = None if levels == 255 else ((0 - self.in_zero) * self.in_step, (levels - self.in_zero) * self.in_step)
        self.out_q = out_q

    @torch.no_grad()
    def output_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per output channel, the least and greatest value this conv can write before its output grid: its input lies
        on an 8-bit grid (clipped for sub-8-bit widths), so the extremes are exact sums over the integer weights."""
        lo, hi = self.in_clip or ((0 - self.in_zero) * self.in_step, (255 - self.in_zero) * self.in_step)
        lo, hi = min(lo, 0.0), max(hi, 0.0)  # zero padding feeds zeros
        w = self.weight.flatten(1)
        bias = self.bias if self.bias is not None else torch.zeros(w.shape[0])
        return torch.minimum(w * lo, w * hi).sum(1) + bias, torch.maximum(w * lo, w * hi).sum(1) + bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Clip (sub-8-bit) -> Q/DQ input -> conv with DQ(int8 weight) -> Q/DQ output (block convs)."""
        if self.in_clip is not None:
            x = x.clamp(*self.in_clip)
        x = torch.fake_quantize_per_tensor_affine(x, self.in_step, self.in_zero, 0, 255)
        w = torch.fake_quantize_per_channel_affine(self.weight, self.w_scale, torch.zeros_like(self.w_scale,
                                                   dtype=torch.int32), 0, -128, 127)
        y = F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if self.out_q is not None:
            y = torch.fake_quantize_per_tensor_affine(y, self.out_q[0], self.out_q[1], 0, 255)
        return y


class QDQAct(nn.Module):
    """Export-time stand-in for a ``QuantAct`` after the activation (``grids=tensor``): ``act``, then the tensor's
    8-bit grid as a QuantizeLinear/DequantizeLinear pair (with ReLU before it, onnxruntime folds both into the conv).
    SiLU is written as ``x * Q/DQ(sigmoid(x))`` on the sigmoid's fixed grid (``silu=True``): onnxruntime runs the
    sigmoid as ``QLinearSigmoid`` and the product as ``QLinearMul``."""

    def __init__(self, act: nn.Module, step: float, zero: int, silu: bool = False) -> None:
        """Freeze the grid ``(step, zero)`` behind ``act``."""
        super().__init__()
        self.act, self.step, self.zero, self.silu = act, step, zero, silu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``Q/DQ(act(x))``."""
        if self.silu:
            s = torch.fake_quantize_per_tensor_affine(torch.sigmoid(x), SIGMOID_GRID, 0, 0, 255)
            return torch.fake_quantize_per_tensor_affine(x * s, self.step, self.zero, 0, 255)
        return torch.fake_quantize_per_tensor_affine(self.act(x), self.step, self.zero, 0, 255)


def to_qdq(model: nn.Module, out_ranges: dict[str, tuple[float, int]]) -> dict[str, int]:
    """Replace every active ``QConv2d`` of the fused ``model`` by a ``QDQConv`` in place; returns ``{name: bits}``."""
    bits, clipped = {}, 0
    for name, q in [(n, m) for n, m in model.named_modules() if isinstance(m, QuantAct)]:
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        if getattr(q, "post", False) and q.active:  # the tensor's grid, after the activation
            step, zero, _ = q.quant.qparams()
            setattr(parent, attr, QDQAct(q.act, step, zero, silu=getattr(q, "pre", None) is not None))
        else:  # the output grid (if any) moves into the QDQConv; the activation stays
            setattr(parent, attr, q.act)
    for name, conv in active_qconvs(model).items():
        parent_name, _, attr = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        q = QDQConv(conv, out_ranges.get(name), name)
        setattr(parent, attr, q)
        bits[name], clipped = q.bits, clipped + q.clipped
    if clipped:
        LOGGER.warning(f"{clipped} weight code(s) of -128 in channels with a negative BatchNorm scale were stored as "
                       "+127 (int8 has no +128)")
    return bits


def _constants(graph: Any) -> dict[str, np.ndarray]:
    """Values of the graph's initializers and Constant node outputs, by name (read once per pass)."""
    from onnx import numpy_helper

    out = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    out.update({n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node
                if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value"})
    return out


def _pack_int4(q: np.ndarray) -> bytes:
    """ONNX's INT4 storage: two values per byte, the first in the low nibble."""
    u = (q.ravel().astype(np.int16) & 0x0F).astype(np.uint8)
    if u.size % 2:
        u = np.append(u, np.uint8(0))
    return (u[0::2] | (u[1::2] << 4)).tobytes()


def overflows_16bit(q: np.ndarray) -> bool:
    """Whether int8 conv weight codes ``q`` (output channels first) can saturate ``vpmaddubsw``: it adds two uint8 x
    int8 products in int16, and 255 x (|w1| + |w2|) exceeds 32767 once the two largest codes of a channel sum past 128
    (any two weights of a channel may be paired, whatever order the runtime packs them in)."""
    a = np.abs(q.reshape(q.shape[0], -1).astype(np.int32))
    if a.shape[1] < 2:
        return False
    top2 = -np.partition(-a, 1, axis=1)[:, :2]
    return bool((top2.sum(axis=1) > 128).any())


def finalize_qdq(path: str | Path, int4: bool, u8_weights: bool) -> dict[str, Any]:
    """Store quantized weights as int8 (or INT4) initializers in the ONNX file at ``path``; returns counts.

    Every QuantizeLinear whose input is a constant is evaluated here (round half to even, saturate, exactly as ONNX
    defines it) and removed; its DequantizeLinear reads the integer initializer. With ``int4``, weights whose codes
    all lie in -8..7 are stored as INT4 and the opset becomes 21. Weights that can overflow CPUs without VNNI
    (``overflows_16bit``) are listed in ``counts["at_risk"]``; with ``u8_weights`` they are stored as uint8 codes + 128
    with zero point 128 (the same values; onnxruntime then multiplies them exactly, in its u8 x u8 kernels).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    g = model.graph
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    remove, new_inits, counts = [], [], {"int8": 0, "int4": 0, "uint8": 0, "at_risk": []}
    consts = _constants(g)
    for n in g.node:
        if n.op_type != "QuantizeLinear":
            continue
        x = consts.get(n.input[0])
        if x is None:
            continue
        scale, zp = consts.get(n.input[1]), consts.get(n.input[2]) if len(n.input) > 2 else None
        if scale is None or (zp is not None and zp.dtype != np.int8):  # only the int8 weight grids are folded
            continue
        axis = next((a.i for a in n.attribute if a.name == "axis"), 1)
        shape = [1] * x.ndim
        if scale.ndim:
            shape[axis] = -1
        zp_arr = np.zeros_like(scale, dtype=np.int8) if zp is None else zp
        q = np.clip(np.rint(x / scale.reshape(shape)) + zp_arr.reshape(shape).astype(np.float32), -128, 127)
        q = q.astype(np.int8)
        four = int4 and q.min() >= -8 and q.max() <= 7 and not zp_arr.any()
        risk = not four and not zp_arr.any() and q.ndim == 4 and overflows_16bit(q)
        if risk:
            counts["at_risk"].append(n.input[0])
        name = f"{n.input[0]}_q{'4' if four else '8'}"
        if risk and u8_weights:
            new_inits.append(numpy_helper.from_array((q.astype(np.int16) + 128).astype(np.uint8), name))
            zname = f"{name}_zero_point"
            new_inits.append(numpy_helper.from_array(np.full(zp_arr.shape, 128, np.uint8), zname))
        elif four:
            new_inits.append(helper.make_tensor(name, TensorProto.INT4, q.shape, _pack_int4(q), raw=True))
            zname = f"{name}_zero_point"
            new_inits.append(helper.make_tensor(zname, TensorProto.INT4, zp_arr.shape,
                                                _pack_int4(np.zeros(zp_arr.shape, np.int8)), raw=True))
        else:
            new_inits.append(numpy_helper.from_array(q, name))
        counts["int4" if four else "uint8" if risk and u8_weights else "int8"] += 1
        for c in consumers.get(n.output[0], []):
            if c.op_type != "DequantizeLinear":
                raise RuntimeError(f"unexpected {c.op_type} after the weight QuantizeLinear {n.name}")
            c.input[0] = name
            if four or (risk and u8_weights):
                if len(c.input) > 2:
                    c.input[2] = zname
                else:
                    c.input.append(zname)
        remove.append(n)
    for n in remove:
        g.node.remove(n)
    g.initializer.extend(new_inits)
    counts["saturations"] = _clip_to_saturation(g, consts)
    counts["grid_passes"] = _pass_grids(g, consts)
    counts["silu"] = _fuse_silu(g)
    if counts["silu"] and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    used = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    for t in [t for t in g.initializer if t.name not in used]:  # the float weights the Q nodes read
        g.initializer.remove(t)
    for n in [n for n in g.node if n.op_type == "Constant" and n.output[0] not in used]:
        g.node.remove(n)
    if counts["int4"]:
        for o in model.opset_import:
            if o.domain in ("", "ai.onnx"):
                o.version = max(o.version, 21)
        model.ir_version = max(model.ir_version, 10)
    if dynamic := _dynamic_ranges(g):
        raise RuntimeError(f"the QDQ graph still computes ranges at run time ({', '.join(dynamic)})")
    onnx.save(model, str(path))
    return counts


def _fuse_silu(g: Any) -> int:
    """Write ``Mul(x, Sigmoid(x))`` as onnxruntime's ``com.microsoft.QuickGelu(x, alpha=1)`` (the same SiLU).

    onnxruntime makes this fusion itself in float graphs, but not after a DequantizeLinear: there it gives the Sigmoid
    and the Mul a DequantizeLinear each. One op reads the conv's dequantized output once (about 15 % of the latency of
    a quantized ghost-n).
    """
    from onnx import helper

    producer = {o: n for n in g.node for o in n.output}
    done = 0
    for mul in [n for n in g.node if n.op_type == "Mul"]:
        for x, other in ((mul.input[0], mul.input[1]), (mul.input[1], mul.input[0])):
            sig = producer.get(other)
            if sig is not None and sig.op_type == "Sigmoid" and sig.input[0] == x:
                silu = helper.make_node("QuickGelu", [x], [mul.output[0]], name=f"{mul.name}_silu",
                                        domain="com.microsoft", alpha=1.0)
                g.node.insert(list(g.node).index(mul), silu)
                g.node.remove(mul)
                if not any(sig.output[0] in n.input for n in g.node):
                    g.node.remove(sig)
                done += 1
                break
    return done


def _clip_to_saturation(g: Any, consts: dict[str, np.ndarray]) -> int:
    """Turn ``Clip(x, lo, hi) -> QuantizeLinear`` (a sub-8-bit grid) into ``QuantizeLinear -> Clip(q, 0, top code)``.

    The same codes (the lower bound is code 0, where uint8 saturates anyway), but the clamp runs on one byte per value
    after quantizing instead of on floats before it (a uint8 Clip is also cheaper in onnxruntime than a uint8 Min).
    """
    from onnx import helper, numpy_helper

    producer = {o: n for n in g.node for o in n.output}
    uses: dict[str, int] = {}
    for n in g.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    done = 0
    for q in [n for n in g.node if n.op_type == "QuantizeLinear"]:
        clip = producer.get(q.input[0])
        if clip is None or clip.op_type != "Clip" or uses[clip.output[0]] != 1 or len(clip.input) < 3:
            continue
        scale, zero, hi = consts.get(q.input[1]), consts.get(q.input[2]), consts.get(clip.input[2])
        if scale is None or zero is None or hi is None or scale.ndim:
            continue
        top = int(np.rint(float(hi) / float(scale))) + int(zero)
        q.input[0] = clip.input[0]
        g.node.remove(clip)
        out = q.output[0]
        q.output[0] = f"{out}_saturated"
        g.initializer.append(numpy_helper.from_array(np.array(0, dtype=zero.dtype), f"{out}_bottom"))
        g.initializer.append(numpy_helper.from_array(np.array(top, dtype=zero.dtype), f"{out}_top"))
        g.node.insert(list(g.node).index(q) + 1, helper.make_node("Clip", [q.output[0], f"{out}_bottom", f"{out}_top"],
                                                                 [out], name=f"{q.name}_top"))
        done += 1
    return done


GRID_KEEPING_OPS = {"Split", "MaxPool", "Resize"}  # their outputs lie on their input's grid (Resize: nearest only)


def _pass_grids(g: Any, consts: dict[str, np.ndarray]) -> int:
    """Requantize the outputs of grid-keeping ops that read a dequantized tensor onto that same grid.

    ``DequantizeLinear -> Split/MaxPool/Resize -> QuantizeLinear -> DequantizeLinear`` with one scale and zero point
    on both sides is what onnxruntime runs in integers (it drops the pair around the op), and the consumers then see a
    DequantizeLinear again, so a Concat or Add after them fuses into its integer kernel too. The values do not change:
    the op only moves or picks values that are already on the grid.
    """
    from onnx import helper

    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list] = {}
    for n in g.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    done = 0
    for node in [n for n in g.node if n.op_type in GRID_KEEPING_OPS]:
        if node.op_type == "Resize" and any(a.name == "mode" and a.s != b"nearest" for a in node.attribute):
            continue
        dq = producer.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or len(dq.input) < 3:
            continue
        scale, zero = consts.get(dq.input[1]), consts.get(dq.input[2])
        if scale is None or zero is None or scale.ndim:
            continue
        at = list(g.node).index(node) + 1
        for k, out in enumerate(node.output):
            users = consumers.get(out, [])
            if users and all(u.op_type == "QuantizeLinear" and list(u.input[1:3]) == list(dq.input[1:3]) for u in users):
                continue  # already requantized onto the same grid
            raw = f"{out}_on_grid"
            node.output[k] = raw
            q = helper.make_node("QuantizeLinear", [raw, dq.input[1], dq.input[2]], [f"{out}_q"], name=f"{raw}_q")
            d = helper.make_node("DequantizeLinear", [f"{out}_q", dq.input[1], dq.input[2]], [out], name=f"{raw}_dq")
            g.node.insert(at, d)
            g.node.insert(at, q)
            producer[out] = d
            at += 2
            done += 1
    return done


def _dynamic_ranges(g: Any) -> list[str]:
    """Op types that compute a quantization grid at run time: ``DynamicQuantizeLinear``, or a range op upstream of
    a QuantizeLinear's scale or zero point."""
    producer = {o: n for n in g.node for o in n.output}
    found = {n.op_type for n in g.node if n.op_type == "DynamicQuantizeLinear"}
    todo = [i for n in g.node if n.op_type == "QuantizeLinear" for i in n.input[1:3]]
    seen: set[str] = set()
    while todo:
        t = todo.pop()
        if t in seen or t not in producer:
            continue
        seen.add(t)
        node = producer[t]
        if node.op_type in DYNAMIC_RANGE_OPS:
            found.add(node.op_type)
        todo.extend(node.input)
    return sorted(found)
