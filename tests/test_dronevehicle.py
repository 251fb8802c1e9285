"""The DroneVehicle -> YOLO OBB converter, on a tiny distribution in the official layout written in tmp_path.

train: 00001 (day: misspelled names, a bndbox-only object, one in the border, one across it, an unknown class, one
without geometry; colour labels hold the same car plus a van the IR set lacks), 00002 (night: no colour objects),
00003 (unreadable IR XML), 00004 (no IR image). val: one JPEG pair (ids restart per split) with an
axis-aligned and a rotated object. test: no IR folder.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import yaml
from ultralytics.data.utils import verify_image_label

from ghost_yolo.cli import entrypoint
from ghost_yolo.data.dronevehicle import DRONEVEHICLE_NAMES, convert_dronevehicle, union_objects
from ghost_yolo.data.pairing import Pairing

W, H, B = 840, 712, 100  # official image size and border; 640x512 inside
CW, CH = W - 2 * B, H - 2 * B


def poly(*xy: float) -> str:
    """A <polygon> element from x1 y1 ... x4 y4."""
    tags = ("x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4")
    return "<polygon>" + "".join(f"<{t}>{v}</{t}>" for t, v in zip(tags, xy)) + "</polygon>"


def obj(name: str, geometry: str) -> str:
    """An <object> element as the distribution writes it."""
    return f"<object><name>{name}</name><pose>Unspecified</pose><truncated>0</truncated>{geometry}</object>"


def xml(*objects: str) -> str:
    """A VOC annotation with the official image size."""
    return (f"<annotation><filename>x.jpg</filename><size><width>{W}</width><height>{H}</height><depth>3</depth>"
            f"</size>{''.join(objects)}</annotation>")


CAR = (200, 150, 240, 150, 240, 170, 200, 170)  # inside: 100..140 x 50..70 after the crop
ROTATED = (300, 300, 340, 320, 330, 340, 290, 320)  # '*', a rotated quad inside
ACROSS = (80, 300, 130, 300, 130, 320, 80, 320)  # 'feright_car' across the left edge: x -20..30 -> 0..30
IR_1 = xml(
    obj("car", poly(*CAR)),
    obj("feright_car", poly(*ACROSS)),
    obj("truvk", "<bndbox><xmin>400</xmin><ymin>400</ymin><xmax>460</xmax><ymax>430</ymax></bndbox>"),
    obj("car", poly(10, 10, 60, 10, 60, 40, 10, 40)),  # entirely in the white border: dropped
    obj("plane", poly(*CAR)),  # unknown class: object 5
    obj("bus", "<difficult>0</difficult>"),  # neither polygon nor bndbox: object 6
    obj("*", poly(*ROTATED)),
)
RGB_1 = xml(obj("car", poly(*(v + 2 for v in CAR))), obj("van", poly(500, 500, 540, 500, 540, 520, 500, 520)))
IR_2 = xml(obj("Bus", poly(600, 200, 700, 200, 700, 230, 600, 230)))
RGB_2 = xml()  # night: the colour image shows nothing


def image(seed: int, bands: int = 3) -> np.ndarray:
    """A 840x712 image: smooth noise (JPEG keeps it nearly as it is) inside a 100-px white frame."""
    im = np.full((H, W, bands), 255, np.uint8)
    coarse = np.random.default_rng(seed).integers(0, 200, (CH // 16, CW // 16, bands), dtype=np.uint8)
    im[B:-B, B:-B] = cv2.resize(coarse, (CW, CH), interpolation=cv2.INTER_LINEAR)
    return im


def write_split(root, split: str, pairs: dict, ir: bool = True, ext: str = ".png") -> None:
    """Write one split: ``pairs`` maps id -> (IR XML or None, colour XML or None, has IR image)."""
    d = {k: root / split / f"{split}{k}" for k in ("img", "imgr", "label", "labelr")}
    for k, p in d.items():
        if k != "imgr" or ir:
            p.mkdir(parents=True)
    for i, (ir_xml, rgb_xml, has_ir) in pairs.items():
        cv2.imwrite(str(d["img"] / f"{i}{ext}"), image(int(i)))
        if ir and has_ir:
            cv2.imwrite(str(d["imgr"] / f"{i}{ext}"), image(int(i) + 100))
        if ir_xml is not None:
            (d["labelr"] / f"{i}.xml").write_text(ir_xml)
        if rgb_xml is not None:
            (d["label"] / f"{i}.xml").write_text(rgb_xml)


@pytest.fixture
def source(tmp_path):
    """The fake official distribution (see the module docstring)."""
    root = tmp_path / "DroneVehicle"
    write_split(root, "train", {"00001": (IR_1, RGB_1, True), "00002": (IR_2, RGB_2, True),
                                "00003": ("<annotation><object>", RGB_2, True), "00004": (IR_2, RGB_2, False)})
    val = xml(obj("van", poly(*CAR)), obj("*", poly(*ROTATED)))
    write_split(root, "val", {"00001": (val, xml(), True)}, ext=".jpg")
    write_split(root, "test", {"00001": (IR_2, RGB_2, True)}, ir=False)
    return root


def rows(path) -> list[tuple[int, np.ndarray]]:
    """Label rows as (class, 4 x 2 normalized corners)."""
    out = []
    for line in path.read_text().splitlines():
        v = line.split()
        assert len(v) == 9, line
        out.append((int(v[0]), np.array(v[1:], dtype=float).reshape(4, 2)))
    return out


def expect(*xy: float) -> np.ndarray:
    """Official pixel corners -> corners in the cropped image, normalized."""
    return (np.array(xy, dtype=float).reshape(4, 2) - B) / [CW, CH]


def same_corners(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal corner sets, whatever the starting corner (6-decimal labels)."""
    return np.allclose(sorted(map(tuple, a)), sorted(map(tuple, b)), atol=2e-6)


def test_ir_labels_crop_and_counts(source, tmp_path, log):
    """Default labels=ir: crop shift and normalization, clipping, names, counts and one line per bad input."""
    out = tmp_path / "out"
    assert convert_dronevehicle(source, out) == out / "dronevehicle.yaml"
    lab = out / "labels" / "train"
    assert sorted(p.name for p in lab.iterdir()) == ["00001.txt", "00002.txt"]

    r = rows(lab / "00001.txt")
    assert [c for c, _ in r] == [0, 4, 1, 4]  # car, feright_car, truvk, '*'; border, plane, no-geometry left out
    assert np.allclose(r[0][1], expect(*CAR), atol=1e-6)  # kept as annotated, corner order too
    assert np.allclose(r[0][1][0], [100 / 640, 50 / 512], atol=1e-6)
    assert same_corners(r[1][1], expect(100, 300, 130, 300, 130, 320, 100, 320))  # cut at the left edge
    assert same_corners(r[2][1], expect(400, 400, 460, 400, 460, 430, 400, 430))  # bndbox corners
    assert np.allclose(r[3][1], expect(*ROTATED), atol=1e-6)
    assert rows(lab / "00002.txt")[0][0] == 2  # 'Bus'
    assert [c for c, _ in rows(out / "labels" / "val" / "00001.txt")] == [3, 4]

    # Images: both bands cropped to the inside of the frame, named as suffix pairs
    for i, band, seed in (("00001", "co", 1), ("00001", "ir", 101), ("00002", "ir", 102)):
        im = cv2.imread(str(out / "images" / "train" / f"{i}_{band}.png"), cv2.IMREAD_UNCHANGED)
        assert im.shape == (CH, CW, 3) and np.array_equal(im, image(seed)[B:-B, B:-B])
    val = cv2.imread(str(out / "images" / "val" / "00001_co.jpg"))
    assert val.shape == (CH, CW, 3) and np.abs(val.astype(int) - image(1)[B:-B, B:-B]).mean() < 2  # JPEG
    assert not (out / "images" / "test").exists() and not (out / "images" / "train" / "00003_co.png").exists()

    # The paired dataset finds each pair's partner and label; Ultralytics accepts the rows as OBB segments
    pairing = Pairing("suffix")
    colour = out / "images" / "train" / "00001_co.png"
    assert pairing.partner(colour).name == "00001_ir.png" and pairing.label_path(colour) == lab / "00001.txt"
    *_, nm, nf, ne, nc, msg = verify_image_label((str(colour), str(lab / "00001.txt"), "", False, 5, 0, 0, False))
    assert (nf, nc) == (1, 0), msg

    data = yaml.safe_load((out / "dronevehicle.yaml").read_text())
    assert data == {"path": str(out), "train": "images/train", "val": "images/val", "pairing": "suffix",
                    "rgb_suffix": "_co", "ir_suffix": "_ir", "modality": "rgb+ir", "names": DRONEVEHICLE_NAMES}

    text, xml1 = log.text, source / "train" / "trainlabelr" / "00001.xml"
    assert f"{xml1}: object 5: unknown class name 'plane'" in text
    assert f"{xml1}: object 6 (bus): has neither a <polygon> with x1..y4 nor a <bndbox>" in text
    assert f"{source / 'train' / 'trainlabelr' / '00003.xml'}: unreadable XML" in text
    assert f"{source / 'train' / 'trainimg' / '00004.png'}: no partner of the same name in" in text
    assert f"{source / 'test'}: no 'testimgr' (ir) folder (the infrared half of the pairs)" in text
    assert ("train: 2 pairs, 5 objects (car=1, truck=1, bus=1, van=0, freight_car=2), 1 cut to nothing by the crop, "
            "1 unknown class, 1 without geometry, 2 images skipped") in text
    assert "val: 1 pairs, 2 objects" in text
    assert "*->freight_car x1" in text and "feright_car->freight_car x1" in text and "truvk->truck x1" in text


def test_read_back_as_obb(source, tmp_path):
    """ghost's paired dataset reads the output with task=obb: both bands stacked, each box as Ultralytics' xywhr."""
    from conftest import build

    ds = build(convert_dronevehicle(source, tmp_path / "out"), "val", task="obb", imgsz=640, rect=False)
    item = ds[0]  # val 00001, letterboxed from 640x512 to 640x640: 64 px of padding above
    assert tuple(item["img"].shape) == (4, 640, 640) and item["cls"].ravel().tolist() == [3, 4]
    van, star = item["bboxes"].numpy()
    assert np.allclose(van[:4], [120 / 640, (60 + 64) / 640, 40 / 640, 20 / 640], atol=1e-4) and abs(van[4]) < 1e-4
    # '*': centre (215, 220) after the crop, sides sqrt(40² + 20²) and sqrt(10² + 20²) px, along atan2(20, 40)
    assert np.allclose(star, [215 / 640, 284 / 640, 2000**0.5 / 640, 500**0.5 / 640, np.arctan2(20, 40)], atol=1e-4)


def test_rgb_and_union_labels(source, tmp_path, log):
    """labels=rgb: the night image has no objects; union adds the colour van and not the colour copy of the car."""
    convert_dronevehicle(source, tmp_path / "rgb", labels="rgb")
    lab = tmp_path / "rgb" / "labels" / "train"
    assert [c for c, _ in rows(lab / "00001.txt")] == [0, 3]
    assert np.allclose(rows(lab / "00001.txt")[0][1], expect(*(v + 2 for v in CAR)), atol=1e-6)
    assert (lab / "00002.txt").read_text() == ""  # night: nothing seen in colour
    assert (lab / "00003.txt").is_file()  # its colour XML is readable; the broken IR one is not read

    convert_dronevehicle(source, tmp_path / "union", labels="union")
    lab = tmp_path / "union" / "labels" / "train"
    u = rows(lab / "00001.txt")
    assert [c for c, _ in u] == [0, 4, 1, 4, 3]  # IR objects, then the van
    assert np.allclose(u[4][1], expect(500, 500, 540, 500, 540, 520, 500, 520), atol=1e-6)
    assert [c for c, _ in rows(lab / "00002.txt")] == [2]
    assert "1 colour objects added to the IR ones" in log.text


def test_union_rule():
    """A colour object joins when its enclosing box overlaps every IR object's by IoU <= 0.5, whatever the class."""
    box = lambda x0, y0, x1, y1: np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], np.float32)  # noqa: E731
    ir = [(0, box(0, 0, 10, 10))]
    assert len(union_objects(ir, [(3, box(1, 0, 11, 10))])) == 1  # IoU 0.82, other class: the same vehicle
    assert len(union_objects(ir, [(0, box(5, 0, 15, 10))])) == 2  # IoU 1/3: another vehicle
    assert len(union_objects([], [(0, box(5, 0, 15, 10))])) == 1


def test_cli(source, tmp_path, log):
    """The ghost command: converts with its keys, refuses bad ones in one line, leaves nothing half written."""
    out = tmp_path / "cli"
    assert entrypoint(f"convert-dronevehicle source={source} save_dir={out} labels=union") == 0
    assert [c for c, _ in rows(out / "labels" / "train" / "00001.txt")] == [0, 4, 1, 4, 3]
    assert entrypoint(f"convert-dronevehicle source={source} save_dir={out}") == 2
    assert "already exists" in log.text
    assert entrypoint(f"convert-dronevehicle source={source} save_dir={out} exist_ok") == 0
    assert len(rows(out / "labels" / "train" / "00001.txt")) == 4  # rerun with labels=ir
    assert entrypoint("convert-dronevehicle") == 2 and "convert-dronevehicle needs source=" in log.text
    assert entrypoint(f"convert-dronevehicle source={source} save_dir={tmp_path / 'x'} labels=both") == 2
    assert "labels=both is not supported, use one of ir, rgb, union" in log.text
    assert entrypoint(f"convert-dronevehicle source={source} lables=ir") == 2
    assert "'lables' is not a valid ghost argument" in log.text
    assert not (tmp_path / "x").exists()


def test_refusals(source, tmp_path):
    """No split, or no usable split, raises naming what is missing before anything is written."""
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="no train/, val/ or test/ folder"):
        convert_dronevehicle(source / "train", out)
    for s in ("train", "val"):
        (source / s / f"{s}imgr").rename(source / s / "ir-elsewhere")
    with pytest.raises(FileNotFoundError, match=r"no usable split .*'trainimgr' \(ir\)"):
        convert_dronevehicle(source, out)
    with pytest.raises(ValueError, match="border=-1"):
        convert_dronevehicle(source, out, border=-1)
    assert not out.exists()
