"""Mid-level fusion models (ghost-n-mid, ghost-s-mid, ghost-n-mid-obb): a colour and an IR branch read the stacked input
through ``BandConv`` and are concatenated into the neck at P3, P4 and P5.

Built from the shipped YAMLs at IMGSZ; the RGB checkpoint is an Ultralytics yolo11n-shaped 3-channel model made here.
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMGSZ, make_suffix_set, write_yaml
from test_pretrained import _save_checkpoint, _trained_like
from torch import nn
from ultralytics.nn.tasks import DetectionModel

from ghost_yolo import GhostYOLO
from ghost_yolo.models.model import GhostDetectionModel, GhostOBBModel, build_model, load_model_yaml
from ghost_yolo.models.pretrained import mid_branches
from ghost_yolo.nn.fusion import BandConv
from ghost_yolo.quant import QuantRecipe, calibrate, get_bits, policy_layers, quantize_model

NC = 8
COLOUR, IR = 1, 12  # first layer of each branch in the shipped mid YAMLs
COLOUR_OUT, IR_OUT = (5, 7, 11), (16, 18, 20)  # each branch's P3, P4, P5 outputs


def _mid(cfg: str | dict = "ghost-n-mid.yaml", ch: int = 4) -> GhostDetectionModel:
    torch.manual_seed(0)
    return GhostDetectionModel(cfg, ch=ch, nc=NC, verbose=False)


def _x(n: int = 2) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(n, 4, IMGSZ, IMGSZ)


@torch.no_grad()
def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every layer's output in eval mode, following the layers' ``from`` indices as Ultralytics' forward does."""
    model.eval()
    y = []
    for m in model.model:
        if m.f != -1:
            x = y[m.f] if isinstance(m.f, int) else [x if j == -1 else y[j] for j in m.f]
        x = m(x)
        y.append(x)
    return y


def test_branches_read_their_bands_and_fuse_exactly():
    """Both branches start from the input (layer 0), the colour one on R,G,B and the IR one on IR only; the IR branch is
    half as wide; BatchNorm folding keeps the output."""
    model = _mid().eval()
    assert mid_branches(model) == [list(range(COLOUR, 12)), list(range(IR, 21))]
    for i, bands, c in ((COLOUR, "rgb", 3), (IR, "ir", 1)):
        assert isinstance(model.model[i], BandConv) and model.model[i].f == 0 and model.model[i].bands == bands
        assert model.model[i].conv.in_channels == c
    assert model.model[IR].conv.out_channels * 2 == model.model[COLOUR].conv.out_channels
    x = _x()
    x2 = x.clone()
    x2[:, 3] = torch.rand_like(x2[:, 3])  # another IR band: only the IR branch changes
    y, y2 = _outputs(model, x), _outputs(model, x2)
    torch.testing.assert_close(y[COLOUR_OUT[2]], y2[COLOUR_OUT[2]])
    assert not torch.allclose(y[IR_OUT[2]], y2[IR_OUT[2]])
    with torch.no_grad():
        before = model(x)[0]
        after = deepcopy(model).fuse(verbose=False)(x)[0]
    torch.testing.assert_close(before, after, atol=1e-3, rtol=1e-4)
    assert before.shape == (2, 4 + NC, sum((IMGSZ // s) ** 2 for s in (8, 16, 32)))


@pytest.mark.parametrize("ch", [3, 1])
def test_single_modality_is_refused(ch):
    """rgb-only or IR-only data has no band for one branch: one line naming the YAML and what to use instead."""
    with pytest.raises(ValueError, match=r"^ghost-n-mid\.yaml layer 1: a mid-fusion model needs both bands \("
                                         r"modality=rgb\+ir.*got %d channel.*early-fusion model" % ch):
        _mid(ch=ch)


def test_training_on_rgb_only_data_is_refused(tmp_path):
    """The refusal reaches a training run on rgb-only data before any epoch."""
    data = write_yaml(make_suffix_set(tmp_path / "pairs", n=2), modality="rgb")
    with pytest.raises(ValueError, match="needs both bands"):
        GhostYOLO("ghost-n-mid.yaml").train(data=str(data), epochs=1, imgsz=IMGSZ, batch=2, workers=0,
                                             project=str(tmp_path / "runs"), plots=False, val=False)


def test_yaml_activation_reaches_band_convs():
    """``act: ReLU`` applies to the branches' first convs too (they are built after Ultralytics' parse)."""
    yaml = load_model_yaml("ghost-n-mid.yaml")
    yaml["activation"] = "nn.ReLU()"
    model = _mid(yaml)
    assert isinstance(model.model[COLOUR].act, nn.ReLU) and isinstance(model.model[IR].act, nn.ReLU)
    assert isinstance(_mid().model[IR].act, nn.SiLU)


@pytest.mark.parametrize("act,cls", [("ReLU", nn.ReLU), (None, nn.SiLU)])
def test_yaml_activation_reaches_dual_stem(act, cls):
    """``act:`` applies to both streams of a dual-stream stem (built after Ultralytics' parse, like BandConv), so a
    ReLU dual model has no SiLU left; the stem's attention gates keep their sigmoid."""
    yaml = load_model_yaml("ghost-n-dual.yaml")
    if act:
        yaml["activation"] = f"nn.{act}()"
    stem = GhostDetectionModel(yaml, ch=4, nc=2, verbose=False).model[0]
    assert isinstance(stem.rgb.act, cls) and isinstance(stem.ir.act, cls)
    assert isinstance(GhostDetectionModel(yaml, ch=4, nc=2, verbose=False).model[1].act, cls)


def test_sizes_and_obb_variant():
    """Mid fusion costs a thinner second backbone: between early fusion and early fusion plus a full backbone; the
    OBB variant builds the OBB model with the same branches."""
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    early, mid = GhostDetectionModel("ghost-n.yaml", ch=4, nc=NC, verbose=False), _mid()
    backbone = sum(params(m) for m in early.model[:9])
    assert params(early) < params(mid) < params(early) + backbone
    s_early, s_mid = (GhostDetectionModel(f"ghost-s{k}.yaml", ch=4, nc=NC, verbose=False) for k in ("", "-mid"))
    assert 1.0e6 < params(s_mid) - params(s_early) < 1.6e6  # about the published nano fork's +1.15 M
    obb = build_model("ghost-n-mid-obb.yaml", ch=4, nc=NC, verbose=False)
    assert isinstance(obb, GhostOBBModel) and mid_branches(obb) == mid_branches(mid)
    with torch.no_grad():
        assert obb.eval()(_x(1))[0].shape[1] == 4 + NC + 1  # box, classes, angle


@pytest.fixture(scope="module")
def rgb_source(tmp_path_factory) -> tuple[nn.Module, Path]:
    """A 3-channel yolo11n-shaped RGB detection model with trained-like BatchNorm, and its checkpoint."""
    torch.manual_seed(0)
    model = _trained_like(DetectionModel("yolo11n.yaml", ch=3, nc=NC, verbose=False)).eval()
    return model, _save_checkpoint(model, tmp_path_factory.mktemp("mid") / "rgb11n.pt")


def test_rgb_checkpoint_seeds_both_branches(rgb_source, log):
    """Loading RGB weights: the colour branch is the pretrained backbone, the fusion convs read IR with zero weights,
    so the seeded model computes exactly what the pretrained one does on the colour bands, whatever the IR band."""
    src, ckpt = rgb_source
    model = _mid()
    model.load(torch.load(ckpt, weights_only=False))
    assert "seeded the mid-fusion model from the pretrained 3-channel R,G,B model" in log.text
    assert "ir branch (layers 12-20) <- layers 0-8, width-sliced" in log.text
    x = _x()
    with torch.no_grad():
        ref = src(x[:, :3])[0]
        torch.testing.assert_close(model.eval()(x)[0], ref, atol=1e-3, rtol=1e-4)
        x[:, 3] = 1 - x[:, 3]
        torch.testing.assert_close(model(x)[0], ref, atol=1e-3, rtol=1e-4)
    fusion = model.model[23].i + 1  # the C3k2 reading the P4 fusion: pretrained filters on colour, zero on IR
    w, w_src = model.model[fusion].cv1.conv.weight, src.model[13].cv1.conv.weight
    torch.testing.assert_close(w[:, : w_src.shape[1]], w_src.half().float())  # the checkpoint is fp16
    assert w[:, w_src.shape[1] :].abs().sum() == 0


def test_seeding_from_another_class_count_keeps_the_head(log):
    """COCO-style weights (80 classes) into an 8-class model: branches and neck seeded, the head's class convs keep
    their initialisation and the log says so instead of promising the pretrained response."""
    torch.manual_seed(0)
    src = _trained_like(DetectionModel("yolo11n.yaml", ch=3, nc=80, verbose=False)).eval()
    model = _mid()
    model.load(src)
    assert "kept their initialisation where shapes differ: layer 34 (" in log.text
    assert "answers as the pretrained one" not in log.text
    x = _x()
    torch.testing.assert_close(_outputs(model, x)[COLOUR_OUT[2]], _outputs(src, x[:, :3])[10])


@torch.no_grad()
def test_ir_branch_is_the_pretrained_backbone_on_grey(rgb_source):
    """IR branch: first conv = the RGB filters summed over R,G,B (with their BatchNorm); at full width it is the
    pretrained backbone on a grey image (every colour band = IR), at P3, P4 and P5; thinner, every tensor is the leading
    slice of the pretrained one."""
    src, _ = rgb_source
    thin = _mid()
    thin.load(src, verbose=False)
    w = src.model[0].conv.weight
    torch.testing.assert_close(thin.model[IR].conv.weight, w[:8].sum(1, keepdim=True))
    torch.testing.assert_close(thin.model[IR].bn.running_var, src.model[0].bn.running_var[:8])
    deep, deep_src = thin.model[IR + 6].cv1.conv.weight, src.model[6].cv1.conv.weight
    torch.testing.assert_close(deep, deep_src[: deep.shape[0], : deep.shape[1]])

    yaml = load_model_yaml("ghost-n-mid.yaml")  # the IR branch at the colour branch's width
    for c, row in zip(range(COLOUR, 10), yaml["backbone"][IR:]):
        row[3][0] = yaml["backbone"][c][3][0]
    full = _mid(yaml)
    full.load(src, verbose=False)
    x = _x()
    grey = x[:, 3:].expand(-1, 3, -1, -1)
    y, y_src = _outputs(full, x), _outputs(src, grey)
    for ir_out, src_out in zip(IR_OUT, (4, 6, 8)):  # the pretrained backbone's P3, P4 and P5 (before SPPF)
        torch.testing.assert_close(y[ir_out], y_src[src_out], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("cfg, task", [("ghost-n-mid.yaml", "detect"), ("ghost-n-mid-obb.yaml", "obb")])
def test_quantized_mid_model_exports_to_integer_onnx(cfg, task, tmp_path):
    """W4 with output grids: both first convs kept at 8 bit by the policy, the integer QDQ ONNX runs the band slices
    and onnxruntime reproduces the fused PyTorch model (class scores, and the OBB head's angles)."""
    import onnx
    import onnxruntime as ort

    torch.manual_seed(0)
    net = build_model(cfg, ch=4, nc=NC, verbose=False)
    assert policy_layers(net)[0] == [f"model.{COLOUR}.conv", f"model.{IR}.conv"]
    quantize_model(net, bits=4, out_quant=True)
    bits = get_bits(net)
    assert bits[f"model.{COLOUR}.conv"] == bits[f"model.{IR}.conv"] == 8 and bits["model.2.conv"] == 4
    x = _x(3)
    calibrate(net, x)
    path = tmp_path / "mid.pt"
    torch.save({"model": net.half(), "train_args": {"imgsz": IMGSZ, "task": task}}, path)
    model = GhostYOLO(path)
    assert model.task == task
    f = model.export(format="onnx", imgsz=IMGSZ)
    g = onnx.load(f).graph
    assert sum(n.op_type == "Slice" for n in g.node) >= 2 and any(n.op_type == "QuantizeLinear" for n in g.node)
    ref = deepcopy(model.model).float().eval().fuse(verbose=False)(x)[0].detach().numpy()
    sess = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    out = np.concatenate([sess.run(None, {sess.get_inputs()[0].name: x[i : i + 1].numpy()})[0] for i in range(3)])
    assert out.shape == ref.shape and out.shape[1] == 4 + NC + (task == "obb")
    assert np.mean(np.abs(out[:, 4:] - ref[:, 4:]) < 0.01) > 0.99
    assert np.mean(np.abs(out[:, :4] - ref[:, :4]) < 0.5) > 0.99


def test_info_counts_both_branches_and_hq():
    """``ghost info`` counts every conv of both branches; HQ widths lower GBOPs below the float count."""
    early, mid = GhostYOLO("ghost-n.yaml"), GhostYOLO("ghost-n-mid.yaml")
    t_early = early.quant_info(imgsz=IMGSZ, save=False, verbose=False).attrs["totals"]
    df = mid.quant_info(imgsz=IMGSZ, save=False, verbose=False)
    t = df.attrs["totals"]
    weights = sum(m.weight.numel() for m in mid.model.modules() if isinstance(m, nn.Conv2d)) - 16  # less DFL's
    assert df["params"].sum() == weights and t["gflops"] > t_early["gflops"] and t["gbops"] > t_early["gbops"]
    assert {f"model.{COLOUR}.conv", f"model.{IR}.conv"} <= set(df["layer"])
    hq = mid.quant_info(imgsz=IMGSZ, bits="hq", save=False, verbose=False).attrs["totals"]
    assert hq["avg_w_bits"] < 32 and hq["gbops"] < t["gbops"]
    widths, _ = QuantRecipe.from_args({}, bits="hq").widths(quantize_model(deepcopy(mid.model), enabled=False))
    assert widths[f"model.{IR}.conv"] == 8  # the policy keeps the IR branch's first conv too
