#!/usr/bin/env python
"""Quantized OBB benchmark (issue 20 §6): ghost-n-obb on vedai-synth-obb in float, W8, HQ and W4, and the angle branch
at 8 bits against the width HQ's search would give it, over paired seeds.

Regime A of ``bench_selfteach.py`` (its data, training, evaluation and converged float model), with the OBB model on
the oriented set: a float ghost-n-obb trained until val mAP50 stops rising (or its epoch cap), then a short fine-tune
per arm and seed; every arm of a seed shares that seed (data order, augmentation, calibration batch).

Arms (all kd=none, LSQ, stem and head prediction convs at 8 bit unless said):
  float     the same fine-tune in float (bits=32): the reference of every difference
  W8, W4    one width
  HQ        the HQ search at ``HQ_THRESHOLD`` (chosen for <= 5 average bits; each run records the bits it got); the
            angle branch's last convs (model.23.cv4.{0,1,2}.2) kept at 8 bit by keep_head
  HQ-angle  HQ's widths (the search with keep_head, as a bit map) with those three convs at the width the search picks
            for them without keep_head (``GhostYOLO(float).search(keep_head=False)``)

Every finished (arm, seed) run is appended to ``benchmarks/results/obb_runs.jsonl`` with its settings, so the benchmark
resumes where it stopped (across sessions: the file is committed), and ``--report`` rewrites
``benchmarks/results/obb.md`` from it. Targets (issue 20): W8 within 0.5 mAP50 of float, HQ within 1.5, read on the
paired difference to float (mean, t-based 95 % CI, seeds ahead).

Usage:
    python benchmarks/bench_obb.py --seeds 0 1 2 3 4 5
    python benchmarks/bench_obb.py --report
    python benchmarks/bench_obb.py --smoke          # tiny sizes in a scratch work dir and cache: end to end in minutes
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import bench_selfteach
from bench_selfteach import converged_float, evaluate, make_data, train
from common import RESULTS, ahead, cpu_class, cpu_name, md_table, paired, run_main

CACHE = RESULTS / "obb_runs.jsonl"
REPORT = RESULTS / "obb.md"
PICKS = RESULTS / "obb_float.json"  # the converged float model and the HQ search's picks the cached runs used
MODEL = "ghost-n-obb.yaml"
ANGLE_CONVS = tuple(f"model.23.cv4.{i}.2" for i in range(3))  # the angle branch's last conv at P3, P4, P5
HQ_THRESHOLD = 2.0  # 4.85 average bits on ghost-n (bench_selfteach's HQ); each run records what it got here
# regime A at a size that fits a shared 2-core CPU with five arms per seed
SIZE = {"model": MODEL, "obb": True, "imgsz": 160, "n_train": 400, "n_val": 500, "fp_max_epochs": 30, "fp_patience": 5}
SMOKE = {**SIZE, "imgsz": 64, "n_train": 16, "n_val": 16, "fp_max_epochs": 1, "q_epochs": 1, "batch": 8}
THREADS = 1  # one torch thread per run: on a CPU shared with other work two threads waiting on each other cost more
ARMS = ("float", "W8", "HQ", "HQ-angle", "W4")
TARGETS = {"W8": -0.5, "HQ": -1.5}  # the most a quantized arm may fall below float, in mAP50 points
FIELDS = ("model", "imgsz", "n_train", "n_val", "batch", "q_epochs", "fp_max_epochs", "fp_patience", "data_seed")


def settings() -> dict:
    """The fixed settings of every run (part of each cache record)."""
    s = bench_selfteach.SETTINGS
    return {**{k: s[k] for k in FIELDS}, "hq_threshold": HQ_THRESHOLD, "threads": THREADS}


def arm_keys(arm: str, bitmap: Path | None) -> dict:
    """Training keys of an arm."""
    return {"float": {"bits": 32}, "W8": {"bits": 8}, "W4": {"bits": 4},
            "HQ": {"bits": "hq", "hq_threshold": HQ_THRESHOLD}, "HQ-angle": {"bits": str(bitmap)}}[arm]


def hq_picks(fp: Path, work: Path) -> tuple[dict, Path]:
    """The HQ search on the converged float model, with and without keep_head: the angle convs' picks, the search's
    average bits, and a bit map of HQ's widths with the angle convs at their pick (cached in the work dir)."""
    from ghost_yolo import GhostYOLO
    from ghost_yolo.quant import save_bit_map

    out, bitmap = work / "hq-angle.json", work / "hq-angle-bits.yaml"
    if out.exists() and bitmap.exists():
        return json.loads(out.read_text()), bitmap
    kept = GhostYOLO(fp).search(save=False, hq_threshold=HQ_THRESHOLD, keep_head=True)
    free = GhostYOLO(fp).search(save=False, hq_threshold=HQ_THRESHOLD, keep_head=False)
    missing = [n for n in ANGLE_CONVS if n not in free]
    if missing:
        raise SystemExit(f"{MODEL}: no conv layer named {', '.join(missing)} (the angle branch's last convs)")
    picks = {n: free[n] for n in ANGLE_CONVS}
    save_bit_map({**kept, **picks}, bitmap, model=str(fp), hq_threshold=HQ_THRESHOLD,
                 note="HQ with keep_head, angle convs at the pick without it")
    rec = {"angle_picks": picks, "angle_kept": {n: kept[n] for n in ANGLE_CONVS},
           "head_picks": {n: b for n, b in free.items() if kept[n] != b}}
    out.write_text(json.dumps(rec))
    return rec, bitmap


def key(r: dict) -> tuple:
    """Identity of a run: arm, seed and the settings it ran with."""
    return r["arm"], r["seed"], json.dumps(r["settings"], sort_keys=True)


def load_cache(path: Path) -> list[dict]:
    """Every cached run record."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_one(arm: str, seed: int, work: Path, full: Path, small: Path, fp: Path, fp_rec: dict, bitmap: Path) -> dict:
    """Fine-tune the converged float model as ``arm`` with ``seed`` and evaluate it on the full val split."""
    s = bench_selfteach.SETTINGS
    keys = {**arm_keys(arm, bitmap), "kd": "none", "seed": seed, "val": False, "warmup_epochs": 0, "threads": THREADS}
    t0 = time.time()
    run = train(fp, small, work / "runs-obb", f"{arm}-s{seed}", epochs=s["q_epochs"], close_mosaic=s["q_epochs"],
                **keys)
    minutes = (time.time() - t0) / 60
    from ultralytics.utils import YAML

    bits = YAML.load(run / "bits.yaml")["bits"] if (run / "bits.yaml").exists() else {}
    return {"arm": arm, "seed": seed, "settings": settings(), **evaluate(run / "weights" / "last.pt", full),
            "angle_bits": [bits.get(n, 32) for n in ANGLE_CONVS],
            "train_minutes": round(minutes, 2), "cpu": cpu_name(), "cpu_class": cpu_class(), "cores": os.cpu_count(),
            "start_map50": fp_rec["map50"], "start_map": fp_rec["map"]}


# Report --------------------------------------------------------------------------------------------------------------
def verdict(arm: str, mean: float, lo: float) -> str:
    """The issue's target of a quantized arm against float."""
    if arm not in TARGETS:
        return "-"
    t = TARGETS[arm]
    if math.isnan(lo):
        return f"one seed (mean {'above' if mean >= t else 'below'} {t:+g})"
    if lo >= t:
        return f"**met** (CI above {t:+g})"
    return f"not shown (mean above {t:+g}, CI reaches below)" if mean >= t else f"**not met** (mean below {t:+g})"


def report(records: list[dict], start: dict, smoke: bool = False) -> str:
    """obb.md: the arms against float over paired seeds, and the angle branch at 8 bits vs HQ's pick."""
    s = records[0]["settings"] if records else settings()
    cpus = ", ".join(sorted({f"{r['cpu']} ({r['cpu_class']})" for r in records})) or "none yet"
    minutes = [r["train_minutes"] for r in records]
    by_arm = {arm: {r["seed"]: r for r in records if r["arm"] == arm} for arm in ARMS}
    complete = sorted(set.intersection(*(set(v) for v in by_arm.values()))) if records else []
    partial = sorted({r["seed"] for r in records} - set(complete))
    if complete:  # every figure over the seeds all arms finished, so that means compare like with like
        by_arm = {arm: {k: v for k, v in rs.items() if k in complete} for arm, rs in by_arm.items()}
    fp = start.get("float", {})
    lines = ["# Quantized OBB on vedai-synth-obb (`benchmarks/bench_obb.py`)", ""]
    if smoke:
        lines += ["**Smoke run** (tiny sizes): checks the script end to end; the figures mean nothing.", ""]
    capped = fp and fp["epochs_run"] >= s["fp_max_epochs"]
    how = (f"for its cap of {s['fp_max_epochs']} epochs (not stopped by patience {s['fp_patience']})" if capped else
           f"until mAP50 on 200 val pairs stopped rising (Ultralytics' patience {s['fp_patience']})")
    lines += [f"Protocol: regime A of `bench_selfteach.py` with {s['model']} on the oriented set. Data: "
              f"vedai-synth-obb rgb+ir (generated with seed {s['data_seed']}), {s['n_train']} train pairs, "
              f"{s['imgsz']} px, a validation split of {s['n_val']} pairs evaluated once at the end of each run "
              "(final EMA weights, last.pt; Ultralytics' mAP50 and MMRotate's VOC07 11-point mAP50). The float model "
              f"is trained {how}"
              + (f": {fp['epochs_run']} epochs, best epoch {fp['best_epoch']}, mAP50 {fp['map50']:.1f}, mAP50-95 "
                 f"{fp['map']:.1f}" if fp else "") +
              f". Every arm then fine-tunes {s['q_epochs']} epochs from it (batch {s['batch']}, no warm-up, mosaic "
              "off, optimizer auto, kd=none; LSQ, stem and head prediction convs at 8 bit by keep_head; HQ at "
              f"hq_threshold={s['hq_threshold']}), all arms of a seed with that seed. CPU: {cpus}, "
              f"{s['threads']} torch thread per run on {records[0]['cores'] if records else os.cpu_count()} cores, no "
              "GPU, run under `nice -n 19` beside other benchmarks and tests; "
              f"{statistics.fmean(minutes) if minutes else 0:.1f} min of training per run on average. "
              f"Seeds finished (all {len(ARMS)} arms): {len(complete)} ({', '.join(map(str, complete)) or 'none'})"
              + (f"; seeds {', '.join(map(str, partial))} unfinished, left out of the tables" if complete and partial
                 else "") + ".",
              ""]
    lines += ["Difference: mean over seeds of (arm - float) in mAP50 points with a t-based 95 % CI; ahead: seeds where "
              "the arm beats float. Targets (issue 20): W8 within 0.5 mAP50 of float, HQ within 1.5, read as the CI's "
              "lower bound at -0.5 / -1.5 or above.", "", "### Arms against float", ""]
    rows = []
    base = by_arm["float"]
    for arm, rs in by_arm.items():
        if not rs:
            continue
        v = list(rs.values())
        voc = [r["voc07"] for r in v if "voc07" in r]
        angle = sorted({"/".join(map(str, r["angle_bits"])) for r in v if "angle_bits" in r})
        row = [arm, len(v), f"{statistics.fmean(r['bits'] for r in v):.2f}", ", ".join(angle) or "-",
               f"{statistics.fmean(r['map50'] for r in v):.1f}", f"{statistics.fmean(r['map'] for r in v):.1f}",
               f"{statistics.fmean(voc):.1f}" if voc else "-",
               f"{statistics.fmean(r['map50'] - r['start_map50'] for r in v):+.2f}"]
        seeds = sorted(set(rs) & set(base))
        if arm == "float" or not seeds:
            rows.append(row + ["", "", "", ""])
            continue
        d50 = [rs[k]["map50"] - base[k]["map50"] for k in seeds]
        mean, lo, hi = paired(d50)
        ci = f"[{lo:+.1f}, {hi:+.1f}]" if not math.isnan(lo) else "(one seed)"
        d = statistics.fmean(rs[k]["map"] - base[k]["map"] for k in seeds)
        rows.append(row + [f"{mean:+.2f} {ci}", f"{d:+.2f}", ahead(d50), verdict(arm, mean, lo)])
    lines += md_table(["arm", "seeds", "average weight bits", "angle convs (P3/P4/P5)", "mAP50", "mAP50-95",
                       "mAP50 VOC07", "vs float start, mAP50", "vs float, mAP50 (95 % CI)", "vs float, mAP50-95",
                       "ahead", "target"], rows)
    per_seed = {k: by_arm["float"][k]["map50"] for k in sorted(by_arm["float"])}
    lines += ["", "vs float start: mean of (arm - the converged float model it started from), unpaired: the float arm "
              "is a fine-tune too, whose own seed-to-seed spread (mAP50 per seed: "
              + ", ".join(f"{k}: {v:.1f}" for k, v in per_seed.items()) + ") is part of every paired difference.", ""]
    picks = start.get("hq", {})
    lines += ["### The angle branch", ""]
    if picks:
        pk = picks["angle_picks"]
        lines += ["The angle branch's last conv at each level (`model.23.cv4.{0,1,2}.2`, one output: the angle logit) "
                  "is kept at 8 bit by keep_head. The HQ search on the converged float model's weights "
                  f"(`GhostYOLO(best.pt).search(hq_threshold={s['hq_threshold']}, keep_head=False)`) would give it: "
                  + ", ".join(f"`{n}` {b} bit" for n, b in pk.items()) + ". Every head prediction conv whose pick "
                  "without keep_head is not 8: "
                  + (", ".join(f"`{n}` {b}" for n, b in picks["head_picks"].items()) or "none") + ".", "",
                  "HQ-angle trains with HQ's widths (a bit map) and those three convs at their pick; HQ keeps them at "
                  "8. Difference: HQ-angle - HQ over the same seeds.", ""]
    a, h = by_arm["HQ-angle"], by_arm["HQ"]
    seeds = sorted(set(a) & set(h))
    if seeds:
        d50 = [a[k]["map50"] - h[k]["map50"] for k in seeds]
        dv = [a[k]["voc07"] - h[k]["voc07"] for k in seeds if "voc07" in a[k] and "voc07" in h[k]]
        mean, lo, hi = paired(d50)
        ci = f"[{lo:+.1f}, {hi:+.1f}]" if not math.isnan(lo) else "(one seed)"
        lines += md_table(["angle convs", "paired seeds", "mAP50 (angle at pick)", "mAP50 (angle at 8)",
                           "mAP50 diff (95 % CI)", "mAP50-95 diff", "VOC07 mAP50 diff", "ahead"],
                          [[", ".join(str(b) for b in picks.get("angle_picks", {}).values()) + " vs 8", len(seeds),
                            f"{statistics.fmean(a[k]['map50'] for k in seeds):.1f}",
                            f"{statistics.fmean(h[k]['map50'] for k in seeds):.1f}", f"{mean:+.2f} {ci}",
                            f"{statistics.fmean(a[k]['map'] - h[k]['map'] for k in seeds):+.2f}",
                            f"{statistics.fmean(dv):+.2f}" if dv else "-", ahead(d50)]]) + [""]
    return "\n".join(lines)


def write_report(cache: Path, out: Path, picks: Path, smoke: bool = False) -> None:
    """Rewrite the report from the cache."""
    start = json.loads(picks.read_text()) if picks.exists() else {}
    out.write_text(report(load_cache(cache), start, smoke).rstrip() + "\n")
    print(out.read_text(), flush=True)


def main(argv: list[str] | None = None) -> int:
    """Command line."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--seeds", nargs="+", type=int, default=list(range(6)))
    p.add_argument("--work", type=Path, default=Path(os.environ.get("GHOST_BENCH_DIR", Path.home() / ".cache" /
                                                                    "ghost-yolo-bench")) / "obb")
    p.add_argument("--report", action="store_true", help="only rewrite obb.md from the cache")
    p.add_argument("--smoke", action="store_true", help="tiny sizes; cache and report in the work dir, not results/")
    a = p.parse_args(argv)
    size = SMOKE if a.smoke else SIZE
    if a.smoke:
        a.work = a.work.with_name(a.work.name + "-smoke")
    cache, out, picks = ((a.work / CACHE.name, a.work / REPORT.name, a.work / PICKS.name) if a.smoke else
                         (CACHE, REPORT, PICKS))
    bench_selfteach.SETTINGS.update(size)  # its data, training and evaluation helpers read their sizes from there
    if a.report:
        write_report(cache, out, picks, a.smoke)
        return 0
    a.work.mkdir(parents=True, exist_ok=True)
    full, small = make_data(a.work)
    fp, fp_rec = converged_float(a.work, small, full, MODEL, threads=THREADS)
    hq, bitmap = hq_picks(fp, a.work)
    start = {"float": fp_rec, "hq": hq}
    recorded = json.loads(picks.read_text()) if picks.exists() else {}
    if recorded and recorded != start:
        raise SystemExit(f"{a.work} holds another converged float model or search than the cached runs used "
                         f"({picks.name}): pass the --work they were made in, or move the cache aside")
    picks.write_text(json.dumps(start) + "\n")
    print(f"converged float model: {fp_rec}; angle convs: HQ picks {hq['angle_picks']}", flush=True)
    done = {key(r) for r in load_cache(cache)}
    for seed in a.seeds:  # seed-major: partial results are paired across arms
        for arm in a.arms:
            if key({"arm": arm, "seed": seed, "settings": settings()}) in done:
                continue
            rec = run_one(arm, seed, a.work, full, small, fp, fp_rec, bitmap)
            with cache.open("a") as f:
                f.write(json.dumps(rec) + "\n")
            print(f"[obb] {arm} seed {seed}: mAP50 {rec['map50']} mAP50-95 {rec['map']} VOC07 {rec.get('voc07')} "
                  f"bits {rec['bits']} ({rec['train_minutes']} min)", flush=True)
            write_report(cache, out, picks, a.smoke)
    write_report(cache, out, picks, a.smoke)
    return 0


if __name__ == "__main__":
    run_main(main)
