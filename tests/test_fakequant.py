"""LSQ fake quantization against its reference formula, on both paths: the fused kernels (float32 CPU) and the tensor
ops (everything else, or ``GHOST_FUSED_FAKEQUANT=0``).

The reference is LSQ written out: ``q = clamp(round_half_even(x / s), lo, hi)``, output ``q * s``; input gradient
``grad`` strictly inside ``(lo, hi)`` (LSQ's paper, and what ATen's ``hardtanh_backward`` does in float32), else 0;
step gradient ``g * sum(grad * (q - x / s * inside))``, times ``s`` when the step is learned as ``exp(log_scale)``.
Forward and input gradient must match bit for bit; the step gradient (a sum) to float rounding, against a float64
evaluation of the formula. Nothing here times anything.
"""

from __future__ import annotations

import math

import pytest
import torch

from ghost_yolo.nn.fakequant import fused_kernels, fused_ok, use_fused
from ghost_yolo.nn.quantizers import (LSQAct, LSQWeight, half_exact, lsq_fake_quant, round_ste, step_from_log,
                                      zero_point_of)

KERNELS = fused_kernels() is not None
PATHS = ["fused", "tensor-ops"]


@pytest.fixture(params=PATHS)
def path(request):
    """Run the test on the fused kernels and on the tensor-op path (the kernels switched off)."""
    if request.param == "fused" and not KERNELS:
        pytest.skip("the fused fake-quant kernels are off here (GHOST_FUSED_FAKEQUANT=0, no C++ compiler, or not "
                    "Linux)")
    with use_fused(request.param == "fused"):
        yield request.param


def bits_of(t: torch.Tensor) -> torch.Tensor:
    """The float32 bit patterns (tells -0.0 from 0.0, and compares NaN)."""
    return t.contiguous().view(torch.int32)


def reference(x, s, z, qmin, qmax, g, grad):
    """(output, input gradient, step gradient, the step gradient's magnitude) of LSQ written out, the sums in float64;
    the magnitude (``g`` times the summed absolute values of both sums' terms) scales what float32 sums may lose."""
    lo, hi = qmin - z, qmax - z
    xn = x / s
    q = xn.round().clamp(lo, hi)
    inside = (xn > lo) & (xn < hi)
    gx = torch.where(inside, grad, torch.zeros_like(grad))
    dims = [d for d in range(x.ndim) if s.ndim == 0 or s.shape[d] == 1]
    a, b = grad.double() * q.double(), grad.double() * xn.double() * inside
    gs, size = ((a - b).sum(dims, keepdim=True) * g, (a.abs() + b.abs()).sum(dims, keepdim=True) * g)
    return q * s, gx, gs.reshape(s.shape), size.reshape(s.shape)


# how far the step gradient may be from the float64 formula, relative to its magnitude: the fused sum adds exact terms
# in double (one float32 rounding at the end), the tensor ops' two float32 dot products lose more on long tensors
STEP_TOL = {"fused": 2e-7, "tensor-ops": 2e-5}


def ties_and_edges(shape, lo: float, hi: float) -> torch.Tensor:
    """Normalised values ``x / s``: random, with every exact .5 tie of the range, both bounds, one float32 ulp either
    side of them, one past them, zeros of both signs, and values far outside."""
    xn = torch.randn(shape) * (hi - lo) / 4
    bounds = torch.tensor([lo, hi])
    below, above = torch.nextafter(bounds, torch.tensor(-math.inf)), torch.nextafter(bounds, torch.tensor(math.inf))
    ties = torch.arange(math.floor(lo) - 2, math.ceil(hi) + 2) + 0.5
    far = torch.tensor([0.0, -0.0, 1e6, -1e6])
    special = torch.cat([ties, bounds, bounds + torch.tensor([-1, 1]), below, above, far])
    flat = xn.view(-1)
    assert flat.numel() >= 2 * special.numel()
    flat[: special.numel()] = special
    flat[-special.numel():] = -special  # and the mirror images
    return xn


CASES = {  # name: (x shape, step shape or None for per tensor, z, qmin, qmax)
    "act-unsigned": ((2, 3, 40, 40), None, 0.0, 0, 255),
    "act-zero-point": ((2, 5, 17, 9), None, 3.0, 0, 15),
    "weight-per-channel": ((6, 4, 3, 3), (6, 1, 1, 1), 0.0, -8, 7),
    "weight-8bit": ((8, 128, 1, 1), (8, 1, 1, 1), 0.0, -128, 127),
    "long-tensor": ((70001,), None, 1.0, 0, 3),  # several partial-sum chunks and a ragged tail
}


@pytest.mark.parametrize("case", list(CASES))
def test_forward_and_input_gradient_match_the_formula_bit_for_bit(case, path):
    """Output and input gradient equal LSQ's formula exactly: ties rounded half to even, bounds exclusive, signed
    zeros kept. Steps are powers of two, so ``x / s`` is exactly the chosen normalised value."""
    shape, s_shape, z, qmin, qmax = CASES[case]
    torch.manual_seed(0)
    s = 2.0 ** torch.randint(-4, 1, s_shape).float() if s_shape else torch.tensor(0.125)
    x = (ties_and_edges(shape, qmin - z, qmax - z) * s).requires_grad_()
    grad = torch.randn(shape)
    out = lsq_fake_quant(x, s, z, qmin, qmax, 0.1)
    out.backward(grad)
    ref_out, ref_gx, _, _ = reference(x.detach(), s, z, qmin, qmax, 0.1, grad)
    assert torch.equal(bits_of(out.detach()), bits_of(ref_out))
    assert torch.equal(bits_of(x.grad), bits_of(ref_gx))


def test_ties_round_half_to_even(path):
    """``x / s`` exactly on .5 rounds to the even neighbour (as ONNX QuantizeLinear), on both sides of zero."""
    s = torch.tensor(0.5)
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, -0.25, -0.75, -1.25]) * 1.0  # x / s = .5, 1.5, 2.5, 3.5, -.5, -1.5, -2.5
    out = lsq_fake_quant(x, s, 4.0, 0, 15, 1.0)
    assert (out / s).tolist() == [0.0, 2.0, 2.0, 4.0, -0.0, -2.0, -2.0]


@pytest.mark.parametrize("case", list(CASES))
def test_step_gradient_matches_the_formula(case, path):
    """The step gradient is LSQ's (gradient scale included) to float rounding, per tensor and per channel: the two
    sums it takes nearly cancel (the grid error is small next to them), so it is compared with float64."""
    shape, s_shape, z, qmin, qmax = CASES[case]
    torch.manual_seed(1)
    x = torch.randn(shape) * 2
    s0 = torch.rand(s_shape) * 0.2 + 0.05 if s_shape else torch.tensor(0.13)
    s = s0.clone().requires_grad_()
    grad = torch.randn(shape)
    lsq_fake_quant(x, s, z, qmin, qmax, 0.3).backward(grad)
    _, _, ref, size = reference(x, s0, z, qmin, qmax, 0.3, grad)
    assert ((s.grad.double() - ref).abs() <= STEP_TOL[path] * size).all()


@pytest.mark.parametrize("per_channel", [False, True])
def test_matches_composed_autograd(per_channel, path):
    """Away from the bounds, the function equals LSQ composed from autograd ops (clip, round straight through, LSQ's
    gradient scale on the step), to float rounding (the composed version computes with ``s - s * g + s * g``)."""
    torch.manual_seed(2)
    x = (torch.randn(4, 6, 8, 8) * 2).requires_grad_()
    s0 = torch.rand(4, 1, 1, 1) * 0.2 + 0.05 if per_channel else torch.tensor(0.13)
    z, qmin, qmax, g = (0.0, -8, 7, 0.3) if per_channel else (3.0, 0, 15, 0.3)
    s = s0.clone().requires_grad_()
    out = lsq_fake_quant(x, s, z, qmin, qmax, g)
    grad = torch.randn_like(out)
    out.backward(grad)
    x2, s2 = x.detach().clone().requires_grad_(), s0.clone().requires_grad_()
    sg = (s2 - s2 * g).detach() + s2 * g
    ref = round_ste(torch.clamp(x2 / sg, qmin - z, qmax - z)) * sg
    ref.backward(grad)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(x.grad, x2.grad)
    assert torch.allclose(s.grad, s2.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("per_channel", [False, True])
def test_log_step_gradient_is_exp_chain_rule(per_channel, path):
    """With ``log_scale`` given, its gradient is bit for bit what autograd gets through ``exp(half_exact(log))``."""
    torch.manual_seed(3)
    x = torch.randn(5, 4, 6, 6)
    grad = torch.randn(5, 4, 6, 6)
    log = (torch.randn(5) * 0.3 - 2.5 if per_channel else torch.tensor(-2.3)).requires_grad_()
    view = (-1, 1, 1, 1) if per_channel else ()
    lsq_fake_quant(x, step_from_log(log).view(view), 0.0, -8, 7, 0.2, log).backward(grad)
    log2 = log.detach().clone().requires_grad_()
    lsq_fake_quant(x, half_exact(log2).exp().view(view), 0.0, -8, 7, 0.2).backward(grad)
    assert torch.equal(bits_of(log.grad), bits_of(log2.grad))


def test_step_from_log_is_exp_of_half_exact():
    """``step_from_log`` is ``exp(half_exact(t))`` bit for bit over every finite range a log step can take."""
    t = torch.cat([torch.linspace(-30, 12, 200001), torch.randn(100000) * 5,
                   torch.tensor([0.0, -0.0, 1e-30, -1e-30, 7e4, -7e4])])
    assert torch.equal(bits_of(step_from_log(t)), bits_of(half_exact(t).exp()))
    assert torch.equal(bits_of(step_from_log(t[7])), bits_of(half_exact(t[7]).exp()))  # 0-d, as activation steps are


def test_quantizer_modules_match_the_graph_through_exp(path):
    """LSQWeight / LSQAct: output and every gradient as with the step computed with autograd (``half_exact`` then
    ``exp``) and passed to the function, the layout the modules had before taking the log step."""
    torch.manual_seed(4)
    w = torch.randn(8, 4, 3, 3, requires_grad=True)
    x = (torch.randn(2, 4, 12, 12) - 0.3).requires_grad_()
    wq, aq = LSQWeight(8, 4), LSQAct(4)
    wq.calibrate(w.detach())
    aq.calibrate(x.detach())
    grad_w, grad_x = torch.randn(8, 4, 3, 3), torch.randn(2, 4, 12, 12)
    outs = [wq(w), aq(x)]
    torch.autograd.backward(outs, [grad_w, grad_x])
    got = [*outs, w.grad.clone(), x.grad.clone(), wq.log_scale.grad.clone(), aq.log_scale.grad.clone()]
    for t in (w, x, wq.log_scale, aq.log_scale):
        t.grad = None
    s_w = half_exact(wq.log_scale).exp().view(-1, 1, 1, 1)
    s_a = half_exact(aq.log_scale).exp()
    out_w = lsq_fake_quant(w, s_w, 0.0, wq.qmin, wq.qmax, 1 / math.sqrt(w[0].numel() * wq.qmax))
    out_a = lsq_fake_quant(x, s_a, float(aq.zero_point(s_a.detach())), 0, aq.levels,
                               1 / math.sqrt(x[0].numel() * aq.levels))
    torch.autograd.backward([out_w, out_a], [grad_w, grad_x])
    want = [out_w, out_a, w.grad, x.grad, wq.log_scale.grad, aq.log_scale.grad]
    assert all(torch.equal(bits_of(a.detach()), bits_of(b.detach())) for a, b in zip(got, want))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_activation_zero_point_matches(bits, path):
    """LSQAct on the grid its zero point sets (computed in C++ on the fused path): the same output as with the zero
    point of ``zero_point_of``, including lower bounds whose ``-lo / s`` is an exact .5 tie (``s == 1``) and zero
    points clamped at the top code."""
    torch.manual_seed(6)
    q = LSQAct(bits)
    q.calibrated.fill_(True)
    for log_step in [0.0, *(torch.randn(6) - 2).tolist()]:
        for lo in [0.0, -1e-8, -0.5, -1.5, -2.5, -3.5, -17.5, -300.0, *(-torch.rand(4) * 3).tolist()]:
            q.log_scale.data.fill_(log_step)
            q.lo.fill_(lo)
            s = step_from_log(q.log_scale)
            x = torch.linspace(-400, 400, 4001).view(1, 1, -1) * s  # past both ends of the grid
            z = float(zero_point_of(q.lo, s, q.levels))
            want = lsq_fake_quant(x, s, z, 0, q.levels, 1.0)
            assert torch.equal(bits_of(q(x)), bits_of(want)), (log_step, lo)


@pytest.mark.skipif(not KERNELS, reason="the fused fake-quant kernels are off here")
def test_fused_equals_tensor_ops_and_does_not_depend_on_threads():
    """Fused vs tensor ops: output and input gradient identical; the step gradient of both near the float64 formula,
    the fused one nearer; the fused results are the same on 1 and 2 threads (fixed chunks and lanes)."""
    torch.manual_seed(5)
    x = torch.randn(3, 8, 64, 64) * 3
    grad = torch.randn_like(x)

    def run(threads: int, fused: bool):
        before = torch.get_num_threads()
        with use_fused(fused):
            torch.set_num_threads(threads)
            try:
                xi, s = x.clone().requires_grad_(), torch.tensor(0.07, requires_grad=True)
                out = lsq_fake_quant(xi, s, 5.0, 0, 255, 0.01)
                out.backward(grad)
                return out.detach(), xi.grad, s.grad
            finally:
                torch.set_num_threads(before)

    f1, f2, t2 = run(1, True), run(2, True), run(2, False)
    assert all(torch.equal(bits_of(a), bits_of(b)) for a, b in zip(f1, f2))
    assert torch.equal(bits_of(f2[0]), bits_of(t2[0])) and torch.equal(bits_of(f2[1]), bits_of(t2[1]))
    _, _, ref, size = reference(x, torch.tensor(0.07), 5.0, 0, 255, 0.01, grad)
    assert abs(float(f2[2]) - float(ref)) <= STEP_TOL["fused"] * float(size)
    assert abs(float(f2[2]) - float(ref)) <= abs(float(t2[2]) - float(ref))  # the double sums are the closer ones


@pytest.mark.skipif(not KERNELS, reason="the fused fake-quant kernels are off here")
def test_fused_covers_float32_cpu_only():
    """What the kernels take (float32 CPU, per tensor or per leading channel); everything else the tensor ops."""
    x = torch.randn(2, 3, 4, 4)
    assert fused_ok(x, torch.tensor(0.1)) and fused_ok(x[:, :2], torch.tensor(0.1))
    assert fused_ok(x, torch.rand(2, 1, 1, 1))
    assert not fused_ok(x.double(), torch.tensor(0.1, dtype=torch.float64))
    assert not fused_ok(x.half(), torch.tensor(0.1))
    assert not fused_ok(x, torch.rand(1, 3, 1, 1))  # a step along another dim
    assert not fused_ok(x.contiguous(memory_format=torch.channels_last), torch.tensor(0.1))
    with use_fused(False):
        assert not fused_ok(x, torch.tensor(0.1))
        assert "LSQFakeQuant" in lsq_fake_quant(x.requires_grad_(), torch.tensor(0.1), 0.0, -8, 7, 1.0).grad_fn.name()
    assert fused_ok(x, torch.tensor(0.1))
    assert "CppNode" in lsq_fake_quant(x, torch.tensor(0.1), 0.0, -8, 7, 1.0).grad_fn.name()  # autograd in C++
    out = lsq_fake_quant(x.double(), torch.tensor(0.1, dtype=torch.float64), 0.0, -8, 7, 1.0)  # runs, in float64
    assert out.dtype == torch.float64


BUILD_PROBE = r"""
import os, pathlib, torch
import ghost_yolo, ghost_yolo.engine, ghost_yolo.nn.quantizers as qz
from ghost_yolo.nn import fakequant as fq
calls = lambda: len(pathlib.Path(os.environ["CALLS"]).read_text().split()) if os.path.exists(os.environ["CALLS"]) else 0
markers = lambda: len(list(pathlib.Path(os.environ["TORCH_EXTENSIONS_DIR"]).rglob("*.failed")))
assert calls() == 0, "built at import"
torch.manual_seed(0)
w, x = torch.randn(8, 4, 3, 3, requires_grad=True), torch.randn(2, 4, 12, 12, requires_grad=True)
wq, aq = qz.LSQWeight(8, 4), qz.LSQAct(4)
for how in ("killed", "error"):
    os.environ["CXX"] = os.environ["CXX_" + how]
    for attempt in range(2):  # the second as a new process would: the failure is remembered (or not) in the cache
        fq._state.pop("ops", None)
        (wq(w).sum() + aq(x).sum()).backward()  # the first quantized tensor: the build is tried here, and fails
        assert fq.fused_kernels() is None and aq.log_scale.grad is not None and w.grad is not None
        print("TRIES", how, calls(), markers())
"""


@pytest.mark.skipif(__import__("platform").system() != "Linux", reason="the kernels are built on Linux only")
def test_failed_build_leaves_training_on_tensor_ops(tmp_path):
    """A compiler that fails leaves QAT on the tensor ops with a warning: one killed by a signal is tried again (by
    the next process), one that reports an error is remembered in the cache and not run again. Importing ghost_yolo
    builds nothing."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "CALLS": str(tmp_path / "calls"), "TORCH_EXTENSIONS_DIR": str(tmp_path / "cache")}
    env.pop("GHOST_FUSED_FAKEQUANT", None)
    for how, fail in (("error", "echo 'fakequant.cpp:1: error: no' >&2; exit 1"), ("killed", "kill -9 $$")):
        cxx = tmp_path / f"cxx_{how}"
        cxx.write_text(f'#!/bin/sh\necho x >> "$CALLS"\n{fail}\n')
        cxx.chmod(0o755)
        env[f"CXX_{how}"] = str(cxx)
    r = subprocess.run([sys.executable, "-c", BUILD_PROBE], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    tries = [line.split()[1:] for line in r.stdout.splitlines() if line.startswith("TRIES")]
    # compiler runs (-std=c++20, then -std=c++17) and failure markers after each attempt
    assert tries == [["killed", "2", "0"], ["killed", "4", "0"], ["error", "6", "1"], ["error", "6", "1"]]
    log = r.stdout + r.stderr
    assert "did not build" in log and "the next process tries again" in log and "fakequant.cpp:1: error: no" in log
