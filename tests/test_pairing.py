"""Pairing conventions (ghost_yolo/data/pairing.py): VEDAI-style suffixes and LLVIP-style parallel folders, partners,
label paths, configuration and detection."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import NAMES, noise_bgr, write, write_label

from ghost_yolo.data.pairing import Pairing, detect_pairing


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

