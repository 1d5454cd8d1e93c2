"""Metrics computed by the project itself; inputs are validated. No model code here."""

from madcluster_exp.metrics.affiliation import affiliation
from madcluster_exp.metrics.period import find_length_rank, resolve_range_window, tsbad_vus_window
from madcluster_exp.metrics.point import (
    MetricInputError,
    auc_pr,
    auc_roc,
    best_f1,
    point_adjust,
    point_adjusted_f1,
    precision_recall_f1,
)
from madcluster_exp.metrics.suite import (
    affiliation_suite,
    basic_suite,
    full_suite,
    range_suite,
    vus_get_metrics,
)
from madcluster_exp.metrics.tsbad import tsbad_get_metrics

__all__ = [
    "MetricInputError",
    "affiliation",
    "affiliation_suite",
    "auc_pr",
    "auc_roc",
    "basic_suite",
    "best_f1",
    "find_length_rank",
    "full_suite",
    "point_adjust",
    "point_adjusted_f1",
    "precision_recall_f1",
    "range_suite",
    "resolve_range_window",
    "tsbad_get_metrics",
    "tsbad_vus_window",
    "vus_get_metrics",
]
