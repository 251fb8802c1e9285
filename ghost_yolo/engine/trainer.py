"""GhostTrainer: Ultralytics' DetectionTrainer with paired data, ghost models and both-modality plots.

Only hooks are overridden; the training loop, EMA, checkpoints, resume and DDP are Ultralytics' own. Later stages
(quantization, self-distillation) extend the model and the loss through the same hooks.
"""

from __future__ import annotations

import json
import shutil
from copy import deepcopy
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from ultralytics.cfg import cfg2dict
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.utils import DEFAULT_CFG, LOGGER, RANK, colorstr, emojis
from ultralytics.utils.torch_utils import ModelEMA, unwrap_model

from ghost_yolo.cfg import ghost_defaults
from ghost_yolo.data.check import apply_modality, build_dataset, resolve_data
from ghost_yolo.distill import (
    AUTO_KD,
    AUTO_KD_WITH_TEACHER,
    ExternalTeacher,
    FLOAT_SELF_MODES,
    Distiller,
    feature_channels,
    load_teacher,
    parse_kd,
    parse_kd_layers,
)
from ghost_yolo.nn.model import GhostDetectionModel
from ghost_yolo.nn.switch_bn import has_float_bn, sync_float_bn
from ghost_yolo.quant import (
    FakeQuantizer,
    add_float_self,
    average_bits,
    bits_table,
    calibrate,
    check_search_args,
    hq_plan,
    is_quantized,
    layer_costs,
    output_quantizers,
    parse_bits,
    plot_bits,
    quant_layers,
    quantize_model,
    resolve_bits,
    save_bit_map,
    set_bits,
    set_quant_enabled,
    to_float_self,
)
from ghost_yolo.utils.allocator import reuse_freed_memory
from ghost_yolo.utils.plotting import plot_gates, plot_paired_images

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
            spec = None if model.yaml.get("quant", {}).get("enabled") else "hq"  # (best_fp.pt is float: HQ)
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
        """Start the quantized phase at the right moment (these hooks are methods, so DDP workers carry them too)."""
        fp_epochs = int(self.args.fp_epochs or 0)
        at_setup = event == "on_pretrain_routine_end" and not self.args.resume and not fp_epochs
        after_float = event == "on_train_epoch_start" and fp_epochs and self.epoch == fp_epochs
        if at_setup or after_float:
            self.start_quantized_phase()
        if event in {"on_train_epoch_start", "on_train_batch_start"}:
            self.advance_kd_schedule(event)
        if event == "on_train_epoch_end":
            self.log_gates()
        super().run_callbacks(event)

    def advance_kd_schedule(self, event: str) -> None:
        """Tell the distiller how far into the quantized phase this batch is (its weight schedule reads it)."""
        distiller = getattr(unwrap_model(self.model), "distiller", None)
        if distiller is None:
            return
        if event == "on_train_epoch_start":
            self._kd_batch = 0
            return
        fp_epochs, nb = int(self.args.fp_epochs or 0), max(len(self.train_loader), 1)
        q_epochs = max(self.epochs - fp_epochs, 1)
        distiller.progress = (self.epoch - fp_epochs + getattr(self, "_kd_batch", 0) / nb) / q_epochs
        self._kd_batch = getattr(self, "_kd_batch", 0) + 1

    def start_quantized_phase(self) -> None:
        """Choose the widths (HQ search or as given), switch quantizers on, calibrate them on a batch, restart EMA."""
        model = unwrap_model(self.model)
        layers = quant_layers(model)
        if not layers or model.yaml.get("quant", {}).get("enabled"):
            return
        self.epoch = epoch = getattr(self, "epoch", self.start_epoch)
        if epoch > 0 and self.ema:  # continue from the averaged float weights that validation measured
            model.load_state_dict(self.ema.ema.state_dict(), strict=False)
            self.float_metrics = {k: v for k, v in self.metrics.items() if k.startswith("metrics/")}
            if RANK in {-1, 0} and self.best.exists():
                shutil.copy(self.best, self.wdir / "best_fp.pt")
        elif self.trained_weights and RANK in {-1, 0} and self.args.val:
            # the float model we start from, for the float-vs-quantized summary (standalone: no training step yet)
            validator = self.get_validator()
            validator.args.plots = False
            metrics = validator(model=deepcopy(model).float())
            self.float_metrics = {k: v for k, v in (metrics or {}).items() if k.startswith("metrics/")}
        if self.quant_spec == "hq":
            if not self.trained_weights and epoch == 0:
                LOGGER.warning("bits=hq on randomly initialised weights: the search measures nothing meaningful. Pass "
                               "trained weights (model=best.pt) or fp_epochs=N to train in float first.")
            bits, distortions = hq_plan(model, self.args.hq_threshold, self.args.bit_min, self.args.bit_max,
                                        self.args.keep_first, self.args.keep_head, progress=RANK in {-1, 0})
            set_bits(model, bits)
        else:
            distortions = None
        bits = {n: m.bits for n, m in layers.items()}
        sync_float_bn(model)  # a co-trained float self starts from the float model's BatchNorm
        self.freeze_float_self(model)
        set_quant_enabled(model, True)
        batch = self.preprocess_batch(next(iter(self.train_loader)))
        calibrate(model, batch["img"])
        if self.world_size > 1 and dist.is_available() and dist.is_initialized():  # ranks calibrated on their own batch
            outs = [m.quant for m in output_quantizers(model).values()]
            for q in [*(q for m in layers.values() for q in (m.weight_quant, m.input_quant)), *outs]:
                for t in (*q.parameters(), *q.buffers()):
                    if t.is_floating_point():
                        dist.broadcast(t.data, src=0)
        self.ema = ModelEMA(self.model)
        self.best_fitness = None
        self.stopper.best_fitness, self.stopper.best_epoch = 0.0, epoch
        if RANK in {-1, 0}:
            LOGGER.info(f"{colorstr('ghost:')} quantized phase from epoch {epoch + 1} ({self.args.quantizer}, "
                        f"average weight bits {average_bits(model):.2f}):\n"
                        + bits_table(model, bits, distortions, self.args.hq_threshold))
            save_bit_map(bits, self.save_dir / "bits.yaml", quantizer=self.args.quantizer, source=self.args.bits,
                         hq_threshold=self.args.hq_threshold)
            if self.args.plots:
                plot_bits(bits, self.save_dir / "bits.png", title=f"bits per layer ({self.args.bits})")

    def freeze_float_self(self, model: GhostDetectionModel) -> None:
        """``float_self=frozen``: the float model as the quantized phase starts becomes the frozen teacher; it is saved
        as ``weights/float_teacher.pt`` so that ``resume=True`` teaches with the same model."""
        distiller = getattr(model, "distiller", None)
        if distiller is None or distiller.float_self != "frozen" or distiller.teacher:
            return
        snapshot = deepcopy(model)
        del snapshot.distiller
        set_quant_enabled(snapshot, False)
        path = self.wdir / "float_teacher.pt"
        if RANK in {-1, 0}:
            self.wdir.mkdir(parents=True, exist_ok=True)
            torch.save({"model": deepcopy(snapshot).half(), "train_args": {}, "epoch": -1}, path)
        distiller.teacher = ExternalTeacher(snapshot, str(path))

    def log_gates(self) -> None:
        """Log the SCM gates' open fraction per distilled layer for this epoch and append it to ``gates.csv``."""
        distiller = getattr(unwrap_model(self.model), "distiller", None)
        fractions = distiller.epoch_stats().get("ost") if distiller is not None else None
        if fractions is None or RANK not in {-1, 0}:
            return
        csv = self.save_dir / "gates.csv"
        if not csv.exists():
            csv.write_text("epoch," + ",".join(f"layer{i}" for i in fractions) + "\n")
        with csv.open("a") as f:
            f.write(f"{self.epoch + 1}," + ",".join(f"{v:.4f}" for v in fractions.values()) + "\n")
        LOGGER.info(f"{colorstr('ghost:')} OST gate open fraction by layer: "
                    + " ".join(f"{i}:{v:.2f}" for i, v in fractions.items()))

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
            self.float_self_metrics = self.validate_float_self()
            LOGGER.info(self.summary())
            (self.save_dir / "summary.json").write_text(json.dumps(self.summary_dict(), indent=2))
            if self.args.plots and (self.save_dir / "gates.csv").exists():
                plot_gates(self.save_dir / "gates.csv", self.save_dir / "gates.png", on_plot=self.on_plot)

    def validate_float_self(self) -> dict[str, Any] | None:
        """mAP of best.pt's float self: its co-trained float BatchNorm set if it has one, else the latent weights in
        float mode with the quantized path's BatchNorm (what a shared-BN self-teacher is). None for float runs."""
        from ultralytics.nn.tasks import load_checkpoint

        if not self.args.val or not unwrap_model(self.model).yaml.get("quant", {}).get("enabled"):
            return None
        model, _ = load_checkpoint(self.best, device=self.device)
        own = has_float_bn(model)
        if own:
            to_float_self(model)
        else:
            set_quant_enabled(model, False)
        LOGGER.info(f"\nValidating the float self of {self.best} ({'its own' if own else 'the shared'} BatchNorm)...")
        validator = self.get_validator()
        validator.args.plots = validator.args.save_json = False
        metrics = validator(model=model.float())
        return {"mAP50": metrics.get("metrics/mAP50(B)"), "mAP50-95": metrics.get("metrics/mAP50-95(B)"),
                "batchnorm": "own" if own else "shared", "epoch": int(self.stopper.best_epoch)}

    def quant_report(self) -> dict[str, Any] | None:
        """Float vs quantized figures of a quantized run: mAP50, mAP50-95 (val), size MB and GBOPs at ``imgsz``.

        ``quantized`` and ``float_self`` are best.pt and its float self (the same weights and epoch); ``float_start``
        is the float model the quantized phase started from (the float phase's last epoch, or the given weights).
        """
        model = unwrap_model(self.model)
        if not quant_layers(model) or not model.yaml.get("quant", {}).get("enabled"):
            return None
        costs = layer_costs(model, self.args.imgsz).attrs["totals"]
        fm, qm = self.float_metrics or {}, self.metrics or {}
        fs = getattr(self, "float_self_metrics", None) or {}
        return {
            "quantizer": self.args.quantizer,
            "bits": self.args.bits,
            "avg_w_bits": round(costs["avg_w_bits"], 3),
            "quantized": {"mAP50": qm.get("metrics/mAP50(B)"), "mAP50-95": qm.get("metrics/mAP50-95(B)"),
                          "size_mb": round(costs["size_mb"], 3), "gbops": round(costs["gbops"], 2),
                          "epoch": fs.get("epoch")},
            "float_self": {"mAP50": fs.get("mAP50"), "mAP50-95": fs.get("mAP50-95"), "batchnorm": fs.get("batchnorm"),
                           "size_mb": round(costs["float_mb"], 3), "gbops": round(costs["float_gbops"], 2),
                           "epoch": fs.get("epoch")},
            "float_start": {"mAP50": fm.get("metrics/mAP50(B)"), "mAP50-95": fm.get("metrics/mAP50-95(B)"),
                            "epoch": int(self.args.fp_epochs or 0) or None},
        }

    def summary_dict(self) -> dict[str, Any]:
        """What ``summary.json`` holds: the run's setup, final metrics, and float vs quantized figures."""
        model = unwrap_model(self.model)
        m = self.metrics or {}
        gates = None
        if (csv := self.save_dir / "gates.csv").exists():
            head, *rows = csv.read_text().strip().splitlines()
            if rows:
                gates = {k: float(v) for k, v in zip(head.split(",")[1:], rows[-1].split(",")[1:])}
        distiller = getattr(model, "distiller", None)
        return {
            "model": Path(model.yaml.get("yaml_file", "model")).name,
            "data": str(self.args.data),
            "modality": self.data["modality"],
            "imgsz": self.args.imgsz,
            "epochs": self.epoch + 1,
            "fp_epochs": int(self.args.fp_epochs or 0),
            "metrics": {"mAP50": m.get("metrics/mAP50(B)"), "mAP50-95": m.get("metrics/mAP50-95(B)"),
                        "precision": m.get("metrics/precision(B)"), "recall": m.get("metrics/recall(B)")},
            "quantization": self.quant_report(),
            "distillation": None if distiller is None else {
                "kd": self.args.kd, "weights": distiller.weights, "schedule": distiller.schedule,
                "teacher": str(self.args.teacher or "self"),
                "float_self": None if self.args.teacher else distiller.float_self,
                "layers": distiller.layers, "gate": bool(self.args.kd_gate) if "ost" in distiller.terms else None,
                "gate_open_last_epoch": gates},
            "weights": {"best": str(self.best), "last": str(self.last),
                        "best_fp": str(self.wdir / "best_fp.pt") if (self.wdir / "best_fp.pt").exists() else None},
        }

    def summary(self) -> str:
        """Plain-text summary: model, modality, data, accuracy, float self vs quantized, weights, the next commands."""
        model = unwrap_model(self.model)
        params = sum(p.numel() for n, p in model.named_parameters()
                     if "_quant." not in n and not n.startswith("distiller.") and ".float_bn." not in n) / 1e6
        name = Path(model.yaml.get("yaml_file", "model")).stem
        m = self.metrics
        size = self.best.stat().st_size / 1e6
        data = Path(str(self.args.data)).name
        lines = [
            f"\n{colorstr('bold', 'ghost summary')}",
            f"  model     {name}, {params:.2f} M params, modality {self.data['modality']} ({self.data['channels']} ch), "
            f"imgsz {self.args.imgsz}",
            f"  data      {data}: {len(self.train_loader.dataset)} train / {len(self.test_loader.dataset)} val images",
            f"  accuracy  mAP50 {m.get('metrics/mAP50(B)', 0):.3f}   mAP50-95 {m.get('metrics/mAP50-95(B)', 0):.3f}   "
            f"(best.pt on val, {self.epoch + 1} epochs)",
        ]
        if q := self.quant_report():
            fs, qq, start = q["float_self"], q["quantized"], q["float_start"]

            def num(v: float | None, fmt: str) -> str:
                return "-" if v is None else format(v, fmt)

            epoch = f"epoch {qq['epoch']}" if qq["epoch"] else "best.pt"
            bn = "own BN" if fs["batchnorm"] == "own" else "shared BN"
            lines += [
                f"  quantized {q['quantizer']}, bits={q['bits']}, average weight bits {q['avg_w_bits']:.2f} "
                f"(bits.yaml in the run dir)",
                f"  {'best.pt, ' + epoch:<24}{'float self':>12}{'quantized':>11}",
                *(f"  {k:<24}{num(fs[key], fmt):>12}{num(qq[key], fmt):>11}" for k, key, fmt in (
                    ("mAP50", "mAP50", ".3f"), ("mAP50-95", "mAP50-95", ".3f"), ("size MB", "size_mb", ".2f"),
                    ("GBOPs", "gbops", ".1f"))),
                f"  {'':<24}{'(' + bn + ')' if fs['mAP50'] is not None else '':>12}",
            ]
            if start["mAP50"] is not None:
                when = f"the float phase's last epoch ({start['epoch']})" if start["epoch"] else "the given weights"
                lines.append(f"  start     quantization started from {when}: mAP50 {start['mAP50']:.3f}, mAP50-95 "
                             f"{num(start['mAP50-95'], '.3f')}")
            if (distiller := getattr(model, "distiller", None)) is not None:
                lines.append(f"  distilled {distiller.describe()}"
                             f"{' (SCM gate: gates.csv)' if (self.save_dir / 'gates.csv').exists() else ''}")
            if (self.wdir / "best_fp.pt").exists():
                lines.append(f"  float     {self.wdir / 'best_fp.pt'} (the float phase's best)")
            if fs["batchnorm"] == "own":
                lines.append(f"  as float  ghost val model={self.best} as_float=True   (the float self; also predict, "
                             "export)")
        lines += [
            f"  summary   {self.save_dir / 'summary.json'}",
            f"  weights   {self.best} ({size:.1f} MB)",
            f"  next      ghost predict model={self.best} source=FOLDER_OF_PAIRS",
            f"            ghost export model={self.best} format=onnx",
        ]
        return "\n".join(lines)
