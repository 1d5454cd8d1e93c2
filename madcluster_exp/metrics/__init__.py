"""Metrics computed by the project itself; inputs are validated. No model code here."""
from madcluster_exp.metrics.point import (MetricInputError, auc_pr, auc_roc, best_f1,
                                          point_adjust, point_adjusted_f1, precision_recall_f1)
from madcluster_exp.metrics.suite import basic_suite

__all__ = ["MetricInputError", "auc_pr", "auc_roc", "basic_suite", "best_f1", "point_adjust",
           "point_adjusted_f1", "precision_recall_f1"]
