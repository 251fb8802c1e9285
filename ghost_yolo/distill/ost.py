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

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ghost_yolo.quant.apply import float_mode

from .scm import scm_gate
from .teacher import (
    ExternalTeacher,
    bn_stats_frozen,
    capture_features,
    teacher_autocast,
)

__all__ = ("OSTDistiller", "attention_value", "layer_distance")

QK_DIM = 128  # width of the gate's query/key projections (the reference's)


class _StopForward(Exception):
    """Raised after the last distilled layer: the teacher pass skips the layers OST does not read."""


def _stop_forward(module: nn.Module, args: Any, output: Any) -> None:
    """Forward hook that ends the teacher pass."""
    raise _StopForward


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


class OSTDistiller(nn.Module):
    """The OST loss with its SCM gate, attached to a detection model as ``model.distiller``.

    Its query/key projections train with the model (they are in its state dict, so resume restores them) and are
    dropped when the model is fused for inference or export. The teacher is the model itself with its quantizers
    bypassed, or ``teacher`` (an ``ExternalTeacher``).

    Args:
        layers: Indices into ``model.model`` whose outputs are distilled.
        channels: Output channels of those layers.
        weight: ``kd_weight``, the factor on the summed per-layer distances.
        gate: Use the SCM gate (False: every pair is taught).
        tau: Gate temperature.
        bf16_teacher: Run the teacher pass in bfloat16 on CPU (None: where the CPU has native bf16; the trainer passes
            False for ``amp=False``).
    """

    def __init__(self, layers: Sequence[int], channels: Sequence[int], weight: float, gate: bool = True,
                 tau: float = 1.0, bf16_teacher: bool | None = None):
        """Build one query and one key projection per distilled layer."""
        super().__init__()
        if len(layers) != len(channels):
            raise ValueError(f"{len(layers)} layers but {len(channels)} channel counts")
        if weight < 0:
            raise ValueError(f"kd_weight={weight} must be >= 0")
        if tau <= 0:
            raise ValueError(f"kd_tau={tau} must be > 0")
        self.layers, self.weight, self.gated, self.tau = [int(i) for i in layers], float(weight), bool(gate), tau
        self.bf16_teacher = bf16_teacher
        if self.gated:
            self.query = nn.ModuleList(_projection(c, relu=False) for c in channels)
            self.key = nn.ModuleList(_projection(c, relu=True) for c in channels)
        # gate statistics of the current epoch (integers: not averaged by EMA, not halved in checkpoints)
        self.register_buffer("open_count", torch.zeros(len(self.layers), dtype=torch.long), persistent=False)
        self.register_buffer("sample_count", torch.zeros((), dtype=torch.long), persistent=False)
        self.teacher = ExternalTeacher()

    def extra_repr(self) -> str:
        """Layers, weight and gate settings in the module print."""
        return f"layers={self.layers}, weight={self.weight}, gate={self.gated}, tau={self.tau}"

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
    def forward(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(kd loss: weighted sum over layers of the batch mean of gated distances, gate objective (value 0), gates).

        Computed in fp32 outside autocast whatever the training precision.
        """
        if len(student) != len(self.layers) or len(teacher) != len(self.layers):
            raise ValueError(f"expected features of {len(self.layers)} layers, got {len(student)} and {len(teacher)}")
        device = student[0].device
        with torch.autocast(device.type, enabled=False):
            d = torch.stack([layer_distance(s, t) for s, t in zip(student, teacher)], 1)  # B x L
            g = self.gates(student, teacher)
            kd = self.weight * (g.detach() * d).mean(0).sum()
            if self.gated and self.training:
                dd = d.detach()
                price = dd / dd.mean(0, keepdim=True).clamp_min(1e-12) - 1
                gate_term = ((g - g.detach()) * price).mean(0).sum()
            else:
                gate_term = kd.new_zeros(())
        return kd, gate_term, g.detach()

    # Teacher ------------------------------------------------------------------------------------------------------
    def active(self, model: nn.Module) -> bool:
        """Distil only in the quantized phase (before it the float self would teach itself: nothing to learn)."""
        return bool(model.yaml.get("quant", {}).get("enabled"))

    @torch.no_grad()
    def teacher_features(self, model: nn.Module, img: torch.Tensor) -> list[torch.Tensor]:
        """The teacher's features at ``self.layers`` for ``img``: no gradient, the student's BN statistics untouched."""
        net = self.teacher.module if self.teacher else model
        frozen = contextlib.nullcontext() if self.teacher else bn_stats_frozen(model)
        bf16 = getattr(self, "bf16_teacher", None)  # distillers pickled before the setting existed: auto
        with float_mode(net), frozen, teacher_autocast(img.device, bf16), \
                capture_features(net, self.layers) as feats:
            stop = net.model[self.layers[-1]].register_forward_hook(_stop_forward)  # the head is not needed
            try:
                net.predict(img)
            except _StopForward:
                pass
            finally:
                stop.remove()
        return feats

    def loss(self, model: nn.Module, batch: dict[str, Any], preds: Any,
             detection_loss: Callable[[dict[str, Any], Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Detection loss plus OST: the student pass (features captured), the teacher pass, then both losses.

        Returns the loss vector (times batch size, like Ultralytics' criterion) with the distillation term appended,
        and the loss items with ``kd_loss`` (0 outside training, in eval and in the float phase: the validator and
        results.csv keep the same columns throughout).
        """
        if preds is not None or not model.training or not self.active(model):
            loss, items = detection_loss(batch, preds)
            zero = next(iter(items.values())).new_zeros(())
            return loss, {**items, "kd_loss": zero}
        img = batch["img"]
        with capture_features(model, self.layers) as student:
            preds = model.predict(img)
        teacher = self.teacher_features(model, img)
        loss, items = detection_loss(batch, preds)
        kd, gate_term, gates = self(student, teacher)
        self.open_count += gates.sum(0).long()
        self.sample_count += gates.shape[0]
        extra = ((kd + gate_term) * img.shape[0]).to(loss.dtype).reshape(1)
        return torch.cat((loss.reshape(-1), extra)), {**items, "kd_loss": kd.detach()}

    def open_fractions(self, reset: bool = True) -> dict[int, float] | None:
        """Open fraction of each layer's gate since the last reset ({layer: fraction}; None before any step)."""
        n = int(self.sample_count)
        if n == 0:
            return None
        out = {i: float(c) / n for i, c in zip(self.layers, self.open_count.tolist())}
        if reset:
            self.open_count.zero_()
            self.sample_count.zero_()
        return out
