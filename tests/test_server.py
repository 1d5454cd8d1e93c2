"""The team tracking server for real: `mlflow server` over a fresh PostgreSQL database (created
and dropped by the test), a parallel sweep logged through it and read back over REST, and a
SQLite store moved into it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest

from madcluster_exp.tracking import MLflowTracker
from madcluster_exp.tracking.migrate import migrate
from madcluster_exp.tracking.server import ServerError, wait_until_ready
from tests.conftest import FAST
from tests.conftest import free_port as _free_port


def _post(base, path, body):
    req = urllib.request.Request(
        f"{base}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(req, timeout=60) as resp:
        return json.loads(resp.read())


def _get(base, route, **query):
    with urllib.request.urlopen(
        f"{base}{route}?{urllib.parse.urlencode(query)}", timeout=60
    ) as resp:
        return resp.read()


def _all_runs(base, experiment="madcluster_exp"):
    exps = _post(base, "/api/2.0/mlflow/experiments/search", {"max_results": 100})
    exp_id = next(e["experiment_id"] for e in exps["experiments"] if e["name"] == experiment)
    return _post(
        base, "/api/2.0/mlflow/runs/search", {"experiment_ids": [exp_id], "max_results": 1000}
    )["runs"]


def _tags(run):
    return {t["key"]: t["value"] for t in run["data"].get("tags", [])}


# Eight jobs through the server; the server itself is tested by default by the migration test.
@pytest.mark.slow
def test_parallel_sweep_of_8_jobs_reads_back_over_rest_none_lost_none_duplicated(tmp_path, server):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env["MLFLOW_TRACKING_URI"] = server
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "madcluster_exp",
            "-m",
            *FAST,
            "train.epochs=1",
            "madcluster=off,on",
            "seed=0,1,2,3",
            "hydra/launcher=joblib",
            "hydra.launcher.n_jobs=2",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    runs = _all_runs(server)
    parents = [r for r in runs if _tags(r).get("sweep") == "parent"]
    assert len(parents) == 1
    parent_id = parents[0]["info"]["run_id"]
    children = [r for r in runs if _tags(r).get("mlflow.parentRunId") == parent_id]
    names = [r["info"]["run_name"] for r in children]
    assert len(children) == 8 and len(set(names)) == 8  # 0 lost, 0 duplicated
    assert {r["info"]["status"] for r in children} == {"FINISHED"}
    assert f"Sweep finished: MLflow parent run {parent_id}, 8 children (8 finished)" in out.stdout
    for child in children:
        metrics = {m["key"]: m["value"] for m in child["data"]["metrics"]}
        assert 0.0 <= metrics["test/auc_roc"] <= 1.0
        run_id = child["info"]["run_id"]
        listed = json.loads(_get(server, "/api/2.0/mlflow/artifacts/list", run_id=run_id))
        assert {"metrics.json", "config_resolved.yaml"} <= {f["path"] for f in listed["files"]}
        # Artifacts are proxied by the server: download one and compare with the metric.
        body = json.loads(_get(server, "/get-artifact", path="metrics.json", run_id=run_id))
        assert body["test/auc_roc"] == pytest.approx(metrics["test/auc_roc"])


def test_sqlite_store_moves_into_the_server_with_history_links_and_artifacts(tmp_path, server):
    sqlite = f"sqlite:///{tmp_path / 'local.db'}"
    parent = MLflowTracker(sqlite, "madcluster_exp", artifact_root=tmp_path / "art")
    parent.start("sweep-x", {}, {"sweep": "parent"})
    child = MLflowTracker(sqlite, "madcluster_exp", artifact_root=tmp_path / "art")
    child.start(
        "deepsvdd-synthetic-on-s0",
        {"seed": 0, "madcluster.k": 3},
        {"seed": "0"},
        parent_run_id=parent.run_id,
    )
    for step in range(3):
        child.log_metrics({"train/loss": 1.0 / (step + 1)}, step=step)
    note = tmp_path / "note.txt"
    note.write_text("kept")
    child.log_artifact(note)
    child.end("FINISHED")
    parent.end("FINISHED")

    id_map = migrate(sqlite, server, say=lambda *_: None)
    assert len(id_map) == 2
    again = migrate(sqlite, server, say=lambda *_: None)  # re-running copies nothing twice
    assert again == id_map and len(_all_runs(server)) == 2
    runs = {r["info"]["run_name"]: r for r in _all_runs(server)}
    new_child = runs["deepsvdd-synthetic-on-s0"]
    assert _tags(new_child)["mlflow.parentRunId"] == runs["sweep-x"]["info"]["run_id"]
    params = {p["key"]: p["value"] for p in new_child["data"]["params"]}
    assert params == {"seed": "0", "madcluster.k": "3"}
    history = json.loads(
        _get(
            server,
            "/api/2.0/mlflow/metrics/get-history",
            run_id=new_child["info"]["run_id"],
            metric_key="train/loss",
        )
    )
    assert [(m["step"], m["value"]) for m in history["metrics"]] == [
        (0, 1.0),
        (1, 0.5),
        (2, pytest.approx(1 / 3)),
    ]
    got = _get(server, "/get-artifact", path="note.txt", run_id=new_child["info"]["run_id"])
    assert got == b"kept"


def test_wait_fails_fast_with_the_server_log_when_the_process_dies(tmp_path):
    log = tmp_path / "server.log"
    log.write_text("boom: address already in use\n")
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])
    proc.wait()
    with pytest.raises(ServerError, match="(?s)exited with status 3.*address already in use"):
        wait_until_ready(proc, f"http://127.0.0.1:{_free_port()}", log, timeout=60)
