"""The OBB task: models and their task, label checks, paired oriented augmentation, and the whole pipeline (float,
HQ + QAT with self-distillation, integer ONNX and .ghost parity, predict) on the easy oriented set."""

from __future__ import annotations

import importlib.util
import math
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import (EASY_RECIPE, IMGSZ, MAP50_FLOOR, QMAP50_FLOOR, build, draw_easy_obb, make_easy_obb_set, read_csv,
                      write_label)

from ghost_yolo import GhostYOLO
from ghost_yolo.data.check import check_task_labels
from ghost_yolo.data.dataset import check_label_file
from ghost_yolo.models import GhostDetectionModel, GhostOBBModel, build_model, model_task
from ghost_yolo.quant.apply import policy_layers, uniform_bits

OBB_YAMLS = ("ghost-n-obb.yaml", "ghost-s-obb.yaml", "ghost-n-dual-obb.yaml", "ghost-n-relu-obb.yaml")
ANGLE_CONVS = [f"model.23.cv4.{i}.2" for i in range(3)]  # the angle branch's last conv at P3, P4, P5


@pytest.fixture(scope="module")
def easy_obb_yaml(tmp_path_factory) -> Path:
    """The easy oriented set (64 train / 16 val pairs at 64 px)."""
    return make_easy_obb_set(tmp_path_factory.mktemp("data") / "easy-obb")


@pytest.fixture(scope="module")
def obb_trained(easy_obb_yaml, tmp_path_factory) -> Path:
    """ghost-n-obb trained in float on the easy oriented set (20 epochs, EASY_RECIPE); the run directory."""
    project = tmp_path_factory.mktemp("obbruns")
    GhostYOLO("ghost-n-obb.yaml").train(data=str(easy_obb_yaml), bits=32, epochs=20, project=str(project), name="f",
                                        exist_ok=True, plots=False, val=False, **EASY_RECIPE)
    return project / "f"


@pytest.fixture(scope="module")
def obb_qtrained(obb_trained, easy_obb_yaml) -> Path:
    """From that float model: HQ search, one quantized epoch distilled (cls+dfl) from the co-trained float self."""
    project = obb_trained.parent
    GhostYOLO(obb_trained / "weights" / "best.pt").train(
        data=str(easy_obb_yaml), epochs=1, bits="hq", hq_threshold=0.05, kd="cls+dfl", float_self="cotrain",
        project=str(project), name="q", exist_ok=True, plots=True, **{**EASY_RECIPE, "lr0": 0.001})
    return project / "q"


# Models ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("yaml", OBB_YAMLS)
def test_obb_yaml_builds_obb_model_with_angle_branch(yaml):
    """Every shipped -obb YAML is an obb model (task from its head), predicts boxes + classes + one angle per anchor,
    and keep_head keeps the angle branch's last convs at 8 bit like the box and class ones."""
    model = build_model(yaml, ch=4, nc=3, verbose=False)
    assert type(model) is GhostOBBModel and model_task(yaml) == "obb"
    assert GhostYOLO(yaml).task == "obb"
    out = model.eval()(torch.rand(1, 4, IMGSZ, IMGSZ))[0]
    assert out.shape[:2] == (1, 4 + 3 + 1)  # xywh, 3 class scores, angle
    _, head = policy_layers(model)
    assert set(ANGLE_CONVS) <= set(head) and len(head) == 9  # box, class and angle branch at each of 3 levels
    from ghost_yolo.quant import quantize_model

    bits = uniform_bits(quantize_model(model, bits=4), 4, keep_first=True, keep_head=True)
    assert {bits[n] for n in ANGLE_CONVS} == {8} and bits["model.22.m.0.m.0.cv1.conv"] == 4


def test_detect_yaml_is_detect():
    """Detect YAMLs stay detect models."""
    assert type(build_model("ghost-n.yaml", ch=4, nc=3, verbose=False)) is GhostDetectionModel
    assert GhostYOLO("ghost-n.yaml").task == "detect"


# Labels ---------------------------------------------------------------------------------------------------------------
def test_obb_label_file_checks(tmp_path):
    """OBB label rows: 9 fields, corners near the image; each problem one message naming the file and line."""
    ok = write_label(tmp_path / "ok.txt", "0 0.1 0.1 0.4 0.1 0.4 0.3 0.1 0.3\n1 -0.02 0.5 0.2 0.5 0.2 0.6 -0.02 0.6\n")
    assert check_label_file(str(ok), 2, task="obb") == ""
    box = write_label(tmp_path / "box.txt", "0 0.3 0.3 0.2 0.2\n")
    msg = check_label_file(str(box), 2, task="obb")
    assert msg.startswith(f"{box}:1:") and "got 5 fields" in msg and "detect label" in msg
    assert check_label_file(str(box), 2, task="detect") == ""  # a detect model reads it
    seven = write_label(tmp_path / "seven.txt", "0 0.1 0.1 0.4 0.1 0.4 0.3\n")
    assert "got 7 fields" in check_label_file(str(seven), 2, task="obb")
    pixels = write_label(tmp_path / "px.txt", "0 0.1 0.1 0.4 0.1 0.4 0.3 0.1 0.3\n1 10 10 40 10 40 30 10 30\n")
    msg = check_label_file(str(pixels), 2, task="obb")
    assert msg.startswith(f"{pixels}:2:") and "far outside the image" in msg and "10" in msg
    assert "nc=2" in check_label_file(str(write_label(tmp_path / "c.txt", "5 0 0 1 0 1 1 0 1\n")), 2, task="obb")


def test_detect_labels_in_obb_dataset_skipped_by_name(easy_obb_yaml, tmp_path, log):
    """A pair whose labels are detect boxes is skipped from an OBB dataset, named once; the other pairs stay."""
    import shutil

    root = tmp_path / "mixed"
    shutil.copytree(easy_obb_yaml.parent, root)
    bad = root / "labels" / "val" / "0003.txt"
    bad.write_text("0 0.5 0.5 0.2 0.2\n")
    yaml = root / "easy-obb.yaml"
    yaml.write_text(yaml.read_text().replace(str(easy_obb_yaml.parent), str(root)))
    ds = build(yaml, mode="val", task="obb")
    assert len(ds.labels) == 15 and not any(lb["im_file"].endswith("0003_co.png") for lb in ds.labels)
    assert any(str(bad) in r.message and "got 5 fields" in r.message for r in log.records)
    assert len(build(yaml, mode="val", task="detect").labels) == 16  # a detect model keeps it


def test_detect_model_on_obb_labels_says_once(easy_obb_yaml, log):
    """A detect run on corner labels trains their enclosing boxes and says so (once)."""
    ds = build(easy_obb_yaml, mode="train", task="detect")
    check_task_labels(ds, "detect")
    said = [r for r in log.records if "enclosing" in r.message]
    assert len(said) == 1 and "ghost-n-obb.yaml" in said[0].message
    assert ds[0]["bboxes"].shape[-1] == 4


def corners(xywhr: np.ndarray, w: int, h: int, shrink: float = 0.6) -> np.ndarray:
    """Pixel corners of a normalized xywhr box, shrunk about its centre (pixels well inside the object)."""
    x, y, bw, bh, r = xywhr
    return cv2.boxPoints(((x * w, y * h), (bw * w * shrink, bh * h * shrink), math.degrees(r)))


def test_obb_augmentation_moves_labels_with_both_bands(easy_obb_yaml):
    """Mosaic, rotation, scale and both flips move the corners with the colour and the IR band alike: inside every
    rotated label both bands show the object (bright), not the dark background (20-60)."""
    hyp = dict(mosaic=1.0, degrees=90.0, scale=0.3, translate=0.1, fliplr=0.5, flipud=0.5, hsv_h=0.0, hsv_s=0.0,
               hsv_v=0.0)
    ds = build(easy_obb_yaml, mode="train", task="obb", **hyp)
    checked = 0
    for i in range(16):
        random.seed(i)
        np.random.seed(i)
        s = ds[i]
        img = s["img"].numpy().transpose(1, 2, 0)  # H x W x (R, G, B, IR)
        h, w = img.shape[:2]
        assert s["bboxes"].shape[-1] == 5
        for box in s["bboxes"].numpy():
            if box[2] * w < 8 or box[3] * h < 8:  # cut at the mosaic's edge: too little left to sample
                continue
            mask = np.zeros((h, w), np.uint8)
            cv2.fillPoly(mask, [np.round(corners(box, w, h)).astype(np.int32)], 1)
            inside = mask.astype(bool)
            if inside.sum() < 4:
                continue
            assert img[..., 3][inside].mean() > 120, f"sample {i}: IR band dark inside {box}"
            assert img[..., :3].max(-1)[inside].mean() > 150, f"sample {i}: colour dark inside {box}"
            checked += 1
    assert checked >= 12


# The pipeline ---------------------------------------------------------------------------------------------------------
def test_obb_float_and_quantized_learn(obb_trained, obb_qtrained):
    """The float OBB model learns the oriented set; HQ + QAT with cls+dfl distillation from its co-trained float self
    keeps it; the angle branch stays at 8 bit; the distillation terms are logged."""
    fp = read_csv(obb_trained / "results.csv")[-1]
    assert float(fp["metrics/mAP50(B)"]) >= MAP50_FLOOR
    q = read_csv(obb_qtrained / "results.csv")[-1]
    assert float(q["metrics/mAP50(B)"]) >= QMAP50_FLOOR
    assert 0 < float(q["metrics/mAP50-VOC07(B)"]) <= 1  # the MMRotate-style figure, named, every epoch
    assert float(q["train/angle_loss"]) > 0 and float(q["train/kd_cls"]) > 0 and float(q["train/kd_dfl"]) > 0
    from ultralytics.utils import YAML

    bits = YAML.load(obb_qtrained / "bits.yaml")["bits"]
    assert all(bits[n] == 8 for n in ANGLE_CONVS)
    assert (obb_qtrained / "val_batch0_pred.jpg").exists()
    im = cv2.imread(str(obb_qtrained / "val_batch0_pred.jpg"))
    assert im.shape[1] > 1.5 * im.shape[0]  # colour | IR side by side


def test_obb_integer_onnx_packed_and_predict(obb_qtrained, easy_obb_yaml, tmp_path):
    """The quantized OBB model exports to integer QDQ ONNX, .ghost and OpenVINO; all score as PyTorch on the same inputs;
    predict gives Results.obb and writes polygon label lines."""
    best = obb_qtrained / "weights" / "best.pt"
    kw = dict(data=str(easy_obb_yaml), imgsz=IMGSZ, batch=1, plots=False, rect=False, project=str(tmp_path))
    pt = GhostYOLO(best).val(name="pt", **kw)
    import json

    saved = json.loads((tmp_path / "pt" / "metrics.json").read_text())
    assert saved["mAP50"] == pytest.approx(pt.box.map50) and saved["mAP50_voc07_11point"] == pt.voc07_map50 > 0
    onnx = GhostYOLO(best).export(format="onnx", imgsz=IMGSZ, data=str(easy_obb_yaml))
    import onnx as onnx_lib

    graph = onnx_lib.load(onnx)
    assert sum(n.op_type == "QuantizeLinear" for n in graph.graph.node) > 0
    ox = GhostYOLO(onnx).val(name="onnx", **kw)
    assert pt.box.map50 > 0 and abs(pt.box.map50 - ox.box.map50) <= 0.003 and abs(pt.box.map - ox.box.map) <= 0.003
    packed = GhostYOLO(best).export(format="ghost")
    gm = GhostYOLO(packed)
    assert gm.task == "obb"
    pk = gm.val(name="packed", **kw)
    assert abs(pk.box.map50 - pt.box.map50) <= 0.003
    if importlib.util.find_spec("openvino") is not None:  # the same integer graph in OpenVINO, its convs in int8
        folder = GhostYOLO(best).export(format="openvino", imgsz=IMGSZ, data=str(easy_obb_yaml))
        om = GhostYOLO(folder)
        assert om.task == "obb"
        ov = om.val(name="openvino", **kw)
        assert abs(ov.box.map50 - pt.box.map50) <= 0.01  # OpenVINO's requantization order: test_openvino.OV_MAP_TOL
    res = GhostYOLO(best).predict(str(easy_obb_yaml.parent / "images" / "val"), imgsz=IMGSZ, save=True,
                                  save_txt=True, project=str(tmp_path), name="pred", exist_ok=True)
    assert res[0].obb is not None and res[0].boxes is None and res[0].obb.xywhr.shape[-1] == 5
    assert sum(len(r.obb) for r in res) > 0
    lines = [ln.split() for f in (tmp_path / "pred" / "labels").glob("*.txt") for ln in f.read_text().splitlines()]
    assert lines and all(len(p) == 9 for p in lines)  # class + 4 corners
    plotted = res[0].plot()
    assert plotted.shape[1] == 2 * res[0].orig_img.shape[1]  # rotated boxes on colour | IR


def test_cli_task_must_fit_model(tmp_path, log):
    """task=obb with a detect model is refused in one line."""
    from ghost_yolo.cli import entrypoint

    assert entrypoint("info model=ghost-n.yaml task=obb") == 2
    assert any("task=obb does not fit" in r.message for r in log.records)


@pytest.mark.parametrize("kd,float_self", [("ost", "cotrain"), ("cwd", "shared"), ("cls+dfl", "frozen")])
def test_distillation_registry_reads_obb_head(kd, float_self):
    """Each distillation family trains an OBB student: the OBB loss (angle term included) plus a non-zero
    distillation term, with gradients reaching the student's first conv."""
    from ultralytics.utils import DEFAULT_CFG

    from ghost_yolo.distill import DistillRecipe
    from ghost_yolo.engine.setup import setup_qat
    from ghost_yolo.quant import QuantRecipe

    torch.manual_seed(0)
    model = GhostOBBModel("ghost-n-obb.yaml", ch=4, nc=8, verbose=False)
    quant = QuantRecipe.from_args({}, bits=4)
    setup_qat(model, quant, DistillRecipe.from_args({}, quant, model, kd=kd, float_self=float_self, kd_weight=1.0),
              images=torch.rand(2, 4, IMGSZ, IMGSZ))
    model.args = DEFAULT_CFG
    batch = {"img": torch.rand(2, 4, IMGSZ, IMGSZ), "cls": torch.tensor([[0.0], [3.0]]), "batch_idx": torch.tensor([0.0, 1.0]),
             "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.1, 0.5], [0.3, 0.6, 0.1, 0.3, 1.0]])}  # xywhr
    loss, items = model.train().loss(batch)
    loss.sum().backward()
    assert items["angle_loss"] > 0 and items["kd_loss"] > 0
    assert model.model[0].conv.weight.grad.abs().sum() > 0


# VEDAI k-fold on oriented boxes ---------------------------------------------------------------------------------------
def write_vedai_official_obb(src: Path, n_pairs: int, per_fold: int, seed: int = 2) -> None:
    """A small VEDAI distribution in the official layout (Vehicules512/, Annotations512/ with fold lists) whose objects
    are turned (``draw_easy_obb``): 14-field annotations with the rotated corners; fold k tests on ``per_fold`` pairs."""
    img_dir, ann_dir = src / "Vehicules512", src / "Annotations512"
    img_dir.mkdir(parents=True)
    ann_dir.mkdir()
    raw = {0: 1, 1: 11}  # easy class id -> VEDAI raw code (car, pickup)
    rng = np.random.default_rng(seed)
    for i in range(n_pairs):
        bgr, ir, objects = draw_easy_obb(rng)
        cv2.imwrite(str(img_dir / f"{i:08d}_co.png"), bgr)
        cv2.imwrite(str(img_dir / f"{i:08d}_ir.png"), ir)
        lines = []
        for c, pts in objects:  # centre, angle, raw class, flags, then the corners' x and y
            cx, cy = pts.mean(0)
            lines.append(f"{cx:.6f} {cy:.6f} 0.0 {raw[c]} 1 0 " + " ".join(f"{v:.3f}" for v in (*pts[:, 0], *pts[:, 1])))
        (ann_dir / f"{i:08d}.txt").write_text("\n".join(lines) + "\n")
    for k in range(1, n_pairs // per_fold + 1):
        test = [i for i in range(n_pairs) if i // per_fold == k - 1]
        (ann_dir / f"fold{k:02d}.txt").write_text("".join(f"{i:08d}\n" for i in range(n_pairs) if i not in test))
        (ann_dir / f"fold{k:02d}test.txt").write_text("".join(f"{i:08d}\n" for i in test))


def test_obb_kfold_end_to_end(obb_trained, tmp_path_factory):
    """The VEDAI k-fold protocol on oriented boxes as a user runs it: the official layout with turned vehicles,
    converted with obb=True (corner labels), then `ghost train model=<OBB model> data=vedai-fold01.yaml folds=1-2`
    trains every fold as an OBB run (W8, one epoch from the float OBB model) and folds.csv reports what they score."""
    from ghost_yolo.cli import entrypoint
    from ghost_yolo.data.vedai import convert_vedai
    from ghost_yolo.engine.folds import folds_root

    src = tmp_path_factory.mktemp("official-obb")
    write_vedai_official_obb(src, n_pairs=12, per_fold=6)
    save = tmp_path_factory.mktemp("converted-obb") / "vedai"
    assert len(convert_vedai(src, save, obb=True)) == 2
    label = next(p for p in sorted(save.rglob("*.txt")) if p.read_text().strip())
    fields = label.read_text().split("\n")[0].split()
    assert len(fields) == 9  # class and four corners
    corners = np.array(fields[1:], dtype=float).reshape(4, 2)
    sides = np.diff(np.vstack([corners, corners[:1]]), axis=0)
    assert np.abs(sides).min() > 1e-3  # turned: no side runs along an image axis (random angles, seed 2)

    best = obb_trained / "weights" / "best.pt"
    project = tmp_path_factory.mktemp("obbfolds")
    args = (f"imgsz={IMGSZ} epochs=1 bits=8 kd=none batch=4 workers=0 plots=False seed=0 deterministic=True "
            "warmup_epochs=0 optimizer=AdamW lr0=0.001")
    assert entrypoint(f"train model={best} data={save / 'vedai-fold01.yaml'} folds=1-2 {args} project={project} "
                      "name=k") == 0
    rows = read_csv(project / "k" / "folds.csv")
    assert [r["fold"] for r in rows] == ["1", "2", "mean", "std"]
    for r in rows[:2]:
        run = Path(r["run"])
        assert (run / "args.yaml").read_text().count("task: obb") == 1
        assert float(r["mAP50"]) > 0, f"fold {r['fold']} learned nothing: folds.csv would compare zeros"
        assert 7.5 < float(r["avg_bits"]) <= 8
    assert folds_root(save / "vedai-fold01.yaml", task="obb").parts[-2:] == ("obb", "vedai-folds")


def test_checkpoint_without_task_loads_as_obb(tmp_path):
    """A checkpoint whose train_args lack ``task`` (saved by hand or by other tools) loads as an OBB model from its
    head, where Ultralytics' guess would read the default args and say detect; a task the user names is kept."""
    from ghost_yolo.engine.predictor import GhostOBBPredictor

    path = tmp_path / "obb.pt"
    torch.save({"model": GhostOBBModel("ghost-n-obb.yaml", ch=4, nc=3, verbose=False)}, path)
    model = GhostYOLO(path)
    assert model.task == "obb" and model.overrides["task"] == "obb"
    assert model._smart_load("predictor") is GhostOBBPredictor
    detect = tmp_path / "detect.pt"
    torch.save({"model": GhostDetectionModel("ghost-n.yaml", ch=4, nc=3, verbose=False)}, detect)
    assert GhostYOLO(detect).task == "detect"
