"""Box-distribution distillation (``kd=dfl``, localization distillation as in LD): the student's DFL distributions
learn the teacher's.

A YOLO11 head predicts each box side as a distribution over ``reg_max`` bins (the DFL logits). The loss is
``T^2 KL(softmax(t / T) || softmax(s / T))`` per side, averaged over the four sides, weighted per anchor by the
teacher's class confidence (where the teacher sees no object its boxes mean nothing) and normalised by the weights.
``kd_temp`` is T.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import PassOutputs, TemperatureKDLoss, register_kd_loss

__all__ = ("BoxDistributionLoss", "box_distribution_kl")


def box_distribution_kl(student_boxes: torch.Tensor, teacher_boxes: torch.Tensor, teacher_scores: torch.Tensor,
                        temperature: float) -> torch.Tensor:
    """Confidence-weighted KL between DFL logits of shape (B, 4 * reg_max, A); a scalar."""
    b, c, a = student_boxes.shape
    s = student_boxes.float().view(b, 4, c // 4, a) / temperature
    t = teacher_boxes.detach().float().view(b, 4, c // 4, a) / temperature
    kl = (F.softmax(t, 2) * (F.log_softmax(t, 2) - F.log_softmax(s, 2))).sum(2).mean(1)  # (B, A)
    w = teacher_scores.detach().float().sigmoid().amax(1)  # (B, A)
    return temperature**2 * (kl * w).sum() / w.sum().clamp_min(1e-6)


@register_kd_loss
class BoxDistributionLoss(TemperatureKDLoss):
    """Localization distillation on the DFL box distributions."""

    name = "dfl"
    default_weight = 1.0
    needs_head = True

    def forward(self, student: PassOutputs, teacher: PassOutputs) -> tuple[torch.Tensor, None]:
        """The weighted KL of the four side distributions."""
        with torch.autocast(student.head["boxes"].device.type, enabled=False):
            return box_distribution_kl(student.head["boxes"], teacher.head["boxes"], teacher.head["scores"],
                                       self.temperature), None

