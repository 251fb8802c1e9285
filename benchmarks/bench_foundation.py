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

Usage (from the repository root):
    python benchmarks/bench_foundation.py            # full run (about 45 s on an idle 2-core machine)
    python benchmarks/bench_foundation.py --quick    # smoke run (about 20 s)
    python benchmarks/bench_foundation.py --help     # sizes, repetitions, sections
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import platform
import random
import shutil
import statistics
import sys
import tempfile
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

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

LOAD_TARGET = 0.8  # paired / stock images per second, at least
TRAIN_TARGET = 1.1  # 4ch / 3ch time per step, at most
NAMES = {0: "car", 1: "pickup", 2: "camping", 3: "truck", 4: "other", 5: "tractor", 6: "boat", 7: "van"}


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
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
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
# Helpers
# ----------------------------------------------------------------------------------------------------------------------
def cpu_times() -> tuple[float, float, float] | None:
    """(busy, steal, total) jiffies of all CPUs from /proc/stat, None where unavailable."""
    try:
        v = [float(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    except (OSError, ValueError, IndexError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0.0)  # idle + iowait
    steal = v[7] if len(v) > 7 else 0.0
    total = sum(v[:8])
    return total - idle, steal, total


def load_text(probe_s: float = 0.5) -> str:
    """CPU use by everything else while this process sleeps for probe_s, with a warning when it is significant."""
    a = cpu_times()
    time.sleep(probe_s)
    b = cpu_times()
    if a is None or b is None or b[2] <= a[2]:
        return f"unknown (1-min load average {os.getloadavg()[0]:.2f})" if hasattr(os, "getloadavg") else "unknown"
    busy, steal = (b[0] - a[0]) / (b[2] - a[2]), (b[1] - a[1]) / (b[2] - a[2])
    cores = os.cpu_count() or 1
    text = f"other processes use {busy * 100:.0f}% of {cores} cores (steal {steal * 100:.0f}%), probed over {probe_s} s"
    if busy > 0.2:
        text += ("  WARNING: the CPU is shared right now; PyTorch with --threads > 1 slows down badly under "
                 "contention and all ratios get noisy (rerun on an idle machine, or compare with --threads 1)")
    return text


def seed_all(seed: int) -> None:
    """Seed every RNG the augmentations and models draw from."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def interleaved(rounds: int) -> list[tuple[int, int]]:
    """(round, which) pairs in A B, B A, A B ... order, which cancels a linear drift of machine speed."""
    out = []
    for r in range(rounds):
        out += [(r, 0), (r, 1)] if r % 2 == 0 else [(r, 1), (r, 0)]
    return out


def verdict(ok: bool | None) -> str:
    """PASS / FAIL / n/a."""
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


class Result:
    """One compared measurement: A (baseline) and B (ghost) medians, their ratio and the target."""

    def __init__(self, name: str, unit: str, a_name: str, b_name: str, higher_is_better: bool, target: float):
        """Empty until ``add`` is called per repetition."""
        self.name, self.unit, self.a_name, self.b_name = name, unit, a_name, b_name
        self.higher_is_better, self.target = higher_is_better, target
        self.a: list[float] = []
        self.b: list[float] = []
        self.error: str | None = None

    @property
    def ratio(self) -> float | None:
        """B over A of the medians."""
        if not self.a or not self.b:
            return None
        return statistics.median(self.b) / statistics.median(self.a)

    def round_ratios(self) -> list[float]:
        """B over A per round, to show the noise of the ratio itself."""
        return [b / a for a, b in zip(self.a, self.b)]

    @property
    def ok(self) -> bool | None:
        """Whether the ratio meets the target (None when not measured)."""
        r = self.ratio
        if r is None:
            return None
        return r >= self.target if self.higher_is_better else r <= self.target

    def target_text(self) -> str:
        """'>= 0.80x' or '<= 1.10x'."""
        return f"{'>=' if self.higher_is_better else '<='} {self.target:.2f}x"

    def line(self) -> str:
        """One printed result line."""
        if self.error or self.ratio is None:
            return f"  {self.name:<34} ERROR: {self.error or 'not measured'}  -> FAIL"
        rr = self.round_ratios()
        spread = (f"per round {min(rr):.2f}-{max(rr):.2f}x, median {statistics.median(rr):.2f}x" if len(rr) > 1
                  else "1 round")
        ma, mb = statistics.median(self.a), statistics.median(self.b)
        return (f"  {self.name:<34} {self.a_name} {ma:8.1f} {self.unit:<6} {self.b_name} {mb:8.1f} {self.unit:<6} "
                f"ratio {self.ratio:5.2f}x ({spread})  target {self.target_text()}  {verdict(self.ok)}")


# ----------------------------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------------------------
def prepare_data(root: Path, args: argparse.Namespace) -> tuple[dict, dict]:
    """Generate vedai-synth pairs and a plain colour-only copy laid out the Ultralytics way; return both data dicts.

    The copy holds only the ``_co`` images (same bytes) under ``plain/images/train`` with their labels renamed to
    ``plain/labels/train/<name>_co.txt``, which is where Ultralytics' ``img2label_paths`` looks for them.
    """
    from ultralytics.data.utils import check_det_dataset
    from ultralytics.utils import YAML

    from ghost_yolo.data.check import check_data
    from ghost_yolo.data.synthetic import generate_vedai_synth

    t = time.perf_counter()
    paired = generate_vedai_synth(root / "vedai-synth", n_train=args.n_train, n_val=2, imgsz=args.imgsz,
                                  seed=args.seed, workers=2)
    plain = root / "plain"
    for split in ("train", "val"):
        (plain / "images" / split).mkdir(parents=True)
        (plain / "labels" / split).mkdir(parents=True)
        for im in sorted((paired / "images" / split).glob("*_co.png")):
            shutil.copyfile(im, plain / "images" / split / im.name)
            label = paired / "labels" / split / (im.stem[: -len("_co")] + ".txt")
            if label.exists():
                shutil.copyfile(label, plain / "labels" / split / f"{im.stem}.txt")
    YAML.save(root / "paired.yaml", {
        "path": str(paired), "train": "images/train", "val": "images/val", "pairing": "suffix",
        "rgb_suffix": "_co", "ir_suffix": "_ir", "modality": "rgb+ir", "names": NAMES})  # fmt: skip
    YAML.save(root / "plain.yaml", {"path": str(plain), "train": "images/train", "val": "images/val", "names": NAMES})
    paired_data = check_data(root / "paired.yaml")
    plain_data = check_det_dataset(str(root / "plain.yaml"))
    print(f"data          {args.n_train} vedai-synth pairs at {args.imgsz}px + colour-only copy in {root} "
          f"({time.perf_counter() - t:.1f} s)")
    return plain_data, paired_data


def train_cfg(args: argparse.Namespace):
    """Default Ultralytics training hyperparameters (mosaic, perspective, HSV, flips) at imgsz, no caching.

    A fresh namespace per dataset, since ``YOLODataset.build_transforms`` writes into the one it is given.
    """
    from ultralytics.cfg import get_cfg

    return get_cfg(overrides={"imgsz": args.imgsz, "cache": False, "seed": args.seed})


def build_datasets(args: argparse.Namespace, plain_data: dict, paired_data: dict) -> tuple[Any, Any]:
    """Stock YOLODataset on the colour copy and ghost's PairedDataset on the pairs, both in training mode."""
    from ultralytics.data.build import build_yolo_dataset

    from ghost_yolo.data.check import build_dataset

    stock = build_yolo_dataset(train_cfg(args), plain_data["train"], args.dataset_batch, plain_data, mode="train")
    paired = build_dataset(train_cfg(args), paired_data["train"], args.dataset_batch, paired_data, mode="train")
    return stock, paired


def check_datasets(stock: Any, paired: Any) -> str:
    """Make sure both datasets see the same images in the same order with the same labels; return a summary."""
    s_names = [Path(f).name for f in stock.im_files]
    p_names = [Path(f).name for f in paired.im_files]
    if s_names != p_names:
        raise RuntimeError(f"stock and paired datasets list different images ({len(s_names)} vs {len(p_names)})")
    s_inst = sum(len(lb["cls"]) for lb in stock.labels)
    p_inst = sum(len(lb["cls"]) for lb in paired.labels)
    if s_inst == 0:
        raise RuntimeError("stock YOLODataset found no instances: its labels were not found")
    if s_inst != p_inst:
        raise RuntimeError(f"stock and paired datasets disagree on instances ({s_inst} vs {p_inst})")
    s0, p0 = stock[0]["img"], paired[0]["img"]
    return (f"{type(stock).__name__} and {type(paired).__name__}: {len(s_names)} images, {s_inst} instances each; "
            f"sample {tuple(s0.shape)} {s0.dtype} vs {tuple(p0.shape)} {p0.dtype}; mosaic buffer keeps "
            f"{stock.max_buffer_length}/{paired.max_buffer_length} of {len(s_names)} images decoded")


# ----------------------------------------------------------------------------------------------------------------------
# 1. Loading
# ----------------------------------------------------------------------------------------------------------------------
def iterate(dataset: Any, indices: list[int]) -> float:
    """Seconds to fetch dataset[i] for every index."""
    gc.collect()
    t = time.perf_counter()
    for i in indices:
        dataset[i]
    return time.perf_counter() - t


def shuffled(n: int, count: int, seed: int) -> list[int]:
    """count indices from back-to-back random permutations of range(n), as an epoch-reshuffling sampler yields them.

    A fresh order matters: repeating one fixed order of more images than the mosaic buffer holds would make every
    read miss the buffer (first in, first out against a cyclic scan), unlike training, where about buffer/n hit.
    """
    rng, out = random.Random(seed), []
    while len(out) < count:
        out += rng.sample(range(n), n)
    return out[:count]


def bench_single_process(args: argparse.Namespace, stock: Any, paired: Any) -> Result:
    """dataset[i] over shuffled indices; per round the same indices and RNG seeds for both; interleaved rounds."""
    res = Result("loading, single process", "img/s", "stock", "paired", True, LOAD_TARGET)
    n = len(stock)
    warm = shuffled(n, args.warmup, args.seed + 1000)  # fills the mosaic buffers of both alike
    for ds in (stock, paired):
        seed_all(args.seed + 1000)
        iterate(ds, warm)
    for r, which in interleaved(args.reps):
        indices = shuffled(n, args.samples, args.seed + 100 + r)
        seed_all(args.seed + r)
        dt = iterate((stock, paired)[which], indices)
        (res.a, res.b)[which].append(len(indices) / dt)
    return res


def bench_dataloader(args: argparse.Namespace, stock: Any, paired: Any) -> Result:
    """Ultralytics' build_dataloader (InfiniteDataLoader, collate_fn, seeded shuffle) with workers.

    Each repetition restarts that loader's workers (``reset``), so only one loader's workers are alive at a time, runs
    whole epochs (at least ``loader_samples`` images) and is timed from the first batch to the end: steady-state
    throughput, without the worker start.
    """
    import torch
    from ultralytics.data.build import build_dataloader

    res = Result(f"loading, DataLoader workers={args.loader_workers}", "img/s", "stock", "paired", True, LOAD_TARGET)
    loaders = []
    for ds in (stock, paired):
        torch.manual_seed(args.seed)  # same shuffles and worker seeds for both
        loaders.append(build_dataloader(ds, args.loader_batch, args.loader_workers, shuffle=True, rank=-1,
                                        device="cpu"))
    if loaders[0].num_workers != args.loader_workers:
        print(f"  note: DataLoader uses {loaders[0].num_workers} workers (capped by cpu count / batches)")
    try:
        if len(loaders[0]) < 2:
            raise RuntimeError(f"need >= 2 batches per epoch, got {len(loaders[0])}: lower --loader-batch")
        epochs = max(1, -(-args.loader_samples // len(stock)))
        for which, loader in enumerate(loaders):  # warm-up: worker start, page cache
            loader.reset()
            for _ in loader:
                pass
        for r, which in interleaved(args.loader_reps):
            loader = loaders[which]
            loader.reset()
            gc.collect()
            it = iter(loader)
            next(it)
            t, seen = time.perf_counter(), 0
            for epoch in range(epochs):
                for batch in it if epoch == 0 else loader:  # the same workers serve every epoch
                    seen += batch["img"].shape[0]
            (res.a, res.b)[which].append(seen / (time.perf_counter() - t))
    finally:
        for loader in loaders:
            loader.close()
    return res


class StageProfiler:
    """Exclusive time per named stage: a stage's time excludes that of wrapped stages called inside it."""

    def __init__(self):
        """No stages timed yet."""
        self.total: dict[str, float] = defaultdict(float)
        self._stack: list[float] = []

    def wrap(self, name: str, fn: Callable) -> Callable:
        """Return fn timed under name."""

        def timed(*a, **k):
            self._stack.append(0.0)
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                dt = time.perf_counter() - t
                self.total[name] += dt - self._stack.pop()
                if self._stack:
                    self._stack[-1] += dt

        return timed


def instrument(dataset: Any, prof: StageProfiler) -> None:
    """Wrap load_image, label fetching and every transform (also nested ones) of a dataset with the profiler."""
    from ultralytics.data.augment import Compose

    dataset.load_image = prof.wrap("read + stack + resize (load_image)", dataset.load_image)
    dataset.get_image_and_label = prof.wrap("label copy (get_image_and_label)", dataset.get_image_and_label)

    def walk(compose: Compose) -> None:
        for i, t in enumerate(compose.transforms):
            if isinstance(t, Compose):
                walk(t)
                continue
            name = type(t).__name__
            if name in {"RandomHSV", "PairedHSV"}:
                name = "RandomHSV / PairedHSV"
            elif name == "RandomFlip":
                name = f"RandomFlip {t.direction}"
            compose.transforms[i] = prof.wrap(name, t)

    walk(dataset.transforms)


def bench_stages(args: argparse.Namespace, plain_data: dict, paired_data: dict) -> str:
    """Per-sample time by stage for fresh copies of both datasets (indicative: one pass each, in interleaved chunks)."""
    stock, paired = build_datasets(args, plain_data, paired_data)
    profs = [StageProfiler(), StageProfiler()]
    totals = [0.0, 0.0]
    for ds, prof in zip((stock, paired), profs):
        instrument(ds, prof)
    n = len(stock)
    indices = shuffled(n, args.profile_samples, args.seed + 3000)
    for which, ds in enumerate((stock, paired)):  # warm-up, then discard
        seed_all(args.seed + 2000)
        iterate(ds, shuffled(n, max(args.warmup, 1), args.seed + 2000))
        profs[which].total.clear()
    chunks = max(1, min(4, len(indices) // 8))
    for r, which in interleaved(chunks):
        part = indices[r::chunks]
        seed_all(args.seed + 3000 + r)
        totals[which] += iterate((stock, paired)[which], part)
    n_done = len(indices)
    stages = list(dict.fromkeys([*profs[0].total, *profs[1].total]))
    lines = [f"  {'stage (exclusive time)':<36} {'stock ms/img':>13} {'paired ms/img':>14} {'delta ms':>9} {'paired/stock':>13}"]
    rows = []
    for s in stages:
        a, b = profs[0].total.get(s, 0.0) / n_done * 1e3, profs[1].total.get(s, 0.0) / n_done * 1e3
        rows.append((b - a, s, a, b))
    a_sum = sum(profs[0].total.values()) / n_done * 1e3
    b_sum = sum(profs[1].total.values()) / n_done * 1e3
    a_tot, b_tot = totals[0] / n_done * 1e3, totals[1] / n_done * 1e3
    rows.append((b_tot - b_sum - (a_tot - a_sum), "other (__getitem__ overhead, timers)", a_tot - a_sum, b_tot - b_sum))
    for d, s, a, b in sorted(rows, key=lambda x: -x[0]):
        ratio = f"{b / a:12.2f}x" if a > 1e-3 else f"{'-':>13}"
        lines.append(f"  {s:<36} {a:13.3f} {b:14.3f} {d:+9.3f} {ratio}")
    lines.append(f"  {'total per sample':<36} {a_tot:13.3f} {b_tot:14.3f} {b_tot - a_tot:+9.3f} {b_tot / a_tot:12.2f}x")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------------------------
# 2. Training step
# ----------------------------------------------------------------------------------------------------------------------
def training_batch(args: argparse.Namespace, paired: Any | None) -> dict:
    """One real augmented 4-channel batch from the paired dataset (uint8 images), or a random one without it."""
    import torch

    if paired is not None:
        seed_all(args.seed + 4000)
        n = len(paired)
        idx = random.Random(args.seed + 4).sample(range(n), min(args.train_batch, n))
        idx += idx[: args.train_batch - len(idx)] * args.train_batch  # tiny datasets: repeat
        b = paired.collate_fn([paired[i] for i in idx[: args.train_batch]])
        return {k: b[k] for k in ("img", "batch_idx", "cls", "bboxes")}
    g = torch.Generator().manual_seed(args.seed)
    bs, s, per = args.train_batch, args.imgsz, 6
    xy = torch.rand(bs * per, 2, generator=g) * 0.8 + 0.1
    wh = torch.rand(bs * per, 2, generator=g) * 0.08 + 0.02
    return {
        "img": torch.randint(0, 256, (bs, 4, s, s), dtype=torch.uint8, generator=g),
        "batch_idx": torch.arange(bs).repeat_interleave(per).float(),
        "cls": torch.randint(0, len(NAMES), (bs * per, 1), generator=g).float(),
        "bboxes": torch.cat((xy, wh), 1),
    }


def build_model(args: argparse.Namespace, ch: int):
    """GhostDetectionModel with loss hyperparameters and an SGD optimizer like Ultralytics' defaults."""
    import torch
    from ultralytics.cfg import get_cfg

    from ghost_yolo.nn.model import GhostDetectionModel

    torch.manual_seed(args.seed)
    model = GhostDetectionModel(args.model, ch=ch, nc=len(NAMES), verbose=False)
    model.args = get_cfg()  # box / cls / dfl gains for v8DetectionLoss
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.937, nesterov=True, weight_decay=5e-4)
    return model, opt


def train_step(model: Any, opt: Any, batch: dict) -> float:
    """Normalise the uint8 batch as the trainer does, then forward + loss + backward + clip + SGD step (no EMA)."""
    import torch

    opt.zero_grad(set_to_none=True)
    b = dict(batch, img=batch["img"].float() / 255)
    loss, _ = model.loss(b)
    loss = loss.sum()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=10.0)  # as BaseTrainer.optimizer_step
    opt.step()
    return float(loss.detach())


def bench_train(args: argparse.Namespace, paired: Any | None) -> tuple[Result, str]:
    """ms per training step, 4-channel early fusion vs the same model on 3 channels, on the same batch."""
    res = Result(f"train step, batch {args.train_batch}", "ms", "3ch", "4ch", False, TRAIN_TARGET)
    batch4 = training_batch(args, paired)
    batch3 = dict(batch4, img=batch4["img"][:, :3].contiguous())  # R, G, B of the same augmented images
    runs = []
    for ch, batch in ((3, batch3), (4, batch4)):
        model, opt = build_model(args, ch)
        runs.append((model, opt, batch))
    params = [sum(p.numel() for p in m.parameters()) for m, _, _ in runs]
    losses: list[list[float]] = [[], []]
    for which, (model, opt, batch) in enumerate(runs):
        for _ in range(args.train_warmup):
            losses[which].append(train_step(model, opt, batch))
    for r, which in interleaved(args.train_reps):
        model, opt, batch = runs[which]
        gc.collect()
        t = time.perf_counter()
        for _ in range(args.train_steps):
            losses[which].append(train_step(model, opt, batch))
        (res.a, res.b)[which].append((time.perf_counter() - t) / args.train_steps * 1e3)
    n_inst = int(batch4["cls"].shape[0])
    src = "real augmented paired batch" if paired is not None else "random batch (loading section skipped or failed)"
    info = (f"  {src}: img {tuple(batch4['img'].shape)} / {tuple(batch3['img'].shape)}, {n_inst} instances; "
            f"params 3ch {params[0]:,} / 4ch {params[1]:,}; last loss 3ch {losses[0][-1]:.3f} / 4ch {losses[1][-1]:.3f}")
    if not all(map(lambda v: v == v and abs(v) != float("inf"), losses[0] + losses[1])):
        info += "\n  WARNING: non-finite loss seen, timings may not be representative"
    return res, info


# ----------------------------------------------------------------------------------------------------------------------
# Main
# ----------------------------------------------------------------------------------------------------------------------
def run(args: argparse.Namespace) -> list[Result]:
    """Run the sections, printing as results come in; a failing section is reported and the others still run."""
    import torch

    results: list[Result] = []
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="ghost-bench-"))
    own_dir = args.workdir is None
    if args.workdir is not None:
        workdir.mkdir(parents=True, exist_ok=True)
        if any(workdir.iterdir()):
            raise SystemExit(f"--workdir {workdir} must be empty (or new)")
    paired = None
    try:
        if not args.skip_loading:
            print("-" * 100)
            print(f"1. Paired loading vs stock Ultralytics loader (training augmentation, cache=False), target paired/stock >= {LOAD_TARGET}x")
            print("-" * 100)
            try:
                t0 = time.perf_counter()
                plain_data, paired_data = prepare_data(workdir, args)
                stock, paired = build_datasets(args, plain_data, paired_data)
                print(f"datasets      {check_datasets(stock, paired)}")
                sec = bench_single_process(args, stock, paired)
                results.append(sec)
                print(sec.line(), flush=True)
                if not args.no_loader:
                    try:
                        sec = bench_dataloader(args, stock, paired)
                    except Exception as e:
                        sec = Result(f"loading, DataLoader workers={args.loader_workers}", "img/s", "stock",
                                     "paired", True, LOAD_TARGET)
                        sec.error = f"{type(e).__name__}: {e}"
                        traceback.print_exc()
                    results.append(sec)
                    print(sec.line(), flush=True)
                if args.profile_samples > 0:
                    print(f"\n  where the time goes ({args.profile_samples} samples each, single process, one pass):")
                    print(bench_stages(args, plain_data, paired_data))
                print(f"  (section time {time.perf_counter() - t0:.1f} s)")
            except Exception as e:
                traceback.print_exc()
                sec = Result("loading, single process", "img/s", "stock", "paired", True, LOAD_TARGET)
                sec.error = f"{type(e).__name__}: {e}"
                results.append(sec)
                print(sec.line())
                paired = None
            print()
        if not args.skip_train:
            print("-" * 100)
            print(f"2. Training step, 4-channel early fusion vs 3 channels ({args.model}, imgsz {args.imgsz}, "
                  f"{torch.get_num_threads()} threads), target 4ch/3ch <= {TRAIN_TARGET}x")
            print("-" * 100)
            t0 = time.perf_counter()
            try:
                sec, info = bench_train(args, paired)
                print(info)
            except Exception as e:
                traceback.print_exc()
                sec = Result(f"train step, batch {args.train_batch}", "ms", "3ch", "4ch", False, TRAIN_TARGET)
                sec.error = f"{type(e).__name__}: {e}"
            results.append(sec)
            print(sec.line())
            print(f"  (section time {time.perf_counter() - t0:.1f} s)")
            print()
    finally:
        if own_dir and not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
        elif args.keep or not own_dir:
            print(f"data kept in {workdir}")
    return results


def print_summary(results: list[Result], elapsed: float) -> None:
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


def main(argv: list[str] | None = None) -> int:
    """Entry point; always returns 0."""
    t0 = time.perf_counter()
    args = parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from ultralytics.utils import LOGGER

    if not args.verbose:
        LOGGER.setLevel(logging.WARNING)  # also silences Ultralytics' progress bars
    results: list[Result] = []
    try:
        print_environment(args)
        results = run(args)
    except KeyboardInterrupt:
        print("\ninterrupted")
    except BaseException as e:  # noqa: BLE001 - a benchmark reports, it does not fail the caller
        traceback.print_exc()
        print(f"benchmark aborted: {type(e).__name__}: {e}")
    print_summary(results, time.perf_counter() - t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
