#!/usr/bin/env python
"""HQ bit-search benchmark: ghost's 1-D k-means against the scikit-learn reference procedure, as ratios.

Both sides run in ONE process on the SAME float32 weights: every ``nn.Conv2d`` of a model, either from a checkpoint
(``--weights``) or a randomly initialised ``GhostDetectionModel('ghost-n.yaml', ch=4, nc=8)``.

- Reference (scikit-learn, as in the paper's code): per layer, for b = 2, 3, ...: ``KMeans(n_clusters=2**b,
  init='k-means++', n_init=1, max_iter=50, random_state=0)`` on the weights reshaped to (-1, 1); stop at the first b
  with d = inertia / n * 1e6 < threshold (8 if none).
- Ours: the production search's rule (``ghost_yolo.quant.search.hq_plan`` without the keep policy): ``hq_distortions``
  at b = 2..8, then ``pick_bits`` (same rule).

Tiny layers: scikit-learn refuses more clusters than samples, so its k is min(2**b, unique values); ours returns
every unique value as a centre in that case (inertia 0), which is the same answer.

Reported: (1) total time of each timed search and the speed ratio (target >= 15x); (2) with ``--compare-all-k``
(default), an untimed second pass that clusters every layer at every k on both sides: per k, ours/sklearn inertia,
max over layers and mean (target <= 1.05 at every k; below 1 means ours is better); (3) agreement of the chosen bits
(target >= 90%). The script exits 0 whatever the verdicts (it is a benchmark, not a test); 1 if scikit-learn is
missing.

Usage (from the repository root; needs ``pip install scikit-learn``):
    python benchmarks/bench_hq_search.py --weights path/to/best.pt     # a trained checkpoint
    python benchmarks/bench_hq_search.py                               # random-init ghost-n (less meaningful)
    python benchmarks/bench_hq_search.py --weights best.pt --quick     # every 4th layer
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

from common import cpu_name, md_table, run_main, verdict, write_md

SPEED_TARGET = 15.0  # sklearn time / ours, at least
INERTIA_TARGET = 1.05  # ours / sklearn inertia, at most, for every layer at every k
AGREE_TARGET = 0.90  # fraction of layers with the same bits, at least
BITS = range(2, 9)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = argparse.ArgumentParser(description="HQ bit search: ghost's 1-D k-means vs the scikit-learn reference.")
    p.add_argument("--weights", type=Path, help="Ultralytics/ghost .pt checkpoint (default: random-init ghost-n)")
    p.add_argument("--threshold", type=float, default=0.1, help="HQ distortion threshold (default 0.1)")
    p.add_argument("--quick", action="store_true", help="every 4th conv layer only")
    p.add_argument("--threads", type=int, default=2, help="torch and OpenMP threads for both sides (default 2)")
    p.add_argument("--reps", type=int, default=3, help="timed runs of ours, median reported (sklearn runs once)")
    p.add_argument("--sk-dtype", choices=("float32", "float64"), default="float32",
                   help="dtype given to scikit-learn (float32 = the weights as the reference passes them; float64 "
                        "runs faster on some machines)")
    p.add_argument("--out", type=Path, help="also write the verdicts as markdown (e.g. benchmarks/results/hq_search.md)")
    p.add_argument("--compare-all-k", action=argparse.BooleanOptionalAction, default=True,
                   help="untimed pass comparing inertia at every k = 4..256 (the slow part; default on)")
    args = p.parse_args(argv)
    if not args.threshold > 0 or args.threads < 1 or args.reps < 1:
        p.error("--threshold must be > 0, --threads and --reps >= 1")
    return args


def cpu_busy(probe_s: float = 0.5) -> str:
    """Share of the CPU used by OTHER processes over probe_s: OpenMP timings are meaningless under contention."""

    def sample():
        t = [int(v) for v in Path("/proc/stat").read_text().split()[1:9]]
        own = os.times()
        return sum(t) - t[3] - t[4], sum(t), (own.user + own.system) * os.sysconf("SC_CLK_TCK")

    try:
        a = sample()
        time.sleep(probe_s)
        b = sample()
    except (OSError, ValueError, AttributeError):
        return "unknown"
    busy = max(0.0, (b[0] - a[0] - (b[2] - a[2])) / max(b[1] - a[1], 1))  # busy minus our own threads
    warn = "  WARNING: the CPU is shared; timings (sklearn's OpenMP most) are unreliable" if busy > 0.1 else ""
    return f"other processes use {busy:.0%} of {os.cpu_count()} cores{warn}"


def load_weights(path: Path | None) -> tuple[dict, str]:
    """{conv name: float32 weight} from a checkpoint, or from a random-init ghost-n; plus a description."""
    import torch

    from ghost_yolo.models.model import GhostDetectionModel  # importing ghost_yolo registers what a checkpoint unpickles

    if path:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
        model = (ckpt.get("ema") or ckpt["model"]) if isinstance(ckpt, dict) else ckpt
        source = f"{path} (trained checkpoint)"
    else:
        model = GhostDetectionModel("ghost-n.yaml", ch=4, nc=8, verbose=False)
        source = "ghost-n.yaml, ch=4, nc=8, RANDOM INIT (no --weights): uniform Kaiming weights, not a trained model"
    convs = {n: m.weight.detach().float().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    return convs, source


def sk_inertia(x, k: int) -> float:
    """The reference k-means (k is already capped at the number of unique values)."""
    from sklearn.cluster import KMeans

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "fewer distinct clusters than n_clusters" on tiny layers
        return float(KMeans(n_clusters=k, init="k-means++", n_init=1, max_iter=50, random_state=0).fit(x).inertia_)


def sk_search(weights: dict, threshold: float, dtype: str) -> dict[str, int]:
    """The reference procedure: per layer, b from 2 up, stop at the first d < threshold (8 if none)."""
    import numpy as np

    bits = {}
    for name, w in weights.items():
        x = w.reshape(-1, 1).numpy().astype(dtype)
        nu = len(np.unique(x))
        bits[name] = next((b for b in BITS if sk_inertia(x, min(2**b, nu)) / x.size * 1e6 < threshold), 8)
    return bits


def main(argv: list[str] | None = None) -> int:
    """Run both searches, compare, print PASS/FAIL lines; 0 unless scikit-learn is missing."""
    args = parse_args(argv)
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # before numpy / sklearn load their thread pools
    try:
        import sklearn
    except ImportError:
        print("scikit-learn is needed for the reference side of this benchmark: pip install scikit-learn")
        return 1
    import numpy as np
    import torch

    from ghost_yolo.quant.kmeans import hq_distortions, pick_bits

    def hq_search(weights: dict, threshold: float = 0.1) -> dict[str, int]:
        """ghost's search as ``hq_plan`` runs it, keep policy off: every width's distortion, then the first under
        the threshold."""
        return {n: pick_bits(d, threshold, 2, 8) for n, d in hq_distortions(weights).items()}

    torch.set_num_threads(args.threads)
    weights, source = load_weights(args.weights)
    if args.quick:
        weights = dict(list(weights.items())[::4])
    sizes = [w.numel() for w in weights.values()]
    print("=" * 100)
    print(f"HQ bit-search benchmark: ghost 1-D k-means vs scikit-learn KMeans ({'quick' if args.quick else 'full'})")
    print("=" * 100)
    print(f"python {platform.python_version()}, torch {torch.__version__}, numpy {np.__version__}, "
          f"scikit-learn {sklearn.__version__}")
    print(f"cpu load      {cpu_busy()}")
    print(f"threads       torch {torch.get_num_threads()}, OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']} "
          "(scikit-learn's KMeans uses OpenMP; ours is single-threaded NumPy); "
          f"scikit-learn gets {args.sk_dtype}")
    print(f"weights       {source}")
    print(f"layers        {len(weights)} Conv2d, {sum(sizes):,} weights (smallest {min(sizes)}, largest {max(sizes):,})"
          f"; threshold {args.threshold}")
    print("note          k is capped at the number of unique values on both sides (scikit-learn refuses k > n)\n")

    # 1. Timed searches (early exit at the first b under the threshold, as in the reference), after a warm-up of each
    sk_inertia(np.arange(8, dtype=np.float32).reshape(-1, 1), 4)  # imports, OpenMP start-up
    hq_search({"warm-up": torch.arange(8.0)})
    t0 = time.perf_counter()
    sk_bits = sk_search(weights, args.threshold, args.sk_dtype)
    t_sk = time.perf_counter() - t0
    times = []
    for _ in range(args.reps):
        t0 = time.perf_counter()
        bits = hq_search(weights, threshold=args.threshold)
        times.append(time.perf_counter() - t0)
    t_ours = statistics.median(times)
    speed = t_sk / t_ours
    print(f"1. search time: scikit-learn {t_sk:.2f} s (1 run), ours {t_ours:.3f} s (median of {args.reps}: "
          f"{', '.join(f'{t:.3f}' for t in times)})  ->  {speed:.1f}x faster")

    # 2. Untimed: inertia at every k on both sides
    worst = None
    if args.compare_all_k:
        t0 = time.perf_counter()
        ours = hq_distortions(weights, BITS)
        ratios = {b: {} for b in BITS}
        for name, w in weights.items():
            x = w.reshape(-1, 1).numpy().astype(args.sk_dtype)
            nu = len(np.unique(x))
            for b in BITS:
                sk, me = sk_inertia(x, min(2**b, nu)), ours[name][b] * x.size / 1e6
                if sk or me:  # both 0 when k >= unique values: nothing to compare
                    ratios[b][name] = me / sk if sk > 0 else float("inf")
        print(f"\n2. inertia ours / scikit-learn per layer, every k (untimed pass, {time.perf_counter() - t0:.0f} s); "
              "< 1 means ours is lower (better)")
        print(f"   {'bits':>4} {'k':>4} {'max':>8} {'mean':>8} {'min':>8} {'ours lower':>11}  worst layer")
        for b, r in ratios.items():
            name = max(r, key=r.get)
            lower = sum(v < 1 for v in r.values())
            print(f"   {b:>4} {2**b:>4} {r[name]:8.4f} {statistics.mean(r.values()):8.4f} {min(r.values()):8.4f} "
                  f"{lower:>5}/{len(r):<5}  {name}")
        exact = len(weights) - min(len(r) for r in ratios.values())
        print(f"   (layers where k >= unique values, both inertias 0, are left out: up to {exact} per k)")
        worst = max(max(r.values()) for r in ratios.values())

    # 3. Bits agreement
    same = sum(bits[n] == sk_bits[n] for n in weights)
    agree = same / len(weights)
    hist = {b: (list(sk_bits.values()).count(b), list(bits.values()).count(b)) for b in BITS}
    print(f"\n3. chosen bits: {same}/{len(weights)} layers agree ({agree:.1%}); layers per width (sklearn/ours): "
          + ", ".join(f"{b}b {s}/{o}" for b, (s, o) in hist.items() if s or o))
    for n in weights:
        if bits[n] != sk_bits[n]:
            print(f"   differs: {n} ({weights[n].numel()} weights): sklearn {sk_bits[n]}, ours {bits[n]}")

    print(f"\ncpu load      {cpu_busy()}")
    print("=" * 100)
    print(f"speed    {speed:7.1f}x   target >= {SPEED_TARGET:g}x   {'PASS' if speed >= SPEED_TARGET else 'FAIL'}")
    if worst is None:
        print(f"inertia      n/a    target <= {INERTIA_TARGET}    n/a (--no-compare-all-k)")
    else:
        print(f"inertia  {worst:7.4f}    target <= {INERTIA_TARGET}    {'PASS' if worst <= INERTIA_TARGET else 'FAIL'}"
              "  (max over layers and k of ours/sklearn)")
    print(f"bits     {agree:7.1%}    target >= {AGREE_TARGET:.0%}     {'PASS' if agree >= AGREE_TARGET else 'FAIL'}")
    if args.out:
        rows = [("search time", f"{t_sk:.2f} s", f"{t_ours:.3f} s", f"{speed:.1f}x faster", f">= {SPEED_TARGET:g}x",
                 verdict(speed >= SPEED_TARGET)),
                ("inertia, worst layer and k (ours / sklearn)", "", "", "n/a" if worst is None else f"{worst:.4f}",
                 f"<= {INERTIA_TARGET}", verdict(None if worst is None else worst <= INERTIA_TARGET)),
                ("same bits chosen", "", "", f"{same}/{len(weights)} layers ({agree:.1%})", f">= {AGREE_TARGET:.0%}",
                 verdict(agree >= AGREE_TARGET))]
        write_md(args.out, [
            "# HQ bit search: ghost's 1-D k-means vs scikit-learn KMeans (benchmarks/bench_hq_search.py)", "",
            f"`python benchmarks/bench_hq_search.py{' --quick' if args.quick else ''}`: {len(weights)} conv layers "
            f"({sum(sizes):,} weights) of {source}, threshold {args.threshold}, {args.threads} threads, "
            f"scikit-learn {sklearn.__version__} on {args.sk_dtype}; {cpu_name()}.", "",
            *md_table(("measurement", "scikit-learn", "ghost", "result", "target", "verdict"), rows), ""])
        print(f"(saved to {args.out})")
    return 0


if __name__ == "__main__":
    run_main(main)
