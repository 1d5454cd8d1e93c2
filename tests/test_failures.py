"""Failures a person reads: a score the combiner cannot use ends a run with its message alone
(FAILED in MLflow, ``failure.kind``), and one failing series of a collection never sinks the
others (its own FAILED child run; the parent counts it)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from madcluster_exp.app import job, run
from madcluster_exp.errors import ExpectedError
from madcluster_exp.pipeline.collection import CollectionFailed, failure_kind
from madcluster_exp.pipeline.context import JobContext
from madcluster_exp.scoring import CombineError, ScoreCollapse, ScoreCombiner
from tests.conftest import compose_config
from tests.dataset_fixtures import make_timeeval, make_tsbad

# USAD with the plug-in, as small as a real run gets: a constant series collapses both scores.
TINY_USAD = [
    "backbone=usad",
    "madcluster=on",
    "backbone.window=8",
    "train.epochs=1",
    "train.patience=null",
    "train.progress=none",
    "tracking.plots=false",
    "tracking.log_model=false",
]


@pytest.fixture
def store(shared_store) -> Path:
    return shared_store


def _cfg(store: Path, tmp_path: Path, *overrides: str):
    return compose_config(
        [f"paths.output_dir={store}", f"paths.root_dir={tmp_path}", *TINY_USAD, *overrides]
    )


def test_the_combiners_refusals_are_expected_errors_and_a_constant_one_is_a_collapse():
    rng = np.random.default_rng(0)
    live = rng.gamma(2.0, size=200)
    with pytest.raises(ScoreCollapse, match="cannot standardise the 'madcluster' score") as err:
        ScoreCombiner("sum").fit({"backbone": live, "madcluster": np.full(200, 0.25)})
    assert isinstance(err.value, ExpectedError) and failure_kind(err.value) == "collapse"
    with pytest.raises(CombineError, match="product cannot use the 'backbone'") as err:
        ScoreCombiner("product").fit({"backbone": live - 3, "madcluster": live})
    assert not isinstance(err.value, ScoreCollapse) and failure_kind(err.value) == "error"


def _constant_csv(path: Path) -> None:
    """A TimeEval file whose values never change (its one anomaly is a level shift)."""
    make_timeeval(path, n=240, channels=1, anomaly=(200, 210))
    lines = path.read_text().splitlines()
    lines[1:] = [
        f"{line.split(',')[0]},{5.0 + 3.0 * (200 <= i < 210):.5f},{line.split(',')[-1]}"
        for i, line in enumerate(lines[1:])
    ]
    path.write_text("\n".join(lines) + "\n")


def test_a_collapsed_score_ends_a_single_run_with_the_combiners_message_alone(
    store, tmp_path, capsys
):
    data = tmp_path / "flat.csv"
    _constant_csv(data)
    cfg = _cfg(store, tmp_path, "dataset=csv", f"dataset.path={data}")
    with pytest.raises(SystemExit) as err:
        job(cfg, JobContext(cwd=tmp_path))
    assert err.value.code == 2
    stderr = capsys.readouterr().err
    assert stderr.splitlines()[-1].startswith("error: scoring.combine=sum cannot standardise the ")
    assert "Traceback" not in stderr and "ValueError" not in stderr
    client = MlflowClient(f"sqlite:///{store / 'mlflow.db'}")
    (r,) = client.search_runs(
        [client.get_experiment_by_name("madcluster_exp").experiment_id],
        f"params.`dataset.path` = '{data}'",
    )
    assert r.info.status == "FAILED"
    assert r.data.tags["failure.kind"] == "collapse"
    assert r.data.tags["error"].startswith("ScoreCollapse: scoring.combine=sum cannot standardise")


def test_a_series_that_fails_is_its_own_failed_run_and_the_collection_goes_on(store, tmp_path):
    data = tmp_path / "series"
    data.mkdir()
    first = make_tsbad(data, 1, n=240, n_train=120, anomaly=(200, 210), seed=3)[0].stem
    flat, _, _ = make_tsbad(data, 2, n=240, n_train=120, anomaly=(200, 210), seed=1)
    rows = flat.read_text().splitlines()
    rows[1:] = [
        f"{5.0 + 3.0 * (200 <= i < 210):.5f},{r.split(',')[-1]}" for i, r in enumerate(rows[1:])
    ]
    flat.write_text("\n".join(rows) + "\n")
    last = make_tsbad(data, 3, n=240, n_train=120, anomaly=(200, 210), seed=4)[0].stem
    cfg = _cfg(store, tmp_path, "dataset=collection", f"dataset.path={data}")
    result = run(cfg, output_dir=tmp_path / "job", verbose=False)

    client = MlflowClient(result.tracking_uri)
    parent = client.get_run(result.run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["collection.failed"] == "1"
    assert parent.data.tags["collection.failed_series"] == flat.stem
    assert parent.data.tags["collection.series"] == "2"
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{result.run_id}'"
    )
    status = {c.data.tags["series"]: c.info.status for c in children}
    assert status == {first: "FINISHED", flat.stem: "FAILED", last: "FINISHED"}
    (failed,) = [c for c in children if c.info.status == "FAILED"]
    assert failed.data.tags["failure.kind"] == "collapse"
    assert "cannot standardise" in failed.data.tags["error"]
    rows = list(csv.DictReader((result.output_dir / "failed.csv").open()))
    assert [(r["series"], r["kind"]) for r in rows] == [(flat.stem, "collapse")]
    # The series after the failed one finished: its metrics are real.
    done = {c.data.tags["series"]: c for c in children if c.info.status == "FINISHED"}
    assert 0.0 < done[last].data.metrics["test/auc_roc"] <= 1.0
    assert result.metrics["test/auc_roc_entity_mean"] == pytest.approx(
        np.mean([c.data.metrics["test/auc_roc"] for c in done.values()])
    )

    # Only when no series finishes does the job fail.
    for path in (data / f"{first}.csv", data / f"{last}.csv"):
        path.unlink()
    cfg = _cfg(store, tmp_path, "dataset=collection", f"dataset.path={data}", "tracking=none")
    with pytest.raises(CollectionFailed, match=f"no series finished:\n  failed {flat.stem} "):
        run(cfg, output_dir=tmp_path / "job2", verbose=False)
