"""What each logged metric is and where it is shown: one spec per key, declared once.

A spec names a key as a run logs it (``test/<name>`` under the point protocol, ``ref/<name>``
under the reference one; its variants follow it: ``<key>_entity_mean`` in per-entity mode, the
same key in a collection's series runs), its short label, what it is computed from (the
continuous score, threshold-free or at a threshold searched on it, or the 0/1 prediction), and
where it is shown:

- ``results``: a line of the console's results table at the end of a run, with its ``note``
  (madcluster_exp/pipeline/outputs.py);
- ``report``: a column of a sweep report's tables by default (``report.metrics``), and the
  metrics an Optuna search's report gives for the chosen trial (madcluster_exp/report/);
- ``rank``: its place among the metrics of the report's rank tables and of a collection run's
  per-series table (1 = the headline, which ranks the detectors; 0 = not there).

Tables show keys in the order of :data:`CATALOG`. A new metric: compute it in the suite
(metrics/suite.py), and declare its key here; tests/test_metric_catalog.py checks that every
key of a run's test/ and ref/ metrics is declared, and every declared key logged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

#: What a metric is computed from.
SCORE, PREDICTION = "score", "prediction"


@dataclass(frozen=True)
class MetricSpec:
    key: str  # as logged: test/vus_pr
    label: str  # short name in tables: VUS-PR
    input: str  # SCORE (threshold-free, or a threshold searched on the score) or PREDICTION
    note: str = ""  # what the console's results table says of it
    results: bool = False  # a line of the console's results table
    report: bool = False  # a column of the reports' tables by default
    rank: int = 0  # place among the rank tables' metrics (1 = the headline; 0 = not there)
    higher_is_better: Optional[bool] = True  # None: not a quality (a threshold, a baseline)


_AT_FIT = "point-wise, at the fitted threshold"
_REF_BINARISED = "reference protocol, on the oracle-binarised prediction"

CATALOG: Tuple[MetricSpec, ...] = (
    # point protocol (honest): scores and thresholds fitted without test labels
    MetricSpec("test/precision", "Precision", PREDICTION, _AT_FIT, results=True),
    MetricSpec("test/recall", "Recall", PREDICTION, _AT_FIT, results=True),
    MetricSpec("test/f1", "F1", PREDICTION, f"{_AT_FIT} (headline)", results=True, report=True),
    MetricSpec(
        "test/false_alarm_rate",
        "FAR",
        PREDICTION,
        "share of normal points flagged, at the fitted threshold",
        results=True,
        higher_is_better=False,
    ),
    MetricSpec(
        "test/auc_roc", "AUC-ROC", SCORE, "threshold-free", results=True, report=True, rank=3
    ),
    MetricSpec(
        "test/auc_pr",
        "AUC-PR",
        SCORE,
        "threshold-free (average precision)",
        results=True,
        report=True,
        rank=2,
    ),
    MetricSpec("test/r_auc_roc", "R-AUC-ROC", SCORE, "threshold-free, range-based", results=True),
    MetricSpec("test/r_auc_pr", "R-AUC-PR", SCORE, "threshold-free, range-based", results=True),
    MetricSpec(
        "test/vus_roc",
        "VUS-ROC",
        SCORE,
        "threshold-free, volume under the surface",
        results=True,
        report=True,
    ),
    MetricSpec(
        "test/vus_pr",
        "VUS-PR",
        SCORE,
        "threshold-free, volume under the surface",
        results=True,
        report=True,
        rank=1,
    ),
    MetricSpec(
        "test/affiliation_precision",
        "Aff-P",
        PREDICTION,
        "at the fitted threshold",
        results=True,
        report=True,
    ),
    MetricSpec(
        "test/affiliation_recall",
        "Aff-R",
        PREDICTION,
        "at the fitted threshold",
        results=True,
        report=True,
    ),
    MetricSpec(
        "test/f1_oracle",
        "F1 (oracle)",
        SCORE,
        "ORACLE: best threshold chosen on test labels",
        results=True,
        report=True,
    ),
    MetricSpec("test/f1_pa", "PA-F1", PREDICTION, "POINT-ADJUSTED (inflated)", results=True),
    MetricSpec(
        "test/f1_pa_random",
        "PA-F1 (random)",
        PREDICTION,
        "POINT-ADJUSTED random prediction, same #positives",
        results=True,
        higher_is_better=None,
    ),
    MetricSpec("test/precision_oracle", "Precision (oracle)", SCORE),
    MetricSpec("test/recall_oracle", "Recall (oracle)", SCORE),
    MetricSpec("test/threshold_oracle", "threshold (oracle)", SCORE, higher_is_better=None),
    MetricSpec("test/precision_pa", "PA-precision", PREDICTION),
    MetricSpec("test/recall_pa", "PA-recall", PREDICTION),
    # reference protocol (the MADCluster code's evaluation): window scores, oracle threshold
    MetricSpec(
        "ref/f1_oracle",
        "F1 (oracle)",
        SCORE,
        "REFERENCE PROTOCOL: windows, ORACLE threshold",
        results=True,
    ),
    MetricSpec("ref/auc_roc", "AUC-ROC", SCORE, "reference protocol, window scores", results=True),
    MetricSpec("ref/auc_pr", "AUC-PR", SCORE, "reference protocol, window scores", results=True),
    MetricSpec("ref/r_auc_roc", "R-AUC-ROC", PREDICTION, _REF_BINARISED, results=True),
    MetricSpec("ref/r_auc_pr", "R-AUC-PR", PREDICTION, _REF_BINARISED, results=True),
    MetricSpec("ref/vus_roc", "VUS-ROC", PREDICTION, _REF_BINARISED, results=True),
    MetricSpec("ref/vus_pr", "VUS-PR", PREDICTION, _REF_BINARISED, results=True),
    MetricSpec("ref/affiliation_precision", "Aff-P", PREDICTION, _REF_BINARISED, results=True),
    MetricSpec("ref/affiliation_recall", "Aff-R", PREDICTION, _REF_BINARISED, results=True),
    MetricSpec("ref/precision_oracle", "Precision (oracle)", SCORE),
    MetricSpec("ref/recall_oracle", "Recall (oracle)", SCORE),
    MetricSpec("ref/threshold_oracle", "threshold (oracle)", SCORE, higher_is_better=None),
)


def spec(key: str) -> MetricSpec:
    """The spec of a logged key."""
    for s in CATALOG:
        if s.key == key:
            return s
    raise KeyError(f"{key!r} is not in the metric catalog (madcluster_exp/metrics/catalog.py)")


def results_specs() -> List[MetricSpec]:
    """The console results table's lines, in order."""
    return [s for s in CATALOG if s.results]


def report_keys() -> List[str]:
    """The reports' default metrics (``report.metrics``), in order."""
    return [s.key for s in CATALOG if s.report]


def ranked() -> List[MetricSpec]:
    """The rank tables' metrics, the headline first."""
    return sorted((s for s in CATALOG if s.rank), key=lambda s: s.rank)


def headline() -> MetricSpec:
    """The metric that ranks detectors (rank 1)."""
    return ranked()[0]
