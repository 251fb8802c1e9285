"""PASCAL VOC 2007 11-point AP at IoU 0.5: the figure MMRotate-based OBB papers (DroneVehicle, DOTA) report.

How it differs from Ultralytics' mAP50 on the same detections:

- Area: Ultralytics samples the precision envelope at 101 recall points (COCO style, linear between the curve's points)
  and integrates by the trapezoid rule. VOC07 averages the envelope at 11 recalls 0, 0.1, ..., 1.0 (envelope at t =
  the best precision at any recall >= t). A class whose detections never reach recall 1 gets 0 at t = 1.0, so it
  is capped at 10/11 = 90.9%, and the same model typically reads several points lower than in Ultralytics' mAP50.
- Matching: MMRotate's ``eval_rbbox_map`` matches by polygon IoU, in score order each detection taking its best
  ground truth (a false positive if that one is taken), and leaves out "difficult" objects (neither counted as targets
  nor as false positives when matched). Here the true positives come from the validator (``tp`` column 0): rotated
  ProbIoU (``batch_probiou``) with Ultralytics' greedy matching, in which a detection takes its best *unclaimed*
  target, and no difficult flags. Only the area rule is MMRotate's; on data without difficult objects the two
  differ where ProbIoU and polygon IoU fall on opposite sides of 0.5 and where a detection's best target is taken.
- Thresholds: recall >= t is taken up to rounding, so a recall of exactly 0.3 counts at t = 0.3. MMRotate compares
  float recalls with ``np.arange(0, 1.001, 0.1)``, whose 0.3, 0.6 and 0.7 lie just above those values, so there a
  recall of exactly 0.3, 0.6 or 0.7 misses its point (a slightly lower AP in such tie cases).
- Neither is a bound on the other: VOC07 samples the envelope's left ends, so a class found only at low recall with
  high precision reads higher in VOC07 (the tests show both directions).
"""

from __future__ import annotations

from typing import Any

import numpy as np

VOC07_RECALLS = np.linspace(0, 1, 11)  # 0, 0.1, ..., 1.0


def voc07_ap(
    tp: np.ndarray, conf: np.ndarray, pred_cls: np.ndarray, target_cls: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """VOC07 11-point AP50 per class, from the arrays Ultralytics' DetectionValidator accumulates.

    Args:
        tp (np.ndarray): (N,) or (N, 10) bool, whether each detection is correct (columns at IoU 0.5:0.95; column 0 =
            IoU 0.5 is used).
        conf (np.ndarray): (N,) detection scores; detections are ranked by descending score (ties keep input order).
        pred_cls (np.ndarray): (N,) detected class ids.
        target_cls (np.ndarray): (M,) class ids of all ground-truth objects.

    Returns:
        ap (np.ndarray): (nc,) AP in [0, 1] of each class that has targets (0 for a class with no detections).
        classes (np.ndarray): (nc,) those class ids, sorted (as in Ultralytics' ``ap_per_class``).
    """
    tp = np.asarray(tp, dtype=bool)
    tp = tp[:, 0] if tp.ndim == 2 else tp
    conf, pred_cls = np.asarray(conf, dtype=np.float64), np.asarray(pred_cls)
    classes, n_targets = np.unique(np.asarray(target_cls), return_counts=True)
    order = np.argsort(-conf, kind="stable")
    tp, pred_cls = tp[order], pred_cls[order]
    ap = np.zeros(len(classes))
    for i, (c, n) in enumerate(zip(classes, n_targets)):
        hits = tp[pred_cls == c]
        if not len(hits):
            continue
        tps = np.cumsum(hits)
        recall, precision = tps / n, tps / np.arange(1, len(hits) + 1)
        envelope = [precision[recall >= t - 1e-9].max(initial=0.0) for t in VOC07_RECALLS]
        ap[i] = np.mean(envelope)
    return ap, classes


def voc07_map50(stats: dict[str, Any]) -> float:
    """VOC07 11-point mAP50 over the classes with targets, from ``DetMetrics.stats`` (per-batch lists, before
    ``process``/``clear_stats``) or the concatenated dict that ``DetMetrics.process`` returns; 0.0 with no targets."""
    arrays = {k: (np.concatenate(v, 0) if len(v) else np.zeros(0)) if isinstance(v, (list, tuple)) else np.asarray(v)
              for k, v in stats.items()}  # fmt: skip
    if not len(arrays.get("target_cls", ())):
        return 0.0
    ap, _ = voc07_ap(arrays["tp"], arrays["conf"], arrays["pred_cls"], arrays["target_cls"])
    return float(ap.mean())
