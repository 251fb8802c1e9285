"""GhostYOLO: the Python API, an Ultralytics ``Model`` whose task map points at ghost-yolo's classes.

``GhostYOLO('ghost-n.yaml').train(data=...)``, ``GhostYOLO('runs/.../best.pt').val() / .predict() / .export()``
work like ``YOLO``; ghost keys (``modality``, ``ir_jitter``, pairing names) are accepted next to Ultralytics' own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path
from typing import Any

from torch import nn
from ultralytics.engine.model import Model
from ultralytics.nn.tasks import yaml_model_load
from ultralytics.utils import LOGGER, colorstr

from ghost_yolo.cfg import resolve_yaml, shipped_models, split_ghost_args
from ghost_yolo.data.io import modality_for_channels
from ghost_yolo.models.model import GhostDetectionModel, GhostOBBModel

from .predictor import GhostOBBPredictor, GhostPredictor
from .trainer import GhostOBBTrainer, GhostTrainer
from .validator import GhostOBBValidator, GhostValidator

# What bare `ghost train` runs: the GHOST pipeline (float warm-up, HQ search, QAT; distillation as kd=auto decides) on
# the built-in synthetic set, sized to finish in under 10 minutes on 2 CPU cores without native bf16 (README: Results).
# fp_epochs only applies with the demo's own epochs (with epochs=N it is the default, N // 2).
DEMO_ARGS = {"data": "vedai-synth.yaml", "imgsz": 256, "epochs": 12, "fp_epochs": 8, "batch": 16, "warmup_epochs": 1,
             "close_mosaic": 3}
# An OBB model's demo (`ghost train model=ghost-n-obb.yaml`): the same recipe on the oriented synthetic set
DEMO_DATA = {"detect": "vedai-synth.yaml", "obb": "vedai-synth-obb.yaml"}


def finished_epochs(run: Path) -> int | None:
    """The last epoch a run's ``results.csv`` records (early stopping ends before ``epochs``), or None without one."""
    import csv

    try:
        with open(run / "results.csv", newline="") as f:
            rows = [{k.strip(): v for k, v in r.items()} for r in csv.DictReader(f)]
        return int(float(rows[-1]["epoch"]))
    except (OSError, IndexError, KeyError, ValueError):
        return None


def check_resumable(ckpt: dict | None, path: str | Path | None) -> None:
    """Refuse ``resume`` of what cannot continue, with what to do instead.

    Ultralytics warns that such a checkpoint is not resumable and starts a new run (on its default data, coco8, which
    ghost does not ship); a finished run's ``last.pt`` has its optimizer stripped and ``epoch=-1``, so it is one.

    Args:
        ckpt: The loaded checkpoint dict (None: read it from ``path``).
        path: The checkpoint to resume (``model=`` or ``resume=``).
    """
    if ckpt is None:
        if not path or Path(str(path)).suffix != ".pt":
            raise ValueError(f"resume continues an interrupted run from its last checkpoint: pass "
                             f"model=runs/detect/<run>/weights/last.pt, not {path or 'nothing'}")
        if not Path(str(path)).is_file():
            raise FileNotFoundError(f"resume: no checkpoint {path}")
        from ultralytics.utils.patches import torch_load

        ckpt = torch_load(str(path), map_location="cpu")
    if isinstance(ckpt, dict) and ckpt.get("epoch", -1) >= 0 and ckpt.get("optimizer") is not None:
        return
    args = (ckpt.get("train_args") or {}) if isinstance(ckpt, dict) else {}
    data = f" data={args['data']}" if args.get("data") else " data=your.yaml"
    restart = f"to train its weights further, start a new run: ghost train model={path}{data} epochs=N"
    if "epochs" not in args:
        raise ValueError(f"{path} is not the checkpoint of an interrupted training run (no epoch or optimizer state), "
                         f"so there is nothing to resume; {restart}")
    done = finished_epochs(Path(str(path)).parent.parent)
    at = f"at epoch {done} (of {args['epochs']})" if done else f"(epochs={args['epochs']})"
    raise ValueError(f"{path}: this run finished {at}, there is nothing to resume; {restart}")


class GhostYOLO(Model):
    """Ultralytics-style model for multimodal (RGB + IR) remote sensing detection.

    Args:
        model (str | Path): Model YAML (path or shipped name such as ``ghost-n.yaml``), ``.pt`` checkpoint, ``.onnx``,
            ``.ghost`` or an ``_openvino_model/`` folder.
        task (str | None): ``detect`` or ``obb``; None (default): from the model, as Ultralytics does (an ``OBB`` head
            in the YAML or checkpoint means ``obb``).
        verbose (bool): Print the model summary when building from a YAML.
    """

    def __init__(self, model: str | Path = "ghost-n.yaml", task: str | None = None, verbose: bool = False) -> None:
        """Resolve shipped YAML names, then initialise like ``YOLO``."""
        model = str(model)
        if Path(model).suffix in {".yaml", ".yml"} or not Path(model).suffix:
            resolved = resolve_yaml(model, "models")
            if not Path(resolved).is_file() and Path(model).suffix:
                try:  # Ultralytics' own model YAMLs (yolo11n.yaml, ...) build as ghost models too
                    yaml_model_load(model)
                except Exception as e:
                    raise FileNotFoundError(f"model YAML '{model}' not found (shipped: {shipped_models()}; or "
                                            "Ultralytics' such as yolo11n.yaml)") from e
            model = resolved if Path(resolved).is_file() else model
        elif not Path(model).exists():
            raise FileNotFoundError(f"model '{model}' not found")
        super().__init__(model=model, task=task, verbose=verbose)

    def _load(self, weights: str, task: str | None = None) -> None:
        """Load ``.pt``/``.onnx``/``_openvino_model/`` like Ultralytics (an OpenVINO folder only with the metadata that
        says its input channels), and packed ``.ghost`` checkpoints into an equivalent fused model."""
        from ghost_yolo.export.openvino import (ghost_openvino_backend, is_openvino_model, openvino_metadata,
                                                require_openvino)

        if is_openvino_model(weights):
            openvino_metadata(weights)
            require_openvino()
            ghost_openvino_backend()  # integer exports: the float layers in f32 (not bf16) for val and predict
        if Path(weights).suffix.lower() != ".ghost":
            super()._load(weights, task)
            self._task_from_head(task)
            return None
        from ghost_yolo.export.packed import load_packed

        self.model = load_packed(weights)
        self.ckpt = None
        self.task = self.model.task
        self.overrides = self.model.args = self._reset_ckpt_args(self.model.args)
        self.overrides.update(model=str(weights), task=self.task)
        self.ckpt_path = self.model_name = str(weights)

    def _task_from_head(self, task: str | None) -> None:
        """A checkpoint whose train_args lack ``task`` loads as detect in Ultralytics whatever its head (its guess
        reads the args first): take the task from the head, as for a YAML, unless the user named one."""
        from ultralytics.nn.modules import OBB

        if task or not isinstance(self.model, nn.Module):
            return
        head = "obb" if any(isinstance(m, OBB) for m in self.model.modules()) else self.task
        if head != self.task:
            self.task = self.model.task = self.overrides["task"] = head
            if isinstance(getattr(self.model, "args", None), dict):
                self.model.args["task"] = head

    @property
    def task_map(self) -> dict[str, dict[str, Any]]:
        """Ghost classes of the detect and obb tasks."""
        return {
            "detect": {
                "model": GhostDetectionModel,
                "trainer": GhostTrainer,
                "validator": GhostValidator,
                "predictor": GhostPredictor,
            },
            "obb": {
                "model": GhostOBBModel,
                "trainer": GhostOBBTrainer,
                "validator": GhostOBBValidator,
                "predictor": GhostOBBPredictor,
            },
        }

    @property
    def channels(self) -> int | None:
        """Input channels of the loaded model: from the PyTorch model, the ONNX metadata or OpenVINO's metadata.yaml."""
        from ghost_yolo.export.openvino import is_openvino_model, openvino_metadata

        if isinstance(self.model, nn.Module):
            return int(self.model.yaml.get("channels", 3))
        if is_openvino_model(self.model):
            return int(openvino_metadata(self.model)["channels"])
        if str(self.model).endswith(".onnx"):
            import onnx

            meta = {p.key: p.value for p in onnx.load(str(self.model), load_external_data=False).metadata_props}
            return int(meta["channels"]) if "channels" in meta else None
        return None

    def train(self, trainer: Any = None, **kwargs: Any):
        """Train; with no ``data`` (and no resume) this is the demo run on vedai-synth, or vedai-synth-obb for an OBB
        model (see ``DEMO_ARGS``, ``DEMO_DATA``)."""
        if str(self.ckpt_path or "").endswith(".ghost"):
            raise ValueError(f"{self.ckpt_path} is a packed inference model (BatchNorm folded, weights frozen on their "
                             "grids): val, predict and export it, and train from the .pt checkpoint it came from")
        if (resume := kwargs.get("resume")) is True:  # not resumable: Ultralytics would start a new run on coco8
            check_resumable(self.ckpt or None, self.ckpt_path or self.model_name)
        elif resume:
            check_resumable(None, resume)
        if kwargs.get("drop_modality") not in (None, ""):  # validation during training would drop it: best.pt too
            raise ValueError(f"drop_modality={kwargs['drop_modality']} is a val/predict key (evaluate a trained rgb+ir "
                             "model as if that sensor were missing), not a training key: to train a model that keeps "
                             "working when a sensor fails use modality_dropout=0.3 (a training sample loses a band at "
                             "that rate), to train on one band use modality=rgb or modality=ir")
        if kwargs.get("folds") not in (None, ""):  # the k-fold protocol: one run per fold (engine/folds.py)
            from .folds import train_folds

            return train_folds(self, **kwargs)
        if not kwargs.get("data") and not kwargs.get("resume") and not kwargs.get("cfg"):
            data = self.overrides.get("data")
            if data and isinstance(self.model, nn.Module) and getattr(self, "ckpt", None):
                kwargs["data"] = data  # fine-tuning a checkpoint: keep its data
            else:
                demo = {**DEMO_ARGS, "data": DEMO_DATA.get(self.task, DEMO_ARGS["data"])}
                defaults = {k: v for k, v in demo.items() if k not in kwargs
                            and not (k == "fp_epochs" and "epochs" in kwargs)}
                LOGGER.info(f"{colorstr('ghost:')} no data given, training the demo on {Path(demo['data']).stem} with "
                            f"{defaults}. Pass data=your.yaml for your own data.")
                kwargs = {**defaults, **kwargs}
        return super().train(trainer=trainer, **kwargs)

    def val(self, validator: Any = None, **kwargs: Any):
        """Validate on paired data in the model's own modality; ``as_float=True``: the co-trained float self."""
        if not isinstance(self.model, nn.Module) and not kwargs.get("data") and not self.overrides.get("data"):
            raise ValueError(f"validating {self.model} needs data=your.yaml: an exported model does not carry the data "
                             "it was trained on (its export printed the full 'ghost val ... data=...' command)")
        if not kwargs.get("modality") and (ch := self.channels):
            kwargs["modality"] = modality_for_channels(ch)
        with self._which_model(kwargs.pop("as_float", False), "evaluating"):
            return super().val(validator=validator, **kwargs)

    def predict(self, source: Any = None, stream: bool = False, predictor: Any = None, **kwargs: Any):
        """Predict on pairs (folders, ``a_co.png``, two paths), arrays or plain images; ``as_float=True``: the
        co-trained float self."""
        as_float = kwargs.pop("as_float", False)
        if split_ghost_args(kwargs)[1] or as_float:
            self.predictor = None  # ghost keys are set up at construction: rebuild the predictor
        with self._which_model(as_float, "predicting with", quiet=True):
            out = super().predict(source=source, stream=stream, predictor=predictor, **kwargs)
        if as_float:
            self.predictor = None  # the next call sets up the quantized model again
        return out

    @contextmanager
    def _which_model(self, as_float: bool, verb: str, quiet: bool = False) -> Iterator[None]:
        """Inside the block ``self.model`` is the float self (``as_float``) or stays the quantized model; logs which."""
        if not isinstance(self.model, nn.Module):
            if as_float:
                raise ValueError(f"as_float=True needs a PyTorch checkpoint (.pt) with a co-trained float self, not "
                                 f"{self.model}: an exported file holds only the model it was exported as")
            yield
            return
        from ghost_yolo.quant import QuantState, average_bits, quant_state, to_float_self

        name = getattr(self.model, "pt_path", None) or self.ckpt_path or self.model_name
        if not as_float:
            if quant_state(self.model) is QuantState.ACTIVE and not quiet:
                LOGGER.info(f"{colorstr('ghost:')} {verb} the quantized model {name} ({average_bits(self.model):.2f} "
                            "average weight bits; as_float=True for its float self)")
            yield
            return
        quantized = self.model
        float_self = to_float_self(deepcopy(quantized))  # raises a clear error for models without one
        if name:  # exports land next to the checkpoint as <name>_float.*, not over the quantized model's
            float_self.pt_path = str(Path(name).with_name(f"{Path(name).stem}_float.pt"))
        LOGGER.info(f"{colorstr('ghost:')} {verb} the float self of {name} (quantizers bypassed, its own BatchNorm)")
        self.model = float_self
        try:
            yield
        finally:
            self.model = quantized

    def search(self, save: bool = True, project: str | None = None, name: str | None = None, exist_ok: bool = False,
               plots: bool = True, **kwargs: Any) -> dict[str, int]:
        """HQ bit-width search on this model's weights without training: prints the table, saves bits.yaml/bits.png.

        The search's keys (``hq_threshold``, ``bit_min``, ``bit_max``, ``keep_first``, ``keep_head``) come in
        ``kwargs``, cfg/default.yaml's values where not given. Returns ``{layer: bits}``; pass the saved YAML as
        ``bits=path/bits.yaml`` to train with exactly these widths.
        """
        from ghost_yolo.quant import QuantRecipe, bits_table, plot_bits, save_bit_map

        self._check_is_pytorch_model()
        recipe = QuantRecipe.from_args(kwargs, bits="hq")
        if not getattr(self, "ckpt", None):
            LOGGER.warning("searching bits on a model with no trained weights (built from a YAML): the k-means "
                           "distortion of random initialisation says nothing about the trained model")
        bits, dist = recipe.widths(self.model, progress=True)
        LOGGER.info(bits_table(self.model, bits, dist, recipe.hq_threshold))
        if save:
            save_dir = self._save_dir("search", project, name, exist_ok)
            save_bit_map(bits, save_dir / "bits.yaml", model=self.ckpt_path or self.model_name,
                         hq_threshold=recipe.hq_threshold, bit_min=recipe.bit_min, bit_max=recipe.bit_max)
            if plots:
                plot_bits(bits, save_dir / "bits.png", title=f"HQ bits per layer (hq_threshold={recipe.hq_threshold})")
            LOGGER.info(f"{colorstr('ghost:')} bit map saved to {save_dir / 'bits.yaml'} "
                        f"(train with bits={save_dir / 'bits.yaml'})")
        return bits

    def quant_info(self, imgsz: int | list[int] = 640, bits: Any = None, save: bool = True, verbose: bool = True,
                   project: str | None = None, name: str | None = None, exist_ok: bool = False, **kwargs: Any):
        """Per-layer size and BOPs (the GHOST paper's counting) as a pandas DataFrame; totals in ``df.attrs['totals']``.

        ``bits`` counts the model as if it had those widths (a width, 'hq', a list or a bit map; the search's keys in
        ``kwargs``), without changing it.
        """
        from ghost_yolo.quant import QuantRecipe, format_costs, layer_costs, quant_layers, quantize_model

        self._check_is_pytorch_model()
        imgsz = tuple(imgsz) if isinstance(imgsz, (list, tuple)) else int(imgsz)
        widths = None
        recipe = QuantRecipe.from_args(kwargs, bits=bits)
        if recipe.bits is not None:
            probe = self.model if quant_layers(self.model) else quantize_model(deepcopy(self.model), enabled=False)
            widths = recipe.widths(probe)[0]
        df = layer_costs(self.model, imgsz, bits=widths)
        if verbose:
            LOGGER.info(format_costs(df))
        if save:
            save_dir = self._save_dir("info", project, name, exist_ok)
            df.to_csv(save_dir / "layers.csv", index=False)
            LOGGER.info(f"{colorstr('ghost:')} per-layer table saved to {save_dir / 'layers.csv'}")
        return df

    def _save_dir(self, mode: str, project: str | None, name: str | None, exist_ok: bool) -> Path:
        """A run directory like Ultralytics' (runs/detect/<mode>, incremented), created."""
        from types import SimpleNamespace

        from ultralytics.cfg import get_save_dir

        d = get_save_dir(SimpleNamespace(project=project, name=name or mode, exist_ok=exist_ok, task=self.task or "detect",
                                         mode=mode))
        d.mkdir(parents=True, exist_ok=True)
        return d

    def export(self, **kwargs: Any) -> str:
        """Export like ``YOLO.export``; quantized models give integer ONNX (``int4``, ``calib``), OpenVINO IR converted
        from it (``format=openvino``) or ``format=ghost``.

        ``format=ghost`` writes the packed checkpoint (weights bit-packed at their own widths), loadable with
        ``GhostYOLO('model.ghost')``. Other formats of a quantized model are refused with the reason; every route is
        decided in ``export.exporter.export_model``.
        """
        from ghost_yolo.export.exporter import export_model

        self._check_is_pytorch_model()
        as_float = kwargs.pop("as_float", False)
        with self._which_model(as_float, "exporting"):
            source = Path(getattr(self.model, "pt_path", None) or self.ckpt_path or self.model_name or "model.pt")
            return export_model(self.model, kwargs, self.overrides, source, callbacks=self.callbacks)
