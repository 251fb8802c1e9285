"""The quantized phase of a ghost run: when it starts, what starting it does, and the per-step state it drives.

A ghost run trains in float for ``fp_epochs`` epochs (or none), then quantizes: the HQ search (or the given widths),
quantizers on and calibrated on a batch, EMA and best fitness restarted, the frozen float self saved as the teacher.
During the quantized phase the distiller's weight schedule advances each batch, and the SCM gates are logged each
epoch. These are Ultralytics callbacks, all registered in ``PHASE_CALLBACKS``; ``GhostTrainer.run_callbacks`` runs them
before the user's for the same event (the trainer's class carries them, so DDP workers run them too).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from copy import deepcopy
from typing import Any

import torch
import torch.distributed as dist
from ultralytics.utils import LOGGER, RANK, YAML, colorstr
from ultralytics.utils.torch_utils import ModelEMA, unwrap_model

from ghost_yolo.distill import freeze_float_self
from ghost_yolo.nn.act_blend import blend_activations, set_blend, unblend
from ghost_yolo.quant import (
    QuantState,
    average_bits,
    bits_table,
    output_quantizers,
    plot_bits,
    quant_layers,
    quant_state,
    save_bit_map,
)

from .setup import start_qat

__all__ = ("PHASE_CALLBACKS", "advance_act_anneal", "advance_kd_schedule", "freeze_if_already_quantized",
           "log_epoch_stats", "save_float_teacher", "start_act_anneal", "start_quantized_phase")


def _due(trainer: Any, event: str) -> bool:
    """The quantized phase starts at set-up (no float phase, not resuming) or as epoch ``fp_epochs`` begins."""
    fp_epochs = int(trainer.args.fp_epochs or 0)
    if event == "on_pretrain_routine_end":
        return not trainer.args.resume and not fp_epochs
    return bool(fp_epochs) and trainer.epoch == fp_epochs


def start_quantized_phase(trainer: Any) -> None:
    """The quantized start in a run: the float metrics it starts from, then ``start_qat`` (widths, frozen float self,
    quantizers on, calibration on a training batch), then the run's own state: DDP ranks share rank 0's quantizer
    ranges, EMA and best fitness restart, the frozen float self is saved for resume, the widths are logged and saved."""
    model = unwrap_model(trainer.model)
    if quant_state(model) is not QuantState.PREPARED:
        return  # a float run, or quantized already (fine-tuning a quantized checkpoint, resume)
    trainer.epoch = epoch = getattr(trainer, "epoch", trainer.start_epoch)
    if epoch > 0 and trainer.ema:  # continue from the averaged float weights that validation measured
        model.load_state_dict(trainer.ema.ema.state_dict(), strict=False)
        trainer.float_metrics = {k: v for k, v in trainer.metrics.items() if k.startswith("metrics/")}
        if RANK in {-1, 0} and trainer.best.exists():
            shutil.copy(trainer.best, trainer.wdir / "best_fp.pt")
    elif trainer.trained_weights and RANK in {-1, 0} and trainer.args.val:
        # the float model we start from, for the float-vs-quantized summary (standalone: no training step yet)
        validator = trainer.get_validator()
        validator.args.plots = False
        metrics = validator(model=deepcopy(model).float())
        trainer.float_metrics = {k: v for k, v in (metrics or {}).items() if k.startswith("metrics/")}
    recipe = trainer.quant_recipe
    if recipe.searches and not trainer.trained_weights and epoch == 0:
        LOGGER.warning("bits=hq on randomly initialised weights: the search measures nothing meaningful. Pass "
                       "trained weights (model=best.pt) or fp_epochs=N to train in float first.")
    batch = trainer.preprocess_batch(next(iter(trainer.train_loader)))
    bits, distortions, distill = start_qat(model, recipe, batch["img"], trainer.distill_recipe,
                                           progress=RANK in {-1, 0})
    if distill is not trainer.distill_recipe:  # kd=auto of an HQ run, settled by the widths the search chose
        trainer.distill_recipe = distill
        trainer.args.kd = distill.kd
        if RANK in {-1, 0}:
            LOGGER.info(f"{colorstr('ghost:')} kd=auto -> {distill.kd}: {distill.auto}")
            YAML.save(trainer.save_dir / "args.yaml", vars(trainer.args))  # what ran, as the checkpoint records it
    save_float_teacher(trainer, model)
    if trainer.world_size > 1 and dist.is_available() and dist.is_initialized():  # ranks calibrated on their own batch
        layers = quant_layers(model)
        outs = [m.quant for m in output_quantizers(model).values()]
        for q in [*(q for m in layers.values() for q in (m.weight_quant, m.input_quant)), *outs]:
            for t in (*q.parameters(), *q.buffers()):
                if t.is_floating_point():
                    dist.broadcast(t.data, src=0)
    trainer.ema = ModelEMA(trainer.model)
    trainer.best_fitness = None
    trainer.stopper.best_fitness, trainer.stopper.best_epoch = 0.0, epoch
    if RANK in {-1, 0}:
        args = trainer.args
        LOGGER.info(f"{colorstr('ghost:')} quantized phase from epoch {epoch + 1} ({args.quantizer}, "
                    f"average weight bits {average_bits(model):.2f}):\n"
                    + bits_table(model, bits, distortions, args.hq_threshold))
        save_bit_map(bits, trainer.save_dir / "bits.yaml", quantizer=args.quantizer, source=args.bits,
                     hq_threshold=args.hq_threshold)
        if args.plots:
            plot_bits(bits, trainer.save_dir / "bits.png", title=f"bits per layer ({args.bits})")


def save_float_teacher(trainer: Any, model: torch.nn.Module) -> None:
    """Save a frozen float self (``float_self=frozen``, fp32, as it teaches) as ``weights/float_teacher.pt``, so that
    ``resume=True`` teaches with the same model."""
    teacher = getattr(getattr(model, "distiller", None), "teacher", None)
    if not teacher or not teacher.own or teacher.path:
        return
    path = trainer.wdir / "float_teacher.pt"
    if RANK in {-1, 0}:
        trainer.wdir.mkdir(parents=True, exist_ok=True)
        torch.save({"model": teacher.module, "train_args": {}, "epoch": -1}, path)
    teacher.path = str(path)


def freeze_if_already_quantized(trainer: Any) -> None:
    """A run that starts quantized (fine-tuning a quantized checkpoint, or resuming without ``float_teacher.pt``)
    never passes the quantized start: freeze its float self now, so ``float_self=frozen`` never silently teaches with
    the live shared-BatchNorm self."""
    model = unwrap_model(trainer.model)
    distiller = getattr(model, "distiller", None)
    if quant_state(model) is not QuantState.ACTIVE or distiller is None or distiller.float_self != "frozen" \
            or distiller.teacher:
        return
    if RANK in {-1, 0}:
        why = f"no {trainer.wdir / 'float_teacher.pt'} to resume with" if trainer.args.resume else \
            "the model starts quantized"
        LOGGER.warning(f"float_self=frozen: {why}; freezing its float self as it is now (quantizers bypassed, the "
                       "quantized path's BatchNorm)")
    freeze_float_self(model)
    save_float_teacher(trainer, model)


def advance_kd_schedule(trainer: Any, event: str) -> None:
    """Tell the distiller how far into the quantized phase this batch is (its weight schedule reads it)."""
    distiller = getattr(unwrap_model(trainer.model), "distiller", None)
    if distiller is None:
        return
    if event == "on_train_epoch_start":
        trainer._kd_batch = 0
        return
    fp_epochs, nb = int(trainer.args.fp_epochs or 0), max(len(trainer.train_loader), 1)
    q_epochs = max(trainer.epochs - fp_epochs, 1)
    distiller.progress = (trainer.epoch - fp_epochs + getattr(trainer, "_kd_batch", 0) / nb) / q_epochs
    trainer._kd_batch = getattr(trainer, "_kd_batch", 0) + 1


def log_epoch_stats(trainer: Any) -> None:
    """Log each distillation loss's statistics for this epoch and append them to its CSV (OST: gate open fractions
    per distilled layer in ``gates.csv``)."""
    distiller = getattr(unwrap_model(trainer.model), "distiller", None)
    if distiller is None:
        return
    stats = distiller.epoch_stats()
    for name, term in distiller.terms.items():
        values = stats.get(name)
        if values is None or not term.stats_file or RANK not in {-1, 0}:
            continue
        csv = trainer.save_dir / term.stats_file
        if not csv.exists():
            csv.write_text("epoch," + ",".join(f"layer{i}" for i in values) + "\n")
        with csv.open("a") as f:
            f.write(f"{trainer.epoch + 1}," + ",".join(f"{v:.4f}" for v in values.values()) + "\n")
        LOGGER.info(f"{colorstr('ghost:')} {term.stats_label}: " + " ".join(f"{i}:{v:.2f}" for i, v in values.items()))


def start_act_anneal(trainer: Any, model: torch.nn.Module) -> None:
    """``act_anneal=N``: check it fits the run and wrap the model's activations in ``ActBlend`` from SiLU (also on
    resume: the epoch-start callback puts them back at once when the annealing is over)."""
    epochs = int(trainer.args.act_anneal or 0)
    if not epochs:
        return
    fp_epochs, quantized = int(trainer.args.fp_epochs or 0), trainer.quant_recipe.bits not in (None, 32)
    if epochs < 0 or (epochs > fp_epochs if quantized else epochs >= trainer.args.epochs):
        limit = f"at most fp_epochs={fp_epochs} (the float epochs before quantization)" if quantized else \
            f"fewer than epochs={trainer.args.epochs}"
        raise ValueError(f"act_anneal={epochs} must be {limit}: the activations finish sliding to the model's own "
                         "before the run quantizes or ends")
    if not blend_activations(model):
        raise ValueError(f"act_anneal={epochs} slides conv activations from SiLU to the model's own, but this model's "
                         "conv blocks use SiLU already: use it with a model whose YAML sets another act "
                         "(ghost-n-relu.yaml)")
    if RANK in {-1, 0} and not trainer.args.resume:
        LOGGER.info(f"{colorstr('ghost:')} act_anneal={epochs}: conv activations slide from SiLU to the model's own "
                    f"over the first {epochs} epoch{'s' * (epochs > 1)}; best.pt and patience count from epoch "
                    f"{epochs + 1}")


def advance_act_anneal(trainer: Any, event: str) -> None:
    """Raise the ``ActBlend`` position of the model and its EMA each batch, with patience held off meanwhile; when the
    annealing is over, put the plain activations back and restart best fitness and patience, so best.pt is a model with
    the YAML's activation."""
    epochs = int(getattr(trainer.args, "act_anneal", 0) or 0)
    if not epochs:
        return
    models = [unwrap_model(trainer.model), *([trainer.ema.ema] if getattr(trainer, "ema", None) else [])]
    if event == "on_train_epoch_start":
        trainer._anneal_batch = 0
        if trainer.epoch < epochs:  # fitness falls while the activations change: patience must not stop the run here
            trainer.stopper.best_fitness, trainer.stopper.best_epoch = 0.0, trainer.epoch
        elif sum(unblend(m) for m in models) and trainer.epoch == epochs:
            trainer.best_fitness = None
            trainer.stopper.best_fitness, trainer.stopper.best_epoch = 0.0, trainer.epoch
            if RANK in {-1, 0}:
                LOGGER.info(f"{colorstr('ghost:')} act_anneal: activations are the model's own from epoch "
                            f"{trainer.epoch + 1}; best fitness and patience restart")
        return
    nb = max(len(trainer.train_loader), 1)
    t = (trainer.epoch + getattr(trainer, "_anneal_batch", 0) / nb) / epochs
    for m in models:
        set_blend(m, t)
    trainer._anneal_batch = getattr(trainer, "_anneal_batch", 0) + 1


def _start_if_due(event: str) -> Callable[[Any], None]:
    def callback(trainer: Any) -> None:
        if _due(trainer, event):
            trainer.start_quantized_phase()

    return callback


def _schedule(event: str) -> Callable[[Any], None]:
    return lambda trainer: advance_kd_schedule(trainer, event)


def _anneal(event: str) -> Callable[[Any], None]:
    return lambda trainer: advance_act_anneal(trainer, event)


# event -> ghost's callbacks for it, in order; they run before the user's callbacks for the same event
PHASE_CALLBACKS: dict[str, list[Callable[[Any], None]]] = {
    "on_pretrain_routine_end": [_start_if_due("on_pretrain_routine_end"), freeze_if_already_quantized],
    # the activations are the model's own before the quantized phase starts at the same epoch
    "on_train_epoch_start": [_anneal("on_train_epoch_start"), _start_if_due("on_train_epoch_start"),
                             _schedule("on_train_epoch_start")],
    "on_train_batch_start": [_anneal("on_train_batch_start"), _schedule("on_train_batch_start")],
    "on_train_epoch_end": [log_epoch_stats],
}
