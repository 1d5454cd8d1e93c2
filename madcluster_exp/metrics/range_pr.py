"""Range-based recall and precision (Tatbul et al., NeurIPS 2018) as ``vus`` 0.0.6 and TSB-AD 1.5
compute them (``basic_metricor.range_recall_new``: flat positional bias, reciprocal cardinality
factor), vectorised.

For real ranges R_j and predicted ranges P_r (maximal runs of ones, sorted and disjoint):

- existence_j = 1 if any point of R_j is predicted;
- overlap_j = (predicted points of R_j / |R_j|) * gamma_j, gamma_j = 1 / #{r: P_r meets R_j}
  (0 when none meets it);
- recall = (alpha * sum existence_j + (1 - alpha) * sum overlap_j) / #R (0 without real range).

Range precision is the same function with the roles swapped and alpha = 0: the predicted ranges
are "real" and the labelled points are "predicted". The packages count "P_r meets R_j" with
four inclusive-end conditions that together say exactly "the intervals intersect"; here that
is two binary searches per range.
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from madcluster_exp.metrics.point import segments


def runs(v: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """(starts, ends exclusive) of the runs of non-zero values of ``v``."""
    seg = segments(np.asarray(v) != 0)
    return seg[:, 0], seg[:, 1]


def range_recall(
    real: Tuple[np.ndarray, np.ndarray],
    pred: Tuple[np.ndarray, np.ndarray],
    hits: np.ndarray,
    alpha: float,
) -> Tuple[float, float, float]:
    """(recall, existence reward, overlap reward), each divided by the number of real ranges.

    ``real`` and ``pred`` are (starts, ends exclusive); ``hits`` counts the predicted points of
    each real range.
    """
    a, b = real
    if len(a) == 0:
        return 0, 0, 0  # the packages return integer zeros here
    existence = float(np.count_nonzero(hits))
    meeting = np.searchsorted(pred[0], b, side="left") - np.searchsorted(pred[1], a, side="right")
    gamma = np.where(meeting > 0, 1.0 / np.maximum(meeting, 1), 0.0)
    overlap = float(np.sum(hits / (b - a) * gamma))
    n = len(a)
    return (alpha * existence + (1 - alpha) * overlap) / n, existence / n, overlap / n


def range_f(y: np.ndarray, pred: np.ndarray, pred_runs=None, alpha: float = 0.2):
    """(Rrecall, Rprecision, RF) of a 0/1 prediction as the packages compute them.

    ``pred_runs`` overrides the predicted ranges (TSB-AD finds none in an all-ones prediction).
    """
    y_cum = np.r_[0, np.cumsum(y != 0)]
    p_cum = np.r_[0, np.cumsum(pred != 0)]
    y_runs = runs(y)
    p_runs = runs(pred) if pred_runs is None else pred_runs
    recall = range_recall(y_runs, p_runs, p_cum[y_runs[1]] - p_cum[y_runs[0]], alpha)[0]
    precision = range_recall(p_runs, y_runs, y_cum[p_runs[1]] - y_cum[p_runs[0]], 0)[0]
    if precision + recall == 0:
        return recall, precision, 0
    return recall, precision, 2 * recall * precision / (precision + recall)
