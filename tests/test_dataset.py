"""The paired dataset (ghost_yolo/data/dataset.py) built through build_dataset as the trainer does: modalities and
channel order, IR of another size, custom suffixes and folder names, label layouts, fractions."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from conftest import (
    IMGSZ,
    H,
    W,
    build,
    make_cfg,
    make_folders_set,
    make_suffix_set,
    noise_bgr,
    write,
    write_label,
    write_yaml,
)

from ghost_yolo.data.check import build_dataset, check_data
from ghost_yolo.data.dataset import PairedDataset


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


def test_ir_other_size_same_aspect_is_resized_with_warning(tmp_path, log):
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
    assert "differ in size" in log.text and "0000_ir.png" in log.text
    im = ds.read_pair(0)
    assert im.shape == (H, W, 4)
    diff = np.abs(im[..., 3].astype(int) - im[..., 0].astype(int))
    assert diff.mean() < 3, diff.mean()
    assert ds[0]["img"].shape == (4, IMGSZ, IMGSZ)


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


def test_folders_dataset_under_ancestor_named_infrared(tmp_path, log):
    root = tmp_path / "infrared" / "llvip"
    make_folders_set(root, n=2)
    ds = build(write_yaml(root, train="visible/train", pairing="folders"), "val")
    assert len(ds) == 2
    assert "without colour partner" not in log.text


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



def test_disk_cache_follows_a_replaced_ir_image(tmp_path):
    """A .npy pair cache older than its IR half is rewritten, in every cache mode: the new IR pixels are read."""
    import os

    root = make_suffix_set(tmp_path / "d", n=2)
    yaml_path = write_yaml(root)
    ds = build(yaml_path, cache="disk")
    npy = ds.npy_files[0]
    assert npy.exists() and np.load(npy).shape[-1] == 4
    ir = ds.pairing.partner(ds.im_files[0])
    write(ir, np.zeros((H, W), np.uint8))  # a replaced IR image, newer than the cache
    t = npy.stat().st_mtime + 5
    os.utime(ir, (t, t))
    for cache in (False, "disk"):
        im = build(yaml_path, cache=cache).load_image(0)[0]
        assert im[..., 3].max() == 0, cache  # the replaced (black) IR band, not the cached one


def test_pair_cache_is_only_read_by_the_same_pairing(tmp_path):
    """A pair cache's name says what it stacks: another modality or pairing never reads it, even if it was tampered."""
    root = make_suffix_set(tmp_path / "d", n=2)
    yaml_path = write_yaml(root)
    ds = build(yaml_path, cache="disk")
    np.save(ds.npy_files[0], np.zeros_like(np.load(ds.npy_files[0])))  # a cache this dataset wrote, now wrong
    assert build(yaml_path).load_image(0)[0].max() == 0  # same pairing and modality: Ultralytics' rule, cache read
    rgb = build(yaml_path, modality="rgb")
    ir = build(yaml_path, modality="ir")
    filled = build(yaml_path, ghost={"fill_missing": True})
    names = {ds.npy_files[0], rgb.npy_files[0], ir.npy_files[0], filled.npy_files[0]}
    assert len(names) == 4 and all(n.parent == ds.npy_files[0].parent for n in names)
    for other in (rgb, ir, filled):
        assert other.load_image(0)[0].max() > 0  # its own pair, read from the images
