"""experiment=benchmark: a real sweep of detectors x series on the joblib launcher, resumed
without re-running anything, and the report that says where each detector stands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from madcluster_exp.config.store import job_dirname

# 3 detectors (knn, the sanity scorers random and constant) x 2 series (the entities of one
# synthetic dataset, one model each in the benchmark's per-entity mode), 1 seed.
SWEEP = [
    "-m",
    "experiment=benchmark",
    "backbone=knn,random,constant",
    "seed=0",
    "dataset.n_entities=2",
    "dataset.train_length=500",
    "dataset.test_length=500",
    "dataset.n_channels=3",
    "backbone.window=16",
    "tracking.plots=false",
    "hydra.launcher.n_jobs=2",
    "hydra.sweep.dir=outputs/bench_sweep",
]


def _env():
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def _run(args, cwd, module="madcluster_exp"):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def _runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("madcluster_exp")
    return client.search_runs([exp.experiment_id], max_results=100)


# ~25 s: with make test-all (the default suite keeps under 10 minutes on 2 cores).
@pytest.mark.slow
def test_benchmark_sweep_resumes_without_rerunning_and_reports_ranks_and_sanity(tmp_path):
    # A path-valued override names each job's folder without nesting folders in it.
    sweep = [*SWEEP, f"paths.data_dir={tmp_path / 'data'}"]
    first = _run(sweep, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    runs = _runs(tmp_path)
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    (parent,) = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    assert len(children) == 3 and all(c.info.status == "FINISHED" for c in children)
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert {c.data.params["dataset.mode"] for c in children} == {"per_entity"}

    sweep_dir = tmp_path / "outputs" / "bench_sweep"
    folders = [p for p in sweep_dir.iterdir() if p.is_dir()]
    assert len(folders) == 3 and all((p / "run_info.json").exists() for p in folders)
    for folder in folders:  # Hydra's name, separators encoded (and over 200 bytes, hashed)
        overrides = json.loads((folder / "overrides.json").read_text())["overrides"]
        assert folder.name == job_dirname(",".join(sorted(overrides)))

    second = _run(sweep, tmp_path)  # the same sweep directory: nothing left to run
    assert second.returncode == 0, second.stderr[-3000:]
    assert (second.stdout + second.stderr).count("not run again") == 3
    again = _runs(tmp_path)
    assert len(again) == len(runs) == 4  # one parent, three children: no new run
    (parent2,) = [r for r in again if r.data.tags.get("sweep") == "parent"]
    assert parent2.info.run_id == parent.info.run_id and parent2.data.tags["children"] == "3"
    assert parent2.info.status == "FINISHED"

    rep = _run([str(sweep_dir)], tmp_path, module="madcluster_exp.report")
    assert rep.returncode == 0, rep.stderr[-3000:]
    out_dir = tmp_path / "outputs" / "reports" / parent.info.run_id
    for name in ("rank_table.csv", "rank_per_series.csv", "rank_pvalues.csv", "cd_diagram.png"):
        assert (out_dir / name).stat().st_size > 0, name
    table = pd.read_csv(out_dir / "rank_table.csv")
    assert table["detector"].tolist()[0] == "knn"  # ranked first
    assert table.set_index("detector")["mean rank"]["knn"] == 1.0
    assert set(table["series"]) == {2}
    per_series = pd.read_csv(out_dir / "rank_per_series.csv")
    assert sorted(set(per_series["series"])) == ["entity-0", "entity-1"]
    sanity = table.set_index("detector")["sanity"]
    assert sanity["knn"] == "ok"
    assert "constant scores on 2/2 series" in sanity["constant"]
    assert "VUS-PR below knn on 2/2 series" in sanity["random"]
    md = (out_dir / "report.md").read_text()
    assert "Friedman + Nemenyi over 2 series" in md
    assert "| knn | 1 |" in md and "| sanity |" in md  # the summary's sanity column
    assert (
        json.loads((sweep_dir / "mlflow_parent.json").read_text())["run_id"] == parent.info.run_id
    )
