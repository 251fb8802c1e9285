"""Paired colour + infrared detection dataset on top of Ultralytics' YOLODataset.

Both images of a pair are stacked channel-wise in ``load_image``, before any augmentation, so every geometric
transform moves them together. Labels, caching, mosaic, letterboxing and collation are Ultralytics' own.
"""

from __future__ import annotations

import math
from itertools import repeat
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image
from ultralytics.data.dataset import YOLODataset
from ultralytics.data.utils import get_hash, verify_image_label
from ultralytics.utils import LOGGER

from .augment import PairedHSV, replace_hsv
from .io import check_modality, load_pair
from .pairing import Pairing


def check_label_file(lb_file: str, nc: int, single_cls: bool = False) -> str:
    """Return '' if a YOLO label file is well formed, else one message naming the file, line and problem."""
    if not Path(lb_file).is_file():
        return ""
    with open(lb_file, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 5 and not (len(fields) > 6 and len(fields) % 2 == 1):  # box row or polygon row
                return f"{lb_file}:{n}: expected 5 fields 'class x y w h', got {len(fields)}"
            try:
                values = [float(x) for x in fields]
            except ValueError:
                return f"{lb_file}:{n}: non-numeric field in '{line.strip()}'"
            c = values[0]
            if c != int(c) or c < 0 or (c >= nc and not single_cls):
                return f"{lb_file}:{n}: class id {fields[0]} is not in 0..{nc - 1} (nc={nc} from the data YAML names)"
    return ""


def verify_pair(args: tuple) -> list:
    """Verify one pair and its labels; returns Ultralytics' verification tuple plus 'IR needs resizing'."""
    im_file, ir_file, lb_file, prefix, nc, single_cls, need_ir = args
    bad = [None] * 5 + [0, 0, 0, 1]
    if need_ir:
        if not Path(ir_file).exists():
            return [*bad, f"{prefix}{im_file}: missing IR partner {ir_file}, pair skipped", False]
        try:
            with Image.open(ir_file) as ir:
                ir.verify()
            with Image.open(ir_file) as ir:
                iw, ih = ir.size
        except Exception as e:
            return [*bad, f"{prefix}{ir_file}: corrupt IR image ({e}), pair skipped", False]
    if msg := check_label_file(lb_file, nc, single_cls):
        return [*bad, f"{prefix}{msg}, pair skipped", False]
    result = list(verify_image_label((im_file, lb_file, prefix, False, nc, 0, 0, single_cls)))
    if result[0] is None or not need_ir:
        return [*result, False]
    h, w = result[2]
    if abs(iw / ih - w / h) > 0.01:
        result[:5] = [None] * 5
        result[8] = 1
        result[9] = f"{prefix}{im_file}: colour {w}x{h} and IR {iw}x{ih} ({ir_file}) differ in aspect ratio, pair skipped"
        return [*result, False]
    return [*result, (ih, iw) != (h, w)]


class PairedDataset(YOLODataset):
    """YOLO dataset of colour + infrared pairs, served as one stacked array in the modality's channel order.

    Args:
        pairing (Pairing): How colour images find their IR partners and labels.
        modality (str): ``rgb+ir``, ``rgb`` or ``ir``; the same pairs are used in every mode, so modalities compare.
        ir_jitter (float): IR brightness/contrast jitter during training.
    """

    def __init__(self, *args, pairing: Pairing, modality: str = "rgb+ir", ir_jitter: float = 0.0, **kwargs):
        """Set pairing and modality before the parent scans files and labels."""
        self.pairing = pairing
        self.modality = check_modality(modality)
        self.ir_jitter = ir_jitter
        self._ir_resize_noted = False
        super().__init__(*args, **kwargs)

    # Files and labels -------------------------------------------------------------------------------------------------
    def get_img_files(self, img_path: str | list[str]) -> list[str]:
        """Keep the colour half of each pair; IR images without a colour partner are reported by name."""
        fraction, self.fraction = self.fraction, 1.0  # the fraction counts pairs, not colour + IR files
        try:
            files = super().get_img_files(img_path)
        finally:
            self.fraction = fraction
        colour = [f for f in files if self.pairing.is_colour(f)]
        orphans = [f for f in files if self.pairing.is_ir(f) and not self.pairing.colour_of(f).exists()]
        for f in orphans[:5]:
            LOGGER.warning(f"{self.prefix}{f}: IR image without colour partner {self.pairing.colour_of(f)}, skipped")
        if len(orphans) > 5:
            LOGGER.warning(f"{self.prefix}{len(orphans) - 5} more IR images without colour partner skipped")
        if not colour:
            p = self.pairing
            what = f"'*{p.rgb_suffix}.*' files" if p.kind == "suffix" else f"images under a '{p.rgb_dir}/' folder"
            raise FileNotFoundError(f"{self.prefix}no colour images ({what}) in {img_path}: check pairing in the data YAML")
        count = fraction if isinstance(fraction, int) else max(1, round(len(colour) * fraction))
        return colour[:count]

    def get_label_files(self) -> list[str]:
        """Label file per pair (``labels/<pair id>.txt`` or Ultralytics' derivation) and the IR partner paths."""
        self.ir_files = [str(self.pairing.partner(f)) for f in self.im_files]
        self.label_files = [str(self.pairing.label_path(f)) for f in self.im_files]
        return self.label_files

    def get_cache_hash(self) -> str:
        """Include IR partners and the pairing in the cache hash so a changed pairing rescans."""
        return get_hash(self.ir_files + [str(self.pairing), super().get_cache_hash()])  # parent hashes images+labels

    def verify_args(self) -> tuple:
        """Verify pairs in parallel with ``verify_pair``."""
        nc = len(self.data["names"])
        return verify_pair, zip(
            self.im_files, self.ir_files, self.label_files, repeat(self.prefix), repeat(nc), repeat(self.single_cls),
            repeat(True),
        )

    def result_to_label(self, result: list) -> tuple[dict | None, int, int, int, int, str]:
        """Convert a pair verification into a label; the first IR-size mismatch becomes one warning per dataset."""
        *stock, resized = result
        label, nm, nf, ne, nc, msg = super().result_to_label(stock)
        if resized and not self._ir_resize_noted:
            self._ir_resize_noted = True
            ir = self.pairing.partner(stock[0])
            note = f"{self.prefix}WARNING ⚠️ IR images differ in size from their colour partners (first: {ir}); they are resized to the colour size"
            msg = f"{msg}\n{note}" if msg else note
        return label, nm, nf, ne, nc, msg

    # Images -----------------------------------------------------------------------------------------------------------
    def read_pair(self, i: int) -> np.ndarray:
        """Read pair i at full resolution as one stacked array."""
        f = self.im_files[i]
        return load_pair(f, self.pairing.partner(f), self.modality)

    def load_image(self, i: int, rect_mode: bool = True, resize_short: bool = False):
        """Load pair i stacked and resized like ``BaseDataset.load_image`` (long side to imgsz), with its buffer."""
        if self.ims[i] is not None:
            return self.ims[i], self.im_hw0[i], self.im_hw[i]
        fn = self.npy_files[i]
        im = np.load(fn) if self.cache == "disk" and fn.exists() else self.read_pair(i)
        h0, w0 = im.shape[:2]
        shape = tuple(self.imgsz) if isinstance(self.imgsz, (tuple, list)) else (self.imgsz, self.imgsz)
        if rect_mode:  # long side (or short side) to imgsz, keeping the aspect ratio
            s = max(shape)
            r = s / (min(h0, w0) if resize_short else max(h0, w0))
            if r != 1:
                w, h = math.ceil(w0 * r), math.ceil(h0 * r)
                w, h = (w, h) if resize_short else (min(w, s), min(h, s))
                im = cv2.resize(im, (w, h), interpolation=cv2.INTER_LINEAR)
        elif (h0, w0) != shape:
            im = cv2.resize(im, shape[::-1], interpolation=cv2.INTER_LINEAR)
        if im.ndim == 2:
            im = im[..., None]
        if self.augment and self.cache != "ram":
            self.ims[i], self.im_hw0[i], self.im_hw[i] = im, (h0, w0), im.shape[:2]
            self.buffer.append(i)
            if 1 < len(self.buffer) >= self.max_buffer_length:
                j = self.buffer.pop(0)
                self.ims[j], self.im_hw0[j], self.im_hw[j] = None, None, None
        return im, (h0, w0), im.shape[:2]

    def cache_images_to_disk(self, i: int) -> None:
        """Cache the stacked pair, not just the colour image, as .npy."""
        f = self.npy_files[i]
        if not f.exists():
            np.save(f.as_posix(), self.read_pair(i), allow_pickle=False)

    # Augmentation -----------------------------------------------------------------------------------------------------
    def build_transforms(self, hyp: Any = None):
        """Ultralytics' transforms with HSV jitter restricted to colour channels and IR jitter on the IR band."""
        transforms = super().build_transforms(hyp)
        if self.augment:
            hsv = PairedHSV(hyp.hsv_h, hyp.hsv_s, hyp.hsv_v, ir_jitter=self.ir_jitter, modality=self.modality)
            replace_hsv(transforms, hsv)
        return transforms
