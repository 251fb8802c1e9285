"""DistillRecipe: what a run asks of self-distillation, read once from its arguments (``kd=auto`` resolved here).

Like ``QuantRecipe`` it is the request, fixed for the run: the losses, their weight factor, the teacher (the float self
in one of its modes, or a ``teacher=`` checkpoint), the schedule, temperatures, layers and gate. ``kd=auto`` is resolved
against the run's quantization (``distill.auto``) and the recipe keeps what it resolved to and why, so ``args.yaml``,
the checkpoint and the log all say what ran. Defaults come from ``cfg/default.yaml`` only.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from types import SimpleNamespace
from typing import Any

from torch import nn
from ultralytics.utils import LOGGER

from ghost_yolo.cfg import ghost_defaults
from ghost_yolo.quant.recipe import QuantRecipe

from .auto import resolve_auto_kd
from .distiller import FLOAT_SELF_MODES, SCHEDULES
from .registry import parse_kd

__all__ = ("DistillRecipe",)


@dataclass(frozen=True)
class DistillRecipe:
    """How a run distils (see the module docstring); build it with ``from_args``.

    Attributes:
        kd: The losses, joined by '+' (``auto`` already resolved; ``none`` = no distillation).
        kd_weight: Factor on every loss's default weight.
        float_self: ``frozen``, ``cotrain`` or ``shared``: the teacher when ``teacher`` is empty.
        teacher: A frozen float checkpoint of the same architecture, or None.
        kd_schedule: ``constant`` or ``cosine``.
        kd_temp, kd_layers, kd_gate, kd_tau: Temperature of dfl/cwd, OST's layers, gate and gate temperature.
        auto: Why ``kd=auto`` resolved as it did (None when ``kd`` was given).
        auto_pending: ``kd=auto`` on an HQ run: ``kd`` holds the candidate losses until ``settle`` reads the average
            bits the search chose (at the quantized start).
    """

    kd: str
    kd_weight: float
    float_self: str
    teacher: str | None
    kd_schedule: str
    kd_temp: float
    kd_layers: Any
    kd_gate: bool
    kd_tau: float
    auto: str | None = None
    auto_pending: bool = False

    @classmethod
    def from_args(cls, args: dict[str, Any] | SimpleNamespace | None, quant: QuantRecipe | None,
                  model: nn.Module | None = None, **overrides: Any) -> DistillRecipe:
        """The recipe of a run's arguments; ``quant`` (None: a float run) and ``model`` (its own widths when ``bits`` is
        empty) decide ``kd=auto``. Bad combinations fail here, before any training, with the key to change."""
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"DistillRecipe.from_args got unknown keys {sorted(unknown)}: its keys are "
                            f"{', '.join(f.name for f in fields(cls))}")
        args = {**(vars(args) if isinstance(args, SimpleNamespace) else dict(args or {})), **overrides}
        d = ghost_defaults()
        kw = {f.name: args.get(f.name) for f in fields(cls) if not f.name.startswith("auto")}
        for k, v in kw.items():
            if k == "kd" and v is None and "kd" in args:  # the CLI reads kd=none as None: no distillation, not auto
                kw[k] = "none"
            elif v in (None, "") and k not in ("teacher", "kd_layers"):
                kw[k] = d[k]
        kw["teacher"] = str(kw["teacher"]) if kw["teacher"] else None
        kw["float_self"] = str(kw["float_self"]).strip().lower()
        if kw["float_self"] not in FLOAT_SELF_MODES:
            raise ValueError(f"float_self={kw['float_self']} is not a teacher mode: use "
                             f"{', '.join(FLOAT_SELF_MODES[:-1])} or {FLOAT_SELF_MODES[-1]}")
        if kw["kd_schedule"] not in SCHEDULES:
            raise ValueError(f"kd_schedule={kw['kd_schedule']!r}: use one of {', '.join(SCHEDULES)}")
        names, why, pending = parse_kd(kw["kd"]), None, False
        quantized = quant is not None and not quant.is_float and (quant.bits is not None or _has_widths(model))
        if names == ["auto"]:
            if quantized or kw["teacher"]:
                kd, why, pending = resolve_auto_kd(quant.uniform_width(model) if quant else None,
                                                   bool(quant and quant.searches), bool(kw["teacher"]))
            else:
                kd, why = "none", "a float run (bits=32) has nothing to learn from its float self"
            names = parse_kd(kd)
        if not names and kw["teacher"]:
            raise ValueError(f"teacher={kw['teacher']} is only used for distillation, but kd=none: drop teacher= or "
                             "pass kd=cls+dfl (or another loss)")
        if names and not quantized:
            teacher = f" teacher={kw['teacher']}" if kw["teacher"] else ""
            LOGGER.warning(f"kd={'+'.join(names)}{teacher} on a "
                           "float run (bits=32): the float model has nothing to learn from its float self; "
                           "distillation is off")
            names = []
        if names and args.get("compile"):
            raise ValueError(f"compile=True cannot be used with kd={'+'.join(names)}: compiled training computes the "
                             "loss from a separate forward, where the teacher pass and the distilled features are not "
                             "captured. Pass compile=False or kd=none")
        kw["kd"] = "+".join(names) or "none"
        kw["kd_weight"], kw["kd_temp"], kw["kd_tau"] = float(kw["kd_weight"]), float(kw["kd_temp"]), float(kw["kd_tau"])
        kw["kd_gate"] = bool(kw["kd_gate"])
        return cls(**kw, auto=why, auto_pending=pending)

    @property
    def losses(self) -> list[str]:
        """The loss names (empty: no distillation)."""
        return parse_kd(self.kd)

    def args(self) -> dict[str, Any]:
        """The recipe as the ghost keys a run records (``args.yaml``, the checkpoint's ``train_args``); ``kd=auto``
        stays ``auto`` there until the HQ search settles it."""
        return {k: ("auto" if k == "kd" and self.auto_pending else v) for k, v in asdict(self).items()
                if not k.startswith("auto")}

    def settle(self, avg_bits: float) -> DistillRecipe:
        """A pending ``kd=auto`` of an HQ run decided by the average weight bits its search chose."""
        if not self.auto_pending:
            return self
        kd, why, _ = resolve_auto_kd(None, True, bool(self.teacher), avg_bits)
        return replace(self, kd=kd, auto=why, auto_pending=False)


def _has_widths(model: nn.Module | None) -> bool:
    """A model that is quantized already (a quantized checkpoint trained on with its own widths)."""
    if model is None:
        return False
    from ghost_yolo.quant import QuantState, quant_state

    return quant_state(model) is not QuantState.FLOAT
