"""Shipped configuration: ghost defaults (default.yaml), model YAMLs (models/) and dataset YAMLs (datasets/).

This folder is installed as the ``ghost_yolo.cfg`` package so YAMLs resolve by bare name after a normal install.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ultralytics.utils import YAML

CFG_DIR = Path(__file__).resolve().parent
MODELS_DIR = CFG_DIR / "models"
DATASETS_CFG_DIR = CFG_DIR / "datasets"


@lru_cache
def ghost_defaults() -> dict[str, Any]:
    """Return ghost-yolo's own option defaults (keys that Ultralytics does not know)."""
    return dict(YAML.load(CFG_DIR / "default.yaml") or {})


def split_ghost_args(args: dict | SimpleNamespace | None) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split options into (Ultralytics keys, ghost keys): stock classes re-check keys against their own defaults."""
    args = vars(args).copy() if isinstance(args, SimpleNamespace) else dict(args or {})
    ghost = {k: args.pop(k) for k in list(args) if k in ghost_defaults()}
    return args, ghost


def shipped_models() -> str:
    """The model YAMLs shipped in ``cfg/models``, comma separated (what an error about a model name lists)."""
    return ", ".join(sorted(p.name for p in MODELS_DIR.glob("*.yaml")))


def resolve_yaml(name: str | Path, kind: str) -> str:
    """Resolve a bare YAML name (``ghost-n.yaml``, ``vedai-synth``) against the shipped ``cfg/<kind>`` folder.

    Existing paths are returned unchanged, so users' own files always win over shipped ones.
    """
    name = str(name)
    if Path(name).exists():
        return name
    stem = name if name.endswith((".yaml", ".yml")) else f"{name}.yaml"
    shipped = CFG_DIR / kind / Path(stem).name
    return str(shipped) if shipped.exists() and Path(stem).name == stem else name
