"""The distillation-loss registry: ``kd=ost``, ``kd=cls+dfl``, ``kd=cwd+cls+dfl`` pick losses by name.

Every loss is a ``KDLoss``: it reads what both passes produced (``PassOutputs``: the features of the distilled layers
and, when it asks for it, the Detect head's raw outputs) and returns a scalar. Adding a loss means one module with a
``KDLoss`` subclass decorated by ``@register_kd_loss`` and its import in ``distill/__init__.py``; the distiller, the
teacher pass and the trainer read only this interface.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = ("KD_LOSSES", "KDLoss", "PassOutputs", "TemperatureKDLoss", "head_outputs",
           "parse_kd", "register_kd_loss")

KD_LOSSES: dict[str, type[KDLoss]] = {}


@dataclass
class PassOutputs:
    """What one pass (student or teacher) gives the losses.

    Attributes:
        feats: Outputs of the distiller's layers (``kd_layers``), in that order.
        head: The Detect head's training outputs, or None when no chosen loss needs the head: ``boxes``
            (B, 4 * reg_max, A) DFL logits, ``scores`` (B, nc, A) class logits, ``feats`` the head's input maps.
    """

    feats: list[torch.Tensor]
    head: dict[str, Any] | None = None

    def detached(self) -> PassOutputs:
        """A copy without gradient (what the student learns from)."""
        head = None if self.head is None else {k: [f.detach() for f in v] if isinstance(v, list) else v.detach()
                                                 for k, v in self.head.items()}
        return PassOutputs([f.detach() for f in self.feats], head)


def head_outputs(preds: Any) -> dict[str, Any]:
    """The Detect head's training dict from a model's training-mode output (one-to-many branch of end-to-end heads)."""
    if isinstance(preds, tuple):
        preds = preds[1]
    if isinstance(preds, dict) and "one2many" in preds:
        preds = preds["one2many"]
    if not isinstance(preds, dict) or not {"boxes", "scores", "feats"} <= preds.keys():
        raise TypeError("head-level distillation needs a Detect head's training outputs (boxes, scores, feats)")
    return preds


class KDLoss(nn.Module):
    """Base of the distillation losses.

    Class attributes:
        name: The name ``kd=`` uses.
        default_weight: Factor on the loss when ``kd_weight=1`` (see the README for how each was chosen).
        needs_head: The teacher pass must run the Detect head (class scores, box distributions, head inputs).
        needs_layers: The loss reads the features of ``kd_layers``.
        stats_file: The CSV in the run directory its ``epoch_stats`` are appended to each epoch (OST: gates.csv), or
            None when it keeps none; ``stats_label`` names them in the log.
    """

    name: ClassVar[str] = ""
    default_weight: ClassVar[float] = 1.0
    needs_head: ClassVar[bool] = False
    needs_layers: ClassVar[bool] = False
    stats_file: ClassVar[str | None] = None
    stats_label: ClassVar[str] = ""

    @classmethod
    def build(cls, model: nn.Module, layers: Sequence[int], channels: Sequence[int], args: dict[str, Any]) -> KDLoss:
        """Construct for ``model`` (``args``: the trainer's kd keys). Override when the loss needs more than none."""
        return cls()

    def forward(self, student: PassOutputs, teacher: PassOutputs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(loss, auxiliary term with value 0 that trains the loss's own parameters, or None)."""
        raise NotImplementedError

    def epoch_stats(self) -> dict[str, float] | None:
        """Per-epoch statistics to log (and reset), e.g. OST's gate open fractions; None when it keeps none."""
        return None

    def summary(self, stats: dict[str, float] | None) -> dict[str, Any]:
        """What the run summary's distillation section says of this loss, given the last row of its ``stats_file``."""
        return {}

    def plot_stats(self, csv: Path, on_plot: Any = None) -> None:
        """Plot its ``stats_file`` at the end of a run (nothing by default)."""


class TemperatureKDLoss(KDLoss):
    """A loss that softens distributions at ``kd_temp`` (``dfl``, ``cwd``)."""

    def __init__(self, temperature: float):
        """``temperature``: T of the softmax on both sides (the loss is scaled by T^2, as usual in distillation)."""
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"kd_temp={temperature} must be > 0")
        self.temperature = float(temperature)

    @classmethod
    def build(cls, model: nn.Module, layers: Sequence[int], channels: Sequence[int], args: dict[str, Any]
              ) -> TemperatureKDLoss:
        """From the trainer's ``kd_temp``."""
        return cls(float(args["kd_temp"]))

    def extra_repr(self) -> str:
        """Temperature in the module print."""
        return f"temperature={self.temperature}"


def register_kd_loss(cls: type[KDLoss]) -> type[KDLoss]:
    """Class decorator: make a loss available to ``kd=`` under ``cls.name``."""
    if not cls.name or cls.name in KD_LOSSES and KD_LOSSES[cls.name] is not cls:
        raise ValueError(f"distillation loss name {cls.name!r} is empty or taken")
    KD_LOSSES[cls.name] = cls
    return cls


def parse_kd(spec: Any) -> list[str]:
    """``kd`` to a list of loss names: ``none`` -> [], ``auto`` -> ['auto'], ``cls+dfl`` -> ['cls', 'dfl']."""
    if spec in (None, False):
        return []
    text = str(spec).strip().lower()
    if text in {"", "none", "false", "off"}:
        return []
    if text == "auto":
        return ["auto"]
    names = [n.strip() for n in text.replace(",", "+").replace(" ", "+").split("+") if n.strip()]
    unknown = [n for n in names if n not in KD_LOSSES]
    if unknown:
        raise ValueError(f"kd={spec}: unknown distillation loss {', '.join(map(repr, unknown))}. Known losses: "
                         f"{', '.join(KD_LOSSES)} (join several with '+', e.g. kd=cls+dfl), or kd=none / kd=auto")
    return list(dict.fromkeys(names))
