"""Fused LSQ fake quantization for float32 CPU tensors: one pass over the tensor forward, one backward, autograd in C++.

``LSQFakeQuant`` (in ``quantizers``) composed from tensor ops makes four passes over a conv's input forward (divide,
round, clamp, multiply) and three backward (the masked input gradient, two dot products for the step), each its own
parallel region, and runs its backward in Python; with the step and zero point computed by a few more tensor ops per
call, that made a two-thread QAT step of ghost-n 1.5-1.6x a float step. The kernels here do the same arithmetic per
element in one loop each way, and the step and zero point with it:

- forward: ``out = clamp(nearbyint(x / s), lo, hi) * s``, the same IEEE float32 operations in the same order as the
  tensor ops, so the output is bit-identical (half-to-even rounding, NaN and signed zeros kept). ``lsq_log`` also
  computes ``s = exp(fp16(log_scale))`` with the same torch ops as ``quantizers.step_from_log`` and the zero point
  ``clamp(round(-lo / s), 0, qmax)`` with the same float32 operations as ``LSQAct.zero_point``;
- backward: recomputes ``x / s`` (the input is saved, not a normalised copy), writes the input gradient with
  ``hardtanh_backward``'s test (bit-identical: bounds exclusive in float32), and sums ``grad * (q - x / s * inside)``
  for LSQ's step gradient. That sum is the one difference from the tensor ops, which take it as
  ``dot(grad, out) / s - dot(grad_x, x / s)`` with float32 BLAS dots: here each term is exact in double and the terms
  are added in double, in fixed chunks and lanes (so the result does not depend on the thread count or the CPU's
  vector width), which is closer to the exact sum (the two dots nearly cancel). LSQ's scale ``g`` and the ``* s`` of
  a log step are the same float32 multiplications as the tensor path's.

The C++ is compiled once per machine with the system compiler (``c++``, or ``$CXX``) against the installed torch, into
the torch extensions cache (``$TORCH_EXTENSIONS_DIR``, else ``~/.cache/torch_extensions``); that takes 10-40 s on
first use, once per torch build (virtual environments with the same torch share it); a compiler error is remembered
there and not retried, a timeout or a killed compiler is, by the next process. The build runs on the first quantized
float32 CPU tensor, never at import, and nothing that goes wrong in it stops training. Where the kernels cannot be
built (no compiler, not Linux) or for tensors they do not cover (CUDA, fp16/bf16, a step that is not per tensor or per
leading channel, channels-last input, tracing, export, ``torch.compile``), the quantizers run the tensor ops.
``GHOST_FUSED_FAKEQUANT=0`` turns the kernels off; ``use_fused(False)`` does so within a block.
"""

from __future__ import annotations

import hashlib
import os
import platform
import shutil
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

__all__ = ("fused_kernels", "fused_ok", "use_fused")

ENV = "GHOST_FUSED_FAKEQUANT"  # "0": never build or use the kernels
NAMESPACE = "ghost_yolo_fq"  # torch.ops namespace of the compiled ops
BUILD_TIMEOUT = 600  # seconds the compiler may take (about 20 s on a 2-core AMD EPYC)

SOURCE = r"""
// Fused LSQ fake quantization (ghost_yolo/nn/fakequant.py): float32, CPU, one pass each way, autograd in C++.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/exp.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <vector>

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && defined(__linux__)
#define GHOST_CLONES __attribute__((target_clones("avx2", "sse4.1", "default")))  // vector rounding where it exists
#else
#define GHOST_CLONES
#endif

namespace {

using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

constexpr int64_t GRAIN = 32768;  // elements per parallel task (torch's own grain size)
constexpr int64_t CHUNK = 16384;  // elements per partial sum: fixed, so the sums do not depend on the thread count
constexpr int LANES = 8;          // accumulators per partial sum: fixed, so they do not depend on the vector width

// out = clamp(nearbyint(x / s), lo, hi) * s: torch's div, round (half to even), clamp_ and mul_, one element at a time
GHOST_CLONES void forward_span(const float* x, float* out, int64_t n, float s, float lo, float hi) {
  for (int64_t i = 0; i < n; ++i) {
    float q = __builtin_nearbyintf(x[i] / s);
    q = q < lo ? lo : q;
    q = q > hi ? hi : q;
    out[i] = q * s;
  }
}

// LANES elements: gx = grad where in_lo < x / s < in_hi, else 0 (hardtanh_backward's test); lane j adds
// grad * (q - x / s * inside) of element j, the product exact in double
template <bool GX, bool SUM>
__attribute__((always_inline)) inline void backward_block(const float* __restrict g, const float* __restrict x,
                                                          float* __restrict gx, float s, float lo, float hi,
                                                          float in_lo, float in_hi, double* __restrict acc) {
  for (int j = 0; j < LANES; ++j) {
    const float v = x[j] / s, gj = g[j];  // g read whatever the mask (a masked load is slower)
    const bool outside = v <= in_lo || v >= in_hi;
    const float gm = outside ? 0.f : gj, vm = outside ? 0.f : v;
    if (GX) gx[j] = gm;
    if (SUM) {
      float q = __builtin_nearbyintf(v);
      q = q < lo ? lo : q;
      q = q > hi ? hi : q;
      acc[j] += (double)gj * (double)(q - vm);  // inside, |q - v| <= 1/2: exact in float
    }
  }
}

// a span sharing one step: element i goes to lane i % LANES, the lanes are added in order at the end
template <bool GX, bool SUM>
__attribute__((always_inline)) inline double backward_impl(const float* __restrict g, const float* __restrict x,
                                                           float* __restrict gx, int64_t n, float s, float lo,
                                                           float hi, float in_lo, float in_hi) {
  double acc[LANES] = {0};
  int64_t i = 0;
  for (; i + LANES <= n; i += LANES)
    backward_block<GX, SUM>(g + i, x + i, GX ? gx + i : gx, s, lo, hi, in_lo, in_hi, acc);
  if (i < n) {  // the tail, padded with zeros (which add nothing)
    float gt[LANES] = {0}, xt[LANES] = {0}, gxt[LANES];
    for (int j = 0; i + j < n; ++j) {
      gt[j] = g[i + j];
      xt[j] = x[i + j];
    }
    backward_block<GX, SUM>(gt, xt, gxt, s, lo, hi, in_lo, in_hi, acc);
    if (GX)
      for (int j = 0; i + j < n; ++j) gx[i + j] = gxt[j];
  }
  double total = 0;
  for (int j = 0; j < LANES; ++j) total += acc[j];
  return total;
}

GHOST_CLONES double backward_both(const float* g, const float* x, float* gx, int64_t n, float s, float lo, float hi,
                                  float in_lo, float in_hi) {
  return backward_impl<true, true>(g, x, gx, n, s, lo, hi, in_lo, in_hi);
}

GHOST_CLONES double backward_x(const float* g, const float* x, float* gx, int64_t n, float s, float lo, float hi,
                               float in_lo, float in_hi) {
  return backward_impl<true, false>(g, x, gx, n, s, lo, hi, in_lo, in_hi);
}

GHOST_CLONES double backward_s(const float* g, const float* x, float* gx, int64_t n, float s, float lo, float hi,
                               float in_lo, float in_hi) {
  return backward_impl<false, true>(g, x, gx, n, s, lo, hi, in_lo, in_hi);
}

void check(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == at::kFloat && t.is_contiguous(), "ghost_yolo_fq::lsq: ", what,
              " must be a contiguous float32 CPU tensor");
}

// x (contiguous) seen as (rows, k) with one step per row: rows == 1 per tensor, else per leading channel
at::Tensor forward(const at::Tensor& x, const at::Tensor& s, float lo, float hi) {
  auto out = at::empty_like(x);
  const int64_t n = x.numel(), rows = s.numel();
  if (n == 0) return out;
  const int64_t k = n / rows;
  const float *px = x.const_data_ptr<float>(), *ps = s.const_data_ptr<float>();
  float* po = out.mutable_data_ptr<float>();
  at::parallel_for(0, n, GRAIN, [&](int64_t begin, int64_t end) {
    while (begin < end) {
      const int64_t r = begin / k, stop = std::min(end, (r + 1) * k);
      forward_span(px + begin, po + begin, stop - begin, ps[r], lo, hi);
      begin = stop;
    }
  });
  return out;
}

// the input gradient (if need_x) and the step gradient, shaped like `like`: g * sum(grad * (q - x / s * inside)),
// times s when the step is learned as its log (exp's derivative)
std::pair<at::Tensor, at::Tensor> backward(const at::Tensor& grad, const at::Tensor& x, const at::Tensor& s,
                                           const at::Tensor& like, float lo, float hi, float g, bool need_x,
                                           bool need_s, bool log_step) {
  const int64_t n = x.numel(), rows = s.numel(), k = n / rows;
  at::Tensor gx = need_x ? at::empty_like(x) : at::Tensor(), gs = need_s ? at::empty_like(like) : at::Tensor();
  if (!need_x && !need_s) return {gx, gs};
  const int64_t per_row = std::max<int64_t>(1, (k + CHUNK - 1) / CHUNK), tasks = rows * per_row;
  std::vector<double> part(tasks, 0.0);
  const float *pg = grad.const_data_ptr<float>(), *px = x.const_data_ptr<float>(), *ps = s.const_data_ptr<float>();
  float* pgx = need_x ? gx.mutable_data_ptr<float>() : nullptr;
  // hardtanh_backward's bounds as ATen casts them to float32 (the tensor path widens them by one double ulp)
  const float in_lo = (float)std::nextafter((double)lo, -INFINITY), in_hi = (float)std::nextafter((double)hi, INFINITY);
  const auto span = need_x && need_s ? backward_both : need_x ? backward_x : backward_s;
  at::parallel_for(0, tasks, std::max<int64_t>(1, GRAIN / std::max<int64_t>(1, std::min(k, CHUNK))),
                   [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const int64_t r = t / per_row, c = t % per_row;
      const int64_t b = r * k + c * CHUNK, e = r * k + std::min(k, (c + 1) * CHUNK);
      if (e > b) part[t] = span(pg + b, px + b, pgx ? pgx + b : nullptr, e - b, ps[r], lo, hi, in_lo, in_hi);
    }
  });
  if (need_s) {
    float* out = gs.mutable_data_ptr<float>();
    for (int64_t r = 0; r < rows; ++r) {
      double total = 0;
      for (int64_t c = 0; c < per_row; ++c) total += part[r * per_row + c];
      float v = (float)total * g;  // LSQ's gradient scale, then exp's derivative: float32 ops as the tensor path
      if (log_step) v = v * ps[r];
      out[r] = v;
    }
  }
  return {gx, gs};
}

// `log_scale` is the parameter s = exp(log_scale) came from (log_step), else s itself (autograd wants defined inputs)
struct LSQ : public torch::autograd::Function<LSQ> {
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& s, const at::Tensor& log_scale,
                            bool log_step, double lo, double hi, double g) {
    const at::Tensor xc = x.contiguous();
    check(xc, "x");
    check(s, "s");
    const int64_t rows = s.numel();
    TORCH_CHECK(rows == 1 || (x.dim() > 0 && rows == x.size(0)),
                "ghost_yolo_fq::lsq: one step per tensor or per leading channel");
    TORCH_CHECK(log_scale.numel() == rows, "ghost_yolo_fq::lsq: log_scale like s");
    ctx->save_for_backward({xc, s, log_scale});
    ctx->saved_data["log_step"] = log_step;
    ctx->saved_data["lo"] = lo;
    ctx->saved_data["hi"] = hi;
    ctx->saved_data["g"] = g;
    return ::forward(xc, s, (float)lo, (float)hi);
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &s = saved[1], &log_scale = saved[2];
    const bool log_step = ctx->saved_data["log_step"].toBool(), need_x = ctx->needs_input_grad(0);
    const bool need_s = ctx->needs_input_grad(log_step ? 2 : 1);
    const at::Tensor grad = grads[0].contiguous();
    check(grad, "grad");
    auto [gx, gs] = ::backward(grad, x, s, log_scale, (float)ctx->saved_data["lo"].toDouble(),
                               (float)ctx->saved_data["hi"].toDouble(), (float)ctx->saved_data["g"].toDouble(), need_x,
                               need_s, log_step);
    return {gx, log_step ? at::Tensor() : gs, log_step ? gs : at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor(),
            at::Tensor()};
  }
};

at::Tensor lsq(const at::Tensor& x, const at::Tensor& s, const std::optional<at::Tensor>& log_scale, double lo,
               double hi, double g) {
  return LSQ::apply(x, s, log_scale.has_value() ? *log_scale : s, log_scale.has_value(), lo, hi, g);
}

// LSQWeight / LSQAct in one call: the step s = exp(fp16(log_scale)) (quantizers.step_from_log: the same torch ops),
// with `lo` the zero point z = clamp(round(-lo / s), 0, qmax) (LSQAct.zero_point: the same float32 operations),
// else z = 0; then lsq on the grid [qmin - z, qmax - z]
at::Tensor lsq_log(const at::Tensor& x, const at::Tensor& log_scale, const std::optional<at::Tensor>& lo, int64_t qmin,
                   int64_t qmax, double g) {
  const at::Tensor s = at::exp(log_scale.detach().to(at::kHalf).to(log_scale.scalar_type()));
  double z = 0;
  if (lo.has_value()) {
    TORCH_CHECK(lo->numel() == 1 && s.numel() == 1 && lo->scalar_type() == at::kFloat && s.scalar_type() == at::kFloat,
                "ghost_yolo_fq::lsq_log: a zero point needs a float32 step and lower bound per tensor");
    float q = __builtin_nearbyintf(-lo->item<float>() / s.item<float>());
    q = q < 0.f ? 0.f : q;
    q = q > (float)qmax ? (float)qmax : q;
    z = q;
  }
  return LSQ::apply(x, s, log_scale, true, (double)qmin - z, (double)qmax - z, g);
}

}  // namespace

TORCH_LIBRARY(ghost_yolo_fq, m) {
  m.def("lsq(Tensor x, Tensor s, Tensor? log_scale, float lo, float hi, float g) -> Tensor");
  m.def("lsq_log(Tensor x, Tensor log_scale, Tensor? lo, int qmin, int qmax, float g) -> Tensor");
}

TORCH_LIBRARY_IMPL(ghost_yolo_fq, CompositeImplicitAutograd, m) {
  m.impl("lsq", &lsq);
  m.impl("lsq_log", &lsq_log);
}
"""

_compiling = getattr(torch.compiler, "is_compiling", lambda: False)  # torch >= 2.3
_lock = threading.Lock()
_state: dict[str, Any] = {"on": True}  # "on": the use_fused switch; "ops": the loaded namespace or None, once tried


def _cache_dir() -> Path:
    """Where torch keeps compiled extensions (``$TORCH_EXTENSIONS_DIR``, else ``~/.cache/torch_extensions``)."""
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        return Path(root)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "torch_extensions"


def _flags(torch_dir: Path) -> list[str]:
    """The compiler flags besides ``-std``, the source and the output (part of the cache key)."""
    lib = torch_dir / "lib"
    return ["-O3", "-fPIC", "-shared", "-fopenmp", "-ffp-contract=off", "-DNDEBUG",
            f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
            f"-I{torch_dir / 'include'}", f"-I{torch_dir / 'include' / 'torch' / 'csrc' / 'api' / 'include'}",
            f"-L{lib}", "-lc10", "-ltorch_cpu", f"-Wl,-rpath,{lib}"]


def _compile(cxx: str, torch_dir: Path, target: Path) -> tuple[str | None, bool]:
    """Build ``target`` from ``SOURCE``: ``(None, _)`` on success, else the compiler's last lines and whether the
    failure is the code's (the compiler said no, so it would say no again) rather than the moment's (a timeout, a
    killed compiler). Every process writes its own files and moves the library into place at once, so processes that
    build together (DDP, parallel tests) never read each other's half-written files."""
    tmp = target.with_name(f"{target.stem}.{os.getpid()}.tmp")
    src, lib_tmp = tmp.with_suffix(".cpp"), tmp.with_suffix(".so")
    err, lasting = "", True
    try:
        src.write_text(SOURCE, encoding="utf-8")
        for std in ("-std=c++20", "-std=c++17"):  # torch's headers: C++20 since 2.10, C++17 before
            try:
                r = subprocess.run([cxx, std, str(src), *_flags(torch_dir), "-o", str(lib_tmp)], capture_output=True,
                                   text=True, errors="replace", timeout=BUILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                return f"{cxx} took over {BUILD_TIMEOUT} s", False
            if r.returncode == 0:
                os.replace(lib_tmp, target)  # atomic
                os.replace(src, target.with_suffix(".cpp"))  # kept next to it, for reading
                return None, True
            err, lasting = (r.stderr or r.stdout).strip(), lasting and r.returncode > 0  # < 0: killed by a signal
    finally:
        src.unlink(missing_ok=True)
        lib_tmp.unlink(missing_ok=True)
    return "\n".join(err.splitlines()[-5:]), lasting


@contextmanager
def _exclusive(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (released by the system if the process dies). Where the file system has no
    locks the block runs unlocked: processes then build side by side, each into its own files, which is safe too."""
    import fcntl  # Linux only, as the build

    with open(path, "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX)
        except OSError:
            pass
        yield


def _target(cxx: str, torch_dir: Path) -> Path:
    """The library's path in the cache: one per kernel source, flags, compiler and torch build (not per install, so
    fresh virtual environments with the same torch wheel, as CI makes, share one build)."""
    parts = [SOURCE, *_flags(Path("torch")), str(Path(shutil.which(cxx) or cxx).resolve()), torch.__version__,
             str(torch.version.git_version), platform.machine()]
    key = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
    return _cache_dir() / f"ghost_yolo_fakequant_{key}" / "fakequant.so"


def _load() -> Any:
    """Build (once per machine and torch) and load the kernels; their ``torch.ops`` namespace, or None. Never raises:
    whatever goes wrong leaves QAT on the tensor ops, with one warning."""
    if os.environ.get(ENV, "1") == "0" or platform.system() != "Linux":
        return None
    if hasattr(getattr(torch.ops, NAMESPACE), "lsq_log"):
        return getattr(torch.ops, NAMESPACE)  # loaded by an earlier import of this module
    cxx = os.environ.get("CXX") or "c++"
    if shutil.which(cxx) is None:
        return None
    from ultralytics.utils import LOGGER

    slower = "QAT runs the slower tensor-op path"
    try:
        torch_dir = Path(torch.__file__).resolve().parent
        target = _target(cxx, torch_dir)
        failed = target.with_suffix(".failed")  # the compiler's output of a failed build: not tried again
        if not target.exists():
            if failed.exists():
                return None
            target.parent.mkdir(parents=True, exist_ok=True)
            with _exclusive(target.parent / "build.lock"):  # DDP ranks, parallel tests: one builds, the rest wait
                if failed.exists():
                    return None
                if not target.exists():
                    LOGGER.info(f"ghost-yolo: compiling the fused fake-quant kernels once into {target.parent} "
                                "(10-40 s)")
                    err, lasting = _compile(cxx, torch_dir, target)
                    if err is not None:
                        if lasting:
                            failed.write_text(err, encoding="utf-8")
                        again = f"delete {failed} to try again" if lasting else "the next process tries again"
                        LOGGER.warning(f"ghost-yolo: the fused fake-quant kernels did not build ({cxx}); {slower} "
                                       f"({again}):\n{err}")
                        return None
        torch.ops.load_library(str(target))
        return getattr(torch.ops, NAMESPACE)
    except Exception as e:  # noqa: BLE001 (a cache, a compiler or a loader we do not control: never stop training)
        LOGGER.warning(f"ghost-yolo: the fused fake-quant kernels are unavailable ({type(e).__name__}: {e}); {slower}")
        return None


def fused_kernels() -> Any:
    """The compiled kernels' ``torch.ops`` namespace (built on first call), or None where they are unavailable."""
    if "ops" not in _state:
        with _lock:
            if "ops" not in _state:
                _state["ops"] = _load()
    return _state["ops"]


@contextmanager
def use_fused(on: bool) -> Iterator[None]:
    """Within the block, quantize with the fused kernels (``on``, where they cover the tensors) or with tensor ops
    only (the benchmark's side-by-side arm of the unfused path)."""
    before, _state["on"] = _state["on"], bool(on)
    try:
        yield
    finally:
        _state["on"] = before


def fused_ok(x: torch.Tensor, s: torch.Tensor, log: bool = False) -> bool:
    """Whether the kernels cover quantizing ``x`` with step ``s`` (``log``: with the log step ``log_scale``, one value
    per tensor or per leading channel): float32 on the CPU, per tensor or per leading channel, ``x`` not
    channels-last (its tensor-op output would keep that layout), and not traced or exported."""
    if not (_state["on"] and x.dtype is torch.float32 and s.dtype is torch.float32 and x.is_cpu and s.is_cpu):
        return False
    n = s.numel()
    if n != 1 and not (x.ndim > 0 and n == x.shape[0] and (s.ndim == 1 if log else s.ndim == x.ndim)):
        return False
    if x.ndim == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return False
    if torch.jit.is_tracing() or _compiling() or torch.onnx.is_in_onnx_export():
        return False
    return fused_kernels() is not None
