"""The end-of-run report of a ghost training run: the float self's validation, float vs quantized, summary.json.

``GhostTrainer.final_eval`` calls these once best.pt is validated; they read the trainer's state and change nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ultralytics.utils import LOGGER, colorstr
from ultralytics.utils.torch_utils import unwrap_model

from ghost_yolo.nn.switch_bn import has_float_bn
from ghost_yolo.quant import QuantState, layer_costs, quant_state, set_quant_enabled, to_float_self

__all__ = ("quant_report", "summary_dict", "summary_text", "validate_float_self")


def validate_float_self(trainer: Any) -> dict[str, Any] | None:
    """mAP of best.pt's float self: its co-trained float BatchNorm set if it has one, else the latent weights in
    float mode with the quantized path's BatchNorm (what a shared-BN self-teacher is). None for float runs."""
    from ultralytics.nn.tasks import load_checkpoint

    if not trainer.args.val or quant_state(trainer.model) is not QuantState.ACTIVE:
        return None
    model, _ = load_checkpoint(trainer.best, device=trainer.device)
    own = has_float_bn(model)
    if own:
        to_float_self(model)
    else:
        set_quant_enabled(model, False)
    LOGGER.info(f"\nValidating the float self of {trainer.best} ({'its own' if own else 'the shared'} BatchNorm)...")
    validator = trainer.get_validator()
    validator.args.plots = validator.args.save_json = False
    metrics = validator(model=model.float())
    return {"mAP50": metrics.get("metrics/mAP50(B)"), "mAP50-95": metrics.get("metrics/mAP50-95(B)"),
            "batchnorm": "own" if own else "shared", "epoch": int(trainer.stopper.best_epoch)}


def quant_report(trainer: Any) -> dict[str, Any] | None:
    """Float vs quantized figures of a quantized run: mAP50, mAP50-95 (val), size MB and GBOPs at ``imgsz``.

    ``quantized`` and ``float_self`` are best.pt and its float self (the same weights and epoch); ``float_start``
    is the float model the quantized phase started from (the float phase's last epoch, or the given weights).
    """
    model = unwrap_model(trainer.model)
    if quant_state(model) is not QuantState.ACTIVE:
        return None
    costs = layer_costs(model, trainer.args.imgsz).attrs["totals"]
    fm, qm = trainer.float_metrics or {}, trainer.metrics or {}
    fs = getattr(trainer, "float_self_metrics", None) or {}
    return {
        "quantizer": trainer.args.quantizer,
        "bits": trainer.args.bits,
        "avg_w_bits": round(costs["avg_w_bits"], 3),
        "quantized": {"mAP50": qm.get("metrics/mAP50(B)"), "mAP50-95": qm.get("metrics/mAP50-95(B)"),
                      "size_mb": round(costs["size_mb"], 3), "gbops": round(costs["gbops"], 2),
                      "epoch": fs.get("epoch")},
        "float_self": {"mAP50": fs.get("mAP50"), "mAP50-95": fs.get("mAP50-95"), "batchnorm": fs.get("batchnorm"),
                       "size_mb": round(costs["float_mb"], 3), "gbops": round(costs["float_gbops"], 2),
                       "epoch": fs.get("epoch")},
        "float_start": {"mAP50": fm.get("metrics/mAP50(B)"), "mAP50-95": fm.get("metrics/mAP50-95(B)"),
                        "epoch": int(trainer.args.fp_epochs or 0) or None},
    }


def _last_stats(trainer: Any, term: Any) -> dict[str, float] | None:
    """The last row of a distillation loss's per-epoch CSV (``KDLoss.stats_file``), by column; None without one."""
    if not term.stats_file or not (csv := trainer.save_dir / term.stats_file).exists():
        return None
    head, *rows = csv.read_text().strip().splitlines()
    return {k: float(v) for k, v in zip(head.split(",")[1:], rows[-1].split(",")[1:])} if rows else None


def summary_dict(trainer: Any) -> dict[str, Any]:
    """What ``summary.json`` holds: the run's setup, final metrics, and float vs quantized figures."""
    model = unwrap_model(trainer.model)
    m = trainer.metrics or {}
    distiller = getattr(model, "distiller", None)
    distiller = distiller if distiller is not None and distiller.enabled else None  # kd=auto may settle on none
    return {
        "model": Path(model.yaml.get("yaml_file", "model")).name,
        "data": str(trainer.args.data),
        "modality": trainer.data["modality"],
        "imgsz": trainer.args.imgsz,
        "epochs": trainer.epoch + 1,
        "fp_epochs": int(trainer.args.fp_epochs or 0),
        "metrics": {"mAP50": m.get("metrics/mAP50(B)"), "mAP50-95": m.get("metrics/mAP50-95(B)"),
                    "precision": m.get("metrics/precision(B)"), "recall": m.get("metrics/recall(B)")},
        "quantization": quant_report(trainer),
        "distillation": None if distiller is None else {
            "kd": trainer.args.kd, "weights": distiller.weights, "schedule": distiller.schedule,
            "teacher": str(trainer.args.teacher or "self"),
            "float_self": None if trainer.args.teacher else distiller.float_self,
            "layers": distiller.layers,
            **{k: v for term in distiller.terms.values() for k, v in term.summary(_last_stats(trainer, term)).items()}},
        "weights": {"best": str(trainer.best), "last": str(trainer.last),
                    "best_fp": str(trainer.wdir / "best_fp.pt") if (trainer.wdir / "best_fp.pt").exists() else None},
    }


def summary_text(trainer: Any) -> str:
    """Plain-text summary: model, modality, data, accuracy, float self vs quantized, weights, the next commands."""
    model = unwrap_model(trainer.model)
    params = sum(p.numel() for n, p in model.named_parameters()
                 if "_quant." not in n and not n.startswith("distiller.") and ".float_bn." not in n) / 1e6
    name = Path(model.yaml.get("yaml_file", "model")).stem
    m = trainer.metrics
    size = trainer.best.stat().st_size / 1e6
    data = Path(str(trainer.args.data)).name
    lines = [
        f"\n{colorstr('bold', 'ghost summary')}",
        f"  model     {name}, {params:.2f} M params, modality {trainer.data['modality']} ({trainer.data['channels']} ch), "
        f"imgsz {trainer.args.imgsz}",
        f"  data      {data}: {len(trainer.train_loader.dataset)} train / {len(trainer.test_loader.dataset)} val images",
        f"  accuracy  mAP50 {m.get('metrics/mAP50(B)', 0):.3f}   mAP50-95 {m.get('metrics/mAP50-95(B)', 0):.3f}   "
        f"(best.pt on val, {trainer.epoch + 1} epochs)",
    ]
    if q := quant_report(trainer):
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
        if (distiller := getattr(model, "distiller", None)) is not None and distiller.enabled:
            logs = [f"{t.stats_label}: {t.stats_file}" for t in distiller.terms.values()
                    if t.stats_file and (trainer.save_dir / t.stats_file).exists()]
            logged = f" ({'; '.join(logs)})" if logs else ""
            lines.append(f"  distilled {distiller.describe()}{logged}")
        if (trainer.wdir / "best_fp.pt").exists():
            lines.append(f"  float     {trainer.wdir / 'best_fp.pt'} (the float phase's best)")
        if fs["batchnorm"] == "own":
            lines.append(f"  as float  ghost val model={trainer.best} as_float=True   (the float self; also predict, "
                         "export)")
    lines += [
        f"  summary   {trainer.save_dir / 'summary.json'}",
        f"  weights   {trainer.best} ({size:.1f} MB)",
        f"  next      ghost predict model={trainer.best} source=FOLDER_OF_PAIRS",
        f"            ghost export model={trainer.best} format=onnx",
    ]
    return "\n".join(lines)
