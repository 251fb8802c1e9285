# Ultralytics 🚀 AGPL-3.0 License - https://ultralytics.com/license
"""Convert the official VEDAI distribution (paired colour + near-infrared aerial images) to YOLO detection format.

The official archive ships ``Vehicules512``/``Vehicules1024`` image folders, per-image ``AnnotationsXXX/<id>.txt`` files
with rotated boxes and ten cross-validation folds (``foldNN.txt`` train ids, ``foldNNtest.txt`` test ids). This module
writes a self-contained YOLO dataset: images, horizontal-box labels, per-fold image lists and one data YAML per fold.
With ``obb=True`` the labels are the four annotated corners instead (``class x1 y1 ... x4 y4``, Ultralytics' OBB
format), clipped to the image as ``corners.clip_corners`` does.

Examples:
    >>> from ghost_yolo.data.vedai import convert_vedai
    >>> yamls = convert_vedai("datasets/VEDAI-official", "datasets/VEDAI")  # -> [.../vedai-fold01.yaml, ...]
"""

from __future__ import annotations

import math
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image
from ultralytics.utils import LOGGER, TQDM, YAML

from .corners import clip_corners

__all__ = ("RAW_TO_ID", "VEDAI_NAMES", "convert_vedai", "parse_vedai_annotation")

# Kept classes, in the id order used by published VEDAI results (8-class protocol)
VEDAI_NAMES: dict[int, str] = {
    0: "car",
    1: "pickup",
    2: "camping",
    3: "truck",
    4: "other",
    5: "tractor",
    6: "boat",
    7: "van",
}

# Raw VEDAI class code -> YOLO class id. Codes not listed (7 motorcycle, 8 bus, 31 plane, unknown) are dropped
RAW_TO_ID: dict[int, int] = {1: 0, 11: 1, 5: 2, 2: 3, 10: 4, 4: 5, 23: 6, 9: 7}

# Raw codes documented by VEDAI, used only to make the summary readable
RAW_NAMES: dict[int, str] = {
    1: "car",
    2: "truck",
    4: "tractor",
    5: "camping car",
    7: "motorcycle",
    8: "bus",
    9: "van",
    10: "other",
    11: "pickup",
    23: "boat",
    31: "plane",
}

N_FIELDS = 14  # x_center y_center orientation class is_contained is_occluded x1 x2 x3 x4 y1 y2 y3 y4
SIZES = (512, 1024)
RGB_SUFFIX, IR_SUFFIX = "_co", "_ir"
IMG_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")  # official archive is PNG; others tolerated
FOLD_RE = re.compile(r"^fold(\d+)(test)?\.txt$", re.IGNORECASE)


def _parse_lines(
    path: Path, img_w: int, img_h: int, obb: bool = False
) -> tuple[list[tuple[int, float, ...]], Counter, list[str]]:
    """Parse one VEDAI annotation file, also counting dropped raw classes so the converter can report them.

    Args:
        path (Path): Per-image VEDAI annotation file.
        img_w (int): Image width in pixels, used for normalisation and clipping.
        img_h (int): Image height in pixels.
        obb (bool): Return the four corners ``(cls, x1, y1, ..., x4, y4)`` instead of the horizontal box.

    Returns:
        rows (list[tuple]): Kept objects as ``(cls, xc, yc, w, h)`` (or the corners) normalised to [0, 1].
        dropped (Counter): Number of well-formed objects skipped per raw class code.
        problems (list[str]): ``"<path>:<lineno>: <reason>"`` for every malformed line.
    """
    rows, dropped, problems = [], Counter(), []
    for lineno, line in enumerate(Path(path).read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue  # blank lines are harmless
        where = f"{path}:{lineno}"
        if len(fields) != N_FIELDS:
            problems.append(f"{where}: expected {N_FIELDS} fields, got {len(fields)}")
            continue
        try:
            values = [float(f) for f in fields]
        except ValueError:
            bad = next(f for f in fields if not _is_float(f))
            problems.append(f"{where}: non-numeric field {bad!r}")
            continue
        if not all(math.isfinite(v) for v in values):
            problems.append(f"{where}: non-finite value")
            continue
        raw = values[3]
        if raw != int(raw):
            problems.append(f"{where}: class code {fields[3]!r} is not an integer")
            continue
        raw = int(raw)
        if raw not in RAW_TO_ID:
            dropped[raw] += 1
            continue

        xc, yc = values[0], values[1]
        xs, ys = values[6:10], values[10:14]
        if obb:  # the annotated corners, cut to the part inside the image
            corners = clip_corners(np.array([xs, ys], dtype=np.float32).T, img_w, img_h)
            if corners is None:
                problems.append(f"{where}: empty box after clipping to the {img_w}x{img_h} image")
                continue
            rows.append((RAW_TO_ID[raw], *(corners.astype(np.float64) / [img_w, img_h]).ravel().tolist()))
            continue
        # Horizontal box: annotated centre, size = extent of the 4 rotated corners, then clipped to the image
        bw, bh = max(xs) - min(xs), max(ys) - min(ys)
        x1, x2 = max(xc - bw / 2, 0.0), min(xc + bw / 2, float(img_w))
        y1, y2 = max(yc - bh / 2, 0.0), min(yc + bh / 2, float(img_h))
        if x2 <= x1 or y2 <= y1:
            problems.append(f"{where}: empty box after clipping to the {img_w}x{img_h} image")
            continue
        rows.append(
            (RAW_TO_ID[raw], (x1 + x2) / 2 / img_w, (y1 + y2) / 2 / img_h, (x2 - x1) / img_w, (y2 - y1) / img_h)
        )
    return rows, dropped, problems


def _is_float(s: str) -> bool:
    """Return True if ``s`` parses as a float, to name the offending field in problem reports."""
    try:
        float(s)
        return True
    except ValueError:
        return False


def parse_vedai_annotation(
    path: Path, img_w: int, img_h: int, obb: bool = False
) -> tuple[list[tuple[int, float, ...]], list[str]]:
    """Convert one per-image VEDAI annotation file to YOLO rows, so a single bad line never aborts a whole dataset.

    Each line holds 14 fields ``x_center y_center orientation class is_contained is_occluded x1 x2 x3 x4 y1 y2 y3 y4``
    in pixels. The horizontal box keeps the annotated centre and takes the extent (max - min) of the four rotated
    corners as width/height; it is clipped to the image and normalised. Classes outside ``RAW_TO_ID`` are dropped.
    With ``obb`` the rows are the corners themselves, ``(cls, x1, y1, x2, y2, x3, y3, x4, y4)`` in annotation order.

    Args:
        path (Path): Per-image annotation file, e.g. ``Annotations512/00000000.txt``.
        img_w (int): Image width in pixels.
        img_h (int): Image height in pixels.
        obb (bool): Return oriented boxes (four corners) instead of horizontal boxes.

    Returns:
        rows (list[tuple[int, float, ...]]): ``(cls, xc, yc, w, h)`` or ``(cls, x1, ..., y4)`` normalised to [0, 1].
        problems (list[str]): ``f"{path}:{lineno}: <what is wrong>"`` for each malformed (skipped) line.

    Examples:
        >>> rows, problems = parse_vedai_annotation(Path("Annotations512/00000000.txt"), 512, 512)
    """
    rows, _, problems = _parse_lines(Path(path), img_w, img_h, obb)
    return rows, problems


def _normalise_id(token: str) -> str | None:
    """Reduce ``00000000``, ``00000000.png``, ``00000000_co.png``, ``path/00000000_ir`` etc. to the 8-digit id."""
    name = token.strip().replace("\\", "/").rsplit("/", 1)[-1]
    stem = name.rsplit(".", 1)[0] if "." in name else name
    for suffix in (RGB_SUFFIX, IR_SUFFIX):
        if stem.lower().endswith(suffix):
            stem = stem[: -len(suffix)]
            break
    return stem.zfill(8) if stem.isdigit() else None


def _find_folds(dirs: list[Path]) -> dict[str, dict[str, Path]]:
    """Locate ``foldNN.txt``/``foldNNtest.txt`` lists; earlier dirs win so ``AnnotationsXXX`` beats the source root."""
    folds: dict[str, dict[str, Path]] = {}
    for d in dirs:
        if not d.is_dir():
            continue
        for f in sorted(d.iterdir()):
            m = FOLD_RE.match(f.name)
            if m and f.is_file():
                split = "test" if m.group(2) else "train"
                folds.setdefault(f"fold{int(m.group(1)):02d}", {}).setdefault(split, f)
    return dict(sorted(folds.items()))


def _read_fold(file: Path) -> list[str]:
    """Read a fold list as normalised ids (first token per line), preserving order and removing duplicates."""
    ids = []
    for lineno, line in enumerate(file.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        tokens = line.split()
        if not tokens:
            continue
        i = _normalise_id(tokens[0])
        if i is None:
            LOGGER.warning(f"{file}:{lineno}: cannot read an image id from {line.strip()!r}, skipping")
        elif i not in ids:
            ids.append(i)
    return ids


def _find_pairs(img_dir: Path) -> dict[str, tuple[Path, Path]]:
    """Map id -> (colour, infrared) image paths; colour images without an infrared twin are reported and skipped."""
    pairs = {}
    for co in sorted(img_dir.iterdir()):
        stem, ext = co.stem, co.suffix.lower()
        if ext not in IMG_EXTS or not stem.lower().endswith(RGB_SUFFIX):
            continue
        base = stem[: -len(RGB_SUFFIX)]
        ir = next((p for e in (co.suffix, *IMG_EXTS) if (p := img_dir / f"{base}{IR_SUFFIX}{e}").is_file()), None)
        if ir is None:
            LOGGER.warning(f"{co}: no infrared image '{base}{IR_SUFFIX}{co.suffix}' next to it, skipping this pair")
            continue
        pairs[_normalise_id(base) or base] = (co, ir)
    return pairs


def _place(src: Path, dst: Path, copy: bool) -> None:
    """Copy or symlink ``src`` to ``dst``, replacing an existing entry without ever writing through an old link."""
    if dst.is_symlink() or dst.exists():
        dst.unlink()
    if copy:
        shutil.copy2(src, dst)
    else:
        dst.symlink_to(src.resolve())


def convert_vedai(
    source: str | Path,
    save_dir: str | Path,
    size: int | None = None,
    copy_images: bool = True,
    exist_ok: bool = False,
    obb: bool = False,
) -> list[Path]:
    """Convert the official VEDAI distribution to a paired RGB+IR YOLO dataset with one data YAML per fold.

    All inputs are validated before anything is written, so a wrong ``source`` never leaves a half-built dataset.

    Args:
        source (str | Path): Official VEDAI root holding ``Vehicules512``/``Vehicules1024`` and ``Annotations512``/
            ``Annotations1024``; fold lists may sit in the annotations folder or in ``source`` itself.
        save_dir (str | Path): Output root; receives ``images/``, ``labels/``, fold lists and ``vedai-foldNN.yaml``.
        size (int | None): Resolution to convert, 512 or 1024. None picks 512 if present, else 1024.
        copy_images (bool): Copy images if True, otherwise create absolute symlinks to the source images.
        exist_ok (bool): Allow writing into a ``save_dir`` that already contains a ``labels/`` folder.
        obb (bool): Write oriented boxes (the four annotated corners, for OBB models) instead of horizontal boxes.

    Returns:
        (list[Path]): Written data YAML paths, one per fold found, sorted by fold number.

    Raises:
        FileNotFoundError: If the source, image folder, annotations folder, fold lists or image pairs are missing.
        FileExistsError: If ``save_dir`` already holds a ``labels/`` folder and ``exist_ok`` is False.
        ValueError: If ``size`` is not 512, 1024 or None.

    Examples:
        >>> convert_vedai("datasets/VEDAI-official", "datasets/VEDAI", size=512)
    """
    source = Path(source).expanduser().resolve()
    save_dir = Path(save_dir).expanduser().resolve()

    # Validate inputs -------------------------------------------------------------------------------------------------
    if not source.is_dir():
        raise FileNotFoundError(f"VEDAI source directory '{source}' does not exist or is not a directory")
    if size is None:
        size = next((s for s in SIZES if (source / f"Vehicules{s}").is_dir()), None)
        if size is None:
            raise FileNotFoundError(
                f"no image folder found in '{source}': expected '{source / 'Vehicules512'}' or "
                f"'{source / 'Vehicules1024'}'"
            )
    elif size not in SIZES:
        raise ValueError(f"size={size} is not supported, use one of {SIZES} or None")
    img_dir, ann_dir = source / f"Vehicules{size}", source / f"Annotations{size}"
    if not img_dir.is_dir():
        raise FileNotFoundError(f"image folder '{img_dir}' not found (size={size})")
    if not ann_dir.is_dir():
        raise FileNotFoundError(f"annotations folder '{ann_dir}' not found (size={size})")

    folds = _find_folds([ann_dir, source])
    for name, files in list(folds.items()):
        if len(files) != 2:
            have = next(iter(files.values()))
            LOGGER.warning(
                f"{have}: fold '{name}' has no matching {'test' if 'train' in files else 'train'} list, skipping"
            )
            folds.pop(name)
    if not folds:
        raise FileNotFoundError(
            f"no fold lists found: expected 'fold01.txt' and 'fold01test.txt' (... 'fold10test.txt') in '{ann_dir}' "
            f"or '{source}'"
        )

    pairs = _find_pairs(img_dir)
    if not pairs:
        raise FileNotFoundError(f"no '*{RGB_SUFFIX}.png' + '*{IR_SUFFIX}.png' image pairs found in '{img_dir}'")

    if save_dir.exists() and not save_dir.is_dir():
        raise FileExistsError(f"save_dir '{save_dir}' exists and is not a directory")
    if (save_dir / "labels").exists() and not exist_ok:
        raise FileExistsError(
            f"'{save_dir / 'labels'}' already exists, refusing to overwrite it; choose another save_dir or pass "
            f"exist_ok=True"
        )

    # Convert images and labels ---------------------------------------------------------------------------------------
    (save_dir / "images").mkdir(parents=True, exist_ok=True)
    (save_dir / "labels").mkdir(parents=True, exist_ok=True)
    kept, dropped, problems, converted = Counter(), Counter(), [], {}
    kind = "OBB" if obb else "boxes"
    for i, (co, ir) in TQDM(pairs.items(), desc=f"Converting VEDAI {size} ({kind})", total=len(pairs)):
        try:
            with Image.open(co) as im:
                w, h = im.size
        except Exception as e:
            LOGGER.warning(f"{co}: cannot read image header ({e}), skipping this pair")
            continue
        ann = ann_dir / f"{i}.txt"
        if ann.is_file():
            rows, drop, probs = _parse_lines(ann, w, h, obb)
        else:
            LOGGER.warning(f"{ann}: annotation file missing, writing an empty label for '{co.name}'")
            rows, drop, probs = [], Counter(), []
        for p in probs:
            LOGGER.warning(f"malformed VEDAI annotation {p}")
        problems += probs
        dropped.update(drop)
        kept.update(cls for cls, *_box in rows)

        co_dst, ir_dst = save_dir / "images" / co.name, save_dir / "images" / ir.name
        _place(co, co_dst, copy_images)
        _place(ir, ir_dst, copy_images)
        lines = "".join(f"{c} " + " ".join(f"{v:.6f}" for v in row) + "\n" for c, *row in rows)
        (save_dir / "labels" / f"{i}.txt").write_text(lines, encoding="utf-8")
        converted[i] = co_dst

    # Fold lists and data YAMLs ---------------------------------------------------------------------------------------
    yamls = []
    for name, files in folds.items():
        lists = {}
        for split in ("train", "test"):
            ids = []
            for i in _read_fold(files[split]):
                if i in converted:
                    ids.append(i)
                else:
                    LOGGER.warning(f"{files[split]}: id '{i}' has no converted image pair in '{img_dir}', skipping")
            lists[split] = ids
        if not lists["train"] or not lists["test"]:
            LOGGER.warning(f"fold '{name}' ({files['train']}, {files['test']}) lists no usable image, no YAML written")
            continue
        for split, ids in lists.items():
            (save_dir / f"vedai-{name}-{split}.txt").write_text(
                "".join(f"{converted[i]}\n" for i in ids), encoding="utf-8"
            )
        data = {
            "path": str(save_dir),
            "train": f"vedai-{name}-train.txt",
            "val": f"vedai-{name}-test.txt",
            "pairing": "suffix",
            "rgb_suffix": RGB_SUFFIX,
            "ir_suffix": IR_SUFFIX,
            "modality": "rgb+ir",
            "names": dict(VEDAI_NAMES),
        }
        file = save_dir / f"vedai-{name}.yaml"
        YAML.save(file, data, header=f"# VEDAI {size} {name} ({'oriented boxes' if obb else 'boxes'}), converted from "
                  f"{source}\n")
        yamls.append(file)
    if not yamls:
        raise FileNotFoundError(
            f"no fold list in '{ann_dir}' or '{source}' references a converted image of '{img_dir}'"
        )

    # Summary ---------------------------------------------------------------------------------------------------------
    LOGGER.info(f"VEDAI {size}: converted {len(converted)}/{len(pairs)} RGB+IR pairs to '{save_dir}' ({kind})")
    LOGGER.info("objects kept per class: " + ", ".join(f"{VEDAI_NAMES[c]}={kept[c]}" for c in VEDAI_NAMES))
    LOGGER.info(
        "objects dropped by raw class: "
        + (", ".join(f"{RAW_NAMES.get(c, 'unknown')}({c})={n}" for c, n in sorted(dropped.items())) or "none")
    )
    LOGGER.info(f"malformed annotation lines skipped: {len(problems)}")
    LOGGER.info(f"data YAMLs: {', '.join(f.name for f in yamls)}")
    return yamls
