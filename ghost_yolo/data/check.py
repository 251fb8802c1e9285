"""Resolving and checking data YAMLs: shipped names, the generated synthetic sets, modality and channels."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ultralytics.data.utils import check_det_dataset
from ultralytics.utils import LOGGER, YAML

from ghost_yolo.cfg import DATASETS_CFG_DIR, resolve_yaml

from .io import MODALITIES, check_modality, modality_for_channels
from .missing import check_drop_modality, check_modality_dropout
from .pairing import Pairing

SYNTH_YAML = "vedai-synth.yaml"


def datasets_dir() -> Path:
    """Where generated data lands: ``$GHOST_DATASETS_DIR`` or ``./datasets`` (next to ``./runs``)."""
    return Path(os.environ.get("GHOST_DATASETS_DIR") or Path.cwd() / "datasets").resolve()


def ensure_synthetic(name: str = "vedai-synth") -> Path:
    """Generate a shipped synthetic set (a ``cfg/datasets`` YAML with a ``generator:`` block) into
    ``datasets_dir()/name`` on first use and return its data YAML (absolute ``path:``, as Ultralytics needs)."""
    from .synthetic import generate_vedai_synth

    spec = YAML.load(DATASETS_CFG_DIR / f"{name}.yaml")
    root = datasets_dir() / name
    if not (root / "images").is_dir():
        LOGGER.info(f"Generating {name} into {root} (first use, seeded; about half a minute) ...")
        generate_vedai_synth(root, **spec.get("generator", {}))
    yaml_file = root / f"{name}.yaml"
    if not yaml_file.exists():
        spec = {k: v for k, v in spec.items() if k != "generator"}
        YAML.save(yaml_file, {**spec, "path": str(root)})
    return yaml_file


def resolve_data(data: str | Path | None) -> str:
    """Turn a data argument into a YAML path: shipped names resolve, synthetic sets generate when first asked for."""
    path = Path(resolve_yaml(str(data or SYNTH_YAML), "datasets"))
    if path.parent.resolve() == DATASETS_CFG_DIR.resolve() and path.is_file() and "generator" in YAML.load(path):
        return str(ensure_synthetic(path.stem))
    return str(path)


def apply_modality(d: dict[str, Any], modality: str | None = None, overrides: dict | None = None) -> dict[str, Any]:
    """Settle pairing, modality and input channels of a checked data dict (in place, and returned).

    Modality: the ``modality`` key if given, else the YAML's ``modality:``, else rgb+ir for paired data and the
    YAML's ``channels`` for plain single-modality data (DOTA, NWPU, DIOR converted to YOLO). ``drop_modality`` and
    ``modality_dropout`` in ``overrides`` are checked against it here, before any model or loader is built.
    """
    source = d.get("yaml_file", "the data YAML")
    pairing = Pairing.from_config(d, overrides)  # validates the convention name
    if pairing is None:
        chosen = check_modality(modality) if modality else modality_for_channels(d.get("channels", 3))
        if chosen != modality_for_channels(d.get("channels", 3)):
            raise ValueError(f"modality={chosen} needs paired data, but {source} has no 'pairing:' (suffix or folders)")
    else:
        chosen = check_modality(modality or d.get("modality") or "rgb+ir")
    check_drop_modality((overrides or {}).get("drop_modality"), chosen)
    check_modality_dropout((overrides or {}).get("modality_dropout"), chosen)
    d["modality"], d["channels"] = chosen, MODALITIES[chosen]
    return d


def check_data(data: str | Path | None, modality: str | None = None, overrides: dict | None = None) -> dict[str, Any]:
    """Resolve a data argument, load it through Ultralytics' checks and settle its modality."""
    return apply_modality(check_det_dataset(resolve_data(data)), modality, overrides)


def build_dataset(cfg: Any, img_path: str, batch: int, data: dict[str, Any], mode: str = "train", rect: bool = False,
                  stride: int = 32, fraction: float | None = None):
    """Paired dataset for paired data YAMLs, Ultralytics' own builder for plain ones."""
    from ultralytics.data.build import build_yolo_dataset, get_split_fraction
    from ultralytics.utils import colorstr

    from .dataset import PairedDataset

    pairing = Pairing.from_config(data, vars(cfg))
    if pairing is None:
        return build_yolo_dataset(cfg, img_path, batch, data, mode=mode, rect=rect, stride=stride, fraction=fraction)
    if fraction is None:
        fraction = get_split_fraction(cfg.fraction, "train" if mode == "train" else cfg.split)
    return PairedDataset(
        img_path=img_path,
        imgsz=cfg.imgsz,
        batch_size=batch,
        augment=mode == "train",
        hyp=cfg,
        rect=cfg.rect or rect,
        cache=cfg.cache or None,
        single_cls=cfg.single_cls or False,
        stride=stride,
        pad=0.0 if mode == "train" else 0.5,
        prefix=colorstr(f"{mode}: "),
        task=cfg.task,
        classes=cfg.classes,
        data=data,
        fraction=fraction,
        pairing=pairing,
        modality=data["modality"],
        ir_jitter=getattr(cfg, "ir_jitter", 0.0) or 0.0,
        fill_missing=bool(getattr(cfg, "fill_missing", False)),
        drop_modality=None if mode == "train" else getattr(cfg, "drop_modality", None),
        modality_dropout=(getattr(cfg, "modality_dropout", 0.0) or 0.0) if mode == "train" else 0.0,
    )


def check_task_labels(dataset: Any, task: str) -> None:
    """Say once what the labels mean for the task: oriented-box labels in a detect run train their enclosing boxes
    (as Ultralytics does); detect labels in an OBB run (plain data; paired data skips such files when verified) give
    the rotated loss nothing, named by file."""
    labels = getattr(dataset, "labels", None) or []
    prefix = getattr(dataset, "prefix", "")
    if task == "detect":
        if any(len(lb["segments"]) and all(len(s) == 4 for s in lb["segments"]) for lb in labels):
            LOGGER.info(f"{prefix}labels are oriented boxes (4 corners): a detect model trains on their enclosing "
                        "axis-aligned boxes (model=ghost-n-obb.yaml for oriented boxes)")
    elif task == "obb":
        flat = [lb["im_file"] for lb in labels if len(lb["cls"]) and not len(lb["segments"])]
        for f in flat[:5]:
            LOGGER.warning(f"{prefix}{f}: its labels are 'class x y w h' boxes, an OBB model needs 'class x1 y1 x2 y2 "
                           "x3 y3 x4 y4' corners: this image trains as background")
        if len(flat) > 5:
            LOGGER.warning(f"{prefix}{len(flat) - 5} more images with detect labels train as background")


def calibration_batches(data: str | Path, imgsz: int, n: int, modality: str | None = None, batch: int = 8):
    """The first ``n`` val pairs of ``data``, letterboxed to ``imgsz`` as at validation, as float CPU batches in [0, 1].

    What integer export fits output grids on, and what a benchmark gives onnxruntime's own calibration.
    """
    import torch
    from ultralytics.cfg import get_cfg
    from ultralytics.utils import DEFAULT_CFG

    from ghost_yolo.cfg import ghost_defaults

    d = check_data(data, modality)
    cfg = get_cfg(DEFAULT_CFG, {"imgsz": imgsz, "mode": "val", "data": str(data)})
    for k, v in {**ghost_defaults(), "modality": modality}.items():
        setattr(cfg, k, v)
    dataset = build_dataset(cfg, d.get("val") or d["train"], batch, d, mode="val", stride=32)
    n = min(n, len(dataset))
    for i in range(0, n, batch):
        yield torch.stack([dataset[j]["img"] for j in range(i, min(i + batch, n))]).float() / 255
