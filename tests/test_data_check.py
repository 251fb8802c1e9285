"""Data checks (ghost_yolo/data/check.py and the dataset's pair/label checks): modality from the YAML, unpaired data,
bad pairs and labels skipped with a message naming the file, clear one-line errors when nothing is left."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import IMGSZ, NAMES, H, build, make_suffix_set, noise_bgr, write, write_label, write_yaml
from ultralytics.data.dataset import YOLODataset

from ghost_yolo.data.check import apply_modality
from ghost_yolo.data.dataset import PairedDataset, check_label_file


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


def test_missing_ir_partner(tmp_path, log):
    make_suffix_set(tmp_path, n=4)
    ir = tmp_path / "images" / "train" / "0002_ir.png"
    ir.unlink()
    ds = build(write_yaml(tmp_path), "val")
    assert len(ds) == 3 and not any("0002_co" in f for f in ds.im_files)
    msg = next(line for line in log.text.splitlines() if "missing IR partner" in line)
    assert str(tmp_path / "images" / "train" / "0002_co.png") in msg and str(ir) in msg


def test_corrupt_ir(tmp_path, log):
    make_suffix_set(tmp_path, n=4)
    ir = tmp_path / "images" / "train" / "0001_ir.png"
    ir.write_bytes(b"\x89PNG garbage " * 20)
    ds = build(write_yaml(tmp_path), "val")
    assert len(ds) == 3 and not any("0001_co" in f for f in ds.im_files)
    assert any(str(ir) in line and "corrupt" in line for line in log.text.splitlines())


def test_corrupt_colour(tmp_path, log):
    make_suffix_set(tmp_path, n=4)
    co = tmp_path / "images" / "train" / "0003_co.png"
    co.write_bytes(np.random.default_rng(0).integers(0, 256, 500, dtype=np.uint8).tobytes())
    ds = build(write_yaml(tmp_path), "val")
    assert len(ds) == 3 and str(co) not in ds.im_files
    assert any(str(co) in line and "corrupt" in line for line in log.text.splitlines())


def test_ir_other_aspect_is_skipped_with_message(tmp_path, log):
    make_suffix_set(tmp_path, n=3)
    bad_ir = write(tmp_path / "images" / "train" / "0001_ir.png", noise_bgr(5, H, H)[..., 0])  # square IR
    ds = build(write_yaml(tmp_path), "val")
    assert len(ds) == 2
    assert not any("0001_co" in f for f in ds.im_files)
    assert str(bad_ir) in log.text and "aspect" in log.text


def test_label_wrong_field_count(tmp_path, log):
    make_suffix_set(tmp_path, n=3)
    lb = write_label(tmp_path / "labels" / "train" / "0001.txt", "0 0.5 0.5 0.2 0.2\n\n1 0.5 0.5 0.2\n")
    ds = build(write_yaml(tmp_path), "val")
    assert len(ds) == 2
    assert f"{lb}:3: expected 5 fields" in log.text and "got 4" in log.text


def test_label_class_out_of_range(tmp_path, log):
    make_suffix_set(tmp_path, n=3)
    lb = write_label(tmp_path / "labels" / "train" / "0000.txt", "0 0.5 0.5 0.2 0.2\n1 0.3 0.3 0.1 0.1\n2 0.6 0.6 0.1 0.1\n")
    ds = build(write_yaml(tmp_path), "val")
    assert len(ds) == 2
    line = next(x for x in log.text.splitlines() if f"{lb}:3" in x)
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


def test_orphan_ir_is_reported(tmp_path, log):
    make_suffix_set(tmp_path, n=2)
    orphan = write(tmp_path / "images" / "train" / "0007_ir.png", noise_bgr(7)[..., 0])
    ds = build(write_yaml(tmp_path), "val")
    assert len(ds) == 2
    line = next(x for x in log.text.splitlines() if "without colour partner" in x)
    assert str(orphan) in line and str(tmp_path / "images" / "train" / "0007_co.png") in line


def test_no_orphan_warning_when_extensions_differ(tmp_path, log):
    make_suffix_set(tmp_path, n=2, co_ext=".jpg", ir_ext=".png")
    build(write_yaml(tmp_path), "val")
    assert "without colour partner" not in log.text

