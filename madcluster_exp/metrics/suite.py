"""The set of metrics every run logs, with names as they appear in MLflow (``test/<name>``)."""
from __future__ import annotations

import warnings
from typing import Dict

import numpy as np

from madcluster_exp.metrics.point import (auc_pr, auc_roc, best_f1, check_labels, check_scores,
                                          point_adjusted_f1, precision_recall_f1)


def basic_suite(*, y_true, y_score, y_pred, point_adjust: bool = True, oracle: bool = True,
                seed: int = 0) -> Dict[str, float]:
    """Point-wise P/R/F1 at the fitted threshold, AUC-ROC, AUC-PR, and the labelled extras:
    ``*_oracle`` (best F1 over test thresholds) and ``*_pa`` (point-adjusted), plus
    ``f1_pa_random``: PA-F1 of a random prediction with the same number of positives, which
    shows how much point adjustment alone inflates."""
    y = check_labels(y_true)
    s = check_scores(y_score, len(y))
    if y.sum() == 0:
        warnings.warn("test labels contain no anomaly: recall-based metrics are undefined and "
                      "reported as NaN", RuntimeWarning, stacklevel=2)
    out = dict(precision_recall_f1(y_true=y, y_pred=y_pred))
    out["auc_roc"] = auc_roc(y_true=y, y_score=s)
    out["auc_pr"] = auc_pr(y_true=y, y_score=s)
    if oracle:
        best = best_f1(y_true=y, y_score=s)
        out.update({f"{k}_oracle": v for k, v in best.items()})
    if point_adjust:
        out.update({f"{k}_pa": v for k, v in point_adjusted_f1(y_true=y, y_pred=y_pred).items()})
        rng = np.random.default_rng(seed)
        random_pred = np.zeros(len(y), np.int8)
        random_pred[rng.choice(len(y), size=int(np.sum(y_pred)), replace=False)] = 1
        out["f1_pa_random"] = point_adjusted_f1(y_true=y, y_pred=random_pred)["f1"]
    return out
