"""Affiliation precision / recall (Huet et al., KDD 2022) as ``vus`` 0.0.6 computes them, fast.

Events are half-open real intervals [start, stop + 1) of runs of ones. Each ground-truth event
J_j owns the zone E_j between the midpoints of the gaps to its neighbours (the first and last
zones reach the series ends). Predicted events are cut by zone; within zone j:

- precision p_j = sum over pieces I of  integral_I Fbar_j(x) dx / sum |I|, where Fbar_j(x) is 1
  inside J_j and P(dist(X, J_j) >= dist(x, J_j)) for X ~ U(E_j) outside; NaN without pieces;
- recall r_j = (1/|J_j|) sum_q integral over J_j cut at the midpoints between consecutive
  pieces of G(y), G = 1 inside the piece I_q and P(dist(X, I_q) >= dist(y, I_q)), X ~ U(E_j),
  outside; 0 without pieces.

All integrands are piecewise linear, so the closed forms below are exact; here they run as
array operations over all pieces at once, O(pieces + events) instead of the package's
O(pieces x events) Python loops. Affiliation precision = mean of the non-NaN p_j (NaN when there
are none), recall = mean of all r_j.
"""

from __future__ import annotations

from typing import Dict

import numpy as np


def _events(v: np.ndarray):
    d = np.diff(np.r_[0, (v > 0).astype(np.int8), 0])
    return np.flatnonzero(d == 1).astype(np.float64), np.flatnonzero(d == -1).astype(np.float64)


def _clip(a, b, lo, hi):
    a2 = np.maximum(a, lo)
    b2 = np.maximum(np.minimum(b, hi), a2)  # empty -> zero length, which integrates to 0
    return a2, b2


def _precision_outside(a, b, jmin, jmax, emin, emax):
    """Integral of Fbar over [a, b] lying entirely on one side of J (zero when a == b)."""
    d_min = np.maximum(a - jmax, jmin - b)
    d_max = np.maximum(b - jmax, jmin - a)
    m = np.minimum(jmin - emin, emax - jmax)
    min_piece = 0.5 * (np.minimum(d_max, m) ** 2 - np.minimum(d_min, m) ** 2) + m * (
        np.maximum(d_max, m) - np.maximum(d_min, m)
    )
    linear = 0.5 * (d_max**2 - d_min**2)
    remaining = (jmax - jmin) * (b - a)
    return (b - a) - (min_piece + linear + remaining) / (emax - emin)


def _recall_outside(a, b, pivot, emin, emax, piece_after: bool):
    """Integral of G over [a, b] (part of J on one side of the piece whose nearest border is
    ``pivot``); ``piece_after`` says the piece lies after [a, b]."""
    emean = (emin + emax) / 2
    before = _clip(a, b, -np.inf, emean)
    after = _clip(a, b, emean, np.inf)
    m1, m2 = (emin + pivot) / 2, (emax + pivot) / 2
    b_close_e = _clip(*before, -np.inf, m1)
    b_close_i = _clip(*before, m1, np.inf)
    a_close_i = _clip(*after, -np.inf, m2)
    a_close_e = _clip(*after, m2, np.inf)
    ln = lambda p: p[1] - p[0]  # noqa: E731
    sq = lambda p: p[1] ** 2 - p[0] ** 2  # noqa: E731
    if piece_after:
        parts = (
            (pivot - emin) * ln(b_close_e)
            + 2 * pivot * ln(b_close_i)
            - sq(b_close_i)
            + 2 * pivot * ln(a_close_i)
            - sq(a_close_i)
            + (emax + pivot) * ln(a_close_e)
            - sq(a_close_e)
        )
    else:
        parts = (
            sq(b_close_e)
            - (emin + pivot) * ln(b_close_e)
            + sq(b_close_i)
            - 2 * pivot * ln(b_close_i)
            + sq(a_close_i)
            - 2 * pivot * ln(a_close_i)
            + (emax - pivot) * ln(a_close_e)
        )
    out = (b - a) - parts / (emax - emin)
    # The reference returns 0 when the pivot sits on E's border (cannot happen for zone-clipped
    # pieces with a non-empty [a, b], kept for exactness).
    return np.where((pivot <= emin) | (pivot >= emax), 0.0, out)


def affiliation(*, y_true: np.ndarray, y_pred: np.ndarray) -> Dict[str, float]:
    """Affiliation precision and recall of a 0/1 prediction; ``y_true`` needs an anomaly."""
    js, je = _events(np.asarray(y_true))
    ps, pe = _events(np.asarray(y_pred))
    return affiliation_events(js, je, ps, pe, len(y_true))


def _zones(js, je, n: int):
    """(starts, ends) of the zones E_j: borders at the midpoints of the gaps between events."""
    if len(js) == 0:
        raise ValueError("affiliation needs at least one ground-truth event")
    mids = (je[:-1] + js[1:]) / 2
    return np.r_[0.0, mids], np.r_[mids, float(n)]


def _cut(ps, pe, zs, ze):
    """Predicted events cut by zone: (zone, start, end) of every piece of positive length, in
    time order. Event [s, e) meets zone j iff max(s, zs_j) < min(e, ze_j)."""
    first = np.searchsorted(ze, ps, side="right")
    last = np.searchsorted(zs, pe, side="left") - 1
    counts = np.maximum(last - first + 1, 0)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    zone = np.repeat(first, counts) + offsets
    a = np.maximum(np.repeat(ps, counts), zs[zone])
    b = np.minimum(np.repeat(pe, counts), ze[zone])
    keep = a < b
    return zone[keep], a[keep], b[keep]


def _precision_integral(zone, a, b, js, je, zs, ze):
    """Integral of Fbar of each piece's zone over the piece [a, b)."""
    jmin, jmax, emin, emax = js[zone], je[zone], zs[zone], ze[zone]
    before = _clip(a, b, -np.inf, jmin)
    after = _clip(a, b, jmax, np.inf)
    inside = np.maximum(np.minimum(b, jmax) - np.maximum(a, jmin), 0.0)
    return (
        inside
        + _precision_outside(*before, jmin, jmax, emin, emax)
        + _precision_outside(*after, jmin, jmax, emin, emax)
    )


def _recall_zones(zone, a, b, js, je, zs, ze) -> np.ndarray:
    """Recall of every zone: J cut at the midpoints between consecutive pieces of its zone."""
    jmin, jmax, emin, emax = js[zone], je[zone], zs[zone], ze[zone]
    same_prev = np.r_[False, zone[1:] == zone[:-1]]
    same_next = np.r_[zone[:-1] == zone[1:], False]
    f_lo = np.where(same_prev, (np.r_[0.0, b[:-1]] + a) / 2, emin)
    f_hi = np.where(same_next, (b + np.r_[a[1:], 0.0]) / 2, emax)
    ja, jb = _clip(jmin, jmax, f_lo, f_hi)
    j_before = _clip(ja, jb, -np.inf, a)
    j_after = _clip(ja, jb, b, np.inf)
    j_inside = np.maximum(np.minimum(jb, b) - np.maximum(ja, a), 0.0)
    r_integral = (
        j_inside
        + _recall_outside(*j_before, a, emin, emax, piece_after=True)
        + _recall_outside(*j_after, b, emin, emax, piece_after=False)
    )
    return np.bincount(zone, weights=r_integral, minlength=len(js)) / (je - js)


def affiliation_events(js, je, ps, pe, n: int) -> Dict[str, float]:
    """Affiliation precision and recall from events: ground truth [js, je), prediction
    [ps, pe) (float arrays, sorted, disjoint) on a series of ``n`` points."""
    m = len(js)
    zs, ze = _zones(js, je, n)
    zone, a, b = _cut(ps, pe, zs, ze)
    integral = _precision_integral(zone, a, b, js, je, zs, ze)
    num = np.bincount(zone, weights=integral, minlength=m)
    den = np.bincount(zone, weights=b - a, minlength=m)
    has = np.bincount(zone, minlength=m) > 0
    p_zone = np.where(has, num / np.where(has, den, 1.0), np.nan)
    precision = float(np.mean(p_zone[has])) if has.any() else float("nan")
    r_zone = _recall_zones(zone, a, b, js, je, zs, ze)
    return {"affiliation_precision": precision, "affiliation_recall": float(np.mean(r_zone))}


class AffiliationCurve:
    """Affiliation precision and recall of the predictions ``kappa > k`` for k = 0..K-1 (the
    thresholds of a search), without paying for every predicted event at every k.

    Precision: the predicted set is a union of unit cells [i, i+1), so each zone's integral is
    a sum over its predicted cells. Cells are cut at the zone borders and integrated once; a
    2-D histogram over (zone, kappa) then gives every threshold's sums at once.

    Recall: a point of J belongs to the sub-zone of its nearest piece, so only the pieces that
    meet J and the nearest piece on either side of it (within the zone) have a non-empty part
    of J; the others add exact zeros and are left out.
    """

    def __init__(self, js, je, n: int, kappa: np.ndarray, n_thresholds: int):
        self.js, self.je = js, je
        self.zs, self.ze = _zones(js, je, n)
        m, k1 = len(js), n_thresholds + 1
        borders = np.union1d(np.arange(n + 1, dtype=np.float64), self.zs[1:])
        a, b = borders[:-1], borders[1:]
        zone = np.searchsorted(self.ze, a, side="right")
        integral = _precision_integral(zone, a, b, js, je, self.zs, self.ze)
        key = zone * k1 + kappa[a.astype(np.int64)]
        # S[j, c] = sum over cells of zone j with kappa >= c; predicted at k <=> kappa > k
        num = np.bincount(key, weights=integral, minlength=m * k1).reshape(m, k1)
        den = np.bincount(key, weights=b - a, minlength=m * k1).reshape(m, k1)
        num = np.cumsum(num[:, ::-1], axis=1)[:, ::-1][:, 1:]
        den = np.cumsum(den[:, ::-1], axis=1)[:, ::-1][:, 1:]
        has = den > 0
        p_zone = np.where(has, num / np.where(has, den, 1.0), 0.0)
        count = has.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            self.precision = np.where(count > 0, p_zone.sum(axis=0) / count, np.nan)

    def recall(self, ps, pe) -> float:
        """Affiliation recall of the prediction with events [ps, pe) (floats, sorted)."""
        js, je, zs, ze = self.js, self.je, self.zs, self.ze
        if len(ps) == 0:
            return 0.0
        first = np.searchsorted(pe, zs, side="right")  # first event ending after the zone start
        last = np.searchsorted(ps, ze, side="left") - 1  # last event starting before its end
        lo = np.maximum(np.searchsorted(pe, js, side="right") - 1, first)
        hi = np.minimum(np.searchsorted(ps, je, side="left"), last)
        counts = np.maximum(hi - lo + 1, 0)
        offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        event = np.repeat(lo, counts) + offsets
        zone = np.repeat(np.arange(len(js)), counts)
        a = np.maximum(ps[event], zs[zone])
        b = np.minimum(pe[event], ze[zone])
        keep = a < b
        return float(np.mean(_recall_zones(zone[keep], a[keep], b[keep], js, je, zs, ze)))
