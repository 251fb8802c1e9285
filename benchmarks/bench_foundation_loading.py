#!/usr/bin/env python
"""Foundation benchmark, measurement 1: paired RGB+IR loading against Ultralytics' stock loader, as a ratio.

ghost's ``PairedDataset`` (rgb+ir, 4 channels, built by ``ghost_yolo.data.check.build_dataset``) against Ultralytics'
stock ``YOLODataset`` (built by ``ultralytics.data.build.build_yolo_dataset``) on a plain copy of the SAME colour images
with the SAME training augmentation (mosaic, random perspective, HSV, flips; default hyperparameters from
``ultralytics.cfg.get_cfg``), ``cache=False`` for both. Measured single-process (``dataset[i]`` over shuffled indices, a
fresh order per round shared by both) and through ``build_dataloader`` (2 workers, the dataset's ``collate_fn``).
Target: paired/stock throughput >= 0.8x. A breakdown of the per-sample loading time by stage follows, to show where
any paired overhead comes from.

Run alone, it is ``bench_foundation.py --skip-train`` (same flags, same output):
    python benchmarks/bench_foundation_loading.py --quick
"""

from __future__ import annotations

import argparse
import gc
import random
import shutil
import sys
import time
import traceback
from collections import defaultdict
from pathlib import Path
from typing import Any, Callable

from common import Comparison, interleaved, run_main, seed_all

LOAD_TARGET = 0.8  # paired / stock images per second, at least
NAMES = {0: "car", 1: "pickup", 2: "camping", 3: "truck", 4: "other", 5: "tractor", 6: "boat", 7: "van"}


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
# Measurement
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


def bench_single_process(args: argparse.Namespace, stock: Any, paired: Any) -> Comparison:
    """dataset[i] over shuffled indices; per round the same indices and RNG seeds for both; interleaved rounds."""
    res = Comparison("loading, single process", "img/s", "stock", "paired", True, LOAD_TARGET)
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


def bench_dataloader(args: argparse.Namespace, stock: Any, paired: Any) -> Comparison:
    """Ultralytics' build_dataloader (InfiniteDataLoader, collate_fn, seeded shuffle) with workers.

    Each repetition restarts that loader's workers (``reset``), so only one loader's workers are alive at a time, runs
    whole epochs (at least ``loader_samples`` images) and is timed from the first batch to the end: steady-state
    throughput, without the worker start.
    """
    import torch
    from ultralytics.data.build import build_dataloader

    res = Comparison(f"loading, DataLoader workers={args.loader_workers}", "img/s", "stock", "paired", True, LOAD_TARGET)
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


def run_loading(args: argparse.Namespace, workdir: Path) -> tuple[list[Comparison], Any | None]:
    """Section 1, printing as results come in: its comparisons, and the paired dataset for the training batch (None
    when the section failed)."""
    results: list[Comparison] = []
    paired = None
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
                sec = Comparison(f"loading, DataLoader workers={args.loader_workers}", "img/s", "stock",
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
        sec = Comparison("loading, single process", "img/s", "stock", "paired", True, LOAD_TARGET)
        sec.error = f"{type(e).__name__}: {e}"
        results.append(sec)
        print(sec.line())
        paired = None
    print()
    return results, paired


if __name__ == "__main__":
    from bench_foundation import main

    run_main(lambda: main(["--skip-train", *sys.argv[1:]]))
