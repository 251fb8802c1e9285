"""Quantizer math, the quantized conv, BN folding, model conversion and the size/BOPs accounting (no training)."""

from __future__ import annotations

import math
from copy import deepcopy

import pytest
import torch
import torch.nn as nn
from ultralytics.nn.modules import Conv

from ghost_yolo.models.model import GhostDetectionModel
from ghost_yolo.nn.qconv import QConv2d
from ghost_yolo.nn.quantizers import (
    DoReFaAct,
    DoReFaWeight,
    LSQAct,
    LSQWeight,
    check_bits,
)
from ghost_yolo.quant import (
    average_bits,
    calibrate,
    float_mode,
    get_bits,
    layer_costs,
    policy_layers,
    quant_layers,
    quantize_model,
    set_bits,
)


@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_lsq_weight_grid_and_range(bits):
    """Quantized weights are integer multiples of each channel's step, within [-2^(b-1), 2^(b-1)-1]."""
    torch.manual_seed(0)
    w = torch.randn(6, 4, 3, 3)
    q = LSQWeight(6, bits)
    wq = q(w)
    codes = wq / q.steps().view(-1, 1, 1, 1)
    assert torch.allclose(codes, codes.round(), atol=1e-4)
    assert codes.min() >= -(2 ** (bits - 1)) - 1e-4 and codes.max() <= 2 ** (bits - 1) - 1 + 1e-4
    assert len(torch.unique(codes[0].round())) <= 2**bits
    assert bool(q.calibrated)
    err = ((wq - w) ** 2).mean()
    naive = ((LSQWeight(6, bits)._fake(w, w.abs().flatten(1).amax(1) / (2 ** (bits - 1) - 1)) - w) ** 2).mean()
    assert err < naive * 1.01  # the calibrated (MSE-searched, fp16-exact) steps beat plain max scaling


def test_lsq_weight_straight_through_gradient():
    """Inside the range the weight gradient passes straight through; clipped weights get none."""
    q = LSQWeight(1, 4)
    q.log_scale.data.fill_(math.log(0.1))
    q.calibrated.fill_(True)
    w = torch.tensor([[0.05, -0.23, 0.31, 5.0, -5.0]], requires_grad=True)  # last two clip at +0.7 / -0.8
    q(w).sum().backward()
    assert w.grad.tolist() == [[1.0, 1.0, 1.0, 0.0, 0.0]]
    assert q.log_scale.grad is not None and q.log_scale.grad.abs().item() > 0


def test_lsq_act_zero_point_follows_the_input():
    """Non-negative inputs get an unsigned grid; SiLU outputs a zero point covering their negative part."""
    relu = LSQAct(4)
    relu(torch.rand(1000) * 3)
    assert float(relu.lo) == 0 and relu.zero_point().item() == 0
    silu = LSQAct(4)
    x = nn.functional.silu(torch.linspace(-6, 6, 2001))
    y = silu(x)
    assert float(silu.lo) == pytest.approx(x.min().item(), abs=1e-3)  # fp16-exact
    z = silu.zero_point().item()
    assert z >= 1
    codes = y / silu.steps() + z
    assert torch.allclose(codes, codes.round(), atol=1e-4) and codes.min() >= 0 and codes.max() <= 15
    assert y.min() < 0  # negative SiLU values survive quantization


def test_dorefa_levels():
    """DoReFa weights take at most 2^b levels per channel in [-max|w|, max|w|]; activations clamp to [0, 1]."""
    torch.manual_seed(0)
    w = torch.randn(3, 8, 3, 3)
    wq = DoReFaWeight(3, 2)(w)
    for c in range(3):
        assert len(torch.unique(wq[c])) <= 4
        assert wq[c].abs().max() <= w[c].abs().max() + 1e-6
    a = DoReFaAct(3)(torch.tensor([-1.0, 0.0, 0.3, 0.99, 2.0]))
    assert a.tolist() == pytest.approx([0.0, 0.0, 2 / 7, 1.0, 1.0])


def test_disabled_and_float_bits_pass_through():
    """A disabled quantizer or bits=32 returns the input unchanged."""
    x = torch.randn(4, 8)
    q = LSQAct(8)
    q.enabled = False
    assert torch.equal(q(x), x) and not bool(q.calibrated)
    assert torch.equal(LSQAct(32)(x), x)


@pytest.mark.parametrize("bad", [1, 9, 16, 0, -4, 4.5, "x", None])
def test_invalid_bits(bad):
    """Widths outside 2..8 (and 32) are refused with the allowed range in the message."""
    with pytest.raises(ValueError, match="2..8"):
        check_bits(bad)


@pytest.mark.parametrize("quantizer", ["lsq", "dorefa"])
def test_bn_folding_per_channel(quantizer):
    """Folding a BatchNorm (negative gammas included) into a quantized conv gives the unfused output, up to the bias
    being put on the int32 accumulator grid (input step x weight scale), as integer runtimes hold it."""
    torch.manual_seed(0)
    conv = Conv(8, 16, 3, 1)
    bn = conv.bn
    bn.weight.data = torch.randn(16)  # some negative
    bn.bias.data = torch.randn(16)
    bn.running_mean = torch.randn(16)
    bn.running_var = torch.rand(16) + 0.1
    conv.conv = QConv2d.from_float(conv.conv, bits=4, quantizer=quantizer)
    conv.eval()
    x = torch.rand(2, 8, 12, 12)
    with torch.no_grad():
        ref = conv(x)
        conv.conv.fold_bn(conv.bn)
        del conv.bn
        out = conv.forward_fuse(x)
    assert conv.conv.folded
    acc = conv.conv.input_quant.qparams()[0] * conv.conv.fold_scale.abs()  # accumulator step per channel
    bias_steps = conv.conv.bias / acc
    assert torch.allclose(bias_steps, bias_steps.round(), atol=1e-3)
    assert ((out - ref).abs() <= 0.5 * acc.view(1, -1, 1, 1) + 1e-5).all()
    if quantizer == "lsq":  # the folded weight stays on an integer grid with the BN-scaled per-channel steps
        codes = conv.conv.weight / conv.conv.fold_scale.view(-1, 1, 1, 1)
        assert torch.allclose(codes, codes.round(), atol=1e-3)


def test_quantize_model_keeps_state_dict_names_and_policy():
    """Float weights load into the quantized model by name; first and head prediction convs stay at 8 bit."""
    float_model = GhostDetectionModel("ghost-n.yaml", ch=4, nc=8, verbose=False)
    q = quantize_model(deepcopy(float_model), bits=4)
    fsd, qsd = float_model.state_dict(), q.state_dict()
    assert set(fsd) <= set(qsd)
    assert all(torch.equal(fsd[k], qsd[k]) for k in fsd)
    bits = get_bits(q)
    first, head = policy_layers(q)
    assert first == ["model.0.conv"] and len(head) == 6
    assert all(bits[n] == 8 for n in first + head)
    assert sum(b == 4 for b in bits.values()) == len(bits) - 7
    assert not any("dfl" in n for n in bits)  # DFL's fixed integral conv is never quantized
    assert q.yaml["quant"]["bits"] == bits and q.yaml["quant"]["quantizer"] == "lsq"
    q2 = quantize_model(deepcopy(float_model), bits=4, keep_first=False, keep_head=False)
    assert set(get_bits(q2).values()) == {4}


def test_rebuild_from_yaml_restores_quantized_model():
    """A model rebuilt from its YAML (as resume and DDP do) has the same quantized layers and widths."""
    q = quantize_model(GhostDetectionModel("ghost-n.yaml", ch=4, nc=8, verbose=False), bits=4)
    set_bits(q, {"model.1.conv": 3, "model.2.cv1.conv": 6})
    rebuilt = GhostDetectionModel(q.yaml, ch=4, nc=8, verbose=False)
    assert get_bits(rebuilt) == get_bits(q)
    assert rebuilt.load_state_dict(q.state_dict(), strict=True)


def test_bit_map_errors():
    """Unknown layer names and bad widths in a bit map are named in the error."""
    q = quantize_model(GhostDetectionModel("ghost-n.yaml", ch=4, nc=8, verbose=False), bits=8)
    with pytest.raises(ValueError, match="unknown layer.*model.99.conv"):
        set_bits(q, {"model.99.conv": 4})
    with pytest.raises(ValueError, match=r"bits\[model.1.conv\]=12"):
        set_bits(q, {"model.1.conv": 12})


def test_dorefa_refuses_silu():
    """quantizer=dorefa needs a ReLU model and says so."""
    with pytest.raises(ValueError, match="dorefa.*ReLU.*SiLU"):
        quantize_model(GhostDetectionModel("ghost-n.yaml", ch=4, nc=8, verbose=False), bits=4, quantizer="dorefa")
    relu = GhostDetectionModel({**GhostDetectionModel("ghost-n.yaml", verbose=False).yaml, "act": "ReLU"}, ch=4, nc=8,
                               verbose=False)
    assert quant_layers(quantize_model(relu, bits=4, quantizer="dorefa"))


def test_float_mode_toggles_without_copy():
    """float_mode runs the same module in float and restores the quantizers afterwards."""
    torch.manual_seed(0)
    float_model = GhostDetectionModel("ghost-n.yaml", ch=4, nc=8, verbose=False).eval()
    q = quantize_model(deepcopy(float_model), bits=3).eval()
    x = torch.rand(1, 4, 64, 64)
    calibrate(q, x)
    q.eval()

    def stem(m):  # the first three (sequential) layers: a feature map that is not dominated by anchors
        return m.model[2](m.model[1](m.model[0](x)))

    with torch.no_grad():
        yq = stem(q)
        with float_mode(q):
            yf = stem(q)
        yq2 = stem(q)
        ref = stem(float_model)
    assert torch.allclose(yf, ref, atol=1e-5)
    assert (yq - ref).abs().max() > 0.05 * ref.abs().max()
    assert torch.equal(yq, yq2) and all(m.quant_enabled for m in quant_layers(q).values())


def test_fused_equals_unfused_quantized_model():
    """Fusing (BN folded into quantized weights) keeps a calibrated quantized model's outputs."""
    torch.manual_seed(0)
    q = quantize_model(GhostDetectionModel("ghost-n-dual.yaml", ch=4, nc=8, verbose=False), bits=4)
    x = torch.rand(2, 4, 96, 96)
    calibrate(q, x)
    for m in q.modules():  # non-trivial BN statistics, as after training
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2)
            m.weight.data.uniform_(-1.5, 1.5)
    q.eval()
    with torch.no_grad():
        ref = q(x)[0]
        fused = deepcopy(q).fuse(verbose=False)
        out = fused(x)[0]
    assert fused.is_fused()
    assert torch.allclose(out, ref, atol=1e-3 * ref.abs().max())


def test_costs_by_hand_on_two_layers():
    """Params, MACs, BOPs (previous layer's bits as activation bits) and MB of a two-conv model, counted by hand."""

    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Conv2d(3, 8, 3, 2, 1, bias=False)  # 16x16 -> 8x8
            self.b = nn.Conv2d(8, 4, 1, 1, 0, bias=True)

        def forward(self, x):
            return self.b(self.a(x))

    model = quantize_model(Two(), bits={"a": 8, "b": 4})
    df = layer_costs(model, imgsz=16)
    a, b = df.iloc[0], df.iloc[1]
    assert (a.params, a.macs, a.w_bits, a.a_bits) == (216, 8 * 8 * 8 * 3 * 9, 8, 32)
    assert (b.params, b.macs, b.w_bits, b.a_bits) == (32, 8 * 8 * 4 * 8, 4, 8)
    assert a.bops == 13824 * 8 * 32 and b.bops == 2048 * 4 * 8
    t = df.attrs["totals"]
    assert t["params"] == 216 + 32 + 8 + 4  # weights + one bias per output channel
    assert t["float_mb"] == pytest.approx((216 + 32 + 12) * 32 / 8e6)
    assert t["size_mb"] == pytest.approx((216 * 8 + 32 * 4 + 12 * 32) / 8e6)
    assert t["gbops"] == pytest.approx((13824 * 256 + 2048 * 32) / 1e9)
    assert t["avg_w_bits"] == pytest.approx((216 * 8 + 32 * 4) / 248)
    assert average_bits(model) == pytest.approx(t["avg_w_bits"])
    assert layer_costs(model, 16, bits={"a": 32, "b": 32}).attrs["totals"]["gbops"] == pytest.approx(t["float_gbops"])


def test_hq_search_on_model_with_known_clusters():
    """Layers whose weights take 4 values get 2 bits, 16 values 4 bits; policy layers stay at 8; tight thresholds 8."""
    from ghost_yolo.quant import QuantRecipe

    torch.manual_seed(0)
    q = quantize_model(GhostDetectionModel("ghost-n.yaml", ch=4, nc=8, verbose=False), bits=8)
    layers = quant_layers(q)
    four, sixteen = "model.1.conv", "model.3.conv"
    with torch.no_grad():
        for n, levels in ((four, 4), (sixteen, 16)):
            w = layers[n].weight
            w.copy_(torch.linspace(-0.1, 0.1, levels)[torch.randint(0, levels, w.shape)])
    def search_bits(model, **keys):  # the production path: the recipe's HQ widths
        return QuantRecipe.from_args(bits="hq", **keys).widths(model)[0]

    bits = search_bits(q, hq_threshold=1e-3)
    assert bits[four] == 2 and bits[sixteen] == 4
    assert bits["model.0.conv"] == 8 and bits["model.23.cv3.0.2"] == 8
    assert search_bits(q, hq_threshold=1e-3, bit_min=3)[four] == 3
    assert search_bits(q, hq_threshold=1e-3, bit_max=3)[sixteen] == 3


@pytest.mark.parametrize("per_channel", [False, True])
def test_lsq_function_matches_composed_autograd(per_channel):
    """The fused LSQ autograd function gives the same output and gradients as LSQ written with tensor ops."""
    from ghost_yolo.nn.quantizers import LSQFakeQuant, round_ste

    torch.manual_seed(0)
    x = (torch.randn(4, 6, 8, 8) * 2).requires_grad_()
    s0 = torch.rand(4, 1, 1, 1) * 0.2 + 0.05 if per_channel else torch.tensor(0.13)
    z, qmin, qmax, g = (0.0, -8, 7, 0.3) if per_channel else (3.0, 0, 15, 0.3)
    s = s0.clone().requires_grad_()
    out = LSQFakeQuant.apply(x, s, z, qmin, qmax, g)
    grad = torch.randn_like(out)
    out.backward(grad)
    x2, s2 = x.detach().clone().requires_grad_(), s0.clone().requires_grad_()
    sg = (s2 - s2 * g).detach() + s2 * g  # LSQ's gradient scale
    ref = round_ste(torch.clamp(x2 / sg, qmin - z, qmax - z)) * sg  # LSQ: clip, then round (straight through)
    ref.backward(grad)
    assert torch.allclose(out, ref, atol=1e-6)
    assert torch.allclose(x.grad, x2.grad)
    assert torch.allclose(s.grad, s2.grad, rtol=1e-4, atol=1e-5)


def test_ultralytics_yaml_quantizes_and_fuses():
    """Ultralytics' own YAMLs (yolo11n.yaml) build as ghost models, quantize, and fuse exactly."""
    from ghost_yolo import GhostYOLO

    assert isinstance(GhostYOLO("yolo11n.yaml").model, GhostDetectionModel)
    m = quantize_model(GhostDetectionModel("yolo11n.yaml", ch=4, nc=8, verbose=False), bits=4)
    x = torch.rand(1, 4, 64, 64)
    calibrate(m, x)
    m.eval()
    with torch.no_grad():
        assert torch.allclose(m(x)[0], deepcopy(m).fuse(verbose=False)(x)[0], atol=1e-4)
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        GhostDetectionModel("nope.yaml")
