#!/usr/bin/env python
"""RGB-pretrained weights into an RGB+IR model: ghost's band seeding vs Ultralytics' partial copy vs scratch.

Protocol (one process, one seed, fixed budget; vedai-synth rgb+ir, 400 train / 100 val pairs):

1. Pretraining stands in for a COCO checkpoint: ghost-n is trained in float on the *colour images only*
   (``modality=rgb``, 3 channels) for ``--pre-epochs`` epochs. Its ``best.pt`` is the 3-channel pretrained model.
2. Every arm then trains a 4-channel (R, G, B, IR) float ghost-n for ``--ft-epochs`` epochs with the same settings:
   - ``seeded``: ``model=rgb.pt`` with ghost's ``load`` (IR filters = 3/4 x mean of the colour filters, colour filters
     x 3/4; ``ghost_yolo/models/pretrained.py``);
   - ``partial copy``: the same, with Ultralytics' ``BaseModel.load`` (colour filters copied, IR filters random: the
     old behaviour);
   - ``scratch``: ``model=ghost-n.yaml``, no pretrained weights;
   - ``dual stem``: ``ghost-n-dual.yaml pretrained=rgb.pt`` seeded vs Ultralytics' load (which transfers nothing
     into the dual stem), unless ``--no-dual``;
   - with ``--rgb-arm``: the pretrained model trained on for the same epochs on colour alone (what IR adds).
3. mAP50 / mAP50-95 of every arm's validation after each epoch (``results.csv``) and after the last one.

The script exits 0 whatever the numbers: it is a benchmark, not a test.

Usage (from the repository root, ghost-yolo installed):
    python benchmarks/bench_pretrained.py                 # ~15 min on a 2-core CPU (imgsz 192)
    python benchmarks/bench_pretrained.py --quick         # smoke run (tiny sizes; the numbers mean nothing)
    python benchmarks/bench_pretrained.py --weights rgb.pt --pre-epochs 0   # reuse a 3-channel model
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

from common import (add_run_options, banner, base_parser, make_data, md_table, run_in_work_dir, run_main,
                    write_md)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--imgsz", type=int, default=192, help="image size (192)")
    p.add_argument("--batch", type=int, default=16, help="batch size (16)")
    p.add_argument("--pre-epochs", type=int, default=12, help="epochs of the 3-channel pretraining (12)")
    p.add_argument("--ft-epochs", type=int, default=4, help="epochs of every 4-channel arm (4)")
    p.add_argument("--weights", type=Path, help="a 3-channel (modality=rgb) ghost-n to use instead of pretraining")
    p.add_argument("--rgb-arm", action="store_true", help="also a colour-only reference arm (what IR adds)")
    p.add_argument("--no-dual", action="store_true", help="skip the dual-stream stem arms (seeded vs Ultralytics)")
    add_run_options(p, out="",
                    out_help="markdown table (benchmarks/results/pretrained.md; --quick: in the workdir)")
    a = p.parse_args(argv)
    if a.quick:
        a.pre_epochs, a.ft_epochs, a.imgsz = min(a.pre_epochs, 1), min(a.ft_epochs, 2), 96
    return a


@contextmanager
def ultralytics_load() -> Iterator[None]:
    """Ghost models load pretrained weights with Ultralytics' own ``BaseModel.load`` inside the block (old behaviour)."""
    from ultralytics.nn.tasks import DetectionModel

    from ghost_yolo.models.model import GhostDetectionModel

    ghost_load = GhostDetectionModel.load
    GhostDetectionModel.load = DetectionModel.load
    try:
        yield
    finally:
        GhostDetectionModel.load = ghost_load


def train(model: str | Path, data_yaml: Path, project: Path, name: str, epochs: int, args: argparse.Namespace,
          **kw) -> list[dict[str, float]]:
    """One float run with the benchmark's fixed settings; returns its per-epoch validation metrics."""
    from ghost_yolo import GhostYOLO

    GhostYOLO(str(model)).train(data=str(data_yaml), epochs=epochs, imgsz=args.imgsz, batch=args.batch, workers=2,
                                seed=0, deterministic=True, project=str(project), name=name, exist_ok=True,
                                plots=False, bits=32, kd="none", warmup_epochs=1, close_mosaic=min(2, epochs),
                                verbose=False, **kw)
    with open(project / name / "results.csv") as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    return [{"map50": 100 * float(r["metrics/mAP50(B)"]), "map": 100 * float(r["metrics/mAP50-95(B)"])} for r in rows]


def arms(args: argparse.Namespace, rgb: Path) -> dict[str, tuple[str | Path, dict, object]]:
    """name -> (model, extra train keys, context the run happens in)."""
    both = {"modality": "rgb+ir"}
    a = {"seeded (ghost)": (rgb, both, nullcontext()),
         "partial copy (Ultralytics)": (rgb, both, ultralytics_load()),
         "scratch": ("ghost-n.yaml", both, nullcontext())}
    if args.rgb_arm:
        a["rgb only (reference)"] = (rgb, {"modality": "rgb"}, nullcontext())
    if not args.no_dual:
        dual = {**both, "pretrained": str(rgb)}
        a["dual stem, seeded (ghost)"] = ("ghost-n-dual.yaml", dual, nullcontext())
        a["dual stem, Ultralytics load"] = ("ghost-n-dual.yaml", dual, ultralytics_load())
    return a


def table(res: dict[str, list[dict[str, float]]], epochs: int) -> list[str]:
    """Markdown rows: mAP50 after each epoch, and the last epoch's mAP50 / mAP50-95."""
    return md_table(["arm", *(f"mAP50 ep {e + 1}" for e in range(epochs)), "mAP50-95 (last)"],
                    [[name, *(f"{r['map50']:.1f}" for r in per_epoch), f"{per_epoch[-1]['map']:.1f}"]
                     for name, per_epoch in res.items()])


def main(argv: list[str] | None = None) -> int:
    """Pretrain on colour, run the arms, print and save the table."""
    return run_in_work_dir(parse_args(argv), "ghost-bench-pretrained-", bench)


def bench(args: argparse.Namespace) -> int:
    """The benchmark in ``args.workdir``."""
    args.out = args.out or (args.workdir / "pretrained.md" if args.quick else Path("benchmarks/results/pretrained.md"))
    banner("pretrained-seeding", args.workdir, f"load {os.getloadavg()[0]:.1f} | ")
    t0 = time.time()
    data_yaml = make_data(args.workdir, args.quick, 256)
    project = args.workdir / "runs"
    rgb, pre = args.weights, None
    if rgb is None:
        pre = train("ghost-n.yaml", data_yaml, project, "pretrain-rgb", args.pre_epochs, args, modality="rgb")
        rgb = project / "pretrain-rgb" / "weights" / "best.pt"
    t_pre = time.time() - t0
    res = {}
    for name, (model, kw, ctx) in arms(args, rgb).items():
        t = time.time()
        with ctx:
            res[name] = train(model, data_yaml, project, re.sub(r"\W+", "-", name).strip("-"), args.ft_epochs, args,
                              **kw)
        print(f"  {name}: {res[name][-1]} ({time.time() - t:.0f} s)", flush=True)
    s, p, z = (res[k][-1]["map50"] for k in ("seeded (ghost)", "partial copy (Ultralytics)", "scratch"))
    made = (f"from {args.weights}" if args.weights else
            f"ghost-n trained {args.pre_epochs} epochs from scratch with modality=rgb (colour images only, 3 channels, "
            f"float) on the same vedai-synth train split; its best.pt (val mAP50 {max(r['map50'] for r in pre):.1f} "
            "on colour)")
    n = "32/16" if args.quick else "400/100"
    protocol = [
        f"- Data: vedai-synth rgb+ir, {n} train/val pairs generated at 256 px (seed 0), trained and validated at "
        f"imgsz {args.imgsz}.",
        f"- Pretrained 3-channel model: {made}.",
        f"- Every arm: float ghost-n (`bits=32 kd=none`), {args.ft_epochs} epochs, batch {args.batch}, seed 0, "
        f"`deterministic=True`, `warmup_epochs=1`, `close_mosaic={min(2, args.ft_epochs)}`, Ultralytics' default "
        "optimizer (`auto`), validation after every epoch; rgb+ir (4 channels) unless named.",
        f"- CPU, {args.threads} torch threads, shared with other jobs; one seed, so differences of about a point are "
        f"within run-to-run noise. Pretraining {t_pre:.0f} s, total {time.time() - t0:.0f} s.",
    ]
    verdict = (f"Seeded - partial copy: {s - p:+.1f} mAP50 points after {args.ft_epochs} epochs; seeded - scratch: "
               f"{s - z:+.1f}.")
    if (d := res.get("dual stem, seeded (ghost)")) and (u := res.get("dual stem, Ultralytics load")):
        verdict += f" Dual stem, seeded - Ultralytics load: {d[-1]['map50'] - u[-1]['map50']:+.1f}."
    lines = ["# RGB-pretrained weights into an RGB+IR model (benchmarks/bench_pretrained.py)", "", *protocol, "",
             *table(res, args.ft_epochs), "", verdict, ""]
    write_md(args.out, lines)
    print("\n" + "\n".join(lines[2:]) + f"\n(saved to {args.out})")
    return 0


if __name__ == "__main__":
    run_main(main, reuse_memory=True)
