"""A missing or failed sensor: the fill rule, modality dropout, drop_modality (val, predict), fill_missing and the
errors, on tiny images generated in tmp_path and the 1-epoch model of conftest."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from conftest import IMGSZ, NO_AUG, build, make_suffix_set, noise_bgr, write, write_yaml

from ghost_yolo import GhostYOLO
from ghost_yolo.cli import entrypoint
from ghost_yolo.data.io import load_pair
from ghost_yolo.data.missing import FILL, ModalityDropout, check_drop_modality, check_modality_dropout
from ghost_yolo.models.model import GhostDetectionModel


def blanked(img: torch.Tensor) -> tuple[bool, bool]:
    """(colour blanked, IR blanked) of a C x H x W sample."""
    return bool((img[:3] == FILL).all()), bool((img[3] == FILL).all())


def copy_pairs(src: Path, dst: Path, n: int, fill: str | None = None) -> Path:
    """Copy the first n pairs of a folder (labels alongside); ``fill`` replaces that half of each pair by a flat FILL
    image of the same size, as a dataset in which that sensor is missing would look."""
    (dst / "images").mkdir(parents=True)
    (dst / "labels").mkdir()
    for co in sorted(src.glob("*_co.png"))[:n]:
        ir = co.with_name(co.name.replace("_co", "_ir"))
        for f, band in ((co, "rgb"), (ir, "ir")):
            if band == fill:
                im = cv2.imread(str(f), cv2.IMREAD_UNCHANGED)
                cv2.imwrite(str(dst / "images" / f.name), np.full_like(im, FILL))
            else:
                shutil.copy(f, dst / "images" / f.name)
        label = src.parent.parent / "labels" / src.name / f"{co.stem[:-3]}.txt"
        if label.exists():
            shutil.copy(label, dst / "labels" / label.name)
    return dst


# The fill rule --------------------------------------------------------------------------------------------------------
def test_missing_half_is_filled_at_the_other_half_size(tmp_path):
    co = write(tmp_path / "a_co.png", noise_bgr(0))
    ir = write(tmp_path / "b_ir.png", noise_bgr(1)[..., 0])
    no_ir = load_pair(co, None, "rgb+ir")
    assert no_ir.shape == (96, 128, 4) and (no_ir[..., 3] == FILL).all()
    np.testing.assert_array_equal(no_ir[..., :3], cv2.imread(str(co))[..., ::-1])
    no_co = load_pair(None, ir, "rgb+ir")
    assert (no_co[..., :3] == FILL).all()
    np.testing.assert_array_equal(no_co[..., 3], cv2.imread(str(ir), cv2.IMREAD_UNCHANGED))
    assert load_pair(co, None, "rgb").shape == (96, 128, 3)  # a colour model needs no IR
    with pytest.raises(FileNotFoundError, match="neither"):
        load_pair(None, None, "rgb+ir")


# modality_dropout -----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pairs_yaml(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("pairs")
    make_suffix_set(root, n=6)
    return write_yaml(root)


@pytest.mark.parametrize("p", [0.3, 0.8])
def test_modality_dropout_rate_and_what_it_keeps(pairs_yaml, p):
    """Seeded: the band is blanked in about p of the samples, IR and colour alike; boxes and the other band are
    exactly those of the same sample without dropout."""
    plain = build(pairs_yaml, "train", **NO_AUG)
    dropped = build(pairs_yaml, "train", ghost={"modality_dropout": p}, **NO_AUG)
    assert any(isinstance(t, ModalityDropout) for t in dropped.transforms.transforms)
    base = [plain[i] for i in range(len(plain))]
    random.seed(0)
    n, counts = 300, {"rgb": 0, "ir": 0}
    for k in range(n):
        i = k % len(dropped)
        s = dropped[i]
        torch.testing.assert_close(s["bboxes"], base[i]["bboxes"])
        torch.testing.assert_close(s["cls"], base[i]["cls"])
        rgb, ir = blanked(s["img"])
        assert not (rgb and ir)
        if rgb:
            counts["rgb"] += 1
            assert torch.equal(s["img"][3], base[i]["img"][3])
        elif ir:
            counts["ir"] += 1
            assert torch.equal(s["img"][:3], base[i]["img"][:3])
        else:
            assert torch.equal(s["img"], base[i]["img"])
    rate = (counts["rgb"] + counts["ir"]) / n
    assert abs(rate - p) < 0.08, (rate, p)  # binomial sd at n=300 is under 0.03
    assert abs(counts["rgb"] - counts["ir"]) < 0.25 * (counts["rgb"] + counts["ir"]), counts
    random.seed(0)
    again = [blanked(dropped[k % len(dropped)]["img"]) for k in range(40)]
    random.seed(0)
    assert again == [blanked(dropped[k % len(dropped)]["img"]) for k in range(40)]  # the seed decides


def test_modality_dropout_leaves_cached_images_intact(pairs_yaml):
    """The blanked band is a copy: the images buffered for mosaic keep both bands."""
    ds = build(pairs_yaml, "train", ghost={"modality_dropout": 1.0}, **NO_AUG)
    for i in range(len(ds)):
        ds[i]
    kept = [im for im in ds.ims if im is not None]
    assert kept and all(not (im[..., 3] == FILL).all() and not (im[..., :3] == FILL).all() for im in kept)
    # the transform itself never writes into the array it is given (in the pipeline that may be the cached image)
    img = ds.ims[next(i for i, im in enumerate(ds.ims) if im is not None)]
    before = img.copy()
    out = ModalityDropout(1.0, ("ir",))({"img": img})["img"]
    assert np.array_equal(img, before) and (out[..., 3] == FILL).all()


def test_modality_dropout_only_in_training(pairs_yaml):
    ds = build(pairs_yaml, "val", ghost={"modality_dropout": 1.0})
    assert not any(isinstance(t, ModalityDropout) for t in ds.transforms.transforms)
    assert not any(blanked(ds[i]["img"])[0] or blanked(ds[i]["img"])[1] for i in range(len(ds)))


# drop_modality --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("band", ["ir", "rgb"])
def test_drop_modality_val_dataset_equals_data_without_that_band(pairs_yaml, tmp_path, band):
    root = pairs_yaml.parent
    filled = write_yaml(copy_pairs(root / "images" / "train", tmp_path / "filled", 6, fill=band), train="images")
    dropped = build(pairs_yaml, "val", ghost={"drop_modality": band})
    reference, full = build(filled, "val"), build(pairs_yaml, "val")
    for i in range(len(dropped)):
        assert torch.equal(dropped[i]["img"], reference[i]["img"])
        assert not torch.equal(dropped[i]["img"], full[i]["img"])


@pytest.fixture
def val_run(monkeypatch, trained, tmp_path):
    """Validate best.pt of the float test model; returns (metrics, per image: the head's raw output and the
    predictions the validator scored). Boxes after NMS can agree for two inputs, so the raw output is what tells them
    apart."""
    from ghost_yolo.engine.validator import GhostValidator

    seen = []
    postprocess = GhostValidator.postprocess

    def recording(self, preds):
        out = postprocess(self, preds)
        raw = preds[0] if isinstance(preds, (list, tuple)) else preds  # the head's output, before NMS
        seen.extend({"raw": r.clone(), **{k: v.clone() for k, v in p.items()}} for r, p in zip(raw, out))
        return out

    monkeypatch.setattr(GhostValidator, "postprocess", recording)

    def run(data: Path, **kw) -> tuple[dict, list]:
        seen.clear()
        m = GhostYOLO(trained / "weights" / "best.pt").val(data=str(data), imgsz=IMGSZ, batch=4, plots=False,
                                                           conf=0.001, project=str(tmp_path / "val"), **kw)
        return m.results_dict, list(seen)

    return run


def same(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
                                    for x, y in zip(a, b))


def test_drop_modality_val_differs_from_full_and_equals_filled_data(val_run, trained, easy_yaml, tmp_path):
    filled = copy_pairs(easy_yaml.parent / "images" / "val", tmp_path / "filled", 8, fill="ir")
    full = copy_pairs(easy_yaml.parent / "images" / "val", tmp_path / "full", 8)
    names = GhostYOLO(trained / "weights" / "best.pt").model.names
    for root in (filled, full):
        write_yaml(root, train="images", names=names)
    m_drop, p_drop = val_run(full / "data.yaml", drop_modality="ir")
    m_fill, p_fill = val_run(filled / "data.yaml")
    m_full, p_full = val_run(full / "data.yaml")
    assert sum(len(p["conf"]) for p in p_drop) > 0 and m_full["metrics/mAP50(B)"] > 0
    assert m_drop["metrics/mAP50(B)"] > 0  # the learned model still finds objects in colour alone: a real comparison
    assert same(p_drop, p_fill) and m_drop == m_fill
    assert not same(p_drop, p_full)


# predict --------------------------------------------------------------------------------------------------------------
def boxes(results) -> list[list[float]]:
    return [r.boxes.data.tolist() for r in results]


@pytest.fixture
def raw_predictions(monkeypatch) -> list:
    """The head's raw output of every image predicted while the test runs (before NMS, see ``val_run``)."""
    from ghost_yolo.engine.predictor import GhostPredictor

    seen = []
    postprocess = GhostPredictor.postprocess

    def recording(self, preds, img, orig_imgs, **kwargs):
        raw = preds[0] if isinstance(preds, (list, tuple)) else preds
        seen.extend(r.clone() for r in raw)
        return postprocess(self, preds, img, orig_imgs, **kwargs)

    monkeypatch.setattr(GhostPredictor, "postprocess", recording)
    return seen


def test_predict_drop_modality_equals_filled_input(trained, synth_yaml, tmp_path, raw_predictions):
    best = trained / "weights" / "best.pt"
    full = copy_pairs(synth_yaml.parent / "images" / "val", tmp_path / "full", 3) / "images"
    filled = copy_pairs(synth_yaml.parent / "images" / "val", tmp_path / "filled", 3, fill="rgb") / "images"
    kw = dict(imgsz=IMGSZ, conf=0.001, max_det=30, verbose=False)
    model = GhostYOLO(best)
    runs = []
    for source, extra in ((full, {"drop_modality": "rgb"}), (filled, {}), (full, {})):
        raw_predictions.clear()
        results = model.predict(str(source), **kw, **extra)
        runs.append((boxes(results), list(raw_predictions), results))
    (dropped, raw_dropped, results), (ref, raw_ref, _), (_, raw_full, _) = runs
    assert dropped == ref and len(raw_dropped) == 3
    assert all(torch.equal(a, b) for a, b in zip(raw_dropped, raw_ref))
    assert not any(torch.equal(a, b) for a, b in zip(raw_dropped, raw_full))
    assert not (results[0].orig_img == FILL).all()  # the saved plots keep the real images


def test_fill_missing_predicts_orphans_warned_once(trained, synth_yaml, tmp_path, log):
    best = trained / "weights" / "best.pt"
    src = copy_pairs(synth_yaml.parent / "images" / "val", tmp_path / "src", 3) / "images"
    lonely_co = src / "lonely_co.png"
    shutil.move(src / sorted(p.name for p in src.glob("*_co.png"))[0], lonely_co)  # its IR partner is left alone
    lonely_ir = sorted(src.glob("*_ir.png"))[0]
    assert not (src / lonely_ir.name.replace("_ir", "_co")).exists()
    kw = dict(imgsz=IMGSZ, conf=0.001, max_det=30, verbose=False)
    model = GhostYOLO(best)

    default = model.predict(str(src), **kw)
    assert len(default) == 2
    assert f"{lonely_co}: missing IR partner" in log.text and "skipped" in log.text
    log.clear()

    results = model.predict(str(src), fill_missing=True, batch=2, **kw)
    assert len(results) == 4
    lines = [x for x in log.text.splitlines() if "filled" in x]
    assert sum(str(lonely_co) in x for x in lines) == 1 and sum(str(lonely_ir) in x for x in lines) == 1
    by_path = {Path(r.path).name: r for r in results}
    assert (by_path[lonely_ir.name].orig_img[..., :3] == FILL).all()
    assert (by_path["lonely_co.png"].ir_img == FILL).all()
    # what the model saw is the pair with a flat IR image: the same rule as drop_modality and modality_dropout
    ref = tmp_path / "ref"
    ref.mkdir()
    shutil.copy(lonely_co, ref / "x_co.png")
    cv2.imwrite(str(ref / "x_ir.png"), np.full(cv2.imread(str(lonely_co)).shape[:2], FILL, np.uint8))
    assert boxes([by_path["lonely_co.png"]]) == boxes(model.predict(str(ref), **kw))


def test_fill_missing_val_keeps_orphans_noted_once(tmp_path, log):
    make_suffix_set(tmp_path, n=3)
    d = tmp_path / "images" / "train"
    (d / "0000_ir.png").unlink()  # colour without IR
    (d / "0001_co.png").unlink()  # IR without colour (its label is labels/train/0001.txt)
    y = write_yaml(tmp_path)
    assert len(build(y, "val")) == 1
    log.clear()
    ds = build(y, "val", ghost={"fill_missing": True})
    assert len(ds) == 3
    assert sum("0000_co.png: missing IR partner" in x and "IR band filled" in x for x in log.text.splitlines()) == 1
    assert sum("0001_ir.png: IR image without colour partner" in x for x in log.text.splitlines()) == 1
    by_name = {Path(f).name: i for i, f in enumerate(ds.im_files)}
    assert (ds[by_name["0000_co.png"]]["img"][3] == FILL).all()
    orphan = ds[by_name["0001_ir.png"]]
    assert (orphan["img"][:3] == FILL).all() and len(orphan["cls"]) == 2  # its pair's labels


# Bad input ------------------------------------------------------------------------------------------------------------
def test_checks():
    assert check_drop_modality(None) is None and check_drop_modality("IR", "rgb+ir") == "ir"
    with pytest.raises(ValueError, match="use ir or rgb"):
        check_drop_modality("thermal")
    with pytest.raises(ValueError, match="needs an rgb\\+ir model, but this one takes rgb only"):
        check_drop_modality("ir", "rgb")
    assert check_modality_dropout(0.5, "rgb+ir") == 0.5 and check_modality_dropout(None) == 0.0
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError, match="outside \\[0, 1\\]"):
            check_modality_dropout(bad)
    with pytest.raises(ValueError, match="needs rgb\\+ir data"):
        check_modality_dropout(0.3, "ir")


def test_drop_modality_refused_in_training(synth_yaml, tmp_path):
    """Training with drop_modality would validate, and pick best.pt, without that band: refused before anything runs,
    pointing to modality_dropout."""
    with pytest.raises(ValueError, match=r"drop_modality=ir is a val/predict key.*modality_dropout="):
        GhostYOLO("ghost-n.yaml").train(data=str(synth_yaml), epochs=1, imgsz=IMGSZ, drop_modality="ir",
                                        project=str(tmp_path))
    assert not any(tmp_path.iterdir())


@pytest.fixture
def rgb_model(tmp_path) -> Path:
    """An untrained 3-channel (colour-only) checkpoint."""
    model = GhostDetectionModel("ghost-n.yaml", ch=3, nc=8, verbose=False)
    model.names = {i: str(i) for i in range(8)}
    torch.save({"model": model, "train_args": {"imgsz": IMGSZ}}, tmp_path / "rgb.pt")
    return tmp_path / "rgb.pt"


def test_errors_are_one_clear_line(log, synth_yaml, rgb_model, tmp_path):
    val = synth_yaml.parent / "images" / "val"
    cases = {
        f"val model={rgb_model} data={synth_yaml} imgsz={IMGSZ} drop_modality=ir": "drop_modality=ir needs an rgb+ir model",
        f"predict model={rgb_model} source={val} imgsz={IMGSZ} drop_modality=rgb": "drop_modality=rgb needs an rgb+ir model",
        f"val model={rgb_model} data={synth_yaml} imgsz={IMGSZ} drop_modality=thermal": "use ir or rgb",
        f"train data={synth_yaml} epochs=1 imgsz={IMGSZ} modality_dropout=1.5 project={tmp_path}":
            "modality_dropout=1.5 is outside [0, 1]",
        f"train data={synth_yaml} epochs=1 imgsz={IMGSZ} modality=rgb modality_dropout=0.5 project={tmp_path}":
            "modality_dropout=0.5 needs rgb+ir data",
        f"train data={synth_yaml} epochs=1 imgsz={IMGSZ} drop_modality=ir project={tmp_path}":
            "drop_modality=ir is a val/predict key",
        f"train data={synth_yaml} epochs=1 imgsz={IMGSZ} drop_modality=rgb folds=1-2 project={tmp_path}":
            "use modality_dropout=0.3",
    }
    for cmd, expected in cases.items():
        log.clear()
        assert entrypoint(cmd) == 2, cmd
        errors = [x for x in log.text.splitlines() if "error:" in x]
        assert len(errors) == 1 and expected in errors[0], (cmd, log.text[-500:])
        assert "Traceback" not in log.text
    assert not any(tmp_path.glob("**/weights/*.pt"))  # refused before training
