#!/usr/bin/env python
"""Does a refactor change what training computes? Train the same short runs with this checkout and with another commit
and compare the trained weights tensor by tensor.

A behaviour-preserving refactor gives bit-identical weights for the same seed on the same machine (training is
deterministic on one CPU class; across classes rounding differs, so both sides always run here, in one go). Arms: the
one-command pipeline from the YAML (a float epoch, the HQ search, a quantized epoch), and from a float checkpoint
trained the same way by each side: W4 with the frozen float self and cls+dfl, HQ with OST from the co-trained float
self, W8 plain QAT. ``kd`` is named in every arm, since what ``kd=auto`` means may differ on purpose between commits.

Both sides run the LSQ quantizers on their tensor ops (``GHOST_FUSED_FAKEQUANT=0``), so any two commits compare:
the fused kernels (``ghost_yolo/nn/fakequant.py``) sum the step-size gradient exactly in double where the tensor ops
take two float32 dot products, so training with them is close to, not bit-identical with, the tensor path. ``--fused``
compares two commits that both have the kernels on the kernels; ``--fused-vs-tensor`` measures how far apart the two
paths end up (this checkout against itself).

Usage:
    python benchmarks/bench_same_training.py --ref 2c9ed6e            # results/same_training.md
    python benchmarks/bench_same_training.py --fused-vs-tensor        # results/same_training_fused.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from common import RESULTS, base_parser, cpu_class, cpu_name, md_table, run_main, work_dir, write_md

ROOT = Path(__file__).resolve().parents[1]
ARMS = {  # name: (start, keys); a checkpoint does not pass on its epochs (Ultralytics' default of 100 would apply)
    "yaml-pipeline": ("yaml", {"epochs": 2, "kd": "none"}),
    "yaml-pipeline-kd-auto": ("yaml", {"epochs": 2}),  # bare `ghost train`'s keys: HQ, kd=auto settled by the search
    "w4-frozen-cls+dfl": ("float", {"epochs": 1, "bits": 4, "kd": "cls+dfl", "float_self": "frozen"}),
    "hq-cotrain-ost": ("float", {"epochs": 1, "bits": "hq", "hq_threshold": 0.05, "kd": "ost",
                                 "float_self": "cotrain"}),
    "w8-plain": ("float", {"epochs": 1, "bits": 8, "kd": "none"}),
}

# Runs inside one side's checkout (its ghost_yolo first on sys.path): trains every arm, saves plain state dicts of
# last.pt (fp16, as Ultralytics saves it) and of the float32 model the trainer ended with (differences below fp16).
DRIVER = r"""
import json, os, sys, torch
os.environ["YOLO_OFFLINE"] = "1"
from ghost_yolo import GhostYOLO
from ultralytics.nn.tasks import load_checkpoint
data, out, arms = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
common = dict(data=data, imgsz=64, batch=8, workers=0, plots=False, val=False, seed=0, deterministic=True,
              exist_ok=True, project=out, verbose=False)
def train(name, src, keys):
    m = GhostYOLO(src)
    m.train(name=name, **{**common, **keys})
    torch.save({k: v.detach().clone() for k, v in m.trainer.model.state_dict().items()}, f"{out}/{name}.fp32.pt")
train("float", "ghost-n.yaml", dict(bits=32, kd="none", epochs=1))
for name, (start, keys) in arms.items():
    train(name, "ghost-n.yaml" if start == "yaml" else f"{out}/float/weights/best.pt", keys)
for name in ["float", *arms]:
    m, _ = load_checkpoint(f"{out}/{name}/weights/last.pt")
    torch.save({k: v.detach().clone() for k, v in m.state_dict().items()}, f"{out}/{name}.state.pt")
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = base_parser(__doc__.split("\n")[0], quick=None)
    p.add_argument("--ref", help="the commit to compare with (e.g. the one before a refactor)")
    p.add_argument("--fused", action="store_true", help="both sides on the fused fake-quant kernels (default: both on "
                   "the tensor ops, GHOST_FUSED_FAKEQUANT=0, which every commit has)")
    p.add_argument("--fused-vs-tensor", action="store_true", help="no --ref: this checkout with the fused kernels "
                   "against itself on the tensor ops")
    p.add_argument("--work", type=Path, help="work directory (default: a temporary one, removed)")
    p.add_argument("--out", type=Path, help="markdown results (default: results/same_training.md, with "
                   "--fused-vs-tensor results/same_training_fused.md)")
    args = p.parse_args(argv)
    if bool(args.ref) == args.fused_vs_tensor:
        p.error("give --ref COMMIT or --fused-vs-tensor")
    args.out = args.out or RESULTS / ("same_training_fused.md" if args.fused_vs_tensor else "same_training.md")
    return args


def side(tree: Path, data: Path, out: Path, fused: bool) -> None:
    """Train every arm with the ghost_yolo of ``tree`` in a fresh process, with the fused fake-quant kernels or not."""
    env = {**os.environ, "PYTHONPATH": str(tree), "YOLO_CONFIG_DIR": str(out / "settings"),
           "OMP_NUM_THREADS": "1",  # one thread in every tree (older ones left one core idle, newer use all)
           "GHOST_FUSED_FAKEQUANT": "1" if fused else "0"}
    out.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", DRIVER, str(data), str(out), json.dumps(ARMS)], env=env, check=True,
                   cwd=out)


def checkout(ref: str, where: Path) -> Path:
    """``ref`` as a detached worktree at ``where``, with the shipped cfg where an installed package has it."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-f", str(where), ref], check=True,
                   capture_output=True)
    cfg = where / "ghost_yolo" / "cfg"
    if not cfg.exists():  # the cfg folder installs as ghost_yolo.cfg (pyproject's package-dir)
        cfg.symlink_to(where / "cfg", target_is_directory=True)
    return where


def compare(a: Path, b: Path) -> tuple[int, int, float]:
    """(tensors compared, identical, largest absolute difference) of two saved state dicts (distiller state aside)."""
    import torch

    sa, sb = torch.load(a), torch.load(b)
    keys = sorted(k for k in set(sa) & set(sb) if not k.startswith("distiller"))
    same = sum(torch.equal(sa[k], sb[k]) for k in keys)
    worst = max((float((sa[k].double() - sb[k].double()).abs().max()) for k in keys if sa[k].is_floating_point()
                 and sa[k].shape == sb[k].shape), default=0.0)
    return len(keys), same, worst


def main(argv: list[str] | None = None) -> int:
    """Train both sides, compare, write the table."""
    args = parse_args(argv)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    if subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                      text=True, check=True).stdout.strip():
        head += " (with uncommitted changes)"
    ref = args.ref and subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", args.ref], capture_output=True,
                                      text=True, check=True).stdout.strip()
    with work_dir(args.work, "ghost-same-") as work:
        from ghost_yolo.data.synthetic import VEDAI_NAMES, generate_vedai_synth
        from ultralytics.utils import YAML

        root = generate_vedai_synth(work / "data", n_train=16, n_val=8, imgsz=96, seed=1, workers=1)
        data = Path(root) / "synth.yaml"
        YAML.save(data, {"path": str(root), "train": "images/train", "val": "images/val", "pairing": "suffix",
                         "names": VEDAI_NAMES})
        if args.fused_vs_tensor:
            side(ROOT, data, work / "runs-ref", fused=False)
            side(ROOT, data, work / "runs-head", fused=True)
        else:
            old = checkout(args.ref, work / "ref")
            try:
                side(old, data, work / "runs-ref", args.fused)
                side(ROOT, data, work / "runs-head", args.fused)
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
        rows = []
        for name in ["float", *ARMS]:
            n, same, worst = compare(work / "runs-ref" / f"{name}.state.pt", work / "runs-head" / f"{name}.state.pt")
            n32, same32, worst32 = compare(*(work / side / f"{name}.fp32.pt" for side in ("runs-ref", "runs-head")))
            rows.append([name, n, same, f"{worst:.3g}", same32 if n32 == n else f"{same32} of {n32}", f"{worst32:.3g}",
                         "yes" if same == n and same32 == n32 else "**no**"])
    if args.fused_vs_tensor:
        title = "Training on the fused fake-quant kernels against the tensor ops"
        sides = (f"{head} with the fused LSQ kernels against {head} on the tensor ops (`GHOST_FUSED_FAKEQUANT=0`). The "
                 "kernels sum the step-size gradient exactly in double, the tensor ops as two float32 dot products; "
                 "everything else is the same bit for bit, so the differences below are where that rounding leads")
    else:
        title = "Same training before and after a refactor"
        path = ("the fused fake-quant kernels" if args.fused else
                "the quantizers' tensor ops (`GHOST_FUSED_FAKEQUANT=0`; the fused kernels sum the step-size gradient "
                "in double, so training with them is close to, not bit-identical with, this path: "
                "`results/same_training_fused.md`)")
        sides = f"{head} (this checkout) against {ref}, both on {path}"
    lines = [f"# {title} (`benchmarks/bench_same_training.py`)", "",
             f"{sides}, each side training every arm in its own process (one thread) on this machine: "
             f"{cpu_name()} ({cpu_class()}), {os.cpu_count()} CPUs. vedai-synth, 16 train pairs at 96 px, imgsz 64, "
             "batch 8, seed 0, deterministic; a float epoch from ghost-n.yaml, then each arm from it (one epoch) or "
             "from the YAML (two). Weights compared tensor by tensor: last.pt (fp16, as Ultralytics saves "
             "checkpoints) and the float32 model the trainer ended with.", "",
             *md_table(["arm", "tensors", "identical (last.pt)", "largest difference (last.pt)", "identical (fp32)",
                        "largest difference (fp32)", "bit-identical"], rows), ""]
    write_md(args.out, lines)
    print("\n".join(lines))
    return 0 if args.fused_vs_tensor or all(r[-1] == "yes" for r in rows) else 1


if __name__ == "__main__":
    run_main(main)
