"""Tests for paired colour + infrared data: pairing conventions, the paired dataset, bad pairs, augmentation alignment,
predict sources and the synthetic set, all on tiny images generated in tmp_path."""

from __future__ import annotations

import logging
import random
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import yaml
from ultralytics.cfg import get_cfg
from ultralytics.data.augment import BaseMixTransform, Compose, RandomHSV
from ultralytics.data.dataset import YOLODataset

from ghost_yolo.data.augment import PairedHSV, replace_hsv
from ghost_yolo.data.check import apply_modality, build_dataset, check_data
from ghost_yolo.data.dataset import PairedDataset, check_label_file
from ghost_yolo.data.io import load_pair, normalize_ir, read_ir, split_modalities, stack_modalities
from ghost_yolo.data.pairing import Pairing, detect_pairing
from ghost_yolo.data.sources import LoadImagePairs, find_pairs, is_paired_source, looks_paired
from ghost_yolo.data.synthetic import VEDAI_NAMES, generate_vedai_synth

H, W = 96, 128  # colour image size (4:3), loaded at long side IMGSZ
IMGSZ = 64
NAMES = {0: "car", 1: "van"}
BOX_LABELS = "0 0.30 0.30 0.20 0.20\n1 0.70 0.60 0.25 0.20\n"
GHOST_KEYS = ("modality", "rgb_suffix", "ir_suffix", "rgb_dir", "ir_dir")
NO_AUG = dict(mosaic=0.0, mixup=0.0, cutmix=0.0, copy_paste=0.0, degrees=0.0, translate=0.0, scale=0.0, shear=0.0,
              perspective=0.0, fliplr=0.0, flipud=0.0, hsv_h=0.0, hsv_s=0.0, hsv_v=0.0)  # fmt: skip


# Helpers --------------------------------------------------------------------------------------------------------------
def noise_bgr(seed: int, h: int = H, w: int = W) -> np.ndarray:
    """A random 8-bit BGR image: no two pixels or channels agree by accident."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def write(path: Path, im: np.ndarray) -> Path:
    """Write an image with cv2, creating folders, and fail loudly if cv2 could not."""
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), im), path
    return path


def write_label(path: Path, text: str = BOX_LABELS) -> Path:
    """Write a label file, creating folders."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def polygon_labels(i: int) -> str:
    """Two rectangle polygons on the left half (so flipped copies never overlap them), at a height that depends on i.

    Different heights per image let CutMix find cut areas that avoid one image's objects but cover another's.
    """
    y0 = 0.05 + 0.22 * (i % 4)
    rows = []
    for c, (x0, x1) in enumerate(((0.04, 0.2), (0.24, 0.42))):
        y1 = y0 + 0.16
        rows.append(f"{c} {x0} {y0} {x1} {y0} {x1} {y1} {x0} {y1}")
    return "\n".join(rows) + "\n"


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


def write_yaml(root: Path, train: str = "images/train", val: str | None = None, **extra) -> Path:
    """A data YAML with an absolute path; suffix pairing unless extra says otherwise."""
    spec = {"path": str(root), "train": train, "val": val or train, "names": NAMES, "pairing": "suffix", **extra}
    spec = {k: v for k, v in spec.items() if v is not None}
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def make_cfg(ghost: dict | None = None, **overrides):
    """Ultralytics' cfg namespace (imgsz 64) with the ghost keys set as attributes."""
    cfg = get_cfg(overrides={"imgsz": IMGSZ, "workers": 0, **overrides})
    for k in GHOST_KEYS:
        setattr(cfg, k, None)
    cfg.ir_jitter = 0.0
    for k, v in (ghost or {}).items():
        setattr(cfg, k, v)
    return cfg


def build(yaml_path: Path, mode: str = "val", modality: str | None = None, ghost: dict | None = None, **overrides):
    """Build the dataset of a data YAML through ghost's build_dataset, as the trainer and validator do."""
    data = check_data(str(yaml_path), modality, ghost)
    cfg = make_cfg(ghost, **overrides)
    return build_dataset(cfg, data["train" if mode == "train" else "val"], 2, data, mode)


def sample(ds, i: int, seed: int = 0) -> torch.Tensor:
    """dataset[i]['img'] (C x H x W uint8 tensor) with Python and NumPy random state seeded."""
    random.seed(seed)
    np.random.seed(seed)
    return ds[i]["img"]


def walk_transforms(t, seen=None):
    """Every transform reachable from t: Compose members and mix transforms' pre_transforms, recursively."""
    seen = set() if seen is None else seen
    if id(t) in seen or t is None:
        return
    seen.add(id(t))
    yield t
    if isinstance(t, Compose):
        for u in t.transforms:
            yield from walk_transforms(u, seen)
    if isinstance(t, BaseMixTransform):
        yield from walk_transforms(t.pre_transform, seen)


@pytest.fixture
def ulog(caplog):
    """Capture Ultralytics' LOGGER (it does not propagate to the root logger) at INFO level."""
    logger = logging.getLogger("ultralytics")
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="ultralytics")
    yield caplog
    logger.removeHandler(caplog.handler)


# 1. Pairing conventions -----------------------------------------------------------------------------------------------
def test_suffix_partner_and_vedai_label(tmp_path):
    p = Pairing("suffix")
    co = write(tmp_path / "images" / "0001_co.png", noise_bgr(0))
    ir = write(tmp_path / "images" / "0001_ir.png", noise_bgr(0)[..., 2])
    lb = write_label(tmp_path / "labels" / "0001.txt")
    assert p.is_colour(co) and not p.is_ir(co) and p.is_ir(ir) and not p.is_colour(ir)
    assert p.pair_id(co) == "0001"
    assert p.partner(co) == ir
    assert p.colour_of(ir) == co
    assert p.label_path(co) == lb


def test_suffix_label_ultralytics_derivation(tmp_path):
    p = Pairing("suffix")
    co = write(tmp_path / "images" / "0001_co.png", noise_bgr(0))
    lb = write_label(tmp_path / "labels" / "0001_co.txt")
    assert p.label_path(co) == lb
    # neither exists: the VEDAI name is the one reported
    assert p.label_path(tmp_path / "images" / "0002_co.png") == tmp_path / "labels" / "0002.txt"


def test_suffix_partner_with_other_extension(tmp_path):
    p = Pairing("suffix")
    co = write(tmp_path / "0001_co.jpg", noise_bgr(0))
    ir = write(tmp_path / "0001_ir.png", noise_bgr(0)[..., 2])
    assert p.partner(co) == ir
    co2 = write(tmp_path / "0002_co.jpg", noise_bgr(1))
    ir2 = write(tmp_path / "0002_ir.TIF", noise_bgr(1)[..., 2])  # upper-case extension also found
    assert p.partner(co2) == ir2
    # no partner at all: the expected path with the colour extension
    assert p.partner(tmp_path / "0003_co.jpg") == tmp_path / "0003_ir.jpg"


def test_folders_partner_and_labels(tmp_path):
    p = Pairing("folders")
    co = write(tmp_path / "visible" / "train" / "x.jpg", noise_bgr(0))
    ir = write(tmp_path / "infrared" / "train" / "x.png", noise_bgr(0)[..., 2])  # other extension
    assert p.is_colour(co) and p.is_ir(ir) and not p.is_colour(ir)
    assert p.partner(co) == ir
    assert p.colour_of(tmp_path / "infrared" / "train" / "x.jpg") == co
    lb = write_label(tmp_path / "labels" / "train" / "x.txt")  # visible segment replaced by labels
    assert p.label_path(co) == lb


def test_folders_images_style_labels(tmp_path):
    p = Pairing("folders")
    co = write(tmp_path / "images" / "visible" / "x.png", noise_bgr(0))
    lb = write_label(tmp_path / "labels" / "visible" / "x.txt")  # Ultralytics' images/ -> labels/
    assert p.partner(co) == tmp_path / "images" / "infrared" / "x.png"
    assert p.label_path(co) == lb


def test_folders_last_named_folder_is_replaced(tmp_path):
    p = Pairing("folders")
    co = tmp_path / "visible" / "set" / "visible" / "x.png"
    assert p.partner(co) == tmp_path / "visible" / "set" / "infrared" / "x.png"


def test_pairing_from_config_custom_names_and_overrides():
    d = {"pairing": "suffix", "rgb_suffix": "_rgb", "ir_suffix": "_lwir"}
    p = Pairing.from_config(d)
    assert (p.kind, p.rgb_suffix, p.ir_suffix) == ("suffix", "_rgb", "_lwir")
    assert Pairing.from_config(d, {"rgb_suffix": "_vis", "ir_suffix": None}).rgb_suffix == "_vis"
    assert Pairing.from_config(d, {"rgb_suffix": "_vis", "ir_suffix": None}).ir_suffix == "_lwir"
    f = Pairing.from_config({"pairing": "folders", "rgb_dir": "vis", "ir_dir": "lwir"})
    assert f.partner("/d/vis/a.png") == Path("/d/lwir/a.png")
    assert Pairing.from_config({"names": NAMES}) is None
    assert Pairing.from_config({"pairing": "none"}) is None
    with pytest.raises(ValueError, match="suffix, folders"):
        Pairing.from_config({"pairing": "sideways"})


def test_detect_pairing():
    assert detect_pairing([Path("a/x_co.png"), Path("a/x_ir.png")]).kind == "suffix"
    assert detect_pairing([Path("a/x_ir.png")]).kind == "suffix"
    assert detect_pairing([Path("r/infrared/x.jpg"), Path("r/visible/x.jpg")]).kind == "folders"
    custom = Pairing("suffix", "_rgb", "_t")
    assert detect_pairing([Path("x_rgb.png")], custom) is custom


# 2. PairedDataset through build_dataset -------------------------------------------------------------------------------
def test_modalities_channels_order_and_same_pairs(tmp_path):
    """Constant colour B=10, G=20, R=30 and IR=40: every modality serves the same pairs in R,G,B,IR / RGB / IR order."""

    def const_set(root):
        for i in range(3):
            bgr = np.empty((H, W, 3), np.uint8)
            bgr[...] = (10 + i, 20 + i, 30 + i)
            write(root / "images" / "train" / f"{i:04d}_co.png", bgr)
            write(root / "images" / "train" / f"{i:04d}_ir.png", np.full((H, W), 40 + i, np.uint8))
            write_label(root / "labels" / "train" / f"{i:04d}.txt", f"{i % 2} 0.5 0.5 0.2 0.2\n")

    const_set(tmp_path)
    y = write_yaml(tmp_path)
    dsets = {m: build(y, "val", m) for m in ("rgb+ir", "rgb", "ir")}
    for m, c in (("rgb+ir", 4), ("rgb", 3), ("ir", 1)):
        ds = dsets[m]
        assert isinstance(ds, PairedDataset) and ds.modality == m and ds.data["channels"] == c
        assert len(ds) == 3
        assert ds.im_files == dsets["rgb+ir"].im_files
        for a, b in zip(ds.labels, dsets["rgb+ir"].labels):
            np.testing.assert_array_equal(a["cls"], b["cls"])
            np.testing.assert_array_equal(a["bboxes"], b["bboxes"])
        for i in range(3):
            s = ds[i]
            assert s["img"].shape == (c, IMGSZ, IMGSZ) and s["img"].dtype == torch.uint8
            assert s["cls"].numel() == 1 and int(s["cls"][0]) == i % 2
            centre = s["img"][:, IMGSZ // 2, IMGSZ // 2].tolist()
            expected = {"rgb+ir": [30 + i, 20 + i, 10 + i, 40 + i], "rgb": [30 + i, 20 + i, 10 + i], "ir": [40 + i]}
            assert centre == expected[m]


def test_modalities_agree_pixel_for_pixel(tmp_path):
    """Independent IR: rgb == first 3 channels of rgb+ir, ir == its 4th channel, after letterboxing."""
    make_suffix_set(tmp_path, n=2, ir_of=lambda bgr, i: noise_bgr(100 + i)[..., 0])
    y = write_yaml(tmp_path)
    full, rgb, ir = (build(y, "val", m) for m in ("rgb+ir", "rgb", "ir"))
    for i in range(2):
        f = full[i]["img"]
        assert torch.equal(rgb[i]["img"], f[:3])
        assert torch.equal(ir[i]["img"][0], f[3])
        assert not torch.equal(f[0], f[3])


def test_ir_other_size_same_aspect_is_resized_with_warning(tmp_path, ulog):
    ramp = np.tile(np.linspace(0, 255, W).astype(np.uint8), (H, 1))
    bgr = np.dstack([ramp // 2, ramp // 3, ramp])

    def small_ir(_, i):
        return cv2.resize(ramp, (W // 2, H // 2), interpolation=cv2.INTER_AREA)

    root = tmp_path
    for i in range(2):
        write(root / "images" / "train" / f"{i:04d}_co.png", bgr)
        write(root / "images" / "train" / f"{i:04d}_ir.png", small_ir(bgr, i))
        write_label(root / "labels" / "train" / f"{i:04d}.txt")
    ds = build(write_yaml(root), "val")
    assert len(ds) == 2
    assert "differ in size" in ulog.text and "0000_ir.png" in ulog.text
    im = ds.read_pair(0)
    assert im.shape == (H, W, 4)
    diff = np.abs(im[..., 3].astype(int) - im[..., 0].astype(int))
    assert diff.mean() < 3, diff.mean()
    assert ds[0]["img"].shape == (4, IMGSZ, IMGSZ)


def test_ir_other_aspect_is_skipped_with_message(tmp_path, ulog):
    make_suffix_set(tmp_path, n=3)
    bad_ir = write(tmp_path / "images" / "train" / "0001_ir.png", noise_bgr(5, H, H)[..., 0])  # square IR
    ds = build(write_yaml(tmp_path), "val")
    assert len(ds) == 2
    assert not any("0001_co" in f for f in ds.im_files)
    assert str(bad_ir) in ulog.text and "aspect" in ulog.text


def test_16bit_ir_is_stretched_to_8bit(tmp_path):
    raw = np.tile(np.linspace(1000, 5000, W).astype(np.uint16), (H, 1))
    make_suffix_set(tmp_path, n=2, ir_of=lambda bgr, i: raw)
    assert cv2.imread(str(tmp_path / "images" / "train" / "0000_ir.png"), cv2.IMREAD_UNCHANGED).dtype == np.uint16
    ds = build(write_yaml(tmp_path), "val")
    im = ds.read_pair(0)
    assert im.dtype == np.uint8 and im.shape == (H, W, 4)
    row = im[H // 2, :, 3].astype(int)
    assert row.min() == 0 and row.max() == 255
    assert np.all(np.diff(row) >= 0) and np.count_nonzero(np.diff(row)) > 100  # monotonic, not a >> 8 near-constant
    assert abs(row[W // 2] - 127) <= 4
    assert (im[..., 3] == im[H // 2 : H // 2 + 1, :, 3]).all()  # every row the same
    s = ds[0]["img"]
    assert s.shape == (4, IMGSZ, IMGSZ) and s.dtype == torch.uint8


def test_3band_ir_becomes_one_band(tmp_path):
    """3 identical bands give that band exactly; 3 different bands give their grey value."""
    make_suffix_set(tmp_path, n=2, ir_of=lambda bgr, i: np.dstack([bgr[..., 2]] * 3) if i == 0 else noise_bgr(50))
    ds = build(write_yaml(tmp_path), "val")
    im0, im1 = ds.read_pair(0), ds.read_pair(1)
    assert im0.shape == im1.shape == (H, W, 4)
    np.testing.assert_array_equal(im0[..., 3], im0[..., 0])
    np.testing.assert_array_equal(im1[..., 3], cv2.cvtColor(noise_bgr(50), cv2.COLOR_BGR2GRAY))
    assert ds[1]["img"].shape[0] == 4


def test_normalize_ir_numbers():
    ramp16 = np.tile(np.arange(2000, 2000 + 256 * 4, 4, dtype=np.uint16), (4, 1))
    out = normalize_ir(ramp16)
    assert out.dtype == np.uint8 and out.shape == (4, 256)
    assert out.min() == 0 and out.max() == 255 and np.all(np.diff(out[0].astype(int)) >= 0)
    assert np.ptp(ramp16 >> 8) < 8 < np.ptp(out)  # the plain >> 8 would be nearly constant
    u8 = noise_bgr(3)[..., 0]
    assert normalize_ir(u8) is u8
    assert normalize_ir(u8[..., None]).shape == u8.shape
    grey = np.dstack([u8] * 3)
    np.testing.assert_array_equal(normalize_ir(grey), u8)
    const = np.full((8, 8), 3000, np.uint16)
    assert normalize_ir(const).dtype == np.uint8


def test_read_ir_names_the_file(tmp_path):
    bad = tmp_path / "x_ir.png"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(FileNotFoundError, match="x_ir.png"):
        read_ir(bad)


def test_stack_and_split_roundtrip():
    bgr, ir = noise_bgr(1), noise_bgr(2)[..., 0]
    st = stack_modalities(bgr, ir, "rgb+ir")
    assert st.shape == (H, W, 4)
    np.testing.assert_array_equal(st[..., 0], bgr[..., 2])  # R first
    np.testing.assert_array_equal(st[..., 2], bgr[..., 0])
    np.testing.assert_array_equal(st[..., 3], ir)
    b2, ir2 = split_modalities(st, "rgb+ir")
    np.testing.assert_array_equal(b2, bgr)
    np.testing.assert_array_equal(ir2, ir)
    assert stack_modalities(bgr, None, "rgb") is bgr
    assert stack_modalities(None, ir, "ir").shape == (H, W, 1)


def test_custom_suffixes_from_yaml(tmp_path):
    make_suffix_set(tmp_path, n=3, rgb_suffix="_rgb", ir_suffix="_thermal")
    ds = build(write_yaml(tmp_path, rgb_suffix="_rgb", ir_suffix="_thermal"), "val")
    assert len(ds) == 3
    assert all(f.endswith("_rgb.png") for f in ds.im_files)
    assert all(f.endswith("_thermal.png") for f in ds.ir_files)
    assert sum(len(lb["cls"]) for lb in ds.labels) == 6


def test_custom_suffixes_from_cfg_override_yaml(tmp_path):
    make_suffix_set(tmp_path, n=2, rgb_suffix="_vis", ir_suffix="_lw")
    y = write_yaml(tmp_path)  # YAML keeps the default _co/_ir
    ds = build(y, "val", ghost={"rgb_suffix": "_vis", "ir_suffix": "_lw"})
    assert len(ds) == 2 and ds.pairing.rgb_suffix == "_vis"
    assert all(f.endswith("_lw.png") for f in ds.ir_files)


def test_suffix_ultralytics_label_names(tmp_path):
    make_suffix_set(tmp_path, n=2, label_style="ultralytics")  # labels/train/0000_co.txt
    ds = build(write_yaml(tmp_path), "val")
    assert all(Path(f).name.endswith("_co.txt") for f in ds.label_files)
    assert sum(len(lb["cls"]) for lb in ds.labels) == 4


def test_colour_jpg_ir_png(tmp_path):
    make_suffix_set(tmp_path, n=3, co_ext=".jpg", ir_ext=".png")
    ds = build(write_yaml(tmp_path), "val")
    assert len(ds) == 3
    assert all(f.endswith("_ir.png") and Path(f).exists() for f in ds.ir_files)
    assert ds[0]["img"].shape[0] == 4


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


def test_folders_dataset(tmp_path):
    make_folders_set(tmp_path)
    ds = build(write_yaml(tmp_path, train="visible/train", pairing="folders"), "val")
    assert len(ds) == 3 and ds.pairing.kind == "folders"
    assert all("/infrared/train/" in f for f in ds.ir_files)
    assert all(Path(f).parent == tmp_path / "labels" / "train" for f in ds.label_files)
    assert sum(len(lb["cls"]) for lb in ds.labels) == 6
    s = ds[0]["img"]
    assert s.shape == (4, IMGSZ, IMGSZ) and torch.equal(s[0], s[3])


def test_folders_dataset_images_style(tmp_path):
    make_folders_set(tmp_path, images_style=True)
    ds = build(write_yaml(tmp_path, train="images/visible/train", pairing="folders"), "val")
    assert len(ds) == 3
    assert all(Path(f).parent == tmp_path / "labels" / "visible" / "train" for f in ds.label_files)
    assert sum(len(lb["cls"]) for lb in ds.labels) == 6


def test_folders_dataset_root_holding_both_folders(tmp_path):
    """train: the root that holds visible/ and infrared/; the IR images are not taken for colour ones."""
    make_folders_set(tmp_path, split="", labels_at=tmp_path / "labels")
    ds = build(write_yaml(tmp_path, train=str(tmp_path), pairing="folders"), "val")
    assert len(ds) == 3
    assert all("/visible/" in f for f in ds.im_files)
    assert sum(len(lb["cls"]) for lb in ds.labels) == 6


def test_custom_folder_names_from_yaml(tmp_path):
    make_folders_set(tmp_path, rgb_dir="vis", ir_dir="lwir")
    ds = build(write_yaml(tmp_path, train="vis/train", pairing="folders", rgb_dir="vis", ir_dir="lwir"), "val")
    assert len(ds) == 3
    assert all("/lwir/train/" in f for f in ds.ir_files)
    assert sum(len(lb["cls"]) for lb in ds.labels) == 6


def test_apply_modality():
    paired = {"pairing": "suffix", "names": NAMES}
    assert apply_modality(dict(paired))["channels"] == 4
    assert apply_modality(dict(paired), "IR")["channels"] == 1
    assert apply_modality({**paired, "modality": "rgb"})["modality"] == "rgb"
    assert apply_modality({**paired, "modality": "rgb"}, "rgb+ir")["channels"] == 4  # the argument wins
    assert apply_modality({"names": NAMES, "channels": 3})["modality"] == "rgb"
    with pytest.raises(ValueError, match="needs paired data"):
        apply_modality({"names": NAMES, "channels": 3}, "rgb+ir")
    with pytest.raises(ValueError, match="rgb\\+ir"):
        apply_modality(dict(paired), "thermal")


def test_unpaired_yaml_builds_plain_dataset(tmp_path):
    for i in range(2):
        write(tmp_path / "images" / "train" / f"{i}.png", noise_bgr(i))
        write_label(tmp_path / "labels" / "train" / f"{i}.txt")
    ds = build(write_yaml(tmp_path, pairing=None), "val")
    assert type(ds) is YOLODataset and not isinstance(ds, PairedDataset)
    assert ds[0]["img"].shape == (3, IMGSZ, IMGSZ)


# 3. Bad pairs ---------------------------------------------------------------------------------------------------------
def test_missing_ir_partner(tmp_path, ulog):
    make_suffix_set(tmp_path, n=4)
    ir = tmp_path / "images" / "train" / "0002_ir.png"
    ir.unlink()
    ds = build(write_yaml(tmp_path), "val")
    assert len(ds) == 3 and not any("0002_co" in f for f in ds.im_files)
    msg = next(line for line in ulog.text.splitlines() if "missing IR partner" in line)
    assert str(tmp_path / "images" / "train" / "0002_co.png") in msg and str(ir) in msg


def test_corrupt_ir(tmp_path, ulog):
    make_suffix_set(tmp_path, n=4)
    ir = tmp_path / "images" / "train" / "0001_ir.png"
    ir.write_bytes(b"\x89PNG garbage " * 20)
    ds = build(write_yaml(tmp_path), "val")
    assert len(ds) == 3 and not any("0001_co" in f for f in ds.im_files)
    assert any(str(ir) in line and "corrupt" in line for line in ulog.text.splitlines())


def test_corrupt_colour(tmp_path, ulog):
    make_suffix_set(tmp_path, n=4)
    co = tmp_path / "images" / "train" / "0003_co.png"
    co.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    ds = build(write_yaml(tmp_path), "val")
    assert len(ds) == 3 and str(co) not in ds.im_files
    assert any(str(co) in line and "corrupt" in line for line in ulog.text.splitlines())


def test_label_wrong_field_count(tmp_path, ulog):
    make_suffix_set(tmp_path, n=3)
    lb = write_label(tmp_path / "labels" / "train" / "0001.txt", "0 0.5 0.5 0.2 0.2\n\n1 0.5 0.5 0.2\n")
    ds = build(write_yaml(tmp_path), "val")
    assert len(ds) == 2
    assert f"{lb}:3: expected 5 fields" in ulog.text and "got 4" in ulog.text


def test_label_class_out_of_range(tmp_path, ulog):
    make_suffix_set(tmp_path, n=3)
    lb = write_label(tmp_path / "labels" / "train" / "0000.txt", "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n2 0.6 0.6 0.1 0.1\n")
    ds = build(write_yaml(tmp_path), "val")
    assert len(ds) == 2
    line = next(x for x in ulog.text.splitlines() if f"{lb}:3" in x)
    assert "class id 2" in line and "nc=2" in line


def test_check_label_file(tmp_path):
    ok = write_label(tmp_path / "ok.txt", "0 0.5 0.5 0.2 0.2\n1 0.1 0.1 0.2 0.1 0.2 0.2\n")  # box + polygon row
    assert check_label_file(str(ok), 2) == ""
    assert check_label_file(str(tmp_path / "absent.txt"), 2) == ""  # missing label = background
    six = write_label(tmp_path / "six.txt", "0 0.5 0.5 0.2 0.2 0.1\n")
    assert check_label_file(str(six), 2).startswith(f"{six}:1:")
    text = write_label(tmp_path / "text.txt", "car 0.5 0.5 0.2 0.2\n")
    assert "non-numeric" in check_label_file(str(text), 2)
    big = write_label(tmp_path / "big.txt", "5 0.5 0.5 0.2 0.2\n")
    assert "nc=2" in check_label_file(str(big), 2)
    assert check_label_file(str(big), 2, single_cls=True) == ""
    neg = write_label(tmp_path / "neg.txt", "-1 0.5 0.5 0.2 0.2\n")
    assert check_label_file(str(neg), 2)


def test_empty_dataset_clear_error(tmp_path):
    for i in range(2):  # IR only: no colour images anywhere
        write(tmp_path / "images" / "train" / f"{i:04d}_ir.png", noise_bgr(i)[..., 0])
    where = str(tmp_path / "images" / "train")
    with pytest.raises(FileNotFoundError, match=f"no image pairs found in {where}: 2 IR images but no colour.*_co"):
        build(write_yaml(tmp_path), "val")


def test_empty_folder_says_no_pairs_and_where(tmp_path):
    (tmp_path / "images" / "train").mkdir(parents=True)
    (tmp_path / "images" / "train" / "notes.txt").write_text("no images here")
    with pytest.raises(FileNotFoundError) as e:
        build(write_yaml(tmp_path), "val")
    msg = str(e.value)
    assert "no image pairs found in" in msg and str(tmp_path / "images" / "train") in msg and "_ir" in msg
    assert "\n" not in msg


def test_all_pairs_bad_clear_error(tmp_path):
    make_suffix_set(tmp_path, n=2)
    for i in range(2):
        (tmp_path / "images" / "train" / f"{i:04d}_ir.png").unlink()
    with pytest.raises(RuntimeError) as e:
        build(write_yaml(tmp_path), "val")
    msg = str(e.value)
    assert "no image pairs found in" in msg and str(tmp_path / "images" / "train") in msg
    assert "missing IR partner" in msg and "\n" not in msg


def test_orphan_ir_is_reported(tmp_path, ulog):
    make_suffix_set(tmp_path, n=2)
    orphan = write(tmp_path / "images" / "train" / "0007_ir.png", noise_bgr(7)[..., 0])
    ds = build(write_yaml(tmp_path), "val")
    assert len(ds) == 2
    line = next(x for x in ulog.text.splitlines() if "without colour partner" in x)
    assert str(orphan) in line and str(tmp_path / "images" / "train" / "0007_co.png") in line


def test_no_orphan_warning_when_extensions_differ(tmp_path, ulog):
    make_suffix_set(tmp_path, n=2, co_ext=".jpg", ir_ext=".png")
    build(write_yaml(tmp_path), "val")
    assert "without colour partner" not in ulog.text


def test_integer_fraction_counts_pairs(tmp_path):
    make_suffix_set(tmp_path, n=6)
    y = write_yaml(tmp_path)
    data = check_data(str(y))
    ds = build_dataset(make_cfg(), data["train"], 2, data, "train", fraction=4)
    assert len(ds) == 4


def test_float_fraction_on_folders_root(tmp_path):
    make_folders_set(tmp_path, split="", n=4, labels_at=tmp_path / "labels")
    data = check_data(str(write_yaml(tmp_path, train=str(tmp_path), pairing="folders")))
    ds = build_dataset(make_cfg(fraction=0.5), data["train"], 2, data, "train")
    assert len(ds) == 2


def test_folders_dataset_under_ancestor_named_infrared(tmp_path, ulog):
    root = tmp_path / "infrared" / "llvip"
    make_folders_set(root, n=2)
    ds = build(write_yaml(root, train="visible/train", pairing="folders"), "val")
    assert len(ds) == 2
    assert "without colour partner" not in ulog.text


# 4. Alignment after augmentation --------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def aligned_yaml(tmp_path_factory) -> Path:
    """6 noise pairs whose IR file is the colour image's R channel, with polygon labels (CopyPaste needs segments)."""
    root = tmp_path_factory.mktemp("aligned")
    make_suffix_set(root, n=6, labels=polygon_labels)
    return write_yaml(root)


def train_set(yaml_path: Path, ir_jitter: float = 0.0, **aug):
    return build(yaml_path, "train", ghost={"ir_jitter": ir_jitter}, **{**NO_AUG, **aug})


AUGMENTATIONS = {
    "mosaic": dict(mosaic=1.0),
    "degrees": dict(degrees=30.0),
    "translate": dict(translate=0.3),
    "scale": dict(scale=0.5),
    "shear": dict(shear=10.0),
    "perspective": dict(perspective=0.001),
    "mixup": dict(mixup=1.0),
    "cutmix": dict(cutmix=1.0),
    "copy_paste": dict(copy_paste=1.0, copy_paste_mode="flip"),
    "fliplr": dict(fliplr=1.0),
    "flipud": dict(flipud=1.0),
    "all": dict(mosaic=1.0, degrees=20.0, translate=0.2, scale=0.5, shear=5.0, mixup=1.0, cutmix=1.0,
                copy_paste=1.0, fliplr=1.0, flipud=1.0),
}  # fmt: skip


@pytest.fixture(scope="module")
def baseline(aligned_yaml):
    """Samples of the training set with every augmentation off (same seeds as the augmented ones)."""
    ds = train_set(aligned_yaml)
    return [sample(ds, i, seed=i) for i in range(len(ds))]


@pytest.mark.parametrize("name", list(AUGMENTATIONS))
def test_ir_stays_aligned_after_augmentation(aligned_yaml, baseline, name):
    ds = train_set(aligned_yaml, **AUGMENTATIONS[name])
    changed = 0
    for i in range(len(ds)):
        img = sample(ds, i, seed=i)
        assert img.shape == (4, IMGSZ, IMGSZ)
        assert torch.equal(img[0], img[3]), f"{name}: IR moved apart from colour in sample {i}"
        assert not torch.equal(img[0], img[1])  # the check is not trivially true
        changed += not torch.equal(img, baseline[i])
    assert changed, f"{name} changed no sample: the augmentation did not run"


def test_baseline_is_aligned(baseline):
    for img in baseline:
        assert img.shape == (4, IMGSZ, IMGSZ) and torch.equal(img[0], img[3])


def test_flips_move_all_channels_exactly(aligned_yaml, baseline):
    lr, ud = train_set(aligned_yaml, fliplr=1.0), train_set(aligned_yaml, flipud=1.0)
    for i in range(3):
        assert torch.equal(sample(lr, i, seed=i), baseline[i].flip(-1))
        assert torch.equal(sample(ud, i, seed=i), baseline[i].flip(-2))


def test_val_letterbox_keeps_alignment_and_pads_ir(aligned_yaml):
    ds = build(aligned_yaml, "val")
    assert not ds.augment
    for i in range(3):
        img = sample(ds, i)
        assert img.shape == (4, IMGSZ, IMGSZ)
        assert torch.equal(img[0], img[3])
        assert (img[:, 0] == 114).all() and (img[:, -1] == 114).all()  # 4:3 image: padded rows in every channel


def test_hsv_in_pipeline_changes_colour_only(aligned_yaml, baseline):
    ds = train_set(aligned_yaml, hsv_h=0.5, hsv_s=0.9, hsv_v=0.9)
    changed = 0
    for i in range(len(ds)):
        img = sample(ds, i, seed=i)
        assert torch.equal(img[3], baseline[i][3])
        changed += not torch.equal(img[:3], baseline[i][:3])
    assert changed


def test_ir_jitter_in_pipeline_changes_ir_only(aligned_yaml, baseline):
    ds = train_set(aligned_yaml, ir_jitter=0.5)
    changed = 0
    for i in range(len(ds)):
        img = sample(ds, i, seed=i)
        assert torch.equal(img[:3], baseline[i][:3])
        changed += not torch.equal(img[3], baseline[i][3])
    assert changed


def test_no_random_hsv_left_in_transforms(aligned_yaml):
    for modality in ("rgb+ir", "rgb", "ir"):
        data = check_data(str(aligned_yaml), modality)
        cfg = make_cfg({"ir_jitter": 0.3}, hsv_h=0.1, hsv_s=0.2, hsv_v=0.3, mixup=1.0, copy_paste=0.5,
                       copy_paste_mode="mixup")
        ds = build_dataset(cfg, data["train"], 2, data, "train")
        ts = list(walk_transforms(ds.transforms))
        assert not [t for t in ts if type(t) is RandomHSV], modality
        paired = [t for t in ts if isinstance(t, PairedHSV)]
        assert len(paired) == 1, modality
        hsv = paired[0]
        assert (hsv.hgain, hsv.sgain, hsv.vgain, hsv.ir_jitter, hsv.modality) == (0.1, 0.2, 0.3, 0.3, modality)


def test_replace_hsv_nested():
    inner = Compose([RandomHSV(0.1, 0.1, 0.1)])
    outer = Compose([inner, RandomHSV(0.2, 0.2, 0.2)])
    hsv = PairedHSV(0.3, 0.3, 0.3)
    assert replace_hsv(outer, hsv) is outer
    assert inner.transforms[0] is hsv and outer.transforms[1] is hsv


def test_paired_hsv_matches_colour_hsv_and_spares_ir():
    """Colour channels get exactly what RandomHSV does to the BGR image; IR is untouched when ir_jitter=0."""
    bgr = noise_bgr(11)
    ir = noise_bgr(12)[..., 0]
    img = stack_modalities(bgr, ir, "rgb+ir").copy()
    np.random.seed(3)
    PairedHSV(0.5, 0.9, 0.9, ir_jitter=0.0)({"img": img})
    ref = bgr.copy()
    np.random.seed(3)
    RandomHSV(0.5, 0.9, 0.9)({"img": ref})
    assert not np.array_equal(ref, bgr)
    np.testing.assert_array_equal(img[..., :3], ref[..., ::-1])
    np.testing.assert_array_equal(img[..., 3], ir)


def test_paired_hsv_ir_jitter_changes_ir_only():
    bgr = noise_bgr(13)
    ir = (np.random.default_rng(14).normal(128, 20, (H, W))).clip(0, 255).astype(np.uint8)  # little clipping
    img = stack_modalities(bgr, ir, "rgb+ir").copy()
    colour = img[..., :3].copy()
    np.random.seed(5)
    PairedHSV(0.0, 0.0, 0.0, ir_jitter=0.5)({"img": img})
    np.testing.assert_array_equal(img[..., :3], colour)
    assert not np.array_equal(img[..., 3], ir)
    ratio = img[..., 3].astype(float).std() / ir.astype(float).std()
    assert 0.45 <= ratio <= 1.55  # contrast changed by at most ir_jitter
    one = ir[..., None].copy()
    PairedHSV(0.5, 0.5, 0.5, ir_jitter=0.5, modality="ir")({"img": one})
    assert one.shape == (H, W, 1) and not np.array_equal(one[..., 0], ir)


# 5. Predict sources ---------------------------------------------------------------------------------------------------
def test_find_pairs_suffix_folder(tmp_path):
    make_suffix_set(tmp_path, n=3)
    d = tmp_path / "images" / "train"
    pairs = find_pairs(d)
    assert pairs == [(d / f"{i:04d}_co.png", d / f"{i:04d}_ir.png") for i in range(3)]


def test_find_pairs_llvip_root(tmp_path):
    make_folders_set(tmp_path, split="", n=2)
    pairs = find_pairs(tmp_path)
    assert pairs == [(tmp_path / "visible" / f"{190001 + i}.png", tmp_path / "infrared" / f"{190001 + i}.png")
                     for i in range(2)]  # fmt: skip


def test_find_pairs_single_colour_and_single_ir(tmp_path):
    co = write(tmp_path / "a_co.png", noise_bgr(0))
    ir = write(tmp_path / "a_ir.png", noise_bgr(0)[..., 2])
    assert find_pairs(co) == [(co, ir)]
    assert find_pairs(str(ir)) == [(co, ir)]
    assert find_pairs([co, ir]) == [(co, ir)]


def test_find_pairs_two_explicit_files(tmp_path):
    co = write(tmp_path / "scene.png", noise_bgr(0))
    ir = write(tmp_path / "scene_thermal.tif", noise_bgr(0)[..., 2])
    assert find_pairs([co, ir]) == [(co, ir)]
    assert find_pairs(f"{co},{ir}") == [(co, ir)]


def test_find_pairs_skips_unpaired_with_warning(tmp_path, ulog):
    make_suffix_set(tmp_path, n=2)
    d = tmp_path / "images" / "train"
    lone = write(d / "0005_co.png", noise_bgr(5))
    pairs = find_pairs(d)
    assert len(pairs) == 2 and all(c != lone for c, _ in pairs)
    line = next(x for x in ulog.text.splitlines() if str(lone) in x)
    assert "missing IR partner" in line and str(d / "0005_ir.png") in line
    with pytest.raises(FileNotFoundError, match="no image pairs found in predict source"):
        find_pairs(lone)


def test_find_pairs_other_extension_folder(tmp_path):
    make_suffix_set(tmp_path, n=2, co_ext=".jpg", ir_ext=".png")
    d = tmp_path / "images" / "train"
    assert find_pairs(d) == [(d / f"{i:04d}_co.jpg", d / f"{i:04d}_ir.png") for i in range(2)]


def test_find_pairs_ir_alone_other_extension(tmp_path):
    co = write(tmp_path / "a_co.jpg", noise_bgr(0))
    ir = write(tmp_path / "a_ir.png", noise_bgr(0)[..., 2])
    assert find_pairs(ir) == [(co, ir)]


def test_find_pairs_other_extension_no_spurious_warning(tmp_path, ulog):
    make_suffix_set(tmp_path, n=2, co_ext=".jpg", ir_ext=".png")
    find_pairs(tmp_path / "images" / "train")
    assert "without colour partner" not in ulog.text


def test_find_pairs_folders_under_ancestor_named_infrared(tmp_path):
    root = tmp_path / "infrared" / "llvip"
    make_folders_set(root, n=2)
    pairs = find_pairs(root / "visible" / "train")
    assert pairs == [(root / "visible" / "train" / f"{190001 + i}.png", root / "infrared" / "train" / f"{190001 + i}.png")
                     for i in range(2)]  # fmt: skip


def test_is_paired_source_and_looks_paired(tmp_path):
    make_suffix_set(tmp_path, n=1)
    d = tmp_path / "images" / "train"
    assert is_paired_source(str(d)) and is_paired_source([d / "0000_co.png", d / "0000_ir.png"])
    assert not is_paired_source(noise_bgr(0)) and not is_paired_source("rtsp://camera/stream")
    assert looks_paired(d) and looks_paired(d / "0000_ir.png")
    plain = write(tmp_path / "plain" / "x.png", noise_bgr(1))
    assert not looks_paired(plain.parent)


def test_load_image_pairs_channels(tmp_path, ulog):
    make_suffix_set(tmp_path, n=3)
    d = tmp_path / "images" / "train"
    pairs = find_pairs(d)
    for modality, c in (("rgb+ir", 4), ("rgb", 3), ("ir", 1)):
        batches = list(LoadImagePairs(pairs, modality, batch=2))
        assert [len(b[1]) for b in batches] == [2, 1]
        assert [p for b in batches for p in b[0]] == [str(co) for co, _ in pairs]
        for _, imgs, _ in batches:
            for im in imgs:
                assert im.shape == (H, W, c) and im.dtype == np.uint8
    first = next(iter(LoadImagePairs(pairs, "rgb+ir")))[1][0]
    np.testing.assert_array_equal(first, load_pair(*pairs[0], "rgb+ir"))
    np.testing.assert_array_equal(first[..., 0], first[..., 3])
    (d / "0001_ir.png").write_bytes(b"garbage")  # unreadable pair: reported and skipped
    got = [p for b in LoadImagePairs(pairs, "rgb+ir", batch=1) for p in b[0]]
    assert got == [str(pairs[0][0]), str(pairs[2][0])]
    assert "0001_ir.png" in ulog.text


# 6. Synthetic set -----------------------------------------------------------------------------------------------------
def test_vedai_synth_loads_with_labels(tmp_path):
    root = generate_vedai_synth(tmp_path / "synth", n_train=3, n_val=2, imgsz=64, seed=0, workers=1)
    y = root / "synth.yaml"
    y.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val",
                                 "pairing": "suffix", "names": VEDAI_NAMES}))  # fmt: skip
    for mode, n in (("train", 3), ("val", 2)):
        ds = build(y, mode, **NO_AUG)
        assert isinstance(ds, PairedDataset) and len(ds) == n
        assert all(Path(f).name == f"{Path(c).name[:8]}.txt" for f, c in zip(ds.label_files, ds.im_files))
        assert sum(len(lb["cls"]) for lb in ds.labels) > 0
        s = ds[0]
        assert s["img"].shape == (4, IMGSZ, IMGSZ) and s["cls"].numel() > 0
