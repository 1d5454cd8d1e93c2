"""TSB-AD mode: score a whole series exactly as TSB-AD's benchmark scored it.

TSB-AD (TheDatumOrg/TSB-AD) publishes per-file VUS-PR of its detectors
(``benchmark_exp/benchmark_eval_results/*_mergedTable_VUS-PR.csv``). Its unsupervised detectors
are fitted on the *whole* series they score (``run_Unsupervise_AD``), with fixed
hyper-parameters (``HP_list.Optimal_Uni_algo_HP_dict`` / ``Optimal_Multi_algo_HP_dict``) and a
sub-sequence length from the period rule (:func:`madcluster_exp.metrics.period
.find_length_rank` with ``rank = periodicity``). :func:`score_series` does the same for the
detectors below, so a file's published number can be reproduced; the project's own classical
detectors (``classical/detectors.py``) answer a different question (fit on a training split,
score unseen windows) and compute different things, listed per detector below.

The published tables were uploaded at TSB-AD commit :data:`TABLE_COMMIT` and were not all
produced by the code of that commit; what reproduces the shipped univariate file exactly
(tests/test_tsbad_protocol.py) is, per table column:

``IForest`` (univariate; ``run_IForest``, n_estimators 200)
    scikit-learn's IsolationForest (pyod's wrapper; ``random_state=0``, contamination 0.1,
    ``max_samples="auto"``) on the *raw points*, one feature, no window and no normalisation
    (the code before TSB-AD's "fix norm" commit f2bf6b3, which the published column predates;
    at :data:`TABLE_COMMIT` the point z-scored over a one-value axis and every feature became
    0). Score = minus ``decision_function``. Ours (``backbone=iforest``): windows, fitted on
    the training split, minus ``score_samples`` (a constant shift apart, the same score).
``Sub-IForest`` (periodicity 1, n_estimators 150)
    the same forest on sub-sequences of the period length, each z-normalised on its own
    (``ddof=1``; a constant window becomes 0), columns newest point first (TSB-AD's
    pandas-``shift`` windows; the column order changes which feature a tree draws), and
    ``max_features=1``, the int default of TSB-AD's wrapper: each tree sees ONE lag of the
    window.
``Sub-PCA`` (periodicity 1, n_components None)
    pyod's PCA score: sub-sequences standardised per column (StandardScaler), all-zero columns
    dropped, PCA with every component, score = sum over components k of
    ``||z - v_k|| / explained_variance_ratio_k`` (the distance of the point to the component
    *vector*, not to a subspace). The component signs are scikit-learn's before 1.5
    (the largest |U| entry of each column positive); scikit-learn >= 1.5 flips by V and moves
    this file's VUS-PR by -0.0017. Ours (``backbone=pca``): reconstruction error.
``Sub-KNN`` (periodicity 2, n_neighbors 50, method largest)
    sub-sequences of the rank-2 period, each z-normalised (``ddof=1``); distance to the 50th
    nearest *other* sub-sequence of the same series (scikit-learn's ``kneighbors()`` without X:
    leave-one-out). Ours (``backbone=knn``): raw windows, neighbours among training windows.
``MatrixProfile`` (periodicity 1)
    stumpy's self-join ``stump(x, m)`` (z-normalised, trivial matches excluded); the profile
    sits at ``[m // 2, m // 2 + n - m + 1)`` and the rest is its minimum. Ours
    (``backbone=matrix_profile``): an AB-join against the training split.

Windowed scores go back to one per point as TSB-AD pads them (:func:`pad_window_scores`):
``ceil((m - 1) / 2)`` copies of the first in front, ``(m - 1) // 2`` of the last behind, i.e.
window i scores point ``i + ceil((m - 1) / 2)`` (``classical.base.spread_to_points`` with
``center`` anchors at ``i + (m - 1) // 2``, one point earlier for an even m). Every score is
then MinMax-scaled to [0, 1] (scikit-learn's MinMaxScaler, as TSB-AD's wrappers of that commit
do; VUS-PR only ranks scores).

Multivariate series (more than one channel) use the multivariate table: ``IForest``
(n_estimators 25, max_features 0.8), ``PCA`` (n_components 0.25) and ``KNN`` (n_neighbors 50,
method mean), all on points (the period rule gives multivariate data no window), with IForest
and KNN z-normalising each time step across channels (``ddof=1``) as the code of
:data:`TABLE_COMMIT` does. These follow that commit's code and are not checked against the
published multivariate table (no multivariate file among the fixtures); the multivariate
``KNN`` equals TSB-AD 1.5's ``run_KNN``.

TSB-AD 1.5 on PyPI (the test oracle) computes Sub-KNN and MatrixProfile as published, but not
the rest: its ``IForest`` is windowed (window 100) and its forests z-score univariate windows per
column (on this file: IForest 0.1549, Sub-IForest 0.1460 instead of the published 0.1354 and
0.0856), and its Sub-PCA takes the installed scikit-learn's component signs; later commits
(a79f315, 2025-10) z-score Sub-PCA and Sub-KNN per column too. Those versions are not offered.
"""

from __future__ import annotations

import math
from typing import Callable, Dict, Mapping, Tuple

import numpy as np

from madcluster_exp.config.schema import TSBAD_DETECTORS
from madcluster_exp.data.series import DataError
from madcluster_exp.metrics.period import find_length_rank

# TheDatumOrg/TSB-AD: the commit that uploaded benchmark_eval_results/*_mergedTable_VUS-PR.csv.
TABLE_COMMIT = "35ba9c3b637fb62767c7bc9686aaf21cd21d755d"

# TSB-AD's HP_list.Optimal_Uni_algo_HP_dict / Optimal_Multi_algo_HP_dict (unchanged for these
# detectors from TABLE_COMMIT to TSB-AD 1.5), keyed by the tables' column names.
UNIVARIATE: Dict[str, Dict[str, object]] = {
    "IForest": {"n_estimators": 200},
    "Sub-IForest": {"periodicity": 1, "n_estimators": 150},
    "Sub-PCA": {"periodicity": 1, "n_components": None},
    "Sub-KNN": {"periodicity": 2, "n_neighbors": 50},
    "MatrixProfile": {"periodicity": 1},
}
MULTIVARIATE: Dict[str, Dict[str, object]] = {
    "IForest": {"n_estimators": 25, "max_features": 0.8},
    "PCA": {"n_components": 0.25},
    "KNN": {"n_neighbors": 50, "method": "mean"},
}
# Defaults of TSB-AD's run_* wrappers / model classes for what the tables leave out. The
# forests' max_features=1 is the int of its run_*IForest signatures: ONE feature per tree
# (scikit-learn reads an int as a count), which the published Sub-IForest column used.
DEFAULTS: Dict[str, object] = {"max_features": 1, "method": "largest", "n_components": None}


# ------------------------------------------------------------------------------------ helpers
def as_channels(data) -> np.ndarray:
    """[N] or [N, C] -> float64 [N, C]."""
    x = np.asarray(data, dtype=np.float64)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"expected a series [N] or [N, C] with N > 0, got shape {x.shape}")
    return x


def hyper_parameters(name: str, n_channels: int) -> Dict[str, object]:
    """The published hyper-parameters of ``name`` (a table column) for a series with
    ``n_channels`` channels: the univariate table for 1, the multivariate one otherwise."""
    table, which = (UNIVARIATE, "uni") if n_channels == 1 else (MULTIVARIATE, "multi")
    if name not in table:
        raise ValueError(
            f"TSB-AD detector {name!r} has no {which}variate entry here; known: {sorted(table)}"
        )
    return {**DEFAULTS, **table[name]}


def detector_window(name: str, data) -> int:
    """The sub-sequence length TSB-AD gives ``name`` on ``data``: the period rule with
    ``rank = periodicity`` for the windowed detectors, 1 for the point detectors."""
    x = as_channels(data)
    hp = hyper_parameters(name, x.shape[1])
    if "periodicity" not in hp:
        return 1
    return find_length_rank(x[:, 0], rank=int(hp["periodicity"]))


def lag_windows(x: np.ndarray, window: int) -> np.ndarray:
    """[N - m + 1, m] sub-sequences of a univariate series, newest point first (row i =
    ``x[i + m - 1], ..., x[i]``), as TSB-AD's pandas ``shift`` windows of that commit."""
    if window > len(x):
        raise ValueError(f"window {window} is longer than the series ({len(x)} points)")
    return np.lib.stride_tricks.sliding_window_view(x, window)[:, ::-1]


def row_zscore(a: np.ndarray) -> np.ndarray:
    """Each row z-normalised with ``ddof=1``; NaN (a constant row) -> 0 (TSB-AD's zscore)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        z = (a - a.mean(axis=1)[:, None]) / a.std(axis=1, ddof=1)[:, None]
    return np.nan_to_num(z)


def pad_window_scores(scores: np.ndarray, n_points: int, window: int) -> np.ndarray:
    """One score per point from one per sub-sequence, as TSB-AD pads them: window i's score
    at point ``i + ceil((m - 1) / 2)``, the edges repeating the first / last score. Scores
    already one per point are returned unchanged (TSB-AD pads only shorter ones)."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if len(scores) >= n_points:
        return scores
    front, back = math.ceil((window - 1) / 2), (window - 1) // 2
    return np.concatenate([np.full(front, scores[0]), scores, np.full(back, scores[-1])])


def minmax(scores: np.ndarray) -> np.ndarray:
    """scikit-learn's MinMaxScaler to [0, 1] (its arithmetic, so ties and ranks are the same
    as TSB-AD's; a constant score becomes 0)."""
    from sklearn.preprocessing import MinMaxScaler

    return MinMaxScaler(feature_range=(0, 1)).fit_transform(scores.reshape(-1, 1)).ravel()


def u_signed_components(z: np.ndarray, components: np.ndarray) -> np.ndarray:
    """PCA components signed as scikit-learn < 1.5 signed them: the entry of largest magnitude
    in each column of U (the projections of the centred data, U = Zc V^T / S) is positive."""
    proj = (z - z.mean(axis=0)) @ components.T
    peak = proj[np.abs(proj).argmax(axis=0), np.arange(proj.shape[1])]
    return components * np.where(peak < 0, -1.0, 1.0)[:, None]


# ---------------------------------------------------------------------------------- scorers
def _forest(features: np.ndarray, hp: Mapping, seed: int) -> np.ndarray:
    from sklearn.ensemble import IsolationForest

    forest = IsolationForest(
        n_estimators=int(hp["n_estimators"]),
        max_samples="auto",
        contamination=0.1,
        max_features=hp["max_features"],
        random_state=seed,
        n_jobs=1,
    ).fit(features)
    return -forest.decision_function(features)


def _pyod_pca(features: np.ndarray, hp: Mapping) -> np.ndarray:
    from scipy.spatial.distance import cdist
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    z = StandardScaler().fit_transform(features)
    z = z[:, np.any(z != 0, axis=0)]
    pca = PCA(n_components=hp["n_components"], svd_solver="full").fit(z)
    components = u_signed_components(z, pca.components_)
    return np.sum(cdist(z, components) / pca.explained_variance_ratio_, axis=1)


def _leave_one_out_knn(features: np.ndarray, hp: Mapping) -> np.ndarray:
    from sklearn.neighbors import NearestNeighbors

    k = int(hp["n_neighbors"])
    dist, _ = NearestNeighbors(n_neighbors=k).fit(features).kneighbors(n_neighbors=k)
    method = hp["method"]
    if method == "largest":
        return dist[:, -1]
    if method == "mean":
        return dist.mean(axis=1)
    if method == "median":
        return np.median(dist, axis=1)
    raise ValueError(f"KNN method={method!r}: expected largest, mean or median")


def _iforest(x, hp, window, seed):
    points = x if x.shape[1] == 1 else row_zscore(x)  # univariate: raw points (see docstring)
    return _forest(points, hp, seed)


def _sub_iforest(x, hp, window, seed):
    return pad_window_scores(
        _forest(row_zscore(lag_windows(x[:, 0], window)), hp, seed), len(x), window
    )


def _sub_pca(x, hp, window, seed):
    return pad_window_scores(_pyod_pca(lag_windows(x[:, 0], window), hp), len(x), window)


def _sub_knn(x, hp, window, seed):
    windows = row_zscore(lag_windows(x[:, 0], window))
    return pad_window_scores(_leave_one_out_knn(windows, hp), len(x), window)


def _matrix_profile(x, hp, window, seed):
    import stumpy

    profile = stumpy.stump(x[:, 0], m=window)[:, 0].astype(np.float64)
    out = np.full(len(x), profile.min())
    out[window // 2 : window // 2 + len(profile)] = profile
    return out


def _pca(x, hp, window, seed):
    return _pyod_pca(x, hp)


def _knn(x, hp, window, seed):
    return _leave_one_out_knn(row_zscore(x), hp)


Scorer = Callable[[np.ndarray, Mapping, int, int], np.ndarray]
SCORERS: Dict[Tuple[str, bool], Scorer] = {  # (name, univariate) -> scorer
    ("IForest", True): _iforest,
    ("Sub-IForest", True): _sub_iforest,
    ("Sub-PCA", True): _sub_pca,
    ("Sub-KNN", True): _sub_knn,
    ("MatrixProfile", True): _matrix_profile,
    ("IForest", False): _iforest,
    ("PCA", False): _pca,
    ("KNN", False): _knn,
}


def score_series(name: str, data, seed: int = 0, scale: bool = True) -> np.ndarray:
    """TSB-AD's score of the whole series ``data`` ([N] or [N, C]) by detector ``name`` (a
    column of TSB-AD's table: see :data:`UNIVARIATE` / :data:`MULTIVARIATE`): fitted on all of
    ``data``, the published hyper-parameters, the period-rule window, TSB-AD's padding; one
    float64 score per point, higher = more anomalous, MinMax-scaled unless ``scale=False``.
    ``seed`` is the isolation forests' ``random_state`` (TSB-AD's: 0); the others are
    deterministic."""
    x = as_channels(data)
    hp = hyper_parameters(name, x.shape[1])
    window = detector_window(name, x)
    scores = SCORERS[name, x.shape[1] == 1](x, hp, window, int(seed))
    if len(scores) != len(x):
        raise AssertionError(f"{name}: {len(scores)} scores for {len(x)} points")
    return minmax(scores) if scale else scores


# ------------------------------------------------------------------- in the pipeline
def tsbad_detector(backbone: str, n_channels: int, where: str = "") -> str:
    """The TSB-AD table column ``backbone`` runs as under ``protocol=tsbad`` on a series of
    ``n_channels`` channels (config.schema.TSBAD_DETECTORS); DataError where TSB-AD has none."""
    uni, multi = TSBAD_DETECTORS[backbone]
    name = uni if n_channels == 1 else multi
    if name is None:
        raise DataError(
            f"{where or 'this series'}: {n_channels} channels, and TSB-AD's benchmark has no "
            f"multivariate counterpart of backbone={backbone} (protocol=tsbad runs "
            f"{sorted(b for b, (_, m) in TSBAD_DETECTORS.items() if m)} on multivariate series)"
        )
    return name


def score_split_tsbad(name: str, split, seed: int = 0) -> np.ndarray:
    """TSB-AD's ``name`` on every entity of a :class:`~madcluster_exp.data.SeriesSplit`, each
    entity its own series (:func:`score_series`, fitted on it, unscaled: TSB-AD's MinMax scaling
    changes no metric), concatenated. A series the detector cannot score (shorter than its
    window, fewer windows than its neighbours) raises DataError naming it."""
    out = []
    for seg in split.segments:
        values = split.values[seg.start : seg.end]
        try:
            out.append(score_series(name, values, seed=seed, scale=False))
        except ValueError as exc:
            raise DataError(
                f"{split.source}[{seg.name}]: TSB-AD's {name} cannot score this series of "
                f"{len(values)} points: {exc}"
            ) from None
    return np.concatenate(out)


def read_tsbad_csv(path) -> Tuple[np.ndarray, np.ndarray]:
    """A TSB-AD dataset file as its benchmark scripts read it: ``pd.read_csv(path).dropna()``,
    every column but the last ``Label`` as float64 data [N, C], the labels as int."""
    import pandas as pd

    df = pd.read_csv(path).dropna()
    return df.iloc[:, :-1].to_numpy(dtype=np.float64), df["Label"].astype(int).to_numpy()
