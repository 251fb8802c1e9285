# Ultralytics 🚀 AGPL-3.0 License - https://ultralytics.com/license
"""Tests for the official VEDAI -> YOLO converter, on a tiny fake distribution generated in tmp_path."""

from __future__ import annotations

import shutil

import cv2
import numpy as np
import pytest
import yaml

from ghost_yolo.data.vedai import RAW_TO_ID, VEDAI_NAMES, convert_vedai, parse_vedai_annotation

# 00000000: hand-computed object (raw 1 car), edge-clipped object (raw 11 pickup), motorcycle (7) and plane (31)
ANN_0 = [
    "30.500000 20.000000 0.500000 1 1 0 25 36 35 26 15 17 25 23",  # car: x 25..36 (w 11), y 15..25 (h 10)
    "60.000000 40.000000 0.000000 11 0 0 54 66 66 54 36 36 44 44",  # pickup: x 54..66 -> clipped to 54..64
    "10.000000 10.000000 0.000000 7 1 0 8 12 12 8 8 8 12 12",  # motorcycle, dropped
    "40.000000 50.000000 1.000000 31 1 0 30 50 50 30 45 45 55 55",  # plane, dropped
]
# 00000001: malformed lines (13 fields, non-numeric field) between valid camping (5) and truck (2)
ANN_1 = [
    "20.000000 20.000000 0.000000 5 1 0 15 25 25 15 16 16 24 24",
    "20.000000 20.000000 0.000000 2 1 0 15 25 25 15 16 16 24",  # 13 fields
    "",
    "20.000000 20.000000 0.000000 2 1 0 15 25 25 15 16 16 abc 24",  # non-numeric
    "32.000000 32.000000 0.000000 2 1 0 28 36 36 28 30 30 34 34",
]
# 00000002: non-square 64x48 image, other (10), tractor (4), boat (23), van (9), bus (8 dropped)
ANN_2 = [
    "16.000000 12.000000 0.000000 10 1 0 12 20 20 12 8 8 16 16",
    "16.000000 24.000000 0.000000 4 1 0 12 20 20 12 20 20 28 28",
    "32.000000 24.000000 0.000000 23 1 0 28 36 36 28 20 20 28 28",
    "48.000000 24.000000 0.000000 9 1 0 44 52 52 44 20 20 28 28",
    "48.000000 36.000000 0.000000 8 1 0 44 52 52 44 32 32 40 40",
]
# 00000003: only dropped objects -> empty label file
ANN_3 = ["20.000000 20.000000 0.000000 7 1 0 15 25 25 15 16 16 24 24"]


def _write_pair(img_dir, i, w=64, h=64):
    """Write a colour + infrared PNG pair for id ``i``."""
    rng = np.random.default_rng(int(i))
    cv2.imwrite(str(img_dir / f"{i}_co.png"), rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
    cv2.imwrite(str(img_dir / f"{i}_ir.png"), rng.integers(0, 255, (h, w), dtype=np.uint8))


@pytest.fixture
def vedai_src(tmp_path):
    """Fake official VEDAI 512 distribution with 4 pairs and 2 folds (fold02 lists sit in the source root)."""
    src = tmp_path / "official"
    img_dir, ann_dir = src / "Vehicules512", src / "Annotations512"
    img_dir.mkdir(parents=True)
    ann_dir.mkdir()
    for i, lines in enumerate((ANN_0, ANN_1, ANN_2, ANN_3)):
        _write_pair(img_dir, f"{i:08d}", *((64, 48) if i == 2 else ()))
        (ann_dir / f"{i:08d}.txt").write_text("\n".join(lines) + "\n")
    (ann_dir / "annotation512.txt").write_text("combined file, must be ignored\n")
    (ann_dir / "fold01.txt").write_text("00000000\n00000001.png\n00000002_co.png\n")
    (ann_dir / "fold01test.txt").write_text("00000003\n")
    (src / "fold02.txt").write_text("3_ir.png\n00000002\n00000001\n00000099\n")  # short id, missing id
    (src / "fold02test.txt").write_text("00000000\n")
    return src


def _labels(path):
    """Read a YOLO label file as a list of (cls, xc, yc, w, h)."""
    return [(int(r[0]), *map(float, r[1:])) for r in (line.split() for line in path.read_text().splitlines())]


def test_every_kept_code_has_its_own_named_class():
    """The two tables agree: each kept raw code maps to a different class id, and those ids are VEDAI_NAMES' ids."""
    assert sorted(RAW_TO_ID.values()) == sorted(VEDAI_NAMES)


def test_parse_hand_computed(vedai_src):
    """Centre is kept, size is the corner extent, everything normalised and clipped to the image."""
    rows, problems = parse_vedai_annotation(vedai_src / "Annotations512" / "00000000.txt", 64, 64)
    assert problems == []
    assert len(rows) == 2  # motorcycle and plane dropped
    assert rows[0][0] == 0
    assert rows[0][1:] == pytest.approx((30.5 / 64, 20 / 64, 11 / 64, 10 / 64))
    assert rows[1][0] == 1  # pickup, x 54..66 clipped to 54..64 -> centre 59, width 10
    assert rows[1][1:] == pytest.approx((59 / 64, 40 / 64, 10 / 64, 8 / 64))


def test_parse_reports_malformed(vedai_src):
    """Malformed lines are skipped and reported with file and line number; good lines around them survive."""
    path = vedai_src / "Annotations512" / "00000001.txt"
    rows, problems = parse_vedai_annotation(path, 64, 64)
    assert [r[0] for r in rows] == [2, 3]  # camping, truck
    assert len(problems) == 2
    assert problems[0].startswith(f"{path}:2: ") and "13" in problems[0]
    assert problems[1].startswith(f"{path}:4: ") and "abc" in problems[1]


def test_convert(vedai_src, tmp_path, log):
    """End to end: labels, class mapping, images in pairs, fold lists, YAMLs and log messages."""
    out = tmp_path / "yolo"
    yamls = convert_vedai(vedai_src, out)
    assert yamls == [out / "vedai-fold01.yaml", out / "vedai-fold02.yaml"]

    # Images copied in pairs (real files), one label per pair, nothing for the combined annotation file
    for i in range(4):
        for s in ("co", "ir"):
            f = out / "images" / f"{i:08d}_{s}.png"
            assert f.is_file() and not f.is_symlink()
            assert f.read_bytes() == (vedai_src / "Vehicules512" / f.name).read_bytes()
    assert sorted(p.name for p in (out / "labels").iterdir()) == [f"{i:08d}.txt" for i in range(4)]

    # Exact numbers (6 decimals) and class mapping
    assert (out / "labels" / "00000000.txt").read_text().splitlines()[0] == "0 0.476562 0.312500 0.171875 0.156250"
    l0 = _labels(out / "labels" / "00000000.txt")
    assert [r[0] for r in l0] == [0, 1]
    assert l0[1][1:] == pytest.approx((59 / 64, 40 / 64, 10 / 64, 8 / 64), abs=1e-6)
    assert [r[0] for r in _labels(out / "labels" / "00000001.txt")] == [2, 3]
    l2 = _labels(out / "labels" / "00000002.txt")  # 64x48 image: height normalised by 48
    assert [r[0] for r in l2] == [4, 5, 6, 7]  # other, tractor, boat, van; bus dropped
    assert l2[0][1:] == pytest.approx((16 / 64, 12 / 48, 8 / 64, 8 / 48), abs=1e-6)
    assert (out / "labels" / "00000003.txt").read_text() == ""  # only a motorcycle
    for f in (out / "labels").iterdir():
        for r in _labels(f):
            assert 0 <= r[0] < 8 and all(0 <= v <= 1 for v in r[1:])

    # Fold lists: absolute, existing colour images, in fold order, unknown ids skipped
    def listed(name):
        paths = (out / name).read_text().splitlines()
        assert all(p.startswith("/") and (out / "images" / p.rsplit("/", 1)[-1]).is_file() for p in paths)
        assert all(p == str(out / "images" / p.rsplit("/", 1)[-1]) for p in paths)
        return [p.rsplit("/", 1)[-1] for p in paths]

    assert listed("vedai-fold01-train.txt") == ["00000000_co.png", "00000001_co.png", "00000002_co.png"]
    assert listed("vedai-fold01-test.txt") == ["00000003_co.png"]
    assert listed("vedai-fold02-train.txt") == ["00000003_co.png", "00000002_co.png", "00000001_co.png"]
    assert listed("vedai-fold02-test.txt") == ["00000000_co.png"]

    # YAML content and key order
    text = (out / "vedai-fold01.yaml").read_text()
    data = yaml.safe_load(text)
    assert list(data) == ["path", "train", "val", "pairing", "rgb_suffix", "ir_suffix", "modality", "names"]
    assert data == {
        "path": str(out),
        "train": "vedai-fold01-train.txt",
        "val": "vedai-fold01-test.txt",
        "pairing": "suffix",
        "rgb_suffix": "_co",
        "ir_suffix": "_ir",
        "modality": "rgb+ir",
        "names": VEDAI_NAMES,
    }
    assert yaml.safe_load((out / "vedai-fold02.yaml").read_text())["val"] == "vedai-fold02-test.txt"

    # Logs: malformed lines with file:line, missing fold id with fold file, summary
    text = log.text
    ann1 = vedai_src / "Annotations512" / "00000001.txt"
    assert f"{ann1}:2:" in text and f"{ann1}:4:" in text
    assert str(vedai_src / "fold02.txt") in text and "00000099" in text
    assert "converted 4/4" in text and "malformed annotation lines skipped: 2" in text
    assert "car=1" in text and "pickup=1" in text and "motorcycle(7)=2" in text and "plane(31)=1" in text


def test_symlinks(vedai_src, tmp_path):
    """copy_images=False links to the source images instead of copying them."""
    out = tmp_path / "linked"
    convert_vedai(vedai_src, out, copy_images=False)
    for s in ("co", "ir"):
        f = out / "images" / f"00000001_{s}.png"
        assert f.is_symlink() and f.resolve() == (vedai_src / "Vehicules512" / f.name).resolve()


def test_refuses_existing_labels(vedai_src, tmp_path):
    """An existing labels/ folder is never overwritten silently; exist_ok=True allows a rerun."""
    out = tmp_path / "yolo"
    (out / "labels").mkdir(parents=True)
    (out / "labels" / "00000000.txt").write_text("user data\n")
    with pytest.raises(FileExistsError, match="labels"):
        convert_vedai(vedai_src, out)
    assert (out / "labels" / "00000000.txt").read_text() == "user data\n"
    assert not (out / "images").exists()
    assert len(convert_vedai(vedai_src, out, exist_ok=True)) == 2
    assert (out / "labels" / "00000000.txt").read_text().startswith("0 ")
    convert_vedai(vedai_src, out, copy_images=False, exist_ok=True)  # rerun replaces copies by links
    assert (out / "images" / "00000000_co.png").is_symlink()


def test_size_selection(vedai_src, tmp_path):
    """Default size prefers 512 when both resolutions exist; size=1024 selects the other folders."""
    for d in ("Vehicules", "Annotations"):
        shutil.copytree(vedai_src / f"{d}512", vedai_src / f"{d}1024")
    (vedai_src / "Annotations1024" / "fold01.txt").write_text("00000001\n")
    convert_vedai(vedai_src, tmp_path / "a")
    assert len((tmp_path / "a" / "vedai-fold01-train.txt").read_text().splitlines()) == 3
    convert_vedai(vedai_src, tmp_path / "b", size=1024)
    assert len((tmp_path / "b" / "vedai-fold01-train.txt").read_text().splitlines()) == 1
    with pytest.raises(ValueError, match="size"):
        convert_vedai(vedai_src, tmp_path / "c", size=256)


def test_errors(vedai_src, tmp_path):
    """Missing inputs raise FileNotFoundError naming the expected path, before anything is written."""
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="nope"):
        convert_vedai(tmp_path / "nope", out)
    with pytest.raises(FileNotFoundError, match="Vehicules1024"):
        convert_vedai(vedai_src, out, size=1024)
    shutil.rmtree(vedai_src / "Annotations512")
    with pytest.raises(FileNotFoundError, match="Annotations512"):
        convert_vedai(vedai_src, out)
    (vedai_src / "Annotations512").mkdir()
    for f in vedai_src.glob("fold*.txt"):
        f.unlink()
    with pytest.raises(FileNotFoundError, match="fold01"):
        convert_vedai(vedai_src, out)
    shutil.rmtree(vedai_src / "Vehicules512")
    with pytest.raises(FileNotFoundError, match="Vehicules512"):
        convert_vedai(vedai_src, out)
    assert not out.exists()


def _obb(path):
    """Read an OBB label file as a list of (cls, 4 x 2 corners)."""
    out = []
    for line in path.read_text().splitlines():
        v = line.split()
        assert len(v) == 9, line
        out.append((int(v[0]), np.array(v[1:], dtype=float).reshape(4, 2)))
    return out


def test_parse_obb_corners(vedai_src):
    """obb=True: the four annotated corners in annotation order, normalized; a box across the edge is cut at it."""
    rows, problems = parse_vedai_annotation(vedai_src / "Annotations512" / "00000000.txt", 64, 64, obb=True)
    assert problems == [] and [r[0] for r in rows] == [0, 1]
    assert rows[0][1:] == pytest.approx((25 / 64, 15 / 64, 36 / 64, 17 / 64, 35 / 64, 25 / 64, 26 / 64, 23 / 64))
    cut = sorted(zip(rows[1][1::2], rows[1][2::2]))  # pickup x 54..66 -> 54..64, in some corner order
    want = sorted([(54 / 64, 36 / 64), (1, 36 / 64), (1, 44 / 64), (54 / 64, 44 / 64)])
    assert [v for xy in cut for v in xy] == pytest.approx([v for xy in want for v in xy])


def test_convert_obb(vedai_src, tmp_path, log):
    """convert_vedai(obb=True) and 'ghost convert-vedai obb=True': corner labels, the same folds and YAMLs as boxes."""
    from ghost_yolo.cli import entrypoint

    out = tmp_path / "obb"
    assert convert_vedai(vedai_src, out, obb=True) == [out / "vedai-fold01.yaml", out / "vedai-fold02.yaml"]
    assert (out / "labels" / "00000000.txt").read_text().splitlines()[0] == (
        "0 0.390625 0.234375 0.562500 0.265625 0.546875 0.390625 0.406250 0.359375"
    )
    l2 = _obb(out / "labels" / "00000002.txt")  # 64x48 image: y normalized by 48
    assert [c for c, _ in l2] == [4, 5, 6, 7]
    assert np.allclose(l2[0][1], [[12 / 64, 8 / 48], [20 / 64, 8 / 48], [20 / 64, 16 / 48], [12 / 64, 16 / 48]])
    assert (out / "labels" / "00000003.txt").read_text() == ""
    boxes = tmp_path / "boxes"
    convert_vedai(vedai_src, boxes)
    for name in ("vedai-fold01-train.txt", "vedai-fold02-test.txt"):
        assert (out / name).read_text().replace(str(out), "") == (boxes / name).read_text().replace(str(boxes), "")
    a, b = (yaml.safe_load((d / "vedai-fold01.yaml").read_text()) for d in (out, boxes))
    assert {**a, "path": ""} == {**b, "path": ""}
    assert "oriented boxes" in (out / "vedai-fold01.yaml").read_text()  # the header says which
    assert "converted 4/4 RGB+IR pairs" in log.text and "(OBB)" in log.text

    cli = tmp_path / "cli"
    assert entrypoint(f"convert-vedai source={vedai_src} save_dir={cli} obb=True") == 0
    assert (cli / "labels" / "00000000.txt").read_text() == (out / "labels" / "00000000.txt").read_text()
