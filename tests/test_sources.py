"""Predict sources (ghost_yolo/data/sources.py): finding pairs in folders, single files and explicit lists, and
loading them in every modality."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import H, W, make_folders_set, make_suffix_set, noise_bgr, write

from ghost_yolo.data.io import load_pair
from ghost_yolo.data.sources import LoadImagePairs, find_pairs, is_paired_source, looks_paired


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


def test_find_pairs_skips_unpaired_with_warning(tmp_path, log):
    make_suffix_set(tmp_path, n=2)
    d = tmp_path / "images" / "train"
    lone = write(d / "0005_co.png", noise_bgr(5))
    pairs = find_pairs(d)
    assert len(pairs) == 2 and all(c != lone for c, _ in pairs)
    line = next(x for x in log.text.splitlines() if str(lone) in x)
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


def test_find_pairs_other_extension_no_spurious_warning(tmp_path, log):
    make_suffix_set(tmp_path, n=2, co_ext=".jpg", ir_ext=".png")
    find_pairs(tmp_path / "images" / "train")
    assert "without colour partner" not in log.text


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


def test_load_image_pairs_channels(tmp_path, log):
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
    assert "0001_ir.png" in log.text

