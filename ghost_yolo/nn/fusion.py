"""Modality fusion blocks: a dual-stream stem with an MF-style (SuperYOLO) fusion of colour and infrared, and the band
selecting first conv of a mid-fusion branch.

Modules take ``(c1, c2, ...)`` like Ultralytics' blocks and are composed from model YAMLs. Their convolutions are
Ultralytics ``Conv`` (conv + BN + act) wherever BN is used, so ``fuse()`` folds them and later quantization swaps them.
"""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules import Conv

__all__ = ("BAND_SLICES", "BandConv", "DualStreamStem", "ModalityAttention", "SqueezeExcite")

# Where each band group sits in ghost's stacked rgb+ir input (channel order R, G, B, IR)
BAND_SLICES: dict[str, slice] = {"rgb": slice(0, 3), "ir": slice(3, 4)}
RGB_IR_CHANNELS = 4


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


class BandConv(Conv):
    """``Conv`` over one band group (``rgb`` or ``ir``) of the stacked R, G, B, IR input: the first layer of a
    mid-fusion branch, so a colour and an IR backbone both read the model's input (layer 0, ``nn.Identity``).

    The bands are a channel slice taken before the conv (an ONNX ``Slice``), so the conv, its BatchNorm folding and its
    quantization are a plain ``Conv``'s.

    Args:
        c1 (int): Input channels of the model (4: R, G, B, IR).
        c2 (int): Output channels.
        k (int): Kernel size.
        s (int): Stride.
        bands (str): ``rgb`` (channels 0-2) or ``ir`` (channel 3).
    """

    def __init__(self, c1: int, c2: int, k: int = 3, s: int = 2, bands: str = "rgb") -> None:
        """A conv over ``bands``; refuses input that lacks them (a mid-fusion model needs both bands)."""
        if bands not in BAND_SLICES:
            raise ValueError(f"BandConv bands='{bands}': use one of {', '.join(BAND_SLICES)}")
        if c1 != RGB_IR_CHANNELS:
            raise ValueError(
                f"a mid-fusion model needs both bands (modality=rgb+ir, {RGB_IR_CHANNELS} channels R,G,B,IR), got {c1} "
                "channel(s): use an early-fusion model (ghost-n.yaml) for single-modality data"
            )
        sl = BAND_SLICES[bands]
        super().__init__(sl.stop - sl.start, c2, k, s)
        self.bands, self.band_slice = bands, sl

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Conv, BatchNorm and activation over this branch's bands."""
        return super().forward(x[:, self.band_slice])

    def forward_fuse(self, x: torch.Tensor) -> torch.Tensor:
        """The fused (BatchNorm folded) form over this branch's bands."""
        return super().forward_fuse(x[:, self.band_slice])
