"""Classical detectors: each fits and scores as expected, through the job as every backbone;
the sanity flags; a test split without anomalies; madcluster=on is a configuration error."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hydra.errors import ConfigCompositionException
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from madcluster_exp.app import run
from madcluster_exp.classical import build_classical, score_split_classical, spread_to_points
from madcluster_exp.config import ConfigError, validate
from madcluster_exp.data.series import Segment, SeriesSplit, TestAccessError
from madcluster_exp.evaluation.sanity import run_flags, score_spread
from madcluster_exp.metrics.point import auc_roc
from tests.conftest import compose_config
from tests.dataset_fixtures import make_timeeval

WINDOW = 16


def _cfg(name: str, **extra):
    base = compose_config([f"backbone={name}", "madcluster=off", f"backbone.window={WINDOW}"])
    return OmegaConf.merge(base.backbone, extra)


def _series(n: int, seed: int, channels: int = 2) -> np.ndarray:
    """Two sinusoids with a little noise: every window of a normal stretch recurs in training."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)[:, None]
    x = np.sin(2 * np.pi * t / np.array([25.0, 40.0])[:channels])
    return (x + 0.05 * rng.standard_normal((n, channels))).astype(np.float32)


def _split(x: np.ndarray, labels=None) -> SeriesSplit:
    return SeriesSplit(x, [Segment("e", 0, len(x))], labels)


@pytest.fixture(scope="module")
def planted():
    """Training series, and a test series with one anomaly: a 20-step stretch where the first
    channel's cycle runs three times faster (a shape anomaly at the normal amplitude)."""
    train = _split(_series(1500, 0))
    x = _series(800, 1)
    labels = np.zeros(800, np.int8)
    t = np.arange(400, 420)
    x[400:420, 0] = np.sin(2 * np.pi * t / (25.0 / 3))
    labels[400:420] = 1
    return train, _split(x, labels)


# matrix_profile is slow only by its first call, which compiles stumpy's numba kernels.
@pytest.mark.parametrize(
    "name", ["knn", "iforest", "pca", pytest.param("matrix_profile", marks=pytest.mark.slow)]
)
def test_detector_ranks_a_planted_anomaly_top(name, planted):
    train, test = planted
    det = build_classical(_cfg(name), seed=0).fit(train)
    points = score_split_classical(det, test, 1, 256, "center", "mean")["backbone"]
    assert points.shape == (800,) and np.isfinite(points).all()
    top = int(np.argmax(points))
    assert 400 - WINDOW <= top < 420 + WINDOW, top  # the top score is at the anomaly
    assert auc_roc(y_true=test.labels, y_score=points) > 0.9


def test_knn_score_is_the_distance_to_the_kth_nearest_training_window():
    train = _split(np.arange(40, dtype=np.float32)[:, None])  # windows [i, i+1]: 39 of them
    det = build_classical(
        compose_config(
            ["backbone=knn", "madcluster=off", "backbone.window=2", "backbone.n_neighbors=3"]
        ).backbone,
        0,
    ).fit(train)
    probe = _split(np.array([[100.0], [101.0], [0.0]], np.float32))
    scores = det.decision_function(probe, np.array([0, 1]))
    # [100, 101] -> nearest training windows [38, 39], [37, 38], [36, 37]: 3rd is 64 * sqrt(2)
    # away; [101, 0] -> distances to [i, i+1] are sqrt((101-i)^2 + (i+1)^2), 3rd smallest.
    d2 = np.sort([np.hypot(101 - i, i + 1) for i in range(39)])[2]
    np.testing.assert_allclose(scores, [64 * np.sqrt(2), d2], rtol=1e-6)
    assert det.n_train_windows == 39


def test_random_is_seeded_and_ranks_like_chance():
    x = _series(20_000, 2)
    labels = (np.random.default_rng(5).random(20_000) < 0.1).astype(np.int8)
    test = _split(x, labels)

    def scores(seed):
        det = build_classical(_cfg("random"), seed).fit(_split(x[:100]))
        return score_split_classical(det, test, 1, 4096, "center", "mean")["backbone"]

    np.testing.assert_array_equal(scores(3), scores(3))
    assert not np.array_equal(scores(3), scores(4))
    assert abs(auc_roc(y_true=labels, y_score=scores(3)) - 0.5) < 0.02


def test_constant_scores_raise_the_constant_flag_and_others_do_not(planted):
    train, test = planted
    const = build_classical(_cfg("constant", value=2.5), 0).fit(train)
    points = score_split_classical(const, test, 1, 256, "center", "mean")["backbone"]
    assert np.all(points == 2.5)
    assert run_flags(score_spread(points)) == ["scores constant: no ranking at all"]
    nearly = np.r_[np.zeros(995), np.arange(1, 6)].astype(float)
    assert run_flags(score_spread(nearly))[0].startswith("scores nearly constant: 99.5 %")
    assert run_flags({**score_spread(np.arange(100.0)), "test/auc_roc": 0.3}) == [
        "AUC-ROC 0.300 < 0.5: ranks anomalies below normal points (worse than random)"
    ]
    assert run_flags({**score_spread(np.arange(100.0)), "test/auc_roc": 0.7}) == []


def test_spread_puts_window_scores_on_center_last_or_all_points():
    segs = [Segment("a", 0, 6), Segment("b", 6, 10)]
    starts = np.array([0, 1, 2, 3, 6, 7])  # window 3: 4 windows in a, 2 in b
    scores = np.array([1.0, 2.0, 3.0, 4.0, 10.0, 20.0])
    center = spread_to_points(10, segs, starts, scores, 3, "center", "mean")
    np.testing.assert_array_equal(center, [1, 1, 2, 3, 4, 4, 10, 10, 20, 20])
    last = spread_to_points(10, segs, starts, scores, 3, "last", "mean")
    np.testing.assert_array_equal(last, [1, 1, 1, 2, 3, 4, 10, 10, 10, 20])
    every = spread_to_points(10, segs, starts, scores, 3, "all", "max")
    np.testing.assert_array_equal(every, [1, 2, 3, 4, 4, 4, 10, 20, 20, 20])


def test_madcluster_on_with_a_classical_detector_is_a_configuration_error(make_cfg):
    cfg = make_cfg("backbone=iforest", "madcluster=on")
    with pytest.raises(
        ConfigError,
        match=r"madcluster=on with backbone=iforest \(family "
        r"classical\).*expected madcluster=off",
    ):
        validate(cfg)
    with pytest.raises(ConfigCompositionException, match=r"backbone\.spread=middle") as err:
        make_cfg("backbone=knn", "madcluster=off", "backbone.spread=middle")
    assert "expected one of [center, last, all]" in str(err.value.__cause__)


@pytest.mark.parametrize("protocol", ["point", "reference"])
def test_a_classical_run_goes_through_the_pipeline_and_mlflow(make_cfg, tmp_path, protocol):
    cfg = make_cfg("backbone=knn", "madcluster=off", "backbone.window=16", f"protocol={protocol}")
    result = run(cfg, output_dir=tmp_path / "job", verbose=False)
    r = MlflowClient(result.tracking_uri).get_run(result.run_id)
    prefix = "test" if protocol == "point" else "ref"
    assert 0.5 < r.data.metrics[f"{prefix}/auc_roc"] <= 1.0
    assert r.data.metrics["time/fit_s"] > 0
    assert "val/best_loss" not in r.data.metrics and "train/epochs_run" not in r.data.metrics
    assert r.data.params["classical/library"] == "sklearn.neighbors.NearestNeighbors"
    assert int(r.data.params["classical/train_windows"]) > 100
    assert r.data.tags["family"] == "classical" and r.data.tags["sanity"] == "ok"
    assert r.info.run_name == f"off-{r.data.tags['config_id']}-s0-knn-synthetic"


def test_a_constant_run_says_so_in_its_results_table(make_cfg, tmp_path, capsys):
    run(
        make_cfg("backbone=constant", "madcluster=off", "backbone.window=16"),
        output_dir=tmp_path / "job",
        verbose=True,
    )
    table = capsys.readouterr().out.split("Results:")[1]
    assert "sanity" in table and "scores constant: no ranking at all" in table


def test_a_test_split_without_anomalies_is_announced_first_and_reports_false_alarms(
    make_cfg, tmp_path, capsys
):
    path = tmp_path / "quiet.csv"
    make_timeeval(path, n=600, anomaly=(0, 0))  # no labelled anomaly anywhere
    with pytest.warns(RuntimeWarning, match="no anomaly"):
        result = run(
            make_cfg(
                "dataset=csv",
                f"dataset.path={path}",
                "backbone=knn",
                "madcluster=off",
                "backbone.window=16",
                "tracking.plots=false",
                fast=False,
            ),
            output_dir=tmp_path / "job",
            verbose=True,
        )
    out = capsys.readouterr().out
    announced, fitted = out.index("no labelled anomaly"), out.index("fitted on")
    assert announced < fitted  # said before the detector is fitted
    m = result.metrics
    for key in ("test/precision", "test/recall", "test/f1", "test/f1_pa", "test/auc_roc"):
        assert np.isnan(m[key]), key
    pred = np.load(result.output_dir / "scores.npz")["test_pred"]
    assert m["test/false_alarm_rate"] == pytest.approx(pred.mean())
    r = MlflowClient(result.tracking_uri).get_run(result.run_id)
    assert r.data.tags["test.anomalies"] == "none"


def test_anomaly_count_reads_labels_without_unsealing_the_test_split(make_cfg, tmp_path):
    from madcluster_exp.data import load_dataset

    cfg = make_cfg()
    raw = load_dataset(cfg.dataset, tmp_path)
    total = raw.test.anomaly_count()
    per_entity = [raw.subset(e).test.anomaly_count() for e in raw.entities]
    assert total > 0 and sum(per_entity) == total
    assert raw.test.sealed
    with pytest.raises(TestAccessError):
        raw.test.get()
    raw.test.unseal()
    assert int(raw.test.get().labels.sum()) == total


def test_bench_times_classical_detectors_against_the_fastest_deep_backbone(tmp_path):
    from madcluster_exp.bench.classical import main

    main(
        [
            "--rows",
            "400",
            "--channels",
            "2",
            "--detectors",
            "knn",
            "random",
            "--deep",
            "usad",
            "--out",
            str(tmp_path),
        ]
    )
    rows = json.loads((tmp_path / "classical.json").read_text())["rows"]
    deep, knn, rand = rows
    assert deep["detector"] == "usad" and deep["kind"] == "deep, 1 epoch"
    assert knn["train_windows"] > 100 and knn["warmup_s"] > 0
    for r in (knn, rand):
        assert r["total_s"] == pytest.approx(r["fit_s"] + r["score_s"])
        assert r["vs_fastest_deep"] == pytest.approx(r["total_s"] / deep["total_s"])
