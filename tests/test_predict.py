"""A finished run's model scores new data: the Python API, the command line (as subprocesses)
and MLflow's pyfunc flavour all reproduce the run's own test scores and predictions."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from madcluster_exp.app import run
from madcluster_exp.data import load_dataset
from madcluster_exp.predict import load_detector
from madcluster_exp.scoring.thresholds import (
    SPOTThreshold,
    build_threshold,
    fit_threshold,
    threshold_from_state,
)
from madcluster_exp.serving.bundle import ModelError
from tests.conftest import FAST, ROOT, compose_config


def _run(tmp: Path, *overrides: str):
    cfg = compose_config(
        [f"paths.output_dir={tmp / 'outputs'}", f"paths.root_dir={tmp}"] + FAST + list(overrides)
    )
    result = run(cfg, output_dir=tmp / "job", verbose=False)
    raw = load_dataset(cfg.dataset, tmp / "datasets")
    raw.test.unseal()
    return result, raw.test.get(), dict(np.load(tmp / "job" / "scores.npz"))


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A real tiny run (FAST config): its result, raw test split and saved scores."""
    return _run(tmp_path_factory.mktemp("predict"))


def _cli(*args: str, cwd: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("MADCLUSTER_FULL_ERROR", None)
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.run(
        [sys.executable, "-m", "madcluster_exp.predict", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def _timeeval_csv(path: Path, values: np.ndarray, labels=None) -> Path:
    frame = pd.DataFrame(values, columns=[f"ch{i}" for i in range(values.shape[1])])
    frame.insert(0, "timestamp", np.arange(len(values)))
    if labels is not None:
        frame["is_anomaly"] = labels
    frame.to_csv(path, index=False)
    return path


def test_api_reproduces_the_runs_test_scores_and_predictions(finished):
    result, test, saved = finished
    for source in (result.output_dir, result.run_id):
        det = load_detector(source, uri=result.tracking_uri)
        assert det.n_channels == 4 and det.window == 32
        assert det.threshold == pytest.approx(float(saved["threshold"]), rel=1e-12)
        for name, (a, b) in zip(saved["entity_names"], saved["entity_bounds"]):
            x = test.values[a:b]  # raw units: the detector applies the run's scaler
            np.testing.assert_allclose(
                det.score(x), saved["test_score"][a:b], rtol=1e-6, atol=1e-9, err_msg=str(name)
            )
            np.testing.assert_array_equal(det.predict(x), saved["test_pred"][a:b])
    assert saved["test_pred"].sum() > 0  # the comparison includes predicted anomalies


def test_the_saved_model_is_an_mlflow_pyfunc_model_scoring_as_the_api(finished):
    import mlflow

    result, test, saved = finished
    a, b = saved["entity_bounds"][1]
    x = test.values[a:b].astype(np.float64)
    mlflow.set_tracking_uri(result.tracking_uri)
    try:
        model = mlflow.pyfunc.load_model(f"runs:/{result.run_id}/model")
    finally:
        mlflow.set_tracking_uri(None)
    sig = model.metadata.signature
    assert len(sig.inputs.inputs) == 4
    assert sig.outputs.input_names() == ["score", "prediction"]
    out = model.predict(pd.DataFrame(x, columns=["a", "b", "c", "d"]))
    det = load_detector(result.output_dir)
    np.testing.assert_allclose(out["score"].to_numpy(), det.score(x), rtol=1e-12)
    np.testing.assert_array_equal(out["prediction"].to_numpy(), det.predict(x))
    np.testing.assert_array_equal(out["prediction"].to_numpy(), saved["test_pred"][a:b])


def test_the_model_is_the_runs_logged_model_and_loads_by_models_uri_from_anywhere(
    finished, tmp_path, monkeypatch
):
    """MLflow 3: the detector is a LoggedModel of its run (listed as the run's output, its
    files with the model, not among the run's artifacts), its MLmodel holds no path of this
    machine, and ``models:/<model id>`` loads it from another directory once the tracking
    URI is set (here by $MLFLOW_TRACKING_URI), leaving nothing in that directory."""
    import mlflow
    from mlflow.tracking import MlflowClient

    result, test, saved = finished
    client = MlflowClient(result.tracking_uri)
    run = client.get_run(result.run_id)
    (logged,) = client.search_logged_models([run.info.experiment_id])
    assert (logged.model_id, logged.name, logged.source_run_id) == (
        result.model_id,
        "model",
        result.run_id,
    )
    assert str(logged.status) == "READY"
    assert [o.model_id for o in run.outputs.model_outputs] == [result.model_id]
    assert "model" not in {a.path for a in client.list_artifacts(result.run_id)}
    mlmodel = (result.output_dir / "model" / "MLmodel").read_text()
    assert f"model_id: {result.model_id}" in mlmodel
    for machine_path in (str(ROOT), "/tmp", str(result.output_dir)):
        assert machine_path not in mlmodel, machine_path

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", result.tracking_uri)
    model = mlflow.pyfunc.load_model(f"models:/{result.model_id}")
    a, b = saved["entity_bounds"][0]
    out = model.predict(pd.DataFrame(test.values[a:b].astype(np.float64)))
    np.testing.assert_array_equal(out["prediction"].to_numpy(), saved["test_pred"][a:b])
    assert list(elsewhere.iterdir()) == []  # no stray ./mlflow.db or ./mlruns


def test_a_bundle_with_the_keys_before_their_rename_loads_and_scores_the_same(finished, tmp_path):
    """Bundles written before backbone.warmup_epochs (Deep SVDD) became radius_warmup_epochs
    and madcluster.combine became scoring.combine still load, into today's keys."""
    import json
    import shutil

    from madcluster_exp.serving.bundle import ARTIFACT, META, load_bundle

    result, test, saved = finished
    bundle = shutil.copytree(result.output_dir / "model" / "artifacts" / ARTIFACT, tmp_path / "b")
    meta = json.loads((bundle / META).read_text())
    config = meta["config"]
    assert config["backbone"]["name"] == "deepsvdd"
    config["backbone"]["warmup_epochs"] = 1  # the old default: fitted from epoch index 0
    del config["backbone"]["radius_warmup_epochs"]
    config["madcluster"]["combine"] = config["scoring"].pop("combine")
    (bundle / META).write_text(json.dumps(meta))
    det = load_bundle(bundle)
    assert det.cfg.backbone.radius_warmup_epochs == 0
    assert not hasattr(det.cfg.backbone, "warmup_epochs")
    assert det.cfg.scoring.combine == "sum" and not hasattr(det.cfg.madcluster, "combine")
    a, b = saved["entity_bounds"][0]
    np.testing.assert_allclose(
        det.score(test.values[a:b]), saved["test_score"][a:b], rtol=1e-6, atol=1e-9
    )


def test_cli_writes_csv_and_npz_of_a_file_and_of_a_dataset(finished, tmp_path):
    result, test, saved = finished
    a, b = saved["entity_bounds"][0]
    data = _timeeval_csv(tmp_path / "new.csv", test.values[a:b], test.labels[a:b])
    proc = _cli(
        f"run={result.output_dir}", f"data={data}", f"out={tmp_path / 'p.csv'}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    assert "against the data's labels" in proc.stdout
    frame = pd.read_csv(tmp_path / "p.csv")
    assert list(frame.columns) == ["row", "score", "prediction", "label"]
    np.testing.assert_allclose(frame["score"], saved["test_score"][a:b], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(frame["prediction"], saved["test_pred"][a:b])
    np.testing.assert_array_equal(frame["label"], test.labels[a:b])

    # By run id from the tracking store, the run's own dataset (its test split), as NPZ.
    proc = _cli(
        f"run={result.run_id}",
        "data=synthetic",
        f"out={tmp_path / 'p.npz'}",
        f"uri={result.tracking_uri}",
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr
    out = np.load(tmp_path / "p.npz")
    np.testing.assert_allclose(out["score"], saved["test_score"], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(out["prediction"], saved["test_pred"])
    np.testing.assert_array_equal(out["entity_bounds"], saved["entity_bounds"])


def test_bad_input_gives_a_clear_error_without_traceback(finished, tmp_path):
    result, test, _ = finished
    det = load_detector(result.output_dir)
    with pytest.raises(ModelError, match=r"shape \(100, 3\); this model was trained on 4 "):
        det.score(test.values[:100, :3])
    with pytest.raises(ModelError, match="20 rows; this model scores windows of 32 rows"):
        det.score(test.values[:20])
    bad = _timeeval_csv(tmp_path / "three.csv", test.values[:100, :3])
    proc = _cli(f"run={result.output_dir}", f"data={bad}", cwd=tmp_path)
    assert proc.returncode == 2
    assert "3 channels; this model was trained on 4" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _cli(
        "run=0123456789abcdef", "data=synthetic", f"uri={result.tracking_uri}", cwd=tmp_path
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "neither a run directory nor a run id" in proc.stderr
    proc = _cli(f"run={tmp_path}", "data=synthetic", cwd=tmp_path)
    assert proc.returncode == 2 and "no saved model" in proc.stderr
    assert _cli("--help", cwd=tmp_path).stdout.startswith("usage:")


def test_per_entity_runs_need_an_entity_except_on_their_own_dataset(tmp_path):
    result, test, saved = _run(tmp_path, "dataset.mode=per_entity", "train.epochs=1")
    with pytest.raises(ModelError, match="one model per entity .2.; choose one with entity="):
        load_detector(result.output_dir)
    with pytest.raises(ModelError, match="no model of that entity"):
        load_detector(result.output_dir, entity="entity-7")
    a, b = saved["entity_bounds"][1]
    det = load_detector(result.output_dir, entity="entity-1")
    np.testing.assert_allclose(
        det.score(test.values[a:b]), saved["test_score"][a:b], rtol=1e-6, atol=1e-9
    )
    import mlflow

    model = mlflow.pyfunc.load_model(str(result.output_dir / "model"))
    out = model.predict(
        pd.DataFrame(test.values[a:b].astype(np.float64)), params={"entity": "entity-1"}
    )
    np.testing.assert_array_equal(out["prediction"].to_numpy(), saved["test_pred"][a:b])
    # Each entity of the run's dataset by its own model: the run's pooled test scores.
    proc = _cli(
        f"run={result.output_dir}", "data=synthetic", f"out={tmp_path / 'p.npz'}", cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr
    out = np.load(tmp_path / "p.npz")
    np.testing.assert_allclose(out["score"], saved["test_score"], rtol=1e-6, atol=1e-9)
    np.testing.assert_array_equal(out["prediction"], saved["test_pred"])
    np.testing.assert_allclose(out["threshold"], saved["threshold"], rtol=1e-12)


@pytest.mark.parametrize("kind", ["val_percentile", "pot", "spot", "transductive"])
def test_a_threshold_restored_from_its_state_predicts_as_the_fitted_one(kind):
    rng = np.random.default_rng(0)
    val, test = rng.gumbel(size=2000), rng.gumbel(size=1500) + (np.arange(1500) > 1400) * 4
    cfg = compose_config([f"threshold={kind}"]).threshold
    fitted = fit_threshold(build_threshold(cfg), val, test, np.zeros(1500, np.int8))
    state = fitted.state()
    restored = threshold_from_state(state)
    expected = fitted.predict(test)  # SPOT moves its threshold along the stream
    np.testing.assert_array_equal(restored.predict(test), expected)
    assert expected.sum() > 0
    if kind == "spot":
        assert isinstance(restored, SPOTThreshold) and fitted.value != state["value"]
