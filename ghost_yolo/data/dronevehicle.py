"""Convert the official DroneVehicle distribution (paired colour + infrared drone images) to YOLO OBB format.

The distribution holds ``train/``, ``val/`` and ``test/``, each with four folders named after the split: ``trainimg``
(colour), ``trainimgr`` (infrared), ``trainlabel`` and ``trainlabelr`` (VOC XML labels of the colour and of the IR
image; ``valimg`` ... for val). Objects are ``<polygon>`` corners ``x1 y1 ... x4 y4``, a few only a ``<bndbox>``.
Images are 840x712 with a 100-px white border: both bands are cropped to 640x512, labels shifted and clipped
(``corners.clip_corners``); objects left with nothing inside are dropped and counted.

Which labels (``labels=``): ``ir`` (default; the colour set misses vehicles at night), ``rgb``, or ``union``: every IR
object, plus each colour object whose enclosing axis-aligned box overlaps no IR object's by IoU > ``UNION_IOU``
(compared after the crop, whatever the classes).

Output: ``images/<split>/<id>_co.jpg`` + ``<id>_ir.jpg``, ``labels/<split>/<id>.txt`` (``class x1 y1 ... x4 y4``,
normalized) and ``dronevehicle.yaml`` naming every split converted.

Examples:
    >>> from ghost_yolo.data.dronevehicle import convert_dronevehicle
    >>> convert_dronevehicle("datasets/DroneVehicle-official", "datasets/dronevehicle")  # -> .../dronevehicle.yaml
"""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.pool import ThreadPool
from pathlib import Path

import cv2
import numpy as np
from ultralytics.utils import LOGGER, NUM_THREADS, TQDM, YAML

from .corners import MIN_AREA, clip_corners, obb_row

__all__ = ("DRONEVEHICLE_NAMES", "LABEL_SOURCES", "convert_dronevehicle", "read_objects")

DRONEVEHICLE_NAMES: dict[int, str] = {0: "car", 1: "truck", 2: "bus", 3: "van", 4: "freight_car"}
# Names as the distribution writes them, after lowercasing and reading '_'/'-' as spaces -> class id. '*' marks a
# handful of freight cars (read so by community converters); anything else is reported as unknown and skipped.
NAME_TO_ID: dict[str, int] = {
    "car": 0,
    "truck": 1,
    "truvk": 1,
    "bus": 2,
    "van": 3,
    "freight car": 4,
    "feright car": 4,
    "freight": 4,
    "feright": 4,
    "*": 4,
}
SPLITS = ("train", "val", "test")
LABEL_SOURCES = ("ir", "rgb", "union")
BORDER = 100  # px of white frame on every side of the official 840x712 images
UNION_IOU = 0.5  # a colour object overlapping an IR object's enclosing box by more than this is that IR object
IMG_EXTS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")
RGB_SUFFIX, IR_SUFFIX = "_co", "_ir"
JPEG_QUALITY = 95  # cropped JPEGs are re-encoded (a 100-px crop is not on JPEG's 8-px block grid)
NAMED = 5  # pairs without a partner named one by one before a count


def class_key(name: str) -> str:
    """A class name as ``NAME_TO_ID`` spells it: lowercase, '_' and '-' read as spaces, spaces collapsed."""
    return " ".join(name.lower().replace("_", " ").replace("-", " ").split())


def _numbers(elem: ET.Element | None, tags: tuple[str, ...]) -> list[float] | None:
    """The float values of ``tags`` under ``elem``, or None if the element, a tag or a number is missing."""
    if elem is None:
        return None
    try:
        return [float(elem.findtext(t)) for t in tags]
    except (TypeError, ValueError):
        return None


def _corners(obj: ET.Element) -> np.ndarray | None:
    """Four pixel corners of an object: its polygon, else the corners of its bndbox, else None."""
    poly = _numbers(obj.find("polygon"), ("x1", "y1", "x2", "y2", "x3", "y3", "x4", "y4"))
    if poly is not None:
        return np.array(poly, dtype=np.float32).reshape(4, 2)
    box = _numbers(obj.find("bndbox"), ("xmin", "ymin", "xmax", "ymax"))
    if box is not None:
        x0, y0, x1, y1 = box
        return np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], dtype=np.float32)
    return None


@dataclass
class Objects:
    """What one XML file gave: kept objects (class id, corners in the cropped image) and what was left out."""

    kept: list[tuple[int, np.ndarray]] = field(default_factory=list)
    dropped: int = 0  # cut to nothing by the crop
    unknown: int = 0  # class name not in NAME_TO_ID
    malformed: int = 0  # no polygon or bndbox, or a zero-area one
    renamed: Counter = field(default_factory=Counter)  # misspelled names read as a class: 'truvk->truck'
    problems: list[str] = field(default_factory=list)  # one line per object left out for a reason other than the crop


def read_objects(xml: Path, w: int, h: int, border: int = BORDER) -> Objects:
    """Parse one DroneVehicle XML into objects in the ``w`` x ``h`` image left after cropping ``border`` px per side.

    Raises ``ET.ParseError`` or ``OSError`` for an unreadable file; problems with single objects are collected as
    ``"<xml>: object <k>: <what>"`` lines (k counts ``<object>`` elements from 1) and the object is skipped.
    """
    out = Objects()
    for k, obj in enumerate(ET.parse(xml).getroot().iter("object"), 1):
        name = (obj.findtext("name") or "").strip()
        key = class_key(name)
        if key not in NAME_TO_ID:
            out.unknown += 1
            out.problems.append(f"{xml}: object {k}: unknown class name {name!r} (known: "
                                f"{', '.join(DRONEVEHICLE_NAMES.values())} and their misspellings), skipped")
            continue
        cls = NAME_TO_ID[key]
        if key != class_key(DRONEVEHICLE_NAMES[cls]):
            out.renamed[f"{name}->{DRONEVEHICLE_NAMES[cls]}"] += 1
        pts = _corners(obj)
        if pts is None or cv2.contourArea(cv2.convexHull(pts)) < MIN_AREA:
            out.malformed += 1
            what = ("has neither a <polygon> with x1..y4 nor a <bndbox> with xmin..ymax" if pts is None
                    else f"has a zero-area {'polygon' if obj.find('polygon') is not None else 'bndbox'}")
            out.problems.append(f"{xml}: object {k} ({name}): {what}, skipped")
            continue
        clipped = clip_corners(pts - border, w, h)
        if clipped is None:
            out.dropped += 1
        else:
            out.kept.append((cls, clipped))
    return out


def _boxes(objects: list[tuple[int, np.ndarray]]) -> np.ndarray:
    """Enclosing axis-aligned boxes (n x 4 x0 y0 x1 y1) of objects' corners."""
    if not objects:
        return np.zeros((0, 4), dtype=np.float32)
    pts = np.stack([c for _, c in objects])
    return np.concatenate([pts.min(1), pts.max(1)], 1)


def union_objects(ir: list[tuple[int, np.ndarray]], rgb: list[tuple[int, np.ndarray]], iou: float = UNION_IOU):
    """IR objects plus the colour objects whose enclosing box overlaps no IR object's by IoU > ``iou``."""
    a, b = _boxes(rgb), _boxes(ir)
    if not len(a) or not len(b):
        return [*ir, *rgb]
    lt, rb = np.maximum(a[:, None, :2], b[None, :, :2]), np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(2)
    area = lambda x: (x[:, 2] - x[:, 0]) * (x[:, 3] - x[:, 1])  # noqa: E731
    ious = inter / np.maximum(area(a)[:, None] + area(b)[None] - inter, 1e-9)
    return [*ir, *(o for o, best in zip(rgb, ious.max(1)) if best <= iou)]


@dataclass
class Job:
    """One pair to convert: source images, the XML files its labels come from, and where it goes."""

    stem: str
    colour: Path
    ir: Path
    xml_rgb: Path
    xml_ir: Path
    images: Path
    labels: Path


@dataclass
class Done:
    """The outcome of one pair: written or skipped, its objects per class and what was left out, with messages."""

    written: bool = False
    classes: Counter = field(default_factory=Counter)  # objects written, per class id
    counts: Counter = field(default_factory=Counter)  # dropped, unknown, malformed; added (colour objects by union)
    renamed: Counter = field(default_factory=Counter)
    lines: list[str] = field(default_factory=list)


class Converter:
    """Converts pairs of one split with fixed options; ``__call__`` runs on worker threads and never logs."""

    def __init__(self, labels: str, border: int, copy_images: bool):
        """Keep the options every pair is converted with."""
        self.labels, self.border, self.copy_images = labels, border, copy_images

    def _read(self, path: Path) -> np.ndarray:
        """An image as stored (any bands and depth), raising ValueError naming the file if it cannot be decoded."""
        im = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if im is None:
            raise ValueError(f"{path}: cannot read the image (missing or corrupt), pair skipped")
        return im

    def _write(self, src: Path, im: np.ndarray, dst: Path) -> None:
        """Write the cropped image (JPEG at ``JPEG_QUALITY``), or copy/link the source when nothing is cropped."""
        if dst.is_symlink() or dst.exists():
            dst.unlink()
        if not self.border:
            if self.copy_images:
                shutil.copy2(src, dst)
            else:
                dst.symlink_to(src.resolve())
            return
        b, jpeg = self.border, dst.suffix in {".jpg", ".jpeg"}
        if not cv2.imwrite(str(dst), im[b:-b, b:-b], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY] if jpeg else []):
            raise OSError(f"{dst}: could not write the cropped image")

    def _objects(self, xml: Path, w: int, h: int, done: Done) -> list[tuple[int, np.ndarray]]:
        """Objects of one XML (a missing file gives none, said in one line), tallied into ``done``."""
        if not xml.is_file():
            done.lines.append(f"{xml}: label file missing, no objects from it for '{xml.stem}'")
            return []
        try:
            objs = read_objects(xml, w, h, self.border)
        except (ET.ParseError, OSError, UnicodeDecodeError) as e:
            raise ValueError(f"{xml}: unreadable XML ({e}), pair skipped") from e
        done.counts.update(dropped=objs.dropped, unknown=objs.unknown, malformed=objs.malformed)
        done.renamed.update(objs.renamed)
        done.lines += objs.problems
        return objs.kept

    def __call__(self, job: Job) -> Done:
        """Crop, convert and write one pair; every problem comes back as a line, the pair skipped if it cannot be."""
        done = Done()
        try:
            colour, ir = self._read(job.colour), self._read(job.ir)
            (h, w), b = colour.shape[:2], self.border
            if ir.shape[:2] != (h, w):
                raise ValueError(f"{job.ir}: infrared image is {ir.shape[1]}x{ir.shape[0]}, its colour partner "
                                 f"{job.colour} {w}x{h}, pair skipped")
            if w <= 2 * b or h <= 2 * b:
                raise ValueError(f"{job.colour}: a {w}x{h} image has no room for a {b}-px border to crop, pair "
                                 "skipped (border=0 for images already cropped)")
            w, h = w - 2 * b, h - 2 * b
            ir_objs = self._objects(job.xml_ir, w, h, done) if self.labels != "rgb" else []
            rgb_objs = self._objects(job.xml_rgb, w, h, done) if self.labels != "ir" else []
        except ValueError as e:
            done.lines.append(str(e))
            return done
        if self.labels == "union":
            objects = union_objects(ir_objs, rgb_objs)
            done.counts["added"] = len(objects) - len(ir_objs)
        else:
            objects = ir_objs if self.labels == "ir" else rgb_objs
        self._write(job.colour, colour, job.images / f"{job.stem}{RGB_SUFFIX}{job.colour.suffix.lower()}")
        self._write(job.ir, ir, job.images / f"{job.stem}{IR_SUFFIX}{job.ir.suffix.lower()}")
        rows = [obb_row(c, pts, w, h) for c, pts in objects]
        (job.labels / f"{job.stem}.txt").write_text("".join(f"{r}\n" for r in rows), encoding="utf-8")
        done.written = True
        done.classes.update(c for c, _ in objects)
        return done


def _images(folder: Path) -> dict[str, Path]:
    """Image files of a folder by stem."""
    return {p.stem: p for p in sorted(folder.iterdir()) if p.suffix.lower() in IMG_EXTS and p.is_file()}


def _split_folders(split_dir: Path, split: str, labels: str) -> tuple[dict[str, Path] | None, str]:
    """The split's folders (colour, IR, and the label folders ``labels`` needs) or None and the line saying why."""
    need = {"colour": f"{split}img", "ir": f"{split}imgr"}
    if labels != "rgb":
        need["ir labels"] = f"{split}labelr"
    if labels != "ir":
        need["colour labels"] = f"{split}label"
    folders = {k: split_dir / v for k, v in need.items()}
    missing = [f"'{v}' ({k})" for k, v in need.items() if not folders[k].is_dir()]
    if missing:
        half = " (the infrared half of the pairs)" if not folders["ir"].is_dir() else ""
        return None, (f"{split_dir}: no {' or '.join(missing)} folder{half} for labels={labels}, skipping the "
                      f"{split} split")
    return folders, ""


def _pair_jobs(split: str, folders: dict[str, Path], images: Path, labels: Path) -> tuple[list[Job], list[str], int]:
    """A job per colour image with an IR partner of the same stem; lines naming images without one, and their count."""
    found = {side: _images(folders[side]) for side in ("colour", "ir")}
    lines, alone = [], 0
    for side, other in (("colour", "ir"), ("ir", "colour")):
        single = [p for s, p in found[side].items() if s not in found[other]]
        alone += len(single)
        lines += [f"{p}: no partner of the same name in '{folders[other]}', skipped" for p in single[:NAMED]]
        if len(single) > NAMED:
            lines.append(f"{folders[side]}: {len(single) - NAMED} more images without a partner in "
                         f"'{folders[other]}' skipped")
    xml_rgb = folders.get("colour labels", folders["colour"].parent / f"{split}label")
    xml_ir = folders.get("ir labels", folders["colour"].parent / f"{split}labelr")
    jobs = [Job(s, p, found["ir"][s], xml_rgb / f"{s}.xml", xml_ir / f"{s}.xml", images, labels)
            for s, p in found["colour"].items() if s in found["ir"]]
    return jobs, lines, alone


def convert_dronevehicle(
    source: str | Path,
    save_dir: str | Path,
    labels: str = "ir",
    border: int = BORDER,
    copy_images: bool = True,
    exist_ok: bool = False,
) -> Path:
    """Convert the official DroneVehicle distribution to a paired RGB+IR YOLO OBB dataset with one data YAML.

    Splits, folders and options are checked before anything is written. Per pair, a problem (an unreadable image or
    XML, an object without geometry or with an unknown class) is one line naming the file; the rest is kept.

    Args:
        source (str | Path): Official root holding ``train/``, ``val/`` and/or ``test/`` in the official layout.
        save_dir (str | Path): Output root; receives ``images/<split>/``, ``labels/<split>/`` and ``dronevehicle.yaml``.
        labels (str): ``ir`` (default), ``rgb`` or ``union`` (IR objects plus unmatched colour objects, see module doc).
        border (int): Pixels cropped from every side (the official frame is 100); 0 for images already cropped.
        copy_images (bool): With ``border=0``, copy images if True, else symlink them (cropped images are written).
        exist_ok (bool): Allow writing into a ``save_dir`` that already contains a ``labels/`` folder.

    Returns:
        (Path): The written data YAML, ``<save_dir>/dronevehicle.yaml``.

    Raises:
        FileNotFoundError: If the source or every usable split (with both image halves and its labels) is missing.
        FileExistsError: If ``save_dir`` already holds a ``labels/`` folder and ``exist_ok`` is False.
        ValueError: If ``labels`` or ``border`` is not valid.
    """
    source = Path(source).expanduser().resolve()
    save_dir = Path(save_dir).expanduser().resolve()

    # Validate inputs -------------------------------------------------------------------------------------------------
    if labels not in LABEL_SOURCES:
        raise ValueError(f"labels={labels} is not supported, use one of {', '.join(LABEL_SOURCES)}")
    if not isinstance(border, int) or isinstance(border, bool) or border < 0:
        raise ValueError(f"border={border} must be a whole number of pixels >= 0 (the official frame is {BORDER})")
    if not source.is_dir():
        raise FileNotFoundError(f"DroneVehicle source directory '{source}' does not exist or is not a directory")
    present = [s for s in SPLITS if (source / s).is_dir()]
    if not present:
        raise FileNotFoundError(f"no train/, val/ or test/ folder in '{source}' (the official layout: "
                                "train/trainimg, train/trainimgr, train/trainlabel, train/trainlabelr, ...)")
    splits, reasons = {}, []
    for s in present:
        folders, why = _split_folders(source / s, s, labels)
        if folders is None:
            LOGGER.warning(why)
            reasons.append(why)
        else:
            splits[s] = folders
    if not splits:
        raise FileNotFoundError(f"no usable split in '{source}': {reasons[0]}")
    if save_dir.exists() and not save_dir.is_dir():
        raise FileExistsError(f"save_dir '{save_dir}' exists and is not a directory")
    if (save_dir / "labels").exists() and not exist_ok:
        raise FileExistsError(f"'{save_dir / 'labels'}' already exists, refusing to overwrite it; choose another "
                              "save_dir or pass exist_ok=True")
    if border and not copy_images:
        LOGGER.info(f"copy_images=False: images are cropped by {border} px, so they are written, not linked")

    # Convert pairs, split by split -----------------------------------------------------------------------------------
    convert, written, summary = Converter(labels, border, copy_images), [], []
    for split, folders in splits.items():
        images, labels_dir = save_dir / "images" / split, save_dir / "labels" / split
        images.mkdir(parents=True, exist_ok=True)
        labels_dir.mkdir(parents=True, exist_ok=True)
        jobs, lines, alone = _pair_jobs(split, folders, images, labels_dir)
        for line in lines:
            LOGGER.warning(line)
        total = Done()
        with ThreadPool(max(1, min(NUM_THREADS, 8))) as pool:  # decoding and encoding release the GIL
            for done in TQDM(pool.imap(convert, jobs), desc=f"DroneVehicle {split}", total=len(jobs)):
                for line in done.lines:
                    LOGGER.warning(line)
                total.counts.update(pairs=int(done.written))
                for k in ("classes", "counts", "renamed"):
                    getattr(total, k).update(getattr(done, k))
        n, classes, renamed = total.counts, total.classes, total.renamed
        if n["pairs"]:
            written.append(split)
        added = f", {n['added']} colour objects added to the IR ones" if labels == "union" else ""
        summary.append(
            f"{split}: {n['pairs']} pairs, {sum(classes.values())} objects "
            f"({', '.join(f'{name}={classes[c]}' for c, name in DRONEVEHICLE_NAMES.items())}), {n['dropped']} cut "
            f"to nothing by the crop, {n['unknown']} unknown class, {n['malformed']} without geometry, "
            f"{len(jobs) - n['pairs'] + alone} images skipped{added}"
        )
        if renamed:
            summary.append(f"{split}: names read as a class: "
                           + ", ".join(f"{k} x{n}" for k, n in sorted(renamed.items())))
    if not written:
        raise FileNotFoundError(f"no pair of '{source}' could be converted (see the lines above)")

    # Data YAML -------------------------------------------------------------------------------------------------------
    data = {"path": str(save_dir)}
    data.update({s: f"images/{s}" for s in written})
    for k in ("train", "val"):  # Ultralytics needs both keys; a partial download stands in for the missing one
        if k not in data:
            data[k] = f"images/{written[0]}"
            LOGGER.warning(f"no {k} split converted: '{k}' names images/{written[0]} in the data YAML")
    data = {"path": data["path"], **{s: data[s] for s in SPLITS if s in data}}
    data.update(pairing="suffix", rgb_suffix=RGB_SUFFIX, ir_suffix=IR_SUFFIX, modality="rgb+ir",
                names=dict(DRONEVEHICLE_NAMES))
    file = save_dir / "dronevehicle.yaml"
    crop = f"{border}-px border cropped" if border else "not cropped"
    YAML.save(file, data, header=f"# DroneVehicle OBB, labels={labels}, {crop}, converted from {source}\n")

    # Summary ---------------------------------------------------------------------------------------------------------
    LOGGER.info(f"DroneVehicle (labels={labels}, {crop}) converted to '{save_dir}'")
    for line in summary:
        LOGGER.info(line)
    LOGGER.info(f"data YAML: {file}")
    return file
