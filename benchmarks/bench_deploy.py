"""Quantized deployment benchmark: integer ONNX latency, sizes, parity, and QAT export vs onnxruntime's own PTQ.

One run, side by side, onnxruntime on 2 threads:

1. Accuracy on vedai-synth val (imgsz 256): each ghost-yolo QAT model (W8, HQ, W4; trained from one float base with
   the default out_quant=True) as PyTorch (fused fake-quant) and as integer ONNX in onnxruntime, with the detection
   match rate between the two (box IoU > 0.95, same class, confidence within 0.01, conf >= 0.25); onnxruntime's
   static post-training quantization of the float model (Conv nodes, per-channel int8 weights, uint8 activations, the
   same calibration images as ghost's export; and int4 weights where onnxruntime offers it). Next to it, the share of
   confident scores that stay within 0.01 in onnxruntime and in the same PyTorch model run in float64: quantized
   networks turn summation-order differences into code flips, so the second is the ceiling of any exact runtime.
2. Latency at imgsz 256 and 512: every ONNX vs the float ONNX of the same architecture, interleaved medians.
3. File sizes: float ONNX, integer ONNX (int8 and INT4), packed .ghost, and the method's quantized size.

    python benchmarks/bench_deploy.py --weights fp.pt                 # trains the three QAT arms (3 epochs each)
    python benchmarks/bench_deploy.py --weights fp.pt --arm W8=a.pt --arm HQ=b.pt --arm W4=c.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
from common import (add_run_options, banner, base_parser, make_data, medians, round_ratios, run_in_work_dir, run_main,
                    timed_rounds, train_arm, write_md)

from ghost_yolo import GhostYOLO

ARM_BITS = {"W8": 8, "HQ": "hq", "W4": 4}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--weights", type=Path, help="float vedai-synth model (default: train one, --fp-epochs)")
    p.add_argument("--arm", action="append", default=[], help="LABEL=path of a trained QAT arm (W8, HQ, W4)")
    p.add_argument("--fp-epochs", type=int, default=15, help="float epochs when no --weights (15)")
    p.add_argument("--q-epochs", type=int, default=3, help="QAT epochs of each arm trained here (3)")
    p.add_argument("--hq-threshold", type=float, default=2.0, help="HQ threshold (2.0: ~4.8 bits on ghost-n)")
    p.add_argument("--imgsz", type=int, default=256, help="accuracy image size (256, the training size)")
    p.add_argument("--latency-sizes", type=int, nargs="+", default=[256, 512], help="latency image sizes")
    p.add_argument("--reps", type=int, default=30, help="interleaved latency repetitions (30)")
    p.add_argument("--calib", type=int, default=32, help="calibration images for onnxruntime PTQ (32)")
    p.add_argument("--batch", type=int, default=16, help="training batch (16)")
    p.add_argument("--threads", type=int, default=2, help="onnxruntime and torch threads (2)")
    add_run_options(p, out="benchmarks/results/deploy.md", out_help="markdown tables",
                    workdir_help="data and runs (default: a temporary directory)", threads=False)
    a = p.parse_args(argv)
    if a.quick:
        a.fp_epochs, a.q_epochs, a.imgsz, a.latency_sizes, a.reps, a.calib = 1, 1, 128, [128], 5, 8
    return a


def session(path: str | Path, threads: int):
    """An onnxruntime CPU session with a fixed thread count."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    # interleaved sessions each own a thread pool; spinning pools of idle sessions would steal the cores of the one
    # being timed (measured: the float model ran 2x slower interleaved than alone)
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def calibration_arrays(data_yaml: Path, imgsz: int, n: int) -> list[np.ndarray]:
    """The calibration images ghost's export uses (first n val pairs, letterboxed), one (1, 4, H, W) array each."""
    from ghost_yolo.data.check import calibration_batches

    return [im[None].numpy() for b in calibration_batches(data_yaml, imgsz, n, "rgb+ir") for im in b]


def ort_ptq(float_onnx: Path, out: Path, calib: list[np.ndarray], weight_bits: int) -> Path | None:
    """onnxruntime static PTQ of the float ONNX (Conv nodes, per-channel weights, QDQ); None if unsupported."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(calib)

        def get_next(self):
            x = next(self.it, None)
            return None if x is None else {"images": x}

        def rewind(self):
            self.it = iter(calib)

    exclude = [n.name for n in onnx.load(str(float_onnx)).graph.node if n.op_type != "Conv"]
    wtype = QuantType.QInt8 if weight_bits == 8 else QuantType.QInt4
    try:
        quantize_static(str(float_onnx), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        weight_type=wtype, activation_type=QuantType.QUInt8, nodes_to_exclude=exclude)
    except Exception as e:  # noqa: BLE001 -- int4 conv weights are not offered by every onnxruntime
        print(f"  onnxruntime PTQ W{weight_bits}: not available ({type(e).__name__}: {str(e)[:120]})")
        return None
    return out


def onnx_map50(path: Path, data_yaml: Path, imgsz: int) -> float:
    """mAP50 (%) of an ONNX model on the val split through ghost's validator."""
    m = GhostYOLO(path).val(data=str(data_yaml), imgsz=imgsz, batch=1, plots=False, verbose=False)
    return 100 * float(m.box.map50)


def match_rate(pt: GhostYOLO, onnx_path: Path, data_yaml: Path, imgsz: int) -> tuple[float, int]:
    """Fraction of PyTorch detections (conf >= 0.25) that onnxruntime reproduces: IoU > 0.95, class, conf +- 0.01."""
    from ultralytics.utils.metrics import box_iou

    src = [str(p) for p in sorted((Path(data_yaml).parent / "images" / "val").glob("*_co.png"))]
    kw = {"imgsz": imgsz, "conf": 0.25, "verbose": False, "stream": True}
    ok = total = 0
    for a, b in zip(pt.predict(src, **kw), GhostYOLO(onnx_path).predict(src, **kw)):
        for box, conf, cls in zip(a.boxes.xyxy, a.boxes.conf, a.boxes.cls):
            total += 1
            if len(b.boxes):
                iou, j = box_iou(box[None], b.boxes.xyxy)[0].max(0)
                ok += bool(iou > 0.95 and b.boxes.cls[j] == cls and abs(b.boxes.conf[j] - conf) < 0.01)
    return ok / max(total, 1), total


def score_agreement(weights: Path, onnx_path: Path, calib: list[np.ndarray]) -> tuple[float, float]:
    """Share of confident class scores (> 0.25) that onnxruntime, and the same PyTorch model run in float64, keep
    within 0.01 of the fused float32 PyTorch model: the second is the ceiling any exact implementation can reach."""
    from copy import deepcopy

    fused = GhostYOLO(weights).model.float().fuse(verbose=False).eval()
    x = torch.from_numpy(np.concatenate(calib))
    with torch.no_grad():
        ref = fused(x)[0][:, 4:].numpy()
        f64 = deepcopy(fused).double()(x.double())[0][:, 4:].float().numpy()
    sess = session(onnx_path, 2)
    ort_y = np.concatenate([sess.run(None, {"images": im})[0] for im in calib])[:, 4:]
    hi = ref > 0.25
    return float((np.abs(ort_y - ref)[hi] < 0.01).mean()), float((np.abs(f64 - ref)[hi] < 0.01).mean())


def export_onnx(weights: Path, imgsz: int, data_yaml: Path, out: Path, **kw) -> Path:
    """Export ``weights`` at ``imgsz`` to ONNX and move it to ``out``."""
    f = Path(GhostYOLO(weights).export(format="onnx", imgsz=imgsz, data=str(data_yaml), simplify=True, **kw))
    return Path(f.replace(out))


def latency(paths: dict[str, Path], imgsz: int, reps: int, threads: int) -> tuple[dict[str, float], dict[str, float]]:
    """Median ms per image of every model, and the median over rounds of each model's time / the float model's time
    in the same round (runs interleaved, so a slow spell of the machine hits a round's models alike)."""
    sessions = {k: session(p, threads) for k, p in paths.items()}
    x = np.random.default_rng(0).random((1, 4, imgsz, imgsz), dtype=np.float32)

    def timed(s) -> float:
        t = time.perf_counter()
        s.run(None, {"images": x})
        return time.perf_counter() - t

    times = timed_rounds({k: lambda s=s: timed(s) for k, s in sessions.items()}, reps, warmup=3, alternate=False)
    ms = {k: 1000 * v for k, v in medians(times).items()}
    ratios = medians(round_ratios(times, "float"))
    return ms, ratios


def main(argv: list[str] | None = None) -> int:
    """Train or take the arms, then accuracy/parity, latency and size tables; print and save markdown."""
    return run_in_work_dir(parse_args(argv), "ghost-bench-deploy-", bench)


def bench(args: argparse.Namespace) -> int:
    """The benchmark in ``args.workdir``."""
    wd = args.workdir
    banner("deployment", wd)
    t0 = time.time()
    data_yaml = make_data(wd, args.quick, args.imgsz)
    fp = args.weights or train_arm("ghost-n.yaml", data_yaml, wd / "runs", "fp", args.fp_epochs, args, bits=32,
                                   kd="none") / "weights/best.pt"
    given = dict(a.split("=", 1) for a in args.arm)
    arms = {}
    for label, bits in ARM_BITS.items():
        kw = {"hq_threshold": args.hq_threshold} if bits == "hq" else {}
        arms[label] = Path(given[label]) if label in given else train_arm(
            fp, data_yaml, wd / "runs", label.lower(), args.q_epochs, args, bits=bits, kd="ost", **kw) / "weights/best.pt"
    onnx_dir = wd / "onnx"
    onnx_dir.mkdir(exist_ok=True)
    calib = calibration_arrays(data_yaml, args.imgsz, args.calib)

    # 1. accuracy and parity at the training size
    float_onnx = export_onnx(fp, args.imgsz, data_yaml, onnx_dir / f"float_{args.imgsz}.onnx")
    rows = [("| model | weights | PyTorch mAP50 | onnxruntime mAP50 | detections reproduced | scores within 0.01: "
            "onnxruntime / PyTorch fp64 | ONNX MB | .ghost MB | method MB |"), "|---|---|---|---|---|---|---|---|---|"]
    fp_map = onnx_map50(float_onnx, data_yaml, args.imgsz)
    rows.append(f"| float | fp32 | – | {fp_map:.1f} | – | – | {float_onnx.stat().st_size / 1e6:.2f} | – | – |")
    q_onnx = {}
    for label, w in arms.items():
        model = GhostYOLO(w)
        pt = 100 * float(model.val(data=str(data_yaml), imgsz=args.imgsz, batch=1, rect=False, plots=False,
                                   verbose=False).box.map50)
        f8 = export_onnx(w, args.imgsz, data_yaml, onnx_dir / f"{label}_{args.imgsz}.onnx")
        f4 = export_onnx(w, args.imgsz, data_yaml, onnx_dir / f"{label}_{args.imgsz}_int4.onnx", int4=True)
        packed = Path(GhostYOLO(w).export(format="ghost"))
        totals = model.quant_info(imgsz=args.imgsz, save=False, verbose=False).attrs["totals"]
        ox = onnx_map50(f8, data_yaml, args.imgsz)
        rate, n = match_rate(model, f8, data_yaml, args.imgsz)
        agree, ceiling = score_agreement(w, f8, calib)
        q_onnx[label] = f8
        rows.append(f"| ghost {label} QAT | {totals['avg_w_bits']:.2f} bit | {pt:.1f} | {ox:.1f} (Δ {ox - pt:+.2f}) | "
                    f"{100 * rate:.1f}% of {n} | {100 * agree:.0f}% / {100 * ceiling:.0f}% | "
                    f"{f8.stat().st_size / 1e6:.2f} (INT4: {f4.stat().st_size / 1e6:.2f}) "
                    f"| {packed.stat().st_size / 1e6:.2f} | {totals['size_mb']:.2f} |")
    ptq = {}
    for wb in (8, 4):
        out = ort_ptq(float_onnx, onnx_dir / f"ort_ptq_w{wb}_{args.imgsz}.onnx", calib, wb)
        if out:
            ptq[wb] = out
            rows.append(f"| onnxruntime static PTQ W{wb}A8 | {wb} bit | – | {onnx_map50(out, data_yaml, args.imgsz):.1f} | "
                        f"– | – | {out.stat().st_size / 1e6:.2f} | – | – |")
    acc = [(f"Accuracy on vedai-synth val ({'16' if args.quick else '100'} pairs), imgsz {args.imgsz}; QAT arms: "
           f"{args.q_epochs} epochs each from one float base, OST, out_quant=True; PTQ calibrated on the same "
           f"{len(calib)} val images ghost's export uses."), "", *rows]

    # 2. latency
    lat = ["| model | " + " | ".join(f"{s} px ms | vs float (median of per-round ratios)" for s in args.latency_sizes) + " |",
           "|---|" + "---|---|" * len(args.latency_sizes)]
    res = {}
    for s in args.latency_sizes:
        paths = {"float": float_onnx if s == args.imgsz else export_onnx(fp, s, data_yaml, onnx_dir / f"float_{s}.onnx")}
        for label, w in arms.items():
            paths[f"ghost {label}"] = q_onnx[label] if s == args.imgsz else export_onnx(
                w, s, data_yaml, onnx_dir / f"{label}_{s}.onnx")
        for wb in ptq:
            paths[f"onnxruntime PTQ W{wb}A8"] = ptq[wb] if s == args.imgsz else ort_ptq(
                paths["float"], onnx_dir / f"ort_ptq_w{wb}_{s}.onnx", calibration_arrays(data_yaml, s, args.calib), wb)
        res[s] = latency(paths, s, args.reps, args.threads)
    for k in res[args.latency_sizes[0]][0]:
        lat.append(f"| {k} | " + " | ".join(f"{res[s][0][k]:.1f} | {res[s][1][k]:.2f}x"
                                             for s in args.latency_sizes) + " |")
    verdicts = []
    for s in args.latency_sizes:
        for label in arms:
            r = res[s][1][f"ghost {label}"]
            verdicts.append(f"ghost {label} at {s} px: {r:.2f}x float, target <= 0.75x: {'PASS' if r <= 0.75 else 'FAIL'}")
    lat_head = [f"onnxruntime CPU, {args.threads} threads, batch 1, median of {args.reps} interleaved runs."]
    lines = [*acc, "", *lat_head, "", *lat, "", *[f"- {v}" for v in verdicts], "", f"({time.time() - t0:.0f} s)"]
    md = ["# Quantized deployment (benchmarks/bench_deploy.py)", "", *lines]
    write_md(args.out, [*md, ""])
    print("\n" + "\n".join(lines) + f"\n(saved to {args.out})")
    return 0


if __name__ == "__main__":
    run_main(main)
