#!/usr/bin/env python
"""Foundation benchmark for ghost-yolo: paired RGB+IR loading and 4-channel training cost, as ratios to the 3-channel baseline.

Two questions, each answered side by side in ONE process and reported as a RATIO (absolute times on shared CPU
machines drift by tens of percent between runs; ratios of interleaved measurements are much more stable):

1. Loading: ghost's ``PairedDataset`` (rgb+ir, 4 channels, built by ``ghost_yolo.data.check.build_dataset``) against
   Ultralytics' stock ``YOLODataset`` (built by ``ultralytics.data.build.build_yolo_dataset``) on a plain copy of the
   SAME colour images with the SAME training augmentation (mosaic, random perspective, HSV, flips; default
   hyperparameters from ``ultralytics.cfg.get_cfg``), ``cache=False`` for both. Measured single-process
   (``dataset[i]`` over shuffled indices, a fresh order per round shared by both) and through ``build_dataloader``
   (2 workers, the dataset's ``collate_fn``). Target: paired/stock throughput >= 0.8x.
2. Training step: ``GhostDetectionModel('ghost-n.yaml', ch=4)`` (early fusion) against the same model with ``ch=3``;
   forward + ``model.loss(batch)`` + backward + grad clipping + SGD step on one real augmented batch (no EMA).
   Target: 4ch/3ch time <= 1.1x.

Repetitions of A and B are interleaved (A B, B A, A B, ...), each repetition of A and B starts from the same random
seeds, and the medians over repetitions are compared. A breakdown of the per-sample loading time by stage follows
the loading measurement, to show where any paired overhead comes from.

The script always exits 0: it is a benchmark, not a test. PASS/FAIL lines only compare against the targets.
This file holds the command line, the run and the summary; the measurements live in ``bench_foundation_loading.py``
(1) and ``bench_foundation_train.py`` (2), each of which also runs alone with the same flags.

Usage (from the repository root):
    python benchmarks/bench_foundation.py            # full run (about 45 s on an idle 2-core machine)
    python benchmarks/bench_foundation.py --quick    # smoke run (about 20 s)
    python benchmarks/bench_foundation.py --help     # sizes, repetitions, sections
    python benchmarks/bench_foundation.py --out benchmarks/results/foundation.md   # also the summary as markdown
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import statistics
import tempfile
import time
import traceback
from pathlib import Path

from bench_foundation_loading import run_loading
from bench_foundation_train import run_train
from common import Comparison, cpu_name, load_text, md_table, run_main, verdict, write_md

# Defaults per mode; any flag given on the command line wins over both.
FULL = dict(
    n_train=200, imgsz=256, samples=200, warmup=128, reps=7, dataset_batch=16,
    loader_batch=16, loader_workers=2, loader_reps=5, loader_samples=400, profile_samples=100,
    train_batch=8, train_warmup=3, train_reps=5, train_steps=3,
)  # fmt: skip
QUICK = dict(
    n_train=48, imgsz=256, samples=96, warmup=32, reps=5, dataset_batch=4,
    loader_batch=8, loader_workers=2, loader_reps=3, loader_samples=192, profile_samples=48,
    train_batch=8, train_warmup=2, train_reps=5, train_steps=1,
)  # fmt: skip
# The datasets keep the last min(n, 8 * dataset_batch, 1000) loaded images in RAM for mosaic (Ultralytics' buffer), so
# dataset_batch sets how many samples skip decoding: 128 of 200 in the full preset, 32 of 48 in the quick one.


# ----------------------------------------------------------------------------------------------------------------------
# Command line and environment
# ----------------------------------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse flags; sizes left unset take the --quick or full preset."""
    p = argparse.ArgumentParser(
        description="ghost-yolo foundation benchmark: paired loading vs stock Ultralytics, 4ch vs 3ch training step.",
    )
    p.add_argument("--quick", action="store_true", help="small sizes and few repetitions (finishes in < 60 s)")
    g = p.add_argument_group("data (full preset / quick preset when not given)")
    g.add_argument("--n-train", type=int, help=f"vedai-synth training pairs to generate ({FULL['n_train']}/{QUICK['n_train']})")
    g.add_argument("--imgsz", type=int, help=f"generated image size and training imgsz ({FULL['imgsz']})")
    g.add_argument("--workdir", type=Path, help="where to generate data (default: a new temp dir, removed at exit)")
    g.add_argument("--keep", action="store_true", help="keep the generated data instead of removing it")
    g = p.add_argument_group("1. loading")
    g.add_argument("--samples", type=int, help=f"samples per repetition ({FULL['samples']}/{QUICK['samples']})")
    g.add_argument("--warmup", type=int, help=f"warm-up samples per dataset, enough to fill the mosaic buffer ({FULL['warmup']}/{QUICK['warmup']})")
    g.add_argument("--reps", type=int, help=f"interleaved repetitions ({FULL['reps']}/{QUICK['reps']})")
    g.add_argument("--dataset-batch", type=int, help=f"batch size given to the datasets, sets the mosaic buffer ({FULL['dataset_batch']})")
    g.add_argument("--loader-batch", type=int, help=f"DataLoader batch size ({FULL['loader_batch']}/{QUICK['loader_batch']})")
    g.add_argument("--loader-workers", type=int, help=f"DataLoader workers ({FULL['loader_workers']})")
    g.add_argument("--loader-reps", type=int, help=f"DataLoader repetitions ({FULL['loader_reps']}/{QUICK['loader_reps']})")
    g.add_argument("--loader-samples", type=int, help=f"images per DataLoader repetition, rounded up to whole epochs ({FULL['loader_samples']}/{QUICK['loader_samples']})")
    g.add_argument("--no-loader", action="store_true", help="skip the DataLoader measurement")
    g.add_argument("--profile-samples", type=int, help=f"samples for the per-stage breakdown, 0 to skip ({FULL['profile_samples']}/{QUICK['profile_samples']})")
    g = p.add_argument_group("2. training step")
    g.add_argument("--model", default="ghost-n.yaml", help="model YAML with early fusion, so that ch=3 and ch=4 both build (%(default)s)")
    g.add_argument("--train-batch", type=int, help=f"batch size ({FULL['train_batch']})")
    g.add_argument("--train-warmup", type=int, help=f"warm-up steps per model ({FULL['train_warmup']}/{QUICK['train_warmup']})")
    g.add_argument("--train-reps", type=int, help=f"interleaved repetitions ({FULL['train_reps']}/{QUICK['train_reps']})")
    g.add_argument("--train-steps", type=int, help=f"steps per repetition, averaged ({FULL['train_steps']}/{QUICK['train_steps']})")
    g = p.add_argument_group("general")
    g.add_argument("--threads", type=int, default=2, help="torch intra-op threads (%(default)s)")
    g.add_argument("--seed", type=int, default=0, help="seed of data generation, index order and augmentation (%(default)s)")
    g.add_argument("--skip-loading", action="store_true", help="skip section 1")
    g.add_argument("--skip-train", action="store_true", help="skip section 2")
    g.add_argument("--verbose", action="store_true", help="keep Ultralytics' INFO logging and progress bars")
    g.add_argument("--out", type=Path, help="also write the summary as a markdown table here "
                                            "(benchmarks/results/foundation.md for the record)")
    args = p.parse_args(argv)
    for k, v in (QUICK if args.quick else FULL).items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for k in ("n_train", "imgsz", "samples", "reps", "dataset_batch", "loader_batch", "loader_reps", "loader_samples",
              "train_batch",
              "train_reps", "train_steps"):
        if getattr(args, k) < 1:
            p.error(f"--{k.replace('_', '-')} must be >= 1")
    return args


def print_environment(args: argparse.Namespace) -> None:
    """Versions, threads and machine, so numbers can be compared across runs."""
    import cv2
    import numpy as np
    import torch
    import ultralytics

    try:
        from importlib.metadata import version

        ghost = version("ghost-yolo")
    except Exception:  # not installed as a distribution
        ghost = "unknown"
    cpu = cpu_name()
    print("=" * 100)
    print(f"ghost-yolo foundation benchmark ({'quick' if args.quick else 'full'} mode)")
    print("=" * 100)
    print(f"python        {platform.python_version()} on {platform.platform()}")
    print(f"cpu           {cpu or 'unknown'}, os.cpu_count()={os.cpu_count()}")
    print(f"torch         {torch.__version__}  (threads={torch.get_num_threads()}, interop={torch.get_num_interop_threads()}, "
          f"cuda={torch.cuda.is_available()})")
    print(f"ultralytics   {ultralytics.__version__}")
    print(f"ghost-yolo    {ghost}")
    print(f"numpy {np.__version__}, opencv {cv2.__version__} (cv2 threads={cv2.getNumThreads()})")
    print(f"cpu load      {load_text()}")
    print(f"sizes         n_train={args.n_train} imgsz={args.imgsz} | loading: samples={args.samples} warmup={args.warmup} "
          f"reps={args.reps} dataset_batch={args.dataset_batch} loader(batch={args.loader_batch}, "
          f"workers={args.loader_workers}, reps={args.loader_reps}x{args.loader_samples} img, "
          f"{'off' if args.no_loader else 'on'}) | "
          f"train: model={args.model} batch={args.train_batch} warmup={args.train_warmup} reps={args.train_reps}x"
          f"{args.train_steps} steps")
    print()


# ----------------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> list[Comparison]:
    """Run the sections, printing as results come in; a failing section is reported and the others still run."""
    results: list[Comparison] = []
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ghost-bench-"))
    own_dir = args.workdir is None
    if args.workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        if any(workdir.iterdir()):
            raise SystemExit(f"--workdir {workdir} must be empty (or new)")
    paired = None
    try:
        if not args.skip_loading:
            loading, paired = run_loading(args, workdir)
            results += loading
        if not args.skip_train:
            results.append(run_train(args, paired))
    finally:
        if own_dir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep or not own_dir:
            print(f"data kept in {workdir}")
    return results


def print_summary(results: list[Comparison], elapsed: float) -> None:
    """Final table: one line per comparison with ratio, target and verdict."""
    print("=" * 100)
    print("SUMMARY (ratios of medians of interleaved repetitions; absolute numbers drift between runs, ratios less)")
    print("=" * 100)
    print(f"  {'measurement':<34} {'baseline':>20} {'ghost':>20} {'ratio':>7} {'target':>9}  verdict")
    for r in results:
        if r.ratio is None:
            print(f"  {r.name:<34} {'-':>20} {'-':>20} {'-':>7} {r.target_text():>9}  FAIL (error: {r.error})")
            continue
        a = f"{statistics.median(r.a):.1f} {r.unit} {r.a_name}"
        b = f"{statistics.median(r.b):.1f} {r.unit} {r.b_name}"
        print(f"  {r.name:<34} {a:>20} {b:>20} {r.ratio:6.2f}x {r.target_text():>9}  {verdict(r.ok)}")
    n_pass = sum(bool(r.ok) for r in results)
    print(f"  {load_text()}")
    print(f"  {n_pass}/{len(results)} within target; total time {elapsed:.1f} s (exit status is 0 either way)")


def summary_md(results: list[Comparison], args: argparse.Namespace) -> list[str]:
    """The summary as markdown: one row per comparison, medians of both sides, ratio and target."""
    rows = []
    for r in results:
        if r.ratio is None:
            rows.append([r.name, "-", "-", "-", r.target_text(), f"FAIL (error: {r.error})"])
            continue
        rows.append([r.name, f"{r.a_name}, {statistics.median(r.a):.1f} {r.unit}",
                     f"{r.b_name}, {statistics.median(r.b):.1f} {r.unit}", f"{r.ratio:.2f}x", r.target_text(),
                     verdict(r.ok)])
    head = (f"`python benchmarks/bench_foundation.py{' --quick' if args.quick else ''}`: ratios of the medians of "
            f"interleaved repetitions, {args.threads} torch threads, {args.n_train} vedai-synth pairs at {args.imgsz} "
            f"px, training batch {args.train_batch}.")
    return ["# Foundation: paired loading and the 4-channel training step (benchmarks/bench_foundation.py)", "", head,
            "", *md_table(["measurement", "baseline", "ghost-yolo", "ratio", "target", "verdict"], rows), ""]


def main(argv: list[str] | None = None) -> int:
    """Entry point; always returns 0."""
    t0 = time.perf_counter()
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from ultralytics.utils import LOGGER

    if not args.verbose:
        LOGGER.setLevel(logging.WARNING)  # also silences Ultralytics' progress bars
    results: list[Comparison] = []
    try:
        print_environment(args)
        results = run(args)
    except KeyboardInterrupt:
        print("\ninterrupted")
    except BaseException as e:  # noqa: BLE001 - a benchmark reports, it does not fail the caller
        traceback.print_exc()
        print(f"benchmark aborted: {type(e).__name__}: {e}")
    print_summary(results, time.perf_counter() - t0)
    if args.out:
        write_md(args.out, summary_md(results, args))
        print(f"(saved to {args.out})")
    return 0


if __name__ == "__main__":
    run_main(main)
