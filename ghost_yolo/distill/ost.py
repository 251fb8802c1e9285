"""OST, one-to-one self-teaching: layer i of the quantized student learns the spatial attention of teacher layer i.

For a feature map F (B x C x H x W) the *value* is ``mean_c(F^2)`` flattened and L2-normalised over H x W; the distance
of a (sample, layer) pair is ``mean_hw((v_s - v_t)^2)``. The SCM gate decides per sample and layer whether the teacher
speaks; its logit is ``<key, query> / sqrt(qk_dim)`` with the query from the teacher's channel means (Linear + BN) and
the key from the student's (Linear + BN + ReLU).

Training the gate. With the distillation loss alone, a closed gate always wins (every distance is >= 0). Here the gate
instead learns a relative price: its straight-through gradient is ``d / mean_batch(d) - 1`` per layer, so it learns to
open where the teacher and student disagree no more than usual on that layer and to close on the outliers, where the
float teacher's features are the ones a low-bit layer cannot follow. The gate's term has value 0 (the reported
``kd_loss`` is the gated distance only); the student's features get gradient from the distances of open gates, and
the key reads them detached, so the student cannot lower its loss by steering its gate.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .registry import KDLoss, PassOutputs, register_kd_loss
from .scm import scm_gate

__all__ = ("OSTDistiller", "OSTLoss", "attention_value", "layer_distance")

QK_DIM = 128  # width of the gate's query/key projections (the reference's)


class _ChannelEnergy(torch.autograd.Function):
    """``mean_c(F^2)`` (B x H x W, fp32) with a one-pass backward ``dF = F * (2 / C) * grad``.

    Autograd's ``pow`` + ``mean`` backward materialises several full-size tensors per distilled layer; OST reads 17
    feature maps a step, so this is most of its backward cost.
    """

    @staticmethod
    def forward(ctx, f: torch.Tensor) -> torch.Tensor:
        """Channel mean of the squared features, in fp32 at least (fp16/bf16 features are upcast)."""
        ctx.save_for_backward(f)
        return f.to(torch.promote_types(f.dtype, torch.float32)).pow(2).mean(1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        """``F * (2 / C) * grad`` broadcast over channels, in the feature dtype."""
        (f,) = ctx.saved_tensors
        coef = (grad * (2.0 / f.shape[1])).unsqueeze(1)
        return (f.to(coef.dtype) * coef).to(f.dtype)


def attention_value(f: torch.Tensor) -> torch.Tensor:
    """B x HW spatial attention ``mean_c(F^2)``, L2-normalised per sample (computed in fp32)."""
    return F.normalize(_ChannelEnergy.apply(f).flatten(1), dim=1)


def layer_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Per-sample OST distance ``mean_hw((v_s - v_t)^2)`` between two feature maps of the same shape (B,)."""
    if student.shape != teacher.shape:
        raise ValueError(f"OST pairs features one-to-one: student {tuple(student.shape)} vs teacher "
                         f"{tuple(teacher.shape)}")
    return (attention_value(student) - attention_value(teacher)).pow(2).mean(1)


def _projection(c: int, relu: bool) -> nn.Sequential:
    """Linear + BN (+ ReLU) from C channel means to the gate's query/key space."""
    return nn.Sequential(nn.Linear(c, QK_DIM), nn.BatchNorm1d(QK_DIM), *([nn.ReLU()] if relu else []))


@register_kd_loss
class OSTLoss(KDLoss):
    """The OST loss with its SCM gate (``kd=ost``): layer i of the student learns the spatial attention of layer i.

    Its query/key projections train with the model (they are in its state dict, so resume restores them) and are
    dropped when the model is fused for inference or export.

    Args:
        layers: Indices into ``model.model`` whose outputs are distilled (for logs).
        channels: Output channels of those layers.
        gate: Use the SCM gate (False: every pair is taught).
        tau: Gate temperature.
    """

    name = "ost"
    default_weight = 10.0  # README: a layer's distance is at most 4 / (H W); 10 keeps it a few % of the detection loss
    needs_layers = True
    stats_file = "gates.csv"
    stats_label = "OST gate open fraction by layer"

    def __init__(self, layers: Sequence[int], channels: Sequence[int], gate: bool, tau: float):
        """Build one query and one key projection per distilled layer."""
        super().__init__()
        if len(layers) != len(channels):
            raise ValueError(f"{len(layers)} layers but {len(channels)} channel counts")
        if tau <= 0:
            raise ValueError(f"kd_tau={tau} must be > 0")
        self.layers, self.gated, self.tau = [int(i) for i in layers], bool(gate), tau
        if self.gated:
            self.query = nn.ModuleList(_projection(c, relu=False) for c in channels)
            self.key = nn.ModuleList(_projection(c, relu=True) for c in channels)
        # gate statistics of the current epoch (integers: not averaged by EMA, not halved in checkpoints)
        self.register_buffer("open_count", torch.zeros(len(self.layers), dtype=torch.long), persistent=False)
        self.register_buffer("sample_count", torch.zeros((), dtype=torch.long), persistent=False)

    @classmethod
    def build(cls, model: nn.Module, layers: Sequence[int], channels: Sequence[int], args: dict[str, Any]) -> OSTLoss:
        """From the trainer's ``kd_gate`` and ``kd_tau``."""
        return cls(layers, channels, gate=bool(args["kd_gate"]), tau=float(args["kd_tau"]))

    def extra_repr(self) -> str:
        """Layers and gate settings in the module print."""
        return f"layers={self.layers}, gate={self.gated}, tau={self.tau}"

    # Gate ---------------------------------------------------------------------------------------------------------
    @staticmethod
    def _project(proj: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
        """Apply a projection; a batch of one uses BN's running statistics (batch statistics need two samples)."""
        if proj.training and x.shape[0] < 2:
            proj.eval()
            try:
                return proj(x)
            finally:
                proj.train()
        return proj(x)

    def gate_logits(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        """B x L logits: the diagonal ``<key_b, query_b> / sqrt(qk_dim)`` for every distilled layer."""
        logits = []
        for key, query, s, t in zip(self.key, self.query, student, teacher):
            k = self._project(key, s.detach().float().mean((2, 3)))
            q = self._project(query, t.float().mean((2, 3)))
            logits.append((k * q).sum(1) / math.sqrt(QK_DIM))
        return torch.stack(logits, 1)

    def gates(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        """B x L gates (hard values, straight-through gradient while training; all ones without SCM)."""
        if not self.gated:
            return torch.ones(student[0].shape[0], len(self.layers), device=student[0].device)
        return scm_gate(self.gate_logits(student, teacher), self.tau, self.training)

    # Loss ---------------------------------------------------------------------------------------------------------
    def gated_distance(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sum over layers of the batch mean of gated distances, gate objective (value 0), gates B x L).

        Computed in fp32 outside autocast whatever the training precision.
        """
        if len(student) != len(self.layers) or len(teacher) != len(self.layers):
            raise ValueError(f"expected features of {len(self.layers)} layers, got {len(student)} and {len(teacher)}")
        device = student[0].device
        with torch.autocast(device.type, enabled=False):
            d = torch.stack([layer_distance(s, t) for s, t in zip(student, teacher)], 1)  # B x L
            g = self.gates(student, teacher)
            kd = (g.detach() * d).mean(0).sum()
            if self.gated and self.training:
                dd = d.detach()
                price = dd / dd.mean(0, keepdim=True).clamp_min(1e-12) - 1
                gate_term = ((g - g.detach()) * price).mean(0).sum()
            else:
                gate_term = kd.new_zeros(())
        return kd, gate_term, g.detach()

    def forward(self, student: PassOutputs, teacher: PassOutputs) -> tuple[torch.Tensor, torch.Tensor]:
        """The gated OST distance and the gate's objective; counts open gates for the epoch's log."""
        kd, gate_term, gates = self.gated_distance(student.feats, teacher.feats)
        if self.training:
            self.open_count += gates.sum(0).long()
            self.sample_count += gates.shape[0]
        return kd, gate_term

    def summary(self, stats: dict[str, float] | None) -> dict[str, Any]:
        """The gate setting and its last epoch's open fractions (``gates.csv``)."""
        return {"gate": self.gated, "gate_open_last_epoch": stats}

    def plot_stats(self, csv: Path, on_plot: Any = None) -> None:
        """Heat map of the gates, epochs x layers (``gates.png``)."""
        from ghost_yolo.utils.plotting import plot_gates

        plot_gates(csv, csv.with_suffix(".png"), on_plot=on_plot)

    def epoch_stats(self, reset: bool = True) -> dict[int, float] | None:
        """Open fraction of each layer's gate since the last reset ({layer: fraction}; None before any step)."""
        n = int(self.sample_count)
        if n == 0 or not self.gated:
            return None
        out = {i: float(c) / n for i, c in zip(self.layers, self.open_count.tolist())}
        if reset:
            self.open_count.zero_()
            self.sample_count.zero_()
        return out


OSTDistiller = OSTLoss  # checkpoints written before the loss registry pickled the OST module under this name
