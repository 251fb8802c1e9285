"""VOC07 11-point AP50 (ghost_yolo/utils/metrics.py): a hand-computed case, a perfect detector, classes without
detections, the bounds that always hold, and the accumulated-stats entry point the OBB validator calls."""

from __future__ import annotations

import numpy as np
import pytest
from ultralytics.utils.metrics import ap_per_class

from ghost_yolo.utils.metrics import voc07_ap, voc07_map50

# Hand case. Class 0: 4 targets; class 2: 10 targets; class 5: 1 target, never detected; class 7: detected, no target.
CONF = np.array([0.9, 0.8, 0.7, 0.6, 0.5, 0.99, 0.98, 0.97, 0.45, 0.44, 0.43, 0.42, 0.3])
PRED = np.array([0, 0, 0, 0, 0, 2, 2, 2, 2, 2, 2, 2, 7])
HIT = np.array([1, 0, 1, 1, 0, 1, 1, 1, 0, 0, 0, 1, 0], bool)
TARGETS = np.array([0] * 4 + [2] * 10 + [5])


def _tp(hit: np.ndarray) -> np.ndarray:
    """(N, 10) as the validator gives it: column 0 (IoU 0.5) is the truth, the stricter columns here contradict it."""
    tp = np.tile(hit[:, None], (1, 10))
    tp[:, 1:] = ~tp[:, 1:]
    return tp


def _shuffled():
    """The hand case in a scrambled order (the validator's order is by image, not by score)."""
    i = np.random.default_rng(0).permutation(len(CONF))
    return _tp(HIT)[i], CONF[i], PRED[i], TARGETS


def test_hand_computed_case():
    """Class 0, by score: TP FP TP TP FP -> recall .25 .25 .5 .75 .75, precision 1 .5 .667 .75 .6. The best precision
    at recall >= t is 1 for t = 0, .1, .2; .75 for t = .3 ... .7; 0 for t = .8, .9, 1 (recall never passes .75):
    (3 * 1 + 5 * .75) / 11 = 6.75 / 11 = 0.6136.
    Class 2, by score: TP TP TP FP FP FP TP -> recall .1 .2 .3 .3 .3 .3 .4, precision 1 1 1 .75 .6 .5 4/7. Envelope 1
    for t = 0 ... .3 (recall exactly .3 counts at t = .3), 4/7 at t = .4, then 0: (4 + 4/7) / 11 = 32/77 = 0.4156.
    Class 5: no detection -> 0. Class 7 has no target, so it has no AP (as in Ultralytics)."""
    ap, classes = voc07_ap(*_shuffled())
    assert classes.tolist() == [0, 2, 5]
    np.testing.assert_allclose(ap, [6.75 / 11, 32 / 77, 0.0], atol=1e-12)
    ap1, _ = voc07_ap(HIT, CONF, PRED, TARGETS)  # a plain (N,) tp column gives the same
    np.testing.assert_array_equal(ap, ap1)
    assert voc07_map50({"tp": _tp(HIT), "conf": CONF, "pred_cls": PRED, "target_cls": TARGETS}) == pytest.approx(
        (6.75 / 11 + 32 / 77) / 3)


def test_perfect_detector_scores_one():
    """Every target found before any false positive: AP 1 for every class, even with low-score false positives
    after them (the envelope at recall 1 is the precision reached there)."""
    targets = np.array([0, 0, 1, 3, 3, 3])
    conf = np.array([0.9, 0.8, 0.95, 0.7, 0.6, 0.5, 0.1, 0.05])
    pred = np.array([0, 0, 1, 3, 3, 3, 0, 3])
    hit = np.array([1, 1, 1, 1, 1, 1, 0, 0], bool)
    ap, classes = voc07_ap(_tp(hit), conf, pred, targets)
    assert classes.tolist() == [0, 1, 3] and ap.tolist() == [1.0, 1.0, 1.0]


def test_no_detections():
    """No detection at all: every class with targets scores 0 (and the stats entry point gives 0 for no targets)."""
    ap, classes = voc07_ap(np.zeros((0, 10), bool), np.zeros(0), np.zeros(0), np.array([1, 1, 4]))
    assert classes.tolist() == [1, 4] and ap.tolist() == [0.0, 0.0]
    assert voc07_map50({"tp": [], "conf": [], "pred_cls": [], "target_cls": []}) == 0.0


def test_against_ultralytics_on_the_hand_case():
    """Neither figure bounds the other: on the hand case VOC07 reads lower than Ultralytics' AP50 for class 0 (a
    class stopping at recall .75 loses its 11th point) and higher for class 2 (found only at low recall, where the
    11 points sample the envelope's left ends)."""
    tp, conf, pred, targets = _shuffled()
    ours, classes = voc07_ap(tp, conf, pred, targets)
    ultra = ap_per_class(tp, conf, pred, targets)
    assert ultra[6].tolist() == classes.tolist()
    assert ours[0] < ultra[5][0, 0] and ours[1] > ultra[5][1, 0] and ours[2] == ultra[5][2, 0] == 0


@pytest.mark.parametrize("seed", range(20))
def test_bounds_that_always_hold(seed):
    """For random detections: with recall below 1 the class is capped at 10/11 (MMRotate's 90.9); and since the
    envelope E(r) is non-increasing, the 11 points bracket the exact all-point area A = integral of E:
    (10 A + E(1)) / 11 <= AP07 <= (10 A + E(0)) / 11."""
    rng = np.random.default_rng(seed)
    n_targets, n_det = int(rng.integers(1, 12)), int(rng.integers(1, 30))
    hit = rng.random(n_det) < rng.random()
    hit[np.cumsum(hit) > n_targets] = False  # a target is matched at most once
    conf = rng.random(n_det)
    (ap,), _ = voc07_ap(hit, conf, np.zeros(n_det), np.zeros(n_targets))
    h = hit[np.argsort(-conf, kind="stable")]
    recall, precision = np.cumsum(h) / n_targets, np.cumsum(h) / np.arange(1, n_det + 1)
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # best precision at this recall or beyond
    area = float(np.sum(np.diff(recall, prepend=0) * envelope))
    e0, e1 = envelope[0], envelope[recall >= 1].max(initial=0.0)
    assert (10 * area + e1) / 11 - 1e-12 <= ap <= (10 * area + e0) / 11 + 1e-12
    if recall[-1] < 1:
        assert ap <= 10 / 11


def test_map50_from_per_batch_stats():
    """DetMetrics.stats holds per-batch lists; the mean over classes with targets matches the per-class AP."""
    tp, conf, pred, targets = _shuffled()
    stats = {"tp": [tp[:6], tp[6:]], "conf": [conf[:6], conf[6:]], "pred_cls": [pred[:6], pred[6:]],
             "target_cls": [targets[:5], targets[5:]], "target_img": [np.unique(targets)]}  # fmt: skip
    assert voc07_map50(stats) == pytest.approx(voc07_ap(tp, conf, pred, targets)[0].mean())
