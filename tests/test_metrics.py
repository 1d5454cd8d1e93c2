"""Point metrics against scikit-learn (the reference for these definitions) and by hand."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    average_precision_score,
    f1_score,
    precision_recall_curve,
    precision_score,
    recall_score,
    roc_auc_score,
)

from madcluster_exp.metrics import (
    MetricInputError,
    auc_pr,
    auc_roc,
    basic_suite,
    best_f1,
    point_adjust,
    point_adjusted_f1,
    precision_recall_f1,
)


def _cases(n_cases=150, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n_cases):
        n = int(rng.integers(5, 2000))
        y = (rng.random(n) < rng.uniform(0.02, 0.5)).astype(np.int8)
        if y.sum() == 0:
            y[rng.integers(n)] = 1
        if y.sum() == n:
            y[rng.integers(n)] = 0
        kind = i % 3
        if kind == 0:
            s = rng.random(n)
        elif kind == 1:  # heavy ties
            s = rng.integers(0, 5, n).astype(float)
        else:  # binary scores
            s = rng.integers(0, 2, n).astype(float)
        yield y, s


def test_auc_roc_and_auc_pr_equal_sklearn():
    for y, s in _cases():
        assert auc_roc(y_true=y, y_score=s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert auc_pr(y_true=y, y_score=s) == pytest.approx(
            average_precision_score(y, s), abs=1e-12
        )


def test_best_f1_is_the_first_argmax_of_sklearns_pr_curve():
    for y, s in _cases(seed=1):
        p, r, t = precision_recall_curve(y, s)
        denom = p + r
        f = np.where(denom > 0, 2 * p * r / np.where(denom > 0, denom, 1), 0)
        i = int(np.argmax(f))
        got = best_f1(y_true=y, y_score=s)
        assert got["f1"] == pytest.approx(f[i], abs=1e-12)
        assert got["precision"] == pytest.approx(p[i], abs=1e-12)
        assert got["recall"] == pytest.approx(r[i], abs=1e-12)
        assert got["threshold"] == t[i]


def test_precision_recall_f1_equal_sklearn():
    rng = np.random.default_rng(2)
    for _ in range(50):
        y = rng.integers(0, 2, 300)
        p = rng.integers(0, 2, 300)
        got = precision_recall_f1(y_true=y, y_pred=p)
        assert got["precision"] == pytest.approx(precision_score(y, p))
        assert got["recall"] == pytest.approx(recall_score(y, p))
        assert got["f1"] == pytest.approx(f1_score(y, p))


def test_point_adjust_by_hand():
    y = np.array([0, 1, 1, 1, 0, 0, 1, 1, 0, 1])
    p = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(point_adjust(y_true=y, y_pred=p), [1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
    got = point_adjusted_f1(y_true=y, y_pred=p)
    # TP = 3, FP = 1, FN = 3
    assert got["precision"] == pytest.approx(3 / 4)
    assert got["recall"] == pytest.approx(3 / 6)
    assert got["f1"] == pytest.approx(2 * 0.75 * 0.5 / 1.25)


def test_perfect_and_inverted_scores():
    y = np.array([0, 0, 1, 1, 0])
    s = np.array([0.1, 0.2, 0.9, 0.8, 0.3])
    assert auc_roc(y_true=y, y_score=s) == 1.0
    assert auc_roc(y_true=y, y_score=-s) == 0.0
    assert best_f1(y_true=y, y_score=s)["f1"] == 1.0


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(y_true=[0, 1, 2], y_score=[0.1, 0.2, 0.3]), "binary 0/1; found 2 at index 2"),
        (dict(y_true=[0, 1, 1], y_score=[0.1, np.nan, 0.3]), "nan at index 1"),
        (dict(y_true=[0, 1, 1], y_score=[0.1, np.inf, 0.3]), "inf at index 1"),
        (dict(y_true=[0, 1, 1], y_score=[0.1, 0.2]), "2 values but y_true has 3"),
        (dict(y_true=[], y_score=[]), "empty"),
    ],
)
def test_inputs_are_validated(kwargs, match):
    with pytest.raises(MetricInputError, match=match):
        auc_roc(**kwargs)


def test_metrics_are_keyword_only():
    with pytest.raises(TypeError):
        auc_roc([0, 1], [0.1, 0.2])  # noqa


def test_suite_labels_oracle_and_pa_and_warns_on_all_zero_labels():
    y = np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0])
    s = np.linspace(0, 1, 10)
    out = basic_suite(y_true=y, y_score=s, y_pred=(s > 0.5).astype(int))
    for key in [
        "precision",
        "recall",
        "f1",
        "auc_roc",
        "auc_pr",
        "f1_oracle",
        "f1_pa",
        "f1_pa_random",
        "precision_oracle",
        "recall_pa",
    ]:
        assert key in out
    assert out["f1_oracle"] >= out["f1"]
    assert out["f1_pa"] >= out["f1"]
    with pytest.warns(RuntimeWarning, match="no anomaly"):
        out = basic_suite(y_true=np.zeros(10), y_score=s, y_pred=(s > 0.5).astype(int))
    assert np.isnan(out["auc_roc"]) and np.isnan(out["auc_pr"])
