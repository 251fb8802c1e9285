"""Class-score distillation (``kd=cls``): the student's class logits learn the teacher's sigmoid scores.

Per anchor and class, the binary KL ``KL(p_t || sigmoid(z_s))`` (binary cross-entropy to the teacher's probability
minus the teacher's own entropy, so the loss is 0 when the two agree), weighted per anchor by the teacher's confidence
``max_c p_t`` and normalised by the sum of those weights: background anchors, where the teacher is unsure of nothing,
carry little weight, as in Ultralytics' own confidence-weighted distillation.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .registry import KDLoss, PassOutputs, register_kd_loss

__all__ = ("ClassScoreLoss", "class_score_kl")


def class_score_kl(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Confidence-weighted binary KL between class scores of shape (B, nc, A); a scalar."""
    s, t = student_logits.float(), teacher_logits.detach().float()
    p = t.sigmoid()
    kl = F.binary_cross_entropy_with_logits(s, p, reduction="none") - F.binary_cross_entropy_with_logits(
        t, p, reduction="none")  # (B, nc, A)
    w = p.amax(1, keepdim=True)  # (B, 1, A): the teacher's confidence in its best class
    return (kl * w).sum() / w.sum().clamp_min(1e-6)


@register_kd_loss
class ClassScoreLoss(KDLoss):
    """Class-score distillation from the teacher's sigmoid scores, weighted by its confidence."""

    name = "cls"
    default_weight = 1.0
    needs_head = True

    def forward(self, student: PassOutputs, teacher: PassOutputs) -> tuple[torch.Tensor, None]:
        """The weighted binary KL over every anchor and class."""
        with torch.autocast(student.head["scores"].device.type, enabled=False):
            return class_score_kl(student.head["scores"], teacher.head["scores"]), None
