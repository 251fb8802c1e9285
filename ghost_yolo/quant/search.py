"""Bit widths for a model: parse ``bits=`` (N, hq, a list or a YAML bit map), run the HQ search, report and save it.

``bits=hq`` runs GHOST's hybrid search (method.md §3) on the current float weights of every quantized conv; the
policy then keeps the first layer and the head's prediction convs at 8 bit unless ``keep_first/keep_head=False``.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from torch import nn
from ultralytics.utils import LOGGER, YAML, colorstr

from ghost_yolo.nn.quantizers import check_bits

from .apply import KEEP_BITS, conv_layers, policy_layers, quant_layers, uniform_bits
from .kmeans import check_search_args, hq_distortions, pick_bits

__all__ = ("bits_table", "check_search_args", "hq_plan", "parse_bits", "plot_bits", "save_bit_map")


def parse_bits(spec: Any) -> int | str | list[int] | dict[str, int] | None:
    """Normalise a ``bits=`` value: None, an int width, 'hq', a list of widths, or a ``{layer: bits}`` map.

    Strings that are not a number or 'hq' are read as a YAML bit map file (``{layer: bits}`` or ``{'bits': {...}}``).
    """
    if spec is None or spec == "":
        return None
    if isinstance(spec, str):
        s = spec.strip()
        if s.lower() == "hq":
            return "hq"
        if s.lstrip("-").isdigit():
            return check_bits(int(s))
        if s.startswith("["):
            return parse_bits(ast.literal_eval(s))
        path = Path(s)
        if not path.is_file():
            raise FileNotFoundError(f"bits={spec!r}: not a width (2..8, 32), 'hq', a list, or an existing bit map YAML")
        data = YAML.load(path) or {}
        data = data.get("bits", data) if isinstance(data, dict) else data
        if not isinstance(data, dict) or not data:
            raise ValueError(f"bit map {path} must map layer names to widths, e.g. 'model.1.conv: 4'")
        return {str(k): check_bits(v, f"{k} in {path}") for k, v in data.items()}
    if isinstance(spec, bool):
        raise TypeError(f"invalid bits={spec!r}: use a width 2..8 (32 = float), 'hq', a list or a YAML bit map")
    if isinstance(spec, (int, float)):
        return check_bits(spec)
    if isinstance(spec, (list, tuple)):
        return [check_bits(b, f"bits[{i}]") for i, b in enumerate(spec)]
    if isinstance(spec, dict):
        return {str(k): check_bits(v, f"bits[{k}]") for k, v in spec.items()}
    raise ValueError(f"invalid bits={spec!r}: use a width 2..8 (32 = float), 'hq', a list or a YAML bit map")


def hq_plan(model: nn.Module, threshold: float, bit_min: int, bit_max: int, keep_first: bool, keep_head: bool,
            progress: bool = False) -> tuple[dict[str, int], dict[str, dict[int, float]]]:
    """HQ search on the model's current float weights: ``({layer: bits}, {layer: {width: distortion}})``.

    One k-means pass gives both the widths (then the keep-first/keep-head policy, layers kept at 8) and the
    distortion at every width 2..8 that ``bits_table`` shows.
    """
    check_search_args(threshold, bit_min, bit_max)
    layers = quant_layers(model) or conv_layers(model)
    table = hq_distortions({n: m.weight.detach() for n, m in layers.items()}, progress=progress)
    bits = {n: pick_bits({b: v for b, v in d.items() if b <= bit_max}, threshold, bit_min, bit_max)
            for n, d in table.items()}
    first, head = policy_layers(model)
    for n in first * bool(keep_first) + head * bool(keep_head):
        if n in bits:
            bits[n] = KEEP_BITS
    return bits, table


def bits_table(model: nn.Module, bits: dict[str, int], distortions: dict[str, dict[int, float]] | None = None,
               threshold: float | None = None) -> str:
    """Per-layer table: name, shape, params, chosen bits, and (given ``hq_plan``'s distortions) d at each width."""
    layers = conv_layers(model)
    dist = distortions or {}
    head = f"{'layer':<30} {'shape':>16} {'params':>9} {'bits':>4}"
    if dist:
        head += "  " + " ".join(f"{f'd@{b}':>7}" for b in range(2, 9))
    lines = [head]
    for n, b in bits.items():
        w = layers[n].weight
        line = f"{n:<30} {'x'.join(map(str, w.shape)):>16} {w.numel():>9,} {b:>4}"
        if dist:
            line += "  " + " ".join(f"{dist[n][k]:>7.3f}" for k in range(2, 9))
        lines.append(line)
    total = sum(layers[n].weight.numel() for n in bits)
    avg = sum(layers[n].weight.numel() * b for n, b in bits.items()) / max(total, 1)
    counts = {b: sum(v == b for v in bits.values()) for b in sorted(set(bits.values()))}
    lines.append(f"{len(bits)} layers, average weight bits {avg:.2f} (by params); layers per width "
                 + ", ".join(f"{b}b: {c}" for b, c in counts.items())
                 + (f"; hq_threshold {threshold} (d = k-means distortion x 1e6)" if dist else ""))
    return "\n".join(lines)


def save_bit_map(bits: dict[str, int], path: str | Path, **meta: Any) -> Path:
    """Save ``{layer: bits}`` as YAML (reusable as ``bits=path.yaml``), with the search settings as a header."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = "".join(f"# {k}: {v}\n" for k, v in meta.items())
    body = "".join(f"{n}: {b}\n" for n, b in bits.items())
    path.write_text(f"# ghost-yolo bit map: layer name -> bits (use as bits={path.name})\n{header}bits:\n"
                    + "".join(f"  {line}" for line in body.splitlines(keepends=True)), encoding="utf-8")
    return path


def plot_bits(bits: dict[str, int], path: str | Path, title: str = "bits per layer") -> Path:
    """Bar chart of the chosen width of each layer, in network order (saved as PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    names = list(bits)
    fig, ax = plt.subplots(figsize=(max(8, len(names) * 0.14), 3.6), tight_layout=True)
    colors = ["#3b75af" if b < 8 else "#ef8636" for b in bits.values()]
    ax.bar(range(len(names)), list(bits.values()), color=colors, width=0.8)
    ax.set_xticks(range(len(names)), [n.removeprefix("model.") for n in names], rotation=90, fontsize=5)
    ax.set_ylim(0, 9)
    ax.set_ylabel("bits")
    ax.set_title(title)
    fig.savefig(path, dpi=200)
    plt.close(fig)
    LOGGER.info(f"{colorstr('ghost:')} bits per layer plotted to {path}")
    return path
