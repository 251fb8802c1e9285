#!/usr/bin/env python
"""Missing-sensor benchmark: mAP50 with both bands, IR missing and colour missing, with and without modality dropout.

Four models are trained with the same budget and seeds on vedai-synth (400 train / 100 val pairs): rgb+ir, rgb+ir
with ``modality_dropout=--p``, and the colour-only and IR-only models on the same pairs (``modality=rgb|ir``). Each
rgb+ir model is validated three times: both bands, ``drop_modality=ir`` and ``drop_modality=rgb`` (the missing band
filled as in ``ghost_yolo/data/missing.py``); the single-modality models once. Targets (means over seeds): with dropout,
IR-missing mAP50 within 2 points of the rgb-only model, and both-bands mAP50 within 1 point of the model trained
without dropout. The table and the verdicts are printed and saved as markdown (``--out``).

Float models (``bits=32``): what is measured is the input, not the quantizer. Finished runs in ``--workdir`` are reused
when the script is repeated. It exits 0 whatever the numbers: it is a benchmark, not a test.

Usage (from the repository root, ghost-yolo installed):
    python benchmarks/bench_modality.py                      # ~20 min on a 2-core CPU
    python benchmarks/bench_modality.py --seeds 0            # one seed, about half of that
    python benchmarks/bench_modality.py --quick              # smoke run (tiny sizes; the numbers mean nothing)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch
from common import (add_run_options, banner, base_parser, make_data, md_table, run_in_work_dir, run_main,
                    write_md)

IR_MISSING_TARGET = 2.0  # dropout model with IR missing: mAP50 points below the rgb-only model, at most
BOTH_TARGET = 1.0  # dropout model with both bands: mAP50 points below the model trained without dropout, at most
CONDITIONS = {"both": None, "IR missing": "ir", "colour missing": "rgb"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--p", type=float, default=0.5, help="modality_dropout of the dropout model (0.5)")
    p.add_argument("--imgsz", type=int, default=160, help="training and validation image size (160)")
    p.add_argument("--epochs", type=int, default=10, help="epochs of every model (10)")
    p.add_argument("--batch", type=int, default=16, help="batch size (16)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="training seeds (0 1)")
    add_run_options(p, out="benchmarks/results/modality.md",
                    workdir_help="data and runs go here, finished runs are reused (default: temporary)")
    a = p.parse_args(argv)
    if a.quick:
        a.epochs, a.imgsz, a.seeds = 1, 64, a.seeds[:1]
    return a


def arms(p: float) -> dict[str, dict]:
    """The four models: name -> training keys."""
    return {"rgb+ir": {"modality": "rgb+ir"}, f"rgb+ir, modality_dropout={p:g}": {"modality": "rgb+ir",
            "modality_dropout": p}, "rgb only": {"modality": "rgb"}, "ir only": {"modality": "ir"}}  # fmt: skip


def train(data_yaml: Path, run: Path, seed: int, args: argparse.Namespace, **kw) -> Path:
    """One float model with the benchmark's fixed budget (reused when finished); returns its best.pt."""
    from ghost_yolo import GhostYOLO

    best = run / "weights" / "best.pt"
    if (run / "summary.json").exists() and best.exists():
        print(f"  {run.name}: finished earlier, reused", flush=True)
        return best
    GhostYOLO("ghost-n.yaml").train(data=str(data_yaml), epochs=args.epochs, imgsz=args.imgsz, batch=args.batch,
                                    bits=32, seed=seed, deterministic=True, workers=2, project=str(run.parent),
                                    name=run.name, exist_ok=True, plots=False, val=False, warmup_epochs=1,
                                    close_mosaic=max(1, args.epochs // 4), verbose=False, **kw)
    return best


def evaluate(best: Path, data_yaml: Path, imgsz: int, drop: str | None, project: Path) -> float:
    """mAP50 (points) of a model on the val pairs, with ``drop`` treated as missing (val dirs under ``project``)."""
    from ghost_yolo import GhostYOLO

    met = GhostYOLO(best).val(data=str(data_yaml), imgsz=imgsz, batch=16, workers=2, plots=False, verbose=False,
                              drop_modality=drop, project=str(project))
    return round(100 * float(met.box.map50), 2)


def run_all(args: argparse.Namespace, data_yaml: Path) -> dict[str, dict[str, list[float]]]:
    """Train every model at every seed and validate it in every condition it can take: name -> condition -> mAP50s."""
    res: dict[str, dict[str, list[float]]] = {}
    for seed in args.seeds:
        for name, kw in arms(args.p).items():
            tag = name.split(",")[0].replace(" only", "").replace("+", "")
            run = args.workdir / "runs" / f"{tag}{'-drop' if 'modality_dropout' in kw else ''}-s{seed}"
            best = train(data_yaml, run, seed, args, **kw)
            conds = CONDITIONS if kw["modality"] == "rgb+ir" else {"both": None}
            for cond, drop in conds.items():
                score = evaluate(best, data_yaml, args.imgsz, drop, args.workdir / "val")
                res.setdefault(name, {}).setdefault(cond, []).append(score)
            print(f"  seed {seed} {name}: {({c: v[-1] for c, v in res[name].items()})}", flush=True)
    return res


def fmt(values: list[float] | None) -> str:
    """Mean with the per-seed values, e.g. '41.3 (40.1, 42.5)'."""
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.1f}" + (f" ({', '.join(f'{v:.1f}' for v in values)})" if len(values) > 1 else "")


def report(res: dict, args: argparse.Namespace, seconds: float) -> list[str]:
    """Markdown: protocol, table, verdicts."""
    names = list(arms(args.p))
    plain, drop, rgb = (statistics.fmean(res[n]["both"]) for n in names[:3])
    drop_ir = statistics.fmean(res[names[1]]["IR missing"])
    rows = md_table(["model (trained on)", "both bands", "IR missing", "colour missing"])
    for n in names:
        r = res[n]
        if n.startswith(("rgb only", "ir only")):
            rows.append(f"| {n} | - | {fmt(r['both']) if n.startswith('rgb') else '-'} | "
                        f"{fmt(r['both']) if n.startswith('ir') else '-'} |")
        else:
            rows.append(f"| {n} | {fmt(r['both'])} | {fmt(r['IR missing'])} | {fmt(r['colour missing'])} |")
    verdicts = [
        f"with dropout, IR missing vs the rgb-only model: {drop_ir:.1f} vs {rgb:.1f} ({drop_ir - rgb:+.1f}; target "
        f">= -{IR_MISSING_TARGET:g}) -> {'PASS' if rgb - drop_ir <= IR_MISSING_TARGET else 'FAIL'}",
        f"with dropout, both bands vs the model trained without: {drop:.1f} vs {plain:.1f} ({drop - plain:+.1f}; "
        f"target >= -{BOTH_TARGET:g}) -> {'PASS' if plain - drop <= BOTH_TARGET else 'FAIL'}",
    ]
    n_val = 16 if args.quick else 100
    protocol = " ".join([
        f"Protocol: ghost-n float (`bits=32`), vedai-synth ({'32' if args.quick else '400'}/{n_val} train/val pairs,",
        f"generated with seed 0), imgsz {args.imgsz}, {args.epochs} epochs (mosaic off for the last",
        f"{max(1, args.epochs // 4)}), batch {args.batch}, default augmentation, seeds",
        f"{', '.join(map(str, args.seeds))} (`deterministic=True`): every model gets the same budget, data and seeds.",
        "The rgb-only and ir-only models train on the same pairs with `modality=rgb|ir` and sit in the column of the",
        f"band they lack (what a model that lost that band should match). mAP50 on the {n_val} val pairs (points;",
        "mean over seeds, per-seed values in brackets) of best.pt = the last epoch (`val=False` during training).",
        "IR or colour missing = `drop_modality=ir|rgb`: the band filled with 114, as a missing sensor is at inference.",
        "The dropout model blanks a training sample's IR or colour band (each half the time) with probability",
        f"{args.p:g}.",
        f"CPU, {args.threads} threads, torch {torch.__version__}; {seconds / 60:.0f} min in all.",
    ])
    return ["# Missing sensor: modality dropout (benchmarks/bench_modality.py)", "", protocol, "", *rows, "",
            *[f"- {v}" for v in verdicts], ""]


def main(argv: list[str] | None = None) -> int:
    """Train, validate, print and save the table."""
    return run_in_work_dir(parse_args(argv), "ghost-bench-modality-", bench)


def bench(args: argparse.Namespace) -> int:
    """The benchmark in ``args.workdir``."""
    banner("missing-sensor", args.workdir)
    t0 = time.time()
    data_yaml = make_data(args.workdir, args.quick, args.imgsz)
    res = run_all(args, data_yaml)
    (args.workdir / "modality.json").write_text(json.dumps(res, indent=2))
    lines = report(res, args, time.time() - t0)
    write_md(args.out, lines)
    print("\n" + "\n".join(lines) + f"\n(saved to {args.out})")
    return 0


if __name__ == "__main__":
    run_main(main, reuse_memory=True)
