#!/usr/bin/env python
"""GPU check: ghost-yolo's whole pipeline on a CUDA machine in under 8 minutes, with a PASS/FAIL summary.

Checks, in order (each one's failure is reported and the rest still run where they can):

1. ``train``: ghost-s-dual on vedai-synth rgb+ir at 512 px with AMP, through the float phase (``fp_epochs``), the HQ
   search and the quantized phase with OST self-distillation (co-trained float self). Passes when AMP was on, every
   logged loss is finite, the distillation loss is 0 in the float epochs and positive in the quantized ones, and the
   run summary reports a quantized model.
2. ``fuse``: best.pt unfused vs fused (BatchNorm folded into the quantized weights) on the device, on validation
   images: the share of class scores within 0.01 and of box coordinates within 1 px.
3. ``export``: integer QDQ ONNX export, onnxruntime (CPU) vs the fused PyTorch model (CPU, fp32): raw outputs as in
   ``fuse``, and mAP50 of ``val`` through both.
4. ``ddp``: where two GPUs exist, a short float + quantized + distilled run with ``device=0,1`` (Ultralytics' DDP
   launcher with the ghost trainer); skipped otherwise.
5. ``time``: the whole check within the time budget (CUDA runs only).

Exit status: 0 when every check passed or was skipped, 1 when one failed, 3 when no CUDA device is available (nothing
was checked; 2 is a usage error; ``--device cpu --quick`` runs the checks on the CPU at a tiny size instead, ``--dry-run`` only shows the
plan and checks the imports).

Usage (from the repository root, ghost-yolo installed):
    python benchmarks/gpu_check.py                      # on a CUDA machine: about 3-5 min on one H100/H200-class GPU
    python benchmarks/gpu_check.py --dry-run            # the plan and settings, no training (any machine)
    python benchmarks/gpu_check.py --device cpu --quick # the same checks at a tiny size on the CPU (about 2 min)
"""

from __future__ import annotations

import argparse
import csv
import importlib
import json
import math
import os
import time
import traceback
from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("YOLO_OFFLINE", "1")

from common import base_parser, run_main, vedai_synth, work_dir

NO_CUDA = 3  # exit status when there is no CUDA device to check (2 is argparse's usage error)
TIME_BUDGET = 480  # seconds, the whole check on a CUDA machine
RAW_AGREE = 0.97  # share of raw outputs that must agree (class score within 0.01, box coordinate within 1 px)
MAP_AGREE = 0.5  # mAP50 points between onnxruntime and PyTorch, at most


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = base_parser(__doc__.split("\n")[0], quick=None)
    p.add_argument("--device", default="auto", help="auto (first CUDA device), a CUDA index such as 0, or cpu")
    p.add_argument("--quick", action="store_true", help="tiny sizes (96 px, 16/8 pairs): a smoke run")
    p.add_argument("--dry-run", action="store_true", help="print the plan and check the imports; no training")
    p.add_argument("--model", default="ghost-s-dual.yaml", help="model YAML (ghost-s-dual.yaml)")
    p.add_argument("--imgsz", type=int, default=512, help="image size (512)")
    p.add_argument("--n-train", type=int, default=256, help="vedai-synth training pairs (256)")
    p.add_argument("--n-val", type=int, default=64, help="vedai-synth validation pairs (64)")
    p.add_argument("--epochs", type=int, default=3, help="epochs of the single-GPU run (3)")
    p.add_argument("--fp-epochs", type=int, default=1, help="float epochs before the quantized phase (1)")
    p.add_argument("--batch", type=int, default=16, help="batch size (16; split over the GPUs in the DDP run)")
    p.add_argument("--workers", type=int, default=8, help="dataloader workers (8)")
    p.add_argument("--skip-ddp", action="store_true", help="skip the 2-GPU DDP run even where two GPUs exist")
    p.add_argument("--workdir", type=Path, help="data and runs go here (default: a temporary directory)")
    a = p.parse_args(argv)
    if a.quick:
        a.imgsz, a.n_train, a.n_val, a.epochs, a.fp_epochs, a.batch = 96, 16, 8, 2, 1, 8
        a.workers = min(a.workers, 2)
    if not 0 < a.fp_epochs < a.epochs:
        p.error(f"--fp-epochs must leave quantized epochs: 0 < {a.fp_epochs} < --epochs {a.epochs}")
    return a


@dataclass
class Check:
    """One check's outcome for the summary."""

    name: str
    status: str = "SKIP"  # PASS, FAIL or SKIP
    detail: str = ""
    seconds: float = 0.0
    data: dict = field(default_factory=dict)


def run_check(name: str, fn: Callable[[], tuple[bool | None, str, dict]], results: list[Check]) -> Check:
    """Run one check, timing it; an exception is a failure (its traceback is printed, the next checks still run)."""
    print(f"\n=== gpu_check: {name} ===", flush=True)
    t = time.time()
    c = Check(name)
    try:
        ok, c.detail, c.data = fn()
        c.status = "SKIP" if ok is None else "PASS" if ok else "FAIL"
    except Exception as e:
        traceback.print_exc()
        c.status, c.detail = "FAIL", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
    c.seconds = time.time() - t
    print(f"=== {name}: {c.status} {c.detail} ({c.seconds:.0f} s)", flush=True)
    results.append(c)
    return c


def make_data(root: Path, args: argparse.Namespace) -> Path:
    """vedai-synth pairs at the check's image size and their data YAML."""
    data = root / f"vedai-synth-{args.imgsz}"
    if not (data / "data.yaml").exists():
        vedai_synth(data, args.n_train, args.n_val, args.imgsz, workers=max(1, min(args.workers, os.cpu_count() or 1)))
    return data / "data.yaml"


def read_results(run: Path) -> list[dict[str, float]]:
    """results.csv rows as floats (column names stripped)."""
    with open(run / "results.csv") as f:
        return [{k.strip(): float(v) for k, v in r.items() if v not in (None, "")} for r in csv.DictReader(f)]


def train_run(args: argparse.Namespace, data_yaml: Path, name: str, device: str, epochs: int) -> tuple[object, Path]:
    """Float, HQ and quantized + OST phases with AMP; returns (the GhostYOLO, its run directory)."""
    from ghost_yolo import GhostYOLO

    model = GhostYOLO(args.model)
    model.train(data=str(data_yaml), epochs=epochs, fp_epochs=args.fp_epochs, bits="hq", kd="ost",
                float_self="cotrain", amp=True, imgsz=args.imgsz, batch=args.batch, workers=args.workers,
                device=device, seed=0, project=str(args.workdir / "runs"), name=name, exist_ok=True, plots=False,
                warmup_epochs=0, close_mosaic=0)
    return model, args.workdir / "runs" / name


def check_train(args: argparse.Namespace, data_yaml: Path, device: str, cuda: bool) -> tuple[bool, str, dict]:
    """AMP on (CUDA), finite losses, distillation only in the quantized epochs, a quantized summary."""
    model, run = train_run(args, data_yaml, "train", device, args.epochs)
    rows = read_results(run)
    losses = [v for r in rows for k, v in r.items() if k.startswith("train/")]
    kd = [r.get("train/kd_loss", float("nan")) for r in rows]
    summary = json.loads((run / "summary.json").read_text())
    q = summary.get("quantization") or {}
    amp = bool(getattr(model.trainer, "amp", False))
    problems = []
    if cuda and not amp:
        problems.append("AMP was off")
    if len(rows) != args.epochs:
        problems.append(f"{len(rows)} epochs logged of {args.epochs}")
    if not all(math.isfinite(v) for v in losses):
        problems.append("non-finite losses")
    if any(v != 0 for v in kd[: args.fp_epochs]) or not all(v > 0 for v in kd[args.fp_epochs :]):
        problems.append(f"kd_loss by epoch {kd} (0 in float epochs, > 0 after expected)")
    if not q.get("avg_w_bits") or q["avg_w_bits"] >= 32:
        problems.append("summary has no quantized model")
    m = summary.get("metrics", {})
    detail = (f"amp={amp}, {len(rows)} epochs, kd_loss {', '.join(f'{v:.4f}' for v in kd)}, avg bits "
              f"{q.get('avg_w_bits')}, mAP50 {m.get('mAP50')}")
    return not problems, "; ".join(problems) or detail, {"run": run, "best": run / "weights" / "best.pt"}


def val_images(data_yaml: Path, imgsz: int, n: int = 8):
    """Validation pairs as a float batch (R, G, B, IR) resized to imgsz."""
    import cv2
    import numpy as np
    import torch

    root = data_yaml.parent / "images" / "val"
    ims = []
    for co in sorted(root.glob("*_co.png"))[:n]:
        rgb = cv2.resize(cv2.imread(str(co))[..., ::-1], (imgsz, imgsz))
        ir = cv2.resize(cv2.imread(str(co).replace("_co", "_ir"), cv2.IMREAD_GRAYSCALE), (imgsz, imgsz))
        ims.append(np.dstack([rgb, ir]).transpose(2, 0, 1))
    return torch.from_numpy(np.stack(ims)).float() / 255


def agreement(a, b) -> tuple[float, float]:
    """(share of class scores within 0.01, share of box coordinates within 1 px) between two raw outputs (B, 4+nc, N)."""
    import numpy as np

    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(np.mean(np.abs(a[:, 4:] - b[:, 4:]) < 0.01)), float(np.mean(np.abs(a[:, :4] - b[:, :4]) < 1.0))


def check_fuse(best: Path, data_yaml: Path, imgsz: int, device: str) -> tuple[bool, str, dict]:
    """Unfused vs fused best.pt on the device (fp32)."""
    import torch
    from ultralytics.nn.tasks import load_checkpoint

    model, _ = load_checkpoint(best, device=device)
    x = val_images(data_yaml, imgsz).to(device)
    with torch.no_grad():
        ref = deepcopy(model).float().eval()(x)[0].cpu()
        fused = deepcopy(model).float().eval().fuse(verbose=False)
        out = fused(x)[0].cpu()
    cls, box = agreement(ref, out)
    ok = fused.is_fused() and cls >= RAW_AGREE and box >= RAW_AGREE
    return ok, f"class scores within 0.01: {cls:.4f}, box coords within 1 px: {box:.4f} (need >= {RAW_AGREE})", {}


def check_export(best: Path, data_yaml: Path, imgsz: int, run: Path) -> tuple[bool, str, dict]:
    """QDQ ONNX through onnxruntime vs the fused PyTorch model on the CPU: raw outputs and mAP50."""
    import numpy as np
    import onnxruntime as ort
    import torch
    from ultralytics.nn.tasks import load_checkpoint

    from ghost_yolo import GhostYOLO

    f = GhostYOLO(best).export(format="onnx", imgsz=imgsz, data=str(data_yaml), device="cpu")
    x = val_images(data_yaml, imgsz)
    sess = ort.InferenceSession(str(f), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    y_ort = np.concatenate([sess.run(None, {name: x[i : i + 1].numpy()})[0] for i in range(len(x))])
    model, _ = load_checkpoint(best, device="cpu")
    with torch.no_grad():
        y_pt = model.float().eval().fuse(verbose=False)(x)[0].numpy()
    cls, box = agreement(y_pt, y_ort)
    kw = {"data": str(data_yaml), "imgsz": imgsz, "batch": 1, "plots": False, "device": "cpu", "verbose": False,
          "project": str(run), "exist_ok": True}
    pt = GhostYOLO(best).val(rect=False, name="val_pt", **kw).box.map50
    ox = GhostYOLO(f).val(name="val_onnx", **kw).box.map50
    gap = abs(pt - ox) * 100
    ok = cls >= RAW_AGREE and box >= RAW_AGREE and gap <= MAP_AGREE
    return ok, (f"class scores within 0.01: {cls:.4f}, box coords within 1 px: {box:.4f}; mAP50 PyTorch {pt * 100:.2f} "
                f"vs onnxruntime {ox * 100:.2f} (gap {gap:.2f}, need <= {MAP_AGREE})"), {"onnx": f}


def check_ddp(args: argparse.Namespace, data_yaml: Path) -> tuple[bool | None, str, dict]:
    """Two-GPU DDP run (float, HQ, quantized + OST) through Ultralytics' launcher; skipped with fewer GPUs."""
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if args.skip_ddp or n < 2:
        return None, "--skip-ddp" if args.skip_ddp else f"{n} CUDA device(s): DDP needs 2", {}
    _, run = train_run(args, data_yaml, "ddp", "0,1", args.fp_epochs + 1)
    rows = read_results(run)
    summary = json.loads((run / "summary.json").read_text())
    kd = [r.get("train/kd_loss", float("nan")) for r in rows]
    ok = (len(rows) == args.fp_epochs + 1 and (run / "weights" / "best.pt").exists() and kd[-1] > 0
          and (summary.get("quantization") or {}).get("avg_w_bits", 32) < 32
          and all(math.isfinite(v) for r in rows for k, v in r.items() if k.startswith("train/")))
    return ok, f"{len(rows)} epochs on 2 GPUs, kd_loss {kd}, mAP50 {summary.get('metrics', {}).get('mAP50')}", {}


def plan(args: argparse.Namespace, device: str) -> list[str]:
    """What the check will do, for the log and --dry-run."""
    return [f"device {device}; model {args.model}; vedai-synth {args.n_train}/{args.n_val} pairs at {args.imgsz} px; "
            f"batch {args.batch}, workers {args.workers}",
            f"train: {args.epochs} epochs ({args.fp_epochs} float, HQ search, {args.epochs - args.fp_epochs} quantized "
            "+ OST with the co-trained float self), amp=True",
            f"fuse: unfused vs fused best.pt on {device}; export: QDQ ONNX, onnxruntime vs fused PyTorch on CPU, mAP50",
            "ddp: device=0,1 float + quantized epoch" + (" (skipped: --skip-ddp)" if args.skip_ddp else
                                                        " where two GPUs exist")]


def resolve_device(requested: str) -> tuple[str | None, bool]:
    """(device string for Ultralytics, is CUDA); (None, False) when CUDA was asked for and is missing."""
    import torch

    if requested.lower() == "cpu":
        return "cpu", False
    if not torch.cuda.is_available():
        return None, False
    return ("0" if requested == "auto" else requested), True


def main(argv: list[str] | None = None) -> int:
    """Run the checks and print the summary; the exit status says whether all passed."""
    args = parse_args(argv)
    import torch

    import ghost_yolo

    device, cuda = resolve_device(args.device)
    gpus = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if torch.cuda.is_available() else []
    print(f"ghost-yolo gpu_check | ghost-yolo {getattr(ghost_yolo, '__version__', '?')} | torch {torch.__version__} | "
          f"CUDA {torch.version.cuda} | GPUs: {', '.join(gpus) or 'none'} | {os.cpu_count()} CPUs", flush=True)
    if args.dry_run:
        for name in ("cloudpickle", "onnxruntime", "ghost_yolo.engine.trainer"):  # DDP hand-off, export, trainer
            importlib.import_module(name)
        print("\n".join(["dry run: imports ok; plan:", *(f"  {line}" for line in plan(args, device or "cuda:?"))]))
        return 0
    if device is None:
        print(f"gpu_check: no CUDA device available (torch {torch.__version__}, CUDA build {torch.version.cuda}): nothing "
              f"was checked. Run it on a CUDA machine, or use --device cpu --quick for the CPU smoke run. Exit {NO_CUDA}.")
        return NO_CUDA
    with work_dir(args.workdir, "ghost-gpu-check-") as args.workdir:
        return check_all(args, device, cuda)


def check_all(args: argparse.Namespace, device: str, cuda: bool) -> int:
    """The checks in ``args.workdir`` and their summary."""
    print("\n".join(f"  {line}" for line in plan(args, device)), flush=True)
    t0 = time.time()
    results: list[Check] = []
    data_yaml = make_data(args.workdir, args)
    train = run_check("train", lambda: check_train(args, data_yaml, device, cuda), results)
    best = train.data.get("best")
    if best is not None and Path(best).exists():
        torch_device = f"cuda:{device.split(',')[0]}" if cuda and device[0].isdigit() else device
        run_check("fuse", lambda: check_fuse(best, data_yaml, args.imgsz, torch_device), results)
        run_check("export", lambda: check_export(best, data_yaml, args.imgsz, train.data["run"]), results)
    else:
        results += [Check("fuse", "FAIL", "no best.pt from the train check"),
                    Check("export", "FAIL", "no best.pt from the train check")]
    run_check("ddp", lambda: check_ddp(args, data_yaml), results)
    total = time.time() - t0
    results.append(Check("time", ("PASS" if total <= TIME_BUDGET else "FAIL") if cuda else "SKIP",
                         f"{total:.0f} s" + (f" (budget {TIME_BUDGET} s)" if cuda else " (CPU run: no budget)"), total))
    print("\nghost-yolo gpu_check summary")
    for c in results:
        print(f"  {c.status:<4}  {c.name:<7} {c.seconds:6.0f} s  {c.detail}")
    failed = [c.name for c in results if c.status == "FAIL"]
    print(f"result: {'FAIL (' + ', '.join(failed) + ')' if failed else 'PASS'}")
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
