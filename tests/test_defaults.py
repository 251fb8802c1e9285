"""Run defaults live in cfg/default.yaml only: no function on the recipe's path (quant, distill, export, engine) retypes
one in its signature, so a default changed there changes every path at once."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import ghost_yolo
from ghost_yolo.cfg import ghost_defaults

PACKAGES = ("ghost_yolo.quant", "ghost_yolo.distill", "ghost_yolo.export", "ghost_yolo.engine")
ALIASES = {"threshold": "hq_threshold", "temperature": "kd_temp", "tau": "kd_tau", "gate": "kd_gate"}
# parameters that share a key's name but are not the run's key: a layer's or a quantizer's own width, the record of a
# model's state as a file holds it (missing keys of older checkpoints), a label in an error message
NOT_RUN_KEYS = {"bits", "QuantConfig.__init__", "check_relu.quantizer"}


def retyped_defaults() -> list[str]:
    """``module.function: param=default`` for every parameter named like a ghost key with a literal default."""
    keys, found, seen = set(ghost_defaults()), [], set()
    for info in pkgutil.walk_packages(ghost_yolo.__path__, "ghost_yolo."):
        if not info.name.startswith(PACKAGES):
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            funcs = [(name, obj)] if inspect.isfunction(obj) else [
                (f"{name}.{n}", getattr(f, "__func__", f)) for n, f in vars(obj).items()
                if inspect.isfunction(getattr(f, "__func__", f))] if inspect.isclass(obj) else []
            for qual, f in funcs:
                if id(f) in seen or qual in NOT_RUN_KEYS:
                    continue
                seen.add(id(f))
                for p in inspect.signature(f).parameters.values():
                    key = p.name if p.name in keys else ALIASES.get(p.name)
                    if key and p.name not in NOT_RUN_KEYS and f"{qual}.{p.name}" not in NOT_RUN_KEYS \
                            and p.default not in (inspect.Parameter.empty, None):
                        found.append(f"{module.__name__}.{qual}: {p.name}={p.default!r}")
    return found


def test_no_signature_retypes_a_run_default():
    """Every run key's default is read from cfg/default.yaml (None or required in signatures)."""
    assert not retyped_defaults(), "defaults retyped in signatures (take them from cfg/default.yaml):\n" + "\n".join(
        retyped_defaults())
