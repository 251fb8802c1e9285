"""QuantRecipe: what a run asks of quantization, read once from its arguments.

The recipe is the request (``quantizer``, the ``bits`` spec with ``hq``, lists and bit maps parsed once, the keep
policy, output grids, the HQ search's parameters); it never changes during a run. What changes at run time (whether the
quantizers are on, the widths the search resolved, the float self's BatchNorm set) is the model's ``QuantConfig``.
Defaults come from ``cfg/default.yaml`` only: a key the arguments leave empty takes the shipped default.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from types import SimpleNamespace
from typing import Any

from torch import nn

from ghost_yolo.cfg import ghost_defaults
from ghost_yolo.nn.quantizers import FLOAT_BITS, QUANTIZERS

from .apply import KEEP_BITS, conv_layers, quant_layers, uniform_bits
from .config import QuantConfig
from .search import check_search_args, hq_plan, parse_bits

__all__ = ("QuantRecipe",)

BitsSpec = int | str | list[int] | dict[str, int] | None  # a width, "hq", one width per conv, {layer: width}, or unset


def _default(key: str) -> Any:
    """The shipped default of a ghost key (cfg/default.yaml)."""
    return ghost_defaults()[key]


@dataclass(frozen=True)
class QuantRecipe:
    """How a run quantizes (see the module docstring); build it with ``from_args``.

    Attributes:
        bits: The parsed ``bits=`` spec: a width (2..8; 32 = float), ``"hq"``, a list (one width per conv) or a bit map;
            None = the model's own widths (a quantized checkpoint) or ``hq`` for a float one.
        quantizer: Name in ``QUANTIZERS``.
        keep_first, keep_head: Keep the stem and the head's prediction convs at 8 bit.
        out_quant: Learn an 8-bit output grid per conv block.
        grids: ``auto``, ``layer`` or ``tensor`` (``QuantConfig.grids``).
        hq_threshold, bit_min, bit_max: The HQ search's parameters.
    """

    bits: BitsSpec
    quantizer: str
    keep_first: bool
    keep_head: bool
    out_quant: bool
    grids: str
    hq_threshold: float
    bit_min: int
    bit_max: int

    @classmethod
    def from_args(cls, args: dict[str, Any] | SimpleNamespace | None = None, **overrides: Any) -> QuantRecipe:
        """The recipe of a run's arguments (a trainer's ``args``, a dict, or keywords); empty keys take the defaults.

        ``bits`` is parsed here, once (a bit map YAML is read here), and the search parameters are checked here, before
        any training.
        """
        unknown = set(overrides) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"QuantRecipe.from_args got unknown keys {sorted(unknown)}: its keys are "
                            f"{', '.join(f.name for f in fields(cls))}")
        args = {**(vars(args) if isinstance(args, SimpleNamespace) else dict(args or {})), **overrides}
        kw = {}
        for f in fields(cls):
            value = args.get(f.name)
            kw[f.name] = value if value not in (None, "") or f.name == "bits" else _default(f.name)
        kw["bits"] = parse_bits(kw["bits"])
        if kw["quantizer"] not in QUANTIZERS:
            raise ValueError(f"unknown quantizer '{kw['quantizer']}': use one of {', '.join(QUANTIZERS)}")
        if kw["bits"] == "hq":
            check_search_args(kw["hq_threshold"], kw["bit_min"], kw["bit_max"])
        for k in ("keep_first", "keep_head", "out_quant"):
            kw[k] = bool(kw[k])
        return cls(**kw)

    # What it asks for -------------------------------------------------------------------------------------------------
    @property
    def searches(self) -> bool:
        """The widths come from the HQ search, run on the weights the model has when the quantized phase starts."""
        return self.bits == "hq"

    @property
    def is_float(self) -> bool:
        """``bits=32``: no quantization."""
        return self.bits == FLOAT_BITS

    def uniform_width(self, model: nn.Module | None = None) -> int | None:
        """The one width of a fixed-width run (``bits=4``), or of a quantized model asked for its own widths whose
        layers outside the keep policy share one width; None for the HQ search, lists, bit maps and mixed widths."""
        if isinstance(self.bits, int):
            return self.bits
        if self.bits is None and model is not None and (config := QuantConfig.of(model)) is not None:
            if isinstance(config.bits, int):
                return config.bits
            widths = {b for b in config.bits.values() if b != KEEP_BITS} or {KEEP_BITS}
            return widths.pop() if len(widths) == 1 else None
        return None

    def config(self, enabled: bool = False, out_bits: int | None = None) -> QuantConfig:
        """The config ``prepare`` inserts the quantized layers with: every layer at 8 bit until ``widths`` resolves the
        spec (the HQ search needs the weights of the quantized start), quantizers off unless ``enabled``."""
        from ghost_yolo.nn.qconv import OUT_BITS

        return QuantConfig(quantizer=self.quantizer, bits=KEEP_BITS, keep_first=self.keep_first,
                           keep_head=self.keep_head, enabled=enabled,
                           out_bits=OUT_BITS if self.out_quant else out_bits, grids=self.grids)

    def widths(self, model: nn.Module, progress: bool = False) -> tuple[dict[str, int], dict | None]:
        """``({layer: bits}, HQ distortions or None)`` of this spec for ``model``: the HQ search on its current weights,
        one width under the keep policy, a list in ``ghost info`` order, a bit map (unnamed layers 8), or the model's
        own widths when the spec is empty."""
        layers = quant_layers(model) or conv_layers(model)
        if self.searches:
            return hq_plan(model, self.hq_threshold, self.bit_min, self.bit_max, self.keep_first, self.keep_head,
                           progress=progress)
        if isinstance(self.bits, int):
            return uniform_bits(model, self.bits, self.keep_first, self.keep_head), None
        if isinstance(self.bits, list):
            if len(self.bits) != len(layers):
                raise ValueError(f"bits list has {len(self.bits)} widths but the model has {len(layers)} conv layers "
                                 "('ghost info model=...' lists them in order)")
            return dict(zip(layers, self.bits)), None
        if isinstance(self.bits, dict):
            return {**dict.fromkeys(layers, KEEP_BITS), **self.bits}, None
        return {n: m.bits for n, m in quant_layers(model).items()}, None

    def describe(self) -> str:
        """One line for logs: the spec and the quantizer."""
        spec = (f"hq (threshold {self.hq_threshold:g}, {self.bit_min}..{self.bit_max} bit)" if self.searches else
                "the model's own widths" if self.bits is None else
                f"W{self.bits}" if isinstance(self.bits, int) else
                f"a list of {len(self.bits)} widths" if isinstance(self.bits, list) else
                f"a bit map of {len(self.bits)} layers")
        return f"{spec}, {self.quantizer}"
