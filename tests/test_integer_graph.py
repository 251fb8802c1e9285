"""Integer from conv to conv (``grids=tensor``, the deploy-fast ReLU models) and the export-side decoding.

What would break: a consumer conv rounding a tensor a second time (or to another grid), residual sums or pooled and
upsampled tensors leaving the integer domain in onnxruntime, the ReLU not folding into the integer conv, the box
decoding's softmax coming back, the integer model drifting from PyTorch.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import EASY_RECIPE, IMGSZ, QMAP50_FLOOR

from ghost_yolo import GhostYOLO
from ghost_yolo.engine.setup import setup_qat
from ghost_yolo.models.model import GhostDetectionModel
from ghost_yolo.nn.qconv import QConv2d
from ghost_yolo.quant import QuantRecipe


def _relu_w4(grids: str = "auto") -> GhostDetectionModel:
    """ghost-n-relu (rgb+ir, 8 classes) at W4, set up and calibrated on noise as the trainer does it."""
    torch.manual_seed(0)
    m = GhostDetectionModel("ghost-n-relu.yaml", ch=4, nc=8, verbose=False)
    return setup_qat(m, QuantRecipe.from_args(bits=4, grids=grids), None, images=torch.rand(2, 4, IMGSZ, IMGSZ))


def _ort_optimized(path: str | Path, tmp_path: Path) -> dict[str, int]:
    """Op counts of onnxruntime's optimized graph (what it runs)."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.optimized_model_filepath = str(tmp_path / "opt.onnx")
    ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    ops: dict[str, int] = {}
    for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return ops


def test_tensor_grids_tie_every_consumer_of_a_grid():
    """grids=auto on a ReLU model is tensor: block outputs quantized after the ReLU, residual sums quantized, every
    conv that reads a block output (directly, through chunk views, max pooling or upsampling) tied to that grid, the
    rest (the image, concatenations, float attention) on an 8-bit grid of their own; weights keep their width."""
    m = _relu_w4()
    assert m.yaml["quant"]["grids"] == "tensor"
    convs = {n: c for n, c in m.named_modules() if isinstance(c, QConv2d)}
    names = {id(q): n for n, q in m.named_modules()}
    tied = {n: names[id(c.tied)] for n, c in convs.items() if c.tied is not None}
    assert tied["model.1.conv"] == "model.0.act"  # conv after conv
    assert tied["model.2.m.0.cv1.conv"] == "model.2.cv1.act"  # through the C3k2 chunk (a view)
    assert tied["model.4.m.0.cv1.conv"] == "model.4.cv1.act"
    assert tied["model.6.m.0.cv1.conv"] == "model.6.cv1.act"  # a C3k's first conv reads the C3k2 chunk
    assert tied["model.23.cv2.0.0.conv"] == "model.16.cv2.act"  # the head reads the neck's grids
    untied = sorted(set(convs) - set(tied))
    assert "model.0.conv" in untied and "model.2.cv2.conv" in untied and "model.9.cv2.conv" in untied  # image, concats
    assert len(tied) == 66 and len(untied) == 21
    assert all(c.input_quant.bits == 8 for c in convs.values())
    assert {c.weight_quant.bits for n, c in convs.items() if n != "model.0.conv" and ".cv2.0.2" not in n} >= {4}
    assert sum(type(b).__name__ == "QuantBottleneck" for b in m.modules()) == 11  # the residual sums


def test_tied_conv_skips_only_a_rounding_that_changes_nothing():
    """A tied conv reads the producer's output as it is: rounding it again to that grid gives bit-identical outputs
    (LSQ codes times the step are exact on the grid), so skipping it changes no number, only the time."""
    m = _relu_w4().eval()
    x = torch.rand(2, 4, IMGSZ, IMGSZ)
    with torch.no_grad():
        skipped = m(x)[0]
    for c in m.modules():
        if isinstance(c, QConv2d) and c.tied is not None:
            q = c.tied.quant
            c.forward = (lambda conv, quant: lambda t: torch.nn.functional.conv2d(
                quant(t), conv.quantized_weight(), conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups
            ))(c, q)
    with torch.no_grad():
        again = m(x)[0]
    assert torch.equal(skipped, again)


def test_grids_tensor_is_refused_where_it_cannot_run_in_integers():
    """grids=tensor on a model whose activation has no integer form here (LeakyReLU), or with DoReFa's per-layer
    clamp, is refused naming why; grids=auto keeps SiLU models on GHOST's per-layer grids (nothing recorded); an
    unknown value is refused."""
    leaky = GhostDetectionModel({**GhostDetectionModel("ghost-n.yaml", verbose=False).yaml, "act": "LeakyReLU"}, ch=4,
                                nc=8, verbose=False)
    with pytest.raises(ValueError, match=r"grids=tensor: its conv blocks use LeakyReLU \(grids=tensor needs act: ReLU"):
        setup_qat(leaky, QuantRecipe.from_args(bits=4, grids="tensor"), None)
    silu = GhostDetectionModel("ghost-n.yaml", ch=4, nc=8, verbose=False)
    setup_qat(silu, QuantRecipe.from_args(bits=4), None)
    assert "grids" not in silu.yaml["quant"] and not any(isinstance(c, QConv2d) and c.tied for c in silu.modules())
    relu = GhostDetectionModel("ghost-n-relu.yaml", ch=4, nc=8, verbose=False)
    with pytest.raises(ValueError, match="grids=tensor: the dorefa quantizer clamps"):
        setup_qat(deepcopy(relu), QuantRecipe.from_args(bits=4, quantizer="dorefa", grids="tensor"), None)
    with pytest.raises(ValueError, match="grids='rows': use one of auto, layer, tensor"):
        setup_qat(relu, QuantRecipe.from_args(bits=4, grids="rows"), None)


def test_tensor_grids_survive_a_checkpoint(tmp_path):
    """A saved grids=tensor model loads with its ties and residual grids (unpickled, rebuilt from the YAML, and from
    the packed .ghost file) and computes what it computed before."""
    m = _relu_w4().eval()
    x = torch.rand(1, 4, IMGSZ, IMGSZ)
    with torch.no_grad():
        ref = m(x)[0]
    path = tmp_path / "relu.pt"
    torch.save({"model": deepcopy(m).half(), "train_args": {"imgsz": IMGSZ}}, path)
    loaded = GhostYOLO(path).model.float().eval()
    assert sum(isinstance(c, QConv2d) and c.tied is not None for c in loaded.modules()) == 66
    rebuilt = GhostDetectionModel(deepcopy(m.yaml), ch=4, nc=8, verbose=False)
    assert sum(isinstance(c, QConv2d) and c.tied is not None for c in rebuilt.modules()) == 66
    with torch.no_grad():
        out = loaded(x)[0]
    assert torch.allclose(out, ref, atol=0.05)  # fp16 storage of the weights

    from ghost_yolo.export.packed import load_packed

    packed = load_packed(GhostYOLO(path).export(format="ghost"))
    assert sum(isinstance(c, QConv2d) and c.tied is not None for c in packed.modules()) == 66
    fused = GhostYOLO(path).model.float().eval().fuse(verbose=False)
    with torch.no_grad():
        assert torch.equal(packed(x)[0], fused(x)[0])  # the packed file computes what the fused model does


def test_integer_graph_in_onnxruntime(tmp_path):
    """The exported ReLU W4 model runs in integers from conv to conv in onnxruntime: every block conv a QLinearConv
    with its ReLU folded in, concatenations and residual sums as integer kernels, a handful of Q/DQ left (the image,
    the head's outputs), no softmax in the box decoding (the attention block keeps its own); and onnxruntime computes what the fused PyTorch model does."""
    import onnxruntime as ort

    m = _relu_w4().eval()
    path = tmp_path / "relu_w4.pt"
    torch.save({"model": deepcopy(m).half(), "train_args": {"imgsz": IMGSZ}}, path)
    model = GhostYOLO(path)
    f = model.export(format="onnx", imgsz=IMGSZ)
    ops = _ort_optimized(f, tmp_path)
    assert ops.get("QLinearConv", 0) >= 81 and ops.get("Relu", 0) == 0
    assert ops.get("QLinearConcat", 0) >= 15 and ops.get("QLinearAdd", 0) >= 10
    assert ops.get("QuantizeLinear", 0) <= 12 and ops.get("DequantizeLinear", 0) <= 25
    head = f"/model.{len(model.model.model) - 1}/"
    head_ops = [n.op_type for n in onnx.load(f).graph.node if n.name.startswith(head)]
    assert "Softmax" not in head_ops
    assert "ReduceMax" not in head_ops  # the box logits are bounded: the softmax needs no max-subtraction
    sess = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    x = torch.rand(1, 4, IMGSZ, IMGSZ)
    y_ort = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    fused = deepcopy(model.model).float().eval().fuse(verbose=False)
    with torch.no_grad():
        y_pt = fused(x)[0].numpy()
    assert y_ort.shape == y_pt.shape
    assert np.mean(np.abs(y_ort[:, 4:] - y_pt[:, 4:]) < 0.01) > 0.99  # class scores
    assert np.mean(np.abs(y_ort[:, :4] - y_pt[:, :4]) < 0.5) > 0.95  # boxes, pixels


def test_export_decoding_equals_ultralytics_dfl():
    """The export-time DFL (expectation along the bin axis) gives Ultralytics' DFL values up to float rounding."""
    from ultralytics.nn.modules import DFL

    from ghost_yolo.export.decode import ExportDFL

    dfl = DFL(16)
    x = torch.randn(2, 64, 300) * 4
    assert torch.allclose(ExportDFL(dfl)(x), dfl(x), atol=1e-5)


def test_decoding_drops_its_max_subtraction_only_where_the_box_logits_are_bounded():
    """An integer head's box logits have exact bounds (8-bit input grid, integer weights): within +-SAFE_EXP the
    softmax is computed without the max-subtraction and equals Ultralytics' DFL; a float head has no bound and keeps
    it; a head whose bound exceeds SAFE_EXP keeps it too."""
    from ultralytics.nn.modules import DFL

    from ghost_yolo.export.decode import SAFE_EXP, ExportDFL, box_logit_bound, fast_decoding
    from ghost_yolo.export.qdq import to_qdq

    m = _relu_w4().eval()
    assert box_logit_bound(m.model[-1]) is None
    fused = deepcopy(m).float().fuse(verbose=False)
    fast_decoding(fused)
    assert fused.model[-1].dfl.stable  # before the Q/DQ swap nothing is known
    to_qdq(fused, {})
    bound = box_logit_bound(fused.model[-1])
    assert 0 < bound <= SAFE_EXP
    fast_decoding(fused)
    assert not fused.model[-1].dfl.stable
    # the bound is a true bound: logits computed by the head's last box convs on extreme inputs stay within it
    conv = fused.model[-1].cv2[0][-1]
    lo, hi = conv.output_bounds()
    step, zero = conv.in_step, conv.in_zero
    x = torch.where(torch.rand(64, conv.weight.shape[1], 1, 1) < 0.5, -zero * step, (255 - zero) * step)
    y = torch.nn.functional.conv2d(x, conv.weight, conv.bias).squeeze()
    assert (y >= lo - 1e-4).all() and (y <= hi + 1e-4).all()
    top = torch.where(conv.weight[0] > 0, (255 - zero) * step, -zero * step)[None]  # the input that reaches it
    assert torch.nn.functional.conv2d(top, conv.weight, conv.bias)[0, 0].item() == pytest.approx(hi[0].item(), abs=1e-4)
    dfl = DFL(16)
    x = (torch.rand(2, 64, 300) * 2 - 1) * SAFE_EXP
    assert torch.allclose(ExportDFL(dfl, stable=False)(x), dfl(x), atol=1e-4)
    assert torch.isfinite(ExportDFL(dfl, stable=False)(x.half())).all()  # half precision keeps the guard
    conv.bias = conv.bias + 2 * SAFE_EXP  # a bound past SAFE_EXP: the guard comes back
    fast_decoding(fused)
    assert fused.model[-1].dfl.stable


RELU_EPOCHS = 6  # float epochs of the ReLU model from the SiLU fixture's weights (the same shapes)


@pytest.fixture(scope="module")
def relu_qtrained(trained, easy_yaml, tmp_path_factory) -> Path:
    """ghost-n-relu through the whole pipeline on the easy set, started from the learned SiLU float model's weights:
    RELU_EPOCHS float epochs, the HQ search, one quantized epoch (grids=tensor by default for this model); returns
    last.pt."""
    project = tmp_path_factory.mktemp("relu")
    GhostYOLO("ghost-n-relu.yaml").train(data=str(easy_yaml), pretrained=str(trained / "weights" / "best.pt"),
                                         epochs=RELU_EPOCHS + 1, fp_epochs=RELU_EPOCHS, kd="none", project=str(project),
                                         name="q", exist_ok=True, plots=False, val=False, **EASY_RECIPE)
    return project / "q" / "weights" / "last.pt"


@pytest.mark.slow
def test_deploy_fast_model_learns_and_onnx_matches(relu_qtrained, easy_yaml, tmp_path):
    """The deploy-fast model trains through the pipeline to a clearly non-zero mAP50, and its integer ONNX model
    scores what PyTorch scores (within 0.3 points of mAP50) on the same images."""
    model = GhostYOLO(relu_qtrained)
    assert model.model.yaml["quant"]["grids"] == "tensor"
    kw = dict(data=str(easy_yaml), imgsz=IMGSZ, batch=1, plots=False, rect=False, project=str(tmp_path))
    pt = model.val(name="pt", **kw).box.map50
    assert pt >= QMAP50_FLOOR, f"the ReLU quantized fixture scores mAP50 {pt:.3f}"
    f = model.export(format="onnx", imgsz=IMGSZ)
    ox = GhostYOLO(f).val(name="onnx", **kw).box.map50
    assert abs(ox - pt) <= 0.003, (pt, ox)


def test_silu_on_tensor_grids_runs_as_integer_sigmoid_and_product(tmp_path):
    """grids=tensor on a SiLU model: each block's SiLU is x * sigmoid(x) on grids (the conv output's, the sigmoid's
    fixed 1/255 grid, the block's), so onnxruntime runs it as QLinearSigmoid and QLinearMul between integer convs, with
    no float SiLU (QuickGelu) left, and computes what the fused PyTorch model does."""
    import onnxruntime as ort

    torch.manual_seed(0)
    m = GhostDetectionModel("ghost-n.yaml", ch=4, nc=8, verbose=False)
    setup_qat(m, QuantRecipe.from_args(bits=8, grids="tensor"), None, images=torch.rand(2, 4, IMGSZ, IMGSZ))
    assert m.yaml["quant"]["grids"] == "tensor"
    assert sum(isinstance(c, QConv2d) and c.tied is not None for c in m.modules()) == 66
    path = tmp_path / "silu_w8.pt"
    torch.save({"model": deepcopy(m.eval()).half(), "train_args": {"imgsz": IMGSZ}}, path)
    model = GhostYOLO(path)
    f = model.export(format="onnx", imgsz=IMGSZ)
    ops = _ort_optimized(f, tmp_path)
    assert ops.get("QLinearConv", 0) >= 81 and ops.get("QLinearSigmoid", 0) >= 70 and ops.get("QLinearMul", 0) >= 70
    assert not ops.get("QuickGelu") and ops.get("QuantizeLinear", 0) <= 12
    sess = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    x = torch.rand(1, 4, IMGSZ, IMGSZ)
    y_ort = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        y_pt = deepcopy(model.model).float().eval().fuse(verbose=False)(x)[0].numpy()
    assert np.mean(np.abs(y_ort[:, 4:] - y_pt[:, 4:]) < 0.01) > 0.99
