"""Integer inference latency the way the field measures it: float vs quantized ONNX in onnxruntime (and OpenVINO).

For each architecture (ghost-n with its SiLU, and the deploy-fast ReLU family) the float model and its quantized
forms (W8, HQ, W4 and W4 with INT4 initializers) are exported at every image size, then timed in one run, interleaved
(every round runs every model once, order reversed on odd rounds), batch 1, after warm-up: median and p90 per model,
and the median over rounds of each model's time over the SiLU float model's time in the same round. Beside it, from
onnxruntime's own optimized graph and profiler: how many convs run as integer kernels (QLinearConv), how many
Q/DQ nodes remain, and the share of kernel time per op family (integer convs, Q/DQ, float ops, the head's decoding).
The CPU's model and ISA class go into the results file: runtimes pick their kernels from the CPU, so a figure belongs
to the class it ran on.

Latency does not depend on what the weights learned, so the models are built here from their YAMLs (random weights,
quantized with ghost's own set-up, grids calibrated on vedai-synth images); pass ``--weights`` for trained ones.

    python benchmarks/bench_latency.py                          # ghost-n SiLU + ReLU, 256/512/640 px, 1 and 2 threads
    python benchmarks/bench_latency.py --sizes 512 --threads 2  # the README's headline figure only
    python benchmarks/bench_latency.py --quick                  # smoke run
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch
from common import (RESULTS, add_run_options, banner, base_parser, class_slug, cpu_class, cpu_name, load_text, md_table,
                    round_ratios, run_in_work_dir, run_main, timed_rounds, vedai_synth, write_md)

from ghost_yolo import GhostYOLO

# arm label -> (quantization keys); every architecture gets every arm
ARMS: dict[str, dict] = {
    "float": {"bits": 32},
    "W8": {"bits": 8},
    "HQ": {"bits": "hq", "hq_threshold": 2.0},
    "W4": {"bits": 4},
    "W4 int4": {"bits": 4, "int4": True},
}
# architecture label -> (model YAML, quantization keys it adds); "SiLU tensor": the SiLU model on one grid per tensor
# (grids=tensor: its SiLU as an integer sigmoid and product), quantized arms only (its float model is SiLU's)
ARCHS = {"SiLU": ("ghost-n.yaml", {}), "SiLU tensor": ("ghost-n.yaml", {"grids": "tensor"}),
         "ReLU": ("ghost-n-relu.yaml", {})}
REF = "SiLU float"

# onnxruntime kernels -> the families reported: integer convs, other ops on (u)int8 data, Q/DQ, float convs, the
# head's decoding (float ops of the last layer, the Detect head), other float ops
INT_CONV = {"QLinearConv", "ConvInteger", "NhwcQLinearConv"}
QDQ = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
FLOAT_CONV = {"Conv", "FusedConv", "NchwcConv"}
FAMILIES = ("int conv", "int other", "Q/DQ", "float conv", "decode", "float other")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command line."""
    p = base_parser(__doc__.split("\n")[0])
    p.add_argument("--arch", nargs="+", default=list(ARCHS), choices=list(ARCHS),
                   help="architectures ('SiLU' 'SiLU tensor' 'ReLU')")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="quantization arms")
    p.add_argument("--weights", nargs="+", default=[], help="LABEL=path.pt of trained models to time as well")
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 640], help="image sizes (256 512 640)")
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="onnxruntime intra-op threads (1 2)")
    p.add_argument("--rounds", type=int, default=30, help="interleaved rounds per size and thread count (30)")
    p.add_argument("--profile-runs", type=int, default=20, help="profiled runs per model for the op shares (20)")
    p.add_argument("--openvino", action="store_true", help="time the same files in OpenVINO too (needs openvino)")
    add_run_options(p, out="", out_help="markdown tables (default: benchmarks/results/latency_<CPU class>.md, e.g. "
                    "latency_avx2.md: runtimes pick their kernels by the CPU, so each class keeps its own file)",
                    workdir_help="models and data (default: a temporary directory)", threads=False)
    a = p.parse_args(argv)
    # a smoke run never overwrites the results file
    a.out = a.out or (Path(tempfile.gettempdir()) if a.quick else RESULTS) / f"latency_{class_slug()}.md"
    if a.quick:
        a.sizes, a.threads, a.rounds, a.profile_runs, a.arms = [128], [2], 5, 3, ["float", "W8"]
    return a


def session(path: str | Path, threads: int, profile: bool = False, optimized: Path | None = None):
    """An onnxruntime CPU session: fixed threads, no spinning (interleaved sessions must not steal each other's
    cores), optionally profiling or saving the optimized graph."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    so.log_severity_level = 3
    so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile:
        so.enable_profiling = True
        so.profile_file_prefix = str(Path(path).with_suffix(""))
    if optimized is not None:
        so.optimized_model_filepath = str(optimized)
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def calibration_images(wd: Path, imgsz: int, n: int = 8) -> torch.Tensor:
    """``n`` vedai-synth val pairs at ``imgsz`` (rgb+ir, [0, 1]): realistic activation ranges for the grids."""
    from ghost_yolo.data.check import calibration_batches

    yaml = wd / "synth" / "data.yaml"
    if not yaml.exists():
        vedai_synth(wd / "synth", n_train=0, n_val=n, imgsz=imgsz, workers=1)
    return torch.cat(list(calibration_batches(yaml, imgsz, n, "rgb+ir")))


def build_checkpoint(yaml: str, keys: dict, images: torch.Tensor, out: Path) -> Path:
    """A ghost-n (random weights, seed 0) quantized as ``keys`` say with ghost's own set-up, saved as a checkpoint."""
    from ghost_yolo.engine.setup import setup_qat
    from ghost_yolo.models.model import GhostDetectionModel
    from ghost_yolo.quant import QuantRecipe

    torch.manual_seed(0)
    m = GhostDetectionModel(yaml, ch=4, nc=8, verbose=False).eval()
    bits = keys.get("bits", 32)
    if bits != 32:
        quant = QuantRecipe.from_args({k: v for k, v in keys.items() if k != "int4"})  # bits, hq_threshold, grids
        m.train()
        setup_qat(m, quant, None, images=images)
        m.eval()
    torch.save({"model": m.half(), "train_args": {"imgsz": images.shape[-1], "data": None}}, out)
    return out


def export(ckpt: Path, imgsz: int, out: Path, int4: bool) -> Path:
    """Integer (or float) ONNX of ``ckpt`` at a static ``imgsz``, moved to ``out``."""
    f = GhostYOLO(ckpt).export(format="onnx", imgsz=imgsz, simplify=True, int4=int4, verbose=False)
    return Path(f).replace(out)


def graph_counts(path: Path, threads: int) -> dict[str, int]:
    """Op counts of onnxruntime's optimized graph: integer convs, float convs, Q, DQ, and every other op."""
    import onnx

    opt = path.with_name(path.stem + "_ort_opt.onnx")
    session(path, threads, optimized=opt)
    ops = Counter(n.op_type for n in onnx.load(str(opt)).graph.node)
    opt.unlink(missing_ok=True)
    return dict(ops)


def family(op: str, node: str, data_type: str | None, head: str) -> str:
    """The family of one kernel run: by op type, the data type of its first (data) input and whether it belongs to the
    head's decoding. Only the data input counts: a uint8 Resize takes float scales and a uint8 Split int64 sizes, and
    both move integers."""
    if op in INT_CONV:
        return "int conv"
    if op in QDQ:
        return "Q/DQ"
    if op.startswith("QLinear") or data_type in ("uint8", "int8"):
        return "int other"
    if op in FLOAT_CONV:
        return "float conv"
    branch = node[len(head):].startswith(("cv2", "cv3", "cv4", "one2one"))  # the head's conv branches are not decoding
    return "decode" if node.startswith(head) and not branch else "float other"


def op_shares(path: Path, threads: int, x: np.ndarray, runs: int) -> tuple[dict[str, float], dict[str, float]]:
    """``(share per op type, share per family)`` of kernel time over ``runs`` profiled runs (onnxruntime's profiler,
    after one warm-up). The decoding is every float op of the model's last layer (the Detect head) but its convs."""
    import onnx

    nodes = [n.name for n in onnx.load(str(path)).graph.node]
    layers = [int(n.split("/model.")[1].split("/")[0]) for n in nodes if n.startswith("/model.")]
    head = f"/model.{max(layers)}/" if layers else "/model.-1/"
    s = session(path, threads, profile=True)
    name = s.get_inputs()[0].name
    for _ in range(runs + 1):
        s.run(None, {name: x})
    prof = Path(s.end_profiling())
    per_op: dict[str, float] = defaultdict(float)
    per_family: dict[str, float] = dict.fromkeys(FAMILIES, 0.0)
    for e in json.loads(prof.read_text()):
        if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time"):
            op, node = e["args"]["op_name"], e["name"][: -len("_kernel_time")]
            inputs = e["args"].get("input_type_shape", [])  # one {type: shape} per input, in input order
            data_type = next(iter(inputs[0]), None) if inputs else None
            per_op[op] += e["dur"]
            per_family[family(op, node, data_type, head)] += e["dur"]
    prof.unlink(missing_ok=True)
    total = sum(per_op.values()) or 1.0
    return ({k: v / total for k, v in sorted(per_op.items(), key=lambda kv: -kv[1])},
            {k: v / total for k, v in per_family.items()})


def ov_compile(path: Path, threads: int):
    """An OpenVINO CPU compiled model with a fixed thread count and f32 precision hint (the like-for-like float)."""
    import openvino as ov

    core = ov.Core()
    cfg = {"INFERENCE_NUM_THREADS": threads, "INFERENCE_PRECISION_HINT": "f32", "PERFORMANCE_HINT": "LATENCY"}
    return core.compile_model(core.read_model(str(path)), "CPU", cfg)


def ov_int8_convs(compiled) -> tuple[int, int]:
    """(convolutions executed in int8, all convolutions) of a compiled model, from its runtime info."""
    from ghost_yolo.export.openvino import conv_precisions

    p = conv_precisions(compiled)
    return len(p.int8), p.total


def timings(runners: dict[str, callable], rounds: int) -> tuple[dict, dict, dict]:
    """Median ms, p90 ms and median per-round ratio to REF of every runner, interleaved."""

    def timed(f) -> float:
        t = time.perf_counter()
        f()
        return time.perf_counter() - t

    times = timed_rounds({k: (lambda f=f: timed(f)) for k, f in runners.items()}, rounds, warmup=3)
    med = {k: 1000 * float(np.median(v)) for k, v in times.items()}
    p90 = {k: 1000 * float(np.percentile(v, 90)) for k, v in times.items()}
    ratio = {k: float(np.median(v)) for k, v in round_ratios(times, REF).items()}
    return med, p90, ratio


def main(argv: list[str] | None = None) -> int:
    """Build, export, profile and time; print and save markdown (and JSON beside it)."""
    return run_in_work_dir(parse_args(argv), "ghost-bench-latency-", bench)


def bench(args: argparse.Namespace) -> int:
    """The benchmark in ``args.workdir``."""
    wd = args.workdir
    banner("integer latency", wd, f"CPU {cpu_name()} ({cpu_class()})")
    t0 = time.time()
    images = calibration_images(wd, 256)
    ckpts: dict[str, tuple[Path, bool]] = {}
    for arch in args.arch:
        yaml, extra = ARCHS[arch]
        for arm in args.arms:
            keys = {**ARMS[arm], **(extra if ARMS[arm]["bits"] != 32 else {})}
            if extra and keys["bits"] == 32:
                continue  # the same float model as its architecture's
            label = f"{arch} {arm}"
            base = f"{arch} {arm.split()[0]}"
            if base in ckpts:  # W4 int4 shares the W4 checkpoint
                ckpts[label] = (ckpts[base][0], bool(keys.get("int4")))
                continue
            path = wd / f"{label.replace(' ', '_')}.pt"
            ckpts[label] = (build_checkpoint(yaml, keys, images, path), bool(keys.get("int4")))
    for spec in args.weights:
        label, _, p = spec.partition("=")
        ckpts[label] = (Path(p), False)
    if REF not in ckpts:
        raise SystemExit(f"the reference {REF!r} is needed: keep SiLU and float in --arch/--arms")

    results: dict = {"cpu": cpu_name(), "cpu_class": cpu_class(), "load": load_text(), "sizes": {}}
    lines = [f"CPU: {cpu_name()} ({cpu_class()}), onnxruntime {_version('onnxruntime')}"
             + (f", OpenVINO {_version('openvino')}" if args.openvino else "") + f"; {load_text()}.",
             f"Models: ghost-n (SiLU; 'SiLU tensor': grids=tensor) and ghost-n-relu (ReLU, grids=tensor by default), rgb+ir, random weights (seed 0) quantized by ghost's "
             f"set-up with grids calibrated on {len(images)} vedai-synth images; integer QDQ ONNX as `ghost export` "
             f"writes it. Batch 1, {args.rounds} interleaved rounds after 3 warm-up runs; ratio: median over rounds "
             f"of the model's time over the {REF} model's time in that round.", ""]
    for s in args.sizes:
        files = {k: export(c, s, wd / f"{k.replace(' ', '_')}_{s}.onnx", int4) for k, (c, int4) in ckpts.items()}
        x = np.random.default_rng(0).random((1, 4, s, s), dtype=np.float32)
        counts = {k: graph_counts(f, 2) for k, f in files.items()}
        profiles = {k: op_shares(f, 2, x, args.profile_runs) for k, f in files.items()}
        shares, fams = {k: v[0] for k, v in profiles.items()}, {k: v[1] for k, v in profiles.items()}
        res = results["sizes"][s] = {"threads": {}, "counts": counts, "shares": shares, "families": fams}
        for t in args.threads:
            sessions = {k: session(f, t) for k, f in files.items()}
            runners = {k: (lambda s_=ss: s_.run(None, {"images": x})) for k, ss in sessions.items()}
            res["threads"][t] = dict(zip(("median_ms", "p90_ms", "ratio"), timings(runners, args.rounds)))
            del sessions
        if args.openvino:
            ov_res = res["openvino"] = {}
            for t in args.threads:
                compiled = {k: ov_compile(f, t) for k, f in files.items()}
                reqs = {k: c.create_infer_request() for k, c in compiled.items()}
                runners = {k: (lambda r=r: r.infer({0: x})) for k, r in reqs.items()}
                ov_res[t] = dict(zip(("median_ms", "p90_ms", "ratio"), timings(runners, args.rounds)))
                ov_res.setdefault("int8_convs", {k: ov_int8_convs(c) for k, c in compiled.items()})
        lines += _size_table(s, args, res)
        print("\n".join(lines[-(len(files) + 6):]), flush=True)
    lines += _targets(results, args)
    lines.append(f"({time.time() - t0:.0f} s)")
    md = ["# Integer inference latency (`benchmarks/bench_latency.py`)", "", *lines]
    write_md(args.out, [*md, ""])
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1, default=str))
    print("\n".join(lines) + f"\n(saved to {args.out})")
    return 0


def _targets(results: dict, args: argparse.Namespace) -> list[str]:
    """The issue's targets at 512 px (or the largest size run), 2 threads (or the most run): the ReLU quantized
    models against the SiLU float model, the integer share of their time and the decoding's share."""
    s = 512 if 512 in results["sizes"] else max(results["sizes"])
    t = 2 if 2 in args.threads else max(args.threads)
    res = results["sizes"][s]
    limit = 0.5 if results["cpu_class"].startswith(("AVX512-VNNI", "AMX")) else 0.7
    out = [f"## Targets ({s} px, {t} threads, {results['cpu_class']})", ""]
    for k in res["counts"]:
        if k == REF:
            continue
        ratio, fam = res["threads"][t]["ratio"][k], res["families"][k]
        integer, decode = fam["int conv"] + fam["int other"], fam["decode"]
        line = f"- {k}: {ratio:.2f}x the {REF} model"
        if k.startswith("ReLU") and "float" not in k:
            line += f" (target <= {limit}x on this class: {'PASS' if ratio <= limit else 'FAIL'})"
        if "float" not in k:
            line += (f"; {100 * integer:.0f}% of its time in integer kernels (target >= 80%: "
                     f"{'PASS' if integer >= 0.8 else 'FAIL'})")
        line += f"; decoding {100 * decode:.1f}% (target <= 5%: {'PASS' if decode <= 0.05 else 'FAIL'})"
        out.append(line)
    if "openvino" in res:
        ov = res["openvino"][t]["ratio"]
        vnni = results["cpu_class"].startswith(("AVX512-VNNI", "AMX"))
        out += [f"- OpenVINO {k}: {ov[k]:.2f}x the {REF} model in OpenVINO (target <= 0.4x on VNNI/AMX"
                + (f": {'PASS' if ov[k] <= 0.4 else 'FAIL'})" if vnni else ", not this class)")
                for k in ov if k.startswith("ReLU") and "float" not in k]
    return [*out, ""]


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "not installed"


def _size_table(s: int, args: argparse.Namespace, res: dict) -> list[str]:
    """One size's markdown: latency per thread count, then the graph and profile columns."""
    head = ["model"]
    for t in args.threads:
        head += [f"{t}T median ms", f"{t}T p90", f"{t}T vs {REF}"]
    if "openvino" in res:
        for t in args.threads:
            head += [f"OpenVINO {t}T ms", f"OpenVINO {t}T vs {REF}"]
    head += ["integer convs", "Q / DQ nodes", *(f"time: {f}" for f in FAMILIES)]
    rows = []
    for k in res["counts"]:
        row: list[object] = [k]
        for t in args.threads:
            r = res["threads"][t]
            row += [f"{r['median_ms'][k]:.1f}", f"{r['p90_ms'][k]:.1f}", f"{r['ratio'][k]:.2f}x"]
        if "openvino" in res:
            for t in args.threads:
                r = res["openvino"][t]
                row += [f"{r['median_ms'][k]:.1f}", f"{r['ratio'][k]:.2f}x"]
        c = res["counts"][k]
        n_int = sum(c.get(o, 0) for o in INT_CONV)
        n_conv = n_int + c.get("Conv", 0) + c.get("FusedConv", 0)
        fam = res["families"][k]
        row += [f"{n_int} of {n_conv}", f"{c.get('QuantizeLinear', 0)} / {c.get('DequantizeLinear', 0)}",
                *(f"{100 * fam[f]:.0f}%" for f in FAMILIES)]
        rows.append(row)
    out = [f"## {s} px", "", *md_table(head, rows), ""]
    top = {k: ", ".join(f"{op} {100 * v:.0f}%" for op, v in list(res["shares"][k].items())[:6])
           for k in res["shares"]}
    out += [f"Top kernels (onnxruntime profiler, 2 threads): " + "; ".join(f"**{k}**: {v}" for k, v in top.items()), ""]
    if "openvino" in res:
        out += ["OpenVINO convolutions executed in int8 (runtime precision): " + "; ".join(
            f"{k} {a} of {b}" for k, (a, b) in res["openvino"]["int8_convs"].items()), ""]
    return out


if __name__ == "__main__":
    run_main(main)
