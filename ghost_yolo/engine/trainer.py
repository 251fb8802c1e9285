"""GhostTrainer: Ultralytics' DetectionTrainer with paired data, ghost models and both-modality plots.

Only hooks are overridden; the training loop, EMA, checkpoints, resume and DDP are Ultralytics' own. Later stages
(quantization, self-distillation) extend the model and the loss through the same hooks.
"""

from __future__ import annotations

import json
from typing import Any

from ultralytics.cfg import cfg2dict
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK, emojis
from ultralytics.utils.torch_utils import unwrap_model

from ghost_yolo.cfg import ghost_defaults
from ghost_yolo.data.check import apply_modality, build_dataset, resolve_data
from ghost_yolo.distill import (
    AUTO_KD,
    AUTO_KD_WITH_TEACHER,
    FLOAT_SELF_MODES,
    Distiller,
    feature_channels,
    load_teacher,
    parse_kd,
    parse_kd_layers,
)
from ghost_yolo.models.model import GhostDetectionModel
from ghost_yolo.quant import (
    FakeQuantizer,
    add_float_self,
    check_search_args,
    is_quantized,
    parse_bits,
    quant_layers,
    quantize_model,
    resolve_bits,
    set_bits,
)
from ghost_yolo.quant.config import quant_enabled
from ghost_yolo.utils.allocator import reuse_freed_memory
from ghost_yolo.utils.plotting import plot_gates, plot_paired_images

from .phases import PHASE_CALLBACKS, start_quantized_phase
from .summary import quant_report, summary_dict, summary_text, validate_float_self
from .validator import GhostValidator


class GhostTrainer(DetectionTrainer):
    """Detection trainer for colour + infrared pairs (and plain single-modality data).

    Accepts ghost keys (``modality``, ``ir_jitter``, pairing names) next to Ultralytics' own, also when rebuilt by a DDP
    worker from ``DEFAULT_CFG_DICT`` and the pickled args.
    """

    def __init__(self, cfg: Any = DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None):
        """Merge ghost defaults under the given cfg so ghost keys pass Ultralytics' key check."""
        super().__init__({**ghost_defaults(), **cfg2dict(cfg)}, overrides, _callbacks)

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
        return build_dataset(self.args, img_path, batch, self.data, mode=mode, rect=mode == "val", stride=gs)

    def get_model(self, cfg: str | dict | None = None, weights: Any = None, verbose: bool = True) -> GhostDetectionModel:
        """Ghost detection model with input channels that follow the data's modality, prepared for quantization."""
        model = GhostDetectionModel(cfg, nc=self.data["nc"], ch=self.data["channels"], verbose=verbose and RANK == -1)
        model = self.set_model_names_for_load(model)
        self.prepare_quantization(model, trained=bool(weights))
        self.prepare_distillation(model)
        if weights:  # after the distiller exists, so a resumed run restores its gate projections too
            model.load(weights)
        return model

    # Quantization -----------------------------------------------------------------------------------------------------
    def prepare_quantization(self, model: GhostDetectionModel, trained: bool) -> None:
        """Insert quantized convs (switched off) when ``bits`` asks for them; widths are chosen at the quantized start.

        The quantizer parameters exist from the start so the optimizer holds them; ``bits=N``, lists and bit maps are
        checked here, before any training, and the HQ search runs when the quantized phase starts (after ``fp_epochs``
        float epochs, or at once), on the weights the model has then.
        """
        spec = parse_bits(self.args.bits)
        self.trained_weights, self.float_metrics = trained, None
        if spec is None and not self.args.resume:  # the method by default: HQ widths, unless already quantized
            spec = None if quant_enabled(model) else "hq"  # (best_fp.pt is float: HQ)
            self.args.bits = spec
        if self.args.fp_epochs in (None, ""):  # float warm-up by default when training from scratch
            self.args.fp_epochs = 0 if trained or self.args.resume or spec in (None, 32) else self.args.epochs // 2
        self.quant_spec = spec
        if self.args.resume or spec is None or (spec == 32 and not quant_layers(model)):
            return  # resume rebuilds the quantized model from its checkpoint; float runs stay float
        if spec == "hq":
            check_search_args(self.args.hq_threshold, self.args.bit_min, self.args.bit_max)
        if int(self.args.fp_epochs or 0) >= self.args.epochs:
            raise ValueError(f"fp_epochs={self.args.fp_epochs} leaves no quantized epochs of epochs={self.args.epochs}")
        quantize_model(model, bits=8, quantizer=self.args.quantizer, keep_first=self.args.keep_first,
                       keep_head=self.args.keep_head, enabled=False, out_quant=bool(self.args.out_quant))
        if spec != "hq":
            set_bits(model, resolve_bits(spec, model, keep_first=self.args.keep_first, keep_head=self.args.keep_head))

    def prepare_distillation(self, model: GhostDetectionModel) -> None:
        """Attach the distiller (``kd=``; ``kd=auto``: ``AUTO_KD`` for quantized runs, ``AUTO_KD_WITH_TEACHER`` when
        ``teacher=`` is given) with its losses and teacher.

        The teacher is the model's own float self (``float_self=frozen``: as the quantized phase starts, frozen;
        ``cotrain``: with its own BatchNorm set, trained every step; ``shared``: the student's BatchNorm, no gradient)
        unless ``teacher=path.pt`` names a frozen float model of the same architecture. Distillation runs in the quantized phase only; its loss columns exist from the start.
        """
        names = parse_kd(self.args.kd)
        quantized = is_quantized(model) or self.quant_spec == "hq"
        teacher = str(self.args.teacher or "") or None
        if names == ["auto"]:
            names = parse_kd(AUTO_KD_WITH_TEACHER if teacher else AUTO_KD) if quantized or teacher else []
        if not names and teacher:
            raise ValueError(f"teacher={teacher} is only used for distillation, but kd=none: drop teacher= or pass "
                             "kd=ost (or another loss)")
        if names and not quantized:
            LOGGER.warning(f"kd={'+'.join(names)}{f' teacher={teacher}' if teacher else ''} on a float run (bits=32): "
                           "the float model has nothing to learn from its float self; distillation is off")
        float_self = str(self.args.float_self or ghost_defaults()["float_self"]).strip().lower()
        if float_self not in FLOAT_SELF_MODES:
            raise ValueError(f"float_self={self.args.float_self} is not a teacher mode: use "
                             f"{', '.join(FLOAT_SELF_MODES[:-1])} or {FLOAT_SELF_MODES[-1]}")
        if not names or not quantized:
            self.args.kd = "none"
            return
        if self.args.compile:
            raise ValueError(f"compile=True cannot be used with kd={'+'.join(names)}: compiled training computes the "
                             "loss from a separate forward, where the teacher pass and the distilled features are not "
                             "captured. Pass compile=False or kd=none")
        layers = parse_kd_layers(self.args.kd_layers, model)
        args = {**vars(self.args), "float_self": float_self,
                "bf16_teacher": None if self.args.amp not in (False, "fp32") else False}
        distiller = Distiller.from_spec(model, names, layers, feature_channels(model, layers), args)
        resumed_teacher = self.wdir / "float_teacher.pt"
        if not teacher and float_self == "frozen" and self.args.resume and resumed_teacher.exists():
            teacher = str(resumed_teacher)  # the frozen float self of the run being resumed
        if teacher:
            distiller.teacher = load_teacher(teacher, model, distiller.layers or layers, device=self.device,
                                             head=distiller.needs_head)
            distiller.teacher.own = teacher == str(resumed_teacher)
        elif float_self == "cotrain":
            add_float_self(model)  # before the optimizer is built: its float BatchNorm set trains from the start
        model.distiller = distiller
        self.args.kd, self.args.float_self = "+".join(names), float_self

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
        return GhostValidator(self.test_loader, save_dir=self.save_dir, args=vars(self.args).copy(), _callbacks=self.callbacks)

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
            if self.args.plots and (self.save_dir / "gates.csv").exists():
                plot_gates(self.save_dir / "gates.csv", self.save_dir / "gates.png", on_plot=self.on_plot)

    def quant_report(self) -> dict[str, Any] | None:
        """Float vs quantized figures of a quantized run (``engine.summary.quant_report``); None for float runs."""
        return quant_report(self)

    def summary(self) -> str:
        """The plain-text run summary printed at the end (``engine.summary.summary_text``)."""
        return summary_text(self)
