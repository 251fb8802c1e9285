"""The distiller: runs the teacher pass, the chosen distillation losses and the weight schedule, attached to a model.

``model.distiller`` is called from ``GhostDetectionModel.loss`` in the quantized phase. It knows four teachers:

- ``float_self="cotrain"``: the model's own float self (quantizers bypassed, its own BatchNorm set), trained every step
  with its own detection loss; the student learns from its detached outputs; one optimizer step over the summed
  gradients (switchable-precision training, selfteach.md §3);
- ``float_self="frozen"``: the float self as it is when the quantized phase starts (the float model QAT starts from),
  kept frozen: no separate teacher to train, and it cannot degrade while the student learns;
- ``float_self="shared"``: the float self sharing the student's BatchNorm, run without gradient with BN statistics
  frozen (GHOST's reading of the method, the project's first implementation);
- ``teacher=path.pt``: a frozen float model of the same architecture (an ``ExternalTeacher``).

Loss items: ``kd_loss`` (the weighted sum of the terms), ``kd_<name>`` per term when several are chosen, and
``fp_loss`` (the float self's detection loss) when it is co-trained; they are 0 outside the quantized phase, so the
progress bar and results.csv keep the same columns throughout.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ghost_yolo.quant.apply import QuantState, float_mode, quant_state

from .registry import KD_LOSSES, KDLoss, PassOutputs, head_outputs
from .teacher import ExternalTeacher, bn_stats_frozen, capture_features, teacher_autocast

__all__ = ("FLOAT_SELF_MODES", "SCHEDULES", "Distiller")

FLOAT_SELF_MODES = ("frozen", "cotrain", "shared")
SCHEDULES = ("constant", "cosine")
COSINE_END = 0.01  # the cosine schedule's final factor (YOLOv6's QAT: 1 -> 0.01)


class _StopForward(Exception):
    """Raised after the last distilled layer: a teacher pass that needs no head skips the layers no loss reads."""


def _stop_forward(module: nn.Module, args: Any, output: Any) -> None:
    """Forward hook that ends the teacher pass."""
    raise _StopForward


class Distiller(nn.Module):
    """Distillation losses with their teacher, attached to a detection model as ``model.distiller``.

    Args:
        terms: ``{name: KDLoss}`` in the order ``kd=`` named them.
        weights: ``{name: weight}`` (the loss's default weight times ``kd_weight``).
        layers: Indices into ``model.model`` whose outputs are captured for layer-level losses (OST).
        float_self: ``frozen``, ``cotrain`` or ``shared`` (see the module docstring); ignored with an external teacher.
        schedule: ``constant`` or ``cosine`` (1 -> 0.01 over the quantized phase).
        bf16_teacher: Run a no-gradient teacher pass in bfloat16 on CPU (None: where the CPU has native bf16).
    """

    def __init__(self, terms: dict[str, KDLoss], weights: dict[str, float], layers: Sequence[int],
                 float_self: str, schedule: str, bf16_teacher: bool | None = None):
        """Hold the losses; the trainer sets ``teacher`` and the schedule's progress."""
        super().__init__()
        if not terms:
            raise ValueError("a distiller needs at least one loss")
        if float_self not in FLOAT_SELF_MODES:
            raise ValueError(f"float_self={float_self!r}: use one of {', '.join(FLOAT_SELF_MODES)}")
        if schedule not in SCHEDULES:
            raise ValueError(f"kd_schedule={schedule!r}: use one of {', '.join(SCHEDULES)}")
        bad = {k: w for k, w in weights.items() if w < 0}
        if bad:
            raise ValueError(f"distillation weights must be >= 0, got {bad} (kd_weight)")
        self.terms = nn.ModuleDict(terms)
        self.weights = {k: float(weights[k]) for k in terms}
        self.layers = [int(i) for i in layers]
        self.float_self, self.schedule, self.bf16_teacher = float_self, schedule, bf16_teacher
        self.teacher = ExternalTeacher()
        self.progress = 0.0  # fraction of the quantized phase done (set by the trainer every batch)
        self.enabled = True  # False: kd=auto settled on no distillation once the HQ widths were known (columns stay 0)

    def extra_repr(self) -> str:
        """Weights, teacher mode and schedule in the module print."""
        return f"weights={self.weights}, layers={self.layers}, float_self={self.float_self}, schedule={self.schedule}"

    # What it reports ----------------------------------------------------------------------------------------------
    @property
    def cotrained(self) -> bool:
        """The float self is trained with its own detection loss (and no external teacher replaces it)."""
        return self.float_self == "cotrain" and not self.teacher

    @property
    def needs_head(self) -> bool:
        """A chosen loss reads the Detect head's outputs."""
        return any(t.needs_head for t in self.terms.values())

    def item_names(self) -> list[str]:
        """The loss columns this distiller adds after the detection loss's."""
        names = ["kd_loss"]
        if len(self.terms) > 1:
            names += [f"kd_{k}" for k in self.terms]
        if self.float_self == "cotrain":
            names.append("fp_loss")
        return names

    def describe(self) -> str:
        """One line for logs and the run summary."""
        teacher = (f"frozen teacher {self.teacher.path}" if self.teacher and not self.teacher.own else
                   "its float self, frozen at the start of the quantized phase" if self.float_self == "frozen" else
                   "its co-trained float self (own BatchNorm, own detection loss)" if self.cotrained else
                   "its float self (shared BatchNorm, no gradient)")
        terms = " + ".join(f"{k} x{w:g}" for k, w in self.weights.items())
        return f"{terms} from {teacher}, {self.schedule} weight schedule"

    def scale(self) -> float:
        """The schedule's factor at the current progress of the quantized phase."""
        if self.schedule == "constant":
            return 1.0
        p = min(max(float(getattr(self, "progress", 0.0)), 0.0), 1.0)
        return COSINE_END + (1 - COSINE_END) * 0.5 * (1 + math.cos(math.pi * p))

    def epoch_stats(self) -> dict[str, dict]:
        """Per-term statistics of the epoch (reset on read), e.g. ``{'ost': {layer: open fraction}}``."""
        return {k: s for k, t in self.terms.items() if (s := t.epoch_stats()) is not None}

    # Passes -------------------------------------------------------------------------------------------------------
    def active(self, model: nn.Module) -> bool:
        """Distil only in the quantized phase (before it the float self would teach itself: nothing to learn)."""
        return getattr(self, "enabled", True) and quant_state(model) is QuantState.ACTIVE

    def _run(self, net: nn.Module, img: torch.Tensor, full: bool) -> tuple[PassOutputs, Any]:
        """One forward of ``net`` capturing ``layers``: (what the losses read, the raw predictions or None).

        ``full=False`` stops after the last captured layer.
        """
        preds = None
        with capture_features(net, self.layers) as feats:
            stop = None if full or not self.layers else net.model[self.layers[-1]].register_forward_hook(_stop_forward)
            try:
                preds = net.predict(img)
            except _StopForward:
                pass
            finally:
                if stop is not None:
                    stop.remove()
        return PassOutputs(feats, head_outputs(preds) if full and self.needs_head else None), preds

    @torch.no_grad()
    def teacher_outputs(self, model: nn.Module, img: torch.Tensor) -> PassOutputs:
        """A no-gradient teacher pass: the external teacher, or the float self with the student's BN statistics left
        untouched. The head runs only when a chosen loss reads it."""
        net = self.teacher.module if self.teacher else model
        frozen = contextlib.nullcontext() if self.teacher else bn_stats_frozen(model)
        with float_mode(net), frozen, teacher_autocast(img.device, getattr(self, "bf16_teacher", None)):
            out, _ = self._run(net, img, full=self.needs_head)
        return out

    # Loss ---------------------------------------------------------------------------------------------------------
    def zero_items(self, like: torch.Tensor) -> dict[str, torch.Tensor]:
        """The distiller's loss columns at 0 (validation, the float phase)."""
        return dict.fromkeys(self.item_names(), like.new_zeros(()))

    def distill(self, student: PassOutputs, teacher: PassOutputs) -> tuple[torch.Tensor, torch.Tensor,
                                                                           dict[str, torch.Tensor]]:
        """(weighted sum of the terms at the schedule's factor, auxiliary terms of value 0, {kd_name: weighted value})."""
        scale = self.scale()
        total = aux = None
        values = {}
        for name, term in self.terms.items():
            weight = self.weights[name] * scale
            if weight == 0:  # measured, but kept out of the graph: its zero gradients would still enter the clip
                with torch.no_grad():  # norm and weight decay of the loss's own parameters (OST's gate)
                    value, _ = term(student, teacher)
                values[f"kd_{name}"] = value.new_zeros(())
                total = value.new_zeros(()) if total is None else total
                continue
            value, extra = term(student, teacher)
            weighted = weight * value
            values[f"kd_{name}"] = weighted.detach()
            total = weighted if total is None else total + weighted
            if extra is not None:  # a loss's own parameters (OST's gate) learn as strongly as kd_weight asks
                extra = extra * (weight / term.default_weight if term.default_weight else scale)
                aux = extra if aux is None else aux + extra
        return total, (total.new_zeros(()) if aux is None else aux), values

    def loss(self, model: nn.Module, batch: dict[str, Any], preds: Any,
             detection_loss: Callable[[dict[str, Any], Any], tuple[torch.Tensor, dict[str, torch.Tensor]]]
             ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Detection loss plus distillation (and the co-trained float self's detection loss).

        Returns the loss vector (times batch size, like Ultralytics' criterion) with the distillation term (and
        ``fp_loss``) appended, and the loss items with the distiller's columns.
        """
        if preds is not None or not model.training or not self.active(model):
            loss, items = detection_loss(batch, preds)
            zeros = self.zero_items(next(iter(items.values())))
            if preds is None and self.cotrained and model.training:  # float phase: fp_loss is the same model's loss
                zeros["fp_loss"] = sum(items.values()).detach()
            return loss, {**items, **zeros}
        img, bs = batch["img"], batch["img"].shape[0]
        student, s_preds = self._run(model, img, full=True)
        loss, items = detection_loss(batch, s_preds)
        parts = [loss.reshape(-1)]
        fp_items = {}
        if self.cotrained:
            with float_mode(model):
                teacher, t_preds = self._run(model, img, full=True)
            fp_loss, fp_det = detection_loss(batch, t_preds)
            parts.append(fp_loss.sum().reshape(1))
            fp_items["fp_loss"] = sum(fp_det.values()).detach()
            teacher = teacher.detached()
        else:
            teacher = self.teacher_outputs(model, img)
            if self.float_self == "cotrain":  # external teacher: the column stays, at 0
                fp_items["fp_loss"] = loss.new_zeros(())
        kd, aux, values = self.distill(student, teacher)
        parts.insert(1, ((kd + aux) * bs).to(loss.dtype).reshape(1))
        kd_items = {"kd_loss": kd.detach(), **(values if len(self.terms) > 1 else {})}
        return torch.cat(parts), {**items, **kd_items, **fp_items}

    @classmethod
    def from_recipe(cls, model: nn.Module, recipe: Any, bf16_teacher: bool | None = None) -> Distiller:
        """The distiller a ``DistillRecipe`` asks for, for ``model``: its losses on the recipe's layers, weighted by
        ``kd_weight``, with the recipe's float self mode and schedule (the teacher itself is attached by the set-up)."""
        from .teacher import feature_channels, parse_kd_layers

        names = recipe.losses
        unknown = [n for n in names if n not in KD_LOSSES]
        if not names or unknown:
            raise ValueError(f"unknown distillation loss(es) {unknown or names}: known {', '.join(KD_LOSSES)}")
        layers = parse_kd_layers(recipe.kd_layers, model)
        channels = feature_channels(model, layers)
        keys = recipe.args()
        terms = {n: KD_LOSSES[n].build(model, layers, channels, keys) for n in names}
        weights = {n: KD_LOSSES[n].default_weight * recipe.kd_weight for n in names}
        needs_layers = any(t.needs_layers for t in terms.values())
        return cls(terms, weights, layers if needs_layers else [], float_self=recipe.float_self,
                   schedule=recipe.kd_schedule, bf16_teacher=bf16_teacher)
