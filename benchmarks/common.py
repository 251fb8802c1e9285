"""What the benchmark scripts share: the vedai-synth recipe, one training step, interleaved timing rounds, paired-seed
statistics, markdown tables, work directories and the command-line / ``main`` boilerplate.

A script run as ``python benchmarks/bench_x.py`` has ``benchmarks/`` first on ``sys.path``, so it imports this module
as ``from common import ...``.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


# Command line and main -----------------------------------------------------------------------------------------------
def base_parser(description: str, quick: str | None = "tiny sizes for a smoke run") -> argparse.ArgumentParser:
    """An ArgumentParser with ``--quick`` (unless ``quick`` is None)."""
    p = argparse.ArgumentParser(description=description)
    if quick:
        p.add_argument("--quick", action="store_true", help=quick)
    return p


def add_run_options(p: argparse.ArgumentParser, out: str | None = None, out_help: str = "markdown table",
                    workdir_help: str = "data and runs go here (default: a temporary directory)",
                    threads: bool = True) -> None:
    """``--workdir``, ``--out`` (when ``out`` names a default file, or is "" for no default) and ``--threads``."""
    p.add_argument("--workdir", type=Path, help=workdir_help)
    if out is not None:
        p.add_argument("--out", type=Path, default=Path(out) if out else None, help=out_help)
    if threads:
        p.add_argument("--threads", type=int, default=2, help="torch threads (2)")


def run_main(main: Callable[[], int], reuse_memory: bool = False) -> None:
    """``sys.exit(main())``; with ``reuse_memory``, freed memory is kept for reuse as GhostTrainer does on CPU, so the
    steps timed run as they do in training."""
    if not reuse_memory:
        sys.exit(main())
    from ghost_yolo.utils.allocator import reuse_freed_memory

    with reuse_freed_memory():
        sys.exit(main())


def banner(name: str, workdir: Path | str, extra: str = "") -> None:
    """The first line every benchmark prints."""
    import torch

    print(f"ghost-yolo {name} benchmark | torch {torch.__version__} | {os.cpu_count()} CPUs | {extra}{workdir}",
          flush=True)


@contextmanager
def work_dir(path: Path | None, prefix: str) -> Iterator[Path]:
    """``path`` (created), or a temporary directory removed at the end."""
    if path is not None:
        path.mkdir(parents=True, exist_ok=True)
        yield path
        return
    with tempfile.TemporaryDirectory(prefix=prefix) as d:
        yield Path(d)


def run_in_work_dir(args: argparse.Namespace, prefix: str, bench: Callable[[argparse.Namespace], int]) -> int:
    """``bench(args)`` with torch on ``args.threads`` threads and ``args.workdir`` made (or a temporary directory)."""
    import torch

    threads = args.threads
    torch.set_num_threads(max(threads) if isinstance(threads, list) else threads)  # a list: the most it times with
    with work_dir(args.workdir, prefix) as args.workdir:
        return bench(args)


# Machine -------------------------------------------------------------------------------------------------------------
def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (platform.processor() is often empty on Linux)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_class() -> str:
    """The CPU's class for integer and bf16 kernels (``ghost_yolo.utils.cpu.cpu_isa``: AMX, AVX512-VNNI, AVX-VNNI,
    AVX512, AVX2 or older), with ``+bf16`` where it computes bfloat16 natively (what the runtimes pick kernels by)."""
    from ghost_yolo.utils.cpu import cpu_flags, cpu_isa

    return cpu_isa() + ("+bf16" if {"avx512_bf16", "amx_bf16"} & cpu_flags() else "")


def class_slug() -> str:
    """``cpu_class()`` as a file-name part: 'AVX512-VNNI+bf16' -> 'avx512-vnni-bf16', 'AVX2' -> 'avx2'."""
    return cpu_class().lower().replace("+", "-")


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


def status_bytes(field: str) -> int:
    """A field of /proc/self/status in bytes (VmRSS: resident now, VmHWM: resident peak)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith(field + ":"))


def step_peak_memory(step: Callable[[], float], steps: int = 4) -> tuple[int, int]:
    """(peak resident bytes of ``steps`` calls of ``step`` above the process as it is, that resident size).

    The peak (VmHWM) is reset first (``/proc/self/clear_refs``), so what was loaded before does not mask the steps.
    """
    base = status_bytes("VmRSS")
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset the peak to the current resident size
    for _ in range(steps):
        step()
    return status_bytes("VmHWM") - base, base


def seed_all(seed: int) -> None:
    """Seed every RNG the augmentations and models draw from."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Interleaved timing --------------------------------------------------------------------------------------------------
def interleaved(rounds: int) -> list[tuple[int, int]]:
    """(round, which) pairs in A B, B A, A B ... order, which cancels a linear drift of machine speed."""
    out = []
    for r in range(rounds):
        out += [(r, 0), (r, 1)] if r % 2 == 0 else [(r, 1), (r, 0)]
    return out


def timed_rounds(runs: dict[str, Callable[[], float]], rounds: int, warmup: int = 2,
                 alternate: bool = True) -> dict[str, list[float]]:
    """Seconds per round of every run (each call returns its own seconds), after ``warmup`` calls of each.

    Each round calls every run once, in the given order, reversed on odd rounds when ``alternate`` (so a steady drift
    of machine speed cancels out); a slow spell of the machine hits one round's runs alike.
    """
    names = list(runs)
    for k in names:
        for _ in range(warmup):
            runs[k]()
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(rounds):
        for k in names if r % 2 == 0 or not alternate else names[::-1]:
            times[k].append(runs[k]())
    return times


def round_ratios(times: dict[str, list[float]], ref: str) -> dict[str, list[float]]:
    """Per round, every run's time over the reference run's time in that round."""
    return {k: [a / b for a, b in zip(v, times[ref])] for k, v in times.items()}


def medians(values: dict[str, list[float]]) -> dict[str, float]:
    """The median of every list."""
    return {k: statistics.median(v) for k, v in values.items()}


def verdict(ok: bool | None) -> str:
    """PASS / FAIL / n/a."""
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


class Comparison:
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


# Paired-seed statistics ----------------------------------------------------------------------------------------------
T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
       11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086}


def paired(diffs: Sequence[float]) -> tuple[float, float, float]:
    """Mean of paired differences and its t-based 95 % CI (nan bounds for one pair)."""
    n = len(diffs)
    mean = statistics.fmean(diffs)
    if n < 2:
        return mean, math.nan, math.nan
    half = T95.get(n - 1, 1.96) * statistics.stdev(diffs) / math.sqrt(n)
    return mean, mean - half, mean + half


def ahead(diffs: Sequence[float]) -> str:
    """'k of n': the seeds where the arm is ahead."""
    return f"{sum(d > 0 for d in diffs)} of {len(diffs)}"


# Markdown ------------------------------------------------------------------------------------------------------------
def md_table(header: Sequence[str], rows: Sequence[Sequence[object]] = ()) -> list[str]:
    """A markdown table's lines: header, separator, one line per row (cells already formatted)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def write_md(path: Path, lines: Sequence[str]) -> None:
    """Write ``lines`` joined by newlines (the caller ends them with "" for a final newline)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines), encoding="utf-8")


# The vedai-synth recipe and the benchmarks' fixed training settings --------------------------------------------------
def vedai_synth(data: Path, n_train: int, n_val: int, imgsz: int, seed: int = 0, workers: int = 2,
                obb: bool = False) -> Path:
    """Generate vedai-synth pairs in ``data`` (``obb``: the oriented vedai-synth-obb) and write its data YAML (rgb+ir,
    suffix pairing); returns the YAML."""
    from ultralytics.utils import YAML

    from ghost_yolo.data.synthetic import VEDAI_NAMES, generate_vedai_synth

    generate_vedai_synth(data, n_train=n_train, n_val=n_val, imgsz=imgsz, seed=seed, workers=workers, obb=obb)
    YAML.save(data / "data.yaml", {"path": str(data), "train": "images/train", "val": "images/val",
                                   "pairing": "suffix", "names": VEDAI_NAMES})
    return data / "data.yaml"


def make_data(root: Path, quick: bool, imgsz: int) -> Path:
    """vedai-synth (400/100 pairs, or 32/16 for --quick) in ``root`` and its data YAML, reused when there."""
    data = root / "vedai-synth"
    if not (data / "data.yaml").exists():
        n_train, n_val = (32, 16) if quick else (400, 100)
        vedai_synth(data, n_train, n_val, imgsz=max(imgsz, 256))
    return data / "data.yaml"


def real_batch(data_yaml: Path, imgsz: int, batch: int) -> dict:
    """One augmented training batch from the paired loader (mosaic, perspective, HSV, flips), images in [0, 1]."""
    from ultralytics.cfg import get_cfg

    from ghost_yolo.cfg import ghost_defaults
    from ghost_yolo.data.check import apply_modality, build_dataset, check_data

    cfg = get_cfg(overrides={"imgsz": imgsz, "data": str(data_yaml)})
    for k, v in ghost_defaults().items():
        setattr(cfg, k, v)
    data = apply_modality(check_data(str(data_yaml)), None, vars(cfg))
    ds = build_dataset(cfg, data["train"], batch, data, mode="train", stride=32)
    b = ds.collate_fn([ds[i] for i in range(batch)])
    b["img"] = b["img"].float() / 255
    return b


def make_step(m, batch: dict):
    """A closure running one training step of ``m`` on ``batch`` (forward, loss, backward, SGD) and returning its
    seconds."""
    import torch

    opt = torch.optim.SGD(m.parameters(), lr=1e-4, momentum=0.9)

    def step() -> float:
        t = time.perf_counter()
        loss, _ = m.loss(batch)
        loss.sum().backward()
        opt.step()
        opt.zero_grad()
        return time.perf_counter() - t

    return step


def train_arm(model: str | Path, data_yaml: Path, project: Path, name: str, epochs: int, args: argparse.Namespace,
              **kw) -> Path:
    """One training run with the benchmarks' fixed settings (``args.imgsz``, ``args.batch``); returns its run dir."""
    from ghost_yolo import GhostYOLO

    GhostYOLO(model).train(data=str(data_yaml), epochs=epochs, imgsz=args.imgsz, batch=args.batch, workers=2, seed=0,
                           deterministic=True, project=str(project), name=name, exist_ok=True, plots=False,
                           warmup_epochs=0 if name != "fp" else 1, close_mosaic=min(3, epochs), verbose=False, **kw)
    return project / name


def evaluate_run(run: Path, data_yaml: Path, imgsz: int) -> dict:
    """mAP of a run's best.pt (fused, as deployed), with its size and BOPs at imgsz."""
    from ghost_yolo import GhostYOLO

    m = GhostYOLO(run / "weights" / "best.pt")
    costs = m.quant_info(imgsz=imgsz, save=False, verbose=False).attrs["totals"]
    met = m.val(data=str(data_yaml), imgsz=imgsz, batch=16, workers=2, plots=False, verbose=False)
    return {"map50": round(100 * float(met.box.map50), 2), "map": round(100 * float(met.box.map), 2),
            "bits": round(costs["avg_w_bits"], 3), "mb": round(float(costs["size_mb"]), 3),
            "gbops": round(float(costs["gbops"]), 2)}
