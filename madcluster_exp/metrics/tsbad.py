"""TSB-AD 1.5's metric set (``TSB_AD.evaluation.metrics.get_metrics``), exact and fast.

Keys and definitions, quirks included (they are the definition the benchmark's tables use):

- AUC-PR = sklearn's average precision, AUC-ROC = sklearn's ROC AUC;
- VUS-PR, VUS-ROC = vus 0.0.6's 'opt' volumes (TSB-AD ships the same code): ``range_auc``;
- without ``pred`` (TSB-AD's default), every threshold-dependent key is the best value over
  thresholds on the test labels, i.e. an oracle:
  - Standard-F1: max over sklearn's precision-recall curve of 2PR / (P + R + 1e-5);
  - PA-F1, Event-based-F1, R-based-F1, Affiliation-F: the first maximum over the 100
    thresholds ``np.linspace(min, max, 100)`` of the score, predicting ``score > t`` (strict,
    so the last threshold predicts nothing). The maximum is Python's ``max`` over the list,
    which keeps a leading NaN: a constant score has Affiliation-F NaN;
- with ``pred``, each key is computed once on that 0/1 prediction.

Per prediction:

- PA-F1: F1 after point adjustment; TSB-AD's backward fill stops at index 1, so a true segment
  that starts at index 0 and is first hit later keeps point 0 unpredicted;
- Event-based-F1: 2 R_e P_t / (R_e + P_t + 1e-15), R_e = share of true events with a predicted
  point, P_t = point precision (0 without prediction). TSB-AD's event finder ends an event that
  runs to the series end one point early (so a last event of one point is never detected);
- R-based-F1: range F1 with alpha = 0.2 (``range_pr``); TSB-AD's range finder sees no range in
  an all-ones prediction;
- Affiliation-F: 2 P R / (P + R + 1e-15) of the affiliation precision and recall
  (``affiliation``); NaN without a predicted event.

TSB-AD raises for labels without an anomaly or without a normal point (its VUS cannot segment
them); here the keys it would not reach are reported missing (NaN) with a warning.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from madcluster_exp.metrics.affiliation import AffiliationCurve, affiliation_events
from madcluster_exp.metrics.point import (
    MetricInputError,
    _pr_curve,
    _prf,
    check_labels,
    check_scores,
    ranking_metrics,
)
from madcluster_exp.metrics.range_auc import range_and_volume
from madcluster_exp.metrics.range_pr import range_recall, runs

TSBAD_KEYS = (
    "AUC-PR",
    "AUC-ROC",
    "VUS-PR",
    "VUS-ROC",
    "Standard-F1",
    "PA-F1",
    "Event-based-F1",
    "R-based-F1",
    "Affiliation-F",
)
THRESHOLD_KEYS = TSBAD_KEYS[4:]
N_THRESHOLDS = 100  # TSB-AD's np.linspace(score.min(), score.max(), 100)
EPS = 1e-15  # basic_metricor.eps


@dataclass
class _Truth:
    """Everything about the labels that every prediction is compared with."""

    y: np.ndarray
    n_pos: int
    cum: np.ndarray  # cumulative count of anomalous points, leading 0
    starts: np.ndarray  # true ranges [starts, ends)
    ends: np.ndarray
    event_ends: np.ndarray  # TSB-AD's events: the one reaching the series end loses a point

    @classmethod
    def of(cls, y: np.ndarray) -> "_Truth":
        starts, ends = runs(y)
        event_ends = ends.copy()
        if event_ends[-1] == len(y):
            event_ends[-1] -= 1
        return cls(y, int(y.sum()), np.r_[0, np.cumsum(y)], starts, ends, event_ends)


def _f1_keys(t: _Truth, pred: np.ndarray) -> Tuple[float, float, float, float]:
    """(PA-F1, Event-based-F1, R-based-F1, Affiliation-F) of one 0/1 (bool) prediction."""
    n = len(pred)
    p_cum = np.r_[0, np.cumsum(pred)]
    n_pred = int(p_cum[-1])
    tp = int(np.dot(t.y, pred))
    seg_hit = p_cum[t.ends] > p_cum[t.starts]
    tp_pa = int(np.sum((t.ends - t.starts)[seg_hit]))
    if t.starts[0] == 0 and seg_hit[0] and not pred[0]:
        tp_pa -= 1  # TSB-AD's backward fill never reaches index 0
    pa_f1 = _prf(tp_pa, n_pred - tp, t.n_pos - tp_pa)[2]
    rec_e = np.count_nonzero(p_cum[t.event_ends] > p_cum[t.starts]) / len(t.starts)
    prec_t = tp / n_pred if n_pred else 0.0
    event_f1 = 2 * rec_e * prec_t / (rec_e + prec_t + EPS)
    ps, pe = runs(pred)
    # TSB-AD's range finder (np.diff based) sees no range in an all-ones prediction
    ranges = (ps, pe) if n_pred < n else (ps[:0], pe[:0])
    rf = _range_f1(t, ranges, p_cum[t.ends] - p_cum[t.starts])
    aff = affiliation_events(
        t.starts.astype(float), t.ends.astype(float), ps.astype(float), pe.astype(float), n
    )
    return (
        pa_f1,
        event_f1,
        rf,
        _affiliation_f(aff["affiliation_precision"], aff["affiliation_recall"]),
    )


def _range_f1(t: _Truth, ranges, hits) -> float:
    """R-based-F1 of predicted ranges (starts, ends) that hit each true range ``hits`` times."""
    r_recall = range_recall((t.starts, t.ends), ranges, hits, 0.2)[0]
    labelled = t.cum[ranges[1]] - t.cum[ranges[0]]
    r_precision = range_recall(ranges, (t.starts, t.ends), labelled, 0)[0]
    if r_recall + r_precision == 0:
        return 0.0
    return float(2 * r_recall * r_precision / (r_precision + r_recall))


def _affiliation_f(precision: float, recall: float) -> float:
    return float(2 * precision * recall / (precision + recall + EPS))


def _standard_f1_oracle(y: np.ndarray, s: np.ndarray) -> float:
    tps, fps, _ = _pr_curve(y, s)
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    f1 = 2 * (precision * recall) / (precision + recall + 0.00001)
    return float(max(np.max(f1), 0.0))  # sklearn appends (precision 1, recall 0): F1 0


def _count_above(kappa: np.ndarray, groups=None, n_groups: int = 1) -> np.ndarray:
    """[n_groups, K]: how many points of each group are predicted (kappa > k) at each k."""
    key = kappa if groups is None else groups * (N_THRESHOLDS + 1) + kappa
    hist = np.bincount(key, minlength=n_groups * (N_THRESHOLDS + 1))
    hist = hist.reshape(n_groups, N_THRESHOLDS + 1)
    return np.cumsum(hist[:, ::-1], axis=1)[:, ::-1][:, 1:]


def _range_max(kappa: np.ndarray, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """max kappa over each [start, end); -1 for an empty range."""
    padded = np.r_[kappa, -1]
    out = np.maximum.reduceat(padded, np.stack([starts, ends], axis=1).ravel())[::2]
    return np.where(ends > starts, out, -1)


def _prf_curve(tp, fp, fn):
    """Vectorised ``_prf``: F1 of count arrays, 0 where undefined."""
    with np.errstate(invalid="ignore", divide="ignore"):
        precision = np.where(tp + fp > 0, tp / (tp + fp), 0.0)
        recall = np.where(tp + fn > 0, tp / (tp + fn), 0.0)
        return np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)


def _oracle_keys(t: _Truth, s: np.ndarray, raw: np.ndarray) -> Dict[str, float]:
    """Best value of each threshold-dependent key over TSB-AD's 100 thresholds. Each point is
    predicted at the thresholds k < kappa_i, so point counts at every k are one histogram;
    only the predicted ranges are found threshold by threshold."""
    thresholds = np.linspace(raw.min(), raw.max(), N_THRESHOLDS)  # in the score's own dtype
    kappa = np.searchsorted(thresholds.astype(np.float64), s, side="left")  # predicted: k < kappa
    k = np.arange(N_THRESHOLDS)
    tp = _count_above(kappa[t.y == 1])[0]
    n_pred = _count_above(kappa)[0]
    seg_hit = _range_max(kappa, t.starts, t.ends)[:, None] > k
    tp_pa = (t.ends - t.starts) @ seg_hit
    if t.starts[0] == 0:
        tp_pa = tp_pa - (seg_hit[0] & (kappa[0] <= k))  # backward fill never reaches index 0
    pa_f1 = _prf_curve(tp_pa, n_pred - tp, t.n_pos - tp_pa)
    rec_e = np.count_nonzero(_range_max(kappa, t.starts, t.event_ends)[:, None] > k, axis=0)
    rec_e = rec_e / len(t.starts)
    with np.errstate(invalid="ignore", divide="ignore"):
        prec_t = np.where(n_pred > 0, tp / n_pred, 0.0)
    event_f1 = 2 * rec_e * prec_t / (rec_e + prec_t + EPS)
    segment = np.cumsum(np.diff(np.r_[0, t.y]) == 1)[t.y == 1] - 1  # true range of each point
    hits = _count_above(kappa[t.y == 1], segment, len(t.starts))
    curve = AffiliationCurve(
        t.starts.astype(float), t.ends.astype(float), len(s), kappa, N_THRESHOLDS
    )
    rf, aff = [], []
    for i in range(N_THRESHOLDS):
        edges = np.flatnonzero(np.diff(np.concatenate(([False], kappa > i, [False]))))
        ps, pe = edges[::2], edges[1::2]
        rf.append(_range_f1(t, (ps, pe), hits[:, i]))
        aff.append(
            _affiliation_f(curve.precision[i], curve.recall(ps.astype(float), pe.astype(float)))
        )
    best = {
        "PA-F1": pa_f1.tolist(),
        "Event-based-F1": event_f1.tolist(),
        "R-based-F1": rf,
        "Affiliation-F": aff,
    }
    # Python's max over the list, as TSB-AD: a leading NaN (constant score) stays
    return {
        "Standard-F1": _standard_f1_oracle(t.y, s),
        **{key: float(max(values)) for key, values in best.items()},
    }


def tsbad_get_metrics(
    score, labels, sliding_window: int = 100, pred: Optional[np.ndarray] = None
) -> Dict[str, float]:
    """Every key of TSB-AD 1.5's ``get_metrics(score, labels, slidingWindow, pred)``, in its
    order. Without ``pred`` the threshold-dependent keys are oracles (best threshold on the
    labels, TSB-AD's convention); with a 0/1 ``pred`` they are that prediction's."""
    y = check_labels(labels, "labels")
    s = check_scores(score, len(y), "score")
    if sliding_window < 0:
        raise MetricInputError(f"sliding_window={sliding_window}: expected a non-negative window")
    raw = np.asarray(score)
    raw = raw if raw.dtype.kind == "f" else s
    ranking = ranking_metrics(y_true=y, y_score=s)
    out = {"AUC-PR": ranking["auc_pr"], "AUC-ROC": ranking["auc_roc"]}
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        what = "no anomaly" if n_pos == 0 else "no normal point"
        warnings.warn(
            f"labels contain {what}: TSB-AD's VUS and F1 keys are undefined there and "
            "reported as missing (NaN)",
            RuntimeWarning,
            stacklevel=2,
        )
        return {**out, **{k: float("nan") for k in TSBAD_KEYS[2:]}}
    volume = range_and_volume(y_true=y, y_score=s, window=int(sliding_window))
    out.update({"VUS-PR": volume["vus_pr"], "VUS-ROC": volume["vus_roc"]})
    t = _Truth.of(y.astype(np.int64))
    if pred is None:
        out.update(_oracle_keys(t, s, raw))
    else:
        p = check_labels(pred, "pred")
        if len(p) != len(y):
            raise MetricInputError(f"pred has {len(p)} values but labels has {len(y)}")
        p = p.astype(bool)
        tp = int(np.dot(t.y, p))
        n_pred = int(p.sum())
        out["Standard-F1"] = _prf(tp, n_pred - tp, n_pos - tp)[2]
        out.update({k: float(v) for k, v in zip(THRESHOLD_KEYS[1:], _f1_keys(t, p))})
    return {k: out[k] for k in TSBAD_KEYS}
