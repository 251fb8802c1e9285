#!/usr/bin/env python
"""Hybrid quantization benchmark: QAT step time vs float, and accuracy of float vs W8A8 vs HQ mixed precision.

Both questions are answered side by side in ONE process and reported as ratios / differences:

1. Training step (forward + loss + backward + SGD step, one real augmented vedai-synth batch, no EMA) of ghost-n in
   float vs the same weights with fake quantization (LSQ, W8A8 and W4A4; the policy keeps first/head convs at 8 bit),
   and W8A8 once more on the tensor-op path of the fake quantizers (the fused kernels switched off: the path of
   machines without a C++ compiler, and of every step before the kernels). Repetitions are interleaved (A B C D,
   D C B A, ...) and medians compared; each arm's per-round ratios to float show the noise, and the CPU load of other
   processes is probed before and after. Target: quantized / float <= 1.3x.
2. Accuracy at a fixed budget on vedai-synth (rgb+ir, 400 train / 100 val pairs, 256 px, seed 0): one float model is
   trained for ``--fp-epochs`` (or given with ``--weights``), then every arm fine-tunes it for ``--q-epochs`` with the
   same settings: float (no quantization), W8A8 (``bits=8``), HQ (``bits=hq`` at ``--hq-threshold``), and W4A4
   (``bits=4``, for reference). Targets: W8A8 within 1 mAP50 point of float; HQ with average weight bits <= 5 within
   3 points. The tables are printed and saved as markdown (``--out``; the step section in ``--step-out``).

The script exits 0 whatever the numbers: it is a benchmark, not a test. PASS/FAIL lines compare against the targets.

Usage (from the repository root, ghost-yolo installed):
    python benchmarks/bench_quant.py                        # both sections (~25 min on an idle 2-core CPU)
    python benchmarks/bench_quant.py --skip-accuracy        # step time only (~1 min)
    python benchmarks/bench_quant.py --weights best.pt      # reuse a float vedai-synth model for the accuracy arms
    python benchmarks/bench_quant.py --quick                # smoke run (tiny sizes; the numbers mean nothing)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from copy import deepcopy
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch
from common import (add_run_options, banner, base_parser, cpu_class, cpu_name, evaluate_run, load_text, make_data,
                    md_table, medians, real_batch, round_ratios, run_main, timed_rounds, train_arm, work_dir, write_md)

STEP_TARGET = 1.3  # quantized / float step time, at most
W8_TARGET = 1.0  # mAP50 points below float, at most
HQ_TARGET = 3.0  # mAP50 points below float, at most, with average weight bits <= HQ_BITS
HQ_BITS = 5.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--skip-step", action="store_true", help="skip the step-time section")
    p.add_argument("--skip-accuracy", action="store_true", help="skip the accuracy section")
    p.add_argument("--imgsz", type=int, default=256, help="training image size (256)")
    p.add_argument("--batch", type=int, default=16, help="batch size: 16 for training, 8 for the step section")
    p.add_argument("--step-reps", type=int, default=7, help="interleaved repetitions of the step timing (7)")
    p.add_argument("--weights", type=Path, help="a float vedai-synth model to start the arms from (skips training it)")
    p.add_argument("--fp-epochs", type=int, default=15, help="float epochs before the arms (15, the demo's budget)")
    p.add_argument("--q-epochs", type=int, default=5, help="epochs of every arm (5)")
    p.add_argument("--hq-threshold", type=float, default=2.0, help="HQ threshold of the HQ arm (2.0: ~4.8 bits here)")
    add_run_options(p, out="benchmarks/results/quant_accuracy.md", out_help="markdown table (step section: --step-out)")
    p.add_argument("--step-out", type=Path, default=Path("benchmarks/results/quant_step.md"),
                   help="markdown of the step section")
    a = p.parse_args(argv)
    if a.quick:
        a.fp_epochs, a.q_epochs, a.step_reps, a.imgsz = min(a.fp_epochs, 1), min(a.q_epochs, 1), 3, 128
    return a


# 1. step time ---------------------------------------------------------------------------------------------------------
def bench_step(args: argparse.Namespace, data_yaml: Path) -> list[str]:
    """Interleaved medians of float, W8A8, W4A4 and W8A8-on-tensor-ops training steps on the same batch and weights."""
    from contextlib import nullcontext

    from ultralytics.cfg import get_cfg

    from ghost_yolo.engine.setup import setup_qat
    from ghost_yolo.models.model import GhostDetectionModel
    from ghost_yolo.nn.fakequant import fused_kernels, use_fused
    from ghost_yolo.quant import QuantRecipe

    batch = real_batch(data_yaml, args.imgsz, 8)
    torch.manual_seed(0)
    base = GhostDetectionModel("ghost-n.yaml", ch=4, nc=8, verbose=False)
    base.args = get_cfg()
    fused = fused_kernels() is not None  # built here (once per machine), not inside a timed step
    unfused = "W8A8 tensor ops"
    arms = {"float": base, "W8A8": deepcopy(base), "W4A4": deepcopy(base)}
    for name, bits in (("W8A8", 8), ("W4A4", 4)):
        setup_qat(arms[name], QuantRecipe.from_args(bits=bits), images=batch["img"])  # the trainer's set-up
    if fused:
        arms[unfused] = deepcopy(arms["W8A8"])
    opts = {k: torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9) for k, m in arms.items()}

    def step(k: str) -> float:
        m, opt = arms[k], opts[k]
        m.train()
        with use_fused(False) if k == unfused else nullcontext():
            t = time.perf_counter()
            loss, _ = m.loss(batch)
            loss.sum().backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 10.0)
            opt.step()
            opt.zero_grad()
            return time.perf_counter() - t

    load_before = load_text()
    times = timed_rounds({k: lambda k=k: step(k) for k in arms}, args.step_reps)
    load_after = load_text()
    med, ratios = medians(times), round_ratios(times, "float")
    lines = [f"step time (batch 8, imgsz {args.imgsz}, {torch.get_num_threads()} threads, median of {args.step_reps} "
             f"interleaved rounds; {cpu_name()} ({cpu_class()}); fused fake-quant kernels: "
             f"{'yes' if fused else 'no'}):"]
    for k in arms:
        ratio = med[k] / med["float"]
        spread = "" if k == "float" else (f"   per round {min(ratios[k]):.2f}-{max(ratios[k]):.2f}x, median "
                                          f"{statistics.median(ratios[k]):.2f}x")
        verdict = "PASS" if ratio <= STEP_TARGET else "FAIL"
        target = "" if k in ("float", unfused) else f"   target <= {STEP_TARGET}x: {verdict}"
        lines.append(f"  {k:<15} {med[k] * 1000:5.0f} ms   {ratio:5.2f}x{spread}{target}")
    if fused:
        lines.append(f"  ({unfused}: the same W8A8 step with the fused kernels switched off)")
    lines += [f"load before: {load_before}", f"load after:  {load_after}"]
    return lines


# 2. accuracy ----------------------------------------------------------------------------------------------------------
def bench_accuracy(args: argparse.Namespace, data_yaml: Path, root: Path) -> list[str]:
    """Float base model, then the four arms from it; a markdown table of the results."""
    project = root / "runs"
    t0 = time.time()
    fp = args.weights or train_arm("ghost-n.yaml", data_yaml, project, "fp", args.fp_epochs, args,
                                   bits=32) / "weights/best.pt"
    # quantization alone (no distillation: bench_distill.py measures that), float arms explicitly float
    arms = {"float": {"bits": 32}, "W8A8": {"bits": 8, "kd": "none"},
            f"HQ (t={args.hq_threshold})": {"bits": "hq", "hq_threshold": args.hq_threshold, "kd": "none"},
            "W4A4": {"bits": 4, "kd": "none"}}
    res = {}
    for name, kw in arms.items():
        run = train_arm(fp, data_yaml, project, name.split()[0].lower(), args.q_epochs, args, **kw)
        res[name] = evaluate_run(run, data_yaml, args.imgsz)
        print(f"  {name}: {res[name]}", flush=True)
    f = res["float"]
    rows = md_table(["model", "avg weight bits", "size MB", f"GBOPs @{args.imgsz}", "mAP50", "mAP50-95",
                     "mAP50 vs float"],
                    [[name, f"{r['bits']:.2f}", f"{r['mb']:.2f}", f"{r['gbops']:.1f}", f"{r['map50']:.1f}",
                      f"{r['map']:.1f}", f"{r['map50'] - f['map50']:+.1f}"] for name, r in res.items()])
    w8, hq = res["W8A8"], res[f"HQ (t={args.hq_threshold})"]
    verdicts = [
        f"W8A8 within {W8_TARGET} mAP50 point of float: W8A8 - float = {w8['map50'] - f['map50']:+.1f} -> "
        f"{'PASS' if f['map50'] - w8['map50'] <= W8_TARGET else 'FAIL'}",
        f"HQ average weight bits <= {HQ_BITS}: {hq['bits']:.2f}, within {HQ_TARGET} points: "
        f"HQ - float = {hq['map50'] - f['map50']:+.1f} -> "
        f"{'PASS' if hq['bits'] <= HQ_BITS and f['map50'] - hq['map50'] <= HQ_TARGET else 'FAIL'}",
    ]
    budget = (f"Budget: ghost-n, vedai-synth rgb+ir ({'32/16' if args.quick else '400/100'} pairs), imgsz "
              f"{args.imgsz}, batch {args.batch}, seed 0; float base "
              f"{'from ' + str(args.weights) if args.weights else f'trained {args.fp_epochs} epochs'}, then "
              f"{args.q_epochs} epochs per arm from it (LSQ, first/head convs at 8 bit); CPU, "
              f"{args.threads} threads; {time.time() - t0:.0f} s.")
    write_md(args.out, ["# Quantization accuracy (benchmarks/bench_quant.py)", "", budget, "", *rows, "",
                        *[f"- {v}" for v in verdicts], ""])
    return [budget, *rows, *verdicts, f"(saved to {args.out})"]


def main(argv: list[str] | None = None) -> int:
    """Run the sections and print their results together at the end."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    with work_dir(args.workdir, "ghost-bench-quant-") as args.workdir:
        banner("quantization", args.workdir)
        data_yaml = make_data(args.workdir, args.quick, args.imgsz)
        out = []
        if not args.skip_step:
            lines = bench_step(args, data_yaml)
            out += lines
            write_md(args.step_out, ["# Quantization step time (benchmarks/bench_quant.py)", "", "```", *lines, "```",
                                     ""])
        if not args.skip_accuracy:
            out += [""] + bench_accuracy(args, data_yaml, args.workdir)
        print("\n" + "\n".join(out))
    return 0


if __name__ == "__main__":
    run_main(main, reuse_memory=True)  # the steps timed here run as they do in training
