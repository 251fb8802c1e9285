"""The oriented synthetic set vedai-synth-obb (ghost_yolo/data/synthetic.py with obb=True, cfg/datasets/
vedai-synth-obb.yaml): Ultralytics-readable OBB labels, rectangles of the drawn aspect, drawn pixels inside their
polygon, orientation that matters, determinism, and generation on first use by name."""

from __future__ import annotations

import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
from ultralytics.data.utils import verify_image_label
from ultralytics.utils import YAML
from ultralytics.utils.ops import xyxyxyxy2xywhr

from ghost_yolo.data import synthetic
from ghost_yolo.data.check import resolve_data
from ghost_yolo.data.synthetic import ASPECT_OBB, VEDAI_NAMES, generate_vedai_synth, make_sample

SZ = 128


def _digest(root: Path) -> dict[str, str]:
    """Map every file under root (relative path) to the sha256 of its bytes."""
    files = (p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def _corners(labels: list[tuple]) -> list[np.ndarray]:
    """(4, 2) pixel corners of each oriented label."""
    return [np.array(v, np.float64).reshape(4, 2) * SZ for _, *v in labels]


@pytest.fixture(scope="module")
def drawn():
    """Samples of the oriented set with what was drawn for each label: geometry (centre, (length, width), degrees)
    and the pixels the vehicle changed in IR (drawn once more without shadow on the unchanged band)."""
    original, record = synthetic._draw_vehicle, []

    def spy(rgb, ir, geom, parts, sun, hide=""):
        twin = ir.copy()
        original(rgb.copy(), twin, geom, parts, np.zeros(2, np.float32), hide)  # shadowless twin: the body alone
        record.append((geom, np.argwhere(twin != ir)[:, ::-1] + 0.5))  # changed pixel centres (x, y)
        original(rgb, ir, geom, parts, sun, hide)

    synthetic._draw_vehicle = spy
    try:
        out = []
        for i in range(40):
            record.clear()
            _, _, labels = make_sample(SZ, 2, i, obb=True)
            out.append((labels, list(record)))
    finally:
        synthetic._draw_vehicle = original
    return out


def test_labels_parse_as_ultralytics_obb(tmp_path):
    """Every line is 'cls x1 y1 ... x4 y4' with 6 decimals; Ultralytics' verifier keeps every row as a 4-point
    polygon of a valid class inside the image, and its OBB conversion gives positive widths and heights."""
    root = generate_vedai_synth(tmp_path / "obb", n_train=6, n_val=2, imgsz=SZ, seed=1, workers=1, obb=True)
    n = 0
    for lb in sorted((root / "labels").rglob("*.txt")):
        lines = lb.read_text().splitlines()
        assert all(len(f := ln.split()) == 9 and all(len(x.split(".")[1]) == 6 for x in f[1:]) for ln in lines)
        im = root / "images" / lb.parent.name / f"{lb.stem}_co.png"
        _, cls, shape, segments, _, nm, nf, ne, nc, msg = verify_image_label((str(im), str(lb), "", False, 8, 0, 0,
                                                                              False))  # fmt: skip
        assert (nm, nf, ne, nc, msg) == (0, 1, 0, 0, "") and shape == (SZ, SZ) and len(segments) == len(lines) >= 3
        assert set(cls[:, 0].astype(int)) <= set(VEDAI_NAMES)
        pts = np.stack(segments)
        assert pts.shape[1:] == (4, 2) and (pts >= 0).all() and (pts <= 1).all()
        xywhr = xyxyxyxy2xywhr(pts.reshape(-1, 8) * SZ)
        assert (xywhr[:, 2:4] > 1).all()
        n += len(lines)
    assert n >= 24


def test_corners_form_rectangles_of_the_drawn_aspect(drawn):
    """Corners go around a rectangle (right angles, equal opposite sides) whose sides are the drawn length and width,
    with the class's aspect in 1.5-4, centred on the drawn vehicle."""
    for labels, record in drawn:
        assert len(labels) == len(record)
        for (cls, *_), p, (((cx, cy), (length, width), _), _) in zip(labels, _corners(labels), record):
            e = np.roll(p, -1, 0) - p  # the four edges in order
            sides = np.linalg.norm(e, axis=1)
            np.testing.assert_allclose(sides[:2], sides[2:], atol=1e-3)  # opposite sides equal
            assert np.abs((e * np.roll(e, -1, 0)).sum(1)).max() < 1e-2 * sides.max() ** 2  # right angles
            np.testing.assert_allclose(sorted(sides[:2]), sorted((width, length)), atol=1e-3)
            np.testing.assert_allclose(p.mean(0), (cx + 0.5, cy + 0.5), atol=1e-3)  # pixel-edge coordinates
            lo, hi = ASPECT_OBB[cls]
            assert 1.5 <= lo <= length / width <= hi <= 4.0


def test_drawn_pixels_lie_inside_their_polygon(drawn):
    """Every IR pixel a vehicle changes lies inside its labelled polygon, up to the one pixel OpenCV's rasteriser adds
    at edges; the vehicle fills its polygon; and drawn pixels centre on the labels (labels read pixel i as [i, i + 1],
    OpenCV draws it around i: without the half-pixel shift this offset would be 0.5)."""
    offsets = []
    for labels, record in drawn:
        for p, (_, changed) in zip(_corners(labels), record):
            poly = p.astype(np.float32).reshape(-1, 1, 2)
            dist = np.array([cv2.pointPolygonTest(poly, (float(x), float(y)), True) for x, y in changed])
            assert dist.min() >= -1.1, "a vehicle pixel lies outside its label"
            assert len(changed) >= 0.8 * cv2.contourArea(poly)
            offsets.append(changed.mean(0) - p.mean(0))
    assert np.abs(np.mean(offsets, 0)).max() < 0.1


def test_orientation_matters(drawn):
    """Headings are uniform over 0-180 degrees and aspects span 1.5-4, so the enclosing axis-aligned box covers on
    average far more than the vehicle; neighbours' axis-aligned boxes overlap in places (rows, diagonal spacing)."""
    angles, fill, overlap = [], [], 0
    for labels, _ in drawn:
        polys = _corners(labels)
        boxes = [(p.min(0), p.max(0)) for p in polys]
        for k, p in enumerate(polys):
            edges = np.roll(p, -1, 0) - p
            long = edges[np.linalg.norm(edges, axis=1).argmax()]
            angles.append(np.degrees(np.arctan2(long[1], long[0])) % 180)
            fill.append(cv2.contourArea(p.astype(np.float32)) / np.prod(boxes[k][1] - boxes[k][0]))
            overlap += any(j != k and (boxes[k][0] < b1).all() and (b0 < boxes[k][1]).all() for j, (b0, b1) in
                           enumerate(boxes))  # fmt: skip
    hist = np.histogram(angles, 6, (0, 180))[0] / len(angles)
    assert len(angles) > 200 and hist.min() > 0.1 and hist.max() < 0.23, hist
    assert np.mean(fill) < 0.65 and overlap > 0.03 * len(angles)


def test_deterministic_any_worker_count(tmp_path):
    """Same seed gives byte-identical files for 1 or 2 workers; another seed differs; the detect set of the same seed
    is a different set (its labels are axis-aligned boxes)."""
    kw = {"n_train": 5, "n_val": 1, "imgsz": 96, "obb": True}
    a = _digest(generate_vedai_synth(tmp_path / "a", seed=3, workers=1, **kw))
    b = _digest(generate_vedai_synth(tmp_path / "b", seed=3, workers=2, **kw))
    c = _digest(generate_vedai_synth(tmp_path / "c", seed=4, workers=2, **kw))
    assert len(a) == 6 * 3 and a == b and all(a[k] != c[k] for k in a)
    detect = generate_vedai_synth(tmp_path / "d", seed=3, workers=1, **{**kw, "obb": False})
    assert all(len(ln.split()) == 5 for f in (detect / "labels").rglob("*.txt") for ln in f.read_text().splitlines())


@pytest.mark.parametrize("name", ["vedai-synth-obb.yaml", "vedai-synth-obb", "vedai-synth"])
def test_resolve_generates_shipped_sets_by_name(name, tmp_path, monkeypatch):
    """A shipped YAML with a generator block is generated on first use into datasets/<name> with its generator
    arguments, and resolves to a copy with an absolute path and no generator block; a second call reuses it."""
    calls = []

    def fake(root, **kw):
        calls.append((Path(root), kw))
        (Path(root) / "images").mkdir(parents=True)

    monkeypatch.setenv("GHOST_DATASETS_DIR", str(tmp_path))
    monkeypatch.setattr(synthetic, "generate_vedai_synth", fake)
    stem = name.removesuffix(".yaml")
    out = Path(resolve_data(name))
    assert out == tmp_path / stem / f"{stem}.yaml" and resolve_data(name) == str(out)
    assert calls == [(tmp_path / stem, {"n_train": 400, "n_val": 100, "imgsz": 256, "seed": 0,
                                        **({"obb": True} if "obb" in stem else {})})]  # fmt: skip
    d = YAML.load(out)
    assert d["path"] == str(tmp_path / stem) and "generator" not in d and len(d["names"]) == 8


def test_user_yaml_with_generator_block_is_not_generated(tmp_path, monkeypatch):
    """Only shipped YAMLs generate: a user's file of the same name is returned as it is."""
    monkeypatch.setattr(synthetic, "generate_vedai_synth", lambda *a, **k: pytest.fail("generated a user's YAML"))
    user = tmp_path / "vedai-synth-obb.yaml"
    user.write_text("path: here\ntrain: a\nval: a\nnames: {0: car}\ngenerator: {seed: 1}\n")
    assert resolve_data(str(user)) == str(user)
