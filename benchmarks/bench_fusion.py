#!/usr/bin/env python
"""Fusion benchmark: early fusion vs dual-stream stem vs mid-level fusion at equal epochs, float and HQ, paired seeds.

Three models of the same head and neck (``ghost-n.yaml``: 4 input channels into the first conv; ``ghost-n-dual.yaml``:
colour and IR stems fused MF-style; ``ghost-n-mid.yaml``: a colour and a half-width IR backbone fused at P3-P5) are
trained with the same budget, data and seeds on vedai-synth (400 train / 100 val pairs):

- float: ``--epochs`` float epochs from the YAML (``bits=32``);
- HQ: that float model's last weights, the HQ bit search (``bits=hq``, default threshold) and ``--q-epochs`` quantized
  epochs (``kd`` as the product settles it: ``auto``).

With ``--obb`` the same is done on vedai-synth-obb with the OBB variants (``ghost-n-obb``, ``ghost-n-dual-obb``,
``ghost-n-mid-obb``) after the detect runs. Each model is validated once at the end (best.pt = the last epoch,
``val=False`` during training; fused, as deployed). Beside each: parameters, GFLOPs and GBOPs at the training size
(the float model at 32 bit; the HQ model at its searched widths). Paired differences (same seed, same data) of mAP50
come with a t-based 95 % CI over the seeds and how many seeds the first arm is ahead in.

Seeds run one after another, all arms of a seed before the next one (or one process per seed on the same
``--workdir``: each merges its results into the shared fusion.json), and the markdown (``--out``) is rewritten after
every run, so a run stopped early still reports every finished arm (``--report`` rewrites it from the finished runs
alone). Finished runs in ``--workdir`` are reused. It exits 0 whatever the numbers: it is a benchmark, not a test.

Usage (from the repository root, ghost-yolo installed):
    python benchmarks/bench_fusion.py --workdir /tmp/bench-fusion            # ~30 min a seed on an idle 2-core CPU
    python benchmarks/bench_fusion.py --workdir /tmp/bench-fusion --obb      # also the OBB models on vedai-synth-obb
    python benchmarks/bench_fusion.py --quick                                # smoke run (the numbers mean nothing)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from contextlib import contextmanager
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

import torch
from common import (add_run_options, ahead, banner, base_parser, cpu_class, cpu_name, make_data, md_table, paired,
                    run_in_work_dir, run_main, write_md)

FUSIONS = {"early": "", "dual stem": "-dual", "mid": "-mid"}  # fusion -> YAML infix (ghost-n<infix>[-obb].yaml)
MODES = ("float", "HQ")
PAIRS = (("mid", "early"), ("mid", "dual stem"), ("dual stem", "early"))
LOW_SIGNAL = 1.0  # mAP50 points: below this for every model, the budget was too small to rank the fusions


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--imgsz", type=int, default=160, help="training and validation image size (160)")
    p.add_argument("--epochs", type=int, default=10, help="float epochs of every model (10)")
    p.add_argument("--q-epochs", type=int, default=3, help="quantized epochs of the HQ arm after the search (3)")
    p.add_argument("--batch", type=int, default=16, help="batch size (16)")
    p.add_argument("--n-train", type=int, default=400, help="training pairs, the first N of the 400 (400)")
    p.add_argument("--nbs", type=int, default=64,
                   help="nominal batch size: Ultralytics steps the optimizer every nbs/batch batches (64)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (0 1 2)")
    p.add_argument("--obb", action="store_true", help="also the OBB variants on vedai-synth-obb (after detect)")
    p.add_argument("--obb-only", action="store_true",
                   help="train only the OBB variants (another process may run the detect ones); implies --obb")
    p.add_argument("--report", action="store_true", help="only rewrite --out from the finished runs in --workdir")
    add_run_options(p, out="benchmarks/results/fusion.md",
                    workdir_help="data and runs go here, finished runs are reused (default: temporary)")
    a = p.parse_args(argv)
    if a.quick:
        a.epochs, a.q_epochs, a.imgsz, a.seeds = 1, 1, 64, a.seeds[:1]
    return a


def model_yaml(fusion: str, task: str) -> str:
    """The shipped YAML of a fusion family and task."""
    return f"ghost-n{FUSIONS[fusion]}{'-obb' if task == 'obb' else ''}.yaml"


def make_obb_data(root: Path, quick: bool, imgsz: int) -> Path:
    """vedai-synth-obb (400/100 pairs, 32/16 with --quick) in ``root`` and its data YAML, reused when there."""
    from ultralytics.utils import YAML

    from ghost_yolo.data.synthetic import VEDAI_NAMES, generate_vedai_synth

    data = root / "vedai-synth-obb"
    if not (data / "data.yaml").exists():
        n_train, n_val = (32, 16) if quick else (400, 100)
        generate_vedai_synth(data, n_train=n_train, n_val=n_val, imgsz=max(imgsz, 256), obb=True)
        YAML.save(data / "data.yaml", {"path": str(data), "train": "images/train", "val": "images/val",
                                       "pairing": "suffix", "names": VEDAI_NAMES})
    return data / "data.yaml"


def subset(data_yaml: Path, n_train: int) -> Path:
    """The data YAML with its training split cut to the first ``n_train`` pairs (a list file), unless it has no more."""
    from ultralytics.utils import YAML

    spec = YAML.load(data_yaml)
    images = sorted((data_yaml.parent / spec["train"]).glob("*_co.png"))
    if n_train >= len(images):
        return data_yaml
    (data_yaml.parent / f"train{n_train}.txt").write_text("\n".join(map(str, images[:n_train])) + "\n")
    out = data_yaml.with_name(f"data-train{n_train}.yaml")
    YAML.save(out, {**spec, "train": f"train{n_train}.txt"})
    return out


def train(model: str | Path, data_yaml: Path, run: Path, seed: int, epochs: int, args: argparse.Namespace,
          **kw) -> Path:
    """One run with the benchmark's fixed settings (reused when finished); returns its best.pt."""
    from ghost_yolo import GhostYOLO

    best = run / "weights" / "best.pt"
    if (run / "summary.json").exists() and best.exists():
        print(f"  {run.name}: finished earlier, reused", flush=True)
        return best
    GhostYOLO(model).train(data=str(data_yaml), epochs=epochs, imgsz=args.imgsz, batch=args.batch, seed=seed,
                           deterministic=True, workers=2, project=str(run.parent), name=run.name, exist_ok=True,
                           plots=False, val=False, verbose=False, nbs=args.nbs, **kw)
    return best


def evaluate(best: Path, data_yaml: Path, args: argparse.Namespace) -> dict:
    """mAP of a best.pt (fused, as deployed) with its parameters, GFLOPs, GBOPs and average weight bits at imgsz."""
    from ghost_yolo import GhostYOLO

    m = GhostYOLO(best)
    t = m.quant_info(imgsz=args.imgsz, save=False, verbose=False).attrs["totals"]
    met = GhostYOLO(best).val(data=str(data_yaml), imgsz=args.imgsz, batch=16, workers=2, plots=False, verbose=False,
                              project=str(args.workdir / "val"))
    box = met.box
    return {"map50": round(100 * float(box.map50), 2), "map": round(100 * float(box.map), 2),
            "params": int(t["params"]), "gflops": round(float(t["gflops"]), 3), "gbops": round(float(t["gbops"]), 2),
            "bits": round(float(t["avg_w_bits"]), 2)}


def model_costs(task: str, imgsz: int) -> dict[str, dict]:
    """Float params, GFLOPs and GBOPs of every fusion's model at imgsz, counted on its YAML (rgb+ir, 8 classes)."""
    from ghost_yolo import GhostYOLO

    return {f: GhostYOLO(model_yaml(f, task)).quant_info(imgsz=imgsz, save=False, verbose=False).attrs["totals"]
            for f in FUSIONS}


def run_seed(task: str, data_yaml: Path, seed: int, args: argparse.Namespace, res: dict, save) -> None:
    """Every fusion (mid first: the newest), float then HQ, at one seed; each result recorded (and the report saved) as
    soon as it exists."""
    for fusion in ("mid", *(f for f in FUSIONS if f != "mid")):
        tag = f"{task}-{fusion.split()[0]}-s{seed}"
        for mode in MODES:
            key = f"{task}|{fusion}|{mode}|{seed}"
            if key in res:
                continue
            t0 = time.time()
            runs = args.workdir / "runs"
            try:
                if mode == "float":
                    best = train(model_yaml(fusion, task), data_yaml, runs / f"{tag}-fp", seed, args.epochs, args,
                                 bits=32, warmup_epochs=1, close_mosaic=max(1, args.epochs // 4))
                else:
                    fp = runs / f"{tag}-fp" / "weights" / "best.pt"
                    best = train(fp, data_yaml, runs / f"{tag}-hq", seed, args.q_epochs, args, bits="hq", fp_epochs=0,
                                 warmup_epochs=0, close_mosaic=args.q_epochs)
                res[key] = {**evaluate(best, data_yaml, args), "seconds": round(time.time() - t0)}
            except Exception as e:  # a benchmark reports what broke and goes on with the other arms
                res[key] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
            print(f"  {key}: {res[key]}", flush=True)
            save()


def fmt(values: list[float]) -> str:
    """Mean with the per-seed values, e.g. '9.3 (9.7, 8.9)'."""
    if not values:
        return "-"
    mean = statistics.fmean(values)
    return f"{mean:.1f}" + (f" ({', '.join(f'{v:.1f}' for v in values)})" if len(values) > 1 else "")


def section(task: str, res: dict, args: argparse.Namespace) -> list[str]:
    """The table and the paired differences of one task (only seeds where every compared arm finished)."""
    costs = model_costs(task, args.imgsz)
    def get(fusion: str, mode: str, seed: int) -> dict | None:
        r = res.get(f"{task}|{fusion}|{mode}|{seed}")
        return r if r and "error" not in r else None

    rows, errors = [], []
    for fusion in FUSIONS:
        fp = [get(fusion, "float", s) for s in args.seeds]
        hq = [get(fusion, "HQ", s) for s in args.seeds]
        fp_ok, hq_ok = [r for r in fp if r], [r for r in hq if r]
        c = costs[fusion]
        rows.append([f"`{model_yaml(fusion, task)}`", fusion, f"{c['params'] / 1e6:.2f} M", f"{c['gflops']:.2f}",
                     fmt([r["map50"] for r in fp_ok]), fmt([r["map"] for r in fp_ok]), f"{c['gbops']:.1f}",
                     fmt([r["map50"] for r in hq_ok]),
                     f"{statistics.fmean(r['bits'] for r in hq_ok):.2f}" if hq_ok else "-",
                     f"{statistics.fmean(r['gbops'] for r in hq_ok):.1f}" if hq_ok else "-",
                     f"{len(fp_ok)} / {len(hq_ok)}"])
        errors += [f"{task} {fusion} {mode} seed {s}: {res[k]['error']}" for mode in MODES for s in args.seeds
                   if "error" in res.get(k := f"{task}|{fusion}|{mode}|{s}", {})]
    lines = md_table(["model", "fusion", "params", "GFLOPs", "float mAP50", "float mAP50-95", "float GBOPs",
                      "HQ mAP50", "HQ avg bits", "HQ GBOPs", "seeds (float / HQ)"], rows)
    diff_rows = []
    for a, b in PAIRS:
        cells = [f"{a} - {b}"]
        for mode in MODES:
            d = [get(a, mode, s)["map50"] - get(b, mode, s)["map50"] for s in args.seeds
                 if get(a, mode, s) and get(b, mode, s)]
            if not d:
                cells.append("-")
                continue
            mean, lo, hi = paired(d)
            ci = f" [{lo:+.1f}, {hi:+.1f}]" if len(d) > 1 else " (one seed, no CI)"
            cells.append(f"{mean:+.1f}{ci}, ahead in {ahead(d)}")
        diff_rows.append(cells)
    lines += ["", *md_table(["paired mAP50 difference (points)", "float", "HQ"], diff_rows)]
    scores = [r["map50"] for k, r in res.items() if k.startswith(f"{task}|") and "error" not in r]
    if scores and max(scores) < LOW_SIGNAL:
        lines += ["", f"Every finished model scores below {LOW_SIGNAL:g} mAP50 point at this budget: the table ranks "
                  "nothing yet (a larger budget: more pairs, epochs and seeds)."]
    return lines + ([""] + [f"- not finished: {e}" for e in errors] if errors else [])


def report(res: dict, args: argparse.Namespace, tasks: list[str]) -> list[str]:
    """Markdown: protocol, then one section per task."""
    seconds = sum(r.get("seconds", 0) for r in res.values())
    n_train, n_val = (32, 16) if args.quick else (min(args.n_train, 400), 100)
    protocol = " ".join([
        f"Protocol: vedai-synth{' and vedai-synth-obb' if 'obb' in tasks else ''} ({n_train}/{n_val} train/val pairs,",
        f"generated at 256 px with seed 0), imgsz {args.imgsz}, batch {args.batch}, optimizer step every",
        f"{max(round(args.nbs / args.batch), 1)} batch(es) (`nbs={args.nbs}`). Float: {args.epochs} epochs from the",
        f"YAML (`bits=32`, warmup 1, mosaic off for the last {max(1, args.epochs // 4)}). HQ: that float model's",
        "weights,",
        f"the HQ search (`bits=hq`, default threshold) and {args.q_epochs} quantized epochs (mosaic off, `kd=auto`).",
        f"Seeds {', '.join(map(str, args.seeds))} (`deterministic=True`), the same for every model, so differences are",
        "paired by seed. mAP50 (points; mean, per-seed values in brackets) of best.pt = the last epoch (`val=False`",
        f"during training), fused, on the {n_val} val pairs. Params (of the convs), GFLOPs and GBOPs at imgsz",
        f"{args.imgsz} (`ghost info`: GBOPs of the float model at 32 bit, of the HQ model at its searched widths, mean",
        "over seeds). Paired differences: mean over seeds with a t-based 95 % CI.",
        f"CPU {cpu_name()} ({cpu_class()}), {args.threads} threads, torch {torch.__version__}, shared with other jobs",
        f"(run under `nice`); {seconds / 60:.0f} min of training and evaluation in all.",
    ])
    out = ["# Fusion: early vs dual-stream stem vs mid-level (benchmarks/bench_fusion.py)", "", protocol, ""]
    for task in tasks:
        out += [f"**{'Detect, vedai-synth' if task == 'detect' else 'OBB, vedai-synth-obb'}**", "",
                *section(task, res, args), ""]
    return out


def main(argv: list[str] | None = None) -> int:
    """Train, validate, print and save the tables."""
    return run_in_work_dir(parse_args(argv), "ghost-bench-fusion-", bench)


def bench(args: argparse.Namespace) -> int:
    """The benchmark in ``args.workdir``."""
    banner("fusion", args.workdir)
    cache = args.workdir / "fusion.json"
    res = json.loads(cache.read_text()) if cache.exists() else {}
    tasks = ["detect", "obb"] if args.obb or args.obb_only else ["detect"]
    if args.report:
        write_md(args.out, report(res, args, tasks))
        print(f"{args.out} rewritten from {cache}")
        return 0
    res = {k: v for k, v in res.items() if "error" not in v}  # a failed arm is tried again

    @contextmanager
    def locked():
        """The work dir to this process alone: processes running other seeds there share its data and cache."""
        import fcntl

        with open(cache.with_suffix(".lock"), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield

    def save() -> None:
        """Merge this process's results into the cache under the lock: processes running other seeds in the same work
        dir write theirs too, and each keeps the other's."""
        with locked():
            theirs = json.loads(cache.read_text()) if cache.exists() else {}
            res.update({k: v for k, v in theirs.items() if k not in res})
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps(res, indent=1))
            tmp.replace(cache)
        write_md(args.out, report(res, args, tasks))

    with locked():  # the first process generates the data sets, the others wait and reuse them
        data = {"detect": subset(make_data(args.workdir, args.quick, args.imgsz), args.n_train)}
        if "obb" in tasks:
            data["obb"] = subset(make_obb_data(args.workdir, args.quick, args.imgsz), args.n_train)
    for task in tasks:
        if task == "detect" and args.obb_only:
            continue
        for seed in args.seeds:
            run_seed(task, data[task], seed, args, res, save)
    save()
    print("\n" + "\n".join(report(res, args, tasks)) + f"\n(saved to {args.out})")
    return 0


if __name__ == "__main__":
    run_main(main, reuse_memory=True)
