"""The quantization seam: ``QuantConfig`` (the one reader/writer of ``model.yaml['quant']``), ``prepare`` / ``convert``,
the quantizer registry, the Detect-head policy, the export dispatch and the trainer's phase callbacks."""

from __future__ import annotations

from copy import deepcopy

import pytest
import torch
from conftest import IMGSZ

from ghost_yolo.models.model import GhostDetectionModel
from ghost_yolo.nn.switch_bn import float_bn_layers
from ghost_yolo.quant import (
    QUANTIZERS,
    QuantConfig,
    calibrate,
    convert,
    get_bits,
    output_quantizers,
    policy_layers,
    prepare,
    QuantState,
    quant_state,
    quant_layers,
    quantize_model,
    register_quantizer,
    set_quant_enabled,
)


def _model(ch: int = 4) -> GhostDetectionModel:
    torch.manual_seed(0)
    return GhostDetectionModel("ghost-n.yaml", ch=ch, nc=2, verbose=False)


def test_config_round_trip_and_rebuild():
    """prepare records exactly its config; a model rebuilt from the YAML has the same layers, widths and switches."""
    m = _model()
    names = list(quant_layers(quantize_model(deepcopy(m), bits=8)))
    bits = {n: 4 if i % 2 else 6 for i, n in enumerate(names)}
    cfg = QuantConfig(quantizer="lsq", bits=bits, enabled=False, out_bits=8, float_bn=True, extra={"note": "kept"})
    prepare(m, cfg)
    rec = QuantConfig.of(m)
    assert rec == cfg.replace(bits=get_bits(m)) and rec.bits == bits
    assert m.yaml["quant"] == rec.to_dict() and m.yaml["quant"]["note"] == "kept"
    assert QuantConfig.from_dict(rec.to_dict()) == rec
    assert quant_state(m) is QuantState.PREPARED and float_bn_layers(m) and output_quantizers(m)

    r = GhostDetectionModel(deepcopy(m.yaml), ch=4, nc=2, verbose=False)
    assert get_bits(r) == bits and QuantConfig.of(r) == rec
    assert len(float_bn_layers(r)) == len(float_bn_layers(m)) and set(output_quantizers(r)) == set(output_quantizers(m))
    assert r.state_dict().keys() == m.state_dict().keys()
    set_quant_enabled(r, True)
    assert quant_state(r) is QuantState.ACTIVE and r.yaml["quant"]["enabled"] is True


def test_float_config_and_optional_keys():
    """A float model records nothing; optional parts stay out of the YAML unless set (older checkpoints read alike)."""
    m = _model()
    assert QuantConfig.of(m) is None and quant_state(m) is QuantState.FLOAT
    quantize_model(m, bits=4, out_quant=False)
    assert set(m.yaml["quant"]) == {"quantizer", "bits", "keep_first", "keep_head", "enabled"}
    assert QuantConfig.from_dict({"quantizer": "lsq", "bits": {}}).bits == 8  # an empty map means 8 bit


def test_requantizing_keeps_output_grids():
    """Quantizing again without out_quant keeps the output grids the model has, and the YAML still says so."""
    m = quantize_model(_model(), bits=8, enabled=False, out_quant=True)
    quantize_model(m, bits=8, enabled=False, out_quant=False)
    assert QuantConfig.of(m).out_bits == 8 and output_quantizers(m)
    r = GhostDetectionModel(deepcopy(m.yaml), ch=4, nc=2, verbose=False)
    assert r.state_dict().keys() == m.state_dict().keys()


def test_policy_reads_detect_branches():
    """The head's kept convs are the last conv of each Detect box/class branch, found through the module itself."""
    m = quantize_model(_model(), bits=4)
    first, head = policy_layers(m)
    detect = m.model[-1]
    n_branches = len(detect.cv2) + len(detect.cv3)
    assert len(head) == n_branches and all(n.startswith(f"model.{len(m.model) - 1}.cv") for n in head)
    assert first and all(n.startswith("model.0.") for n in first)
    bits = get_bits(m)
    assert {bits[n] for n in first + head} == {8} and 4 in bits.values()


def test_convert_equals_unconverted():
    """convert folds BatchNorm into the quantized convs and drops the float BN set; outputs stay the same."""
    m = quantize_model(_model(), bits=4)
    prepare(m, QuantConfig.of(m).replace(float_bn=True))
    x = torch.rand(2, 4, IMGSZ, IMGSZ)
    calibrate(m, x)
    m.eval()
    with torch.no_grad():
        before = m(x)[0]
        c = convert(deepcopy(m))
        after = c(x)[0]
    assert not float_bn_layers(c) and not QuantConfig.of(c).float_bn
    assert all(not hasattr(b, "bn") for b in c.modules() if hasattr(b, "conv") and b.conv in quant_layers(c).values())
    assert torch.allclose(before, after, rtol=1e-3, atol=1e-3)


def test_register_quantizer():
    """@register_quantizer(name) on a weight and an activation class makes the pair usable by name (once both are
    registered); a taken half, an empty name or a class that is no quantizer is refused; the built-ins use it."""
    from ghost_yolo.nn import quantizers
    from ghost_yolo.nn.quantizers import DoReFaAct, DoReFaWeight, LSQAct, LSQWeight

    assert QUANTIZERS == {"lsq": (LSQWeight, LSQAct), "dorefa": (DoReFaWeight, DoReFaAct)}
    try:
        @register_quantizer("lsq-test")
        class HalfRangeAct(LSQAct):
            pass

        assert "lsq-test" not in QUANTIZERS  # half a pair is not a quantizer yet
        assert register_quantizer("lsq-test")(LSQWeight) is LSQWeight
        assert QUANTIZERS["lsq-test"] == (LSQWeight, HalfRangeAct)
        m = quantize_model(_model(), bits=4, quantizer="lsq-test")
        assert {q.quantizer for q in quant_layers(m).values()} == {"lsq-test"}
        assert all(isinstance(q.input_quant, HalfRangeAct) for q in quant_layers(m).values())
        with pytest.raises(ValueError, match="'lsq': its act quantizer is taken"):
            register_quantizer("lsq")(HalfRangeAct)
        with pytest.raises(ValueError, match="needs a name"):
            register_quantizer("")(HalfRangeAct)
        with pytest.raises(TypeError, match="neither a WeightQuantizer nor an ActQuantizer"):
            register_quantizer("bad")(torch.nn.Identity)
    finally:
        QUANTIZERS.pop("lsq-test", None)
        quantizers._HALVES.pop("lsq-test", None)


@pytest.mark.parametrize("fmt", ["torchscript", "coreml", "engine"])
def test_quantized_export_refuses_other_formats(fmt, tmp_path):
    """A quantized model asked for a format that cannot hold it is refused with the reason and the formats that can."""
    from ghost_yolo.export.exporter import export_model

    m = quantize_model(_model(), bits=4)
    m.args = {"imgsz": IMGSZ}
    with pytest.raises(ValueError, match=rf"format={fmt} cannot hold a quantized model.*format=onnx or format=ghost"):
        export_model(m, {"format": fmt}, {}, tmp_path / "best.pt")
    with pytest.raises(ValueError, match="int4=True applies to format=onnx only"):
        export_model(m, {"format": "ghost", "int4": True}, {}, tmp_path / "best.pt")


def test_quantized_export_defaults_to_onnx(tmp_path, monkeypatch):
    """No format: a quantized model goes to the integer ONNX route (Ultralytics' torchscript default cannot hold it)."""
    from ghost_yolo.export import exporter

    monkeypatch.setattr(exporter.GhostExporter, "__call__",
                        lambda self, model: f"{self.args.format}:{self.int4}:{self.integer}")
    m = quantize_model(_model(), bits=4)
    m.args = {"imgsz": IMGSZ}
    assert exporter.export_model(m, {}, {}, tmp_path / "best.pt") == "onnx:False:True"
    assert exporter.export_model(m, {"int4": True}, {}, tmp_path / "best.pt") == "onnx:True:True"
    f = _model()
    f.args = {"imgsz": IMGSZ}
    assert exporter.export_model(f, {}, {}, tmp_path / "best.pt") == "torchscript:False:False"  # Ultralytics' default
    assert exporter.export_model(f, {"format": "onnx"}, {}, tmp_path / "best.pt") == "onnx:False:False"
    # quantizers switched off (a float-phase checkpoint, a float self) compute in float: every format, as usual
    off = quantize_model(_model(), bits=4, enabled=False)
    off.args = {"imgsz": IMGSZ}
    assert exporter.export_model(off, {"format": "openvino"}, {}, tmp_path / "best.pt") == "openvino:False:False"
    assert exporter.export_model(off, {"format": "onnx"}, {}, tmp_path / "best.pt") == "onnx:False:False"
    assert exporter.export_model(off, {}, {}, tmp_path / "best.pt") == "torchscript:False:False"


def test_export_route_decided_in_dispatch(tmp_path, monkeypatch):
    """The integer-or-float choice is the dispatch's: int4 on a float model is refused before any exporter runs, and
    GhostExporter.export_onnx follows the dispatch's ``integer``, never deciding again from the model."""
    from ghost_yolo.export import exporter

    monkeypatch.setattr(exporter.GhostExporter, "__call__", lambda self, model: pytest.fail("exporter ran"))
    off = quantize_model(_model(), bits=4, enabled=False)
    off.args = {"imgsz": IMGSZ}
    with pytest.raises(ValueError, match="int4=True needs a quantized model"):
        exporter.export_model(off, {"format": "onnx", "int4": True}, {}, tmp_path / "best.pt")
    seen = []
    monkeypatch.setattr(exporter.Exporter, "export_onnx", lambda self, prefix="": seen.append("float") or "f.onnx")
    monkeypatch.setattr(exporter, "trained_output_grids", lambda model: seen.append("integer") or pytest.fail("ok"))
    e = object.__new__(exporter.GhostExporter)
    e.integer, e.int4, e.model = False, False, quantize_model(_model(), bits=4)  # active quantizers, float route chosen
    assert e.export_onnx() == "f.onnx" and seen == ["float"]
    e.integer = True
    with pytest.raises(pytest.fail.Exception, match="ok"):
        e.export_onnx()
    assert seen == ["float", "integer"]


def test_register_export_format(tmp_path):
    """A writer registered with @register_export_format gets the job (a quantized model too, when it says what the
    model becomes there); a taken name is refused; the refusal of other formats lists it."""
    from ghost_yolo.export import exporter

    m = quantize_model(_model(), bits=4)
    m.args = {"imgsz": IMGSZ}
    try:
        @exporter.register_export_format("test-fmt", quantized="a test file")
        def write(job: exporter.ExportJob) -> str:
            return f"{job.format}:{job.integer}:{job.source.name}"

        assert exporter.export_model(m, {"format": "test-fmt"}, {}, tmp_path / "best.pt") == "test-fmt:True:best.pt"
        assert "test-fmt" in exporter.quantized_formats()
        with pytest.raises(ValueError, match="format=onnx or format=ghost or format=openvino or format=test-fmt"):
            exporter.export_model(m, {"format": "coreml"}, {}, tmp_path / "best.pt")
        with pytest.raises(ValueError, match="taken"):
            exporter.register_export_format("ghost")(write)
    finally:
        exporter.EXPORT_FORMATS.pop("test-fmt", None)
    assert list(exporter.EXPORT_FORMATS) == ["onnx", "ghost", "openvino"]


def test_phase_callbacks_run_first_once(tmp_path):
    """Ghost's phase callbacks run before the user's, once per event, and are not added to the shared callback dict."""
    from ultralytics.utils import callbacks

    from ghost_yolo.engine import phases
    from ghost_yolo.engine.trainer import GhostTrainer

    order = []
    shared = callbacks.get_default_callbacks()
    shared["on_train_epoch_end"].append(lambda t: order.append("user"))
    t = GhostTrainer.__new__(GhostTrainer)
    t.callbacks = shared
    saved = phases.PHASE_CALLBACKS["on_train_epoch_end"]
    phases.PHASE_CALLBACKS["on_train_epoch_end"] = [lambda t: order.append("ghost")]
    try:
        t.run_callbacks("on_train_epoch_end")
        t.run_callbacks("on_train_epoch_end")
    finally:
        phases.PHASE_CALLBACKS["on_train_epoch_end"] = saved
    assert order == ["ghost", "user", "ghost", "user"]
    assert len(shared["on_train_epoch_end"]) == len(callbacks.get_default_callbacks()["on_train_epoch_end"]) + 1


def test_kd_schedule_progress_and_float_bn_sync():
    """The distiller's progress runs from 0 at the quantized start to 1 at the end, batch by batch; cosine then scales
    the kd term to 0.01 of its weight. sync_float_bn starts the float self's BatchNorm from the quantized path's."""
    from types import SimpleNamespace

    from conftest import fake_batch, tiny_quant_model

    from ghost_yolo.engine.phases import advance_kd_schedule
    from ghost_yolo.nn.switch_bn import sync_float_bn

    m = tiny_quant_model(kd="cls", float_self="cotrain")
    t = SimpleNamespace(model=m, args=SimpleNamespace(fp_epochs=2), epochs=4, train_loader=[None] * 5, epoch=0)
    seen = []
    for epoch in (2, 3):
        t.epoch = epoch
        advance_kd_schedule(t, "on_train_epoch_start")
        for _ in range(5):
            advance_kd_schedule(t, "on_train_batch_start")
            seen.append(m.distiller.progress)
    assert seen == pytest.approx([i / 10 for i in range(10)])
    d = m.distiller
    d.schedule = "cosine"
    d.progress = 0.0
    full = float(m.loss(fake_batch())[1]["kd_loss"])
    d.progress = 1.0
    assert float(m.loss(fake_batch())[1]["kd_loss"]) == pytest.approx(0.01 * full, rel=1e-4)

    bns = float_bn_layers(m)
    with torch.no_grad():
        for bn in bns:
            bn.running_mean.add_(1.0)  # the quantized path's statistics move; the float set still holds the old ones
    assert not all(torch.equal(bn.running_mean, bn.float_bn.running_mean) for bn in bns)
    sync_float_bn(m)
    assert all(torch.equal(bn.running_mean, bn.float_bn.running_mean) and torch.equal(bn.weight, bn.float_bn.weight)
               for bn in bns)
