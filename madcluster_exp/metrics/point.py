"""Point-wise metrics with validated inputs (keyword-only ``y_true=``, ``y_score=``/``y_pred=``).

- P/R/F1 of a 0/1 prediction;
- AUC-ROC (Mann-Whitney with average ranks for ties; equals sklearn's ``roc_auc_score``);
- AUC-PR as step-wise average precision (equals sklearn's ``average_precision_score``, which is
  what ``vus``'s ``'all'`` reports as AUC_PR);
- best-F1 oracle: the first argmax of F1 along sklearn's precision-recall curve (uses test labels
  to pick the threshold: always reported with an ``_oracle`` suffix);
- point-adjusted P/R/F1: a true segment counts as fully detected if any of its points is
  predicted (known to inflate; always reported with a ``_pa`` suffix beside the plain F1).
"""

from __future__ import annotations

from typing import Dict, Tuple

import numpy as np

from madcluster_exp.errors import ExpectedError


class MetricInputError(ExpectedError, ValueError):
    """Inputs a metric cannot be computed on; the message says which and why."""


def check_labels(y_true, name: str = "y_true") -> np.ndarray:
    y = np.asarray(y_true)
    if y.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D, got shape {y.shape}")
    if y.size == 0:
        raise MetricInputError(f"{name} is empty")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        raise MetricInputError(
            f"{name} contains NaN or inf at index {int(np.flatnonzero(~np.isfinite(y))[0])}"
        )
    bad = (y != 0) & (y != 1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise MetricInputError(f"{name} must be binary 0/1; found {y[i].item()!r} at index {i}")
    return y.astype(np.int8)


def check_scores(y_score, n: int, name: str = "y_score") -> np.ndarray:
    s = np.asarray(y_score, dtype=np.float64)
    if s.ndim != 1:
        raise MetricInputError(f"{name} must be 1-D, got shape {s.shape}")
    if len(s) != n:
        raise MetricInputError(
            f"{name} has {len(s)} values but y_true has {n}; expected equal lengths"
        )
    if not np.isfinite(s).all():
        i = int(np.flatnonzero(~np.isfinite(s))[0])
        raise MetricInputError(f"{name} contains {s[i]} at index {i}; expected finite scores")
    return s


def _prf(tp: float, fp: float, fn: float) -> Tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp > 0 else 0.0
    recall = tp / (tp + fn) if tp + fn > 0 else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return precision, recall, f1


def precision_recall_f1(*, y_true, y_pred) -> Dict[str, float]:
    y = check_labels(y_true)
    p = check_labels(y_pred, "y_pred")
    if len(p) != len(y):
        raise MetricInputError(f"y_pred has {len(p)} values but y_true has {len(y)}")
    tp = float(np.sum((p == 1) & (y == 1)))
    fp = float(np.sum((p == 1) & (y == 0)))
    fn = float(np.sum((p == 0) & (y == 1)))
    precision, recall, f1 = _prf(tp, fp, fn)
    return {"precision": precision, "recall": recall, "f1": f1}


def _pr_curve(y: np.ndarray, s: np.ndarray):
    """Cumulative TP/FP at each distinct threshold, thresholds descending (one sort; tie order
    is irrelevant because every quantity is read at the end of a run of equal scores)."""
    order = np.argsort(-s)
    s_sorted, y_sorted = s[order], y[order].astype(np.float64)
    last_of_run = np.r_[np.flatnonzero(np.diff(s_sorted)), len(s) - 1]
    tps = np.cumsum(y_sorted)[last_of_run]
    fps = (last_of_run + 1) - tps
    return tps, fps, s_sorted[last_of_run]


def ranking_metrics(*, y_true, y_score) -> Dict[str, float]:
    """AUC-ROC, AUC-PR (average precision) and the best-F1 oracle from one sort.

    AUC-ROC is the trapezoid under the ROC curve through every distinct threshold (ties give
    diagonal steps), which equals sklearn's ``roc_auc_score``. AP is sum (R_k - R_{k-1}) P_k.
    Best F1 is the first argmax along sklearn's ``precision_recall_curve`` (thresholds
    ascending), i.e. the lowest threshold among equal F1 values; prediction there is
    ``score >= threshold``.
    """
    y = check_labels(y_true)
    s = check_scores(y_score, len(y))
    n_pos = float(y.sum())
    n_neg = len(y) - n_pos
    nan = float("nan")
    if n_pos == 0:
        return {
            "auc_roc": nan,
            "auc_pr": nan,
            "f1": 0.0,
            "precision": 0.0,
            "recall": 0.0,
            "threshold": nan,
        }
    tps, fps, thresholds = _pr_curve(y, s)
    precision = tps / (tps + fps)
    recall = tps / n_pos
    out = {"auc_pr": float(np.sum(np.diff(np.r_[0.0, recall]) * precision))}
    if n_neg == 0:
        out["auc_roc"] = nan
    else:
        tpr, fpr = np.r_[0.0, recall], np.r_[0.0, fps / n_neg]
        out["auc_roc"] = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / np.where(denom > 0, denom, 1), 0.0)
    # Thresholds descend here; the last maximum is sklearn's first (lowest threshold).
    i = len(f1) - 1 - int(np.argmax(f1[::-1]))
    out.update(
        precision=float(precision[i]),
        recall=float(recall[i]),
        f1=float(f1[i]),
        threshold=float(thresholds[i]),
    )
    return out


def auc_roc(*, y_true, y_score) -> float:
    return ranking_metrics(y_true=y_true, y_score=y_score)["auc_roc"]


def auc_pr(*, y_true, y_score) -> float:
    """Average precision: sum over thresholds of (R_k - R_{k-1}) * P_k."""
    return ranking_metrics(y_true=y_true, y_score=y_score)["auc_pr"]


def best_f1(*, y_true, y_score) -> Dict[str, float]:
    """Best F1 over all thresholds: an oracle (it looks at the test labels)."""
    r = ranking_metrics(y_true=y_true, y_score=y_score)
    return {k: r[k] for k in ("precision", "recall", "f1", "threshold")}


def segments(y: np.ndarray) -> np.ndarray:
    """[m, 2] (start, end exclusive) of the runs of ones in a 0/1 array."""
    d = np.diff(np.r_[0, y.astype(np.int8), 0])
    return np.stack([np.flatnonzero(d == 1), np.flatnonzero(d == -1)], axis=1)


def point_adjust(*, y_true, y_pred) -> np.ndarray:
    """Prediction after point adjustment: a true segment with any hit becomes fully predicted."""
    y = check_labels(y_true)
    p = check_labels(y_pred, "y_pred").copy()
    if len(p) != len(y):
        raise MetricInputError(f"y_pred has {len(p)} values but y_true has {len(y)}")
    hits = np.r_[0, np.cumsum(p)]
    for a, b in segments(y):
        if hits[b] - hits[a] > 0:
            p[a:b] = 1
    return p


def point_adjusted_f1(*, y_true, y_pred) -> Dict[str, float]:
    return precision_recall_f1(y_true=y_true, y_pred=point_adjust(y_true=y_true, y_pred=y_pred))
