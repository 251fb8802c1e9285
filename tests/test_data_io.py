"""Reading and stacking the two bands (ghost_yolo/data/io.py): 16-bit and 3-band IR normalised to one 8-bit band, the
R,G,B,IR stack and its inverse, unreadable files named."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from conftest import IMGSZ, H, W, build, make_suffix_set, noise_bgr, write_yaml

from ghost_yolo.data.io import normalize_ir, read_ir, split_modalities, stack_modalities


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

