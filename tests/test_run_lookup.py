"""The run that evaluate's and predict's ``run=<run id | run directory>`` names
(madcluster_exp/tracking/lookup.py), against a real SQLite MLflow store."""

from __future__ import annotations

import json

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from madcluster_exp.evaluate import EvaluateError, locate
from madcluster_exp.predict import open_run
from madcluster_exp.serving.bundle import ModelError
from madcluster_exp.tracking.lookup import RunNotFound, RunRef, find_run


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """(tracking uri, id of a run with a ``scores.npz`` artifact, id of a run without); one
    store for the module, as creating its schema takes seconds."""
    tmp_path = tmp_path_factory.mktemp("store")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e", artifact_location=(tmp_path / "art").as_uri())
    with_scores = client.create_run(exp).info.run_id
    np.savez(tmp_path / "scores.npz", test_score=np.arange(3.0))
    client.log_artifact(with_scores, str(tmp_path / "scores.npz"))
    return uri, with_scores, client.create_run(exp).info.run_id


def test_a_run_id_is_found_in_the_store_and_its_artifacts_download(store, tmp_path):
    uri, run_id, bare = store
    ref = find_run(run_id, uri)
    assert ref == RunRef(None, run_id, uri)
    local = ref.download("scores.npz", str(tmp_path / "dl"))
    np.testing.assert_array_equal(np.load(local)["test_score"], [0.0, 1.0, 2.0])
    assert find_run(bare, uri).download("scores.npz", str(tmp_path / "dl2")) is None


def test_a_directory_gives_the_run_id_and_uri_of_its_run_info_and_uri_overrides(tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    assert find_run(str(job), None) == RunRef(job, None, None)
    (job / "run_info.json").write_text(json.dumps({"run_id": "r1", "tracking_uri": "sqlite:///a"}))
    assert find_run(str(job), None) == RunRef(job, "r1", "sqlite:///a")
    assert find_run(str(job), "sqlite:///b") == RunRef(job, "r1", "sqlite:///b")


def test_neither_a_directory_nor_a_run_raises_the_commands_error_naming_the_store(store):
    uri = store[0]
    expected = f"run='abc' is neither a run directory nor a run id in {uri}"
    with pytest.raises(RunNotFound, match=expected):
        find_run("abc", uri)
    with pytest.raises(EvaluateError, match=expected):
        locate("abc", uri)
    with pytest.raises(ModelError, match=expected):
        open_run("abc", uri)


def test_evaluate_and_predict_name_the_artifact_a_found_run_lacks(store):
    uri, _, bare = store
    with pytest.raises(EvaluateError, match=f"MLflow run {bare} in .* has no scores.npz artifact"):
        locate(bare, uri)
    with pytest.raises(ModelError, match=f"MLflow run {bare} in .* has no model artifact"):
        open_run(bare, uri)
