"""QuantConfig: the whole quantization state of a model as one object, kept in ``model.yaml['quant']``.

A quantized model is rebuilt from its YAML (checkpoints, resume, DDP workers, packed ``.ghost`` files), so its
quantization config travels there. This module is the only one that reads or writes that section: the quantizer, the
per-layer widths, the layer policy, the output grids, whether the quantizers are on, and whether a co-trained float
self's BatchNorm set exists. ``prepare`` and ``convert`` (``quant.apply``) are the verbs that act on it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from torch import nn
from ultralytics.utils.torch_utils import unwrap_model

__all__ = ("QuantConfig", "update_quant_config")

SECTION = "quant"  # the model YAML key


@dataclass
class QuantConfig:
    """How a model is quantized.

    Attributes:
        quantizer: Name in ``QUANTIZERS`` (``lsq``, ``dorefa``).
        bits: ``{layer name: width}`` (2..8, 32 = float) or one width for every layer (the policy then keeps the
            first layer and the head's prediction convs at 8 bit, as ``keep_first``/``keep_head`` say).
        keep_first: Policy: keep the first layer's convs at 8 bit under a uniform width.
        keep_head: Policy: keep the head's prediction convs at 8 bit under a uniform width.
        enabled: Quantizers on (off: the same weights compute in float, e.g. during the float phase).
        out_bits: Width of the conv blocks' learned output grids (``out_quant=True``: 8), or None.
        float_bn: The model carries a co-trained float self's BatchNorm set.
        grids: ``layer``: each conv quantizes its input to a grid of its own at its width (GHOST); ``tensor``: one
            8-bit grid per tensor after each activation, read by every consumer (integer from conv to conv,
            ``quant.ties``); ``auto`` (a recipe's, resolved by ``prepare``): tensor for ReLU/ReLU6 models with LSQ.
    """

    quantizer: str = "lsq"
    bits: dict[str, int] | int = 8
    keep_first: bool = True
    keep_head: bool = True
    enabled: bool = True
    out_bits: int | None = None
    float_bn: bool = False
    grids: str = "layer"
    extra: dict[str, Any] = field(default_factory=dict, repr=False)  # unknown keys of newer files, kept as they were

    # Serialisation ----------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The YAML form (optional parts only when set, as older checkpoints wrote them)."""
        d = {k: v for k, v in asdict(self).items() if k != "extra"}
        d["bits"] = dict(self.bits) if isinstance(self.bits, dict) else self.bits
        if not self.out_bits:
            d.pop("out_bits")
        if not self.float_bn:
            d.pop("float_bn")
        if d["grids"] == "layer":
            d.pop("grids")
        return {**self.extra, **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> QuantConfig:
        """From the YAML form; missing keys take the defaults, empty widths mean 8 bit."""
        known = {f for f in cls.__dataclass_fields__ if f != "extra"}
        kw = {k: v for k, v in d.items() if k in known}
        kw["bits"] = kw.get("bits") or 8
        kw["out_bits"] = kw.get("out_bits") or None
        kw["float_bn"] = bool(kw.get("float_bn"))
        kw["grids"] = kw.get("grids") or "layer"
        return cls(**kw, extra={k: v for k, v in d.items() if k not in known})

    @classmethod
    def from_yaml(cls, yaml: dict[str, Any] | None) -> QuantConfig | None:
        """The config a model YAML records, or None for a float model."""
        section = yaml.get(SECTION) if isinstance(yaml, dict) else None
        return cls.from_dict(section) if section else None

    @classmethod
    def of(cls, model: nn.Module) -> QuantConfig | None:
        """The config recorded on ``model`` (a DetectionModel or its DDP wrapper), or None for a float model."""
        return cls.from_yaml(getattr(unwrap_model(model), "yaml", None))

    def write(self, model: nn.Module) -> None:
        """Record this config on ``model`` (no-op for modules without a YAML, such as a bare ``nn.Sequential``)."""
        owner = unwrap_model(model)
        if isinstance(getattr(owner, "yaml", None), dict):
            owner.yaml[SECTION] = self.to_dict()

    def replace(self, **changes: Any) -> QuantConfig:
        """A copy with ``changes``."""
        return replace(self, **changes)


def update_quant_config(model: nn.Module, **changes: Any) -> QuantConfig | None:
    """Change fields of the config recorded on ``model`` (nothing recorded: nothing to change); returns the new one."""
    config = QuantConfig.of(model)
    if config is None:
        return None
    config = config.replace(**changes)
    config.write(model)
    return config
