"""From score components to logged metrics, under one of three protocols.

``point`` (default, honest): one score per time point; the score combiner and the threshold see
validation scores only (other threshold families are tagged); threshold-free metrics (AUC,
R_AUC, VUS) on the continuous score, P/R/F1 and affiliation on the thresholded prediction.
Keys ``test/<metric>``; ``metrics.definition=tsbad`` adds TSB-AD's set as ``test/tsbad/<metric>``
(``_oracle`` where TSB-AD searches the threshold on the test labels).

``reference`` (the MADCluster code's evaluation, for comparison with published numbers): one
score per stride-1 window, window label = any anomaly inside, the best-F1 threshold chosen on
test labels, prediction ``score > threshold`` (strict, as that code), and R_AUC, VUS and
affiliation computed on that 0/1 prediction. Keys ``ref/<metric>`` so the two never mix.

``tsbad`` (TSB-AD's benchmark, ``conf/protocol/tsbad.yaml``): evaluated as ``point`` (the same
keys, the threshold fitted on validation scores), on the whole series (the preset's
``dataset.test_part=whole``), with TSB-AD's metric set and per-series window (the preset's
``metrics.definition=tsbad``, ``metrics.range_window=auto``); its one difference in the job: a
classical detector TSB-AD has runs as TSB-AD ran it (:attr:`EvaluationProtocol.tsbad_detectors`,
``pipeline/kinds.py``).

The VUS / range window (``metrics.range_window``) is resolved per scored series by the unit
(an integer, or ``auto``: TSB-AD's period rule, then logged as the metric ``range_window``) and
handed to :meth:`~EvaluationProtocol.evaluate`; scores.npz keeps it. Pooled entities are
measured at the median of their windows (all the same unless ``auto``).

``val_injected/<metric>`` (with ``search.objective=val_injected_vus_pr``): threshold-free metrics
of the score on a copy of the validation split with injected anomalies (data/inject.py), the
score combined by the rule fitted on the clean validation split. A search's objective; no test
data involved.

The job asks a protocol object (:func:`protocol_for`) for everything that differs between
them: how the detector scores (window means or not), which threshold is effective, how scores
become an :class:`Evaluation`, and how the evaluations of several entities pool into one. It
never branches on ``cfg.protocol`` itself.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, Dict, Optional, Sequence, Tuple, Type, Union

import numpy as np

from madcluster_exp.config import ConfigError, combine_rule
from madcluster_exp.evaluation.sanity import score_spread
from madcluster_exp.metrics import affiliation_suite, range_suite
from madcluster_exp.metrics.point import ranking_metrics
from madcluster_exp.metrics.suite import definition_suite
from madcluster_exp.scoring import ScoreCombiner, build_threshold
from madcluster_exp.scoring.score import window_labels
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
    range_window: int,
    protocol: str = "point",
) -> Evaluation:
    combiner = ScoreCombiner(combine_rule(cfg)).fit(val_comps)
    val = combiner.combine(val_comps)
    test = combiner.combine(test_comps)
    threshold = fit_threshold(build_threshold(cfg.threshold), val, test, test_labels)
    scorer = {"combiner": combiner.state(), "threshold": threshold.state()}
    pred = threshold.predict(test)
    suite = point_metrics(test_labels, test, pred, cfg.metrics, int(cfg.seed), range_window)
    metrics = {f"test/{k}": v for k, v in suite.items()}
    metrics["threshold/value"] = threshold.value
    arrays = {
        "protocol": np.array(protocol),
        "range_window": np.int64(range_window),
        "test_score": test,
        "test_label": test_labels,
        "test_pred": pred,
        "val_score": val,
        "threshold": np.float64(threshold.value),
        **{f"test_component_{k}": v for k, v in test_comps.items()},
        **{f"val_component_{k}": v for k, v in val_comps.items()},
    }
    return Evaluation(metrics, arrays, combiner.effective_rule(val_comps), threshold.family, scorer)


def point_metrics(labels, score, pred, mcfg, seed: int, range_window: int) -> Dict[str, float]:
    return definition_suite(
        definition=mcfg.definition,
        y_true=labels,
        y_score=score,
        y_pred=pred,
        window=int(range_window),
        point_adjust=mcfg.point_adjust,
        oracle=mcfg.oracle,
        seed=seed,
    )


def evaluate_reference(
    cfg,
    val_windows: Dict[str, np.ndarray],
    test_windows: Dict[str, np.ndarray],
    labels: np.ndarray,
    range_window: int,
) -> Evaluation:
    combiner = ScoreCombiner(combine_rule(cfg)).fit(val_windows)
    score = combiner.combine(test_windows)
    metrics, pred, thr = reference_metrics(labels, score, int(range_window))
    arrays = {
        "protocol": np.array("reference"),
        "range_window": np.int64(range_window),
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


#: What a detector's ``score(split)`` returns: {component: point scores}, or with window means
#: (reference protocol) that, {component: window scores} and the window starts.
Components = Dict[str, np.ndarray]
ScoreOutput = Union[Components, Tuple[Components, Components, np.ndarray]]


@dataclass(frozen=True, eq=False)
class EvaluationProtocol(ABC):
    """What differs between the protocols, asked by the job (which never branches on them)."""

    cfg: object  # the run's resolved config

    name: ClassVar[str]
    #: Whether scoring also returns each window's mean score (``score_split(window_means=)``).
    window_means: ClassVar[bool]
    #: The scores.npz array holding the score the metrics (and ``score/*`` spread) are of.
    score_array_key: ClassVar[str]
    #: The score, label and prediction arrays pooled over entities, in that order.
    pooled_keys: ClassVar[Tuple[str, str, str]]
    #: Whether a classical backbone TSB-AD's benchmark has (config.schema.TSBAD_DETECTORS) runs
    #: as TSB-AD ran it: fitted on the whole series it scores, TSB-AD's hyper-parameters.
    tsbad_detectors: ClassVar[bool] = False

    @property
    def threshold_kind(self) -> str:
        """The threshold the metrics are taken at (``threshold.kind`` tag)."""
        return self.cfg.threshold.kind

    def point_scores(self, out: ScoreOutput) -> Dict[str, np.ndarray]:
        """The per-point components of what ``score(split)`` returned."""
        return out[0] if self.window_means else out

    @abstractmethod
    def evaluate(
        self,
        val_out: ScoreOutput,
        test_out: ScoreOutput,
        test_labels: np.ndarray,
        window: int,
        range_window: int,
    ) -> Evaluation:
        """The metrics and arrays of one model's scores: validation scores fit what they may,
        test scores are measured; ``window`` is the data window (window labels),
        ``range_window`` the VUS / range window of this series (resolved by the unit)."""

    @abstractmethod
    def pooled_metrics(self, pooled: Dict[str, np.ndarray], range_window: int) -> Dict[str, float]:
        """The headline metrics of the scores, labels and predictions pooled over entities."""

    def pool(self, evaluations: Sequence[Evaluation], entities: Sequence[Optional[str]]):
        """(Evaluation, table): the concatenated scores and predictions of all entities give
        the headline ``test/<m>`` (``ref/<m>``) and the score's spread (``sanity/*``), the mean
        over entities ``<m>_entity_mean``; the table (a DataFrame) holds each entity's metrics
        (per_entity.csv)."""
        import pandas as pd

        evs = list(evaluations)
        table = pd.DataFrame([{"entity": e, **ev.metrics} for e, ev in zip(entities, evs)])
        pooled = {k: np.concatenate([e.arrays[k] for e in evs]) for k in self.pooled_keys}
        window = pooled_window(evs)
        metrics = self.pooled_metrics(pooled, window)
        if not isinstance(self.cfg.metrics.range_window, int):  # a rule: log what it gave
            metrics["range_window"] = float(window)
        if "val_injected_score" in evs[0].arrays:
            for k in ("val_injected_score", "val_injected_label"):
                pooled[k] = np.concatenate([e.arrays[k] for e in evs])
            metrics.update(
                injected_metrics(pooled["val_injected_label"], pooled["val_injected_score"], window)
            )
        metrics.update(entity_means(evs[0].metrics, table))
        metrics.update(score_spread(pooled[self.score_array_key]))  # each entity's: the table
        arrays = {
            "protocol": evs[0].arrays["protocol"],
            "range_window": np.int64(window),
            **pooled,
            "threshold": np.array([float(e.arrays["threshold"]) for e in evs]),
        }
        rules = {e.score_rule for e in evs}
        rule = rules.pop() if len(rules) == 1 else "mixed"
        return Evaluation(metrics, arrays, rule, evs[0].threshold_family), table


def pooled_window(evaluations: Sequence[Evaluation]) -> int:
    """The range window of pooled entities: the median of theirs (rounded; one value unless
    each series has its own, ``metrics.range_window=auto``)."""
    windows = [int(e.arrays["range_window"]) for e in evaluations]
    return int(round(float(np.median(windows))))


def entity_means(keys, table) -> Dict[str, float]:
    """``<m>_entity_mean`` for each test, reference and injected metric ``m`` of ``keys``."""
    return {
        f"{key}_entity_mean": float(np.nanmean(table[key].to_numpy(dtype=float)))
        for key in keys
        if key.startswith(("test/", "ref/", "val_injected/"))
    }


@dataclass(frozen=True, eq=False)
class PointProtocol(EvaluationProtocol):
    """One score per time point; combiner and threshold fitted on validation scores."""

    name: ClassVar[str] = "point"
    window_means: ClassVar[bool] = False
    score_array_key: ClassVar[str] = "test_score"
    pooled_keys: ClassVar[Tuple[str, str, str]] = ("test_score", "test_label", "test_pred")

    def evaluate(self, val_out, test_out, test_labels, window, range_window):
        return evaluate_point(self.cfg, val_out, test_out, test_labels, range_window, self.name)

    def pooled_metrics(self, pooled, range_window):
        m = point_metrics(
            pooled["test_label"],
            pooled["test_score"],
            pooled["test_pred"],
            self.cfg.metrics,
            int(self.cfg.seed),
            range_window,
        )
        return {f"test/{k}": v for k, v in m.items()}


@dataclass(frozen=True, eq=False)
class ReferenceProtocol(EvaluationProtocol):
    """One score per stride-1 window, thresholded at the test-label best F1 (an oracle)."""

    name: ClassVar[str] = "reference"
    window_means: ClassVar[bool] = True
    score_array_key: ClassVar[str] = "window_score"
    pooled_keys: ClassVar[Tuple[str, str, str]] = ("window_score", "window_label", "window_pred")

    @property
    def threshold_kind(self) -> str:
        return "oracle"

    def evaluate(self, val_out, test_out, test_labels, window, range_window):
        labels = window_labels(test_labels, test_out[2], window)
        return evaluate_reference(self.cfg, val_out[1], test_out[1], labels, range_window)

    def pooled_metrics(self, pooled, range_window):
        m, _, _ = reference_metrics(pooled["window_label"], pooled["window_score"], range_window)
        return {f"ref/{k}": v for k, v in m.items()}


@dataclass(frozen=True, eq=False)
class TSBADProtocol(PointProtocol):
    """TSB-AD's benchmark: evaluated as the point protocol (test/ keys, the threshold fitted on
    validation scores) on what its preset sets (the whole series, TSB-AD's metric set and
    per-series window); TSB-AD's classical detectors run as TSB-AD ran them."""

    name: ClassVar[str] = "tsbad"
    tsbad_detectors: ClassVar[bool] = True


PROTOCOLS: Dict[str, Type[EvaluationProtocol]] = {
    p.name: p for p in (PointProtocol, ReferenceProtocol, TSBADProtocol)
}


def protocol_for(cfg) -> EvaluationProtocol:
    """The protocol object of a config (``protocol``): the one place that decides it."""
    try:
        return PROTOCOLS[cfg.protocol](cfg)
    except KeyError:
        raise ConfigError(
            f"protocol={cfg.protocol}: expected one of {', '.join(PROTOCOLS)}"
        ) from None


def effective_threshold_kind(cfg) -> str:
    """The threshold a run's metrics are taken at: ``threshold.kind``, except the reference
    protocol's, which always thresholds at the test-label best F1 (an oracle)."""
    return protocol_for(cfg).threshold_kind
