"""The classical detectors, each on a maintained library: ``knn`` (scikit-learn's exact
nearest-neighbour index), ``iforest`` (scikit-learn's IsolationForest), ``pca``
(scikit-learn's PCA, reconstruction error), ``matrix_profile`` (stumpy's AB-join), and the
seeded sanity scorers ``random`` and ``constant``."""

from __future__ import annotations

from typing import Dict

import numpy as np

from madcluster_exp.classical.base import ClassicalDetector, WindowFeatureDetector
from madcluster_exp.data import SeriesSplit


class KNN(WindowFeatureDetector):
    """Distance of a window to its k nearest training windows (pyod's KNN score): ``largest``
    = distance to the k-th, ``mean`` = mean of the k distances. Every index scikit-learn
    offers (brute, kd_tree, ball_tree, auto) is exact."""

    name = "knn"
    library = "sklearn.neighbors.NearestNeighbors"

    def _fit_features(self, x: np.ndarray) -> None:
        from sklearn.neighbors import NearestNeighbors

        k = int(self.cfg.n_neighbors)
        if k > len(x):
            raise ValueError(
                f"backbone.n_neighbors={k} but the training split has only "
                f"{len(x)} windows; expected at most that many neighbours"
            )
        self.index = NearestNeighbors(n_neighbors=k, algorithm=self.cfg.algorithm).fit(x)

    def _score_features(self, x: np.ndarray) -> np.ndarray:
        dist, _ = self.index.kneighbors(x)
        return dist[:, -1] if self.cfg.method == "largest" else dist.mean(axis=1)

    def params(self) -> Dict[str, object]:
        return {**super().params(), "classical/index": self.index._fit_method}


class IForest(WindowFeatureDetector):
    """Isolation forest on windows; score = minus scikit-learn's ``score_samples`` (the
    average path length's anomaly score: higher = isolated sooner = more anomalous)."""

    name = "iforest"
    library = "sklearn.ensemble.IsolationForest"

    def _fit_features(self, x: np.ndarray) -> None:
        from sklearn.ensemble import IsolationForest

        max_samples = "auto" if self.cfg.max_samples is None else int(self.cfg.max_samples)
        self.forest = IsolationForest(
            n_estimators=int(self.cfg.n_estimators),
            max_samples=max_samples,
            random_state=self.seed,
            n_jobs=1,
        ).fit(x)

    def _score_features(self, x: np.ndarray) -> np.ndarray:
        return -self.forest.score_samples(x)


class PCAReconstruction(WindowFeatureDetector):
    """Squared reconstruction error of a window from its projection on the training windows'
    principal components (``n_components`` < 1: the fraction of variance kept)."""

    name = "pca"
    library = "sklearn.decomposition.PCA"

    def _fit_features(self, x: np.ndarray) -> None:
        from sklearn.decomposition import PCA

        n = float(self.cfg.n_components)
        n_components = n if n < 1 else min(int(n), *x.shape)
        self.pca = PCA(n_components=n_components, svd_solver="full").fit(x)

    def _score_features(self, x: np.ndarray) -> np.ndarray:
        x64 = x.astype(np.float64)
        recon = self.pca.inverse_transform(self.pca.transform(x64))
        return np.square(x64 - recon).sum(axis=1)

    def params(self) -> Dict[str, object]:
        return {
            **super().params(),
            "classical/components": int(self.pca.n_components_),
            "classical/explained_variance": float(self.pca.explained_variance_ratio_.sum()),
        }


class MatrixProfile(ClassicalDetector):
    """Discord distance by AB-join (stumpy.stump with ``T_B`` = the training series): for each
    subsequence of the scored series, the distance to its nearest training subsequence of the
    same length (z-normalised unless ``normalize=false``), per channel, against every training
    entity (the nearest wins), then reduced over channels by ``channels`` (mean | max).

    Per channel because stumpy's multi-dimensional profile (mstump) has no AB-join; each
    channel finds its own nearest training subsequence, so a channel that goes wrong while the
    others look normal still raises the score (max makes that the whole score)."""

    name = "matrix_profile"
    library = "stumpy.stump (AB-join)"

    def _fit(self, train: SeriesSplit, stride: int) -> int:
        # Nothing to learn: the join reads the training series at scoring time. ``stride`` is
        # not used: an AB-join compares against every training subsequence.
        self.train = train
        return sum(seg.length - self.window + 1 for seg in train.segments)

    def _score(self, split: SeriesSplit, starts: np.ndarray, batch_size: int) -> np.ndarray:
        import stumpy

        m = self.window
        normalize = bool(self.cfg.normalize)
        profile = np.empty((len(split), split.n_channels))  # indexed by subsequence start
        for seg in split.segments:
            n_sub = seg.length - m + 1
            for c in range(split.n_channels):
                a = split.values[seg.start : seg.end, c].astype(np.float64)
                best = np.full(n_sub, np.inf)
                for tseg in self.train.segments:
                    b = self.train.values[tseg.start : tseg.end, c].astype(np.float64)
                    d = stumpy.stump(a, m, T_B=b, ignore_trivial=False, normalize=normalize)
                    best = np.minimum(best, d[:, 0].astype(np.float64))
                profile[seg.start : seg.start + n_sub, c] = best
        per_window = profile[starts]
        return per_window.mean(axis=1) if self.cfg.channels == "mean" else per_window.max(axis=1)


class RandomScores(ClassicalDetector):
    """Uniform random window scores from the run's seed: the ranking any detector must beat
    (AUC-ROC ~ 0.5)."""

    name = "random"
    library = "numpy.random.default_rng"

    def _fit(self, train: SeriesSplit, stride: int) -> int:
        self.rng = np.random.default_rng(self.seed)
        return 0

    def _score(self, split: SeriesSplit, starts: np.ndarray, batch_size: int) -> np.ndarray:
        return self.rng.random(len(starts))


class ConstantScores(ClassicalDetector):
    """The same score everywhere (``value``): no ranking at all; the sanity flags must say so."""

    name = "constant"
    library = "numpy.full"

    def _fit(self, train: SeriesSplit, stride: int) -> int:
        return 0

    def _score(self, split: SeriesSplit, starts: np.ndarray, batch_size: int) -> np.ndarray:
        return np.full(len(starts), float(self.cfg.value))
