"""SwitchableBatchNorm2d: one BatchNorm for the quantized path and one for the float self, over shared conv weights.

Self-teaching keeps a live full-precision teacher inside the quantized model: the same conv weights with every quantizer
bypassed. Its activations are distributed differently from the quantized ones, so a BatchNorm shared by both paths
serves neither (the float self of a QAT run loses most of its mAP). As in switchable-precision networks (Any-Precision
DNNs' ``SwitchBatchNorm2d``), each path gets its own affine parameters and running statistics. The module *is* the
quantized path's BatchNorm (same parameter names, so float checkpoints load and ``fuse`` folds it as before) and holds
the float self's as ``float_bn``; ``use_float`` (a plain attribute, set by ``quant.apply.float_mode``) picks the set.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ("SwitchableBatchNorm2d", "add_float_bn", "float_bn_layers", "has_float_bn", "sync_float_bn")


class SwitchableBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d of the quantized path, with a second BatchNorm (``float_bn``) for the float self.

    Attributes:
        float_bn (nn.BatchNorm2d): Affine parameters and running statistics of the float path.
        use_float (bool): Normalise with ``float_bn`` (set while the quantizers are bypassed).
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float | None = 0.1, affine: bool = True,
                 track_running_stats: bool = True) -> None:
        """Two BatchNorms of the same shape and settings."""
        super().__init__(num_features, eps, momentum, affine, track_running_stats)
        self.float_bn = nn.BatchNorm2d(num_features, eps, momentum, affine, track_running_stats)
        self.use_float = False

    @classmethod
    def from_bn(cls, bn: nn.BatchNorm2d) -> SwitchableBatchNorm2d:
        """Replace ``bn``: both sets start as copies of its parameters and statistics."""
        m = cls(bn.num_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        m.load_state_dict(bn.state_dict(), strict=False)
        m.to(device=bn.weight.device if bn.affine else None)
        m.sync_float()
        m.train(bn.training)
        return m

    @torch.no_grad()
    def sync_float(self) -> None:
        """Copy the quantized path's parameters and statistics into ``float_bn`` (the float self starts from them)."""
        own = {k: v for k, v in super().state_dict().items() if not k.startswith("float_bn.")}
        self.float_bn.load_state_dict(own)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise with the float self's BatchNorm when ``use_float``, else with the quantized path's."""
        return self.float_bn(x) if self.use_float else super().forward(x)

    def extra_repr(self) -> str:
        """BatchNorm's description plus the switch."""
        return f"{super().extra_repr()}, use_float={self.use_float}"


def float_bn_layers(model: nn.Module) -> list[SwitchableBatchNorm2d]:
    """Every switchable BatchNorm of a model, in module order."""
    return [m for m in model.modules() if isinstance(m, SwitchableBatchNorm2d)]


def has_float_bn(model: nn.Module) -> bool:
    """Whether the model carries a float self's BatchNorm set."""
    return any(True for _ in float_bn_layers(model))


def add_float_bn(model: nn.Module) -> int:
    """Give every BatchNorm2d of ``model`` a float-self twin (in place); returns how many were switched."""
    n = 0
    for m in list(model.modules()):
        if isinstance(m, SwitchableBatchNorm2d):
            continue  # its float_bn is the twin, not a BatchNorm to switch (calling this twice changes nothing)
        for attr, child in list(m.named_children()):
            if type(child) is nn.BatchNorm2d:
                setattr(m, attr, SwitchableBatchNorm2d.from_bn(child))
                n += 1
    return n


def sync_float_bn(model: nn.Module) -> None:
    """Start the float self's BatchNorms from the quantized path's (at the start of the quantized phase)."""
    for m in float_bn_layers(model):
        m.sync_float()
