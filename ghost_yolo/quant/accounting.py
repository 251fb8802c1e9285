"""Size and BOPs accounting with the GHOST paper's counting (method.md §5).

Per conv layer: ``MACs = H_out * W_out * C_out * C_in / groups * k_h * k_w`` at the given image size;
``BOPs = MACs * w_bits * a_bits`` where ``a_bits`` is the *previous* conv's width (32 for the first conv; a float layer
counts 32 x 32); size counts every weight at its layer's width. Biases (including folded BatchNorm, one per output
channel) are stored at 32 bit, as integer deployments keep them; other parameters count 32 bit in both sizes.
"""

from __future__ import annotations

from copy import deepcopy
from typing import Any

import pandas as pd
import torch
from torch import nn

from ghost_yolo.nn.quantizers import FLOAT_BITS, FakeQuantizer

from .apply import conv_layers, float_mode

__all__ = ("cost_totals", "format_costs", "layer_costs")


def _output_sizes(model: nn.Module, convs: dict[str, nn.Conv2d], imgsz: int | tuple[int, int], ch: int) -> dict:
    """Output H x W of each conv for one image of ``imgsz`` (a float forward pass on a copy)."""
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    model = deepcopy(model).float().eval()
    copies = {n: m for n, m in conv_layers(model).items() if n in convs}
    sizes, hooks = {}, []
    for n, m in copies.items():
        hooks.append(m.register_forward_hook(lambda mod, i, o, n=n: sizes.__setitem__(n, tuple(o.shape[-2:]))))
    try:
        p = next(model.parameters())
        with torch.no_grad(), float_mode(model):
            model(torch.zeros(1, ch, h, w, device=p.device, dtype=p.dtype))
    finally:
        for hk in hooks:
            hk.remove()
    return sizes


def layer_costs(model: nn.Module, imgsz: int | tuple[int, int] = 640, bits: dict[str, int] | None = None,
                ch: int | None = None) -> pd.DataFrame:
    """One row per conv: name, type, shape, params, MACs, w/a bits, BOPs, bits stored (``df.attrs['totals']``).

    Args:
        model: A detection model (quantized or float).
        imgsz: Image size the MACs are counted at (int or (h, w)).
        bits: Widths to count with instead of the model's own (``{name: bits}``; missing layers count 32).
        ch: Input channels (default: ``model.yaml['channels']``, else the first conv's).
    """
    convs = conv_layers(model)
    if not convs:
        raise ValueError("model has no conv layers to account for")
    ch = ch or (getattr(model, "yaml", None) or {}).get("channels") or next(iter(convs.values())).in_channels
    sizes = _output_sizes(model, convs, imgsz, ch)
    rows, prev = [], FLOAT_BITS
    for n, m in convs.items():
        wb = (bits or {}).get(n, FLOAT_BITS) if bits is not None else getattr(m, "bits", FLOAT_BITS)
        ab = FLOAT_BITS if wb >= FLOAT_BITS else prev
        k = m.weight.shape
        oh, ow = sizes.get(n, (0, 0))
        macs = oh * ow * k[0] * k[1] * k[2] * k[3]
        params = m.weight.numel()
        rows.append({"layer": n, "type": type(m).__name__, "shape": "x".join(map(str, k)), "params": params,
                     "biases": k[0], "macs": macs, "w_bits": wb, "a_bits": ab, "bops": macs * wb * ab,
                     "bits_stored": params * wb + k[0] * FLOAT_BITS})
        prev = wb
    df = pd.DataFrame(rows)
    df.attrs["totals"] = cost_totals(model, df)
    df.attrs["imgsz"] = imgsz
    return df


def cost_totals(model: nn.Module, df: pd.DataFrame) -> dict[str, Any]:
    """Totals of a ``layer_costs`` table: params, GFLOPs, float and quantized MB, GBOPs, average weight bits."""
    conv_ids = {id(p) for m in conv_layers(model).values() for p in m.parameters(recurse=False)}
    if (distiller := getattr(model, "distiller", None)) is not None:  # training-only gate projections, never deployed
        conv_ids |= {id(p) for p in distiller.parameters()}
    skip = (nn.modules.batchnorm._BatchNorm, FakeQuantizer)  # BN folds into conv biases; steps are metadata
    other = sum(p.numel() for mod in model.modules() if not isinstance(mod, skip)
                for p in mod.parameters(recurse=False) if id(p) not in conv_ids)
    biases = int(df["biases"].sum())
    float_bits = (df["params"].sum() + biases + other) * FLOAT_BITS
    quant_bits = df["bits_stored"].sum() + other * FLOAT_BITS
    return {
        "layers": len(df),
        "params": int(df["params"].sum() + biases + other),
        "gflops": 2 * df["macs"].sum() / 1e9,
        "float_mb": float_bits / 8 / 1e6,
        "size_mb": quant_bits / 8 / 1e6,
        "gbops": df["bops"].sum() / 1e9,
        "float_gbops": df["macs"].sum() * FLOAT_BITS * FLOAT_BITS / 1e9,
        "avg_w_bits": float((df["w_bits"] * df["params"]).sum() / max(df["params"].sum(), 1)),
    }


def format_costs(df: pd.DataFrame, per_layer: bool = True) -> str:
    """The table as text: one line per layer, then the totals."""
    t = df.attrs["totals"]
    lines = []
    if per_layer:
        lines.append(f"{'layer':<30} {'type':<8} {'shape':>16} {'params':>9} {'MMACs':>9} {'w':>3} {'a':>3} "
                     f"{'GBOPs':>8} {'kbit':>9}")
        for r in df.itertuples():
            lines.append(f"{r.layer:<30} {r.type:<8} {r.shape:>16} {r.params:>9,} {r.macs / 1e6:>9.2f} {r.w_bits:>3} "
                         f"{r.a_bits:>3} {r.bops / 1e9:>8.3f} {r.bits_stored / 1e3:>9.1f}")
    lines.append(
        f"{t['layers']} conv layers, {t['params'] / 1e6:.3f} M params, {t['gflops']:.2f} GFLOPs at imgsz "
        f"{df.attrs.get('imgsz')} | size {t['float_mb']:.2f} MB float -> {t['size_mb']:.2f} MB quantized | "
        f"{t['float_gbops']:.1f} -> {t['gbops']:.1f} GBOPs | average weight bits {t['avg_w_bits']:.2f}"
    )
    return "\n".join(lines)
