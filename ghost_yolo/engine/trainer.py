"""GhostTrainer / GhostOBBTrainer: Ultralytics' DetectionTrainer / OBBTrainer with paired data, ghost models and
both-modality plots.

Only hooks are overridden; the training loop, EMA, checkpoints, resume and DDP are Ultralytics' own. Later stages
(quantization, self-distillation) extend the model and the loss through the same hooks.
"""

from __future__ import annotations

import json
from typing import Any

import torch
from ultralytics.cfg import cfg2dict
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.obb import OBBTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK, YAML, colorstr, emojis
from ultralytics.utils.torch_utils import unwrap_model

from ghost_yolo.cfg import ghost_defaults
from ghost_yolo.data.check import apply_modality, build_dataset, check_task_labels, resolve_data
from ghost_yolo.distill import DistillRecipe
from ghost_yolo.models.model import GhostDetectionModel, GhostOBBModel
from ghost_yolo.quant import FakeQuantizer, QuantRecipe, QuantState, quant_state
from ghost_yolo.utils.allocator import reuse_freed_memory
from ghost_yolo.utils.plotting import plot_paired_images
from ghost_yolo.utils.threads import training_threads

from .phases import PHASE_CALLBACKS, start_act_anneal, start_quantized_phase
from .setup import setup_qat
from .summary import quant_report, summary_dict, summary_text, validate_float_self
from .validator import VOC07_KEY, GhostOBBValidator, GhostValidator


class GhostTrainer(DetectionTrainer):
    """Detection trainer for colour + infrared pairs (and plain single-modality data).

    Accepts ghost keys (``modality``, ``ir_jitter``, pairing names) next to Ultralytics' own, also when rebuilt by a DDP
    worker from ``DEFAULT_CFG_DICT`` and the pickled args.
    """

    model_class: type[GhostDetectionModel] = GhostDetectionModel  # what get_model builds (the task's model)
    validator_class: type[GhostValidator] = GhostValidator  # what get_validator returns

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None):
        """Merge ghost defaults under the given cfg so ghost keys pass Ultralytics' key check."""
        super().__init__({**ghost_defaults(), **cfg2dict(cfg)}, overrides, _callbacks)
        if self.device.type == "cpu":  # after Ultralytics' select_device, which leaves one core idle
            threads, why = training_threads(self.args.threads)
            torch.set_num_threads(threads)
            LOGGER.info(f"{colorstr('ghost:')} CPU training on {threads} thread{'s' * (threads > 1)} ({why})")

    def _do_train(self):
        """Ultralytics' training loop; on CPU, freed activation memory is kept for reuse (``utils.allocator``)."""
        with reuse_freed_memory(self.device.type == "cpu"):
            return super()._do_train()

    def get_dataset(self) -> dict[str, Any]:
        """Resolve shipped/generated data, run Ultralytics' checks, then settle modality and channels."""
        self.args.data = resolve_data(self.args.data)
        data = super().get_dataset()
        try:
            return apply_modality(data, self.args.modality, vars(self.args))
        except ValueError as e:
            raise RuntimeError(emojis(f"Dataset '{self.args.data}' error ❌ {e}")) from e

    def build_dataset(self, img_path: str, mode: str = "train", batch: int | None = None):
        """Paired dataset (or Ultralytics' own for plain data) with the model's stride."""
        gs = max(int(unwrap_model(self.model).stride.max()), 32)
        dataset = build_dataset(self.args, img_path, batch, self.data, mode=mode, rect=mode == "val", stride=gs)
        if mode == "train":
            check_task_labels(dataset, self.args.task)
        return dataset

    def get_model(self, cfg: str | dict | None = None, weights: Any = None, verbose: bool = True) -> GhostDetectionModel:
        """Ghost detection model with input channels that follow the data's modality, set up by the run's recipes."""
        model = self.model_class(cfg, nc=self.data["nc"], ch=self.data["channels"], verbose=verbose and RANK == -1)
        model = self.set_model_names_for_load(model)
        self.quant_recipe, self.distill_recipe = self.build_recipes(model, trained=bool(weights))
        setup_qat(model, None if self.args.resume else self.quant_recipe, self.distill_recipe, device=self.device,
                  bf16_teacher=None if self.args.amp not in (False, "fp32") else False,
                  resumed_teacher=self.wdir / "float_teacher.pt" if self.args.resume else None)
        if weights:  # after the distiller exists, so a resumed run restores its gate projections too
            model.load(weights)
        start_act_anneal(self, model)
        return model

    def build_recipes(self, model: GhostDetectionModel, trained: bool) -> tuple[QuantRecipe, DistillRecipe]:
        """Read the run's quantization and distillation once from its args, settle what depends on the run, and record
        what they resolved to in ``args`` (and ``args.yaml``), so the log, ``args.yaml`` and the checkpoint agree.

        ``bits`` empty means ``hq`` for a float model and the model's own widths for a quantized one; ``fp_epochs``
        empty means half the epochs in float when training from a YAML; ``kd=auto`` resolves by the evidence table
        (``distill.auto``). The HQ search itself runs when the quantized phase starts, on the weights the model has then.
        """
        self.trained_weights, self.float_metrics = trained, None
        quant = QuantRecipe.from_args(self.args)
        if quant.bits is None and not self.args.resume and quant_state(model) is not QuantState.ACTIVE:
            self.args.bits = "hq"  # the method by default (best_fp.pt is float: HQ)
            quant = QuantRecipe.from_args(self.args)
        if self.args.fp_epochs in (None, ""):  # float warm-up by default when training from scratch
            self.args.fp_epochs = 0 if trained or self.args.resume or quant.bits in (None, 32) else self.args.epochs // 2
        if not self.args.resume and quant.bits not in (None, 32) and int(self.args.fp_epochs or 0) >= self.args.epochs:
            raise ValueError(f"fp_epochs={self.args.fp_epochs} leaves no quantized epochs of epochs={self.args.epochs}")
        distill = DistillRecipe.from_args(self.args, quant, model)
        for k, v in distill.args().items():
            setattr(self.args, k, v)
        if distill.auto and RANK in {-1, 0}:
            verdict = f"kd=auto (candidates {distill.kd})" if distill.auto_pending else f"kd=auto -> {distill.kd}"
            LOGGER.info(f"{colorstr('ghost:')} {verdict}: {distill.auto}")
        if RANK in {-1, 0} and not self.args.resume:
            YAML.save(self.save_dir / "args.yaml", vars(self.args))  # what ran, as the checkpoint records it
        return quant, distill

    def build_optimizer(self, model, name="auto", lr=0.001, momentum=0.9, decay=1e-5, iterations=1e5):
        """Ultralytics' optimizer; quantizer step sizes go to the no-weight-decay group (decay would shrink them)."""
        optimizer = super().build_optimizer(model, name, lr, momentum, decay, iterations)
        qparams = {id(p) for m in unwrap_model(model).modules() if isinstance(m, FakeQuantizer) for p in m.parameters()}
        if qparams:
            no_decay = next((g for g in optimizer.param_groups if g.get("param_group") == "bn"), None)
            for g in optimizer.param_groups:
                if g.get("weight_decay", 0) > 0 and no_decay is not None:
                    moved = [p for p in g["params"] if id(p) in qparams]
                    g["params"] = [p for p in g["params"] if id(p) not in qparams]
                    no_decay["params"] += moved
        return optimizer

    def run_callbacks(self, event: str) -> None:
        """Ghost's quantized-phase callbacks (``engine.phases.PHASE_CALLBACKS``) first, then Ultralytics' and the user's.

        They live on the class, not in ``self.callbacks`` (a ``GhostYOLO``'s callback dict shared by its trainers), so
        each runs once per event however many trainers a model makes, and DDP workers run them too.
        """
        for callback in PHASE_CALLBACKS.get(event, ()):
            callback(self)
        super().run_callbacks(event)

    def start_quantized_phase(self) -> None:
        """Choose the widths (HQ search or as given), switch quantizers on, calibrate them, restart EMA
        (``engine.phases``)."""
        start_quantized_phase(self)

    def get_validator(self) -> GhostValidator:
        """Paired validator sharing this trainer's args (ghost keys included)."""
        return self.validator_class(self.test_loader, save_dir=self.save_dir, args=vars(self.args).copy(),
                                    _callbacks=self.callbacks)

    def plot_training_samples(self, batch: dict[str, Any], ni: int) -> None:
        """Training mosaics with colour and IR side by side."""
        plot_paired_images(batch, batch["img"], self.data["modality"], paths=batch["im_file"],
                           fname=self.save_dir / f"train_batch{ni}.jpg", on_plot=self.on_plot)

    def final_eval(self) -> None:
        """Ultralytics' final validation of best.pt, its float self (same weights, same epoch), then the summary."""
        super().final_eval()
        if RANK in {-1, 0} and self.best.exists() and self.metrics:
            self.float_self_metrics = validate_float_self(self)
            LOGGER.info(self.summary())
            (self.save_dir / "summary.json").write_text(json.dumps(summary_dict(self), indent=2))
            distiller = getattr(unwrap_model(self.model), "distiller", None)
            for term in distiller.terms.values() if distiller is not None and self.args.plots else ():
                if term.stats_file and (csv := self.save_dir / term.stats_file).exists():
                    term.plot_stats(csv, on_plot=self.on_plot)

    def quant_report(self) -> dict[str, Any] | None:
        """Float vs quantized figures of a quantized run (``engine.summary.quant_report``); None for float runs."""
        return quant_report(self)

    def summary(self) -> str:
        """The plain-text run summary printed at the end (``engine.summary.summary_text``)."""
        return summary_text(self)


class GhostOBBTrainer(GhostTrainer, OBBTrainer):
    """Oriented-box trainer: everything of ``GhostTrainer`` on ``task=obb`` (set by ``OBBTrainer``), building
    ``GhostOBBModel`` (Ultralytics' rotated loss) and validating with ``GhostOBBValidator``."""

    model_class = GhostOBBModel
    validator_class = GhostOBBValidator

    def _setup_train(self):
        """Ultralytics' set-up; the VOC07 column joins the metrics it starts from where the validator puts it, so
        results.csv keeps one column order whether or not every epoch validates (``val=False``)."""
        super()._setup_train()
        if getattr(self, "metrics", None) and VOC07_KEY not in self.metrics:
            keys = list(self.metrics)
            at = keys.index("metrics/mAP50-95(B)") + 1 if "metrics/mAP50-95(B)" in keys else len(keys)
            keys.insert(at, VOC07_KEY)
            self.metrics = {k: self.metrics.get(k, 0) for k in keys}
