"""From score components to logged metrics, under one of two protocols.

``point`` (default, honest): one score per time point; the score combiner and the threshold see
validation scores only (other threshold families are tagged); threshold-free metrics (AUC,
R_AUC, VUS) on the continuous score, P/R/F1 and affiliation on the thresholded prediction.
Keys ``test/<metric>``; ``metrics.definition=tsbad`` adds TSB-AD's set as ``test/tsbad/<metric>``
(``_oracle`` where TSB-AD searches the threshold on the test labels).

``reference`` (the MADCluster code's evaluation, for comparison with published numbers): one
score per stride-1 window, window label = any anomaly inside, the best-F1 threshold chosen on
test labels, prediction ``score > threshold`` (strict, as that code), and R_AUC, VUS and
affiliation computed on that 0/1 prediction. Keys ``ref/<metric>`` so the two never mix.

``val_injected/<metric>`` (with ``search.objective=val_injected_vus_pr``): threshold-free metrics
of the score on a copy of the validation split with injected anomalies (data/inject.py), the
score combined by the rule fitted on the clean validation split. A search's objective; no test
data involved.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Optional

import numpy as np

from madcluster_exp.config import combine_rule
from madcluster_exp.metrics import affiliation_suite, range_suite
from madcluster_exp.metrics.point import ranking_metrics
from madcluster_exp.metrics.suite import definition_suite
from madcluster_exp.scoring import ScoreCombiner, build_threshold
from madcluster_exp.scoring.thresholds import fit_threshold


@dataclass
class Evaluation:
    metrics: Dict[str, float]
    arrays: Dict[str, np.ndarray]  # what scores.npz keeps
    score_rule: str
    threshold_family: str
    #: What scores new data as this evaluation scored test (point protocol): the combiner's and
    #: the threshold's fitted states, taken before the threshold saw any test score.
    scorer: Optional[dict] = None


def evaluate_point(
    cfg,
    val_comps: Dict[str, np.ndarray],
    test_comps: Dict[str, np.ndarray],
    test_labels: np.ndarray,
) -> Evaluation:
    combiner = ScoreCombiner(combine_rule(cfg)).fit(val_comps)
    val = combiner.combine(val_comps)
    test = combiner.combine(test_comps)
    threshold = fit_threshold(build_threshold(cfg.threshold), val, test, test_labels)
    scorer = {"combiner": combiner.state(), "threshold": threshold.state()}
    pred = threshold.predict(test)
    suite = point_metrics(test_labels, test, pred, cfg.metrics, int(cfg.seed))
    metrics = {f"test/{k}": v for k, v in suite.items()}
    metrics["threshold/value"] = threshold.value
    arrays = {
        "protocol": np.array("point"),
        "test_score": test,
        "test_label": test_labels,
        "test_pred": pred,
        "val_score": val,
        "threshold": np.float64(threshold.value),
        **{f"test_component_{k}": v for k, v in test_comps.items()},
        **{f"val_component_{k}": v for k, v in val_comps.items()},
    }
    return Evaluation(metrics, arrays, combiner.effective_rule(val_comps), threshold.family, scorer)


def point_metrics(labels, score, pred, mcfg, seed: int) -> Dict[str, float]:
    return definition_suite(
        definition=mcfg.definition,
        y_true=labels,
        y_score=score,
        y_pred=pred,
        window=int(mcfg.range_window),
        point_adjust=mcfg.point_adjust,
        oracle=mcfg.oracle,
        seed=seed,
    )


def evaluate_reference(
    cfg, val_windows: Dict[str, np.ndarray], test_windows: Dict[str, np.ndarray], labels: np.ndarray
) -> Evaluation:
    combiner = ScoreCombiner(combine_rule(cfg)).fit(val_windows)
    score = combiner.combine(test_windows)
    metrics, pred, thr = reference_metrics(labels, score, int(cfg.metrics.range_window))
    arrays = {
        "protocol": np.array("reference"),
        "window_score": score,
        "window_label": labels,
        "window_pred": pred,
        "threshold": np.float64(thr),
        **{f"window_component_{k}": v for k, v in test_windows.items()},
    }
    return Evaluation(
        {f"ref/{k}": v for k, v in metrics.items()},
        arrays,
        combiner.effective_rule(val_windows),
        "oracle",
    )


def reference_metrics(labels: np.ndarray, score: np.ndarray, range_window: int):
    """(metrics, binarised prediction, threshold) as the MADCluster reference evaluates."""
    ranking = ranking_metrics(y_true=labels, y_score=score)
    thr = ranking["threshold"]
    pred = (score > thr).astype(np.int8)
    out = {
        "precision_oracle": ranking["precision"],
        "recall_oracle": ranking["recall"],
        "f1_oracle": ranking["f1"],
        "auc_roc": ranking["auc_roc"],
        "auc_pr": ranking["auc_pr"],
        "threshold_oracle": thr,
    }
    out.update(range_suite(y_true=labels, y_score=pred.astype(np.float64), window=range_window))
    out.update(affiliation_suite(y_true=labels, y_pred=pred))
    return out, pred, thr


def injected_score(
    cfg, val_comps: Dict[str, np.ndarray], injected_comps: Dict[str, np.ndarray]
) -> np.ndarray:
    """The score of the injected validation copy, combined as the test score is: by the rule
    fitted on the clean validation scores (the injected copy fits nothing)."""
    return ScoreCombiner(combine_rule(cfg)).fit(val_comps).combine(injected_comps)


def injected_metrics(labels: np.ndarray, score: np.ndarray, range_window: int) -> Dict[str, float]:
    """``val_injected/{auc_roc,auc_pr,r_auc_roc,r_auc_pr,vus_roc,vus_pr}``: ranking metrics,
    unchanged by any increasing rescaling of the score."""
    ranking = ranking_metrics(y_true=labels, y_score=score)
    out = {"auc_roc": ranking["auc_roc"], "auc_pr": ranking["auc_pr"]}
    out.update(range_suite(y_true=labels, y_score=score, window=range_window))
    return {f"val_injected/{k}": float(v) for k, v in out.items()}
