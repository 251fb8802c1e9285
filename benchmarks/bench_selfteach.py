#!/usr/bin/env python
"""Self-teaching benchmark: does distillation from the float self beat plain QAT, over paired seeds?

Regime A (fine-tune): a converged float ghost-n on vedai-synth rgb+ir (trained until val mAP50 stops rising: Ultralytics'
``patience``; cached in the work dir), then QAT for a fixed budget at W4, HQ and W8 by every arm. Regime B (the
one-command pipeline): float epochs, HQ search, quantized epochs at one fixed total budget, from the model YAML.

Arms (every arm of a seed shares that seed: data order, augmentation, calibration batch and start weights):
  float          the same fine-tune in float (bits=32): what the float model reaches with this budget
  none           plain QAT (kd=none)
  ost-shared     OST from the live float self sharing the student's BatchNorm (the project's first implementation)
  ost-frozen     OST from the frozen converged float model (teacher=, the reference's way)
  co-<losses>    the co-trained float self (own BatchNorm, own detection loss) with kd=<losses>
  frozen-<losses> the frozen float model with kd=<losses>

Every finished (regime, arm, width, seed) run is appended to ``benchmarks/results/selfteach_runs.jsonl`` with its
settings, so the benchmark resumes where it stopped (across sessions: the file is committed) and ``--report`` rewrites
``benchmarks/results/selfteach.md`` from it alone. Evaluation: the final EMA weights (last.pt) on a validation split of
``--n-val`` pairs, once at the end of each run (the trainer validates on 32 pairs only); for co-trained arms also their
float self. Statistics per arm: mean mAP50 and mAP50-95, the mean paired difference to ``none`` of the same seeds with
a t-based 95 % CI, and in how many seeds the arm is ahead.

Usage:
    python benchmarks/bench_selfteach.py --regime A --widths W4 HQ --arms none ost-shared co-cls+dfl --seeds 0 1 2
    python benchmarks/bench_selfteach.py --report            # rewrite selfteach.md from the cache
    python benchmarks/bench_selfteach.py --step              # step time and peak memory of the arms vs float / QAT
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

from common import (RESULTS, ahead, cpu_class, cpu_name, make_step, md_table, paired, real_batch, round_ratios, run_main,
                    step_peak_memory, timed_rounds, vedai_synth)

CACHE = RESULTS / "selfteach_runs.jsonl"
REPORT = RESULTS / "selfteach.md"
# HQ4: a threshold meant to give 4 bits or fewer on average, where the quantized model has a gap left to recover (issue
# 18 §4); each run records the average bits it got. Not measured yet: kd=auto has no row for it (distill/auto.py).
WIDTHS = {"W4": {"bits": 4}, "HQ": {"bits": "hq", "hq_threshold": 2.0}, "HQ4": {"bits": "hq", "hq_threshold": 8.0},
          "W8": {"bits": 8}}
# fixed settings of every run (part of each cache record)
SETTINGS = {"model": "ghost-n.yaml", "imgsz": 160, "n_train": 400, "n_val": 1000, "batch": 16, "q_epochs": 3,
            "fp_max_epochs": 50, "fp_patience": 6, "b_epochs": 12, "b_fp_epochs": 9, "data_seed": 0}
CONFIRM_SEED = 10  # seeds from here on confirm an arm chosen on the screening seeds below it


def arm_keys(arm: str, teacher: Path | None) -> dict:
    """Training keys of an arm (see the module docstring)."""
    if arm == "none":
        return {"kd": "none"}
    if arm == "float":  # the reference: the same fine-tune without quantization (its width column is ignored)
        return {"kd": "none", "bits": 32}
    if arm == "ost-shared":
        return {"kd": "ost", "float_self": "shared"}
    if arm == "ost-frozen":
        return {"kd": "ost", "teacher": str(teacher)}
    kind, _, losses = arm.partition("-")
    if kind == "co" and losses:
        return {"kd": losses, "float_self": "cotrain"}
    if kind == "frozen" and losses:
        return {"kd": losses, "teacher": str(teacher)}
    raise SystemExit(f"unknown arm {arm!r}")


# Data and the converged float model ----------------------------------------------------------------------------------
def make_data(work: Path) -> tuple[Path, Path]:
    """vedai-synth (vedai-synth-obb where SETTINGS has ``obb``) at the benchmark's size: (data YAML with the full val
    split, data YAML with a 32-pair val list)."""
    from ultralytics.utils import YAML

    from ghost_yolo.data.synthetic import VEDAI_NAMES

    s = SETTINGS
    obb = s.get("obb", False)
    root = work / f"vedai-synth{'-obb' * obb}-{s['imgsz']}-{s['n_train']}-{s['n_val']}"
    full, small = root / "data.yaml", root / "data-small-val.yaml"
    if not small.exists():
        vedai_synth(root, s["n_train"], s["n_val"], s["imgsz"], seed=s["data_seed"], obb=obb)
        val = sorted((root / "images" / "val").glob("*_co.png"))
        (root / "val32.txt").write_text("\n".join(str(p) for p in val[:32]) + "\n")
        (root / "val200.txt").write_text("\n".join(str(p) for p in val[-200:]) + "\n")
        for name, split in ((small, "val32.txt"), (root / "data-val200.yaml", "val200.txt")):
            YAML.save(name, {"path": str(root), "train": "images/train", "val": split, "pairing": "suffix",
                             "names": VEDAI_NAMES})
    return full, small


def train(model: str | Path, data: Path, project: Path, name: str, **kw) -> Path:
    """One training run with the fixed settings; returns its run directory."""
    from ghost_yolo import GhostYOLO

    args = {"data": str(data), "imgsz": SETTINGS["imgsz"], "batch": SETTINGS["batch"], "workers": 2,
            "deterministic": True, "project": str(project), "name": name, "exist_ok": True, "plots": False,
            "verbose": False, **kw}
    GhostYOLO(model).train(**args)
    return project / name


def evaluate(weights: Path, data: Path, as_float: bool = False) -> dict:
    """mAP50 / mAP50-95 (percent) of ``weights`` on the full val split, plus average bits (and the VOC07 11-point mAP50
    where the validator gives one: OBB)."""
    from ghost_yolo import GhostYOLO
    from ghost_yolo.quant import QuantState, average_bits, quant_state

    m = GhostYOLO(weights)
    bits = average_bits(m.model) if quant_state(m.model) is QuantState.ACTIVE and not as_float else 32.0
    met = m.val(data=str(data), imgsz=SETTINGS["imgsz"], batch=32, workers=2, plots=False, verbose=False,
                as_float=as_float)
    out = {"map50": round(100 * float(met.box.map50), 2), "map": round(100 * float(met.box.map), 2),
           "bits": round(bits, 3)}
    if m.task == "obb" and getattr(met, "voc07_map50", None) is not None:
        out["voc07"] = round(100 * float(met.voc07_map50), 2)
    return out


def converged_float(work: Path, small: Path, full: Path, model: str = SETTINGS["model"], **kw) -> tuple[Path, dict]:
    """The float ``model`` (ghost-n) trained until mAP50 on 200 val pairs stops rising (cached per model YAML; ``kw``:
    further training keys): its best.pt and its record."""
    name = "converged" if model == SETTINGS["model"] else f"converged-{Path(model).stem}"
    run = work / "fp" / name
    rec_file = work / "fp" / f"{name}.json"
    if rec_file.exists():
        return run / "weights" / "best.pt", json.loads(rec_file.read_text())
    t0 = time.time()
    val200 = full.with_name("data-val200.yaml")  # stopping is judged on 200 val pairs (every epoch), the record on all
    train(model, val200, work / "fp", name, bits=32, kd="none", seed=0,
          epochs=SETTINGS["fp_max_epochs"], patience=SETTINGS["fp_patience"], val=True, close_mosaic=5, **kw)
    rec = float_record(run, full, t0)
    rec_file.write_text(json.dumps(rec))
    return run / "weights" / "best.pt", rec


def float_record(run: Path, full: Path, t0: float) -> dict:
    """The record of a finished float run: epochs run, the epoch of best val mAP50, its best.pt on the full val split,
    minutes since ``t0``."""
    rows = (run / "results.csv").read_text().strip().splitlines()
    head = rows[0].split(",")
    maps = [float(r.split(",")[head.index("metrics/mAP50(B)")]) for r in rows[1:]]
    return {"epochs_run": len(rows) - 1, "best_epoch": 1 + max(range(len(maps)), key=maps.__getitem__),
            **evaluate(run / "weights" / "best.pt", full), "minutes": round((time.time() - t0) / 60, 1)}


# Runs and the cache --------------------------------------------------------------------------------------------------
def load_cache() -> list[dict]:
    """Every cached run record."""
    if not CACHE.exists():
        return []
    return [json.loads(line) for line in CACHE.read_text().splitlines() if line.strip()]


def key(r: dict) -> tuple:
    """Identity of a run: regime, arm, width, seed and the settings it ran with."""
    return r["regime"], r["arm"], r["width"], r["seed"], json.dumps(r["settings"], sort_keys=True)


def run_one(regime: str, arm: str, width: str, seed: int, work: Path, full: Path, small: Path, fp: Path | None,
            fp_rec: dict | None = None) -> dict:
    """Train and evaluate one (regime, arm, width, seed)."""
    project = work / f"runs-{regime}"
    name = f"{arm}-{width}-s{seed}"
    keys = {**WIDTHS[width], **arm_keys(arm, fp), "seed": seed, "val": False, "warmup_epochs": 0}
    t0 = time.time()
    if regime == "A":
        run = train(fp, small, project, name, epochs=SETTINGS["q_epochs"], close_mosaic=SETTINGS["q_epochs"], **keys)
    else:
        run = train(SETTINGS["model"], small, project, name, epochs=SETTINGS["b_epochs"],
                    fp_epochs=SETTINGS["b_fp_epochs"], close_mosaic=3, **{**keys, "warmup_epochs": 1})
    minutes = (time.time() - t0) / 60
    rec = {"regime": regime, "arm": arm, "width": width, "seed": seed, "settings": SETTINGS,
           **evaluate(run / "weights" / "last.pt", full), "train_minutes": round(minutes, 2),
           "cpu": cpu_name(), "cpu_class": cpu_class(), "threads": os.cpu_count()}
    if regime == "A" and fp_rec:  # which converged float model the run started from (one per machine and work dir)
        rec["start_map50"], rec["start_map"] = fp_rec["map50"], fp_rec["map"]
    if arm.startswith("co-"):
        fs = evaluate(run / "weights" / "last.pt", full, as_float=True)
        rec["float_self_map50"], rec["float_self_map"] = fs["map50"], fs["map"]
    return rec


def rerun(cached: dict, now: dict, fp_rec: dict | None) -> None:
    """Append a cached run trained again to ``selfteach_rerun.md``: both figures, the CPUs, and whether they agree."""
    path = RESULTS / "selfteach_rerun.md"
    if not path.exists():
        path.write_text("# Cached self-teaching runs trained again (`bench_selfteach.py --rerun`)\n\n"
                        "Same seed, settings and code path; a different CPU class (ISA, native bf16 teacher passes) "
                        "changes floating-point rounding and so the training path, so figures agree to the digit only "
                        "on the CPU class that made them.\n\n"
                        + "\n".join(md_table(["run", "cached mAP50 / mAP50-95", "cached on", "now", "now on",
                                               "converged float now (mAP50)", "same"])) + "\n")
    same = (cached["map50"], cached["map"]) == (now["map50"], now["map"])
    row = [f"{now['regime']} {now['width']} {now['arm']} seed {now['seed']}", f"{cached['map50']} / {cached['map']}",
           f"{cached.get('cpu', '?')} ({cached.get('cpu_class', 'class not recorded')})",
           f"{now['map50']} / {now['map']}", f"{now['cpu']} ({now['cpu_class']})",
           (fp_rec or {}).get("map50", "-"), "yes" if same else "no"]
    with path.open("a") as f:
        f.write("| " + " | ".join(map(str, row)) + " |\n")
    print(f"[selfteach] rerun {row}", flush=True)


# Statistics and the report -------------------------------------------------------------------------------------------
def report(records: list[dict], fp_rec: dict | None = None) -> str:
    """selfteach.md: per regime and width, every arm against none over the seeds both have."""
    s = SETTINGS
    lines = ["# Self-teaching over paired seeds (`benchmarks/bench_selfteach.py`)", "",
             f"Data: vedai-synth rgb+ir, {s['n_train']} train pairs, {s['imgsz']} px, validation split of {s['n_val']} "
             "pairs evaluated once at the end of each run (final EMA weights, last.pt). Model ghost-n, LSQ, stem and "
             f"head prediction convs at 8 bit, HQ at hq_threshold={WIDTHS['HQ']['hq_threshold']} (HQ4: "
             f"{WIDTHS['HQ4']['hq_threshold']}), batch {s['batch']}, "
             "optimizer auto (AdamW), every arm of a seed shares that seed. CPU: "
             f"{', '.join(sorted({r.get('cpu', '?') for r in records}))} (x86_64: the development machine's 2-core "
             "Xeon, recorded before the model name was), 2 cores, no GPU.", ""]
    if fp_rec:
        capped = fp_rec["epochs_run"] >= s["fp_max_epochs"]
        how = (f"for its cap of {s['fp_max_epochs']} epochs (not converged by Ultralytics' patience "
               f"{s['fp_patience']}: its best epoch was the last, still rising slowly)" if capped else
               f"until mAP50 on 200 val pairs stopped rising (patience {s['fp_patience']})")
        lines += [f"Regime A starts from a float ghost-n trained {how}: {fp_rec['epochs_run']} epochs, best epoch "
                  f"{fp_rec['best_epoch']}, mAP50 "
                  f"{fp_rec['map50']:.1f}, mAP50-95 {fp_rec['map']:.1f} on the {s['n_val']}-pair split. Each arm then "
                  f"trains {s['q_epochs']} quantized epochs (no warm-up).", ""]
    lines += [f"Regime B runs the one-command pipeline from the YAML: {s['b_epochs']} epochs, {s['b_fp_epochs']} float, "
              "the HQ search, then quantized epochs.", "",
              "Difference: mean over seeds of (arm - none) in mAP50 points, with a t-based 95 % CI; ahead: seeds where "
              f"the arm beats none. Arms are screened on seeds below {CONFIRM_SEED}; the chosen one is confirmed on "
              f"fresh seeds from {CONFIRM_SEED} on, reported on their own. Targets (regime A, at W4 and at HQ): "
              "+1.0 mAP50 or more with the CI's lower bound above 0.", ""]
    for regime in ("A", "B"):
        for width in WIDTHS:
            rows = [r for r in records if r["regime"] == regime and r["width"] == width]
            if not rows:
                continue
            base = {r["seed"]: r for r in rows if r["arm"] == "none"}
            qbits = [r["bits"] for r in rows if r["bits"] < 32] or [32.0]  # the float reference arm aside
            lines += [f"## Regime {regime}, {width} ({statistics.fmean(qbits):.2f} average weight "
                      "bits)", ""]
            starts = sorted({(r["start_map50"], r["start_map"], f"{r['cpu']} ({r.get('cpu_class', '?')})")
                             for r in rows if "start_map50" in r})
            if starts and fp_rec and any(st[:2] != (fp_rec["map50"], fp_rec["map"]) for st in starts):
                lines += ["These runs start from another converged float model, trained the same way on "
                          + "; ".join(f"{c} (mAP50 {m50:.1f}, mAP50-95 {m:.1f})" for m50, m, c in starts)
                          + ": compare arms within this section only.", ""]
            lines += [
                      "| arm | seeds | mAP50 | mAP50-95 | vs none, mAP50 (95 % CI) | vs none, mAP50-95 | ahead | float "
                      "self mAP50 |", "|---|---|---|---|---|---|---|---|"]
            groups = []
            for arm in dict.fromkeys(r["arm"] for r in rows):
                rs = sorted((r for r in rows if r["arm"] == arm), key=lambda r: r["seed"])
                screen = [r for r in rs if r["seed"] < CONFIRM_SEED]
                confirm = [r for r in rs if r["seed"] >= CONFIRM_SEED]
                if arm != "none" and screen and confirm:  # the confirmation is judged on fresh seeds alone
                    groups += [(f"{arm} (screen)", screen), (f"{arm} (confirm, fresh seeds)", confirm)]
                else:
                    groups.append((arm, rs))
            for arm, rs in groups:
                m50 = statistics.fmean(r["map50"] for r in rs)
                m = statistics.fmean(r["map"] for r in rs)
                seeds = ",".join(str(r["seed"]) for r in rs)
                fs = [r["float_self_map50"] for r in rs if "float_self_map50" in r]
                fs_txt = f"{statistics.fmean(fs):.1f}" if fs else ""
                pairs = [(r, base[r["seed"]]) for r in rs if r["seed"] in base]
                if rs[0]["arm"] == "none" or not pairs:
                    lines.append(f"| {arm} | {seeds} | {m50:.1f} | {m:.1f} | | | | {fs_txt} |")
                    continue
                d50 = [a["map50"] - b["map50"] for a, b in pairs]
                d = [a["map"] - b["map"] for a, b in pairs]
                mean, lo, hi = paired(d50)
                mean_m = statistics.fmean(d)
                ci = f"[{lo:+.1f}, {hi:+.1f}]" if not math.isnan(lo) else "(one seed)"
                lines.append(f"| {arm} | {seeds} | {m50:.1f} | {m:.1f} | {mean:+.2f} {ci} | {mean_m:+.2f} | "
                             f"{ahead(d50)} | {fs_txt} |")
            lines.append("")
    for extra in ("selfteach_grad.md", "selfteach_step.md"):
        if (RESULTS / extra).exists():
            lines += [(RESULTS / extra).read_text().strip(), ""]
    return "\n".join(lines)


def write_report(work: Path | None) -> None:
    """Rewrite selfteach.md from the cache."""
    fp_rec = None
    for w in [work] if work else []:
        f = w / "fp" / "converged.json"
        if f.exists():
            fp_rec = json.loads(f.read_text())
    cached_fp = RESULTS / "selfteach_float.json"  # the start of the report's first runs; later ones record their own
    if cached_fp.exists():
        fp_rec = json.loads(cached_fp.read_text())
    elif fp_rec:
        cached_fp.write_text(json.dumps(fp_rec) + "\n")
    REPORT.write_text(report(load_cache(), fp_rec) + "\n")
    print(REPORT.read_text())


# Step time and memory ------------------------------------------------------------------------------------------------
STEP_ARMS = ("float", "QAT", "QAT+ost-shared", "QAT+ost-shared fp32", "QAT+frozen-cls+dfl", "QAT+co-cls+dfl",
             "QAT+co-ost")
THREADS = 2


def build_step_arm(name: str, batch: dict):
    """ghost-n in float, at W4 (calibrated, as the trainer's quantized start), and W4 with a distiller."""
    import torch
    from ultralytics.cfg import get_cfg

    from ghost_yolo.distill import DistillRecipe
    from ghost_yolo.engine.setup import setup_qat
    from ghost_yolo.models.model import GhostDetectionModel
    from ghost_yolo.quant import QuantRecipe

    torch.manual_seed(0)
    m = GhostDetectionModel("ghost-n.yaml", ch=4, nc=8, verbose=False)
    m.args = get_cfg()
    if name != "float":  # the trainer's set-up, started at once on the batch
        quant, distill, precision = QuantRecipe.from_args(bits=4), None, ""
        if "+" in name:
            arm, _, precision = name.split("+", 1)[1].partition(" ")
            keys = arm_keys(arm, None)
            if "teacher" in keys:  # the frozen float start: the float self frozen at the quantized start
                keys = {**keys, "teacher": None, "float_self": "frozen"}
            distill = DistillRecipe.from_args(keys, quant, m)
        setup_qat(m, quant, distill, images=batch["img"], bf16_teacher=False if precision == "fp32" else None)
    return m.train()


def memory_arm(name: str, data: Path, imgsz: int) -> None:
    """(subprocess) Peak resident memory of four steps above the loaded process."""
    import torch

    torch.set_num_threads(THREADS)
    batch = real_batch(data, imgsz, 8)
    m = build_step_arm(name, batch)
    print(json.dumps({"peak": step_peak_memory(make_step(m, batch))[0]}))


def bench_step(data: Path, imgsz: int, reps: int) -> str:
    """Interleaved rounds; time ratio = median of per-round ratios to float; peak memory per arm in a subprocess."""
    import torch

    from ghost_yolo.distill import native_bf16_cpu

    batch = real_batch(data, imgsz, 8)
    torch.set_num_threads(THREADS)  # Ultralytics' dataset set-up may leave it at 1
    steps = {k: make_step(build_step_arm(k, batch), batch) for k in STEP_ARMS}  # the step bench_distill times
    times = timed_rounds(steps, reps)
    ratios, qratios = round_ratios(times, "float"), round_ratios(times, "QAT")
    mem = {}
    for k in STEP_ARMS:
        out = subprocess.run([sys.executable, __file__, "--memory-arm", k, "--data", str(data), "--imgsz", str(imgsz)],
                             capture_output=True, text=True, check=False)
        mem[k] = json.loads(out.stdout.strip().splitlines()[-1])["peak"] if out.returncode == 0 else math.nan
    lines = [f"## Step time and memory (batch 8, {imgsz} px, {torch.get_num_threads()} threads, {reps} interleaved "
             f"rounds, native bf16: {'yes' if native_bf16_cpu() else 'no'})", "",
             "| arm | step | vs float | vs QAT | step peak MB | peak vs QAT |", "|---|---|---|---|---|---|"]
    for k in STEP_ARMS:
        lines.append(f"| {k} | {statistics.median(times[k]) * 1000:.0f} ms | {statistics.median(ratios[k]):.2f}x | "
                     f"{statistics.median(qratios[k]):.2f}x | {mem[k] / 1e6:.0f} | {mem[k] / mem['QAT']:.2f}x |")
    lines += ["", "Targets: the co-trained self's step <= 2.5x a float step; its peak memory <= 2.1x a plain QAT step.",
              "No-gradient teacher passes (shared, frozen) run in bf16 on CPUs with native bf16; `fp32` rows force fp32, "
              "the figure for CPUs without it. The co-trained float pass trains, so it runs in fp32 either way."]
    return "\n".join(lines)


def gradient_ratios(fp: Path, data: Path, width: str = "W4", n_batches: int = 4) -> str:
    """How strong each loss is at its default weight: the norm of its gradient on the shared conv weights over the
    detection loss's, at the start of QAT from the converged float model (the teacher: that float model)."""
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.nn.tasks import load_checkpoint

    from ghost_yolo.distill import KD_LOSSES, DistillRecipe
    from ghost_yolo.distill.teacher import bn_stats_frozen
    from ghost_yolo.engine.setup import setup_qat
    from ghost_yolo.quant import QuantRecipe, float_mode, quant_layers

    torch.manual_seed(0)
    batches = [real_batch(data, SETTINGS["imgsz"], SETTINGS["batch"]) for _ in range(n_batches)]
    model = load_checkpoint(fp, device="cpu")[0].float()
    model.args = get_cfg()
    for p in model.parameters():  # checkpoints load frozen for inference, with in-place activations
        p.requires_grad_(True)
    for m in model.modules():
        if hasattr(m, "inplace"):
            m.inplace = False
    quant = QuantRecipe.from_args(WIDTHS[width])
    distill = DistillRecipe.from_args({}, quant, model, kd="+".join(KD_LOSSES), float_self="shared")
    setup_qat(model, quant, distill, images=batches[0]["img"])
    model.train()
    d = model.distiller
    model.criterion = model.init_criterion()
    weights = [m.weight for m in quant_layers(model).values()]
    sums = dict.fromkeys(("det", *KD_LOSSES), 0.0)
    for b in batches:
        with torch.no_grad(), float_mode(model), bn_stats_frozen(model):
            teacher, _ = d._run(model, b["img"], full=True)
        for name in sums:  # a fresh student pass per loss (its own graph)
            student, preds = d._run(model, b["img"], full=True)
            value = (model.criterion(preds, b)[0].sum() / b["img"].shape[0] if name == "det" else
                     d.weights[name] * d.terms[name](student, teacher)[0])
            g = torch.autograd.grad(value, weights, allow_unused=True)
            sums[name] += float(torch.sqrt(sum((x.float() ** 2).sum() for x in g if x is not None)))
    lines = [f"Gradient norm of each loss at its default weight on the shared conv weights, as a fraction of the "
             f"detection loss's, at the start of {width} QAT from the converged float model ({n_batches} augmented "
             f"batches of {SETTINGS['batch']}, {SETTINGS['imgsz']} px):", ""]
    lines += [f"- {n} (weight {KD_LOSSES[n].default_weight:g}): {sums[n] / sums['det']:.1%}" for n in KD_LOSSES]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--regime", choices=("A", "B"), default="A")
    p.add_argument("--widths", nargs="+", default=["W4", "HQ"], choices=list(WIDTHS))
    p.add_argument("--arms", nargs="+", default=["none", "ost-shared", "ost-frozen", "co-cls+dfl", "frozen-cls+dfl"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--work", type=Path, default=Path(os.environ.get("GHOST_BENCH_DIR", Path.home() / ".cache" /
                                                                    "ghost-yolo-bench")))
    p.add_argument("--report", action="store_true", help="only rewrite selfteach.md from the cache")
    p.add_argument("--rerun", action="store_true", help="train cached runs again and append the comparison with the "
                   "cached figures to selfteach_rerun.md (the cache is left as it is)")
    p.add_argument("--step", action="store_true", help="step time and memory section (selfteach_step.md)")
    p.add_argument("--step-reps", type=int, default=11)
    p.add_argument("--grad-ratio", action="store_true", help="gradient of each loss vs detection (selfteach_grad.md)")
    p.add_argument("--memory-arm", help=argparse.SUPPRESS)
    p.add_argument("--data", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--imgsz", type=int, default=256, help="step section image size (256, as bench_distill)")
    a = p.parse_args(argv)
    if a.memory_arm:
        memory_arm(a.memory_arm, a.data, a.imgsz)
        return 0
    a.work.mkdir(parents=True, exist_ok=True)
    if a.report:
        write_report(a.work)
        return 0
    full, small = make_data(a.work)
    if a.step:
        (RESULTS / "selfteach_step.md").write_text(bench_step(small, a.imgsz, a.step_reps) + "\n")
        write_report(a.work)
        return 0
    fp, fp_rec = converged_float(a.work, small, full) if a.regime == "A" or a.grad_ratio else (None, None)
    if a.grad_ratio:
        (RESULTS / "selfteach_grad.md").write_text(gradient_ratios(fp, small) + "\n")
        write_report(a.work)
        return 0
    if fp_rec:
        print(f"converged float model: {fp_rec}")
    done = {key(r): r for r in load_cache()}
    for seed in a.seeds:  # seed-major: partial results are paired across arms
        for width in a.widths:
            for arm in a.arms:
                probe = {"regime": a.regime, "arm": arm, "width": width, "seed": seed, "settings": SETTINGS}
                if key(probe) in done and a.rerun:
                    if arm != "none" and "frozen" in arm and fp is None:
                        fp = converged_float(a.work, small, full)[0]
                    rerun(done[key(probe)], run_one(a.regime, arm, width, seed, a.work, full, small, fp, fp_rec), fp_rec)
                    continue
                if key(probe) in done:
                    continue
                if arm != "none" and "frozen" in arm and fp is None:
                    fp = converged_float(a.work, small, full)[0]
                rec = run_one(a.regime, arm, width, seed, a.work, full, small, fp, fp_rec)
                with CACHE.open("a") as f:
                    f.write(json.dumps(rec) + "\n")
                print(f"[selfteach] {a.regime} {width} {arm} seed {seed}: mAP50 {rec['map50']} mAP50-95 {rec['map']} "
                      f"({rec['train_minutes']} min)", flush=True)
                write_report(a.work)
    write_report(a.work)
    return 0


if __name__ == "__main__":
    run_main(main)
