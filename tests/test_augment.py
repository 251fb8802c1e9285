"""Augmentation keeps colour and IR aligned (ghost_yolo/data/augment.py and the paired training pipeline): every
geometric augmentation moves all four channels together, HSV touches colour only, ir_jitter IR only."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import IMGSZ, NO_AUG, H, W, build, make_cfg, make_suffix_set, noise_bgr, sample, write_yaml
from ultralytics.data.augment import BaseMixTransform, Compose, RandomHSV

from ghost_yolo.data.augment import PairedHSV, replace_hsv
from ghost_yolo.data.check import build_dataset, check_data
from ghost_yolo.data.io import stack_modalities


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

