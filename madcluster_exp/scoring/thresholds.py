"""Thresholds as objects: ``fit(...)`` then ``predict(scores)`` -> 0/1.

Every threshold declares its ``family``, which decides what it may see and how runs are tagged:

- ``label_free`` (honest default): fitted on validation scores only (tail of train);
- ``streaming``: SPOT, initialised on validation scores, then updated causally on the test
  stream as it arrives (never with labels, never with future points);
- ``transductive``: a percentile over validation + test scores together, as some papers did;
- ``oracle``: the best-F1 threshold chosen on test labels (what the MADCluster paper reports).
"""

from __future__ import annotations

import math
from typing import Optional, Tuple

import numpy as np

from madcluster_exp.config import ThresholdKind
from madcluster_exp.metrics.point import best_f1


def _finite(scores, what: str) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or s.size == 0:
        raise ValueError(f"{what}: expected a non-empty 1-D array of scores, got shape {s.shape}")
    if not np.isfinite(s).all():
        i = int(np.flatnonzero(~np.isfinite(s))[0])
        raise ValueError(f"{what}: score {s[i]} at index {i}; expected finite scores")
    return s


class Threshold:
    kind = "base"
    family = "label_free"

    def __init__(self) -> None:
        self.value: float = float("nan")

    def fit(self, scores: np.ndarray) -> "Threshold":  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, scores: np.ndarray) -> np.ndarray:
        """Anomalous where the score is strictly above the threshold."""
        if not np.isfinite(self.value):
            raise RuntimeError(f"{type(self).__name__}.predict called before fit")
        return (np.asarray(scores) > self.value).astype(np.int8)

    def state(self) -> dict:
        """The fitted state as JSON-ready values (kind, family, value and what ``predict``
        needs): saved with a trained model so new data is thresholded as the run's test was."""
        if not np.isfinite(self.value):
            raise RuntimeError(f"{type(self).__name__}.state called before fit")
        return {"kind": self.kind, "family": self.family, "value": float(self.value)}


class PercentileThreshold(Threshold):
    """Points scoring above the given percentile of the fitting scores are anomalous."""

    kind = "val_percentile"

    def __init__(self, percentile: float = 99.0):
        super().__init__()
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"threshold.percentile={percentile}: expected a value in [0, 100]")
        self.percentile = percentile

    def fit(self, scores: np.ndarray) -> "PercentileThreshold":
        self.value = float(np.percentile(_finite(scores, "threshold fit"), self.percentile))
        return self

    def state(self) -> dict:
        return {**super().state(), "percentile": self.percentile}


class TransductivePercentileThreshold(PercentileThreshold):
    """Percentile over validation and test scores together (fit with both); tagged so."""

    kind = "transductive"
    family = "transductive"


# ------------------------------------------------------------------------------ POT / SPOT
def fit_gpd(excesses: np.ndarray) -> Tuple[float, float]:
    """Maximum-likelihood (gamma, sigma) of a generalised Pareto distribution for excesses > 0,
    by Grimshaw's reduction to one variable x = gamma / sigma (as in Siffer et al., 2017):
    candidates are the roots of u(x) v(x) = 1 with u = mean(1 / (1 + x Y)),
    v = 1 + mean(log(1 + x Y)), plus x = 0 (exponential tail); the most likely one wins."""
    y = np.asarray(excesses, dtype=np.float64)
    if y.size == 0 or (y <= 0).any():
        raise ValueError("fit_gpd needs a non-empty array of positive excesses")
    mean, ymin, ymax = y.mean(), y.min(), y.max()

    def loglik(gamma: float, sigma: float) -> float:
        if sigma <= 0:
            return -math.inf
        if abs(gamma) < 1e-12:
            return -len(y) * math.log(sigma) - y.sum() / sigma
        z = 1 + gamma * y / sigma
        if (z <= 0).any():
            return -math.inf
        return -len(y) * math.log(sigma) - (1 + 1 / gamma) * np.log(z).sum()

    def w(x: float) -> float:
        return float(np.mean(1.0 / (1.0 + x * y)) * (1.0 + np.mean(np.log1p(x * y))) - 1.0)

    candidates = [(0.0, mean)]
    eps = 1e-8 / max(mean, 1e-300)
    lo_neg, hi_pos = -1.0 / ymax + eps, 2.0 * (mean - ymin) / (mean * ymin) if ymin > 0 else 1.0
    for a, b in ((lo_neg, -eps), (eps, max(hi_pos, 2 * eps))):
        grid = np.linspace(a, b, 64)
        vals = np.array([w(x) for x in grid])
        for i in np.flatnonzero(np.sign(vals[:-1]) * np.sign(vals[1:]) < 0):
            x0, x1 = grid[i], grid[i + 1]
            for _ in range(80):  # bisection: robust and plenty precise for a threshold
                xm = (x0 + x1) / 2
                if np.sign(w(xm)) == np.sign(w(x0)):
                    x0 = xm
                else:
                    x1 = xm
            x = (x0 + x1) / 2
            gamma = float(np.mean(np.log1p(x * y)))
            candidates.append((gamma, gamma / x))
    return max(candidates, key=lambda gs: loglik(*gs))


def pot_quantile(t: float, gamma: float, sigma: float, q: float, n: int, n_peaks: int) -> float:
    """Extreme quantile z_q of the tail above the initial threshold t (Siffer et al., eq. 1)."""
    r = q * n / n_peaks
    if abs(gamma) < 1e-12:
        return t - sigma * math.log(r)
    return t + sigma / gamma * (r ** (-gamma) - 1.0)


class POTThreshold(Threshold):
    """Peaks-over-threshold on validation scores: initial threshold at the ``level`` quantile,
    GPD fitted to the excesses, threshold = the tail quantile with risk ``q``."""

    kind = "pot"

    def __init__(self, level: float = 0.98, q: float = 1e-3):
        super().__init__()
        if not 0.0 < level < 1.0 or not 0.0 < q < 1.0 - level:
            raise ValueError(
                f"threshold.level={level}, threshold.q={q}: expected 0 < level < 1 "
                "and 0 < q < 1 - level"
            )
        self.level, self.q = level, q
        self.init_threshold = float("nan")
        self.gamma = self.sigma = float("nan")
        self._peaks = np.empty(0)
        self._n = 0

    def fit(self, scores: np.ndarray) -> "POTThreshold":
        s = _finite(scores, "POT fit")
        self.init_threshold = float(np.quantile(s, self.level))
        self._peaks = s[s > self.init_threshold] - self.init_threshold
        if self._peaks.size < 2:
            raise ValueError(
                f"POT: only {self._peaks.size} scores above the {self.level} "
                "quantile; lower threshold.level or use more validation data"
            )
        self._n = len(s)
        self._refit()
        return self

    def state(self) -> dict:
        return {
            **super().state(),
            "level": self.level,
            "q": self.q,
            "init_threshold": self.init_threshold,
            "gamma": self.gamma,
            "sigma": self.sigma,
            "peaks": [float(p) for p in self._peaks],
            "n": self._n,
        }

    def _refit(self) -> None:
        self.gamma, self.sigma = fit_gpd(self._peaks)
        self.value = pot_quantile(
            self.init_threshold, self.gamma, self.sigma, self.q, self._n, len(self._peaks)
        )


class SPOTThreshold(POTThreshold):
    """Streaming POT (Siffer et al., KDD 2017): initialised on validation scores; each test score
    in turn is an alarm if above the current threshold, otherwise a new peak (if above the
    initial threshold) that updates the fit. Causal and label-free."""

    kind = "spot"
    family = "streaming"

    def predict(self, scores: np.ndarray) -> np.ndarray:
        if not np.isfinite(self.value):
            raise RuntimeError("SPOTThreshold.predict called before fit")
        s = _finite(scores, "SPOT stream")
        alarms = np.zeros(len(s), np.int8)
        self.trajectory = np.empty(len(s))
        for i, x in enumerate(s):
            self.trajectory[i] = self.value
            if x > self.value:
                alarms[i] = 1
                continue
            self._n += 1
            if x > self.init_threshold:
                self._peaks = np.append(self._peaks, x - self.init_threshold)
                self._refit()
            else:
                self.value = pot_quantile(
                    self.init_threshold, self.gamma, self.sigma, self.q, self._n, len(self._peaks)
                )
        return alarms


class OracleThreshold(Threshold):
    """The best-F1 threshold on test labels (prediction ``score >= threshold``). An oracle: its
    numbers are upper bounds, always tagged ``threshold.kind=oracle``."""

    kind = "oracle"
    family = "oracle"

    def fit(self, scores: np.ndarray, labels: Optional[np.ndarray] = None) -> "OracleThreshold":
        if labels is None:
            raise ValueError("the oracle threshold needs the test labels")
        self.value = best_f1(y_true=labels, y_score=scores)["threshold"]
        return self

    def predict(self, scores: np.ndarray) -> np.ndarray:
        if not np.isfinite(self.value):
            raise RuntimeError("OracleThreshold.predict called before fit")
        return (np.asarray(scores) >= self.value).astype(np.int8)


KINDS = tuple(ThresholdKind)


def build_threshold(cfg) -> Threshold:
    if cfg.kind == "val_percentile":
        return PercentileThreshold(float(cfg.percentile))
    if cfg.kind == "transductive":
        return TransductivePercentileThreshold(float(cfg.percentile))
    if cfg.kind == "pot":
        return POTThreshold(float(cfg.level), float(cfg.q))
    if cfg.kind == "spot":
        return SPOTThreshold(float(cfg.level), float(cfg.q))
    if cfg.kind == "oracle":
        return OracleThreshold()
    raise ValueError(f"threshold.kind={cfg.kind!r}: expected one of {', '.join(KINDS)}")


def threshold_from_state(state: dict) -> Threshold:
    """A fitted threshold from :meth:`Threshold.state` (SPOT resumes streaming from the state
    it had after fitting on validation, so ``predict`` is a pure function of its input when
    called on a fresh copy)."""
    kind = state.get("kind")
    classes = {
        c.kind: c
        for c in (
            PercentileThreshold,
            TransductivePercentileThreshold,
            POTThreshold,
            SPOTThreshold,
            OracleThreshold,
        )
    }
    if kind not in classes:
        raise ValueError(f"threshold state of kind {kind!r}: expected one of {', '.join(KINDS)}")
    threshold = classes[kind].__new__(classes[kind])
    Threshold.__init__(threshold)
    threshold.value = float(state["value"])
    if isinstance(threshold, PercentileThreshold):
        threshold.percentile = float(state.get("percentile", float("nan")))
    if isinstance(threshold, POTThreshold):
        threshold.level, threshold.q = float(state["level"]), float(state["q"])
        threshold.init_threshold = float(state["init_threshold"])
        threshold.gamma, threshold.sigma = float(state["gamma"]), float(state["sigma"])
        threshold._peaks = np.asarray(state["peaks"], dtype=np.float64)
        threshold._n = int(state["n"])
    return threshold


def fit_threshold(
    threshold: Threshold, val_scores: np.ndarray, test_scores: np.ndarray, test_labels: np.ndarray
) -> Threshold:
    """Fit with exactly what the threshold's family is allowed to see."""
    if threshold.family == "oracle":
        return threshold.fit(test_scores, test_labels)
    if threshold.family == "transductive":
        return threshold.fit(np.concatenate([val_scores, test_scores]))
    return threshold.fit(val_scores)  # label_free and streaming: validation only
