"""Shared sizes, helpers and fixtures.

- Sizes: ``IMGSZ`` (train/val/predict size of every tiny run), ``H, W`` (4:3 colour images the data tests write).
- Tiny paired data written by the data tests: ``noise_bgr``, ``write``, ``write_label``, ``make_suffix_set``,
  ``make_folders_set``, ``write_yaml``, ``build`` (ghost's ``build_dataset`` as the trainer calls it), ``sample``.
- A tiny model: ``tiny_quant_model`` (ghost-n at W4 with a distiller) and ``fake_batch`` (a 4-channel batch for it).
- ``read_csv``: results.csv / layers.csv / gates.csv rows as dicts keyed by the header's column names.
- ``draw_easy``: one image of the easy set (large high-contrast objects seen in colour and IR) and its boxes.
- Session fixtures: ``synth_yaml`` (a generated 8-class vedai-synth set, for tests about that set itself),
  ``easy_yaml`` (the easy set: a model learns it in a few epochs), ``trained`` (a float model that learned the easy
  set), ``qtrained`` (the whole quantized pipeline, from that model, on the easy set); ``log`` captures Ultralytics'
  logger. Tests that compare metrics across paths use ``trained`` / ``qtrained`` on ``easy_yaml``, so they compare
  figures well above 0 (``MAP50_FLOOR`` / ``QMAP50_FLOOR``, guarded in test_engine.py / test_quant_train.py).

Slow tests: ``@pytest.mark.slow`` marks a test that runs a real training itself (or a CLI subprocess that trains);
any test that requests one of ``TRAINING_FIXTURES`` is marked slow here at collection, since that fixture trains.
``python -m pytest tests -m "not slow"`` is the quick run.

Parallel runs: the suite runs on every core with pytest-xdist (``-n auto --dist loadgroup`` in pyproject's addopts;
``-n 0`` runs it in one process). Each worker trains on one torch thread (``OMP_NUM_THREADS=1`` unless the user
set it: two workers of two threads each on two cores would contend), the tests that share the session fixtures
``trained`` / ``qtrained`` go to one worker (built once), and the other tests of a file stay together (their module
fixtures are built once).

Test files import the helpers with ``from conftest import ...`` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

import csv
import logging
import os
import random
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("YOLO_OFFLINE", "1")

IMGSZ = 64  # the size every tiny train / val / predict / export runs at
H, W = 96, 128  # colour images the data tests write (4:3), loaded at long side IMGSZ
NAMES = {0: "car", 1: "van"}
BOX_LABELS = "0 0.30 0.30 0.20 0.20\n1 0.70 0.60 0.25 0.20\n"
# Easy set: two shapes (ids 0 and 1 of the VEDAI names, so a model that learned it also starts VEDAI-format runs)
EASY_SIZE, EASY_TRAIN, EASY_VAL = 64, 64, 16
MAP50_FLOOR = 0.25  # the float fixture ``trained`` reaches at least this mAP50 on the easy val split
EASY_EPOCHS = 20  # float epochs of ``trained`` (15 reach only mAP50 ~0.09, 20 ~0.74)
QMAP50_FLOOR = 0.1  # the quantized fixture ``qtrained`` keeps at least this
GHOST_KEYS = ("modality", "rgb_suffix", "ir_suffix", "rgb_dir", "ir_dir")
NO_AUG = dict(mosaic=0.0, mixup=0.0, cutmix=0.0, copy_paste=0.0, degrees=0.0, translate=0.0, scale=0.0, shear=0.0,
              perspective=0.0, fliplr=0.0, flipud=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)  # fmt: skip

# Fixtures that train a model: every test requesting one (directly or through another fixture) is marked slow.
TRAINING_FIXTURES = frozenset({"trained", "qtrained", "cli_run", "first_run", "ranks"})


SHARED_TRAINED = frozenset({"trained", "qtrained"})  # session fixtures that train: their tests share one worker


def pytest_configure(config):
    """Under pytest-xdist, before the workers start: one torch thread per worker unless the user chose a count."""
    workers = getattr(config.option, "numprocesses", None)
    if workers and not os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # the workers inherit it (ghost's trainer honours it)


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    """Mark tests that need a training fixture as slow, so ``-m "not slow"`` never builds one; group tests for
    ``--dist loadgroup``: those sharing ``trained`` / ``qtrained`` together, the others by file."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        if TRAINING_FIXTURES & names:
            item.add_marker(pytest.mark.slow)
        group = "trained" if SHARED_TRAINED & names else item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(group))


# Logging --------------------------------------------------------------------------------------------------------------
@pytest.fixture
def log(caplog):
    """Capture Ultralytics' logger at INFO (it does not propagate to root: attach pytest's handler to it)."""
    logger = logging.getLogger("ultralytics")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="ultralytics")
    yield caplog
    logger.removeHandler(caplog.handler)


# CSV by column name ---------------------------------------------------------------------------------------------------
def read_csv(path: Path) -> list[dict[str, str]]:
    """Rows of a CSV file as dicts keyed by its header (names and values stripped of padding)."""
    with open(path, newline="") as f:
        return [{k.strip(): v.strip() for k, v in row.items()} for row in csv.DictReader(f)]


# Tiny paired images ---------------------------------------------------------------------------------------------------
def noise_bgr(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """A random 8-bit BGR image: no two pixels or channels agree by accident."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write(path: Path, im: np.ndarray) -> Path:
    """Write an image with cv2, creating folders, and fail loudly if cv2 could not."""
    import cv2

    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), im), path
    return path


def write_label(path: Path, text: str = BOX_LABELS) -> Path:
    """Write a label file, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def make_suffix_set(root: Path, n: int = 4, split: str = "train", rgb_suffix: str = "_co", ir_suffix: str = "_ir",
                    co_ext: str = ".png", ir_ext: str = ".png", ir_of=None, labels=None,
                    label_style: str = "id") -> Path:
    """VEDAI-style pairs images/<split>/0000_co.png + 0000_ir.png; labels/<split>/0000.txt (or 0000_co.txt).

    ir_of(bgr, i) gives the IR image (default: the colour image's R channel); labels(i) the label text.
    """
    for i in range(n):
        bgr = noise_bgr(i)
        stem = f"{i:04d}"
        write(root / "images" / split / f"{stem}{rgb_suffix}{co_ext}", bgr)
        write(root / "images" / split / f"{stem}{ir_suffix}{ir_ext}", bgr[..., 2] if ir_of is None else ir_of(bgr, i))
        name = stem if label_style == "id" else f"{stem}{rgb_suffix}"
        write_label(root / "labels" / split / f"{name}.txt", BOX_LABELS if labels is None else labels(i))
    return root


def make_folders_set(root: Path, rgb_dir="visible", ir_dir="infrared", split="train", n=3, images_style=False,
                     labels_at=None) -> Path:
    """LLVIP-style parallel folders; labels in labels/<split>/ (or images/ -> labels/ when images_style)."""
    base = root / "images" if images_style else root
    for i in range(n):
        bgr = noise_bgr(i)
        write(base / rgb_dir / split / f"{190001 + i}.png", bgr)
        write(base / ir_dir / split / f"{190001 + i}.png", bgr[..., 2])
        lab = (root / "labels" / rgb_dir / split) if images_style else (labels_at or root / "labels" / split)
        write_label(lab / f"{190001 + i}.txt")
    return root


def write_yaml(root: Path, train: str = "images/train", val: str | None = None, **extra) -> Path:
    """A data YAML with an absolute path; suffix pairing unless extra says otherwise."""
    import yaml

    spec = {"path": str(root), "train": train, "val": val or train, "names": NAMES, "pairing": "suffix", **extra}
    spec = {k: v for k, v in spec.items() if v is not None}
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def make_cfg(ghost: dict | None = None, **overrides):
    """Ultralytics' cfg namespace (imgsz IMGSZ) with the ghost keys set as attributes."""
    from ultralytics.cfg import get_cfg

    cfg = get_cfg(overrides={"imgsz": IMGSZ, "workers": 0, **overrides})
    for k in GHOST_KEYS:
        setattr(cfg, k, None)
    cfg.ir_jitter = 0.0
    for k, v in (ghost or {}).items():
        setattr(cfg, k, v)
    return cfg


def build(yaml_path: Path, mode: str = "val", modality: str | None = None, ghost: dict | None = None, **overrides):
    """Build the dataset of a data YAML through ghost's build_dataset, as the trainer and validator do."""
    from ghost_yolo.data.check import build_dataset, check_data

    data = check_data(str(yaml_path), modality, ghost)
    cfg = make_cfg(ghost, **overrides)
    return build_dataset(cfg, data["train" if mode == "train" else "val"], 2, data, mode)


def sample(ds, i: int, seed: int = 0):
    """dataset[i]['img'] (C x H x W uint8 tensor) with Python and NumPy random state seeded."""
    random.seed(seed)
    np.random.seed(seed)
    return ds[i]["img"]


# The easy set ---------------------------------------------------------------------------------------------------------
def draw_easy(rng: np.random.Generator, size: int = EASY_SIZE) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
    """One easy RGB+IR pair: a dark noisy background with 1-2 non-overlapping objects that stand out in both bands.

    Class 0 is a white square (16-25 px) that is white-hot in IR; class 1 a blue bar (26-35 x 12-17 px, horizontal
    or vertical) that is warm (dimmer) in IR. Returns (BGR image, IR image, [(cls, x0, y0, w, h), ...]) in pixels.
    """
    bgr = rng.integers(20, 60, (size, size, 3), dtype=np.uint8)
    ir = rng.integers(20, 60, (size, size), dtype=np.uint8)
    boxes: list[tuple] = []
    for _ in range(int(rng.integers(1, 3))):
        c = int(rng.integers(0, 2))
        for _try in range(20):  # a free spot (the last try is kept if none is found)
            if c == 0:
                w = h = int(rng.integers(16, 26))
            else:
                w, h = int(rng.integers(26, 36)), int(rng.integers(12, 18))
                if rng.random() < 0.5:
                    w, h = h, w
            x0, y0 = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
            if all(x0 + w <= a or a + aw <= x0 or y0 + h <= b or b + bh <= y0 for _, a, b, aw, bh in boxes):
                break
        bgr[y0 : y0 + h, x0 : x0 + w] = (230, 230, 230) if c == 0 else (220, 40, 40)  # BGR: white / blue
        ir[y0 : y0 + h, x0 : x0 + w] = 240 if c == 0 else 160
        boxes.append((c, x0, y0, w, h))
    return bgr, ir, boxes


def make_easy_set(root: Path, n_train: int = EASY_TRAIN, n_val: int = EASY_VAL, seed: int = 0) -> Path:
    """The easy set in VEDAI's suffix layout (images/<split>/0000_co.png + 0000_ir.png, labels/<split>/0000.txt) and
    its data YAML (absolute path, suffix pairing, the 8 VEDAI names of which ids 0 and 1 occur); returns the YAML."""
    from ultralytics.utils import YAML

    from ghost_yolo.data.vedai import VEDAI_NAMES

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            bgr, ir, boxes = draw_easy(rng)
            s = EASY_SIZE
            write(root / "images" / split / f"{i:04d}_co.png", bgr)
            write(root / "images" / split / f"{i:04d}_ir.png", ir)
            write_label(root / "labels" / split / f"{i:04d}.txt", "".join(
                f"{c} {(x + w / 2) / s:.6f} {(y + h / 2) / s:.6f} {w / s:.6f} {h / s:.6f}\n" for c, x, y, w, h in boxes))
    yaml = root / "easy.yaml"
    YAML.save(yaml, {"path": str(root), "train": "images/train", "val": "images/val", "pairing": "suffix",
                     "names": VEDAI_NAMES})
    return yaml


def draw_easy_obb(rng: np.random.Generator, size: int = EASY_SIZE) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
    """One easy oriented RGB+IR pair: like ``draw_easy`` but each object is turned by a random angle (class 0 a white
    square, white-hot in IR; class 1 a blue 3:1 bar, warm in IR). Returns (BGR, IR, [(cls, 4 x 2 corners), ...]) in
    pixels, corners in order around the rectangle."""
    import cv2

    bgr = rng.integers(20, 60, (size, size, 3), dtype=np.uint8)
    ir = rng.integers(20, 60, (size, size), dtype=np.uint8)
    objects: list[tuple] = []
    taken: list[tuple] = []
    for _ in range(int(rng.integers(1, 3))):
        c = int(rng.integers(0, 2))
        w, h = (int(rng.integers(16, 24)),) * 2 if c == 0 else (int(rng.integers(30, 38)), int(rng.integers(10, 13)))
        angle = float(rng.uniform(0, 180))
        corners = cv2.boxPoints(((0.0, 0.0), (w, h), angle))
        half = np.abs(corners).max(0)
        for _try in range(20):  # a free spot for the enclosing box (the last try is kept if none is found)
            cx, cy = (float(rng.uniform(half[i], size - half[i])) for i in (0, 1))
            box = (cx - half[0], cy - half[1], cx + half[0], cy + half[1])
            if all(box[2] <= a[0] or a[2] <= box[0] or box[3] <= a[1] or a[3] <= box[1] for a in taken):
                break
        taken.append(box)
        pts = corners + (cx, cy)
        cv2.fillPoly(bgr, [np.round(pts).astype(np.int32)], (230, 230, 230) if c == 0 else (220, 40, 40))
        cv2.fillPoly(ir, [np.round(pts).astype(np.int32)], 240 if c == 0 else 160)
        objects.append((c, pts))
    return bgr, ir, objects


def make_easy_obb_set(root: Path, n_train: int = EASY_TRAIN, n_val: int = EASY_VAL, seed: int = 0) -> Path:
    """The easy oriented set (``draw_easy_obb``) in the easy set's layout with OBB labels ('class x1 y1 ... y4',
    normalized); returns its data YAML."""
    from ultralytics.utils import YAML

    from ghost_yolo.data.vedai import VEDAI_NAMES

    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            bgr, ir, objects = draw_easy_obb(rng)
            write(root / "images" / split / f"{i:04d}_co.png", bgr)
            write(root / "images" / split / f"{i:04d}_ir.png", ir)
            write_label(root / "labels" / split / f"{i:04d}.txt", "".join(
                f"{c} " + " ".join(f"{v / EASY_SIZE:.6f}" for v in pts.ravel()) + "\n" for c, pts in objects))
    yaml = root / "easy-obb.yaml"
    YAML.save(yaml, {"path": str(root), "train": "images/train", "val": "images/val", "pairing": "suffix",
                     "names": VEDAI_NAMES})
    return yaml


# Recipe that makes ghost-n learn the easy set in a few epochs on CPU: no warm-up (Ultralytics' >= 100 warm-up
# iterations would use them all), AdamW at lr0=0.01 and no mosaic. With the default recipe the class scores stay
# below val's conf=0.001 (the head's prior) and mAP50 stays at 0.
EASY_RECIPE = dict(imgsz=IMGSZ, batch=8, workers=0, seed=0, deterministic=True, warmup_epochs=0, mosaic=0.0,
                   optimizer="AdamW", lr0=0.01)


# Tiny model and batch -------------------------------------------------------------------------------------------------
def fake_batch(n: int = 4) -> dict:
    """n random 4-channel IMGSZ images (seeded) with two boxes, on images 0 and 1."""
    import torch

    torch.manual_seed(1)
    return {"img": torch.rand(n, 4, IMGSZ, IMGSZ), "cls": torch.tensor([[0.0], [3.0]]),
            "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.6, 0.1, 0.3]]), "batch_idx": torch.tensor([0.0, 1.0])}


def tiny_quant_model(kd: str = "cls+dfl", float_self: str = "cotrain", weight: float = 1.0, **keys):
    """ghost-n (rgb+ir, 8 classes) at W4 with a distiller on its default layers, calibrated on noise, in train mode:
    the quantized phase as the trainer builds it (``setup_qat`` from the run's two recipes; ``keys``: more run keys)."""
    import torch
    from ultralytics.utils import DEFAULT_CFG

    from ghost_yolo.distill import DistillRecipe
    from ghost_yolo.engine.setup import setup_qat
    from ghost_yolo.models.model import GhostDetectionModel
    from ghost_yolo.quant import QuantRecipe

    torch.manual_seed(0)
    m = GhostDetectionModel("ghost-n.yaml", ch=4, nc=8, verbose=False)
    quant = QuantRecipe.from_args(keys, bits=keys.get("bits", 4))
    distill = DistillRecipe.from_args(keys, quant, m, kd=kd, float_self=float_self, kd_weight=weight)
    setup_qat(m, quant, distill, images=torch.rand(4, 4, IMGSZ, IMGSZ))
    m.args = DEFAULT_CFG  # loss hyperparameters, as the trainer sets them
    return m.train()


# Generated data and trained runs (once per session) -------------------------------------------------------------------
@pytest.fixture(scope="session")
def synth_yaml(tmp_path_factory) -> Path:
    """16 train / 8 val pairs at 96 px, with a data YAML pointing at them (absolute path)."""
    from ultralytics.utils import YAML

    from ghost_yolo.data.synthetic import VEDAI_NAMES, generate_vedai_synth

    root = tmp_path_factory.mktemp("data") / "synth"
    generate_vedai_synth(root, n_train=16, n_val=8, imgsz=96, seed=1, workers=1)
    yaml = root / "synth.yaml"
    YAML.save(yaml, {"path": str(root), "train": "images/train", "val": "images/val", "pairing": "suffix",
                     "names": VEDAI_NAMES})
    return yaml


@pytest.fixture(scope="session")
def easy_yaml(tmp_path_factory) -> Path:
    """The easy set (``make_easy_set``: 64 train / 16 val pairs at 64 px, seed 0); returns its data YAML."""
    return make_easy_set(tmp_path_factory.mktemp("data") / "easy")


@pytest.fixture(scope="session")
def trained(easy_yaml, tmp_path_factory) -> Path:
    """ghost-n trained in float (bits=32) on the easy set for EASY_EPOCHS epochs with ``EASY_RECIPE`` (validated once,
    after the last epoch: val=False); returns the run directory. It learns: mAP50 >= MAP50_FLOOR (guarded)."""
    from ghost_yolo import GhostYOLO

    project = tmp_path_factory.mktemp("runs")
    GhostYOLO("ghost-n.yaml").train(data=str(easy_yaml), bits=32, epochs=EASY_EPOCHS, project=str(project), name="train",
                                    exist_ok=True, plots=True, val=False, **EASY_RECIPE)
    return project / "train"


@pytest.fixture(scope="session")
def qtrained(trained, easy_yaml, tmp_path_factory) -> Path:
    """The whole pipeline from the learned float model, on the easy set: one float epoch (fp_epochs=1), the HQ search,
    one quantized (LSQ) epoch with OST self-distillation from the co-trained float self; returns the run directory.
    The quantized model keeps mAP50 >= QMAP50_FLOOR (guarded)."""
    from ghost_yolo import GhostYOLO

    project = tmp_path_factory.mktemp("qruns")
    GhostYOLO(trained / "weights" / "best.pt").train(
        data=str(easy_yaml), epochs=2, fp_epochs=1, hq_threshold=0.05, kd="ost", float_self="cotrain", project=str(project),
        name="q", exist_ok=True, plots=True, **{**EASY_RECIPE, "lr0": 0.001})
    return project / "q"
