"""The deterministic synthetic VEDAI-like RGB + IR dataset generator (ghost_yolo/data/synthetic.py): layout, labels,
determinism, what each band carries, and the generated set loading as a paired dataset."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import IMGSZ, NO_AUG, build

from ghost_yolo.data.dataset import PairedDataset
from ghost_yolo.data.synthetic import (
    BOAT,
    CAMPING,
    CAR,
    PICKUP,
    TRUCK,
    VAN,
    VEDAI_NAMES,
    _draw_vehicle,
    _parts,
    generate_vedai_synth,
    make_sample,
)

SZ = 128  # generated image size of the module's set (the loader test reads the session set at IMGSZ)


def _digest(root: Path) -> dict[str, str]:
    """Map every file under root (relative path) to the sha256 of its bytes."""
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _read_labels(path: Path) -> np.ndarray:
    """Read a YOLO label file into an (n, 5) float array."""
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    return np.array(rows, dtype=np.float64).reshape(-1, 5)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """A small dataset shared by the layout, label and modality tests."""
    return generate_vedai_synth(tmp_path_factory.mktemp("synth") / "vedai-synth", n_train=60, n_val=4, imgsz=SZ)


def _box_stats(root: Path) -> dict[int, np.ndarray]:
    """Per class, rows of (max IR, mean IR, mean R, mean G, mean B, brightest channel mean) inside each label box."""
    stats = {c: [] for c in VEDAI_NAMES}
    for lb in sorted((root / "labels").rglob("*.txt")):
        split = lb.parent.name
        co = cv2.imread(str(root / "images" / split / f"{lb.stem}_co.png"))[..., ::-1]
        ir = cv2.imread(str(root / "images" / split / f"{lb.stem}_ir.png"), cv2.IMREAD_UNCHANGED)
        for c, xc, yc, w, h in _read_labels(lb):
            x0, x1 = round((xc - w / 2) * SZ), round((xc + w / 2) * SZ)
            y0, y1 = round((yc - h / 2) * SZ), round((yc + h / 2) * SZ)
            rgb = co[y0:y1, x0:x1].reshape(-1, 3).mean(0)
            patch = ir[y0:y1, x0:x1]
            stats[int(c)].append((patch.max(), patch.mean(), *rgb, rgb.max()))
    return {c: np.array(v, dtype=np.float64) for c, v in stats.items()}


def _effect(a: np.ndarray, b: np.ndarray) -> float:
    """Cohen's d between two samples: how many pooled standard deviations separate their means."""
    return float((a.mean() - b.mean()) / np.sqrt((a.var() + b.var()) / 2 + 1e-9))


def test_layout_and_image_formats(dataset):
    """Files follow VEDAI naming with ids continuing across splits; colour is 3-channel, IR single-band, same size."""
    train = sorted(p.name for p in (dataset / "images" / "train").iterdir())
    val = sorted(p.name for p in (dataset / "images" / "val").iterdir())
    assert train == sorted(f"{i:08d}_{m}.png" for i in range(60) for m in ("co", "ir"))
    assert val == sorted(f"{i:08d}_{m}.png" for i in range(60, 64) for m in ("co", "ir"))
    assert sorted(p.name for p in (dataset / "labels" / "val").iterdir()) == [f"{i:08d}.txt" for i in range(60, 64)]
    assert len(list((dataset / "labels" / "train").iterdir())) == 60
    assert not [p for p in dataset.parent.iterdir() if p != dataset], "temporary folder left behind"
    for stem in ("00000000", "00000059"):
        co = cv2.imread(str(dataset / "images" / "train" / f"{stem}_co.png"), cv2.IMREAD_UNCHANGED)
        ir = cv2.imread(str(dataset / "images" / "train" / f"{stem}_ir.png"), cv2.IMREAD_UNCHANGED)
        assert co.dtype == np.uint8 and co.shape == (SZ, SZ, 3)
        assert ir.dtype == np.uint8 and ir.shape == (SZ, SZ)
        assert not np.array_equal(ir, cv2.cvtColor(co, cv2.COLOR_BGR2GRAY)), "IR must not be a greyscale copy"


def test_labels_valid(dataset):
    """Every label line is 'cls xc yc w h' with 6 decimals, valid ids, in-image boxes and plausible vehicle sizes."""
    counts, scale = [], SZ / 256
    for lb in (dataset / "labels").rglob("*.txt"):
        lines = lb.read_text().splitlines()
        counts.append(len(lines))
        for line in lines:
            fields = line.split()
            assert len(fields) == 5 and fields[0].isdigit() and all(len(f.split(".")[1]) == 6 for f in fields[1:])
        lab = _read_labels(lb)
        assert np.isin(lab[:, 0], list(VEDAI_NAMES)).all()
        xy0, xy1 = lab[:, 1:3] - lab[:, 3:] / 2, lab[:, 1:3] + lab[:, 3:] / 2
        assert (xy0 >= 0).all() and (xy1 <= 1).all() and (lab[:, 3:] > 0).all()
        long_side = lab[:, 3:].max(1) * SZ  # axis-aligned extent of a 6-40 px (at 256) rotated vehicle
        assert (long_side >= 6 * scale / np.sqrt(2) - 0.5).all() and (long_side <= 40 * scale * np.sqrt(2) + 0.5).all()
        for a, b in zip(xy0, xy1):  # objects never overlap
            inter = np.clip(np.minimum(b, xy1) - np.maximum(a, xy0), 0, None).prod(1)
            assert (inter > 0).sum() == 1
    assert min(counts) >= 3 and max(counts) <= 12
    classes = np.concatenate([_read_labels(p)[:, 0] for p in (dataset / "labels").rglob("*.txt")])
    assert set(classes.astype(int)) == set(VEDAI_NAMES), "every class should appear in a 64-image set"


def test_deterministic_any_worker_count(tmp_path):
    """Same seed gives byte-identical files for 1 or 2 workers; another seed gives different files."""
    kw = {"n_train": 6, "n_val": 2, "imgsz": 96}
    a = _digest(generate_vedai_synth(tmp_path / "a", seed=3, workers=1, **kw))
    b = _digest(generate_vedai_synth(tmp_path / "b", seed=3, workers=2, **kw))
    c = _digest(generate_vedai_synth(tmp_path / "c", seed=4, workers=2, **kw))
    assert len(a) == 8 * 3 and a == b
    assert a.keys() == c.keys() and all(a[k] != c[k] for k in a)


def test_existing_root_raises(tmp_path):
    """An existing root is never overwritten or merged into."""
    root = tmp_path / "exists"
    root.mkdir()
    with pytest.raises(FileExistsError):
        generate_vedai_synth(root, n_train=1, n_val=1, imgsz=64)
    assert list(tmp_path.iterdir()) == [root] and not list(root.iterdir())


def test_car_pickup_differ_only_in_ir():
    """With the same background and draws, car and pickup are pixel-identical in RGB; only the pickup hood is hot."""
    base = make_sample(128, 0, 0)
    out = {}
    for cls in (CAR, PICKUP):
        rgb, ir = base[0].astype(np.float32), base[1].astype(np.float32)
        geom = ((64.0, 64.0), (16.0, 8.0), 30.0)
        _draw_vehicle(rgb, ir, geom, _parts(np.random.default_rng(7), cls), np.array([2, 1], np.float32))
        out[cls] = rgb, ir
    assert np.array_equal(out[CAR][0], out[PICKUP][0])
    hotter = out[PICKUP][1] - out[CAR][1]
    assert hotter.min() >= 0 and hotter.max() > 150  # pickup hood glows, nothing gets colder
    assert 0 < (hotter > 0).sum() < 16 * 8 / 2  # only the engine block, not the whole vehicle


def test_camping_van_differ_only_in_colour():
    """Camping and van share every IR value for the same draws but differ in colour."""
    base = make_sample(128, 0, 1)
    out = {}
    for cls in (CAMPING, VAN):
        rgb, ir = base[0].astype(np.float32), base[1].astype(np.float32)
        _draw_vehicle(rgb, ir, ((64.0, 64.0), (24.0, 11.0), 75.0), _parts(np.random.default_rng(1), cls), np.zeros(2))
        out[cls] = rgb, ir
    assert np.array_equal(out[CAMPING][1], out[VAN][1])
    assert np.abs(out[CAMPING][0] - out[VAN][0]).max() > 100


@pytest.mark.parametrize("hide, seen", [("rgb", 1), ("ir", 0)])
def test_camouflage_hides_one_band(hide, seen):
    """A camouflaged vehicle barely changes the hidden band but clearly shows in the other one."""
    rgb0, ir0, _ = make_sample(128, 0, 2)
    rgb0, ir0 = rgb0.astype(np.float32), ir0.astype(np.float32)
    rgb, ir = rgb0.copy(), ir0.copy()
    parts = _parts(np.random.default_rng(0), TRUCK)
    _draw_vehicle(rgb, ir, ((64.0, 64.0), (24.0, 10.0), 10.0), parts, np.ones(2, np.float32), hide)
    diffs = [np.abs(rgb - rgb0).mean(-1)[52:76, 52:76].mean(), np.abs(ir - ir0)[52:76, 52:76].mean()]
    assert diffs[seen] > 4 * diffs[1 - seen] and diffs[seen] > 10


def test_modalities_carry_different_information(dataset):
    """In generated data pickups are hotter than cars at similar colour; campings brighter than vans at similar IR."""
    st = _box_stats(dataset)
    assert min(len(st[c]) for c in (CAR, PICKUP, CAMPING, VAN)) >= 20
    assert _effect(st[PICKUP][:, 0], st[CAR][:, 0]) > 1.0  # hot engine block: IR separates them
    assert all(abs(_effect(st[PICKUP][:, k], st[CAR][:, k])) < 0.5 for k in (2, 3, 4))  # colour does not
    assert _effect(st[CAMPING][:, 5], st[VAN][:, 5]) > 1.5  # white campers vs dark vans: colour separates them
    assert all(abs(_effect(st[CAMPING][:, k], st[VAN][:, k])) < 0.6 for k in (0, 1))  # IR does not
    assert len(st[BOAT]) > 0


def test_boats_only_on_water():
    """Boats sit on dark water in IR, whose NIR response is much lower than vegetation's."""
    ir_at_boats = []
    for i in range(40):
        _, ir, labels = make_sample(96, 5, i)
        for c, xc, yc, w, h in labels:
            if c == BOAT:
                x0, y0 = round((xc - w / 2) * 96), round((yc - h / 2) * 96)
                ir_at_boats.append(np.median(ir[y0 : y0 + 2, x0 : x0 + 2]))  # box corner: outside the hull
    assert ir_at_boats and np.median(ir_at_boats) < 60


def test_generated_set_loads_as_paired_dataset(synth_yaml):
    """The generated set (session fixture) builds as a PairedDataset in both splits, with VEDAI id label files
    (00000000.txt for 00000000_co.png), objects in every split and 4-channel samples."""
    for mode, n in (("train", 16), ("val", 8)):
        ds = build(synth_yaml, mode, **NO_AUG)
        assert isinstance(ds, PairedDataset) and len(ds) == n
        assert all(Path(f).name == f"{Path(c).name[:8]}.txt" for f, c in zip(ds.label_files, ds.im_files))
        assert sum(len(lb["cls"]) for lb in ds.labels) > 0
        s = ds[0]
        assert s["img"].shape == (4, IMGSZ, IMGSZ) and s["cls"].numel() > 0
