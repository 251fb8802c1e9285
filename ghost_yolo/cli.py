"""The ``ghost`` command: ``ghost MODE key=value ...`` like ``yolo``, with ghost-yolo's keys and modes.

Parsing reuses Ultralytics' own helpers (``merge_equals_args``, ``parse_key_value_pair``, its handling of deprecated
keys), so values are typed the same way; unknown keys are rejected with "similar arguments" hints over Ultralytics'
keys and ghost's. Bare words mean what they mean to ``yolo``: a boolean key alone is ``key=True`` (``ghost train resume
model=last.pt``, ``ghost export ... dynamic``), the task word ``detect`` is accepted, ``help`` shows help.

The ``yolo`` command's defaults, reproduced explicitly: Ultralytics gives ``yolo predict`` different defaults from
``YOLO(...).predict()`` in Python (``save=True``, a verbose model set-up, and ``predict_cli``, which streams through
the source without keeping results), deciding by ``sys.argv[0]`` ending in ``yolo`` (``ultralytics/engine/model.py``,
``is_cli``). Under ``ghost`` that test is false, so ``run`` passes the same defaults itself (only where the user did
not set them). Nothing else in Ultralytics' train, val or export depends on the command name. Ultralytics' printed
``yolo <mode> ...`` hints are shown as ``ghost <mode> ...`` commands (``ghost_yolo.utils.hints``).
"""

from __future__ import annotations

import os
import sys
from difflib import get_close_matches
from typing import Any

os.environ.setdefault("YOLO_OFFLINE", "1")

from ultralytics.cfg import TASKS, _handle_deprecation, merge_equals_args, parse_key_value_pair
from ultralytics.utils import DEFAULT_CFG_DICT, LOGGER

from ghost_yolo.cfg import CFG_DIR, ghost_defaults
from ghost_yolo.engine.predictor import GhostOBBPredictor, GhostPredictor
from ghost_yolo.utils.hints import ghost_hints

MODES = {
    "train": "train a detector (no arguments: ghost-n on the built-in vedai-synth demo data)",
    "val": "validate a trained model (.pt, .onnx, .ghost or an _openvino_model/ folder) on its data or data=...",
    "predict": "detect on image pairs: a folder (either pairing convention), a_co.png, or two paths",
    "export": "export a trained model: format=onnx (integer QDQ for quantized models; int4=True), format=openvino "
              "(OpenVINO IR, int8 convolutions), format=ghost (packed); other Ultralytics formats for float models",
    "search": "HQ bit-width search on a trained model (no training): per-layer table, bits.yaml and bits.png",
    "info": "per-layer params, MACs, bits and BOPs, size MB and GBOPs (the GHOST paper's counting); layers.csv",
    "convert-vedai": "convert the official VEDAI distribution: source=DIR save_dir=DIR [size=512|1024] [obb=True]",
    "convert-dronevehicle": "convert the official DroneVehicle distribution to OBB pairs: source=DIR save_dir=DIR "
                            "[labels=ir|rgb|union]",
}
CONVERT_KEYS = {"source": None, "save_dir": "datasets/vedai", "size": None, "obb": False, "copy_images": True,
                "exist_ok": False}
DRONEVEHICLE_KEYS = {"source": None, "save_dir": "datasets/dronevehicle", "labels": "ir", "border": 100,
                     "copy_images": True, "exist_ok": False}
CONVERT_MODES = {"convert-vedai": CONVERT_KEYS, "convert-dronevehicle": DRONEVEHICLE_KEYS}  # their own keys only
NEEDS_MODEL = {"val", "predict", "export", "search"}
# Keys each analysis mode uses (every other key is accepted, as in Ultralytics, but has no effect there)
TOOL_KEYS = {
    "search": ("hq_threshold", "bit_min", "bit_max", "keep_first", "keep_head", "project", "name", "exist_ok", "plots"),
    "info": ("imgsz", "bits", "hq_threshold", "bit_min", "bit_max", "keep_first", "keep_head", "project", "name",
             "exist_ok"),
}
# What `yolo predict` gets and `YOLO(...).predict()` does not (Ultralytics' `is_cli`): the user's own keys win
CLI_PREDICT = {"save": True}
# Bare words `yolo` reads as True although their defaults are not booleans (missing or None), as in its entrypoint
BARE_FLAGS = {"half", "int8", "end2end", "nms"}
GHOST_TASKS = ("detect", "obb")  # the tasks of ghost-yolo models (axis-aligned and oriented boxes)

HELP = f"""
Usage: ghost MODE [key=value ...]

Modes:
{chr(10).join(f"  {m:<20} {d}" for m, d in MODES.items())}

Examples:
  ghost train                                     # demo: ghost-n on vedai-synth, a few minutes on a CPU
  ghost train model=ghost-s-dual.yaml data=vedai.yaml imgsz=512 epochs=100
  ghost train data=vedai-synth.yaml modality=rgb   # same pairs, colour only (also: modality=ir)
  ghost val model=runs/detect/train/weights/best.pt
  ghost val model=best.pt drop_modality=ir                            # as if the IR sensor were missing
  ghost predict model=best.pt source=path/to/pairs save_txt=True
  ghost export model=best.pt format=onnx dynamic=True
  ghost export model=best.pt format=onnx int4=True                    # quantized: int8/INT4 weights, QLinearConv
  ghost export model=best.pt format=openvino                          # best_openvino_model/: int8 convs on CPU
  ghost export model=best.pt format=ghost                             # packed .ghost (GhostYOLO('best.ghost'))
  ghost train resume model=runs/detect/train/weights/last.pt          # continue an interrupted run
  ghost train model=best.pt data=vedai-synth.yaml bits=hq epochs=10   # quantize a float model (HQ widths) + QAT
  ghost train model=ghost-n.yaml bits=hq fp_epochs=10 epochs=20      # float first, then HQ search and QAT
  ghost search model=best.pt hq_threshold=0.1                         # widths only: table, bits.yaml, bits.png
  ghost info model=best.pt imgsz=512                                  # size MB and GBOPs per layer
  ghost convert-vedai source=path/to/VEDAI save_dir=datasets/vedai
  ghost convert-dronevehicle source=path/to/DroneVehicle save_dir=datasets/dronevehicle   # OBB, IR labels
  ghost train data=datasets/vedai/vedai-fold01.yaml folds=1-10 imgsz=512   # VEDAI k-fold: folds.csv, mean ± std

Keys: every Ultralytics key (run 'yolo cfg' to list them) plus ghost's own; 'ghost MODE help' shows ghost's.
A boolean key alone means key=True (resume, save_txt, dynamic, half, int4, ...), as with 'yolo'.
predict saves annotated images to runs/detect/predict* like 'yolo predict' (save=False to only print).
Shipped YAMLs resolve by name: models {", ".join(sorted(p.name for p in (CFG_DIR / "models").glob("*.yaml")))};
data {", ".join(sorted(p.name for p in (CFG_DIR / "datasets").glob("*.yaml")))}.
"""


def mode_help(mode: str) -> str:
    """Help of one mode: what it does, and ghost's keys with their documentation (cfg/default.yaml)."""
    if mode in CONVERT_MODES:
        keys = "\n".join(f"  {k}={v}" for k, v in CONVERT_MODES[mode].items())
        return f"\nghost {mode}: {MODES[mode]}\n\nKeys:\n{keys}\n"
    doc = (CFG_DIR / "default.yaml").read_text(encoding="utf-8")
    return f"\nghost {mode}: {MODES[mode]}\n\nghost keys (cfg/default.yaml), plus every Ultralytics key ('yolo cfg'):\n\n{doc}"


def similar(key: str, base: dict[str, Any]) -> str:
    """The hint naming the valid keys closest to ``key`` (an empty string when none is close)."""
    close = [f"{m}={base[m]}" if base[m] is not None else m for m in get_close_matches(key, base, n=3)]
    return f" Similar arguments are i.e. {close}." if close else ""


def check_keys(base: dict[str, Any], custom: dict[str, Any]) -> None:
    """Reject unknown keys, with the closest valid ones as hints."""
    bad = [k for k in custom if k not in base]
    if bad:
        lines = [f"'{k}' is not a valid ghost argument.{similar(k, base)}" for k in bad]
        raise SyntaxError("\n".join(lines) + "\nRun 'ghost help' for usage.")


def parse_args(args: list[str], base: dict[str, Any], tasks: bool = True) -> dict[str, Any]:
    """``key=value`` tokens and bare words to a typed dict, checked against ``base`` (as ``yolo`` reads them).

    A bare boolean key of ``base`` (``resume``, ``save_txt``, ``dynamic``, ghost's ``int4``) and ``yolo``'s bare flags
    ``half``/``int8``/``end2end``/``nms`` mean ``key=True``; with ``tasks``, the task words ``detect``/``obb`` set
    ``task=``. Deprecated Ultralytics keys (``half``, ``int8``, ...) are mapped as ``yolo`` maps them.
    """
    overrides = {}
    for a in merge_equals_args(args):
        if a.startswith("--"):
            LOGGER.warning(f"argument '{a}' does not require leading dashes '--', updating to '{a[2:]}'.")
            a = a[2:]
        if a.endswith(","):
            LOGGER.warning(f"argument '{a}' does not require trailing comma ',', updating to '{a[:-1]}'.")
            a = a[:-1]
        if "=" in a:
            try:
                k, v = parse_key_value_pair(a)
            except AssertionError as e:  # 'key=' with no value
                raise SyntaxError(f"{e} in '{a}'. Run 'ghost help' for usage.") from e
            overrides[k] = v
        elif tasks and a in TASKS:
            if a not in GHOST_TASKS:
                raise SyntaxError(f"ghost-yolo models are detectors: task '{a}' is not available, only "
                                  f"{' or '.join(GHOST_TASKS)}")
            overrides["task"] = a
        elif isinstance(base.get(a), bool) or (tasks and a in BARE_FLAGS):
            overrides[a] = True
        elif a in base:
            example = f"{a}={base[a]}" if base[a] is not None else f"{a}=VALUE"
            raise SyntaxError(f"'{a}' is not a key=value pair: it needs a value, i.e. '{example}' "
                              "(only boolean keys stand alone). Run 'ghost help' for usage.")
        else:
            raise SyntaxError(f"'{a}' is not a key=value pair nor a boolean key.{similar(a, base)} "
                              "Run 'ghost help' for usage.")
    if tasks:
        overrides = _handle_deprecation(overrides)  # e.g. half -> quantize=16, with Ultralytics' warning
    check_keys(base, overrides)
    return overrides


class VerboseSetup:
    """Predictor mixin: the verbose model set-up (device, fused summary) that ``yolo predict`` prints.

    ``Model.predict`` sets the model up with ``verbose=is_cli`` and offers no argument for it; passing a predictor
    class with this mixin as ``predictor=`` keeps that default without touching ``sys.argv``.
    """

    def setup_model(self, model: Any, verbose: bool = True) -> None:
        """Set up the model verbosely, as under the ``yolo`` command."""
        super().setup_model(model, verbose=True)


class CLIPredictor(VerboseSetup, GhostPredictor):
    """``GhostPredictor`` as ``ghost predict`` runs it."""


class CLIOBBPredictor(VerboseSetup, GhostOBBPredictor):
    """``GhostOBBPredictor`` as ``ghost predict`` runs it."""


CLI_PREDICTORS = {"detect": CLIPredictor, "obb": CLIOBBPredictor}


def run(mode: str, overrides: dict[str, Any]) -> Any:
    """Carry out one mode with parsed overrides."""
    if mode == "convert-vedai":
        from ghost_yolo.data.vedai import convert_vedai

        if not overrides.get("source"):
            raise SyntaxError("convert-vedai needs source=path/to/VEDAI (the folder holding Vehicules512/ or 1024/)")
        args = {**CONVERT_KEYS, **overrides}
        return convert_vedai(args["source"], args["save_dir"], size=args["size"], copy_images=args["copy_images"],
                             exist_ok=args["exist_ok"], obb=args["obb"])
    if mode == "convert-dronevehicle":
        from ghost_yolo.data.dronevehicle import convert_dronevehicle

        if not overrides.get("source"):
            raise SyntaxError("convert-dronevehicle needs source=path/to/DroneVehicle (the folder holding train/, "
                              "val/, test/)")
        args = {**DRONEVEHICLE_KEYS, **overrides}
        return convert_dronevehicle(args["source"], args["save_dir"], labels=args["labels"], border=args["border"],
                                    copy_images=args["copy_images"], exist_ok=args["exist_ok"])

    from ghost_yolo import GhostYOLO

    model = overrides.pop("model", None)
    if mode in NEEDS_MODEL and not model:
        raise SyntaxError(f"'ghost {mode}' needs model=path/to/best.pt (or .onnx / .ghost / _openvino_model/ for "
                          "val/predict)")
    if mode == "predict" and overrides.get("source") is None:
        raise SyntaxError("'ghost predict' needs source=FOLDER (pairs by either convention), a_co.png, or two paths")
    source = overrides.pop("source", None) if mode == "predict" else None
    m = GhostYOLO(model or "ghost-n.yaml")
    if overrides.get("task") not in (None, m.task):
        raise ValueError(f"task={overrides['task']} does not fit {model or 'ghost-n.yaml'}, a {m.task} model: the task "
                         "comes from the model (ghost-n-obb.yaml and its checkpoints are obb models)")
    if mode in TOOL_KEYS:
        kw = {k: overrides[k] for k in TOOL_KEYS[mode] if k in overrides}
        return m.search(**kw) if mode == "search" else m.quant_info(**kw)
    if mode == "predict":
        # yolo's CLI defaults (save=True, verbose set-up) and its predict_cli: stream, keeping no results in memory
        predictor = CLI_PREDICTORS[m.task]
        for _ in m.predict(source=source, stream=True, predictor=predictor, **{**CLI_PREDICT, **overrides}):
            pass
        return None
    return getattr(m, mode)(**overrides)


def entrypoint(debug: str = "") -> int:
    """Console script ``ghost``; returns the exit status (errors print one clear line, no traceback)."""
    args = debug.split() if debug else sys.argv[1:]
    if len(args) > 1 and args[0] in TASKS:  # 'ghost detect train ...' as 'yolo detect train ...': the task word follows
        args = [*args[1:], args[0]]
    if not args or args[0] in {"help", "-h", "--help"}:
        LOGGER.info(HELP)
        return 0
    if args[0] in {"version", "--version"}:
        from ghost_yolo import __version__

        LOGGER.info(__version__)
        return 0
    mode, rest = args[0], args[1:]
    if mode not in MODES:
        close = get_close_matches(mode, MODES, n=1)
        LOGGER.error(f"ghost: unknown mode '{mode}'.{f' Did you mean {close[0]!r}?' if close else ''} "
                     f"Valid modes: {', '.join(MODES)}.")
        return 2
    if "help" in rest:
        LOGGER.info(mode_help(mode))
        return 0
    base = CONVERT_MODES.get(mode) or {**DEFAULT_CFG_DICT, **ghost_defaults()}
    with ghost_hints():  # Ultralytics' 'yolo <mode> ...' hints, errors included, print as 'ghost <mode> ...'
        try:
            overrides = parse_args(rest, base, tasks=mode not in CONVERT_MODES)
            run(mode, overrides)
        except (SyntaxError, ValueError, FileNotFoundError, FileExistsError, RuntimeError, TypeError,
                AssertionError, ModuleNotFoundError) as e:  # ModuleNotFoundError: an optional runtime, how to install
            if os.environ.get("GHOST_DEBUG") or (isinstance(e, AssertionError) and not str(e)):
                raise  # a bare assert is a bug, not a message for the user: keep its traceback
            LOGGER.error(f"ghost {mode}: error: {e}")
            return 2
    return 0


def main() -> None:
    """Entry point for ``python -m ghost_yolo``."""
    sys.exit(entrypoint())
