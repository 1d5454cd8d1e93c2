"""Thresholds as objects: ``fit(scores)`` on label-free data, ``predict(scores)`` -> 0/1.

The default family is label-free and fitted on validation scores (tail of train), never test.
"""
from __future__ import annotations

import numpy as np


class Threshold:
    kind = "base"
    #: "label_free" thresholds never see labels; "oracle" ones use test labels (tagged so).
    family = "label_free"

    def __init__(self) -> None:
        self.value: float = float("nan")

    def fit(self, scores: np.ndarray) -> "Threshold":  # pragma: no cover - abstract
        raise NotImplementedError

    def predict(self, scores: np.ndarray) -> np.ndarray:
        if not np.isfinite(self.value):
            raise RuntimeError(f"{type(self).__name__}.predict called before fit")
        return (np.asarray(scores) > self.value).astype(np.int8)


class PercentileThreshold(Threshold):
    """Points scoring above the given percentile of the fitting scores are anomalous."""

    kind = "val_percentile"

    def __init__(self, percentile: float = 99.0):
        super().__init__()
        if not 0.0 <= percentile <= 100.0:
            raise ValueError(f"threshold.percentile={percentile}: expected a value in [0, 100]")
        self.percentile = percentile

    def fit(self, scores: np.ndarray) -> "PercentileThreshold":
        scores = np.asarray(scores, dtype=np.float64)
        if scores.size == 0 or not np.isfinite(scores).all():
            raise ValueError("threshold fit needs a non-empty array of finite scores")
        self.value = float(np.percentile(scores, self.percentile))
        return self


def build_threshold(cfg) -> Threshold:
    if cfg.kind == "val_percentile":
        return PercentileThreshold(float(cfg.percentile))
    raise ValueError(f"threshold.kind={cfg.kind!r}: expected val_percentile")
