"""The contract of a classical detector, and how its window scores become point scores.

A classical detector is fitted once on the training split (no epochs, no gradients) and gives
one score per window, higher = more anomalous, in the style of pyod: ``fit`` then
``decision_function``. There is no ``predict``: the pipeline's threshold (fitted on validation
scores, ``threshold.kind``) turns scores into predictions, for every detector alike. The job
(madcluster_exp/run.py) replaces the training loop with ``fit`` and scores the
validation and test splits through :func:`score_split_classical`, so thresholds, metrics and
tracking are the ones every deep backbone goes through.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Dict, Iterator

import numpy as np

from madcluster_exp.config import Spread
from madcluster_exp.data import PointScoreAccumulator, SeriesSplit, WindowSet

SPREADS = tuple(Spread)
# The score component's name: one part, as a backbone without the plug-in.
COMPONENT = "backbone"


class ClassicalDetector(ABC):
    """Fit on training windows, score windows. Subclasses set ``library`` (what does the
    work, for the run's params) and implement ``_fit`` and ``_score``."""

    library: str = ""

    def __init__(self, cfg, seed: int):
        self.cfg = cfg
        self.window = int(cfg.window)
        self.seed = int(seed)
        self.n_train_windows = 0

    # -- pyod-style API ---------------------------------------------------------------------
    def fit(self, train: SeriesSplit, stride: int = 1) -> "ClassicalDetector":
        """Fit on every ``stride``-th window of ``train`` (windows never cross entities)."""
        self.n_train_windows = self._fit(train, stride)
        return self

    def decision_function(
        self, split: SeriesSplit, starts: np.ndarray, batch_size: int = 512
    ) -> np.ndarray:
        """One score per window starting at ``starts`` (float64, higher = more anomalous)."""
        return np.asarray(self._score(split, starts, batch_size), dtype=np.float64)

    def params(self) -> Dict[str, object]:
        """What the fit chose or used, for MLflow (e.g. PCA's component count)."""
        return {"classical/library": self.library, "classical/train_windows": self.n_train_windows}

    # -- subclasses ---------------------------------------------------------------------------
    @abstractmethod
    def _fit(self, train: SeriesSplit, stride: int) -> int:
        """Fit; return the number of training windows used."""

    @abstractmethod
    def _score(self, split: SeriesSplit, starts: np.ndarray, batch_size: int) -> np.ndarray:
        """Scores of the windows at ``starts``."""


class WindowFeatureDetector(ClassicalDetector):
    """Detectors on flattened windows: a window [T, C] is one vector of T * C features."""

    def _fit(self, train: SeriesSplit, stride: int) -> int:
        windows = WindowSet(train, self.window, stride=stride)
        x = flat_windows(windows, np.arange(len(windows)))
        self._fit_features(x)
        return len(x)

    def _score(self, split: SeriesSplit, starts: np.ndarray, batch_size: int) -> np.ndarray:
        windows = WindowSet(split, self.window, stride=1)
        index = window_index(windows, starts)
        return np.concatenate(
            [self._score_features(flat_windows(windows, idx)) for idx in _chunks(index, batch_size)]
        )

    @abstractmethod
    def _fit_features(self, x: np.ndarray) -> None:
        """Fit on [N, T * C] training windows."""

    @abstractmethod
    def _score_features(self, x: np.ndarray) -> np.ndarray:
        """Scores [B] of [B, T * C] windows."""


def flat_windows(windows: WindowSet, idx: np.ndarray) -> np.ndarray:
    """[len(idx), T * C] float32 copies of the chosen windows (time-major, as [T, C])."""
    return windows.batch(idx).reshape(len(idx), -1).numpy()


def window_index(windows: WindowSet, starts: np.ndarray) -> np.ndarray:
    """Positions in ``windows`` (stride 1) of the windows starting at ``starts``."""
    idx = np.searchsorted(windows.starts, starts)
    if len(starts) and (
        idx.max() >= len(windows.starts) or not np.array_equal(windows.starts[idx], starts)
    ):
        raise ValueError("window starts outside the split's windows")
    return idx


def _chunks(index: np.ndarray, size: int) -> Iterator[np.ndarray]:
    for i in range(0, len(index), size):
        yield index[i : i + size]


# ------------------------------------------------------------------------ windows -> points
def spread_to_points(
    n_points: int,
    segments,
    starts: np.ndarray,
    scores: np.ndarray,
    window: int,
    spread: str,
    aggregate: str,
) -> np.ndarray:
    """One score per point from one score per window.

    ``center``: the score belongs to the window's middle point (``start + (T - 1) // 2``), as
    TSB-AD pads its window scores; ``last``: to its last point (what a streaming detector
    knows at that time); points that are no window's anchor (the first and last points of an
    entity, or gaps of a scoring stride > 1) take the nearest anchor's score within their
    entity. ``all``: every point of the window gets the score, overlapping windows folded by
    ``aggregate`` (mean or max), as deep backbones' per-step scores are.
    """
    if spread not in SPREADS:
        raise ValueError(f"backbone.spread={spread!r}: expected one of {', '.join(SPREADS)}")
    if spread == "all":
        acc = PointScoreAccumulator(n_points, window, aggregate)
        acc.add(starts, np.repeat(scores[:, None], window, axis=1))
        return acc.result()
    offset = (window - 1) // 2 if spread == "center" else window - 1
    anchors = starts + offset
    out = np.empty(n_points, np.float64)
    for seg in segments:
        inside = (starts >= seg.start) & (starts < seg.end)
        pos, val = anchors[inside], scores[inside]
        points = np.arange(seg.start, seg.end)
        # Nearest anchor of this entity (anchors are sorted: windows come in order).
        right = np.clip(np.searchsorted(pos, points), 0, len(pos) - 1)
        left = np.clip(right - 1, 0, len(pos) - 1)
        nearer_left = np.abs(points - pos[left]) <= np.abs(pos[right] - points)
        out[seg.start : seg.end] = np.where(nearer_left, val[left], val[right])
    return out


def score_split_classical(
    detector: ClassicalDetector,
    split: SeriesSplit,
    stride: int,
    batch_size: int,
    spread: str,
    aggregate: str,
    window_means: bool = False,
):
    """As :func:`madcluster_exp.scoring.score_split` for a classical detector: {component:
    point scores}, and with ``window_means`` also {component: window scores} and the starts
    (the reference protocol's window scores are the detector's own)."""
    windows = WindowSet(split, detector.window, stride=stride, cover_tail=True)
    scores = detector.decision_function(split, windows.starts, batch_size)
    points = spread_to_points(
        len(split), split.segments, windows.starts, scores, detector.window, spread, aggregate
    )
    if not window_means:
        return {COMPONENT: points}
    return {COMPONENT: points}, {COMPONENT: scores}, windows.starts
