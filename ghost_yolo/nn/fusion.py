"""Modality fusion blocks: a dual-stream stem with an MF-style (SuperYOLO) fusion of colour and infrared.

Modules take ``(c1, c2, ...)`` like Ultralytics' blocks and are composed from model YAMLs. Their convolutions are
Ultralytics ``Conv`` (conv + BN + act) wherever BN is used, so ``fuse()`` folds them and later quantization swaps them.
"""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules import Conv

__all__ = ("DualStreamStem", "ModalityAttention", "SqueezeExcite")


class ModalityAttention(nn.Module):
    """Residual spatial attention of one modality: ``x + x * sigmoid(conv1x1(x))`` (MF's per-modality mask)."""

    def __init__(self, c1: int) -> None:
        """A 1x1 conv turns the modality's channels into one spatial mask."""
        super().__init__()
        self.mask = nn.Conv2d(c1, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Emphasise where this modality is informative, keeping the input (residual)."""
        return x + x * self.mask(x).sigmoid()


class SqueezeExcite(nn.Module):
    """Channel attention over the fused streams, so the network learns how much to trust each modality."""

    def __init__(self, c1: int, r: int = 4) -> None:
        """Squeeze to ``c1 // r`` channels and excite back."""
        super().__init__()
        c_ = max(c1 // r, 8)
        self.fc1 = nn.Conv2d(c1, c_, 1)
        self.act = nn.ReLU()
        self.fc2 = nn.Conv2d(c_, c1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Rescale channels by a gate computed from their global means."""
        return x * self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))).sigmoid()


class DualStreamStem(nn.Module):
    """Separate colour and infrared stems fused MF-style before a shared backbone.

    The input is the stacked R, G, B, IR tensor; the last ``c_ir`` channels are infrared. Each modality gets its own
    attention mask and strided conv (3/4 of the output channels for colour, 1/4 for IR, as SuperYOLO's 48 + 16), and an
    SE block weighs the concatenated streams.

    Args:
        c1 (int): Input channels (colour + IR), 4 for rgb+ir data.
        c2 (int): Output channels.
        k (int): Kernel size of the stems.
        s (int): Stride of the stems.
        c_ir (int): How many of the input channels are infrared.
    """

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 2, c_ir: int = 1) -> None:
        """Build both streams; refuses inputs that carry no colour or no IR channels."""
        super().__init__()
        if c1 != 3 + c_ir:
            raise ValueError(
                f"DualStreamStem needs colour and infrared input (modality=rgb+ir, {c_ir + 3} channels), got {c1} "
                "channel(s): use an early-fusion model (ghost-n.yaml) for single-modality data"
            )
        self.c_ir = c_ir
        c2_ir = max(c2 // 4, 1)
        self.rgb_att, self.ir_att = ModalityAttention(c1 - c_ir), ModalityAttention(c_ir)
        self.rgb, self.ir = Conv(c1 - c_ir, c2 - c2_ir, k, s), Conv(c_ir, c2_ir, k, s)
        self.se = SqueezeExcite(c2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Run the two streams on their channels and fuse them."""
        rgb, ir = x[:, : -self.c_ir], x[:, -self.c_ir :]
        return self.se(torch.cat((self.rgb(self.rgb_att(rgb)), self.ir(self.ir_att(ir))), 1))
