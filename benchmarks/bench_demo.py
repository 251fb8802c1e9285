#!/usr/bin/env python
"""The demo as a newcomer runs it: bare ``ghost train`` in an empty folder, timed as a whole command.

Writes ``benchmarks/results/demo.md`` (the README's demo figures): wall time, the CPU and whether it computes bf16
natively, the instruction set oneDNN/MKL were capped to, and the run's summary (quantized and float-self mAP, size,
average bits). ``--isa avx2`` caps oneDNN and MKL at AVX2, which is how a 2-core AVX2 machine without bf16 computes
(the README's 10-minute target is for such a machine).

``--model ghost-n-obb.yaml`` times the OBB demo (``ghost train model=ghost-n-obb.yaml``: vedai-synth-obb) into
``benchmarks/results/demo_obb.md``.

Usage:
    python benchmarks/bench_demo.py --isa avx2            # about 8-10 minutes on 2 cores
    python benchmarks/bench_demo.py --isa avx2 --model ghost-n-obb.yaml   # the OBB demo
    python benchmarks/bench_demo.py --from-run DIR --seconds 512 --isa avx2   # record a run timed by hand
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import tempfile
import time
from pathlib import Path

from common import RESULTS, cpu_name, cpu_times, run_main, write_md

TARGET_S = 600


def record(run: Path, seconds: float, isa: str, others: float | None = None, model: str | None = None) -> str:
    """demo.md (demo_obb.md for an OBB ``model``) from a finished demo run directory and its wall time."""
    from ghost_yolo.distill import native_bf16_cpu

    s = json.loads((run / "summary.json").read_text())
    q = s.get("quantization") or {}
    qq, fs, start = q.get("quantized", {}), q.get("float_self", {}), q.get("float_start", {})
    minutes, sec = divmod(round(seconds), 60)
    bf16 = "no (capped)" if isa == "avx2" else ("yes" if native_bf16_cpu() else "no")
    command = f"ghost train model={model}" if model else "ghost train"
    obb = bool(model) and "obb" in model
    lines = [
        f"# Bare `{command}` (`benchmarks/bench_demo.py`)",
        "",
        f"`{command}` in an empty folder (data generated on first use): {s['model']}, {s['modality']}, imgsz "
        f"{s['imgsz']}, {s['epochs']} epochs ({s['fp_epochs']} float, the HQ search, then quantized), "
        f"kd={(s.get('distillation') or {}).get('kd', 'none')}.",
        "",
        "| figure | value |",
        "|---|---|",
        f"| wall time | **{minutes} min {sec:02d} s** (target <= {TARGET_S // 60} min: "
        f"{'met' if seconds <= TARGET_S else 'not met'}) |",
        f"| CPU | {cpu_name()}, {os.cpu_count()} cores, instruction set {isa or 'native'}, native bf16: {bf16} |",
        f"| other processes during the run | "
        + (f"{100 * others:.0f}% of one core on average" if others is not None else "not measured") + " |",
        f"| quantized mAP50 / mAP50-95 | **{qq.get('mAP50', 0):.3f}** / {qq.get('mAP50-95', 0):.3f} (best.pt, epoch "
        f"{qq.get('epoch')}) |",
        f"| float self of best.pt ({fs.get('batchnorm')} BatchNorm) mAP50 | {fs.get('mAP50') or 0:.3f} |",
        f"| float model at the start of QAT mAP50 | {start.get('mAP50') or 0:.3f} (epoch {start.get('epoch')}) |",
        *([f"| quantized mAP50, VOC07 11-point | {voc07(run):.3f} (last epoch, as MMRotate-based OBB papers count) |"]
          if obb else []),
        f"| size, GBOPs | {qq.get('size_mb')} MB, {qq.get('gbops')} GBOPs (float {fs.get('size_mb')} MB, "
        f"{fs.get('gbops')} GBOPs); {q.get('avg_w_bits')} average weight bits |",
    ]
    text = "\n".join(lines) + "\n"
    write_md(RESULTS / ("demo_obb.md" if obb else "demo.md"), [text])
    return text


def voc07(run: Path) -> float:
    """The VOC07 11-point mAP50 of an OBB run's last epoch (results.csv)."""
    import csv

    with open(run / "results.csv", newline="") as f:
        rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
    return float(rows[-1].get("metrics/mAP50-VOC07(B)") or 0)


def main(argv: list[str] | None = None) -> int:
    """Run (or record) the demo and write demo.md."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--isa", choices=("native", "avx2"), default="native", help="cap oneDNN/MKL (avx2: no bf16)")
    p.add_argument("--from-run", type=Path, help="record an already finished demo run directory")
    p.add_argument("--seconds", type=float, help="its wall time (with --from-run)")
    p.add_argument("--model", help="a model YAML for the demo (ghost-n-obb.yaml: the OBB demo); default: bare")
    a = p.parse_args(argv)
    if a.from_run:
        print(record(a.from_run, a.seconds, a.isa, model=a.model))
        return 0
    env = {**os.environ, "YOLO_OFFLINE": "1"}
    if a.isa == "avx2":
        env.update(ONEDNN_MAX_CPU_ISA="AVX2", MKL_ENABLE_INSTRUCTIONS="AVX2")
    with tempfile.TemporaryDirectory() as d:
        t, before = time.perf_counter(), cpu_times()
        child = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run(["ghost", "train", *([f"model={a.model}"] if a.model else [])], cwd=d, env={**env, "GHOST_DATASETS_DIR": str(Path(d) / "datasets")},
                       check=True)
        seconds = time.perf_counter() - t
        after, done = cpu_times(), resource.getrusage(resource.RUSAGE_CHILDREN)
        others = None
        if before and after:  # busy CPU time of everything but the demo, in cores
            hz = os.sysconf("SC_CLK_TCK")
            mine = (done.ru_utime + done.ru_stime) - (child.ru_utime + child.ru_stime)
            others = max(0.0, ((after[0] - before[0]) / hz - mine) / seconds)
        from ultralytics.utils import SETTINGS

        # ./runs on a fresh machine; Ultralytics' runs_dir where its settings say so (a Python install inside a git
        # repository puts it there): the newest run of the two
        task = "obb" if a.model and "obb" in a.model else "detect"
        runs = [*(Path(d) / "runs" / task).glob("train*"), *(Path(SETTINGS["runs_dir"]) / task).glob("train*")]
        run = max(runs, key=lambda r: r.stat().st_mtime)
        print(record(run, seconds, a.isa, others, model=a.model))
    return 0


if __name__ == "__main__":
    run_main(main)
