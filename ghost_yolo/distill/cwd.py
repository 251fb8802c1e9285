"""Channel-wise distillation (``kd=cwd``, Shu et al. 2021) on the Detect head's inputs (the neck's output maps).

Each channel's activation map is turned into a spatial distribution by a softmax at temperature T; the student's
channel learns the teacher's with ``T^2 KL(teacher || student)``, averaged over channels and samples and summed over
the head's input levels. It tells the student where each channel of the teacher looks, which is what the head reads.
``kd_temp`` is T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import PassOutputs, TemperatureKDLoss, register_kd_loss

__all__ = ("ChannelWiseLoss", "channel_wise_kl")


def channel_wise_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """CWD between two feature maps (B, C, H, W): ``T^2`` times the KL per channel, averaged over B x C; a scalar."""
    if student.shape != teacher.shape:
        raise ValueError(f"channel-wise distillation pairs maps of the same shape: student {tuple(student.shape)} vs "
                         f"teacher {tuple(teacher.shape)}")
    s = student.float().flatten(2) / temperature
    t = teacher.detach().float().flatten(2) / temperature
    kl = (F.softmax(t, 2) * (F.log_softmax(t, 2) - F.log_softmax(s, 2))).sum(2)  # (B, C)
    return temperature**2 * kl.mean()


@register_kd_loss
class ChannelWiseLoss(TemperatureKDLoss):
    """Channel-wise distillation on every input level of the Detect head."""

    name = "cwd"
    default_weight = 1.0
    needs_head = True

    def forward(self, student: PassOutputs, teacher: PassOutputs) -> tuple[torch.Tensor, None]:
        """Summed over the head's input levels."""
        s_maps, t_maps = student.head["feats"], teacher.head["feats"]
        with torch.autocast(s_maps[0].device.type, enabled=False):
            return sum(channel_wise_kl(s, t, self.temperature) for s, t in zip(s_maps, t_maps)), None

