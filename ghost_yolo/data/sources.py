"""Prediction sources made of image pairs: folders, single pairs, lists; with a loader Ultralytics' predictor accepts."""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
from ultralytics.data.loaders import LoadImagesAndVideos, SourceTypes
from ultralytics.data.utils import IMG_FORMATS
from ultralytics.utils import LOGGER

from .io import load_pair
from .pairing import Pairing, detect_pairing


def is_paired_source(source) -> bool:
    """Whether a predict source names image files or folders (which may hold pairs), not arrays or streams."""
    items = source if isinstance(source, (list, tuple)) else [source]
    if not items or not all(isinstance(s, (str, Path)) for s in items):
        return False
    return all(Path(str(s).split(",")[0]).exists() or glob.has_magic(str(s)) for s in items)


def _image_files(source: str | Path | list) -> list[Path]:
    """Image files named by a source: files, folders (recursively), globs or a comma-separated list."""
    items = source if isinstance(source, (list, tuple)) else str(source).split(",")
    files = []
    for item in items:
        p = Path(str(item).strip())
        if glob.has_magic(str(p)):
            files += [Path(x) for x in sorted(glob.glob(str(p), recursive=True))]
        elif p.is_dir():
            files += sorted(x for x in p.rglob("*") if x.is_file())
        elif p.exists():
            files.append(p)
        else:
            raise FileNotFoundError(f"predict source {p} does not exist")
    return [f for f in files if f.suffix[1:].lower() in IMG_FORMATS]


def find_pairs(source: str | Path | list, pairing: Pairing | None = None,
               fill_missing: bool = False) -> list[tuple[Path | None, Path | None]]:
    """Pairs (colour, IR) in a source, by either convention; images without a partner are reported and skipped.

    Two explicit files whose names follow no convention are taken as one (colour, IR) pair, so
    ``source=[scene.jpg, scene_thermal.tif]`` works as well as ``source=a_co.png`` (its partner found). With
    ``fill_missing`` an image without partner is kept as ``(colour, None)`` or ``(None, ir)``, warned once, and its
    missing band is filled when it is loaded.
    """
    files = _image_files(source)
    if not files:
        raise FileNotFoundError(f"no image pairs found in predict source {source}: it holds no image files")
    pairing = detect_pairing(files, pairing)
    if len(files) == 2 and not any(pairing.is_colour(f) or pairing.is_ir(f) for f in files):
        return [(files[0], files[1])]
    pairs, seen = [], set()
    for f in files:
        colour = pairing.colour_of(f) if pairing.is_ir(f) else f
        if not pairing.is_colour(colour) or colour in seen:
            if not pairing.is_colour(colour):
                LOGGER.warning(f"{f}: neither a colour nor an IR image under pairing '{pairing.kind}', skipped")
            continue
        seen.add(colour)
        ir = pairing.partner(colour)
        if colour.exists() and ir.exists():
            pairs.append((colour, ir))
        elif fill_missing and colour.exists():
            LOGGER.warning(f"{colour}: missing IR partner {ir}, predicted with the IR band filled (fill_missing=True)")
            pairs.append((colour, None))
        elif fill_missing:
            LOGGER.warning(f"{f}: IR image without colour partner {colour}, predicted with the colour band filled "
                           "(fill_missing=True)")
            pairs.append((None, f))
        elif not colour.exists():
            LOGGER.warning(f"{f}: IR image without colour partner {colour}, skipped (fill_missing=True predicts it)")
        else:
            LOGGER.warning(f"{colour}: missing IR partner {ir}, skipped (fill_missing=True predicts it)")
    if not pairs:
        raise FileNotFoundError(f"no image pairs found in predict source {source}: {len(files)} images, none with "
                                f"its partner under pairing '{pairing.kind}' (fill_missing=True predicts them alone)")
    return pairs


def looks_paired(source: str | Path | list, pairing: Pairing | None = None) -> bool:
    """Whether a file/folder source holds IR halves of pairs (so even a colour-only model should read pairs)."""
    files = _image_files(source)
    p = detect_pairing(files, pairing)
    return any(p.is_ir(f) for f in files)


class LoadImagePairs(LoadImagesAndVideos):
    """Ultralytics image loader that yields each pair stacked in the model's channel order."""

    def __init__(self, pairs: list[tuple[Path, Path | None]], modality: str, batch: int = 1) -> None:
        """Take resolved pairs; no globbing happens here."""
        self.pairs, self.modality = pairs, modality
        self.files = [str(c or i) for c, i in pairs]
        self.nf = self.ni = len(pairs)
        self.video_flag = [False] * self.nf
        self.mode, self.vid_stride, self.bs, self.cap = "image", 1, batch, None
        self.source_type = SourceTypes()

    def __next__(self) -> tuple[list[str], list[np.ndarray], list[str]]:
        """Next batch of stacked pairs; an unreadable pair is reported by name and skipped."""
        paths, imgs, info = [], [], []
        while len(imgs) < self.bs and self.count < self.nf:
            colour, ir = self.pairs[self.count]
            self.count += 1
            try:
                imgs.append(load_pair(colour, ir, self.modality))
            except FileNotFoundError as e:
                LOGGER.warning(f"{e}, skipped")
                continue
            paths.append(str(colour or ir))
            names = (Path(x).name if x else "filled" for x in (colour, ir))
            info.append(f"pair {self.count}/{self.nf} {'+'.join(names)}: ")
        if not imgs:
            raise StopIteration
        return paths, imgs, info
