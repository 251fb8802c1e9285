"""Deterministic synthetic VEDAI-like RGB + IR aerial datasets ("vedai-synth", and "vedai-synth-obb" with obb=True).

Lets the whole RGB+IR pipeline (data loading, training, export) run and be tested without downloading VEDAI. The scenes
are built so that both modalities matter: some classes differ only in IR, some only in colour, and about 20% of objects
are camouflaged in one of the two bands.

The oriented variant draws the same vehicles with aspect ratios 1.5-4 at uniform headings, spaced by their rotated
outlines (so neighbours' axis-aligned boxes may overlap) and often parked side by side in rows, and labels each with
its four corners: an axis-aligned box is a poor fit there, so orientation has to be learned.

Examples:
    >>> from ghost_yolo.data.synthetic import generate_vedai_synth
    >>> root = generate_vedai_synth("datasets/vedai-synth", n_train=400, n_val=100, imgsz=256)
    >>> root = generate_vedai_synth("datasets/vedai-synth-obb", n_train=400, n_val=100, imgsz=256, obb=True)
"""

from __future__ import annotations

import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import cv2
import numpy as np
from ultralytics.utils import LOGGER, TQDM

from .vedai import VEDAI_NAMES  # the 8-class scheme shared with the VEDAI converter

CAR, PICKUP, CAMPING, TRUCK, OTHER, TRACTOR, BOAT, VAN = range(8)

# Land-cover ids with their mean colour (RGB) and near-infrared level: vegetation is bright in NIR, water dark
SOIL, GRASS, CROP, TREES, WATER, ROAD, MARK, ROOF_RED, ROOF_GREY, ROOF_DARK = range(10)
COVER_RGB = np.array(
    [(150, 126, 96), (92, 124, 62), (124, 142, 72), (48, 78, 40), (38, 62, 78), (108, 108, 106), (225, 225, 215),
     (152, 74, 58), (138, 138, 142), (72, 72, 78)], dtype=np.float32)  # fmt: skip
COVER_IR = np.array([105, 190, 172, 215, 18, 92, 150, 125, 115, 95], dtype=np.float32)

# Vehicle long side in pixels at imgsz=256 (scaled with imgsz) and length/width aspect ranges
SIZE = {CAR: (9, 16), PICKUP: (9, 16), CAMPING: (16, 28), TRUCK: (26, 40), OTHER: (6, 40), TRACTOR: (8, 14),
        BOAT: (8, 32), VAN: (16, 28)}  # fmt: skip
ASPECT = {CAR: (1.8, 2.3), PICKUP: (1.8, 2.3), CAMPING: (1.8, 2.4), TRUCK: (2.6, 3.6), OTHER: (1.0, 3.0),
          TRACTOR: (1.2, 1.6), BOAT: (2.4, 4.0), VAN: (1.8, 2.4)}  # fmt: skip
# The oriented set's aspects: every class within 1.5-4 (none near square, where the angle is undefined); car and pickup
# share a range (they must consume the generator identically), as do camping and van
ASPECT_OBB = {CAR: (1.8, 2.6), PICKUP: (1.8, 2.6), CAMPING: (2.0, 2.8), TRUCK: (2.8, 4.0), OTHER: (1.5, 4.0),
              TRACTOR: (1.5, 1.9), BOAT: (2.4, 4.0), VAN: (2.0, 2.8)}  # fmt: skip
HIDE_RGB = {CAR, PICKUP, TRUCK, OTHER, TRACTOR, BOAT}  # classes whose identity lives in IR may vanish in colour
HIDE_IR = {CAMPING, VAN, TRUCK, OTHER, TRACTOR, BOAT}  # classes whose identity lives in colour may vanish in IR
CAR_COLOURS = [(200, 200, 205), (30, 30, 35), (160, 30, 30), (40, 60, 140), (120, 120, 125), (230, 230, 230)]
VAN_COLOURS = [(35, 45, 110), (120, 25, 25), (30, 30, 32), (30, 80, 45), (90, 90, 96)]


def _noise(rng: np.random.Generator, size: int, octaves: tuple[int, ...] = (4, 8, 16, 32)) -> np.ndarray:
    """Return smooth multi-octave value noise in [0, 1], a cheap stand-in for natural texture."""
    out, amp = np.zeros((size, size), np.float32), 1.0
    for cells in octaves:
        grid = rng.random((cells, cells), dtype=np.float32)
        out += amp * cv2.resize(grid, (size, size), interpolation=cv2.INTER_CUBIC)
        amp *= 0.5
    return (out - out.min()) / max(float(np.ptp(out)), 1e-6)


def _land_cover(rng: np.random.Generator, s: int) -> tuple[np.ndarray, list]:
    """Build a land-cover map (field parcels, trees, water, roads with lane marks, roofs) and the road centre lines."""
    k, scale = int(rng.integers(5, 12)), s / 256
    seeds = rng.random((k, 2), dtype=np.float32) * s
    yy, xx = np.mgrid[:s, :s].astype(np.float32)
    parcel = ((xx[..., None] - seeds[:, 0]) ** 2 + (yy[..., None] - seeds[:, 1]) ** 2).argmin(-1)
    cover = rng.choice(np.array([SOIL, GRASS, CROP], np.uint8), size=k, p=[0.3, 0.4, 0.3])[parcel]
    cover[_noise(rng, s, (6, 12, 24)) > rng.uniform(0.65, 0.8)] = TREES
    if rng.random() < 0.5:  # lake or river
        cover[_noise(rng, s, (2, 4, 8)) > rng.uniform(0.6, 0.75)] = WATER
    roads = []
    for _ in range(int(rng.integers(0, 3))):
        p, a, width = rng.random(2) * s, rng.uniform(0, np.pi), rng.uniform(8, 16) * scale
        d = np.array([np.cos(a), np.sin(a)])
        p0, p1 = (p - 2 * s * d).round().astype(int), (p + 2 * s * d).round().astype(int)
        cv2.line(cover, tuple(map(int, p0)), tuple(map(int, p1)), ROAD, max(int(width), 3))
        dash = max(4.0, 8 * scale)
        for t in np.arange(-1.5 * s, 1.5 * s, 2 * dash):  # dashed centre lane mark
            q0, q1 = (p + t * d).round().astype(int), (p + (t + dash) * d).round().astype(int)
            cv2.line(cover, tuple(map(int, q0)), tuple(map(int, q1)), MARK, 1)
        roads.append((p, a, width))
    for _ in range(int(rng.integers(0, 6))):  # buildings
        c, wh = rng.random(2) * s, rng.uniform(14, 45, 2) * scale
        box = cv2.boxPoints(((float(c[0]), float(c[1])), (float(wh[0]), float(wh[1])), float(rng.uniform(0, 90))))
        cv2.fillPoly(cover, [box.round().astype(np.int32)], int(rng.integers(ROOF_RED, ROOF_DARK + 1)))
    return cover, roads


def _colour_band(rng: np.random.Generator, cover: np.ndarray) -> np.ndarray:
    """Render the visible RGB background as float32 from the land-cover map with texture and crop-row stripes."""
    s = cover.shape[0]
    tex = 0.75 + 0.5 * _noise(rng, s, (4, 8, 16, 32, 64, 128))
    a, period = rng.uniform(0, np.pi), rng.uniform(4, 9)
    yy, xx = np.mgrid[:s, :s].astype(np.float32)
    rows = 1 + 0.1 * np.sin(2 * np.pi * (xx * np.cos(a) + yy * np.sin(a)) / period) * (cover == CROP)
    return COVER_RGB[cover] * (tex * rows)[..., None]


def _ir_band(rng: np.random.Generator, cover: np.ndarray) -> np.ndarray:
    """Render the NIR background as float32: its own response per land cover with partly independent texture."""
    return COVER_IR[cover] * (0.75 + 0.5 * _noise(rng, cover.shape[0], (4, 8, 16, 32, 64)))


def _rect(u0: float, u1: float, v0: float, v1: float) -> np.ndarray:
    """Return a rectangle in vehicle-local units (u along the length, +0.5 = front; v across the width)."""
    return np.array([(u0, v0), (u1, v0), (u1, v1), (u0, v1)], np.float32)


def _parts(rng: np.random.Generator, cls: int) -> list[tuple[np.ndarray, tuple, float]]:
    """Sample the look of one vehicle as a list of (local polygon, RGB colour, IR level) parts drawn in order.

    Car and pickup consume the generator identically and share every colour, differing only in the IR of the hood
    (pickup engine block hot, car cold). Camping and van likewise share every IR value and differ only in colour.
    """
    full = _rect(-0.5, 0.5, -0.5, 0.5)
    if cls in {CAR, PICKUP}:
        body, glass = CAR_COLOURS[rng.integers(len(CAR_COLOURS))], (25, 30, 38)
        cold, hot = rng.uniform(35, 70), rng.uniform(225, 250)
        hood = hot if cls == PICKUP else cold
        return [
            (full, body, cold),
            (_rect(0.16, 0.48, -0.42, 0.42), body, hood),
            (_rect(0.0, 0.14, -0.4, 0.4), glass, cold - 10),  # windscreen
            (_rect(-0.42, -0.32, -0.38, 0.38), glass, cold - 10),  # rear window
        ]
    if cls in {CAMPING, VAN}:
        van = VAN_COLOURS[rng.integers(len(VAN_COLOURS))]
        camp = (*(int(rng.integers(215, 245)),) * 2, int(rng.integers(200, 230)))  # white / cream
        stripe = tuple(rng.integers(40, 200, 3))
        warm, front = rng.uniform(115, 145), rng.uniform(215, 240)
        camping = cls == CAMPING
        return [
            (full, camp if camping else van, warm),
            (_rect(0.3, 0.5, -0.45, 0.45), (28, 32, 40), front),  # cab with windscreen
            (_rect(-0.45, 0.2, 0.25, 0.4), stripe if camping else van, warm),  # camper side stripe
            (_rect(-0.3, -0.1, -0.15, 0.15), (170, 170, 175) if camping else van, warm),  # roof hatch
        ]
    if cls == TRUCK:
        cab, trailer = tuple(rng.integers(30, 230, 3)), (int(rng.integers(170, 240)),) * 3
        return [(_rect(-0.5, 0.28, -0.5, 0.5), trailer, rng.uniform(110, 140)),
                (_rect(0.31, 0.5, -0.46, 0.46), cab, rng.uniform(220, 245))]  # fmt: skip
    if cls == TRACTOR:
        body, tyre = [(40, 120, 40), (170, 30, 25), (220, 180, 30)][rng.integers(3)], (22, 22, 22)
        wheels = [_rect(-0.5, -0.1, -0.5, -0.28), _rect(-0.5, -0.1, 0.28, 0.5),  # big rear wheels
                  _rect(0.2, 0.45, -0.45, -0.3), _rect(0.2, 0.45, 0.3, 0.45)]  # fmt: skip
        return [(w, tyre, 70.0) for w in wheels] + [
            (_rect(-0.35, 0.5, -0.26, 0.26), body, 120.0),
            (_rect(0.05, 0.5, -0.2, 0.2), body, rng.uniform(230, 250)),  # hot engine
        ]
    if cls == BOAT:
        hull = np.array([(-0.5, -0.5), (0.2, -0.5), (0.5, 0), (0.2, 0.5), (-0.5, 0.5)], np.float32)
        return [(hull, (int(rng.integers(200, 245)),) * 3, rng.uniform(120, 160)),
                (hull * 0.6 - (0.1, 0), tuple(rng.integers(90, 200, 3)), rng.uniform(100, 140))]  # fmt: skip
    return [(full, tuple(rng.integers(20, 240, 3)), rng.uniform(40, 240))]  # OTHER: anything


def _draw_vehicle(rgb: np.ndarray, ir: np.ndarray, geom: tuple, parts: list, sun: np.ndarray, hide: str = "") -> None:
    """Draw a shadowed vehicle in place; hide='rgb'/'ir' matches that band to the local background (camouflage).

    Polygons use 4 fractional bits (shift=4) so sub-pixel geometry survives for the smallest vehicles.
    """
    (cx, cy), (length, width), deg = geom
    c, s = np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))
    rot = np.array([[c * length, -s * width], [s * length, c * width]], np.float32)
    box = cv2.boxPoints(geom)
    x0, y0 = np.floor(box.min(0)).astype(int)
    x1, y1 = np.ceil(box.max(0)).astype(int)
    bg_rgb, bg_ir = rgb[y0:y1, x0:x1].mean((0, 1)), float(ir[y0:y1, x0:x1].mean())
    shadow = ((box + sun) * 16).round().astype(np.int32)
    if hide != "rgb":
        cv2.fillPoly(rgb, [shadow], tuple(float(v) for v in bg_rgb * 0.45), cv2.LINE_8, 4)
    if hide != "ir":
        cv2.fillPoly(ir, [shadow], bg_ir * 0.75, cv2.LINE_8, 4)
    for poly, colour, level in parts:
        pts = ((poly @ rot.T + (cx, cy)) * 16).round().astype(np.int32)
        colour = tuple(float(v) for v in (bg_rgb * 1.03 if hide == "rgb" else colour))
        cv2.fillPoly(rgb, [pts], colour, cv2.LINE_8, 4)
        cv2.fillPoly(ir, [pts], bg_ir * 1.03 if hide == "ir" else float(level), cv2.LINE_8, 4)


def _separated(a: np.ndarray, b: np.ndarray) -> bool:
    """Whether two convex polygons (k, 2) are disjoint: some edge normal of either separates their projections."""
    for poly in (a, b):
        edges = np.roll(poly, -1, 0) - poly
        for nx, ny in np.stack([-edges[:, 1], edges[:, 0]], 1):
            pa, pb = a @ (nx, ny), b @ (nx, ny)
            if pa.max() <= pb.min() or pb.max() <= pa.min():
                return True
    return False


def _parking_row(rng: np.random.Generator, s: int) -> list[tuple[float, float, float]]:
    """Sample 3-7 side-by-side parking slots (cx, cy, deg) sharing a heading, so neighbours' enclosing boxes overlap."""
    p, a, k = rng.random(2) * s, rng.uniform(0, np.pi), int(rng.integers(3, 8))
    step, across = rng.uniform(10, 14) * s / 256, np.array([-np.sin(a), np.cos(a)])
    flips, jitter = rng.integers(2, size=k), rng.normal(0, 3, k)  # nose in or out, a few degrees off the line
    return [(*(p + (i - (k - 1) / 2) * step * across), np.rad2deg(a) + 180 * f + j)
            for i, (f, j) in enumerate(zip(flips, jitter))]  # fmt: skip


def _place(
    rng: np.random.Generator,
    cls: int,
    s: int,
    cover: np.ndarray,
    roads: list,
    taken: list,
    pad: float,
    obb: bool = False,
    slot: tuple[float, float, float] | None = None,
) -> tuple | None:
    """Sample a free, fully-inside rotated rectangle for one vehicle (boats on water, others on land) or None.

    Detect spacing keeps axis-aligned boxes ``pad`` apart; ``obb`` spacing keeps the rotated outlines ``pad`` apart and
    draws the oriented aspects, and a ``slot`` (cx, cy, deg) is tried once as it is (a parking-row place).
    """
    water = np.argwhere(cover == WATER) if cls == BOAT else None
    for _ in range(1 if slot else 30):
        length = rng.uniform(*SIZE[cls]) * s / 256
        width = length / rng.uniform(*(ASPECT_OBB if obb else ASPECT)[cls])
        if slot:
            cx, cy, deg = slot
        elif cls == BOAT:
            cy, cx = water[rng.integers(len(water))] + 0.5
            deg = rng.uniform(0, 360)
        elif roads and rng.random() < 0.5:  # drive along a road
            p, a, w = roads[rng.integers(len(roads))]
            along, across = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
            cx, cy = p + rng.uniform(-s, s) * along + rng.uniform(-w, w) / 4 * across
            deg = np.rad2deg(a) + 180 * rng.integers(2)
        else:
            cx, cy, deg = *rng.uniform(0, s, 2), rng.uniform(0, 360)
        geom = ((float(cx), float(cy)), (float(length), float(width)), float(deg))
        box = cv2.boxPoints(geom)
        (x0, y0), (x1, y1) = box.min(0), box.max(0)
        if x0 < 1 or y0 < 1 or x1 > s - 1 or y1 > s - 1:
            continue
        patch = cover[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
        if cls == BOAT and (patch == WATER).mean() < 0.9:  # box corners may touch the shore, the hull may not
            continue
        if cls != BOAT and ((patch == WATER) | (patch >= ROOF_RED)).mean() > 0.2:  # no cars on lakes or rooftops
            continue
        if obb:
            grown = cv2.boxPoints(((float(cx), float(cy)), (length + 2 * pad, width + 2 * pad), float(deg)))
            if not all(_separated(grown, other) for other in taken):
                continue
            taken.append(box)
        elif any(x0 < bx1 + pad and bx0 < x1 + pad and y0 < by1 + pad and by0 < y1 + pad
                 for bx0, by0, bx1, by1 in taken):
            continue
        else:
            taken.append((x0, y0, x1, y1))
        return geom
    return None


def make_sample(imgsz: int, seed: int, idx: int, obb: bool = False) -> tuple[np.ndarray, np.ndarray, list[tuple]]:
    """Generate one RGB (HWC uint8, RGB order) + IR (HW uint8) pair and its normalised labels: (cls, xc, yc, w, h), or
    with ``obb`` (cls, x1, y1, ..., x4, y4), the corners in order around the rectangle.

    Seeded by (seed, idx) alone, so any sample can be regenerated on its own and worker count never changes output.
    The oriented path draws extra random numbers only behind ``obb``, so the detect set stays byte-identical.
    """
    rng = np.random.default_rng([seed, idx])
    s = imgsz
    cover, roads = _land_cover(rng, s)
    rgb, ir = _colour_band(rng, cover), _ir_band(rng, cover)
    a = rng.uniform(0, 2 * np.pi)
    sun = (rng.uniform(1.5, 3.0) * s / 256 * np.array([np.cos(a), np.sin(a)])).astype(np.float32)
    classes = [c for c in VEDAI_NAMES if c != BOAT or (cover == WATER).mean() > 0.05]
    taken, labels, n = [], [], int(rng.integers(3, 13))
    slots = _parking_row(rng, s) if obb and rng.random() < 0.5 else []
    for _ in range(4 * n):
        if len(labels) == n:
            break
        cls = int(rng.choice(classes))
        slot = slots.pop(0) if slots and cls != BOAT else None
        geom = _place(rng, cls, s, cover, roads, taken, float(np.abs(sun).max()) + 1, obb, slot)
        if geom is None:
            continue
        hide = ""
        if rng.random() < 0.2:
            hide = str(rng.choice(["rgb"] * (cls in HIDE_RGB) + ["ir"] * (cls in HIDE_IR)))
        _draw_vehicle(rgb, ir, geom, _parts(rng, cls), sun, hide)
        corners = cv2.boxPoints(geom) / s
        if obb:  # OpenCV draws pixel i around i, labels read it as [i, i + 1]; placement keeps corners inside
            labels.append((cls, *(corners + 0.5 / s).ravel().tolist()))
            continue
        (x0, y0), (x1, y1) = np.clip(corners.min(0), 0, 1), np.clip(corners.max(0), 0, 1)
        labels.append((cls, (x0 + x1) / 2, (y0 + y1) / 2, x1 - x0, y1 - y0))
    rgb = cv2.GaussianBlur(rgb, (0, 0), 0.6) + rng.standard_normal(rgb.shape, dtype=np.float32) * 3
    ir = cv2.GaussianBlur(ir, (0, 0), 0.8) + rng.standard_normal(ir.shape, dtype=np.float32) * 4
    ir += rng.standard_normal(s, dtype=np.float32) * 1.5  # column striping typical of IR sensors
    return np.clip(rgb, 0, 255).round().astype(np.uint8), np.clip(ir, 0, 255).round().astype(np.uint8), labels


def _write_sample(job: tuple[Path, str, int, int, int, bool]) -> None:
    """Generate sample idx and write its VEDAI-named PNG pair and YOLO (or YOLO OBB) label file into the given split."""
    root, split, idx, imgsz, seed, obb = job
    rgb, ir, labels = make_sample(imgsz, seed, idx, obb)
    stem = f"{idx:08d}"
    for name, im in ((f"{stem}_co.png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)), (f"{stem}_ir.png", ir)):
        if not cv2.imwrite(str(root / "images" / split / name), im):  # cv2 reports failure only by return value
            raise OSError(f"could not write {root / 'images' / split / name}")
    lines = [f"{c} " + " ".join(f"{v:.6f}" for v in values) for c, *values in labels]
    (root / "labels" / split / f"{stem}.txt").write_text("\n".join(lines) + ("\n" if lines else ""))


def _init_worker() -> None:
    """Keep OpenCV single-threaded inside pool workers so processes do not oversubscribe the CPU."""
    cv2.setNumThreads(1)


def generate_vedai_synth(
    root: str | Path,
    n_train: int = 400,
    n_val: int = 100,
    imgsz: int = 256,
    seed: int = 0,
    workers: int = 2,
    obb: bool = False,
) -> Path:
    """Write the dataset under root and return root.

    Output is byte-identical for a given seed whatever the worker count, since every pair is seeded by (seed, index).
    Files go to a temporary sibling folder renamed to root at the end, so an interrupted run never leaves a half dataset
    behind.

    Args:
        root (str | Path): Dataset folder to create; must not exist yet.
        n_train (int): Number of training pairs (ids 0..n_train-1).
        n_val (int): Number of validation pairs (ids continue after the training ones).
        imgsz (int): Square image size in pixels; vehicle sizes (6-40 px at 256) scale with it.
        seed (int): Dataset seed.
        workers (int): Number of worker processes (<=1 runs in this process).
        obb (bool): Write the oriented variant: aspects 1.5-4, rotated spacing, parking rows, 4-corner labels.

    Returns:
        (Path): The dataset root.

    Raises:
        FileExistsError: If root already exists.
    """
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"{root} already exists, remove it or pick another folder")
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}-tmp-", dir=root.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the final dataset should be readable like any other folder
    try:
        jobs = []
        for split, ids in (("train", range(n_train)), ("val", range(n_train, n_train + n_val))):
            for sub in ("images", "labels"):
                (tmp / sub / split).mkdir(parents=True)
            jobs += [(tmp, split, i, imgsz, seed, obb) for i in ids]
        kind = "oriented vedai-synth" if obb else "vedai-synth"
        LOGGER.info(f"Generating {kind}: {n_train} train + {n_val} val RGB/IR pairs at {imgsz}px, seed={seed}")
        desc = f"{kind} {root}"
        if workers <= 1:
            for job in TQDM(jobs, desc=desc):
                _write_sample(job)
        else:
            with ProcessPoolExecutor(workers, initializer=_init_worker) as pool:
                chunk = max(1, len(jobs) // (8 * workers))
                for _ in TQDM(pool.map(_write_sample, jobs, chunksize=chunk), total=len(jobs), desc=desc):
                    pass
        if root.exists():
            raise FileExistsError(f"{root} appeared while generating, leaving it untouched")
        tmp.rename(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    LOGGER.info(f"{kind} written to {root}")
    return root
