"""Multirun sweeps as MLflow parent/child runs, failures, Ctrl-C, a real mlflow server, reports."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

FAST = ["dataset.n_entities=2", "dataset.train_length=600", "dataset.test_length=600",
        "dataset.n_channels=3", "backbone.window=16", "train.epochs=1", "train.patience=null",
        "tracking.plots=false", "train.progress=line"]


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(extra)
    return env


def _cli(args, cwd, timeout=600, **env):
    return subprocess.run([sys.executable, "-m", "madcluster_exp", *args], cwd=cwd,
                          env=_env(**env), capture_output=True, text=True, timeout=timeout)


def _runs(uri):
    client = MlflowClient(uri)
    exp = client.get_experiment_by_name("madcluster_exp")
    return client, client.search_runs([exp.experiment_id], max_results=1000)


def _sweep_dir(cwd: Path) -> Path:
    (d,) = [p.parent for p in cwd.glob("outputs/multiruns/*/*/mlflow_parent.json")]
    return d


def test_joblib_sweep_8_jobs_2_parallel_gives_one_parent_and_8_children(tmp_path):
    out = _cli(["-m", *FAST, "hydra/launcher=joblib", "hydra.launcher.n_jobs=2",
                "madcluster=off,on", "seed=0,1,2,3"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    client, runs = _runs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    parents = [r for r in runs if r.data.tags.get("sweep") == "parent"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and len(runs) == 9
    parent = parents[0]
    assert parent.info.status == "FINISHED" and parent.data.tags["children"] == "8"
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert sorted(c.info.run_name for c in children) == sorted(
        f"deepsvdd-synthetic-{c.data.tags['madcluster']}-{c.data.tags['config_id']}"
        f"-s{c.data.tags['seed']}" for c in children)
    assert len({c.info.run_name for c in children}) == 8
    assert len({c.data.tags["config_id"] for c in children}) == 2  # off and on
    assert sorted(int(c.data.tags["hydra.job.num"]) for c in children) == list(range(8))
    for c in children:
        assert c.info.status == "FINISHED"
        assert {"git_commit", "protocol", "threshold.kind", "hydra.overrides"} <= set(c.data.tags)
        assert c.data.params["seed"] == c.data.tags["seed"]  # own identifying params, no inheritance
        assert c.data.params["torch_threads"] == str(max(1, (os.cpu_count() or 1) // 2))
        assert "test/vus_pr" in c.data.metrics


def test_a_failing_job_is_marked_failed_and_the_sweep_goes_on(tmp_path):
    out = _cli(["-m", *FAST, "dataset.entities=[entity-0],[entity-9]"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "marked FAILED, sweep continues" in out.stdout + out.stderr
    client, runs = _runs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    children = {r.data.tags["hydra.job.num"]: r for r in runs if "mlflow.parentRunId" in r.data.tags}
    assert children["0"].info.status == "FINISHED"
    failed = children["1"]
    assert failed.info.status == "FAILED" and "entity-9" in failed.data.tags["error"]
    assert "traceback.txt" in {a.path for a in client.list_artifacts(failed.info.run_id)}
    parent = next(r for r in runs if r.data.tags.get("sweep") == "parent")
    assert parent.data.tags["children.failed"] == "1"


def test_ctrl_c_marks_the_running_run_killed(tmp_path):
    db = tmp_path / "outputs" / "mlflow.db"
    proc = subprocess.Popen([sys.executable, "-m", "madcluster_exp", *FAST, "train.epochs=500",
                             "dataset.train_length=3000"], cwd=tmp_path, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    for line in proc.stdout:  # wait until training is under way
        if line.startswith("epoch 2/") or time.time() > deadline:
            break
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=120)
    assert proc.returncode != 0
    _, runs = _runs(f"sqlite:///{db}")
    assert [r.info.status for r in runs] == ["KILLED"]
    assert "train/loss" in runs[0].data.metrics


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rest(base, path, body):
    req = urllib.request.Request(f"{base}{path}", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return json.loads(resp.read())


def test_sweep_logged_to_a_real_mlflow_server_reads_back_over_rest(tmp_path):
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}",
         "--artifacts-destination", str(tmp_path / "server-artifacts")],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                time.sleep(0.5)
        else:
            pytest.fail("mlflow server did not come up on 127.0.0.1 within 60 s")
        out = _cli(["-m", *FAST, "madcluster=off,on"], tmp_path, MLFLOW_TRACKING_URI=base)
        assert out.returncode == 0, out.stderr[-3000:]
        exps = _rest(base, "/api/2.0/mlflow/experiments/search", {"max_results": 10})
        exp_id = next(e["experiment_id"] for e in exps["experiments"]
                      if e["name"] == "madcluster_exp")
        found = _rest(base, "/api/2.0/mlflow/runs/search",
                      {"experiment_ids": [exp_id], "max_results": 100})["runs"]
        names = sorted(r["info"]["run_name"] for r in found)
        assert names[:2] == ["deepsvdd-synthetic-off-s0", "deepsvdd-synthetic-on-s0"]
        assert names[2].startswith("sweep-")
        child = next(r for r in found if r["info"]["run_name"] == "deepsvdd-synthetic-on-s0")
        metrics = {m["key"]: m["value"] for m in child["data"]["metrics"]}
        params = {p["key"]: p["value"] for p in child["data"]["params"]}
        assert 0 <= metrics["test/auc_roc"] <= 1 and params["madcluster.enabled"] == "True"
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)


def test_report_from_a_sweep_dir_writes_tables_plots_and_logs_them(tmp_path):
    out = _cli(["-m", *FAST, "madcluster=off,on", "seed=0,1", "madcluster.k=1"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    sweep = _sweep_dir(tmp_path)
    rep = subprocess.run([sys.executable, "-m", "madcluster_exp.report", str(sweep),
                          "report.metrics=[test/f1,test/auc_roc]"], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    parent = json.loads((sweep / "mlflow_parent.json").read_text())["run_id"]
    out_dir = tmp_path / "outputs" / "reports" / parent
    for name in ("report.md", "summary.csv", "onoff.csv", "onoff_bars.png", "training_curves.png"):
        assert (out_dir / name).exists(), name
    md = (out_dir / "report.md").read_text()
    assert "| madcluster.enabled | n | test/f1 | test/auc_roc |" in md
    assert "on − off" in md and "pairs" in md
    import pandas as pd
    onoff = pd.read_csv(out_dir / "onoff.csv")
    assert onoff["pairs"].tolist() == [2]
    # Error bars: the std over seeds of each side; 2 pairs are too few for a paired test.
    assert onoff["test/f1 on std"].notna().all() and onoff["test/f1 p"].isna().all()
    assert "Too few pairs for a test: 1 of 1 configurations have fewer than 5" in md
    assert "![MADCluster off vs on](onoff_bars.png)" in md
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    logged = {a.path for a in client.list_artifacts(parent, "report")}
    assert "report/report.md" in logged and "report/onoff_bars.png" in logged
    bad = subprocess.run([sys.executable, "-m", "madcluster_exp.report", str(sweep),
                          "report.metrics=[test/nope]"], cwd=tmp_path, env=_env(),
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "test/nope" in bad.stderr


def test_k_sweep_report_has_curves(tmp_path):
    out = _cli(["-m", *FAST, "madcluster.k=1,2,3"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rep = subprocess.run([sys.executable, "-m", "madcluster_exp.report", str(_sweep_dir(tmp_path)),
                          "log=false"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                         timeout=300)
    assert rep.returncode == 0, rep.stderr[-3000:]
    assert "| madcluster.k | n |" in rep.stdout
    assert list((tmp_path / "outputs" / "reports").glob("*/k_sweep.png"))


def test_submitit_local_launcher_runs_children_of_one_parent(tmp_path):
    out = _cli(["-m", *FAST, "hydra/launcher=submitit_local", "seed=0,1"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    _, runs = _runs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 2 and all(c.info.status == "FINISHED" for c in children)


def test_optuna_search_minimises_the_validation_loss(tmp_path):
    out = _cli(["-m", *FAST, "hparams_search=optuna_val", "hydra.sweeper.n_trials=2"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Best value" in out.stderr + out.stdout
    _, runs = _runs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    trials = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(trials) == 2 and len({r.info.run_name for r in trials}) == 2


def test_experiment_smoke_is_a_sweep_of_off_on_and_seeds(tmp_path):
    out = _cli(["-m", "experiment=smoke", "train.epochs=1"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    _, runs = _runs(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    names = sorted(r.info.run_name for r in children)
    assert names == sorted(f"deepsvdd-synthetic-{r.data.tags['madcluster']}-"
                           f"{r.data.tags['config_id']}-s{r.data.tags['seed']}-smoke"
                           for r in children)
    assert len(set(names)) == 4
