"""Activation annealing: conv blocks whose activation slides from SiLU to the model's own during the first epochs.

A ReLU model started from a SiLU model's weights (``pretrained=silu_best.pt``, the deploy-fast route) loses what those
weights computed the moment every SiLU becomes a ReLU: all the small negative outputs SiLU passed on are cut at once,
in every layer. ``ActBlend`` computes ``(1 - t) * SiLU(x) + t * act(x)``; the trainer raises ``t`` from 0 to 1 over
``act_anneal`` epochs, so the weights follow the change, then puts the plain activation back (``unblend``), and the
model that trains on, validates and exports is the YAML's own.
"""

from __future__ import annotations

import torch
from torch import nn
from ultralytics.nn.modules import Conv

from .qconv import QuantAct

__all__ = ("ActBlend", "blend_activations", "set_blend", "unblend")


class ActBlend(nn.Module):
    """``start(x)`` at ``t = 0``, ``end(x)`` at ``t = 1``, their linear blend between (``t`` is set by the trainer)."""

    def __init__(self, start: nn.Module, end: nn.Module, t: float = 0.0) -> None:
        """``start``: the activation the weights were trained with; ``end``: the one the model keeps."""
        super().__init__()
        self.start, self.end, self.t = start, end, float(t)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Blend of both activations at the current ``t`` (one of them alone at either end)."""
        if self.t >= 1.0:
            return self.end(x)
        if self.t <= 0.0:
            return self.start(x)
        return torch.lerp(self.start(x), self.end(x), self.t)

    def extra_repr(self) -> str:
        """Shown in the model's printout."""
        return f"t={self.t:.3f}"


def _holders(model: nn.Module):
    """(module, attribute) of every conv block's activation: ``Conv.act``, or the activation a ``QuantAct`` wraps."""
    for m in model.modules():
        if isinstance(m, Conv):
            yield (m.act, "act") if isinstance(m.act, QuantAct) else (m, "act")


def blend_activations(model: nn.Module, start: type[nn.Module] = nn.SiLU) -> int:
    """Wrap every conv block's activation that is not ``start`` (nor Identity) in an ``ActBlend`` from ``start``, at
    ``t = 0``; returns how many were wrapped (0: the model's activations are ``start`` already)."""
    n = 0
    for holder, name in _holders(model):
        act = getattr(holder, name)
        if not isinstance(act, (start, nn.Identity, ActBlend)):
            setattr(holder, name, ActBlend(start(), act))
            n += 1
    return n


def set_blend(model: nn.Module, t: float) -> None:
    """Set every ``ActBlend``'s position (clamped to [0, 1])."""
    for m in model.modules():
        if isinstance(m, ActBlend):
            m.t = min(max(float(t), 0.0), 1.0)


def unblend(model: nn.Module) -> int:
    """Put each ``ActBlend``'s ``end`` activation back in its place; returns how many were replaced."""
    n = 0
    for holder, name in _holders(model):
        act = getattr(holder, name)
        if isinstance(act, ActBlend):
            setattr(holder, name, act.end)
            n += 1
    return n
