"""The metric suites every run logs, with names as they appear in MLflow (``test/<name>``)."""

from __future__ import annotations

import warnings
from typing import Dict

import numpy as np

from madcluster_exp.metrics.affiliation import affiliation
from madcluster_exp.metrics.point import (
    MetricInputError,
    check_labels,
    check_scores,
    point_adjusted_f1,
    precision_recall_f1,
    ranking_metrics,
)
from madcluster_exp.metrics.range_auc import range_and_volume
from madcluster_exp.metrics.tsbad import THRESHOLD_KEYS, tsbad_get_metrics
from madcluster_exp.metrics.vus_basic import basic_metric_new

RANGE_KEYS = ("r_auc_roc", "r_auc_pr", "vus_roc", "vus_pr")
AFFILIATION_KEYS = ("affiliation_precision", "affiliation_recall")
# vus 0.0.6's get_metrics(..., 'all') keys, in the package's order
VUS_BASIC_KEYS = ("Precision", "Recall", "F", "Precision_at_k", "Rprecision", "Rrecall", "RF")
VUS_KEYS = (
    "AUC_ROC",
    "AUC_PR",
    *VUS_BASIC_KEYS,
    "R_AUC_ROC",
    "R_AUC_PR",
    "VUS_ROC",
    "VUS_PR",
    "Affiliation_Precision",
    "Affiliation_Recall",
)


def _no_anomaly(y: np.ndarray) -> bool:
    if y.sum() == 0:
        warnings.warn(
            "labels contain no anomaly: range, VUS and affiliation metrics are "
            "undefined and reported as missing (NaN)",
            RuntimeWarning,
            stacklevel=3,
        )
        return True
    return False


def range_suite(*, y_true, y_score, window: int) -> Dict[str, float]:
    """R_AUC_ROC/PR and VUS_ROC/PR (vus 0.0.6 definitions) with input validation."""
    y = check_labels(y_true)
    s = check_scores(y_score, len(y))
    if window < 0:
        raise MetricInputError(f"window={window}: expected a non-negative sliding window")
    if _no_anomaly(y):
        return {k: float("nan") for k in RANGE_KEYS}
    return range_and_volume(y_true=y, y_score=s, window=window)


def affiliation_suite(*, y_true, y_pred) -> Dict[str, float]:
    y = check_labels(y_true)
    p = check_labels(y_pred, "y_pred")
    if len(p) != len(y):
        raise MetricInputError(f"y_pred has {len(p)} values but y_true has {len(y)}")
    if _no_anomaly(y):
        return {k: float("nan") for k in AFFILIATION_KEYS}
    return affiliation(y_true=y, y_pred=p)


def basic_suite(
    *, y_true, y_score, y_pred, point_adjust: bool = True, oracle: bool = True, seed: int = 0
) -> Dict[str, float]:
    """Point-wise P/R/F1 at the fitted threshold, AUC-ROC, AUC-PR, and the labelled extras:
    ``*_oracle`` (best F1 over test thresholds) and ``*_pa`` (point-adjusted), plus
    ``f1_pa_random``: PA-F1 of a random prediction with the same number of positives, which
    shows how much point adjustment alone inflates."""
    y = check_labels(y_true)
    s = check_scores(y_score, len(y))
    no_anomaly = y.sum() == 0
    if no_anomaly:
        warnings.warn(
            "test labels contain no anomaly: recall-based metrics are undefined and "
            "reported as NaN",
            RuntimeWarning,
            stacklevel=2,
        )
    out = dict(precision_recall_f1(y_true=y, y_pred=y_pred))
    out["false_alarm_rate"] = false_alarm_rate(y_true=y, y_pred=y_pred)
    ranking = ranking_metrics(y_true=y, y_score=s)
    out["auc_roc"], out["auc_pr"] = ranking["auc_roc"], ranking["auc_pr"]
    if oracle:
        out.update({f"{k}_oracle": ranking[k] for k in ("precision", "recall", "f1", "threshold")})
    if point_adjust:
        out.update({f"{k}_pa": v for k, v in point_adjusted_f1(y_true=y, y_pred=y_pred).items()})
        rng = np.random.default_rng(seed)
        random_pred = np.zeros(len(y), np.int8)
        random_pred[rng.choice(len(y), size=int(np.sum(y_pred)), replace=False)] = 1
        out["f1_pa_random"] = point_adjusted_f1(y_true=y, y_pred=random_pred)["f1"]
    if no_anomaly:
        # Without a positive, precision, recall and F1 (plain, oracle, point-adjusted) have no
        # meaning: missing, not 0. The false-alarm rate is the figure that remains.
        out.update({k: float("nan") for k in out if k.split("_")[0] in _PRF})
    return out


_PRF = ("precision", "recall", "f1")


def false_alarm_rate(*, y_true, y_pred) -> float:
    """Share of normal points predicted anomalous (false positives / normal points)."""
    y = check_labels(y_true)
    p = check_labels(y_pred, "y_pred")
    normal = y == 0
    return float(p[normal].mean()) if normal.any() else float("nan")


def full_suite(
    *,
    y_true,
    y_score,
    y_pred,
    window: int,
    point_adjust: bool = True,
    oracle: bool = True,
    seed: int = 0,
) -> Dict[str, float]:
    """Everything the MADCluster paper reports, on the honest protocol: threshold-free metrics
    (AUC-ROC/PR, R_AUC, VUS) on the continuous score; P/R/F1 and affiliation on ``y_pred``."""
    out = basic_suite(
        y_true=y_true,
        y_score=y_score,
        y_pred=y_pred,
        point_adjust=point_adjust,
        oracle=oracle,
        seed=seed,
    )
    out.update(range_suite(y_true=y_true, y_score=y_score, window=window))
    out.update(affiliation_suite(y_true=y_true, y_pred=y_pred))
    return out


# TSB-AD's keys as logged (test/tsbad/<name>; threshold-searched ones get an _oracle suffix)
TSBAD_NAMES = {
    "AUC-PR": "auc_pr",
    "AUC-ROC": "auc_roc",
    "VUS-PR": "vus_pr",
    "VUS-ROC": "vus_roc",
    "Standard-F1": "standard_f1",
    "PA-F1": "pa_f1",
    "Event-based-F1": "event_f1",
    "R-based-F1": "range_f1",
    "Affiliation-F": "affiliation_f",
}


def tsbad_suite(*, y_true, y_score, y_pred, window: int, oracle: bool = True) -> Dict[str, float]:
    """TSB-AD 1.5's metric set as ``tsbad/<name>``: its threshold-dependent keys on the run's
    own prediction ``y_pred`` (honest), and, with ``oracle``, also at TSB-AD's default best
    threshold on the test labels as ``tsbad/<name>_oracle`` (what TSB-AD's tables report)."""
    out = {
        f"tsbad/{TSBAD_NAMES[k]}": v
        for k, v in tsbad_get_metrics(y_score, y_true, window, pred=y_pred).items()
    }
    if oracle:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # said once above
            searched = tsbad_get_metrics(y_score, y_true, window)
        out.update({f"tsbad/{TSBAD_NAMES[k]}_oracle": searched[k] for k in THRESHOLD_KEYS})
    return out


def definition_suite(
    *,
    definition: str,
    y_true,
    y_score,
    y_pred,
    window: int,
    point_adjust: bool = True,
    oracle: bool = True,
    seed: int = 0,
) -> Dict[str, float]:
    """The run's test metrics for ``metrics.definition``: the full suite (vus 0.0.6
    definitions) always, plus TSB-AD's set for ``tsbad``."""
    if definition not in ("vus006", "tsbad"):
        raise MetricInputError(f"metrics.definition={definition!r}: expected vus006 or tsbad")
    out = full_suite(
        y_true=y_true,
        y_score=y_score,
        y_pred=y_pred,
        window=window,
        point_adjust=point_adjust,
        oracle=oracle,
        seed=seed,
    )
    if definition == "tsbad":
        out.update(
            tsbad_suite(y_true=y_true, y_score=y_score, y_pred=y_pred, window=window, oracle=oracle)
        )
    return out


def vus_get_metrics(score, labels, sliding_window: int) -> Dict[str, float]:
    """Every key of ``vus.metrics.get_metrics(score, labels, 'all', slidingWindow=...)`` (vus
    0.0.6), named and computed as there: affiliation on ``score > 0.5`` (strict), P/R/F and the
    range P/R/F at ``score > mean + 3 std`` (see ``vus_basic``). Where the package raises (labels
    without an anomaly), every key is reported missing (NaN) with a warning."""
    y = check_labels(labels, "labels")
    s = check_scores(score, len(y), "score")
    ranking = ranking_metrics(y_true=y, y_score=s)
    out = {"AUC_ROC": ranking["auc_roc"], "AUC_PR": ranking["auc_pr"]}
    r = range_suite(y_true=y, y_score=s, window=sliding_window)
    out.update(
        {
            "R_AUC_ROC": r["r_auc_roc"],
            "R_AUC_PR": r["r_auc_pr"],
            "VUS_ROC": r["vus_roc"],
            "VUS_PR": r["vus_pr"],
        }
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # range_suite has said it once
        a = affiliation_suite(y_true=y, y_pred=(s > 0.5).astype(np.int8))
    out.update(
        {
            "Affiliation_Precision": a["affiliation_precision"],
            "Affiliation_Recall": a["affiliation_recall"],
        }
    )
    if y.sum() == 0:
        out.update({k: float("nan") for k in VUS_BASIC_KEYS})
    else:
        out.update(basic_metric_new(y, score))
    return {k: out[k] for k in VUS_KEYS}
