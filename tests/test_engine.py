"""End to end: train, val, predict, export, reload in a fresh process, modalities, fusion, resume, DDP round trip."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from copy import deepcopy
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import EASY_EPOCHS, IMGSZ, MAP50_FLOOR, read_csv

from ghost_yolo import GhostYOLO
from ghost_yolo.models.model import GhostDetectionModel


def _val_pair(data_yaml: Path) -> Path:
    return sorted((data_yaml.parent / "images" / "val").glob("*_co.png"))[0]


def test_trained_fixture_learned(trained):
    """Guard for every test that compares metrics across paths on ``trained``: the fixture's model learned the easy
    set, so those tests compare real figures, not 0 with 0."""
    final = json.loads((trained / "summary.json").read_text())["metrics"]["mAP50"]
    assert final >= MAP50_FLOOR, (f"the trained fixture stopped learning: mAP50 {final:.3f} < {MAP50_FLOOR} on the easy "
                                  "set (see EASY_RECIPE in conftest.py); metric parity tests would compare zeros")


def test_train_outputs(trained):
    """A run writes weights, results.csv with the loss columns, and side-by-side colour|IR mosaics."""
    assert (trained / "weights" / "best.pt").is_file() and (trained / "weights" / "last.pt").is_file()
    rows = read_csv(trained / "results.csv")
    assert [int(float(r["epoch"])) for r in rows] == list(range(1, EASY_EPOCHS + 1))
    assert {"train/box_loss", "train/cls_loss", "metrics/mAP50(B)"} <= set(rows[0])
    assert float(rows[0]["train/cls_loss"]) > 0
    mosaic = cv2.imread(str(trained / "train_batch0.jpg"))
    assert mosaic is not None and mosaic.shape[1] > mosaic.shape[0]  # colour and IR side by side
    assert (trained / "val_batch0_pred.jpg").is_file()


def test_checkpoint_keeps_modality_and_yaml(trained):
    """best.pt holds a 4-channel ghost model whose YAML rebuilds it."""
    m = GhostYOLO(trained / "weights" / "best.pt")
    assert isinstance(m.model, GhostDetectionModel)
    assert m.channels == 4 and m.model.modality == "rgb+ir"
    rebuilt = GhostDetectionModel(m.model.yaml, verbose=False)
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in m.model.parameters())


def test_val_returns_metrics(trained, easy_yaml):
    metrics = GhostYOLO(trained / "weights" / "best.pt").val(data=str(easy_yaml), imgsz=IMGSZ, batch=4, plots=False,
                                                           project=str(trained.parent), name="val")
    labels = sorted((easy_yaml.parent / "labels" / "val").glob("*.txt"))
    classes = [int(line.split()[0]) for p in labels for line in p.read_text().splitlines() if line.strip()]
    assert metrics.box.nc == 8
    assert metrics.box.ap_class_index.tolist() == sorted(set(classes))  # AP for exactly the classes present in val
    assert metrics.results_dict["metrics/mAP50(B)"] == pytest.approx(metrics.box.map50)
    assert int(metrics.nt_per_class.sum()) == len(classes)  # every object seen
    assert metrics.nt_per_class.tolist() == np.bincount(classes, minlength=8).tolist()  # and counted in its class
    # the run's own final val (same weights, same split) measured the same figure
    final = json.loads((trained / "summary.json").read_text())["metrics"]["mAP50"]
    assert metrics.box.map50 == pytest.approx(final, abs=1e-3) and metrics.box.map50 > 0


def _predict_boxes(weights: Path, source: Path) -> list[list[float]]:
    r = GhostYOLO(weights).predict(str(source), imgsz=IMGSZ, conf=0.0001, max_det=20, verbose=False)[0]
    return r.boxes.data.tolist()


def test_reload_in_fresh_process(trained, easy_yaml):
    """The checkpoint loads and predicts identically in a new interpreter (modules registered by import)."""
    weights, pair = trained / "weights" / "best.pt", _val_pair(easy_yaml)
    here = _predict_boxes(weights, pair)
    code = (f"import json; from ghost_yolo import GhostYOLO; "
            f"r = GhostYOLO({str(weights)!r}).predict({str(pair)!r}, imgsz={IMGSZ}, conf=0.0001, max_det=20, "
            f"verbose=False)[0]; print('BOXES=' + json.dumps(r.boxes.data.tolist()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    there = json.loads(next(line for line in out.splitlines() if line.startswith("BOXES="))[6:])
    assert len(here) == len(there) > 0
    np.testing.assert_allclose(np.array(here), np.array(there), atol=1e-4)


def test_predict_folder_pairs_and_orphans(trained, synth_yaml, tmp_path, log):
    """A folder of pairs: orphans are reported by name and skipped; images are saved colour|IR; save_txt works."""
    src = tmp_path / "src"
    src.mkdir()
    pairs = sorted((synth_yaml.parent / "images" / "val").glob("*_co.png"))[:3]
    for c in pairs:
        for f in (c, c.with_name(c.name.replace("_co", "_ir"))):
            (src / f.name).write_bytes(f.read_bytes())
    (src / "lonely_co.png").write_bytes(pairs[0].read_bytes())  # no IR partner
    results = GhostYOLO(trained / "weights" / "best.pt").predict(
        str(src), imgsz=IMGSZ, conf=0.0001, save=True, save_txt=True, project=str(tmp_path), name="pred")
    assert len(results) == 3
    assert "lonely_co.png" in log.text and "missing IR partner" in log.text
    saved = cv2.imread(str(tmp_path / "pred" / pairs[0].with_suffix(".jpg").name))
    colour = cv2.imread(str(pairs[0]))
    assert saved.shape[1] == 2 * colour.shape[1] and saved.shape[0] == colour.shape[0]
    assert len(list((tmp_path / "pred" / "labels").glob("*.txt"))) >= 1
    assert results[0].ir_img.shape == colour.shape[:2]


def test_predict_single_pair_forms(trained, synth_yaml):
    """`a_co.png` finds its partner; the IR file alone finds its colour; two explicit paths form one pair."""
    weights, colour = trained / "weights" / "best.pt", _val_pair(synth_yaml)
    ir = colour.with_name(colour.name.replace("_co", "_ir"))
    by_colour = _predict_boxes(weights, colour)
    model = GhostYOLO(weights)
    explicit = model.predict([str(colour), str(ir)], imgsz=IMGSZ, conf=0.0001, max_det=20, verbose=False)
    assert len(explicit) == 1
    np.testing.assert_allclose(explicit[0].boxes.data.numpy(), np.array(by_colour), atol=1e-5)
    from_ir = model.predict(str(ir), imgsz=IMGSZ, conf=0.0001, max_det=20, verbose=False)
    assert len(from_ir) == 1 and Path(from_ir[0].path).name == colour.name


def test_onnx_export_parity_and_backends(trained, easy_yaml):
    """ONNX has one 4-channel input, onnxruntime matches PyTorch numerically, and val/predict run on it."""
    import onnxruntime as ort

    model = GhostYOLO(trained / "weights" / "best.pt")
    f = model.export(format="onnx", imgsz=IMGSZ, dynamic=True)
    sess = ort.InferenceSession(f, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    assert inp.shape[1] == 4
    x = np.random.default_rng(0).random((2, 4, IMGSZ + 32, IMGSZ), dtype=np.float32)  # dynamic batch and size
    y_ort = sess.run(None, {inp.name: x})[0]
    fused = deepcopy(model.model).float().eval().fuse(verbose=False)
    with torch.no_grad():
        y_pt = fused(torch.from_numpy(x))
    y_pt = (y_pt[0] if isinstance(y_pt, (list, tuple)) else y_pt).numpy()
    assert y_ort.shape == y_pt.shape
    np.testing.assert_allclose(y_ort, y_pt, atol=2e-3, rtol=1e-3)

    onnx_model = GhostYOLO(f)
    assert onnx_model.channels == 4
    res = onnx_model.predict(str(_val_pair(easy_yaml)), imgsz=IMGSZ, conf=0.0001, verbose=False)
    assert len(res) == 1 and res[0].ir_img.shape == cv2.imread(str(_val_pair(easy_yaml))).shape[:2]
    # rect=False for both: a dynamic ONNX model keeps Ultralytics' rect val (padded to 96 px here), a static one not
    metrics = onnx_model.val(data=str(easy_yaml), imgsz=IMGSZ, batch=1, plots=False, project=str(trained.parent),
                             name="val_onnx", rect=False)
    pt_metrics = model.val(data=str(easy_yaml), imgsz=IMGSZ, batch=1, plots=False, project=str(trained.parent),
                           name="val_pt", rect=False)
    assert pt_metrics.box.map50 > 0 and abs(metrics.box.map50 - pt_metrics.box.map50) < 0.005


@pytest.mark.slow
@pytest.mark.parametrize("modality, channels", [("rgb", 3), ("ir", 1)])
def test_modality_key_changes_channels(synth_yaml, tmp_path, modality, channels):
    """`modality=` trains on the same pairs with 3 (colour) or 1 (IR) channels; predict follows the model."""
    m = GhostYOLO("ghost-n.yaml")
    m.train(data=str(synth_yaml), modality=modality, bits=32, epochs=1, imgsz=IMGSZ, batch=8, workers=0, project=str(tmp_path),
            name=modality, plots=False, val=False)
    best = GhostYOLO(tmp_path / modality / "weights" / "last.pt")
    assert best.channels == channels
    res = best.predict(str(synth_yaml.parent / "images" / "val"), imgsz=IMGSZ, conf=0.0001, verbose=False)
    assert len(res) == 8  # pairs, not 16 separate images


def test_dual_stream_fuse_and_modality_error():
    """The dual-stream stem survives BN fusing exactly and refuses single-modality input clearly."""
    model = GhostDetectionModel("ghost-n-dual.yaml", ch=4, nc=8, verbose=False).eval()
    x = torch.rand(1, 4, IMGSZ, IMGSZ)
    with torch.no_grad():
        before = model(x)[0]
        after = deepcopy(model).fuse(verbose=False)(x)[0]
    torch.testing.assert_close(before, after, atol=1e-4, rtol=1e-4)
    with pytest.raises(ValueError, match="DualStreamStem needs colour and infrared"):
        GhostDetectionModel("ghost-n-dual.yaml", ch=3, nc=8, verbose=False)


def test_act_relu_is_local_to_model():
    """`act: ReLU` switches that model's activations without leaking into later models."""
    from ultralytics.nn.modules import Conv

    from ghost_yolo.models.model import load_model_yaml

    cfg = {**load_model_yaml("ghost-n.yaml"), "act": "ReLU"}
    cfg.pop("activation", None)
    relu = GhostDetectionModel(cfg, ch=4, nc=8, verbose=False)
    assert isinstance(relu.model[0].act, torch.nn.ReLU)
    assert isinstance(Conv.default_act, torch.nn.SiLU)
    assert isinstance(GhostDetectionModel("ghost-n.yaml", ch=4, nc=8, verbose=False).model[0].act, torch.nn.SiLU)


@pytest.mark.slow
def test_resume_continues_interrupted_run(synth_yaml, tmp_path):
    """A run stopped after epoch 1 of 2 resumes from last.pt with the ghost trainer and finishes."""
    m = GhostYOLO("ghost-n.yaml")

    def stop(trainer):
        if trainer.epoch == 0:
            raise KeyboardInterrupt

    m.add_callback("on_fit_epoch_end", stop)
    with pytest.raises(KeyboardInterrupt):
        m.train(data=str(synth_yaml), epochs=2, imgsz=IMGSZ, batch=8, workers=0, project=str(tmp_path), name="r",
                plots=False)
    last = tmp_path / "r" / "weights" / "last.pt"
    resumed = GhostYOLO(last)
    resumed.train(resume=True, workers=0)
    rows = read_csv(tmp_path / "r" / "results.csv")
    assert [int(float(r["epoch"])) for r in rows] == [1, 2]  # epoch 1 kept, epoch 2 added by the resumed run
    assert GhostYOLO(tmp_path / "r" / "weights" / "last.pt").channels == 4


def _finished_run(root: Path, epochs: int, last_epoch: int | None) -> Path:
    """A finished run as Ultralytics leaves it: last.pt with the optimizer stripped and epoch -1 (``strip_optimizer``),
    and results.csv up to ``last_epoch`` (None: no results.csv); returns last.pt."""
    weights = root / "weights"
    weights.mkdir(parents=True)
    model = GhostDetectionModel("ghost-n.yaml", ch=4, nc=2, verbose=False).half()
    torch.save({"model": model, "ema": None, "optimizer": None, "epoch": -1,
                "train_args": {"epochs": epochs, "data": "easy.yaml", "imgsz": IMGSZ}}, weights / "last.pt")
    if last_epoch:
        (root / "results.csv").write_text("epoch,time\n" + "".join(f"{e},{e}.0\n" for e in range(1, last_epoch + 1)))
    return weights / "last.pt"


def test_resume_of_a_finished_run_is_refused(tmp_path, monkeypatch, log):
    """`ghost train resume model=.../last.pt` of a finished run says at which epoch it finished and that there is
    nothing to resume (exit code 2; ValueError in Python), instead of a new run on Ultralytics' default data (coco8)."""
    from ghost_yolo.cli import entrypoint
    from ghost_yolo.engine.model import check_resumable

    monkeypatch.chdir(tmp_path)
    last = _finished_run(tmp_path / "runs" / "detect" / "train", epochs=3, last_epoch=3)
    with pytest.raises(ValueError, match=r"this run finished at epoch 3 \(of 3\), there is nothing to resume"):
        GhostYOLO(last).train(resume=True)
    assert entrypoint("train resume model=runs/detect/train/weights/last.pt") == 2
    errors = [x for x in log.text.splitlines() if "error:" in x]
    assert len(errors) == 1 and "runs/detect/train/weights/last.pt: this run finished at epoch 3 (of 3)" in errors[0]
    assert "ghost train model=runs/detect/train/weights/last.pt data=easy.yaml epochs=N" in errors[0]
    assert "coco8" not in log.text and "Starting new training" not in log.text
    assert [p.name for p in (tmp_path / "runs" / "detect").iterdir()] == ["train"]  # no new run
    early = _finished_run(tmp_path / "early", epochs=10, last_epoch=4)  # stopped early (patience)
    with pytest.raises(ValueError, match=r"finished at epoch 4 \(of 10\)"):
        GhostYOLO(early).train(resume=True)
    bare = _finished_run(tmp_path / "bare", epochs=5, last_epoch=None)
    with pytest.raises(ValueError, match=r"finished \(epochs=5\), there is nothing to resume"):
        GhostYOLO("ghost-n.yaml").train(resume=str(bare))
    with pytest.raises(ValueError, match="pass model=runs/detect/<run>/weights/last.pt, not .*ghost-n.yaml"):
        GhostYOLO("ghost-n.yaml").train(resume=True)
    plain = tmp_path / "plain.pt"  # weights that never came from a training run
    torch.save({"model": GhostDetectionModel("ghost-n.yaml", ch=4, nc=2, verbose=False), "train_args": {}}, plain)
    with pytest.raises(ValueError, match="not the checkpoint of an interrupted training run"):
        GhostYOLO(plain).train(resume=True)
    check_resumable({"epoch": 0, "optimizer": {}, "train_args": {"epochs": 2}}, "last.pt")  # interrupted: resumes


def test_ddp_trainer_roundtrip(trained, synth_yaml, tmp_path):
    """The trainer survives Ultralytics' DDP hand-off: cloudpickled state rebuilt in a fresh process."""
    import cloudpickle
    from ultralytics.utils.torch_utils import torch_load  # noqa: F401  (same loader the DDP worker uses)

    from ghost_yolo.engine.trainer import GhostTrainer

    trainer = GhostTrainer(overrides={"model": "ghost-n.yaml", "data": str(synth_yaml), "imgsz": IMGSZ, "epochs": 1,
                                      "modality": "rgb+ir", "ir_jitter": 0.1, "project": str(tmp_path), "name": "ddp"})
    state = tmp_path / "state.pt"
    torch.save({"trainer": type(trainer), "args": vars(trainer.args), "model": None, "callbacks": trainer.callbacks},
               state, pickle_module=cloudpickle)
    code = f"""
from ultralytics.utils import DEFAULT_CFG_DICT
from ultralytics.utils.patches import torch_load
state = torch_load({str(state)!r}, map_location="cpu")
cfg = DEFAULT_CFG_DICT.copy(); cfg.update(save_dir='')
t = state["trainer"](cfg=cfg, overrides=state["args"], _callbacks=state["callbacks"])
print("OK", type(t).__name__, t.args.ir_jitter, t.data["channels"], t.data["modality"])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "OK GhostTrainer 0.1 4 rgb+ir" in out.stdout


def test_cpu_training_uses_every_physical_core(synth_yaml, tmp_path, monkeypatch, log):
    """Ultralytics leaves cpu_count - 1 torch threads for CPU training; the ghost trainer sets one per physical core,
    threads=N when given, and the user's OMP_NUM_THREADS over both, and logs which."""
    import torch

    from ghost_yolo.engine.trainer import GhostTrainer
    from ghost_yolo.utils.threads import physical_cores

    base = {"model": "ghost-n.yaml", "data": str(synth_yaml), "imgsz": IMGSZ, "project": str(tmp_path)}
    before = torch.get_num_threads()
    try:
        monkeypatch.setattr("ghost_yolo.utils.threads.user_omp_threads", lambda: "")  # as if started without it
        monkeypatch.setattr("ghost_yolo.utils.threads.busy_cores", lambda: 0.0)  # as if nothing else ran
        torch.set_num_threads(1)
        GhostTrainer(overrides=base)
        assert torch.get_num_threads() == physical_cores()
        assert f"CPU training on {physical_cores()} thread" in log.text and "(one per physical core)" in log.text
        GhostTrainer(overrides={**base, "threads": 3})
        assert torch.get_num_threads() == 3 and "(threads=)" in log.text
        monkeypatch.setattr("ghost_yolo.utils.threads.user_omp_threads", lambda: "1")
        GhostTrainer(overrides={**base, "threads": 3})
        assert torch.get_num_threads() == 1 and "CPU training on 1 thread (OMP_NUM_THREADS)" in log.text
    finally:
        torch.set_num_threads(before)


def test_cpu_training_leaves_busy_cores(monkeypatch):
    """Cores that other processes keep busy are left to them (threads that share a core with a busy process stall
    each other); at least one thread; threads= and OMP_NUM_THREADS still win."""
    from ghost_yolo.utils import threads

    monkeypatch.setattr(threads, "user_omp_threads", lambda: "")
    monkeypatch.setattr(threads, "physical_cores", lambda: 4)
    monkeypatch.setattr(threads, "_usable_cpus", lambda: 4)
    for busy, want in ((0.0, 4), (0.4, 4), (1.0, 3), (2.6, 1), (4.0, 1)):
        monkeypatch.setattr(threads, "busy_cores", lambda b=busy: b)
        n, why = threads.training_threads(0)
        assert n == want, (busy, n)
        assert ("other processes keep" in why) == (want < 4) and ("threads=4" in why) == (want < 4)
    assert threads.training_threads(2) == (2, "threads=")
    monkeypatch.setattr(threads, "user_omp_threads", lambda: "3")
    assert threads.training_threads(0) == (3, "OMP_NUM_THREADS")


def test_busy_cores_sees_a_busy_process():
    """``busy_cores`` counts a process that spins on a core (it sleeps through its own sample)."""
    import multiprocessing as mp

    from ghost_yolo.utils.threads import busy_cores

    if not Path("/proc/stat").exists():
        pytest.skip("no /proc/stat")
    p = mp.get_context("spawn").Process(target=_spin, args=(3.0,))
    p.start()
    try:
        time.sleep(0.8)  # the spinner has started
        busy = busy_cores(0.5)
    finally:
        p.join()
    assert busy >= 0.6, busy  # one spinning core (other processes can only add to it)


def _spin(seconds: float) -> None:
    """Keep one core busy for ``seconds``."""
    end = time.time() + seconds
    while time.time() < end:
        pass
