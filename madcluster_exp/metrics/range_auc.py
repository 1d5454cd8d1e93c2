"""R_AUC_ROC / R_AUC_PR and VUS_ROC / VUS_PR, exactly as ``vus`` 0.0.6 computes them, fast.

Definitions (traps included) are in ``docs/metrics.md`` (shared). The package loops over 250
thresholds x (W + 1) windows in Python, each pass over the whole series; here one sort gives the
threshold grid and, for every point, the first threshold that predicts it (``kappa``). Any
"sum over predicted points" at all 250 thresholds is then one ``bincount`` + ``cumsum``. Only
points near anomalies (cores and their soft extensions) differ between windows, so each window
costs O(segments x W + 250) instead of O(n x 250).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict

import numpy as np

THRESHOLDS = 250  # vus's `thre`


@dataclass
class _Grid:
    """The 250-threshold grid of vus: thresholds are order statistics of the score."""

    kappa: np.ndarray  # [n] first threshold index k at which point i is predicted (s_i >= t_k)
    n_pred: np.ndarray  # [T] number of predicted points at each threshold
    T: int

    def cum(self, kappa: np.ndarray, weights=None) -> np.ndarray:
        """For each threshold k: sum of ``weights`` over points predicted at k."""
        return np.cumsum(np.bincount(kappa, weights=weights, minlength=self.T))[: self.T]


def _grid(s: np.ndarray, thre: int) -> _Grid:
    n = len(s)
    ascending = np.sort(s)
    t = ascending[::-1][np.linspace(0, n - 1, thre).astype(int)]  # vus: -sort(-s)[idx]
    n_pred = (n - np.searchsorted(ascending, t, side="left")).astype(np.float64)
    kappa = np.searchsorted(-t, -s, side="left")  # t is non-increasing, -t non-decreasing
    return _Grid(kappa, n_pred, thre)


@dataclass
class _Segments:
    start: np.ndarray  # inclusive
    end: np.ndarray  # inclusive
    core_min: np.ndarray  # min kappa over each core
    left_min: np.ndarray  # [m, H+1]: min kappa over [start - h, start - 1]
    right_min: np.ndarray  # [m, H+1]: min kappa over [end + 1, end + h]
    # soft-extension candidates (non-core positions within H of a segment)
    ext_pos_index: np.ndarray  # index into ext_unique for each candidate
    ext_d: np.ndarray  # distance to its segment
    ext_kappa: np.ndarray  # kappa of each unique extension position


def _segments(y: np.ndarray, grid: _Grid, half: int) -> _Segments:
    n = len(y)
    d = np.diff(np.r_[0, y, 0])
    start = np.flatnonzero(d == 1)
    end = np.flatnonzero(d == -1) - 1
    big = grid.T  # larger than any kappa: "no point here"
    padded = np.r_[grid.kappa, big]
    bounds = np.stack([start, end + 1], axis=1).ravel()
    core_min = np.minimum.reduceat(padded, bounds)[::2]
    offsets = np.arange(1, half + 1)
    left_pos = start[:, None] - offsets[None, :]
    right_pos = end[:, None] + offsets[None, :]
    left_k = np.where(left_pos >= 0, padded[np.clip(left_pos, 0, n)], big)
    right_k = np.where(right_pos < n, padded[np.clip(right_pos, 0, n)], big)
    first = np.full((len(start), 1), big)
    left_min = np.minimum.accumulate(np.concatenate([first, left_k], axis=1), axis=1)
    right_min = np.minimum.accumulate(np.concatenate([first, right_k], axis=1), axis=1)
    # extension candidates: right side then left side, as vus adds them
    pos = np.concatenate([right_pos.ravel(), left_pos.ravel()])
    dist = np.concatenate([np.tile(offsets, len(start)), np.tile(offsets, len(start))])
    ok = (pos >= 0) & (pos < n)
    ok[ok] &= y[pos[ok]] == 0  # core points stay 1 whatever is added to them
    pos, dist = pos[ok], dist[ok]
    unique, inverse = np.unique(pos, return_inverse=True)
    return _Segments(start, end, core_min, left_min, right_min, inverse, dist, grid.kappa[unique])


def _soft_extension(seg: _Segments, w: int) -> np.ndarray:
    """Soft label of every unique extension position for window w: min(1, sum sqrt(1 - d/w))."""
    h = w // 2
    if h == 0:
        return np.zeros(len(seg.ext_kappa))
    sel = seg.ext_d <= h
    summed = np.bincount(
        seg.ext_pos_index[sel],
        weights=np.sqrt(1.0 - seg.ext_d[sel] / w),
        minlength=len(seg.ext_kappa),
    )
    return np.minimum(1.0, summed)


def _existence(seg: _Segments, grid: _Grid, h: int, touching: bool):
    """(E_k: groups hit at each threshold, number of groups). Neighbouring padded segments
    merge when they overlap (VUS) or also when they touch (R_AUC)."""
    seg_min = np.minimum(seg.core_min, np.minimum(seg.left_min[:, h], seg.right_min[:, h]))
    gap = seg.start[1:] - seg.end[:-1]
    new_group = gap > (2 * h + 1 if touching else 2 * h)
    starts = np.flatnonzero(np.r_[True, new_group])
    gmin = np.minimum.reduceat(seg_min, starts)
    return grid.cum(gmin), len(starts)


def _roc_auc(tpr: np.ndarray, fpr: np.ndarray) -> float:
    x = np.r_[0.0, fpr, 1.0]
    y = np.r_[0.0, tpr, 1.0]
    return float(np.dot(x[1:] - x[:-1], (y[1:] + y[:-1]) / 2))


def range_and_volume(
    *, y_true: np.ndarray, y_score: np.ndarray, window: int, thre: int = THRESHOLDS
) -> Dict[str, float]:
    """R_AUC_ROC, R_AUC_PR (window ``window``) and VUS_ROC, VUS_PR (windows 0..window).

    Inputs must already be validated (binary labels with at least one anomaly, finite scores).
    """
    y = np.asarray(y_true).astype(np.int64)
    s = np.asarray(y_score, dtype=np.float64)
    n = len(s)
    window = int(window)
    grid = _grid(s, thre)
    half = window // 2
    seg = _segments(y, grid, half)
    P = float(y.sum())
    core = y == 1
    tp_core = grid.cum(grid.kappa[core])
    with np.errstate(divide="ignore", invalid="ignore"):  # all-one labels give 0/0 = NaN, as vus
        return _curves(seg, grid, P, tp_core, n, window, half)


def _curves(
    seg: _Segments, grid: _Grid, P: float, tp_core: np.ndarray, n: int, window: int, half: int
) -> Dict[str, float]:
    N = grid.n_pred
    auc_sum = ap_sum = 0.0
    out: Dict[str, float] = {}
    for w in range(window + 1):
        ell = _soft_extension(seg, w)
        tp_ext = grid.cum(seg.ext_kappa, ell)
        tp = tp_core + tp_ext
        p_k = P + tp_ext / 2.0  # threshold-dependent in VUS
        exist, n_groups = _existence(seg, grid, w // 2, touching=False)
        tpr = np.minimum(tp / p_k, 1.0) * exist / n_groups
        fpr = (N - tp) / (n - p_k)
        prec = tp / N
        auc_sum += _roc_auc(tpr, fpr)
        ap_sum += float(np.dot(np.diff(np.r_[0.0, tpr]), prec))  # right-endpoint steps
        if w == window:
            # R_AUC: constant P_R = (P + sum of the soft label) / 2, touching groups merge,
            # trapezoid PR starting from precision 1.
            p_r = (2.0 * P + ell.sum()) / 2.0
            exist_r, n_groups_r = _existence(seg, grid, half, touching=True)
            tpr_r = np.minimum(tp / p_r, 1.0) * exist_r / n_groups_r
            fpr_r = (N - tp) / (n - p_r)
            out["r_auc_roc"] = _roc_auc(tpr_r, fpr_r)
            out["r_auc_pr"] = float(
                np.dot(np.diff(np.r_[0.0, tpr_r]), (prec + np.r_[1.0, prec[:-1]]) / 2.0)
            )
    out["vus_roc"] = auc_sum / (window + 1)
    out["vus_pr"] = ap_sum / (window + 1)
    return out
