"""The threshold-dependent keys of ``vus.metrics.get_metrics(..., 'all')`` (vus 0.0.6,
``basic_metricor.metric_new``): Precision, Recall, F, Rrecall, Rprecision, RF, Precision_at_k.

Definitions, quirks included (they are the definition papers compare against):

- the prediction is ``score > mean(score) + 3 * std(score)`` (strict), computed in the score's
  own dtype (float32 scores give float32 mean and std, as in the package);
- Precision/Recall/F are sklearn's for class 1 with ``zero_division=0``;
- Rrecall uses alpha = 0.2, Rprecision alpha = 0, RF = 2 Rr Rp / (Rr + Rp) (0 if both are 0),
  see ``range_pr``;
- Precision_at_k compares the boolean *prediction* (not the score) with the score's
  ``100 (1 - k/n)`` percentile, k = number of anomalous points: it is 1 when that percentile is
  negative, TP / k when it lies in [0, 1) and 0 otherwise (0 for binary scores).
"""

from __future__ import annotations

from typing import Dict

import numpy as np

from madcluster_exp.metrics.point import precision_recall_f1
from madcluster_exp.metrics.range_pr import range_f


def basic_metric_new(y: np.ndarray, score) -> Dict[str, float]:
    """The seven keys for validated 0/1 labels ``y`` (at least one anomaly) and ``score`` as
    the caller passed it (its dtype matters for the 3-sigma threshold)."""
    raw = np.asarray(score)
    if raw.dtype.kind != "f":
        raw = raw.astype(np.float64)
    pred = raw > (np.mean(raw) + 3 * np.std(raw))
    prf = precision_recall_f1(y_true=y, y_pred=pred.astype(np.int8))
    r_recall, r_precision, rf = range_f(y, pred)
    k = int(np.sum(y))
    at_k = np.percentile(raw, 100 * (1 - k / len(y)))
    tp_at_k = float(np.sum(y[pred > at_k]))
    return {
        "Precision": prf["precision"],
        "Recall": prf["recall"],
        "F": prf["f1"],
        "Rrecall": float(r_recall),
        "Rprecision": float(r_precision),
        "RF": float(rf),
        "Precision_at_k": tp_at_k / k,
    }
