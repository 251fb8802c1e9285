"""The one set-up of a quantized (and distilled) model: what ``GhostTrainer`` does to its model, and what the tests'
fixtures and the benchmarks call to get the same model without a trainer.

``setup_qat(model, quant, distill)`` prepares the model from the two recipes: quantized layers inserted (quantizers off,
every width 8) with the recipe's policy and output grids, fixed widths set, and the distiller attached with its teacher
(a ``teacher=`` checkpoint loaded and checked, or the float self: a co-trained one gets its own BatchNorm set now, before
the optimizer is built). ``start_qat(model, quant, images)`` is the quantized start: the HQ search resolves ``hq`` on the
weights the model has then, the float self is frozen as teacher (``float_self=frozen``), the quantizers are switched on
and calibrated on a batch. Passing ``images`` to ``setup_qat`` does both at once.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from ghost_yolo.distill import Distiller, DistillRecipe, freeze_float_self, load_teacher
from ghost_yolo.nn.switch_bn import sync_float_bn
from ghost_yolo.quant import (
    QuantRecipe,
    add_float_self,
    average_bits,
    calibrate,
    prepare,
    quant_layers,
    set_bits,
    set_quant_enabled,
)

__all__ = ("QATStart", "setup_qat", "start_qat")


def setup_qat(model: nn.Module, quant: QuantRecipe | None, distill: DistillRecipe | None = None, *,
              images: torch.Tensor | None = None, device: torch.device | str = "cpu", bf16_teacher: bool | None = None,
              resumed_teacher: Path | None = None) -> nn.Module:
    """Prepare ``model`` (in place) for quantization-aware training as ``quant`` and ``distill`` ask; returns it.

    Args:
        model: A ghost detection model, float (it is prepared) or already quantized (a checkpoint: kept as it is).
        quant: The run's quantization, or None / ``bits=32`` for a float run (nothing is inserted).
        distill: The run's distillation, or None / ``kd=none``.
        images: A batch to start the quantized phase on at once (``start_qat``); None: the trainer starts it later.
        device: Where a ``teacher=`` checkpoint is loaded.
        bf16_teacher: Run no-gradient teacher passes in bfloat16 on CPU (None: where the CPU has native bf16).
        resumed_teacher: ``float_teacher.pt`` of a run being resumed: its frozen float self teaches again.
    """
    if quant is not None and quant.bits is not None and not (quant.is_float and not quant_layers(model)):
        prepare(model, quant.config(enabled=False))
        if not quant.searches:
            set_bits(model, quant.widths(model)[0])
    if distill is not None and distill.losses:
        attach_distiller(model, distill, device, bf16_teacher, resumed_teacher)
    if images is not None:
        start_qat(model, quant, images, distill)
    return model


def attach_distiller(model: nn.Module, recipe: DistillRecipe, device: torch.device | str = "cpu",
                     bf16_teacher: bool | None = None, resumed_teacher: Path | None = None) -> Distiller:
    """``model.distiller`` from the recipe, with its teacher: ``teacher=`` (or a resumed run's frozen float self)
    loaded and checked against the student, or the float self (``cotrain``: its BatchNorm set added now)."""
    distiller = Distiller.from_recipe(model, recipe, bf16_teacher=bf16_teacher)
    teacher = recipe.teacher
    own = False
    if not teacher and recipe.float_self == "frozen" and resumed_teacher is not None and resumed_teacher.exists():
        teacher, own = str(resumed_teacher), True  # the frozen float self of the run being resumed
    if teacher:
        from ghost_yolo.distill.teacher import parse_kd_layers

        layers = distiller.layers or parse_kd_layers(recipe.kd_layers, model)
        distiller.teacher = load_teacher(teacher, model, layers, device=device, head=distiller.needs_head)
        distiller.teacher.own = own
    elif recipe.float_self == "cotrain":
        add_float_self(model)  # before the optimizer is built: its float BatchNorm set trains from the start
    model.distiller = distiller
    return distiller


class QATStart(NamedTuple):
    """What the quantized start chose: the widths, the HQ search's distortions (None without a search), and the
    distillation recipe with a pending ``kd=auto`` settled by those widths."""

    bits: dict[str, int]
    distortions: dict | None
    distill: DistillRecipe | None


def start_qat(model: nn.Module, quant: QuantRecipe | None, images: torch.Tensor, distill: DistillRecipe | None = None,
              progress: bool = False) -> QATStart:
    """Start the quantized phase: ``hq`` resolved by the search on the current weights (other specs were set at
    ``setup_qat``), a pending ``kd=auto`` settled by the average bits it chose (no distillation: the distiller is
    switched off, its loss columns stay at 0), a co-trained float self's BatchNorm synced, the frozen float self
    snapshotted as teacher, quantizers on and calibrated on ``images``."""
    distortions = None
    if quant is not None and quant.searches:
        bits, distortions = quant.widths(model, progress=progress)
        set_bits(model, bits)
    if distill is not None and distill.auto_pending:
        distill = distill.settle(average_bits(model))
        if getattr(model, "distiller", None) is not None:
            model.distiller.enabled = bool(distill.losses)
    sync_float_bn(model)  # a co-trained float self starts from the float model's BatchNorm
    freeze_float_self(model)
    set_quant_enabled(model, True)
    calibrate(model, images)
    return QATStart({n: m.bits for n, m in quant_layers(model).items()}, distortions, distill)
