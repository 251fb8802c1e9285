"""Integer ONNX weights on CPUs without VNNI: codes that can saturate ``vpmaddubsw`` are stored as uint8 (zero point
128), the same values, which onnxruntime multiplies exactly on every x86 CPU (``u8_weights``)."""

from __future__ import annotations

from copy import deepcopy

import numpy as np
import onnx
import pytest
import torch
from conftest import IMGSZ
from onnx import numpy_helper

from ghost_yolo import GhostYOLO
from ghost_yolo.engine.setup import setup_qat
from ghost_yolo.export import exporter
from ghost_yolo.export.qdq import overflows_16bit
from ghost_yolo.models.model import GhostDetectionModel
from ghost_yolo.quant import QuantRecipe


def test_overflow_rule_is_the_two_largest_codes_of_a_channel():
    """255 x (|w1| + |w2|) must fit int16: two codes of 64 fit (32640), 65 + 64 does not, in any position of any
    channel; 7-bit codes never overflow."""
    w = np.zeros((3, 2, 3, 3), np.int8)
    w[0, 0, 0, 0], w[0, 1, 2, 2] = 64, -64
    assert not overflows_16bit(w)
    w[2, 1, 1, 0], w[2, 0, 0, 2] = -65, 64
    assert overflows_16bit(w)
    rng = np.random.default_rng(0)
    assert not overflows_16bit(rng.integers(-63, 64, (16, 8, 3, 3)).astype(np.int8))
    assert overflows_16bit(np.full((1, 1, 1, 2), 127, np.int8)) and not overflows_16bit(np.full((4, 1, 1, 1), 127,
                                                                                              np.int8))


def _dq_weights(path: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """(weight codes, zero point) of every DequantizeLinear that feeds a Conv weight."""
    g = onnx.load(path).graph
    inits = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    conv_w = {n.input[1] for n in g.node if n.op_type == "Conv"}
    return [(inits[n.input[0]], inits[n.input[2]] if len(n.input) > 2 else np.zeros(1, np.int8))
            for n in g.node if n.op_type == "DequantizeLinear" and n.output[0] in conv_w and n.input[0] in inits]


def test_u8_weights_store_the_same_values_and_run_the_same(tmp_path):
    """A W8 model exported with u8_weights=True stores each conv weight that can overflow as uint8 = int8 code + 128
    with zero point 128 (the others stay int8), and onnxruntime computes what PyTorch does from it."""
    import onnxruntime as ort

    torch.manual_seed(0)
    m = GhostDetectionModel("ghost-n-relu.yaml", ch=4, nc=8, verbose=False)
    setup_qat(m, QuantRecipe.from_args(bits=8), None, images=torch.rand(2, 4, IMGSZ, IMGSZ))
    path = tmp_path / "w8.pt"
    torch.save({"model": deepcopy(m.eval()).half(), "train_args": {"imgsz": IMGSZ}}, path)
    model = GhostYOLO(path)
    files = {}
    for u8 in (False, True):
        files[u8] = model.export(format="onnx", imgsz=IMGSZ, u8_weights=u8)
        (tmp_path / f"u8-{u8}.onnx").write_bytes(open(files[u8], "rb").read())
    s8, u8 = _dq_weights(str(tmp_path / "u8-False.onnx")), _dq_weights(str(tmp_path / "u8-True.onnx"))
    assert len(s8) == len(u8) > 80 and all(w.dtype == np.int8 for w, _ in s8)
    risky = [i for i, (w, _) in enumerate(s8) if overflows_16bit(w)]
    assert risky and all(u8[i][0].dtype == np.uint8 and (u8[i][1] == 128).all() for i in risky)
    for i, ((ws, _), (wu, _)) in enumerate(zip(s8, u8)):
        np.testing.assert_array_equal(wu.astype(np.int16) - (128 if i in risky else 0), ws.astype(np.int16))
    x = torch.rand(1, 4, IMGSZ, IMGSZ)
    sess = ort.InferenceSession(str(tmp_path / "u8-True.onnx"), providers=["CPUExecutionProvider"])
    y = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        y_pt = deepcopy(model.model).float().eval().fuse(verbose=False)(x)[0].numpy()
    assert np.mean(np.abs(y[:, :4] - y_pt[:, :4]) < 0.5) > 0.98 and np.mean(np.abs(y[:, 4:] - y_pt[:, 4:]) < 0.01) > 0.99


def test_u8_weights_auto_follows_the_cpu(monkeypatch):
    """auto: uint8 where the CPU has no VNNI (it would saturate), int8 with VNNI/AMX or an unknown CPU; anything else
    than True/False/auto is refused by name."""
    for vnni, want in ((False, True), (True, False), (None, False)):
        monkeypatch.setattr(exporter, "has_vnni", lambda v=vnni: v)
        assert exporter.resolve_u8_weights("auto") is want
    assert exporter.resolve_u8_weights("True") is True and exporter.resolve_u8_weights(False) is False
    with pytest.raises(ValueError, match="u8_weights=maybe is not one of True, False, auto"):
        exporter.resolve_u8_weights("maybe")
