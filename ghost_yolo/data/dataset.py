"""Paired colour + infrared detection dataset on top of Ultralytics' YOLODataset.

Both images of a pair are stacked channel-wise in ``load_image``, before any augmentation, so every geometric
transform moves them together. Labels, caching, mosaic, letterboxing and collation are Ultralytics' own.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from itertools import repeat
from pathlib import Path
from typing import Any, NamedTuple

import cv2
import numpy as np
from PIL import Image
from ultralytics.data import base as ultralytics_base
from ultralytics.data.augment import Format
from ultralytics.data.base import BaseDataset
from ultralytics.data.dataset import YOLODataset
from ultralytics.data.utils import get_hash, verify_image_label
from ultralytics.utils import LOGGER

from .augment import PairedHSV, replace_hsv
from .io import check_modality, load_pair
from .missing import ModalityDropout, check_drop_modality, check_modality_dropout
from .pairing import Pairing

# Ultralytics reads every dataset image through ultralytics.data.base.imread; a paired dataset answers it with the pair
_pair_reads = threading.local()  # .dataset: the PairedDataset loading an image on this thread, if any
_stock_imread = getattr(ultralytics_base.imread, "__wrapped__", ultralytics_base.imread)


def _imread(filename: str, flags: int = cv2.IMREAD_COLOR) -> np.ndarray | None:
    """Ultralytics' ``imread``, or the stacked pair of ``filename`` while a PairedDataset loads it on this thread."""
    dataset = getattr(_pair_reads, "dataset", None)
    return _stock_imread(filename, flags) if dataset is None else dataset.read_pair_file(filename)


_imread.__wrapped__ = _stock_imread
ultralytics_base.imread = _imread


def check_read_hook() -> None:
    """Fail clearly if this Ultralytics no longer reads dataset images through ``ultralytics.data.base.imread``."""
    if not all("imread" in f.__code__.co_names for f in (BaseDataset.load_image, BaseDataset.cache_images_to_disk)):
        raise RuntimeError("this Ultralytics version no longer reads dataset images through "
                           "ultralytics.data.base.imread, so paired images cannot be loaded; install ultralytics<8.5 "
                           "as pinned by ghost-yolo")


OBB_FIELDS = "9 fields 'class x1 y1 x2 y2 x3 y3 x4 y4' (the four corners, normalized)"
OBB_MARGIN = 0.1  # how far outside the image (fraction of its size) a normalized OBB corner may lie


def check_label_file(lb_file: str, nc: int, single_cls: bool = False, task: str = "detect") -> str:
    """Return '' if a YOLO label file is well formed for the task, else one message naming the file, line and problem.

    detect: 5-field box rows (or polygon rows, trained on their enclosing boxes); obb: 9-field corner rows only (a
    detect row would give the rotated loss nothing to learn), corners within ``OBB_MARGIN`` of the image.
    """
    if not Path(lb_file).is_file():
        return ""
    with open(lb_file, encoding="utf-8-sig") as f:
        for n, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if task == "obb" and len(fields) != 9:
                kind = " ('class x y w h': a detect label)" if len(fields) == 5 else ""
                return f"{lb_file}:{n}: an OBB model needs {OBB_FIELDS}, got {len(fields)} fields{kind}"
            if len(fields) != 5 and not (len(fields) > 6 and len(fields) % 2 == 1):  # box row or polygon row
                return f"{lb_file}:{n}: expected 5 fields 'class x y w h', got {len(fields)}"
            try:
                values = [float(x) for x in fields]
            except ValueError:
                return f"{lb_file}:{n}: non-numeric field in '{line.strip()}'"
            c = values[0]
            if c != int(c) or c < 0 or (c >= nc and not single_cls):
                return f"{lb_file}:{n}: class id {fields[0]} is not in 0..{nc - 1} (nc={nc} from the data YAML names)"
            if task == "obb" and not all(-OBB_MARGIN <= v <= 1 + OBB_MARGIN for v in values[1:]):
                far = next(v for v in values[1:] if not -OBB_MARGIN <= v <= 1 + OBB_MARGIN)
                return (f"{lb_file}:{n}: corner coordinate {far:g} lies far outside the image (corners are normalized "
                        "to 0..1 by the image size: pixels given?)")
    return ""


class PairCheck(NamedTuple):
    """What ``verify_pair`` found for one pair."""

    stock: tuple  # Ultralytics' verify_image_label tuple for the colour image and labels (what result_to_label reads)
    ir_resized: bool = False  # the IR partner has another size than its colour image and is resized to it


def skipped_pair(msg: str) -> PairCheck:
    """A pair that is skipped, counted as corrupt, with the reason."""
    return PairCheck((None, None, None, None, None, 0, 0, 0, 1, msg))


def verify_pair(args: tuple) -> PairCheck:
    """Verify one pair and its labels: Ultralytics' verification of the colour image and labels, and whether the IR
    partner needs resizing.

    ``fill`` (``fill_missing=True`` on rgb+ir data) keeps an incomplete pair, noted by name: ``ir`` for a colour image
    whose IR partner is missing, ``rgb`` for an IR image without colour partner (then ``im_file`` is that IR image).
    """
    im_file, ir_file, lb_file, prefix, nc, single_cls, need_ir, fill, task = args
    note = ""
    if fill == "rgb":
        need_ir, note = False, f"{prefix}WARNING ⚠️ {im_file}: IR image without colour partner, colour band filled"
    elif need_ir and fill == "ir" and not Path(ir_file).exists():
        need_ir, note = False, f"{prefix}WARNING ⚠️ {im_file}: missing IR partner {ir_file}, IR band filled"
    if need_ir:
        if not Path(ir_file).exists():
            return skipped_pair(f"{prefix}{im_file}: missing IR partner {ir_file}, pair skipped (fill_missing=True "
                                "keeps it)")
        try:
            with Image.open(ir_file) as ir:
                ir.verify()
            with Image.open(ir_file) as ir:
                iw, ih = ir.size
        except Exception as e:
            return skipped_pair(f"{prefix}{ir_file}: corrupt IR image ({e}), pair skipped")
    if msg := check_label_file(lb_file, nc, single_cls, task):
        return skipped_pair(f"{prefix}{msg}, pair skipped")
    stock = verify_image_label((im_file, lb_file, prefix, False, nc, 0, 0, single_cls))
    found, lb, shape, segments, keypoints, n_missing, n_found, n_empty, n_corrupt, msg = stock
    if found is None:
        return PairCheck(stock)
    if note:
        msg = f"{msg}\n{note} (fill_missing=True)" if msg else f"{note} (fill_missing=True)"
    if need_ir:
        h, w = shape
        if abs(iw / ih - w / h) > 0.01:
            msg = f"{prefix}{im_file}: colour {w}x{h} and IR {iw}x{ih} ({ir_file}) differ in aspect ratio, pair skipped"
            return PairCheck((None, None, None, None, None, n_missing, n_found, n_empty, 1, msg))
    stock = found, lb, shape, segments, keypoints, n_missing, n_found, n_empty, n_corrupt, msg
    return PairCheck(stock, need_ir and (ih, iw) != (h, w))


class PairedDataset(YOLODataset):
    """YOLO dataset of colour + infrared pairs, served as one stacked array in the modality's channel order.

    Args:
        pairing (Pairing): How colour images find their IR partners and labels.
        modality (str): ``rgb+ir``, ``rgb`` or ``ir``; the same pairs are used in every mode, so modalities compare.
        ir_jitter (float): IR brightness/contrast jitter during training.
        fill_missing (bool): rgb+ir: keep a colour image without IR partner (or the reverse) with the missing band
            filled, noted once per file, instead of skipping it.
        drop_modality (str | None): ``ir`` or ``rgb``: fill that band in every sample (evaluate as if it were missing).
        modality_dropout (float): Probability that a sample's IR or colour band is filled (training).
    """

    def __init__(self, *args, pairing: Pairing, modality: str = "rgb+ir", ir_jitter: float = 0.0,
                 fill_missing: bool = False, drop_modality: str | None = None, modality_dropout: float = 0.0,
                 **kwargs):
        """Set pairing, modality and the missing-band options before the parent scans files and labels."""
        self.pairing = pairing
        self.modality = check_modality(modality)
        self.ir_jitter = ir_jitter
        self.fill_missing = bool(fill_missing) and self.modality == "rgb+ir"
        self.drop_modality = check_drop_modality(drop_modality, self.modality)
        self.modality_dropout = check_modality_dropout(modality_dropout, self.modality)
        self._ir_resize_noted = False
        check_read_hook()
        super().__init__(*args, **kwargs)

    # Files and labels -------------------------------------------------------------------------------------------------
    def looked_for(self) -> str:
        """What a pair looks like under this dataset's pairing, for messages that say where nothing was found."""
        p = self.pairing
        if p.kind == "suffix":
            return f"'*{p.rgb_suffix}.*' colour images with '*{p.ir_suffix}.*' IR partners"
        return f"colour images under '{p.rgb_dir}/' with IR partners under '{p.ir_dir}/'"

    def get_img_files(self, img_path: str | list[str]) -> list[str]:
        """Keep the colour half of each pair; IR images without a colour partner are reported by name (with
        ``fill_missing``, kept in place of their pair)."""
        fraction, self.fraction = self.fraction, 1.0  # the fraction counts pairs, not colour + IR files
        try:
            files = super().get_img_files(img_path)
        except FileNotFoundError as e:
            raise FileNotFoundError(f"{self.prefix}no image pairs found in {img_path}: no image files there (looked "
                                    f"for {self.looked_for()})") from e
        finally:
            self.fraction = fraction
        colour = [f for f in files if self.pairing.is_colour(f)]
        orphans = [f for f in files if self.pairing.is_ir(f) and not self.pairing.colour_of(f).exists()]
        if self.fill_missing:
            colour = sorted(colour + orphans)  # noted once per file when verified
        else:
            for f in orphans[:5]:
                LOGGER.warning(f"{self.prefix}{f}: IR image without colour partner {self.pairing.colour_of(f)}, "
                               "skipped")
            if len(orphans) > 5:
                LOGGER.warning(f"{self.prefix}{len(orphans) - 5} more IR images without colour partner skipped")
        if not colour:
            found = f"{len(orphans)} IR images but no colour image" if orphans else f"{len(files)} images, none a pair"
            raise FileNotFoundError(f"{self.prefix}no image pairs found in {img_path}: {found} (looked for "
                                    f"{self.looked_for()}; check pairing in the data YAML)")
        count = fraction if isinstance(fraction, int) else max(1, round(len(colour) * fraction))
        return colour[:count]

    def is_orphan_ir(self, f: str) -> bool:
        """Whether an image file of this dataset is an IR image standing in for its missing pair (``fill_missing``)."""
        return self.pairing.is_ir(f) and not self.pairing.is_colour(f)

    def halves(self, f: str) -> tuple[str | None, str | None]:
        """(colour, IR) paths of an image file of this dataset; a half that is missing is None (``fill_missing``)."""
        if self.is_orphan_ir(f):
            return None, f
        ir = self.pairing.partner(f)
        return f, None if self.fill_missing and not ir.exists() else str(ir)

    def get_labels(self) -> list[dict]:
        """Ultralytics' labels; when no pair survives verification, one line says so, where, and the first reason."""
        try:
            return super().get_labels()
        except RuntimeError as e:
            if "No valid images" not in str(e):
                raise
            reasons = [x.strip() for x in str(e).splitlines()[1:] if x.strip() and "http" not in x]
            first = f" (first: {reasons[0]})" if reasons else ""
            raise RuntimeError(f"{self.prefix}no image pairs found in {self.img_path}: none of its {len(self.im_files)}"
                               f" colour images has a usable pair and labels{first}") from e

    def get_label_files(self) -> list[str]:
        """Label file per pair (``labels/<pair id>.txt`` or Ultralytics' derivation) and the IR partner paths."""
        self.ir_files = [f if self.is_orphan_ir(f) else str(self.pairing.partner(f)) for f in self.im_files]
        self.label_files = [str(self.pairing.label_path(self.pairing.colour_of(f) if self.is_orphan_ir(f) else f))
                            for f in self.im_files]
        return self.label_files

    @property
    def npy_files(self) -> list[Path]:
        """The .npy pair caches, named after the colour image and what the pair holds
        (``0001_co.rgbir-1a2b3c4d.npy``: modality, then a hash of the pairing and ``fill_missing``), so a cache is only
        ever read by a dataset that stacks the same files the same way."""
        return self._npy_files

    @npy_files.setter
    def npy_files(self, files: list[Path]) -> None:
        """Ultralytics assigns ``<image>.npy`` names (once, before any image is loaded or cached); keep them
        pair-specific and drop the caches an IR image changed after (``drop_stale_cache``), once per dataset."""
        tag = get_hash([str(self.pairing), f"fill_missing={self.fill_missing}"])[:8]
        self._npy_files = [Path(f).with_suffix(f".{self.modality.replace('+', '')}-{tag}.npy") for f in files]
        for i in range(len(self._npy_files)):
            self.drop_stale_cache(i)

    def get_cache_hash(self) -> str:
        """Include IR partners, the pairing and ``fill_missing`` in the cache hash so a change rescans."""
        keys = [str(self.pairing), f"fill_missing={self.fill_missing}", super().get_cache_hash()]
        keys += ["task=obb"] if self.use_obb else []  # OBB checks labels differently: its own verified cache
        return get_hash(self.ir_files + keys)  # the parent hashes images + labels

    def verify_args(self) -> tuple:
        """Verify pairs in parallel with ``verify_pair``."""
        nc = len(self.data["names"])
        fill = ["rgb" if self.is_orphan_ir(f) else "ir" if self.fill_missing else "" for f in self.im_files]
        return verify_pair, zip(
            self.im_files, self.ir_files, self.label_files, repeat(self.prefix), repeat(nc), repeat(self.single_cls),
            repeat(True), fill, repeat(self.task),
        )

    @property
    def task(self) -> str:
        """The task the labels are read for (Ultralytics' ``use_obb`` from ``task=obb``)."""
        return "obb" if self.use_obb else "detect"

    def result_to_label(self, result: PairCheck) -> tuple[dict | None, int, int, int, int, str]:
        """Convert a pair verification into a label; the first IR-size mismatch becomes one warning per dataset."""
        label, nm, nf, ne, nc, msg = super().result_to_label(result.stock)
        if result.ir_resized and not self._ir_resize_noted:
            self._ir_resize_noted = True
            ir = self.pairing.partner(label["im_file"])
            note = f"{self.prefix}WARNING ⚠️ IR images differ in size from their colour partners (first: {ir}); they are resized to the colour size"
            msg = f"{msg}\n{note}" if msg else note
        return label, nm, nf, ne, nc, msg

    # Images -----------------------------------------------------------------------------------------------------------
    def read_pair_file(self, f: str) -> np.ndarray:
        """Read the pair of image file ``f`` of this dataset at full resolution as one stacked array (a missing half
        filled, with ``fill_missing``)."""
        return load_pair(*self.halves(f), self.modality)

    def read_pair(self, i: int) -> np.ndarray:
        """Read pair i at full resolution as one stacked array."""
        return self.read_pair_file(self.im_files[i])

    @contextmanager
    def reading_pairs(self):
        """While inside, Ultralytics' image reads on this thread return this dataset's stacked pairs."""
        outer = getattr(_pair_reads, "dataset", None)
        _pair_reads.dataset = self
        try:
            yield
        finally:
            _pair_reads.dataset = outer

    def load_image(self, i: int, rect_mode: bool = True, resize_short: bool = False):
        """``BaseDataset.load_image`` (resize, mosaic buffer, RAM and .npy caches) on the stacked pair.

        Ultralytics 8.4 has no per-dataset read hook: ``load_image`` calls the module-level ``imread`` of
        ``ultralytics.data.base``. That name is wrapped once (``_imread``) to read the pair of the file asked for while
        a paired dataset is loading on the calling thread, and to be Ultralytics' own ``imread`` otherwise. The .npy
        cache (named after the colour image) follows Ultralytics' rules: reused when present and not older than the
        colour image; a cache older than its IR half was dropped when the dataset was built (``npy_files``). Its name
        says what it stacks, so another modality or pairing never reads it.
        """
        with self.reading_pairs():
            return super().load_image(i, rect_mode, resize_short)

    def cache_images_to_disk(self, i: int) -> None:
        """Cache the stacked pair, not just the colour image, as .npy (``BaseDataset.cache_images_to_disk``)."""
        with self.reading_pairs():
            super().cache_images_to_disk(i)

    def drop_stale_cache(self, i: int) -> None:
        """Remove pair i's .npy cache when its IR half changed after it was written (Ultralytics compares the cache
        with the colour image only, so a replaced IR image would otherwise keep its old pixels)."""
        fn = self.npy_files[i]
        if not fn.exists():
            return
        ir = self.halves(self.im_files[i])[1]
        if ir and Path(ir).exists() and Path(ir).stat().st_mtime > fn.stat().st_mtime:
            try:
                fn.unlink(missing_ok=True)
            except OSError as e:  # a read-only dataset: nothing ghost wrote can be there to go stale
                LOGGER.warning(f"{self.prefix}cannot remove the stale pair cache {fn}: {e}")

    # Augmentation -----------------------------------------------------------------------------------------------------
    def build_transforms(self, hyp: Any = None):
        """Ultralytics' transforms with HSV jitter restricted to colour channels and IR jitter on the IR band; a dropped
        or randomly failed band is filled last, on the finished sample (``drop_modality``, ``modality_dropout``)."""
        transforms = super().build_transforms(hyp)
        if self.augment:
            hsv = PairedHSV(hyp.hsv_h, hyp.hsv_s, hyp.hsv_v, ir_jitter=self.ir_jitter, modality=self.modality)
            replace_hsv(transforms, hsv)
        if drop := self.missing_band_transform():
            last = next(i for i, t in enumerate(transforms.transforms) if isinstance(t, Format))
            transforms.insert(last, drop)
        return transforms

    def missing_band_transform(self) -> ModalityDropout | None:
        """What fills a band: the dropped one in every sample (``drop_modality``), or one at random in training."""
        if self.drop_modality:
            return ModalityDropout(1.0, (self.drop_modality,))
        return ModalityDropout(self.modality_dropout) if self.augment and self.modality_dropout else None
