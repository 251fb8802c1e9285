"""QConv2d: an ``nn.Conv2d`` with a weight quantizer and an input (activation) quantizer.

It takes the place of every ``nn.Conv2d`` leaf: the one inside Ultralytics' ``Conv`` (conv + BN + act) and the bare
ones inside blocks and the head. Parameter names stay ``conv.weight`` / ``conv.bias``, so float checkpoints load into
it; the quantizers add ``weight_quant.*`` and ``input_quant.*`` entries. BatchNorm folding is done by ``fold_bn``:
the quantized weight is folded, not the float one, so the fused model computes what the unfused one did.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .quantizers import QUANTIZERS, FakeQuantizer, LSQAct, check_bits, half_exact

__all__ = ("SIGMOID_GRID", "QConv2d", "QuantAct", "sigmoid_on_grid")

OUT_BITS = 8  # width of the conv-block output grid (what onnxruntime's QLinearConv writes: uint8)


class QConv2d(nn.Conv2d):
    """Conv2d with fake-quantized weights (per output channel) and input (per tensor), one bit width for both.

    Attributes:
        weight_quant (FakeQuantizer): Weight quantizer (``bits``, ``enabled``, learned ``scale`` for LSQ).
        input_quant (FakeQuantizer): Quantizer of this conv's input activations.
        folded (bool): True once BatchNorm was folded into the (already quantized) weight by ``fold_bn``.
    """

    def __init__(self, c1: int, c2: int, k: int = 1, s: int = 1, p: int = 0, g: int = 1, d: int = 1, bias: bool = True,
                 bits: int = 8, quantizer: str = "lsq") -> None:
        """Like ``nn.Conv2d(c1, c2, k, s, p, dilation=d, groups=g, bias=bias)`` plus ``bits`` and ``quantizer``."""
        super().__init__(c1, c2, k, s, p, dilation=d, groups=g, bias=bias)
        if quantizer not in QUANTIZERS:
            raise ValueError(f"unknown quantizer '{quantizer}': use one of {', '.join(QUANTIZERS)}")
        wq, aq = QUANTIZERS[quantizer]
        self.quantizer = quantizer
        self.weight_quant: FakeQuantizer = wq(c2, bits)
        self.input_quant: FakeQuantizer = aq(bits)
        self.folded = False
        self.input_bits: int | None = None  # activation width when it differs from the weights' (grids=tensor: 8)
        self._tied: tuple[QuantAct, ...] = ()  # the producer whose output grid this conv reads (grids=tensor)

    @classmethod
    def from_float(cls, conv: nn.Conv2d, bits: int = 8, quantizer: str = "lsq") -> QConv2d:
        """Wrap an existing conv, sharing its weight and bias tensors (no copy, same names)."""
        q = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, conv.groups,
                conv.dilation, conv.bias is not None, bits=bits, quantizer=quantizer)
        q.padding_mode = conv.padding_mode
        q.weight = conv.weight
        q.bias = conv.bias
        q.to(conv.weight.device)
        return q

    @property
    def bits(self) -> int:
        """Bit width of this layer's weights and input activations (32: float)."""
        return self.weight_quant.bits

    @bits.setter
    def bits(self, bits: int) -> None:
        if self.folded and check_bits(bits) != self.weight_quant.bits:
            raise RuntimeError("cannot change the bits of a fused (BN-folded) QConv2d; change them before fuse()")
        self.weight_quant.bits = check_bits(bits)
        self.input_quant.bits = getattr(self, "input_bits", None) or self.weight_quant.bits

    @property
    def tied(self) -> QuantAct | None:
        """The quantizer whose output grid this conv's input already lies on (``grids=tensor``), or None."""
        tied = getattr(self, "_tied", ())
        return tied[0] if tied else None

    def tie(self, producer: QuantAct | None) -> None:
        """Read ``producer``'s output grid instead of quantizing the input again (referenced, not registered: the
        producer's block owns it; the same tensor on the same grid, so skipping the second rounding changes nothing)."""
        self._tied = (producer,) if producer is not None else ()

    def input_qparams(self) -> tuple[float, int, int]:
        """``(step, zero point, top code)`` of the grid this conv's input is on: the tied producer's while it
        quantizes, else this conv's own input quantizer's."""
        tied = self.tied
        return tied.quant.qparams() if tied is not None and tied.active else self.input_quant.qparams()

    @property
    def quant_enabled(self) -> bool:
        """Whether the quantizers are on (off: this layer computes in float, e.g. as its own teacher)."""
        return self.weight_quant.enabled

    @quant_enabled.setter
    def quant_enabled(self, on: bool) -> None:
        self.weight_quant.enabled = self.input_quant.enabled = bool(on)

    def quantized_weight(self) -> torch.Tensor:
        """The weight this layer computes with (already on its grid once folded).

        While quantizing, the float weight is first rounded to fp16 (identity gradient): checkpoints are saved in fp16,
        so the saved model then quantizes exactly the weights that were validated.
        """
        if self.folded:
            return self.weight
        return self.weight_quant(half_exact(self.weight) if self.weight_quant.active else self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve the quantized input with the quantized weight."""
        tied = self.tied
        x = x if tied is not None and tied.active else self.input_quant(x)
        return F.conv2d(x, self.quantized_weight(), self.bias, self.stride, self.padding, self.dilation, self.groups)

    @torch.no_grad()
    def weight_codes(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Integer codes (as float, shape of the weight) and signed per-channel scales: ``weight == codes * scale``.

        This is what integer export and packing store. Folded layers keep their scales in ``fold_scale`` (signed: a
        negative BatchNorm gamma flips a channel).
        """
        if not self.weight_quant.active:
            raise RuntimeError("weight_codes() needs a quantized layer (bits < 32, quantizers enabled)")
        if self.folded:
            scale = self.fold_scale
            return torch.round(self.weight / scale.view(-1, 1, 1, 1)), scale
        return self.weight_quant.codes(half_exact(self.weight))

    @torch.no_grad()
    def fold_bn(self, bn: nn.BatchNorm2d) -> None:
        """Fold a following BatchNorm into this conv after quantizing the weight, so fused == unfused (the bias moves
        onto the int32 accumulator grid, at most half an accumulator step, as integer runtimes hold it).

        Folding before quantizing would change the grid (and is wrong for quantizers that are not scale-equivariant
        such as DoReFa). The folded weight is ``codes * s_c * gamma_c / sigma_c`` per channel: it stays on an integer
        grid whose signed per-channel scale is kept as the ``fold_scale`` buffer, so export and packing recover the
        exact codes.
        """
        factor = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        bias = self.bias if self.bias is not None else torch.zeros_like(bn.running_mean)
        if self.weight_quant.active and not self.folded:
            codes, steps = self.weight_codes()
            self.register_buffer("fold_scale", steps * factor)
            w = codes * self.fold_scale.view(-1, 1, 1, 1)
        else:
            w = self.weight * factor.view(-1, 1, 1, 1)
            if self.folded:
                self.fold_scale = self.fold_scale * factor
        self.weight = nn.Parameter(w.detach(), requires_grad=False)
        b = bn.bias + (bias - bn.running_mean) * factor
        tied = self.tied
        if self.weight_quant.active and (self.input_quant.active or (tied is not None and tied.active)):
            # integer runtimes add the bias to the int32 accumulator: put it on that grid (input step x weight scale)
            acc = self.input_qparams()[0] * self.fold_scale.abs()
            b = torch.round(b / acc) * acc
        self.bias = nn.Parameter(b.detach(), requires_grad=False)
        if self.weight_quant.active:
            self.folded = True

    def extra_repr(self) -> str:
        """Conv2d's description plus the bit width and quantizer."""
        return f"{super().extra_repr()}, bits={self.bits}, quantizer={self.quantizer}"


class QuantAct(nn.Module):
    """A conv block's activation that first quantizes its input (the block's BN-folded conv output) to 8 bit.

    Integer runtimes (onnxruntime's ``QLinearConv``) write a conv's output as uint8; simulating that grid during QAT
    makes the exported integer graph compute what training validated. It is active only while its conv is
    (quantized and enabled), so the float phase and the float-teacher pass are untouched. The conv is referenced, not
    registered: the block already owns it.
    """

    def __init__(self, act: nn.Module, conv: QConv2d, bits: int = OUT_BITS, post: bool = False) -> None:
        """Wrap ``act`` (the block's activation) behind an LSQ activation quantizer that follows ``conv``'s switches;
        ``post``: quantize after the activation (``grids=tensor``: the grid every consumer reads), else before it."""
        super().__init__()
        self.act = act
        self.quant = LSQAct(bits)
        self._conv = (conv,)
        self.post = post
        # SiLU after a grid: the conv output's own grid, then x * sigmoid(x) as integer runtimes compute it (onnxruntime's
        # QLinearSigmoid on that grid, the sigmoid on SIGMOID_GRID, QLinearMul onto this block's grid)
        self.pre = LSQAct(bits) if post and isinstance(act, nn.SiLU) else None

    @property
    def conv(self) -> QConv2d:
        """The conv whose output this quantizes."""
        return self._conv[0]

    @property
    def active(self) -> bool:
        """Whether this grid is applied now (its conv is quantized and its quantizers are on)."""
        return self.conv.weight_quant.active

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``act(Q8(x))`` (or ``Q8(act(x))`` when ``post``) while the conv is quantized, ``act(x)`` otherwise."""
        if not self.active:
            return self.act(x)
        if not getattr(self, "post", False):
            return self.act(self.quant(x))
        if getattr(self, "pre", None) is not None:
            y = self.pre(x)
            return self.quant(y * sigmoid_on_grid(y))
        return self.quant(self.act(x))


SIGMOID_GRID = 1 / 255  # step of the sigmoid's uint8 grid (zero point 0): codes 0..255 cover [0, 1]


def sigmoid_on_grid(x: torch.Tensor) -> torch.Tensor:
    """``sigmoid(x)`` rounded to ``SIGMOID_GRID`` (straight-through gradient), as a lookup-table integer sigmoid
    writes it."""
    s = torch.sigmoid(x)
    return s + (torch.round(s / SIGMOID_GRID) * SIGMOID_GRID - s).detach()
