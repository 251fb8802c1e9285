#!/usr/bin/env python
"""Foundation benchmark, measurement 2: the 4-channel training step against the same model on 3 channels, as a ratio.

``GhostDetectionModel('ghost-n.yaml', ch=4)`` (early fusion) against the same model with ``ch=3``; forward +
``model.loss(batch)`` + backward + grad clipping + SGD step on one real augmented batch (no EMA). Target: 4ch/3ch time
<= 1.1x.

Run alone, it is ``bench_foundation.py --skip-loading`` (same flags, same output; the batch is then a random one):
    python benchmarks/bench_foundation_train.py --quick
"""

from __future__ import annotations

import argparse
import gc
import random
import sys
import time
import traceback
from typing import Any

from bench_foundation_loading import NAMES
from common import Comparison, interleaved, run_main, seed_all

TRAIN_TARGET = 1.1  # 4ch / 3ch time per step, at most


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

    from ghost_yolo.models.model import GhostDetectionModel

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


def bench_train(args: argparse.Namespace, paired: Any | None) -> tuple[Comparison, str]:
    """ms per training step, 4-channel early fusion vs the same model on 3 channels, on the same batch."""
    res = Comparison(f"train step, batch {args.train_batch}", "ms", "3ch", "4ch", False, TRAIN_TARGET)
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


def run_train(args: argparse.Namespace, paired: Any | None) -> Comparison:
    """Section 2, printing as results come in."""
    import torch

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
        sec = Comparison(f"train step, batch {args.train_batch}", "ms", "3ch", "4ch", False, TRAIN_TARGET)
        sec.error = f"{type(e).__name__}: {e}"
    print(sec.line())
    print(f"  (section time {time.perf_counter() - t0:.1f} s)")
    print()
    return sec


if __name__ == "__main__":
    from bench_foundation import main

    run_main(lambda: main(["--skip-loading", *sys.argv[1:]]))
