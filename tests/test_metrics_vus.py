"""Exactness against vus 0.0.6: live where vus is installed, stored golden values always."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from madcluster_exp.metrics import (MetricInputError, affiliation_suite, full_suite,
                                    range_suite, vus_get_metrics)
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


@pytest.mark.skipif(not _have_vus(), reason="vus not installed (make install adds it, lean)")
@pytest.mark.parametrize("seed", range(12))
def test_equals_vus_live_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(50, 3000))
    window = int(rng.choice([0, 1, 3, 8, 25, 100]))
    y = (np.convolve(rng.random(n) < 0.01, np.ones(int(rng.integers(1, 30))), "same") > 0)
    y = y.astype(np.int64)
    if y.sum() == 0:
        y[-3:] = 1
    s = rng.random(n) + 0.4 * y if seed % 2 else rng.integers(0, 3, n) / 2.0
    _assert_same(vus_get_metrics(s, y, window), vus_reference(y, s, window), seed)


@pytest.mark.skipif(not _have_vus(), reason="vus not installed")
def test_float32_inputs_give_the_same_values_as_vus():
    y, s, window = make_case(4)
    _assert_same(vus_get_metrics(s.astype(np.float32), y.astype(np.float32), window),
                 vus_reference(y.astype(np.float32), s.astype(np.float32), window), "float32")


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


@pytest.mark.parametrize("kwargs,match", [
    (dict(y_true=[0, 1, 1], y_score=[0.1, float("nan"), 0.3], window=2), "nan at index 1"),
    (dict(y_true=[0, 1, 3], y_score=[0.1, 0.2, 0.3], window=2), "binary"),
    (dict(y_true=[0, 1, 1], y_score=[0.1, 0.2], window=2), "2 values but y_true has 3"),
    (dict(y_true=[0, 1, 1], y_score=[0.1, 0.2, 0.3], window=-1), "non-negative"),
])
def test_range_inputs_are_validated(kwargs, match):
    with pytest.raises(MetricInputError, match=match):
        range_suite(**kwargs)


def test_range_metrics_are_keyword_only():
    with pytest.raises(TypeError):
        range_suite([0, 1], [0.1, 0.2], 2)  # noqa
