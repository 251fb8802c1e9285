"""RGB-pretrained weights into RGB+IR, IR-only and dual-stream models: the first layer seeded across input bands.

The pretrained checkpoint is built here (an Ultralytics yolo11n-shaped DetectionModel with 3 input channels, saved as
Ultralytics saves checkpoints); nothing is downloaded.
"""

from __future__ import annotations

import logging
from copy import deepcopy
from datetime import datetime
from pathlib import Path

import pytest
from conftest import IMGSZ
import torch
from ultralytics import __version__
from ultralytics.nn.tasks import DetectionModel, load_checkpoint

from ghost_yolo.engine.trainer import GhostTrainer
from ghost_yolo.nn.fusion import DualStreamStem
from ghost_yolo.models.model import GhostDetectionModel
from ghost_yolo.models.pretrained import BANDS, band_mixing

NC = 8


def _save_checkpoint(model: torch.nn.Module, path: Path) -> Path:
    """Save ``model`` the way Ultralytics' trainer does: an fp16 EMA copy in a dict with the run's metadata."""
    torch.save({"epoch": -1, "best_fitness": None, "model": None, "ema": deepcopy(model).half(), "updates": 0,
                "optimizer": None, "train_args": {}, "date": datetime.now().isoformat(), "version": __version__}, path)
    return path


def _trained_like(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Give BatchNorm non-trivial statistics and affine parameters (as a trained model has), so copies are visible."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            n = m.num_features
            m.weight.data = 0.5 + torch.rand(n, generator=g)
            m.bias.data = torch.randn(n, generator=g) * 0.1
            m.running_mean = torch.randn(n, generator=g) * 0.1
            m.running_var = 0.5 + torch.rand(n, generator=g)
    return model


@pytest.fixture(scope="module")
def rgb_ckpt(tmp_path_factory) -> Path:
    """A 3-channel (RGB) yolo11n-shaped Ultralytics detection checkpoint, as a COCO ``yolo11n.pt`` would be."""
    torch.manual_seed(0)
    model = _trained_like(DetectionModel("yolo11n.yaml", ch=3, nc=NC, verbose=False))
    return _save_checkpoint(model, tmp_path_factory.mktemp("pretrained") / "rgb11n.pt")


def _source(path: Path) -> torch.nn.Module:
    return load_checkpoint(path)[0]


def _grey(ch: int) -> torch.Tensor:
    """A grey image: every band equal at each pixel (a different value at every pixel)."""
    torch.manual_seed(3)
    return torch.rand(2, 1, IMGSZ, IMGSZ).expand(-1, ch, -1, -1).contiguous()


@torch.no_grad()
def _stem(model: torch.nn.Module, x: torch.Tensor, layers: int = 1) -> torch.Tensor:
    """Output of the first ``layers`` layers in eval mode (BatchNorm with its running statistics)."""
    model.eval()
    for m in model.model[:layers]:
        x = m(x)
    return x


def test_band_mixing_keeps_a_grey_response():
    """Every source band's weights sum to 1 over the target bands, for every pair of ghost modalities."""
    for s in BANDS.values():
        for t in BANDS.values():
            m = band_mixing(s, t)
            assert torch.allclose(m.sum(1), torch.ones(len(s))), (s, t)
    assert torch.allclose(band_mixing(BANDS[3], BANDS[4]), torch.tensor([[0.75, 0, 0, 0.25], [0, 0.75, 0, 0.25],
                                                                        [0, 0, 0.75, 0.25]]))


def test_rgb_weights_into_rgb_ir(rgb_ckpt, log):
    """IR filters = mean of the colour filters x 3/4, colour filters x 3/4; the stem answers a grey input as before."""
    src = _source(rgb_ckpt)
    w = src.model[0].conv.weight.detach().clone()
    model = GhostDetectionModel("ghost-n.yaml", ch=4, nc=NC, verbose=False)
    with log.at_level(logging.INFO, logger="ultralytics"):
        model.load({"model": None, "ema": src})
    v = model.model[0].conv.weight.detach()
    assert torch.allclose(v[:, :3], 0.75 * w, atol=1e-7)
    assert torch.allclose(v[:, 3:], 0.75 * w.mean(1, keepdim=True), atol=1e-7)
    assert torch.equal(model.model[0].bn.running_var, src.model[0].bn.running_var)
    assert torch.allclose(_stem(model, _grey(4), 2), _stem(src, _grey(3), 2), atol=1e-5)
    lines = [r.getMessage() for r in log.records if "seeded" in r.getMessage()]
    assert len(lines) == 1
    assert "4-channel first conv (R,G,B,IR)" in lines[0] and "R,G,B copied x0.75, IR = 0.75 x mean(R,G,B)" in lines[0]


def test_rgb_weights_into_ir_only(rgb_ckpt, log):
    """A 1-channel (IR) model gets the sum of the colour filters (3 x their mean), as Ultralytics does for grey."""
    src = _source(rgb_ckpt)
    model = GhostDetectionModel("ghost-n.yaml", ch=1, nc=NC, verbose=False)
    with log.at_level(logging.INFO, logger="ultralytics"):
        model.load(src)
    assert torch.allclose(model.model[0].conv.weight, 3 * src.model[0].conv.weight.mean(1, keepdim=True), atol=1e-7)
    assert torch.allclose(_stem(model, _grey(1), 2), _stem(src, _grey(3), 2), atol=1e-5)
    assert any("IR = 3 x mean(R,G,B)" in r.getMessage() for r in log.records)


def test_dual_stem_seeded_from_one_conv(rgb_ckpt, log):
    """Colour stem = first filters (and BN rows), IR stem = the rest summed over colour; stem + layer 1 as before."""
    src = _source(rgb_ckpt)
    w, bn = src.model[0].conv.weight.detach(), src.model[0].bn
    model = GhostDetectionModel("ghost-n-dual.yaml", ch=4, nc=NC, verbose=False)
    with log.at_level(logging.INFO, logger="ultralytics"):
        model.load(src)
    stem = model.model[0]
    assert isinstance(stem, DualStreamStem)
    n = stem.rgb.conv.out_channels
    assert torch.allclose(stem.rgb.conv.weight * 1.5, w[:n], atol=1e-6)
    assert torch.allclose(stem.ir.conv.weight * 1.5, w[n:].sum(1, keepdim=True), atol=1e-6)
    assert torch.equal(stem.rgb.bn.running_mean, bn.running_mean[:n])
    assert torch.equal(stem.ir.bn.weight, bn.weight[n:])
    assert torch.allclose(_stem(model, _grey(4), 2), _stem(src, _grey(3), 2), atol=1e-5)
    line = next(r.getMessage() for r in log.records if "seeded" in r.getMessage())
    assert "dual-stream stem" in line and f"IR stem <- filters {n}-" in line and "SE gate 0.5" in line


def test_first_conv_that_cannot_seed_warns(tmp_path, log):
    """A checkpoint whose first conv has another kernel: one warning naming both convs; the load goes on."""
    torch.manual_seed(0)
    src = GhostDetectionModel("ghost-n.yaml", ch=3, nc=NC, verbose=False)
    cfg = deepcopy(src.yaml)
    cfg["backbone"][0] = [-1, 1, "Conv", [64, 5, 2]]
    model = GhostDetectionModel(cfg, ch=4, nc=NC, verbose=False)
    before = model.model[0].conv.weight.detach().clone()
    src = _source(_save_checkpoint(src, tmp_path / "k3.pt"))
    with log.at_level(logging.INFO, logger="ultralytics"):
        model.load(src)
    warnings = [r.getMessage() for r in log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "cannot seed" in warnings[0]
    assert "kernel (3, 3)" in warnings[0] and "kernel (5, 5)" in warnings[0]
    assert not any("seeded" in r.getMessage() for r in log.records)
    assert torch.equal(model.model[0].conv.weight, before)
    assert torch.equal(model.model[1].conv.weight, src.model[1].conv.weight)  # the rest still transfers


def test_stride_that_differs_warns(log):
    """Same kernel, another stride: the stem cannot stand in for the pretrained one either."""
    torch.manual_seed(0)
    src = GhostDetectionModel("ghost-n.yaml", ch=3, nc=NC, verbose=False)
    cfg = deepcopy(src.yaml)
    cfg["backbone"][0] = [-1, 1, "DualStreamStem", [64, 3, 1]]
    model = GhostDetectionModel(cfg, ch=4, nc=NC, verbose=False)
    with log.at_level(logging.INFO, logger="ultralytics"):
        model.load(src)
    warnings = [r.getMessage() for r in log.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "dual-stream stem" in warnings[0] and "stride (1, 1)" in warnings[0]


def test_same_bands_change_nothing(rgb_ckpt, log):
    """A 3-channel model loads a 3-channel checkpoint exactly as Ultralytics does, without a seeding line."""
    src = _source(rgb_ckpt)
    model = GhostDetectionModel("ghost-n.yaml", ch=3, nc=NC, verbose=False)
    with log.at_level(logging.INFO, logger="ultralytics"):
        model.load(src)
    assert torch.equal(model.model[0].conv.weight, src.model[0].conv.weight)
    assert not any("seeded" in r.getMessage() or r.levelno >= logging.WARNING for r in log.records)


@pytest.mark.parametrize("how", ["model", "pretrained"])
def test_trainer_seeds_through_model_and_pretrained(how, rgb_ckpt, synth_yaml, tmp_path, log):
    """``model=rgb.pt`` and ``model=ghost-n-dual.yaml pretrained=rgb.pt`` on rgb+ir data: the trainer's model (with
    its quantized convs and float-self BatchNorm already in place) is seeded."""
    model, kw = (str(rgb_ckpt), {}) if how == "model" else ("ghost-n-dual.yaml", {"pretrained": str(rgb_ckpt)})
    trainer = GhostTrainer(overrides={"model": model, "data": str(synth_yaml), "imgsz": IMGSZ, "epochs": 2,
                                      "project": str(tmp_path), "name": how, "plots": False, **kw})
    with log.at_level(logging.INFO, logger="ultralytics"):
        trainer.setup_model()
    net, src = trainer.model, _source(rgb_ckpt)
    x = _grey(4)
    if how == "model":
        assert torch.allclose(net.model[0].conv.weight[:, 3:], 0.75 * src.model[0].conv.weight.mean(1, keepdim=True),
                              atol=1e-6)
    assert torch.allclose(_stem(net, x, 2), _stem(src, x[:, :3], 2), atol=1e-5)
    assert sum("seeded the" in r.getMessage() for r in log.records) == 1
