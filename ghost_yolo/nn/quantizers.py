"""Fake quantizers: objects with explicit state (``bits``, ``enabled``, ``scale``) that a quantized conv holds.

Every quantizer simulates integer arithmetic in float with a straight-through gradient. Weights are quantized per
output channel and symmetrically; activations per tensor. The state that matters after training lives in parameters
and buffers (saved with checkpoints, averaged by EMA); the switches are plain Python attributes that callers set
(`enabled` for the float-teacher pass, `bits` from the bit search). ``bits == 32`` means float (pass-through).

Registry: ``QUANTIZERS[name] = (weight quantizer class, activation quantizer class)``, chosen with ``quantizer=``. A new
quantizer is a ``WeightQuantizer`` and an ``ActQuantizer`` subclass in one module, each decorated with
``@register_quantizer(name)`` (as ``lsq`` and ``dorefa`` below).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import nn

from .fakequant import fused_kernels, fused_ok

__all__ = ("FLOAT_BITS", "QUANTIZERS", "ActQuantizer", "DoReFaAct", "DoReFaWeight", "LSQAct", "LSQWeight", "WeightQuantizer",
           "check_bits", "lsq_fake_quant", "lsq_log_step", "register_quantizer", "round_ste", "step_from_log",
           "zero_point_of")

FLOAT_BITS = 32
VALID_BITS = (*range(2, 9), FLOAT_BITS)
CLIP_RATIOS = torch.linspace(0.1, 1.0, 37)  # candidate clipping ranges (fraction of the max) for data-driven init


def check_bits(bits: int, what: str = "bits") -> int:
    """Return ``bits`` as an int if it is a valid width (2..8, or 32 for float), else raise a clear error."""
    try:
        b = int(bits)
        ok = b == bits and b in VALID_BITS
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"invalid bit width {what}={bits!r}: use an integer 2..8, or 32 to keep a layer in float")
    return b


def round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round to the nearest integer with a straight-through (identity) gradient."""
    return (x.round() - x).detach() + x


def half_exact(t: torch.Tensor) -> torch.Tensor:
    """``t`` rounded to the nearest fp16 value, with an identity gradient.

    Ultralytics saves checkpoints in fp16; computing with fp16-exact step sizes and weights makes the saved model
    compute exactly what the (fp32, EMA) model computed when it was validated.
    """
    return t + (t.detach().half().to(t.dtype) - t.detach())


def step_from_log(log_scale: torch.Tensor) -> torch.Tensor:
    """``exp(half_exact(log_scale))`` without gradient or graph (the LSQ function takes the log itself).

    ``t + (fp16(t) - t)`` is exactly ``fp16(t)`` (the difference is exact), so this is the same step, bit for bit.
    """
    t = log_scale.detach()
    return t.half().to(t.dtype).exp()


class LSQFakeQuant(torch.autograd.Function):
    """``s * clamp(round(x / s), qmin - z, qmax - z)`` with LSQ gradients, in a few passes over ``x``: the tensor-op
    path of ``lsq_fake_quant`` (which runs the fused kernels where they cover the tensors).

    Written as one autograd function because composing it from tensor ops costs several times more time and memory on
    the activations (it runs on every conv input). ``s`` is a scalar (per tensor) or a per-channel view that broadcasts
    against ``x``; the zero point ``z`` is an integer (0 for symmetric weights) and gets no gradient. Gradients:
    straight-through for ``x`` strictly inside the range (on CPU in float32 a value exactly on a bound gets none, as in
    LSQ's paper), zero outside; ``d/ds = q - (x / s) * inside`` (``q`` the clamped integer grid value) summed over what
    ``s`` is shared by, times LSQ's gradient scale ``g``. With ``log_scale`` (the parameter ``s == exp(log_scale)`` was
    computed from, without gradient) the step's gradient goes to ``log_scale`` instead (times ``s``, exp's derivative):
    one autograd node per quantizer rather than three.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, s: torch.Tensor, z: float, qmin: int, qmax: int, g: float,
                log_scale: torch.Tensor | None = None) -> torch.Tensor:
        """Quantize-dequantize. Rounds ``x / s`` before the zero point enters and divides rather than multiplying by
        ``1 / s``, exactly as ONNX QuantizeLinear does, so an exported graph rounds the same values the same way."""
        ctx.lo, ctx.hi, ctx.g, ctx.dtype = qmin - z, qmax - z, g, x.dtype  # AMP: x may be fp16, xn is fp32
        ctx.log_step = log_scale is not None
        ctx.log_shape = log_scale.shape if ctx.log_step else None
        with torch.no_grad():
            xn = x / s
            out = xn.round().clamp_(ctx.lo, ctx.hi).mul_(s).to(x.dtype)
        ctx.save_for_backward(xn, out, s)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        """Straight-through gradient for ``x``, LSQ gradient for ``s`` (or ``log_scale``).

        ``sum(grad * (q - xn * inside)) = sum(grad * out) / s - sum(gx * xn)``: with the masked input gradient ``gx``
        in hand, the step gradient is two reductions, no extra tensors.
        """
        need_x, need_s = ctx.needs_input_grad[0], ctx.needs_input_grad[6 if ctx.log_step else 1]
        xn, out, s = ctx.saved_tensors
        grad = grad.to(xn.dtype)
        if xn.device.type == "cpu":  # hardtanh_backward: one fused masked pass (exclusive bounds: the nextafter
            # widening is lost where ATen casts them to float32)
            gx = torch.ops.aten.hardtanh_backward(grad, xn, math.nextafter(ctx.lo, -math.inf),
                                                  math.nextafter(ctx.hi, math.inf))
        else:
            gx = torch.where((xn >= ctx.lo) & (xn <= ctx.hi), grad, 0)
        gs = None
        if need_s:
            out = out.to(xn.dtype)
            if s.ndim == 0:
                gs = torch.dot(grad.reshape(-1), out.reshape(-1)) / s - torch.dot(gx.reshape(-1), xn.reshape(-1))
            else:
                dims = [d for d in range(xn.ndim) if s.shape[d] == 1]
                gs = ((grad * out).sum(dims, keepdim=True) / s - (gx * xn).sum(dims, keepdim=True)).reshape(s.shape)
            gs = gs * ctx.g
        gx = gx.to(ctx.dtype) if need_x else None
        if ctx.log_step:  # s = exp(log_scale): exp's backward
            return gx, None, None, None, None, None, None if gs is None else (gs * s).reshape(ctx.log_shape)
        return gx, gs, None, None, None, None, None


def lsq_fake_quant(x: torch.Tensor, s: torch.Tensor, z: float, qmin: int, qmax: int, g: float,
                   log_scale: torch.Tensor | None = None) -> torch.Tensor:
    """LSQ fake quantization as ``LSQFakeQuant`` defines it, on the fused kernels of ``fakequant`` where they cover
    the tensors (float32 on the CPU: one pass each way, forward and backward in C++; the same output and input
    gradient bit for bit, the step gradient's sum accumulated in double), else on ``LSQFakeQuant``'s tensor ops."""
    if fused_ok(x, s):
        return fused_kernels().lsq(x, s, log_scale, qmin - z, qmax - z, g)
    return LSQFakeQuant.apply(x, s, z, qmin, qmax, g, log_scale)


def zero_point_of(lo: torch.Tensor, s: torch.Tensor, levels: int) -> torch.Tensor:
    """Integer code of 0.0 on an unsigned grid ``0..levels`` with step ``s`` that reaches down to ``lo``."""
    return torch.clamp(torch.round(-lo.to(s.dtype) / s), 0, levels)


def lsq_log_step(x: torch.Tensor, log_scale: torch.Tensor, qmin: int, qmax: int, g: float,
                 lo: torch.Tensor | None = None) -> torch.Tensor:
    """``lsq_fake_quant`` with the step ``step_from_log(log_scale)`` (one value, or one per leading channel of ``x``),
    the step's gradient going to ``log_scale``; with ``lo``, on the grid shifted by ``zero_point_of(lo, s, qmax)``.
    On the fused kernels the step and zero point are computed in C++ with the same operations."""
    if fused_ok(x, log_scale, log=True) and (lo is None or (lo.dtype is torch.float32 and log_scale.ndim == 0)):
        return fused_kernels().lsq_log(x, log_scale, lo, qmin, qmax, g)
    s = step_from_log(log_scale)
    z = 0.0 if lo is None else float(zero_point_of(lo, s, qmax))
    if log_scale.ndim:
        s = s.view(-1, *([1] * (x.ndim - 1)))
    return LSQFakeQuant.apply(x, s, z, qmin, qmax, g, log_scale)


class FakeQuantizer(nn.Module):
    """Base class: a bit width, an on/off switch, and a ``quantize`` applied when both say so."""

    def __init__(self, bits: int = 8) -> None:
        """Start enabled at ``bits``; ``register_buffer('calibrated')`` tells whether ranges came from data yet."""
        super().__init__()
        self.bits = check_bits(bits)
        self.enabled = True
        self.register_buffer("calibrated", torch.tensor(False))

    @property
    def active(self) -> bool:
        """Whether ``forward`` changes its input: enabled and below float width."""
        return self.enabled and self.bits < FLOAT_BITS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize (simulated) when active; calibrate from the first tensor seen if no range is known yet."""
        if not self.active:
            return x
        if not self.calibrated:
            self.calibrate(x)
        return self.quantize(x)

    def calibrate(self, x: torch.Tensor) -> None:
        """Set ranges from data (nothing to do for quantizers without learned ranges)."""
        self.calibrated.fill_(True)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """The simulated quantize-dequantize of ``x``."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        """Show the switches next to the module name."""
        return f"bits={self.bits}, enabled={self.enabled}"


class WeightQuantizer(FakeQuantizer):
    """A weight quantizer whose grid is ``step_c * code`` with integer codes: what integer export and packing need."""

    def code_grid(self) -> tuple[int, int, int]:
        """``(lowest code, highest code, stride)``: every code is ``lowest + stride * k`` for ``k < 2**bits``."""
        raise NotImplementedError

    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer codes (as float) and per-channel steps such that ``quantize(w) == codes * steps`` per channel."""
        raise NotImplementedError


class ActQuantizer(FakeQuantizer):
    """An activation quantizer on an unsigned grid ``step * (code - zero_point)``, ``code`` in ``0..levels``.

    ``needs_relu``: the grid is fixed to [0, 1], so only ReLU-fed layers fit it (``prepare`` checks the model).
    """

    needs_relu: bool = False

    def qparams(self) -> tuple[float, int, int]:
        """``(step, zero point, highest code)`` as frozen Python numbers (for export)."""
        raise NotImplementedError


Q = TypeVar("Q", bound=FakeQuantizer)
QUANTIZERS: dict[str, tuple[type[WeightQuantizer], type[ActQuantizer]]] = {}  # complete pairs, by name
_HALVES: dict[str, dict[str, type[FakeQuantizer]]] = {}  # what each name has registered so far: {"weight"/"act": cls}


def register_quantizer(name: str) -> Callable[[type[Q]], type[Q]]:
    """Class decorator: the weight or activation half of ``quantizer=name``; the name is usable (in ``QUANTIZERS``)
    once both halves are registered."""

    def register(cls: type[Q]) -> type[Q]:
        half = "weight" if issubclass(cls, WeightQuantizer) else "act" if issubclass(cls, ActQuantizer) else None
        if half is None:
            raise TypeError(f"quantizer {name!r}: {cls.__name__} is neither a WeightQuantizer nor an ActQuantizer "
                            "subclass")
        if not name:
            raise ValueError(f"{cls.__name__}: a quantizer needs a name")
        halves = _HALVES.setdefault(name, {})
        if halves.get(half, cls) is not cls:
            raise ValueError(f"quantizer {name!r}: its {half} quantizer is taken ({halves[half].__name__})")
        halves[half] = cls
        if len(halves) == 2:
            QUANTIZERS[name] = (halves["weight"], halves["act"])
        return cls

    return register


@register_quantizer("lsq")
class LSQWeight(WeightQuantizer):
    """LSQ weights: per-output-channel symmetric grid ``s_c * [-2^(b-1), 2^(b-1)-1]`` with learned step sizes ``s_c``.

    The steps start at the per-channel clipping range that minimises the squared quantization error of the current
    weights (so quantizing a trained float model starts close to it) and then learn with LSQ's scaled gradient. They
    are learned as ``log_scale``: an optimizer step then changes a step size by a fraction of itself, the same for
    tiny and large steps, which keeps Adam (whose updates ignore gradient size) from wrecking 8-bit grids.
    """

    def __init__(self, channels: int, bits: int = 8) -> None:
        """One learned (log) step size per output channel."""
        super().__init__(bits)
        self.log_scale = nn.Parameter(torch.zeros(channels))

    @property
    def qmin(self) -> int:
        """Lowest integer code."""
        return -(2 ** (self.bits - 1))

    @property
    def qmax(self) -> int:
        """Highest integer code."""
        return 2 ** (self.bits - 1) - 1

    def _fake(self, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize ``w`` with per-channel steps ``s`` (shape C)."""
        s = s.view(-1, *([1] * (w.ndim - 1)))
        return round_ste(torch.clamp(w / s, self.qmin, self.qmax)) * s

    @torch.no_grad()
    def calibrate(self, w: torch.Tensor) -> None:
        """Per channel, pick the clipping range (a fraction of max|w|) with the least squared error."""
        w = w.detach().float().flatten(1)
        amax = w.abs().amax(1).clamp_min(1e-8)
        ratios = CLIP_RATIOS.to(w.device)
        errs = torch.stack([((self._fake(w, amax * r / self.qmax) - w) ** 2).sum(1) for r in ratios])  # R x C
        best = ratios[errs.argmin(0)]
        self.log_scale.data.copy_((amax * best / self.qmax).log())
        self.calibrated.fill_(True)

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """Quantize ``w`` with the learned steps (LSQ gradient scale per channel, gradient to ``log_scale``)."""
        return lsq_log_step(w, self.log_scale, self.qmin, self.qmax,
                            1.0 / math.sqrt(w.numel() // w.shape[0] * self.qmax))

    def steps(self) -> torch.Tensor:
        """Per-channel step sizes as used in ``quantize`` (fp16-exact logs, see ``half_exact``; no gradient)."""
        return step_from_log(self.log_scale)

    def code_grid(self) -> tuple[int, int, int]:
        """Signed codes ``-2^(b-1) .. 2^(b-1) - 1``."""
        return self.qmin, self.qmax, 1

    @torch.no_grad()
    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``round(w / s)`` clamped to the grid, with the steps ``s`` (rounding exactly as ``quantize`` does)."""
        s = self.steps()
        return (w / s.view(-1, *([1] * (w.ndim - 1)))).round().clamp_(self.qmin, self.qmax), s


@register_quantizer("lsq")
class LSQAct(ActQuantizer):
    """LSQ activations: per-tensor grid ``s * ([0, 2^b - 1] - z)`` with a learned step ``s``.

    The integer zero point ``z = round(-lo / s)`` covers the lowest value seen at calibration (``lo``, a buffer): 0 for
    inputs fed by ReLU, sigmoid or the image (unsigned), about -0.28 for SiLU outputs, and a symmetric-like range for
    signed inputs. So each layer's input is signed or unsigned according to what actually feeds it.
    """

    def __init__(self, bits: int = 8) -> None:
        """A learned (log) step, as for weights, and the calibrated lower bound."""
        super().__init__(bits)
        self.log_scale = nn.Parameter(torch.tensor(0.0))
        self.register_buffer("lo", torch.tensor(0.0))

    @property
    def levels(self) -> int:
        """Highest integer code (codes are 0..levels)."""
        return 2**self.bits - 1

    def zero_point(self, s: torch.Tensor | None = None) -> torch.Tensor:
        """Integer code of 0.0 for step ``s`` (the current learned step by default)."""
        return zero_point_of(self.lo, self.steps() if s is None else s, self.levels)

    def _fake(self, x: torch.Tensor, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Quantize-dequantize ``x`` with step ``s`` and zero point ``z``."""
        return torch.clamp(round_ste(x / s), -z, self.levels - z) * s

    @torch.no_grad()
    def calibrate(self, x: torch.Tensor) -> None:
        """Lower bound from the data's minimum (0 if non-negative); step by least squared error over clip ranges."""
        x = x.detach().float().flatten()
        if x.numel() > 262144:  # a fixed strided subsample keeps calibration cheap and deterministic
            x = x[:: x.numel() // 262144 + 1]
        lo = float(torch.tensor(min(float(x.min()), 0.0)).half())  # fp16-exact: checkpoints keep it as is
        span = max(float(x.max()) - lo, 1e-8)
        self.lo.fill_(lo)
        best, best_err = span / self.levels, float("inf")
        for r in CLIP_RATIOS.tolist():
            s = torch.tensor(span * r / self.levels, device=x.device)
            err = float(((self._fake(x, s, self.zero_point(s)) - x) ** 2).sum())
            if err < best_err:
                best, best_err = float(s), err
        self.log_scale.data.fill_(math.log(best))
        self.calibrated.fill_(True)

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Quantize ``x`` with the learned step (gradient to ``log_scale``); the zero point follows the step (no
        gradient through it)."""
        return lsq_log_step(x, self.log_scale, 0, self.levels, 1.0 / math.sqrt(x.numel() // x.shape[0] * self.levels),
                            self.lo)

    def steps(self) -> torch.Tensor:
        """The step size as used in ``quantize`` (no gradient)."""
        return step_from_log(self.log_scale)

    def qparams(self) -> tuple[float, int, int]:
        """Frozen step, zero point and highest code."""
        s = self.steps()
        return float(s), int(self.zero_point(s)), self.levels


@register_quantizer("dorefa")
class DoReFaWeight(WeightQuantizer):
    """DoReFa weights (the GHOST reference): ``2 * round_b(tanh(w) / (2 max|tanh w|) + 0.5) - 1``, per output channel.

    The result lies on ``2^b`` levels in [-1, 1]; unlike the reference it is multiplied back by the channel's ``max|w|``
    so that quantizing a trained float model keeps its scale (layers without a following BatchNorm would otherwise
    break). The reference normalises per tensor; per channel is the layer contract here.
    """

    def __init__(self, channels: int, bits: int = 8) -> None:
        """No learned state: the grid follows the weights."""
        super().__init__(bits)

    def quantize(self, w: torch.Tensor) -> torch.Tensor:
        """Tanh-normalise, round on ``2^b - 1`` steps, map back to [-1, 1] and rescale by the channel's max|w|."""
        n = 2**self.bits - 1
        shape = (-1, *([1] * (w.ndim - 1)))
        t = torch.tanh(w)
        t = t / (2 * t.detach().abs().flatten(1).amax(1).clamp_min(1e-8).view(shape)) + 0.5
        q = 2 * round_ste(t * n) / n - 1
        return q * w.detach().abs().flatten(1).amax(1).view(shape)

    def code_grid(self) -> tuple[int, int, int]:
        """Odd codes ``-(2^b - 1) .. 2^b - 1`` (``2k - n`` for level ``k``): one bit more than LSQ's at the same width."""
        n = 2**self.bits - 1
        return -n, n, 2

    @torch.no_grad()
    def codes(self, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Codes ``2k - n`` and steps ``max|w| / n``: ``quantize(w) == codes * steps``."""
        n = 2**self.bits - 1
        t = torch.tanh(w)
        t = t / (2 * t.abs().flatten(1).amax(1).clamp_min(1e-8).view(-1, *([1] * (w.ndim - 1)))) + 0.5
        return 2 * (t * n).round() - n, w.abs().flatten(1).amax(1) / n


@register_quantizer("dorefa")
class DoReFaAct(ActQuantizer):
    """DoReFa activations (the GHOST reference): ``round_b(clamp(x, 0, 1))``; assumes ReLU-fed inputs."""

    needs_relu = True

    def quantize(self, x: torch.Tensor) -> torch.Tensor:
        """Clamp to [0, 1] and round on ``2^b - 1`` steps."""
        n = 2**self.bits - 1
        return round_ste(torch.clamp(x, 0, 1) * n) / n

    def qparams(self) -> tuple[float, int, int]:
        """Step ``1 / n`` on codes ``0..n`` with zero point 0."""
        n = 2**self.bits - 1
        return 1.0 / n, 0, n
