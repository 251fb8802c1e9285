"""Quantized training end to end: float phase, HQ search, QAT, checkpoints, fused inference, resume, CLI tools."""

from __future__ import annotations

import json
import subprocess
import sys
from copy import deepcopy
from pathlib import Path

import pytest
import torch
from ultralytics.nn.tasks import load_checkpoint
from ultralytics.utils import YAML
from conftest import EASY_VAL, IMGSZ, QMAP50_FLOOR, read_csv

from ghost_yolo import GhostYOLO
from ghost_yolo.cli import entrypoint
from ghost_yolo.quant import get_bits, quant_layers, set_quant_enabled


def _bits_yaml(path: Path) -> dict[str, int]:
    return YAML.load(path)["bits"]


def test_qtrained_fixture_learned(qtrained):
    """Guard for the metric comparisons on ``qtrained``: the quantized model (and its float self) still detect on the
    easy set, so those tests compare real figures, not 0 with 0."""
    q = json.loads((qtrained / "summary.json").read_text())["quantization"]
    for key in ("quantized", "float_self", "float_start"):
        assert q[key]["mAP50"] >= QMAP50_FLOOR, (
            f"the qtrained fixture stopped learning: {key} mAP50 {q[key]['mAP50']:.3f} < {QMAP50_FLOOR} on the easy "
            "set (see conftest.py); metric parity tests would compare zeros")


def test_quantized_run_outputs(qtrained):
    """best.pt is quantized with the searched widths (also in bits.yaml), best_fp.pt is the float phase's model."""
    w = qtrained / "weights"
    q, _ = load_checkpoint(w / "best.pt")
    f, _ = load_checkpoint(w / "best_fp.pt")
    section = q.yaml["quant"]
    assert section["enabled"] and section["quantizer"] == "lsq"
    assert get_bits(q) == section["bits"] == _bits_yaml(qtrained / "bits.yaml")
    assert {2, 3, 4, 5, 6, 7, 8} >= set(section["bits"].values()) and section["bits"]["model.0.conv"] == 8
    assert all(bool(m.input_quant.calibrated) and bool(m.weight_quant.calibrated) for m in quant_layers(q).values())
    assert not f.yaml.get("quant", {}).get("enabled")
    assert (qtrained / "bits.png").stat().st_size > 1000
    assert [int(float(r["epoch"])) for r in read_csv(qtrained / "results.csv")] == [1, 2]


def test_checkpoint_bits_in_fresh_process(qtrained):
    """A fresh process loads best.pt with the same per-layer widths and quantizers switched on."""
    code = f"""
from ghost_yolo import GhostYOLO
from ghost_yolo.quant import get_bits, quant_layers
m = GhostYOLO({str(qtrained / 'weights' / 'best.pt')!r})
print(sorted(get_bits(m.model).items()) == sorted({_bits_yaml(qtrained / 'bits.yaml')!r}.items()),
      all(q.quant_enabled for q in quant_layers(m.model).values()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split()[-2:] == ["True", "True"]


def test_fused_matches_unfused_trained(qtrained, easy_yaml):
    """On real val images the fused model (what predict/export run) agrees with the unfused one (training val)."""
    import cv2

    from ghost_yolo.data.io import load_pair

    model, _ = load_checkpoint(qtrained / "weights" / "best.pt")
    model = model.float().eval()
    co = sorted((easy_yaml.parent / "images" / "val").glob("*_co.png"))[:4]
    ims = [cv2.resize(load_pair(p, p.with_name(p.name.replace("_co", "_ir")), "rgb+ir"), (IMGSZ, IMGSZ)) for p in co]
    x = torch.from_numpy(__import__("numpy").stack(ims)).permute(0, 3, 1, 2).float() / 255
    with torch.no_grad():
        ref = model(x)[0]
        out = deepcopy(model).fuse(verbose=False)(x)[0]
    # boxes where the model sees an object (score > 0.01): on background anchors the box distribution is flat and a
    # one-code change moves its mean by pixels, which no detection shows
    seen = ref[:, 4:].amax(1) > 0.01
    assert seen.sum() >= 4  # the learned model finds the objects of these images
    box_err = (out[:, :4] - ref[:, :4]).abs().permute(0, 2, 1)[seen].max().item()
    cls = (out[:, 4:] - ref[:, 4:]).abs()
    # fusing puts each bias on its int32 accumulator grid (as integer runtimes add it): at most half a step, which
    # now and then flips a code of a later 8-bit grid; scores then move by a few hundredths at most. Folding BatchNorm
    # before quantizing, or a wrong grid, moves scores everywhere
    share = (cls < 0.01).float().mean().item()
    assert box_err < 0.5 and share > 0.99 and cls.max() < 0.05, (box_err, share, cls.max().item())


def test_quantized_val_and_predict(qtrained, easy_yaml):
    """The quantized checkpoint validates and predicts on pairs like a float one; validated again on its own it scores
    what the run's final val reported for it."""
    m = GhostYOLO(qtrained / "weights" / "best.pt")
    metrics = m.val(data=str(easy_yaml), imgsz=IMGSZ, batch=8, workers=0, plots=False)
    labels = sorted((easy_yaml.parent / "labels" / "val").glob("*.txt"))
    assert int(metrics.nt_per_class.sum()) == sum(len(p.read_text().split()) // 5 for p in labels)  # every object seen
    assert metrics.results_dict["metrics/mAP50(B)"] == pytest.approx(metrics.box.map50)
    q = json.loads((qtrained / "summary.json").read_text())["quantization"]["quantized"]
    assert metrics.box.map50 > 0 and metrics.box.map50 == pytest.approx(q["mAP50"], abs=1e-3)
    assert metrics.box.map == pytest.approx(q["mAP50-95"], abs=1e-3)
    res = m.predict(source=str(easy_yaml.parent / "images" / "val"), imgsz=IMGSZ, save=False, verbose=False)
    assert len(res) == EASY_VAL


@pytest.mark.slow
def test_resume_in_quantized_phase(synth_yaml, tmp_path):
    """A run stopped in its quantized phase resumes with the same widths, step sizes and OST gate (not re-searched)."""
    m = GhostYOLO("ghost-n.yaml")

    def stop(trainer):
        if trainer.epoch == 1:
            raise KeyboardInterrupt

    m.add_callback("on_fit_epoch_end", stop)
    with pytest.raises(KeyboardInterrupt):
        m.train(data=str(synth_yaml), epochs=3, fp_epochs=1, bits=4, imgsz=IMGSZ, batch=8, workers=0,
                project=str(tmp_path), name="r", plots=False, kd="ost", float_self="cotrain")
    last = tmp_path / "r" / "weights" / "last.pt"
    saved, _ = load_checkpoint(last)
    seen = {}

    def grab(trainer):
        model = trainer.model
        seen["bits"] = get_bits(model)
        seen["scales"] = {n: q.weight_quant.log_scale.detach().clone() for n, q in quant_layers(model).items()}
        seen["gate"] = model.distiller.terms["ost"].query[0][0].weight.detach().clone()
        seen["float_bn"] = {k: v.detach().clone() for k, v in model.state_dict().items() if ".float_bn." in k}

    resumed = GhostYOLO(last)
    resumed.add_callback("on_train_start", grab)
    resumed.train(resume=True, workers=0)
    assert seen["bits"] == get_bits(saved) and set(seen["bits"].values()) == {4, 8}
    for n, q in quant_layers(saved).items():
        assert torch.equal(seen["scales"][n].half(), q.weight_quant.log_scale.half()), n
    # OST resumes too: its trained gate projections come back, and kd_loss goes on in the resumed epoch; so does the
    # co-trained float self's BatchNorm set (one set, not nested again by the rebuild)
    assert torch.equal(seen["gate"].half(), saved.distiller.terms["ost"].query[0][0].weight.half())
    sd = saved.state_dict()
    assert len(seen["float_bn"]) == sum(".float_bn." in k for k in sd) and not any(".float_bn.float_bn." in k for k in sd)
    assert all(torch.equal(v.half(), sd[k].half()) for k, v in seen["float_bn"].items())
    rows = read_csv(tmp_path / "r" / "results.csv")
    assert [int(float(r["epoch"])) for r in rows] == [1, 2, 3]
    assert float(rows[0]["train/kd_loss"]) == 0 and float(rows[2]["train/kd_loss"]) > 0  # float phase, quantized phase


def test_search_cli_is_deterministic(trained, tmp_path):
    """'ghost search' saves the same bit map twice for the same weights, plus the bar chart."""
    best = trained / "weights" / "best.pt"
    for name in ("a", "b"):
        assert entrypoint(f"search model={best} hq_threshold=0.05 project={tmp_path} name={name}") == 0
    a, b = _bits_yaml(tmp_path / "a" / "bits.yaml"), _bits_yaml(tmp_path / "b" / "bits.yaml")
    assert a == b and len(a) == 87
    assert (tmp_path / "a" / "bits.png").is_file()
    looser = GhostYOLO(best).search(hq_threshold=1.0, save=False)
    assert sum(looser.values()) <= sum(a.values())  # a looser threshold never asks for more bits


def test_info_cli_and_api(trained, tmp_path):
    """'ghost info' writes the per-layer CSV; the API returns the same totals; bits= counts a hypothetical width."""
    best = trained / "weights" / "best.pt"
    assert entrypoint(f"info model={best} imgsz=128 project={tmp_path} name=i") == 0
    import pandas as pd

    df = pd.read_csv(tmp_path / "i" / "layers.csv")
    assert len(df) == 87 and set(df["w_bits"]) == {32}
    api = GhostYOLO(best).quant_info(imgsz=128, save=False, verbose=False)
    assert api["bops"].sum() == df["bops"].sum()
    w4 = GhostYOLO(best).quant_info(imgsz=128, bits=4, save=False, verbose=False).attrs["totals"]
    t = api.attrs["totals"]
    assert w4["size_mb"] < t["float_mb"] / 4 and w4["gbops"] < t["gbops"] / 16 and t["float_mb"] == t["size_mb"]


@pytest.mark.parametrize(
    "args, message",
    [
        ("bits=9", "invalid bit width"),
        ("bits=hq hq_threshold=0", "hq_threshold must be > 0"),
        ("bits=hq bit_min=6 bit_max=4", "bit_min=6 is larger than bit_max=4"),
        ("bits=4 quantizer=dorefa", "needs a ReLU model"),
        ("bits=4 quantizer=int8", "unknown quantizer 'int8'"),
        ("bits=4 fp_epochs=3 epochs=2", "leaves no quantized epochs"),
    ],
)
def test_train_bad_quant_args(synth_yaml, tmp_path, log, args, message):
    """Bad quantization options stop before training with a one-line error."""
    rc = entrypoint(f"train data={synth_yaml} imgsz={IMGSZ} epochs=1 workers=0 project={tmp_path} {args}")
    assert rc == 2
    assert message in log.text


def test_bit_map_file_errors(trained, synth_yaml, tmp_path, log):
    """A bit map naming unknown layers, or with a bad width, is refused naming the layer."""
    bad = tmp_path / "bits.yaml"
    bad.write_text("bits:\n  model.1.conv: 4\n  model.77.conv: 4\n")
    rc = entrypoint(f"train model={trained / 'weights' / 'best.pt'} data={synth_yaml} bits={bad} imgsz={IMGSZ} "
                    f"epochs=1 workers=0 project={tmp_path}")
    assert rc == 2 and "model.77.conv" in log.text
    bad.write_text("model.1.conv: 12\n")
    assert entrypoint(f"info model={trained / 'weights' / 'best.pt'} bits={bad}") == 2
    assert "model.1.conv" in log.text and "12" in log.text


def test_hq_on_random_init_warns(log):
    """Searching a model built from a YAML (random weights) warns that the result means nothing."""
    GhostYOLO("ghost-n.yaml").search(save=False)
    assert "no trained weights" in log.text


@pytest.mark.slow
def test_qat_from_float_checkpoint(trained, easy_yaml, tmp_path):
    """model=float best.pt bits=8: the float model is validated first, quantized at once, and both are summarised."""
    from ghost_yolo.engine.trainer import GhostTrainer

    seen = {}

    class Spy(GhostTrainer):
        def final_eval(self):
            super().final_eval()
            seen["report"], seen["summary"] = self.quant_report(), self.summary()

    m = GhostYOLO(trained / "weights" / "best.pt")
    m.train(trainer=Spy, data=str(easy_yaml), bits=8, epochs=1, imgsz=IMGSZ, batch=8, workers=0, project=str(tmp_path),
            name="qat", plots=False, warmup_epochs=0)
    rep = seen["report"]
    # float start: the given float best.pt validated before quantizing, i.e. what that run's own final val measured
    float_run = json.loads((trained / "summary.json").read_text())["metrics"]
    assert float_run["mAP50"] > 0 and rep["float_start"]["mAP50"] == pytest.approx(float_run["mAP50"], abs=1e-3)
    assert rep["float_start"]["mAP50-95"] == pytest.approx(float_run["mAP50-95"], abs=1e-3)
    assert rep["float_start"]["epoch"] is None  # started from given weights
    # no co-trained float self: the float self is best.pt with its quantizers off (the shared BatchNorm), validated again
    assert rep["float_self"]["batchnorm"] == "shared"
    latent = GhostYOLO(tmp_path / "qat" / "weights" / "best.pt")
    set_quant_enabled(latent.model, False)
    fs = latent.val(data=str(easy_yaml), imgsz=IMGSZ, batch=16, workers=0, plots=False)
    assert fs.box.map50 > 0 and rep["float_self"]["mAP50"] == pytest.approx(fs.box.map50, abs=1e-3)
    assert rep["quantized"]["size_mb"] < rep["float_self"]["size_mb"] / 3 and rep["avg_w_bits"] == 8
    assert "float" in seen["summary"] and "GBOPs" in seen["summary"]
    q, _ = load_checkpoint(tmp_path / "qat" / "weights" / "best.pt")
    assert set(get_bits(q).values()) == {8}


def test_ddp_trainer_roundtrip_with_bits(synth_yaml, tmp_path):
    """A DDP worker rebuilds the trainer from pickled args and builds the same quantized model (quantizers off) with
    the same OST distiller."""
    import cloudpickle

    from ghost_yolo.engine.trainer import GhostTrainer

    trainer = GhostTrainer(overrides={"model": "ghost-n.yaml", "data": str(synth_yaml), "imgsz": IMGSZ, "epochs": 2,
                                      "bits": 4, "fp_epochs": 1, "keep_head": False, "project": str(tmp_path),
                                      "kd": "ost", "kd_layers": [2, 4, 6], "kd_weight": 3.0})
    state = tmp_path / "state.pt"
    torch.save({"trainer": type(trainer), "args": vars(trainer.args), "callbacks": trainer.callbacks}, state,
               pickle_module=cloudpickle)
    code = f"""
from ultralytics.utils import DEFAULT_CFG_DICT
from ultralytics.utils.patches import torch_load
from ghost_yolo.quant import get_bits, quant_layers
state = torch_load({str(state)!r}, map_location="cpu")
cfg = DEFAULT_CFG_DICT.copy(); cfg.update(save_dir='')
t = state["trainer"](cfg=cfg, overrides=state["args"], _callbacks=state["callbacks"])
m = t.get_model(cfg="ghost-n.yaml", verbose=False)
bits = get_bits(m)
print("OK", t.args.bits, len(bits), sorted(set(bits.values())), any(q.quant_enabled for q in quant_layers(m).values()),
      t.args.kd, m.distiller.layers, m.distiller.weights, t.args.float_self,
      sum(type(b).__name__ == "SwitchableBatchNorm2d" for b in m.modules()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK 4 87 [4, 8] False ost [2, 4, 6] {'ost': 30.0} frozen 0" in out.stdout


@pytest.mark.slow
def test_train_hq_on_random_init_warns(synth_yaml, tmp_path, log):
    """bits=hq on a model built from a YAML (no fp_epochs) warns that the search measures nothing, and still runs."""
    GhostYOLO("ghost-n.yaml").train(data=str(synth_yaml), bits="hq", epochs=1, imgsz=IMGSZ, batch=8, workers=0,
                                    project=str(tmp_path), name="w", plots=False, val=False)
    assert "randomly initialised weights" in log.text
    assert (tmp_path / "w" / "bits.yaml").is_file()
