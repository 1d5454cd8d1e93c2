"""Exactness against vus 0.0.6: live where vus is installed, stored golden values always."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from madcluster_exp.metrics import (
    MetricInputError,
    affiliation_suite,
    full_suite,
    range_suite,
    vus_get_metrics,
)
from tests.vus_cases import GOLDEN, KEYS, N_CASES, make_case, vus_reference

TOL = 1e-9


def _assert_same(got, ref, case):
    for key in KEYS:
        a, b = got[key], ref[key]
        if isinstance(b, float) and math.isnan(b):
            assert math.isnan(a), (case, key, a)
        else:
            assert abs(a - b) <= TOL, (case, key, a, b)


@pytest.mark.parametrize("i", range(N_CASES))
def test_equals_stored_vus_values(i):
    golden = json.loads(GOLDEN.read_text())
    y, s, window = make_case(i)
    _assert_same(vus_get_metrics(s, y, window), golden[str(i)], i)


def _have_vus() -> bool:
    try:
        from vus.metrics import get_metrics  # noqa: F401

        return True
    except ImportError:
        return False


def _random_case(seed: int):
    """Small random labels; continuous, tied, heavy-tailed (3-sigma prediction not empty) or
    negative scores (each branch of Precision_at_k)."""
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 3000))
    window = int(rng.choice([0, 1, 3, 8, 25, 100]))
    y = np.convolve(rng.random(n) < 0.01, np.ones(int(rng.integers(1, 30))), "same") > 0
    y = y.astype(np.int64)
    if y.sum() == 0:
        y[-3:] = 1
    kind = seed % 4
    if kind == 0:
        s = rng.random(n) + 0.4 * y
    elif kind == 1:
        s = rng.integers(0, 3, n) / 2.0
    elif kind == 2:
        s = rng.exponential(0.1, n) + 2.0 * y * (rng.random(n) < 0.5)
    else:
        s = rng.standard_t(2, n) - 2.0 + 5.0 * y * (rng.random(n) < 0.5)
    return y, s, window


@pytest.mark.skipif(not _have_vus(), reason="vus not installed (make install adds it, lean)")
@pytest.mark.parametrize("seed", range(12))
def test_equals_vus_live_on_random_cases(seed):
    y, s, window = _random_case(seed)
    _assert_same(vus_get_metrics(s, y, window), vus_reference(y, s, window), seed)


@pytest.mark.skipif(not _have_vus(), reason="vus not installed")
def test_returns_every_key_of_vus_all():
    from vus.metrics import get_metrics

    y, s, window = make_case(37)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = get_metrics(s, y, metric="all", slidingWindow=window)
    assert list(vus_get_metrics(s, y, window)) == list(ref) and len(ref) == 15


@pytest.mark.skipif(not _have_vus(), reason="vus not installed")
def test_float32_inputs_give_the_same_values_as_vus():
    for i in (4, 39):
        y, s, window = make_case(i)
        _assert_same(
            vus_get_metrics(s.astype(np.float32), y.astype(np.float32), window),
            vus_reference(y.astype(np.float32), s.astype(np.float32), window),
            i,
        )


@pytest.mark.skipif(not _have_vus(), reason="vus not installed")
def test_all_one_labels_give_the_values_vus_defines():
    s = np.random.default_rng(3).standard_t(2, 300)
    y = np.ones(300, dtype=np.int64)
    _assert_same(vus_get_metrics(s, y, 10), vus_reference(y, s, 10), "all-one")


def test_labels_without_anomaly_report_every_vus_key_missing():
    # vus itself raises here (IndexError in its VUS segmentation)
    with pytest.warns(RuntimeWarning, match="no anomaly"):
        out = vus_get_metrics(np.linspace(0, 1, 80), np.zeros(80, dtype=int), 10)
    assert len(out) == 15 and all(math.isnan(v) for v in out.values())


def test_three_sigma_keys_by_hand():
    # 100 points, one spike of 10 at index 50 inside the anomaly [48, 52): mean + 3 std < 10,
    # so the prediction is {50}: P = 1, R = 1/4, F = 0.4; range recall = 0.2 * 1 + 0.8 * 1/4
    # = 0.4, range precision = 1 (the one predicted range is all anomalous), RF = 0.8 / 1.4.
    # k = 4, the 96th percentile of the score is 0, so Precision_at_k = TP / k = 1/4.
    s = np.zeros(100)
    s[50] = 10.0
    y = np.zeros(100, dtype=int)
    y[48:52] = 1
    out = vus_get_metrics(s, y, 4)
    expected = {
        "Precision": 1.0,
        "Recall": 0.25,
        "F": 0.4,
        "Rrecall": 0.4,
        "Rprecision": 1.0,
        "RF": 0.8 / 1.4,
        "Precision_at_k": 0.25,
    }
    assert {k: out[k] for k in expected} == pytest.approx(expected, abs=1e-12)


def test_golden_file_covers_every_case():
    assert len(json.loads(GOLDEN.read_text())) == N_CASES


def test_all_zero_labels_report_range_metrics_missing_with_a_warning():
    y = np.zeros(100, dtype=int)
    s = np.linspace(0, 1, 100)
    with pytest.warns(RuntimeWarning, match="no anomaly"):
        out = range_suite(y_true=y, y_score=s, window=10)
    assert all(math.isnan(v) for v in out.values())
    with pytest.warns(RuntimeWarning):
        out = full_suite(y_true=y, y_score=s, y_pred=(s > 0.5).astype(int), window=10)
    assert math.isnan(out["vus_pr"]) and math.isnan(out["affiliation_recall"])


def test_all_one_labels_match_the_package_quirk():
    y = np.ones(500, dtype=int)
    s = np.random.default_rng(0).random(500)
    out = range_suite(y_true=y, y_score=s, window=10)
    assert math.isnan(out["vus_roc"]) and math.isnan(out["r_auc_roc"])
    assert out["vus_pr"] == pytest.approx(1.0) and out["r_auc_pr"] == pytest.approx(1.0)


def test_affiliation_without_predicted_events():
    y = np.zeros(50, dtype=int)
    y[10:15] = 1
    out = affiliation_suite(y_true=y, y_pred=np.zeros(50, dtype=int))
    assert math.isnan(out["affiliation_precision"]) and out["affiliation_recall"] == 0.0


def test_affiliation_by_hand_for_a_perfect_and_a_shifted_prediction():
    y = np.zeros(20, dtype=int)
    y[5:10] = 1
    perfect = affiliation_suite(y_true=y, y_pred=y)
    assert perfect == {"affiliation_precision": 1.0, "affiliation_recall": 1.0}
    # One predicted point at [12, 13): distance to J = [5, 10) ranges over [2, 3]. E = [0, 20),
    # |J| = 5, m = min(5 - 0, 20 - 10) = 5. Fbar(x) = 1 - (|J| + d + min(d, m)) / |E|
    # = 1 - (5 + 2d) / 20, integrated over d in [2, 3]: 1 - (5 + 5) / 20 = 0.5.
    pred = np.zeros(20, dtype=int)
    pred[12] = 1
    assert affiliation_suite(y_true=y, y_pred=pred)["affiliation_precision"] == pytest.approx(0.5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(y_true=[0, 1, 1], y_score=[0.1, float("nan"), 0.3], window=2), "nan at index 1"),
        (dict(y_true=[0, 1, 3], y_score=[0.1, 0.2, 0.3], window=2), "binary"),
        (dict(y_true=[0, 1, 1], y_score=[0.1, 0.2], window=2), "2 values but y_true has 3"),
        (dict(y_true=[0, 1, 1], y_score=[0.1, 0.2, 0.3], window=-1), "non-negative"),
    ],
)
def test_range_inputs_are_validated(kwargs, match):
    with pytest.raises(MetricInputError, match=match):
        range_suite(**kwargs)


def test_range_metrics_are_keyword_only():
    with pytest.raises(TypeError):
        range_suite([0, 1], [0.1, 0.2], 2)  # noqa
