"""The metric catalog (madcluster_exp/metrics/catalog.py): the keys it declares are the test/
and ref/ keys real runs log, its input kinds hold, and the console's results table and a sweep
report show what it marks as shown, a test-only entry included."""

from __future__ import annotations

import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from madcluster_exp.app import run
from madcluster_exp.config import load
from madcluster_exp.metrics import catalog
from madcluster_exp.metrics.catalog import CATALOG, PREDICTION, SCORE, MetricSpec
from madcluster_exp.metrics.suite import definition_suite
from madcluster_exp.pipeline.outputs import format_results
from madcluster_exp.pipeline.plan import make_plan
from madcluster_exp.report.build import build_report
from tests.conftest import FAST, compose_config

PREFIX = {"point": "test/", "reference": "ref/"}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A real knn run under each protocol, in one MLflow store: {protocol: (cfg, result)}."""
    tmp = tmp_path_factory.mktemp("catalog")
    out = {}
    for protocol in PREFIX:
        cfg = compose_config(
            [
                f"paths.output_dir={tmp / 'outputs'}",
                f"paths.root_dir={tmp}",
                *FAST,
                "backbone=knn",
                "madcluster=off",
                "backbone.window=16",
                f"protocol={protocol}",
            ]
        )
        result = run(cfg, output_dir=tmp / f"job-{protocol}", verbose=False)
        out[protocol] = (make_plan(load(cfg)), result)
    return out


def _suite_keys(metrics, prefix: str) -> set:
    """A run's own metric keys under ``prefix`` (TSB-AD's ``tsbad/`` set aside)."""
    return {k for k in metrics if k.startswith(prefix) and "/" not in k[len(prefix) :]}


@pytest.mark.parametrize("protocol", list(PREFIX))
def test_every_declared_key_is_logged_and_every_logged_key_is_declared(runs, protocol):
    plan, result = runs[protocol]
    prefix = PREFIX[protocol]
    declared = {s.key for s in CATALOG if s.key.startswith(prefix)}
    assert _suite_keys(result.metrics, prefix) == declared
    logged = MlflowClient(result.tracking_uri).get_run(result.run_id).data.metrics
    assert declared <= set(logged)
    # The results table shows every key the catalog marks as shown, in the catalog's order.
    table = format_results(result, plan)
    shown = [s.key for s in CATALOG if s.results and s.key.startswith(prefix)]
    lines = [ln.split()[0] for ln in table.splitlines() if ln.strip().startswith(prefix)]
    assert shown and lines == shown


def test_input_kinds_say_what_each_point_metric_is_computed_from():
    """A score metric does not move when only the prediction does, a prediction metric does
    not move when only the score does."""
    rng = np.random.default_rng(0)
    y = np.zeros(800, np.int8)
    y[200:230] = y[500:520] = 1
    score = rng.random(800) + 0.8 * y
    pred = (score > 1.0).astype(np.int8)

    def suite(s, p):
        return definition_suite(definition="vus006", y_true=y, y_score=s, y_pred=p, window=8)

    base = suite(score, pred)
    new_pred = suite(score, (score > 0.6).astype(np.int8))
    new_score = suite(rng.random(800) + 0.3 * y, pred)
    kinds = {s.key[len("test/") :]: s.input for s in CATALOG if s.key.startswith("test/")}
    assert set(kinds) == set(base) and set(kinds.values()) == {SCORE, PREDICTION}
    for name, kind in kinds.items():
        same = new_pred if kind == SCORE else new_score
        assert same[name] == pytest.approx(base[name], nan_ok=True), (name, kind)
    assert any(new_pred[n] != base[n] for n, k in kinds.items() if k == PREDICTION)
    assert any(new_score[n] != base[n] for n, k in kinds.items() if k == SCORE)


def test_the_catalog_is_consistent():
    """Keys once each; ranks 1..n (one headline, higher is better, threshold-free, as every
    ranked metric); the reports' default metrics are point-protocol keys, which every sweep of
    point runs logs (a missing one stops the report)."""
    keys = [s.key for s in CATALOG]
    assert len(set(keys)) == len(keys)
    assert [s.rank for s in catalog.ranked()] == list(range(1, len(catalog.ranked()) + 1))
    assert catalog.headline().higher_is_better is True
    assert all(s.input == SCORE for s in catalog.ranked())
    assert catalog.report_keys() and all(k.startswith("test/") for k in catalog.report_keys())
    assert all(s.note for s in catalog.results_specs())


def test_a_new_catalog_entry_shows_in_the_results_table_and_the_report(runs, tmp_path, monkeypatch):
    """Declaring a key as shown is all it takes: here ``threshold/value``, which every point run
    logs, as a test-only entry."""
    plan, result = runs["point"]
    # A sweep of this one run, reported before and after the entry is declared.
    client = MlflowClient(result.tracking_uri)
    experiment = client.get_run(result.run_id).info.experiment_id
    parent = client.create_run(experiment).info.run_id
    client.set_tag(result.run_id, "mlflow.parentRunId", parent)

    def summary_header(name: str) -> str:
        out = build_report(parent, uri=result.tracking_uri, out_root=tmp_path / name, log=False)
        md = (out / "report.md").read_text()
        return next(ln for ln in md.splitlines() if ln.startswith("| n |"))

    assert summary_header("before").endswith("| test/f1_oracle | sanity |")
    assert "threshold/value" not in format_results(result, plan)

    entry = MetricSpec(
        "threshold/value", "threshold", SCORE, "test-only entry", results=True, report=True
    )
    monkeypatch.setattr(catalog, "CATALOG", CATALOG + (entry,))
    (line,) = [ln for ln in format_results(result, plan).splitlines() if "threshold/value" in ln]
    assert line.endswith("test-only entry") and f"{result.metrics['threshold/value']:.4f}" in line
    assert summary_header("after").endswith("| test/f1_oracle | threshold/value | sanity |")
