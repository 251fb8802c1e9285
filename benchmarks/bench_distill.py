#!/usr/bin/env python
"""Self-distillation benchmark: OST step time and memory, the KD ablation, and RGB vs IR vs RGB+IR.

Every question is answered side by side in ONE run at a fixed budget and seed, and reported as ratios / differences:

1. Step cost (forward + loss + backward + SGD step on one real augmented vedai-synth batch, batch 8): float vs QAT
   (W4, no KD) vs QAT + OST (the float self as teacher; on CPUs with native bf16 also with the teacher pass forced to
   fp32, the figure for CPUs without). Ratios are medians of per-round ratios over interleaved rounds; target
   QAT+OST / float <= 1.9x.
   Peak memory of the steps (peak resident memory of four steps above the process with model and batch loaded, each
   arm in a fresh process), target QAT+OST / QAT <= 1.4x,
   and the bytes autograd keeps for backward (the teacher pass must add none).
2. Ablation (vedai-synth rgb+ir, 400/100 pairs, 256 px, seed 0): one float model (trained ``--fp-epochs`` or given with
   ``--weights``) is fine-tuned ``--q-epochs`` by every arm with the same settings: float; at W8, HQ and W4: QAT without
   KD, QAT + OST with the live float self, QAT + OST with the float model as external frozen teacher; and Ultralytics'
   own ``quantize=8`` QAT (NVIDIA ModelOpt, only when ``nvidia-modelopt`` is importable: install it in the benchmark's
   environment only). Targets: OST beats no-KD at W4 and HQ; ghost-yolo W8 matches or beats Ultralytics' QAT.
3. Modality: the whole pipeline (``--mod-epochs``, half float, then HQ + OST) from scratch on rgb, ir and rgb+ir; float
   (end of the float phase) and HQ mAP50 of each.

The tables are printed and saved as markdown (``--out``; the step section in ``--step-out``). Exits 0 whatever the
numbers: PASS/FAIL lines compare.

Usage (from the repository root, ghost-yolo installed):
    python benchmarks/bench_distill.py --weights best.pt    # reuse a float vedai-synth model (bench_quant.py makes one)
    PYTHONPATH=/path/to/modelopt python benchmarks/bench_distill.py ...   # with Ultralytics' quantize=8 arm
    python benchmarks/bench_distill.py --quick              # smoke run (tiny sizes; the numbers mean nothing)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import time
from copy import deepcopy
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch
from common import (add_run_options, banner, base_parser, evaluate_run, make_data, make_step, md_table, medians,
                    real_batch, round_ratios, run_main, step_peak_memory, timed_rounds, train_arm, work_dir, write_md)

STEP_TARGET = 1.9  # QAT+OST / float step time, at most
MEM_TARGET = 1.4  # QAT+OST / QAT step peak memory, at most
ARMS = ("float", "QAT", "QAT+OST")
FP32_TEACHER = "QAT+OST fp32 teacher"  # the OST arm with its teacher pass in fp32 (only timed where bf16 is native)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--skip-step", action="store_true", help="skip the step time / memory section")
    p.add_argument("--skip-ablation", action="store_true", help="skip the KD ablation")
    p.add_argument("--skip-modality", action="store_true", help="skip RGB vs IR vs RGB+IR")
    p.add_argument("--imgsz", type=int, default=256, help="image size (256)")
    p.add_argument("--batch", type=int, default=16, help="training batch (16); the step section uses 8")
    p.add_argument("--step-reps", type=int, default=15, help="interleaved rounds of the step timing (15)")
    p.add_argument("--weights", type=Path, help="a float vedai-synth model to start the ablation from")
    p.add_argument("--fp-epochs", type=int, default=15, help="float epochs of the ablation's base model (15)")
    p.add_argument("--q-epochs", type=int, default=3, help="epochs of every ablation arm (3)")
    p.add_argument("--mod-epochs", type=int, default=8, help="epochs of every modality pipeline run (8: 4 float + 4)")
    p.add_argument("--hq-threshold", type=float, default=2.0, help="HQ threshold (2.0: ~4.8 bits on ghost-n)")
    add_run_options(p, out="benchmarks/results/distill.md", out_help="markdown tables (the step section: --step-out)")
    p.add_argument("--step-out", type=Path, default=Path("benchmarks/results/distill_step.md"),
                   help="markdown of the step section")
    p.add_argument("--memory-arm", choices=ARMS, help=argparse.SUPPRESS)  # internal: one arm's memory, in a subprocess
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.quick:
        a.fp_epochs, a.q_epochs, a.mod_epochs, a.step_reps, a.imgsz = 1, 1, 2, 3, 128
    return a


# 1. step time and memory ----------------------------------------------------------------------------------------------
def build_arms(batch: dict, names: tuple[str, ...] = ARMS) -> dict[str, torch.nn.Module]:
    """ghost-n in float, at W4 (calibrated), and at W4 with the OST distiller on its default layers."""
    from ultralytics.cfg import get_cfg

    from ghost_yolo.distill import DistillRecipe
    from ghost_yolo.engine.setup import setup_qat
    from ghost_yolo.models.model import GhostDetectionModel
    from ghost_yolo.quant import QuantRecipe

    torch.manual_seed(0)
    base = GhostDetectionModel("ghost-n.yaml", ch=4, nc=8, verbose=False)
    base.args = get_cfg()
    arms = {}
    for name in names:
        m = deepcopy(base)
        if name != "float":  # the trainer's set-up, started at once on the batch
            quant = QuantRecipe.from_args(bits=4)
            distill = DistillRecipe.from_args({}, quant, m, kd="ost", float_self="shared") \
                if name.startswith("QAT+OST") else None
            setup_qat(m, quant, distill, images=batch["img"], bf16_teacher=False if name == FP32_TEACHER else None)
        arms[name] = m.train()
    return arms


def _defaults() -> dict:
    from ghost_yolo.cfg import ghost_defaults

    return ghost_defaults()


def saved_bytes(m: torch.nn.Module, batch: dict) -> int:
    """Bytes of the distinct tensors autograd keeps for backward during one loss computation."""
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss, _ = m.loss(batch)
    del loss
    return sum(seen.values())


def memory_arm(args: argparse.Namespace) -> None:
    """(subprocess) Peak resident memory of training steps of one arm, above the process with model and batch loaded.

    The peak (VmHWM) is reset after loading (``/proc/self/clear_refs``), so the dataset built for the batch does not
    mask the steps; the four steps include the optimizer's first allocation of its state.
    """
    torch.set_num_threads(args.threads)
    batch = real_batch(args.data, args.imgsz, 8)
    m = build_arms(batch, (args.memory_arm,))[args.memory_arm]
    peak, base = step_peak_memory(make_step(m, batch))
    print(json.dumps({"peak": peak, "base": base}))


def bench_step(args: argparse.Namespace, data_yaml: Path) -> list[str]:
    """Interleaved step times of the arms (median per-round ratios), autograd bytes, peak memory (subprocesses)."""
    from ghost_yolo.distill import native_bf16_cpu

    batch = real_batch(data_yaml, args.imgsz, 8)
    names = (*ARMS, FP32_TEACHER) if native_bf16_cpu() else ARMS
    arms = build_arms(batch, names)
    steps = {k: make_step(m, batch) for k, m in arms.items()}
    graph = {k: saved_bytes(m, batch) for k, m in arms.items()}
    times = timed_rounds(steps, args.step_reps)
    med = medians(times)
    rat = medians(round_ratios(times, "float"))  # per round, against that round's float step: drift cancels
    mem = {}
    for k in ARMS:
        out = subprocess.run([sys.executable, __file__, "--memory-arm", k, "--data", str(data_yaml), "--imgsz",
                              str(args.imgsz), "--threads", str(args.threads)], check=False, capture_output=True,
                             text=True)
        mem[k] = json.loads(out.stdout.strip().splitlines()[-1]) if out.returncode == 0 else None
        if mem[k] is None:
            print(out.stderr[-2000:])
    lines = [(f"step (batch 8, imgsz {args.imgsz}, {torch.get_num_threads()} threads, {args.step_reps} interleaved "
              f"rounds; time: median, vs float: median of per-round ratios):"),
             f"  {'arm':<20} {'time':>8} {'vs float':>9} {'autograd MB':>12} {'step peak MB':>13}"]
    for k in names:
        peak = mem[k]["peak"] / 1e6 if mem.get(k) else float("nan")
        lines.append(f"  {k:<20} {med[k] * 1000:6.0f} ms {rat[k]:8.2f}x {graph[k] / 1e6:12.1f} {peak:13.0f}")
    for k in names[2:]:
        lines.append(f"  {k} / float time {rat[k]:.2f}x, target <= {STEP_TARGET}x: "
                     f"{'PASS' if rat[k] <= STEP_TARGET else 'FAIL'}")
    if mem["QAT"] and mem["QAT+OST"]:
        mr = mem["QAT+OST"]["peak"] / mem["QAT"]["peak"]
        gr = graph["QAT+OST"] / graph["QAT"]
        lines.append(f"  QAT+OST / QAT step peak memory {mr:.2f}x, autograd graph {gr:.2f}x, target <= "
                     f"{MEM_TARGET}x: {'PASS' if mr <= MEM_TARGET else 'FAIL'}")
    return lines


# 2. ablation ----------------------------------------------------------------------------------------------------------
def ablation_arms(args: argparse.Namespace, fp: Path) -> dict[str, dict]:
    """Arm name -> training keys (every arm starts from the float model ``fp``)."""
    hq = {"bits": "hq", "hq_threshold": args.hq_threshold}
    arms = {"float": {"bits": 32}}
    for label, q in (("W8", {"bits": 8}), ("HQ", hq), ("W4", {"bits": 4})):
        arms[f"{label} no KD"] = {**q, "kd": "none"}
        arms[f"{label} OST (self)"] = {**q, "kd": "ost", "float_self": "shared"}
        arms[f"{label} OST (teacher)"] = {**q, "kd": "ost", "teacher": str(fp)}
        if label == "W8":
            arms["W8 Ultralytics quantize=8"] = {"bits": 32, "kd": "none", "quantize": 8}
    return arms


def bench_ablation(args: argparse.Namespace, data_yaml: Path, root: Path) -> list[str]:
    """Float base, then every arm from it; a markdown table."""
    project = root / "ablation"
    t0 = time.time()
    fp = args.weights or train_arm("ghost-n.yaml", data_yaml, project, "fp", args.fp_epochs, args,
                                   bits=32) / "weights/best.pt"
    has_modelopt = importlib.util.find_spec("modelopt") is not None
    res, notes = {}, []
    for name, kw in ablation_arms(args, fp).items():
        if "quantize" in kw and not has_modelopt:
            notes.append(f"{name}: skipped, nvidia-modelopt is not importable (pip install nvidia-modelopt in the "
                         "benchmark's environment)")
            continue
        slug = name.lower().replace(" ", "_").replace("(", "").replace(")", "").replace("=", "")
        try:
            run = train_arm(fp, data_yaml, project, slug, args.q_epochs, args, **kw)
            res[name] = evaluate_run(run, data_yaml, args.imgsz)
            if "quantize" in kw:  # ModelOpt's INT8 layers are invisible to ghost's size accounting
                res[name].update(bits=8.0, mb=float("nan"))
        except Exception as e:  # an optional arm failing must not lose the others
            notes.append(f"{name}: failed ({type(e).__name__}: {str(e)[:200]})")
            continue
        print(f"  {name}: {res[name]}", flush=True)
    f = res.get("float", {"map50": float("nan")})
    rows = md_table(["arm", "avg weight bits", "size MB", "mAP50", "mAP50-95", "mAP50 vs float"],
                    [[name, f"{r['bits']:.2f}", "n/a" if r["mb"] != r["mb"] else f"{r['mb']:.2f}", f"{r['map50']:.1f}",
                      f"{r['map']:.1f}", f"{r['map50'] - f['map50']:+.1f}"] for name, r in res.items()])
    verdicts = []
    for label in ("W4", "HQ"):
        a, b = res.get(f"{label} OST (self)"), res.get(f"{label} no KD")
        if a and b:
            verdicts.append(f"{label}: OST (self) {a['map50']:.1f} vs no KD {b['map50']:.1f} -> "
                            f"{'PASS' if a['map50'] > b['map50'] else 'FAIL'}")
    ours, theirs = res.get("W8 OST (self)"), res.get("W8 Ultralytics quantize=8")
    if ours and theirs:
        verdicts.append(f"W8: ghost-yolo OST {ours['map50']:.1f} vs Ultralytics quantize=8 {theirs['map50']:.1f} -> "
                        f"{'PASS' if ours['map50'] >= theirs['map50'] else 'FAIL'}")
    budget = (f"Budget: ghost-n, vedai-synth rgb+ir ({'32/16' if args.quick else '400/100'} pairs), imgsz {args.imgsz}, "
              f"batch {args.batch}, seed 0; float base {'from ' + str(args.weights) if args.weights else f'trained {args.fp_epochs} epochs'}, "
              f"then {args.q_epochs} epochs per arm (LSQ, first/head convs at 8 bit, OST weight {_defaults()['kd_weight'] * 10:g}, "
              f"HQ threshold {args.hq_threshold}); CPU, {args.threads} threads; {time.time() - t0:.0f} s.")
    return [budget, "", *rows, "", *[f"- {v}" for v in verdicts + notes]]


# 3. modality ----------------------------------------------------------------------------------------------------------
def bench_modality(args: argparse.Namespace, data_yaml: Path, root: Path) -> list[str]:
    """The whole pipeline from scratch per modality: float-phase mAP50 and final HQ + OST mAP50."""
    project = root / "modality"
    t0 = time.time()
    rows = md_table(["modality", "float mAP50", "HQ + OST mAP50", "avg weight bits"])
    for modality in ("rgb", "ir", "rgb+ir"):
        name = modality.replace("+", "_")
        run = train_arm("ghost-n.yaml", data_yaml, project, name, args.mod_epochs, args, modality=modality,
                        bits="hq", hq_threshold=args.hq_threshold, kd="ost", float_self="shared")
        q = json.loads((run / "summary.json").read_text())["quantization"]
        f50, q50 = (100 * (q[k]["mAP50"] or 0) for k in ("float_start", "quantized"))
        rows.append(f"| {modality} | {f50:.1f} | {q50:.1f} | {q['avg_w_bits']:.2f} |")
        print(f"  {modality}: float {f50:.1f} quantized {q50:.1f}", flush=True)
    budget = (f"Budget: ghost-n from scratch, {args.mod_epochs} epochs ({args.mod_epochs // 2} float, then HQ at threshold "
              f"{args.hq_threshold} + OST), imgsz {args.imgsz}, batch {args.batch}, seed 0; float = the float phase's "
              f"last validation; {time.time() - t0:.0f} s.")
    return [budget, "", *rows]


def main(argv: list[str] | None = None) -> int:
    """Run the sections, print their results together, save the markdown: the step section in ``--step-out``, the
    ablation and modality sections in ``--out``."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    if args.memory_arm:
        memory_arm(args)
        return 0
    title = ["# Self-distillation (benchmarks/bench_distill.py)", ""]
    with work_dir(args.workdir, "ghost-bench-distill-") as args.workdir:
        banner("distillation", args.workdir)
        data_yaml = make_data(args.workdir, args.quick, args.imgsz)
        md, out, saved = list(title), [], []
        if not args.skip_step:
            lines = bench_step(args, data_yaml)
            out += lines
            write_md(args.step_out, [*title, "## Step cost", "", "```", *lines, "```", ""])
            saved.append(args.step_out)
        if not args.skip_ablation:
            lines = bench_ablation(args, data_yaml, args.workdir)
            out += ["", *lines]
            md += ["## Ablation", "", *lines, ""]
        if not args.skip_modality:
            lines = bench_modality(args, data_yaml, args.workdir)
            out += ["", *lines]
            md += ["## Modality", "", *lines, ""]
        if len(md) > len(title):
            write_md(args.out, md)
            saved.append(args.out)
        print("\n" + "\n".join(out) + f"\n(saved to {', '.join(map(str, saved)) or 'nothing'})")
    return 0


if __name__ == "__main__":
    run_main(main, reuse_memory=True)  # the steps timed here run as they do in training
