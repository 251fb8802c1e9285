"""The VEDAI k-fold protocol in one command: a fake official distribution with 3 folds, converted, trained fold by fold
(tiny W8 runs from the float test model, on easy-set images it learned: the folds score above 0), folds.csv and the
table, no retraining on a repeat, and the errors."""

from __future__ import annotations

import json
import logging
import statistics
from io import StringIO
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import EASY_SIZE, IMGSZ, draw_easy, read_csv

from ghost_yolo import GhostYOLO
from ghost_yolo.cli import entrypoint
from ghost_yolo.data.vedai import VEDAI_NAMES, convert_vedai
from ghost_yolo.engine.folds import fold_row, fold_yamls, parse_folds

N_PAIRS, PER_FOLD = 12, 4
# fold k tests on four pairs and trains on the other eight, as VEDAI's fold lists do
FOLDS = {k: [i for i in range(N_PAIRS) if i // PER_FOLD == k - 1] for k in (1, 2, 3)}
ARGS = f"imgsz={IMGSZ} epochs=1 bits=8 kd=none batch=4 workers=0 plots=False seed=0 deterministic=True warmup_epochs=0"
RAW = {0: 1, 1: 11}  # easy-set class id -> VEDAI raw code (car, pickup), which the converter maps back to 0 and 1


def annotation(boxes: list[tuple]) -> str:
    """The easy objects in VEDAI's 14-field format: centre, angle 0, raw class, flags, then the corners' x and y."""
    lines = []
    for c, x0, y0, w, h in boxes:
        xs, ys = [x0, x0 + w, x0 + w, x0], [y0, y0, y0 + h, y0 + h]
        lines.append(" ".join(f"{v:.6f}" for v in (x0 + w / 2, y0 + h / 2, 0.0)) + f" {RAW[c]} 1 0 "
                     + " ".join(str(v) for v in (*xs, *ys)))
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def vedai(tmp_path_factory) -> Path:
    """A small distribution in the official layout (Vehicules512/, Annotations512/ with fold lists), converted; returns
    the converted dataset's folder (vedai-fold01.yaml ... vedai-fold03.yaml)."""
    src = tmp_path_factory.mktemp("official")
    img_dir, ann_dir = src / "Vehicules512", src / "Annotations512"
    img_dir.mkdir()
    ann_dir.mkdir()
    rng = np.random.default_rng(1)  # not the easy set's own images
    for i in range(N_PAIRS):
        colour, ir, boxes = draw_easy(rng, EASY_SIZE)
        cv2.imwrite(str(img_dir / f"{i:08d}_co.png"), colour)
        cv2.imwrite(str(img_dir / f"{i:08d}_ir.png"), ir)
        (ann_dir / f"{i:08d}.txt").write_text(annotation(boxes))
    for k, test in FOLDS.items():
        (ann_dir / f"fold{k:02d}.txt").write_text("".join(f"{i:08d}\n" for i in range(N_PAIRS) if i not in test))
        (ann_dir / f"fold{k:02d}test.txt").write_text("".join(f"{i:08d}\n" for i in test))
    save = tmp_path_factory.mktemp("converted") / "vedai"
    assert len(convert_vedai(src, save)) == 3
    return save


class Log:
    """Collect what Ultralytics' logger prints (it does not propagate to the root logger)."""

    def __init__(self) -> None:
        self.stream = StringIO()
        self.handler = logging.StreamHandler(self.stream)

    def __enter__(self) -> Log:
        logging.getLogger("ultralytics").addHandler(self.handler)
        return self

    def __exit__(self, *exc) -> None:
        logging.getLogger("ultralytics").removeHandler(self.handler)

    @property
    def text(self) -> str:
        return self.stream.getvalue()


@pytest.fixture(scope="module")
def start(trained) -> Path:
    """What every fold starts from: the float test model (it learned the easy objects, under the VEDAI names)."""
    return trained / "weights" / "best.pt"


@pytest.fixture(scope="module")
def first_run(vedai, start, tmp_path_factory) -> tuple[Path, str]:
    """`ghost train model=best.pt data=.../vedai-fold01.yaml folds=1-3 ...` as a user types it; returns (folds root,
    printed text)."""
    project = tmp_path_factory.mktemp("runs")
    with Log() as log:
        assert entrypoint(f"train model={start} data={vedai / 'vedai-fold01.yaml'} folds=1-3 {ARGS} project={project} "
                          "name=k") == 0
    return project / "k", log.text


def read_rows(root: Path) -> list[dict[str, str]]:
    return read_csv(root / "folds.csv")


def mtimes(root: Path) -> dict[str, float]:
    return {p.parent.parent.name: p.stat().st_mtime_ns for p in sorted(root.glob("fold*/weights/best.pt"))}


def test_each_fold_trained_and_reported(first_run):
    root, text = first_run
    assert sorted(p.name for p in root.iterdir() if p.is_dir()) == ["fold01", "fold02", "fold03"]
    for k in (1, 2, 3):
        assert (root / f"fold{k:02d}" / "summary.json").is_file()
        assert Path(fold_row(k, root / f"fold{k:02d}")["summary"]["data"]).name == f"vedai-fold{k:02d}.yaml"
    rows = read_rows(root)
    assert [r["fold"] for r in rows] == ["1", "2", "3", "mean", "std"]
    assert list(rows[0]) == ["fold", "mAP50", "mAP50-95", "size_MB", "GBOPs", "avg_bits", "epochs", "run"]
    folds, mean, std = rows[:3], rows[3], rows[4]
    for r in folds:
        metrics = json.loads((Path(r["run"]) / "summary.json").read_text())["metrics"]  # the fold's own final val
        assert float(r["mAP50"]) > 0, f"fold {r['fold']} learned nothing: folds.csv would compare zeros"
        assert float(r["mAP50"]) == pytest.approx(metrics["mAP50"], rel=1e-4, abs=1e-9)
        assert float(r["mAP50-95"]) == pytest.approx(metrics["mAP50-95"], rel=1e-4, abs=1e-9)
        assert float(r["mAP50-95"]) <= float(r["mAP50"])
        assert float(r["size_MB"]) > 0 and float(r["GBOPs"]) > 0 and 7.5 < float(r["avg_bits"]) <= 8
        assert r["epochs"] == "1" and Path(r["run"]).parent == root
    for key in ("mAP50", "mAP50-95", "size_MB", "GBOPs", "avg_bits"):
        values = [float(r[key]) for r in folds]
        assert float(mean[key]) == pytest.approx(statistics.fmean(values), rel=1e-3, abs=1e-6)
        assert float(std[key]) == pytest.approx(statistics.stdev(values), rel=1e-3, abs=1e-6)
    # the printed table: a row per fold, mean and ± std, and the protocol line
    assert "ghost folds" in text and "± std" in text and str(root / "folds.csv") in text
    protocol = next(line for line in text.splitlines() if "protocol:" in line)
    for part in ("folds 1, 2, 3 = the mean of 3 folds, not VEDAI's 10-fold mean", f"8 classes ({VEDAI_NAMES[0]}, ",
                 "imgsz 64", "epochs 1", "bits 8", "kd none", "model ghost-n.yaml", "modality rgb+ir"):
        assert part in protocol, (part, protocol)


def test_repeat_does_not_retrain(first_run, start, vedai):
    root, _ = first_run
    before, rows = mtimes(root), read_rows(root)
    with Log() as log:
        out = GhostYOLO(start).train(data=str(vedai / "vedai-fold01.yaml"), folds=[1, 2, 3], imgsz=IMGSZ, epochs=1,
                                     bits=8, kd="none", batch=4, workers=0, plots=False, seed=0, deterministic=True,
                                     warmup_epochs=0, project=str(root.parent), name=root.name)
    assert mtimes(root) == before and len(before) == 3
    assert log.text.count("not trained again") == 3 and "training on" not in log.text
    assert read_rows(root) == rows
    assert [r["fold"] for r in out["folds"]] == [1, 2, 3] and out["csv"] == root / "folds.csv"


def test_other_settings_are_refused_not_mixed(first_run, start, vedai, log):
    root, _ = first_run
    before = mtimes(root)
    cmd = f"train model={start} data={vedai / 'vedai-fold01.yaml'} folds=1-3 {ARGS.replace('epochs=1', 'epochs=2')} " \
          f"project={root.parent} name={root.name}"
    assert entrypoint(cmd) == 2
    errors = [x for x in log.text.splitlines() if "error:" in x]
    assert len(errors) == 1 and "was trained with epochs=1, this command asks for epochs=2" in errors[0]
    assert "name=" in errors[0] and mtimes(root) == before


def test_whole_args_yaml_compared(first_run, start, vedai, log):
    """A repeat is compared with the finished folds' whole args.yaml, not only the keys it passes: a key it leaves at
    its default that the folds were trained without is refused, every differing key named; keys that do not change
    the result (plots, workers, verbose) may differ."""
    root, _ = first_run
    before = mtimes(root)
    data = vedai / "vedai-fold01.yaml"
    fewer = ARGS.replace(" warmup_epochs=0", "")  # the folds ran with warmup_epochs=0; the default is 3
    assert entrypoint(f"train model={start} data={data} folds=1-3 {fewer} lr0=0.02 project={root.parent} "
                      f"name={root.name}") == 2
    errors = [x for x in log.text.splitlines() if "error:" in x]
    assert len(errors) == 1, errors
    assert "was trained with lr0=0.01, warmup_epochs=0, this command asks for lr0=0.02, warmup_epochs=3" in errors[0]
    assert mtimes(root) == before
    plumbing = ARGS.replace("workers=0 plots=False", "workers=1 plots=True verbose=False")
    assert entrypoint(f"train model={start} data={data} folds=1-3 {plumbing} project={root.parent} "
                      f"name={root.name}") == 0
    assert mtimes(root) == before and log.text.count("not trained again") == 3


@pytest.mark.slow
def test_unfinished_fold_is_trained_again(first_run, start, vedai):
    root, _ = first_run
    before = mtimes(root)
    (root / "fold02" / "summary.json").unlink()  # as if interrupted before its final validation
    with Log() as log:
        assert entrypoint(f"train model={start} data={vedai / 'vedai-fold03.yaml'} folds=1-3 {ARGS} project={root.parent} "
                          f"name={root.name}") == 0
    after = mtimes(root)
    assert after["fold01"] == before["fold01"] and after["fold03"] == before["fold03"]
    assert after["fold02"] != before["fold02"] and (root / "fold02" / "summary.json").is_file()
    assert "unfinished run" in log.text and log.text.count("not trained again") == 2
    assert [r["fold"] for r in read_rows(root)] == ["1", "2", "3", "mean", "std"]


def test_missing_folds_named_in_one_line(vedai, log, tmp_path):
    assert entrypoint(f"train data={vedai / 'vedai-fold01.yaml'} folds=1-5 {ARGS} project={tmp_path}") == 2
    errors = [x for x in log.text.splitlines() if "error:" in x]
    assert len(errors) == 1
    assert "folds=1-5: no data YAML for 2 of the 5 folds: missing vedai-fold04.yaml, vedai-fold05.yaml" in errors[0]
    assert str(vedai) in errors[0] and not any(tmp_path.iterdir())  # nothing trained


@pytest.mark.parametrize("spec, data, expected", [
    ("1-3", "vedai.yaml", "folds= needs data= one fold's data YAML, named like vedai-fold01.yaml"),
    ("one", "vedai-fold01.yaml", "folds=one is not a list of folds"),
    ("3-1", "vedai-fold01.yaml", "ranges go up"),
])
def test_bad_folds_arguments(log, vedai, spec, data, expected):
    assert entrypoint(f"train data={vedai / data} folds={spec} epochs=1") == 2
    assert expected in log.text and "Traceback" not in log.text


def test_fold_selection(vedai):
    assert parse_folds("1-3") == [1, 2, 3] and parse_folds([3, 1]) == [1, 3] and parse_folds("1,3") == [1, 3]
    assert parse_folds(2) == [2] and parse_folds("all") is None
    assert list(fold_yamls(vedai / "vedai-fold02.yaml", "all")) == [1, 2, 3]
    assert fold_yamls(vedai / "vedai-fold01.yaml", [3])[3] == vedai / "vedai-fold03.yaml"


def test_float_fold_counts_its_model(trained):
    """A float run's summary has no quantization section: size and BOPs are counted on its best.pt (32 bits)."""
    row = fold_row(1, trained)
    assert row["avg_bits"] == 32 and row["size_MB"] > 5 and row["GBOPs"] > 0
