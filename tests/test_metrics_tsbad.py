"""Exactness against TSB-AD 1.5's get_metrics: live where tsb-ad is installed (a few small cases;
its own code takes about a second per call even at 300 points), stored golden values always."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest

from madcluster_exp.evaluate import EvaluateError, parse_args, recompute
from madcluster_exp.metrics import MetricInputError, tsbad_get_metrics, vus_get_metrics
from tests.vus_cases import (
    TSBAD_CASES,
    TSBAD_GOLDEN,
    TSBAD_KEYS,
    case_pred,
    make_case,
    tsbad_reference,
)

TOL = 1e-9


def _have_tsbad() -> bool:
    try:
        from TSB_AD.evaluation.metrics import get_metrics  # noqa: F401

        return True
    except ImportError:
        return False


live = pytest.mark.skipif(
    not _have_tsbad(), reason="tsb-ad not installed (make install adds it, lean)"
)


def _assert_same(got, ref, case):
    assert list(got) == list(TSBAD_KEYS), case
    for key in TSBAD_KEYS:
        a, b = got[key], ref[key]
        if math.isnan(b):
            assert math.isnan(a), (case, key, a)
        else:
            assert abs(a - b) <= TOL, (case, key, a, b)


@pytest.mark.parametrize("i", TSBAD_CASES)
def test_equals_stored_tsbad_values(i):
    golden = json.loads(TSBAD_GOLDEN.read_text())[str(i)]
    y, s, window = make_case(i)
    _assert_same(tsbad_get_metrics(s, y, window), golden["oracle"], (i, "oracle"))
    _assert_same(tsbad_get_metrics(s, y, window, pred=case_pred(y, s)), golden["pred"], (i, "pred"))


def test_golden_file_covers_every_tsbad_case():
    assert sorted(json.loads(TSBAD_GOLDEN.read_text()), key=int) == [str(i) for i in TSBAD_CASES]


def _edge_case(name: str):
    """Small cases that reach TSB-AD's quirks: a true segment at index 0 first hit later (PA
    backward fill), a one-point event at the series end (event finder), ties, a constant score
    (Affiliation-F NaN) and float32 scores (thresholds in float32)."""
    rng = np.random.default_rng(7)
    n = 240
    y = np.zeros(n, dtype=np.int64)
    y[:6] = 1
    y[80:95] = 1
    y[150:153] = 1
    y[-1] = 1
    s = rng.random(n) * 0.5
    s[3] = 0.9  # hits the segment at 0 after its first point
    s[-1] = 0.95
    s[85] = 1.0
    if name == "ties":
        s = np.round(s * 4) / 4
    elif name == "constant":
        s = np.full(n, 0.3)
    elif name == "float32":  # TSB-AD's thresholds are then float32: some scores sit on them
        s = s.astype(np.float32)
        s[160:200] = np.linspace(s.min(), s.max(), 100)[40:80]
    return y, s, 10


@live
@pytest.mark.parametrize("name", ["quirks", "ties", "constant", "float32"])
def test_equals_tsbad_live_on_edge_cases(name):
    y, s, window = _edge_case(name)
    _assert_same(tsbad_get_metrics(s, y, window), tsbad_reference(y, s, window), name)


@live
def test_equals_tsbad_live_with_given_predictions():
    y, s, window = _edge_case("quirks")
    for pred in (case_pred(y, s), np.ones_like(y), np.zeros_like(y), (s > 0.45).astype(int)):
        _assert_same(
            tsbad_get_metrics(s, y, window, pred=pred),
            tsbad_reference(y, s, window, pred),
            pred.sum(),
        )


@live
@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
def test_equals_tsbad_live_on_random_cases(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(100, 2000))
    window = int(rng.choice([0, 1, 5, 16, 51, 100]))
    y = np.convolve(rng.random(n) < 0.01, np.ones(int(rng.integers(1, 30))), "same") > 0
    y = y.astype(np.int64)
    y[-int(rng.integers(1, 4)) :] = seed % 2
    if y.sum() == 0:
        y[n // 2] = 1
    s = [rng.random(n) + 0.4 * y, rng.integers(0, 3, n) / 2.0, rng.standard_t(2, n) + 3.0 * y][
        seed % 3
    ]
    _assert_same(tsbad_get_metrics(s, y, window), tsbad_reference(y, s, window), seed)


def test_threshold_free_keys_equal_the_vus_definitions():
    y, s, window = make_case(3)
    t, v = tsbad_get_metrics(s, y, window), vus_get_metrics(s, y, window)
    for a, b in [
        ("AUC-PR", "AUC_PR"),
        ("AUC-ROC", "AUC_ROC"),
        ("VUS-PR", "VUS_PR"),
        ("VUS-ROC", "VUS_ROC"),
    ]:
        assert t[a] == v[b], a


def test_point_adjustment_never_fills_index_0_backwards():
    # TSB-AD's backward fill stops at index 1: the segment [0, 3) hit at index 2 becomes
    # {1, 2} predicted, not {0, 1, 2}: TP = 2, FN = 1, FP = 0 -> PA-F1 = 0.8.
    y = np.zeros(20, dtype=int)
    y[:3] = 1
    y[10:12] = 1
    pred = np.zeros(20, dtype=int)
    pred[2] = 1
    out = tsbad_get_metrics(np.linspace(0, 1, 20), y, 2, pred=pred)
    assert out["PA-F1"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 3))


def test_a_one_point_event_at_the_end_is_never_detected():
    # TSB-AD's event finder ends an event that reaches the end one point early, so a lone
    # anomalous last point is an empty event: event recall 0 even when it is predicted.
    y = np.zeros(20, dtype=int)
    y[-1] = 1
    pred = y.copy()
    out = tsbad_get_metrics(np.linspace(0, 1, 20), y, 2, pred=pred)
    assert out["Event-based-F1"] == 0.0 and out["Standard-F1"] == 1.0


def test_constant_score_has_affiliation_f_missing_and_the_rest_defined():
    y, s, window = _edge_case("constant")
    out = tsbad_get_metrics(s, y, window)
    assert math.isnan(out["Affiliation-F"])
    assert out["PA-F1"] == 0.0 and out["AUC-ROC"] == 0.5


@pytest.mark.parametrize(
    "labels,what",
    [(np.zeros(50, dtype=int), "no anomaly"), (np.ones(50, dtype=int), "no normal point")],
)
def test_labels_tsbad_cannot_segment_report_missing_values_with_a_warning(labels, what):
    s = np.linspace(0, 1, 50)
    if _have_tsbad():  # the package itself raises here
        with pytest.raises(IndexError), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tsbad_reference(labels, s, 4)
    with pytest.warns(RuntimeWarning, match=what):
        out = tsbad_get_metrics(s, labels, 4)
    assert all(math.isnan(out[k]) for k in TSBAD_KEYS[2:])


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(pred=np.ones(7, dtype=int)), "pred has 7 values but labels has 6"),
        (dict(pred=np.array([0, 1, 2, 0, 0, 0])), "binary"),
        (dict(sliding_window=-1), "non-negative"),
    ],
)
def test_tsbad_inputs_are_validated(kwargs, match):
    y = np.array([0, 1, 1, 0, 0, 0])
    with pytest.raises(MetricInputError, match=match):
        tsbad_get_metrics(np.linspace(0, 1, 6), y, **kwargs)


def test_a_tsbad_run_logs_tsbad_keys_beside_the_default_ones_and_evaluate_recomputes_them(
    make_cfg, tmp_path
):
    from madcluster_exp.app import run

    result = run(
        make_cfg("train.epochs=1", "metrics.definition=tsbad"),
        output_dir=tmp_path / "j",
        verbose=False,
    )
    m = result.metrics
    names = (
        "auc_pr",
        "auc_roc",
        "vus_pr",
        "vus_roc",
        "standard_f1",
        "pa_f1",
        "event_f1",
        "range_f1",
        "affiliation_f",
    )
    assert {f"test/tsbad/{k}" for k in names} <= set(m)
    assert {f"test/tsbad/{k}_oracle" for k in names[4:]} <= set(m)
    assert m["test/tsbad/vus_pr"] == m["test/vus_pr"]
    assert m["test/tsbad/auc_roc"] == m["test/auc_roc"]
    # at the run's own threshold TSB-AD's Standard-F1 is the plain F1; the oracle is no lower
    assert m["test/tsbad/standard_f1"] == pytest.approx(m["test/f1"], abs=1e-12)
    assert m["test/tsbad/pa_f1_oracle"] >= m["test/tsbad/pa_f1"] - 1e-12
    saved = np.load(result.output_dir / "scores.npz")
    assert str(saved["metrics_definition"]) == "tsbad"
    again = recompute(result.output_dir / "scores.npz", "full", None)  # the run's definition
    assert again["test/tsbad/event_f1_oracle"] == m["test/tsbad/event_f1_oracle"]
    plain = recompute(result.output_dir / "scores.npz", "full", None, "vus006")
    assert not any("tsbad" in k for k in plain) and plain["test/vus_pr"] == m["test/vus_pr"]


def test_evaluate_rejects_an_unknown_definition():
    with pytest.raises(EvaluateError, match="definition='tsb': expected vus006 or tsbad"):
        parse_args(["run=x", "definition=tsb"])


def test_metrics_definition_is_checked_at_composition(make_cfg):
    from hydra.errors import ConfigCompositionException

    with pytest.raises(ConfigCompositionException, match=r"metrics\.definition=tsb") as err:
        make_cfg("metrics.definition=tsb")
    assert "expected one of [vus006, tsbad]" in str(err.value.__cause__)


@live
def test_metric_bench_compares_with_both_packages_and_skips_past_its_budget(tmp_path, capsys):
    from madcluster_exp.bench.metrics import main

    main(
        ["--sizes", "600", "1200", "--window", "5", "--tsbad-budget-s", "0", "--out", str(tmp_path)]
    )
    rows = json.loads((tmp_path / "metrics.json").read_text())["rows"]
    first, second = rows
    assert first["tsbad_max_abs_diff"] <= TOL and first["tsbad_speedup"] > 1
    assert "tsbad_s" not in second and "tsbad skipped" in second["note"]
    if "vus_s" in second:
        assert second["vus_max_abs_diff"] <= TOL
    assert "tsbad_speedup" in capsys.readouterr().out
