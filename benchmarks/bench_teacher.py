#!/usr/bin/env python
"""How good is the live float self as a teacher after quantized training? Quantized vs float-mode mAP of checkpoints.

OST's default teacher is the model's own weights with every quantizer bypassed. This script measures that teacher's
quality at the end of a QAT run: for each checkpoint it reports the quantized model's mAP (as trained and deployed)
and the same weights in float mode. BatchNorm running statistics are re-estimated on training batches for both
(cumulative average over ``--calib`` augmented images), because the checkpoint's statistics were collected by the
quantized student, while the teacher pass normalises with its own batch statistics.

Usage (from the repository root, ghost-yolo installed):
    python benchmarks/bench_teacher.py runs/detect/w4/weights/last.pt fp.pt --data vedai-synth.yaml --imgsz 256
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch
from common import md_table, real_batch, run_main, write_md


def reestimate_bn(net: torch.nn.Module, images: torch.Tensor, batch: int = 16) -> None:
    """Replace BatchNorm running statistics by their cumulative average over ``images`` (no gradient)."""
    for bn in net.modules():
        if isinstance(bn, torch.nn.modules.batchnorm._BatchNorm):
            bn.reset_running_stats()
            bn.momentum = None
    net.train()
    with torch.no_grad():
        for i in range(0, len(images), batch):
            net.predict(images[i : i + batch])
    net.eval()


def evaluate(weights: Path, mode: str, images: torch.Tensor, args: argparse.Namespace) -> tuple[float, float]:
    """(mAP50, mAP50-95) in percent of ``weights`` quantized (as trained) or in float mode (quantizers bypassed)."""
    from ghost_yolo import GhostYOLO
    from ghost_yolo.quant import quant_layers, set_bits

    m = GhostYOLO(weights)
    net = m.model.float()
    layers = quant_layers(net)
    if mode == "float" and layers:
        set_bits(net, dict.fromkeys(layers, 32))
    reestimate_bn(net, images)
    met = m.val(data=str(args.data), imgsz=args.imgsz, batch=16, plots=False, verbose=False)
    return 100 * float(met.box.map50), 100 * float(met.box.map)


def main(argv: list[str] | None = None) -> int:
    """Print and save a markdown table: checkpoint, quantized mAP, float-mode mAP."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("weights", type=Path, nargs="+", help="checkpoints (.pt) to measure")
    p.add_argument("--data", type=Path, required=True, help="dataset YAML (its val split is scored)")
    p.add_argument("--imgsz", type=int, default=256, help="image size (256)")
    p.add_argument("--calib", type=int, default=64, help="augmented training images for the BN statistics (64)")
    p.add_argument("--out", type=Path, default=Path("benchmarks/results/teacher.md"), help="markdown table")
    args = p.parse_args(argv)
    from ultralytics.utils.torch_utils import init_seeds

    init_seeds(0)  # the augmented BN batches, so repeated runs give the same table
    images = real_batch(args.data, args.imgsz, args.calib)["img"]
    lines = md_table(["checkpoint", "quantized mAP50 / mAP50-95", "float-mode mAP50 / mAP50-95"])
    for w in args.weights:
        q, f = evaluate(w, "quant", images, args), evaluate(w, "float", images, args)
        lines.append(f"| {w} | {q[0]:.1f} / {q[1]:.1f} | {f[0]:.1f} / {f[1]:.1f} |")
    print("\n".join(lines))
    write_md(args.out, ["# Live float self as teacher (benchmarks/bench_teacher.py)", "", *lines, ""])
    print(f"(saved to {args.out})")
    return 0


if __name__ == "__main__":
    run_main(main)
