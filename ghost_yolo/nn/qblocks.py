"""Ultralytics blocks with the extra grids an integer graph needs (``grids=tensor``).

A residual ``x + f(x)`` adds two tensors on two grids; integer runtimes add them in integers (onnxruntime's
``QLinearAdd``) only when the sum is quantized too, so the sum gets a learned 8-bit grid of its own, which the block's
consumers then read.
"""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules.block import Bottleneck

from .qconv import QConv2d, QuantAct

__all__ = ("QuantBottleneck", "quantize_residuals")


class QuantBottleneck(Bottleneck):
    """``Bottleneck`` whose residual sum is quantized to 8 bit (``out_act``) while its convs are."""

    out_act: QuantAct

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Ultralytics' bottleneck, then the sum's grid."""
        return self.out_act(super().forward(x))


def quantize_residuals(model: nn.Module, bits: int) -> int:
    """Give every residual ``Bottleneck`` (shortcut on) of ``model`` an output grid, in place; returns how many."""
    done = 0
    for m in model.modules():
        if type(m) is Bottleneck and m.add and isinstance(m.cv2.conv, QConv2d):
            m.__class__ = QuantBottleneck
            m.out_act = QuantAct(nn.Identity(), m.cv2.conv, bits=bits, post=True)
            done += 1
    return done
