"""Sweeps on a real local Ray cluster (a head and a worker node as separate processes) logging
into the PostgreSQL-backed team server: every job finishes as a child of one parent, with the
thread count the launcher gave it; a job whose process is killed is recorded KILLED and the
sweep finishes the others."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import FAST


def _sweep(args, cwd, ray_address, tracking_uri, **popen):
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI",)}
    env.update(
        RAY_ADDRESS=ray_address, MLFLOW_TRACKING_URI=tracking_uri, RAY_USAGE_STATS_ENABLED="0"
    )
    cmd = [sys.executable, "-m", "madcluster_exp", "-m", "hydra/launcher=ray", *FAST, *args]
    return subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen
    )


def _children(client, parent_id):
    exp = client.get_experiment_by_name("madcluster_exp")
    return client.search_runs(
        [exp.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent_id}'"
    )


def _parent_id(client, tag_value):
    exp = client.get_experiment_by_name("madcluster_exp")
    (parent,) = client.search_runs(
        [exp.experiment_id], filter_string=f"tags.`sweep.dir` = '{tag_value}'"
    )
    return parent.info.run_id


def _job_processes():
    """PIDs of Ray worker processes running a sweep job (their title names the task)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and (proc / "cmdline").read_bytes().startswith(b"ray::_run_job"):
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _sweep_dir(cwd: Path, name: str) -> Path:
    return cwd / "outputs" / "multiruns" / name


# A Ray cluster, a PostgreSQL-backed server and a sweep: over a minute on 2 cores.
@pytest.mark.slow
def test_sweep_on_a_ray_cluster_into_the_postgres_server_and_a_killed_job(
    tmp_path, ray_cluster, server
):
    client = MlflowClient(server)
    # 4 jobs, one CPU (and one torch thread) each, over the cluster's two nodes.
    sweep = _sweep_dir(tmp_path, "four")
    proc = _sweep(
        ["train.epochs=1", "madcluster=off,on", "seed=0,1", f"hydra.sweep.dir={sweep}"],
        tmp_path,
        ray_cluster,
        server,
    )
    out, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 0, out[-3000:]
    children = _children(client, _parent_id(client, str(sweep)))
    assert len(children) == 4
    assert {c.info.status for c in children} == {"FINISHED"}
    assert {c.data.params["torch_threads"] for c in children} == {"1"}
    assert len({c.info.run_name for c in children}) == 4

    # 2 jobs running at once, one per node; kill one job's process while it trains.
    sweep = _sweep_dir(tmp_path, "killed")
    proc = _sweep(
        ["train.epochs=200", "seed=0,1", f"hydra.sweep.dir={sweep}"], tmp_path, ray_cluster, server
    )
    deadline = time.monotonic() + 900
    victims = []
    while time.monotonic() < deadline and proc.poll() is None:
        started = list(sweep.glob("*/run_info.json"))
        victims = _job_processes()
        if len(started) == 2 and victims:
            time.sleep(2.0)  # both runs exist in MLflow; let the victim train a little
            os.kill(victims[0], signal.SIGKILL)
            break
        time.sleep(0.5)
    assert victims, "no running job process found to kill"
    out, _ = proc.communicate(timeout=1800)
    assert proc.returncode == 0, out[-3000:]  # the sweep finished the other job
    children = _children(client, _parent_id(client, str(sweep)))
    statuses = sorted(c.info.status for c in children)
    assert statuses == ["FINISHED", "KILLED"], statuses
    killed = next(c for c in children if c.info.status == "KILLED")
    assert (
        "WorkerCrashedError" in killed.data.tags["error"]
        or "died" in killed.data.tags["error"].lower()
    )


def test_the_ray_launcher_is_found_and_configured_from_the_command_line(tmp_path):
    """Hydra discovers the plug-in and composes its settings (the sweep itself: make test-all)."""
    import importlib

    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "madcluster_exp",
            "hydra/launcher=ray",
            "hydra.launcher.cpus_per_job=2",
            "--cfg",
            "hydra",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    launcher = out.stdout.split("  launcher:\n", 1)[1].split("  sweeper:", 1)[0]
    target = "hydra_plugins.madcluster_ray_launcher.ray_launcher.RayLauncher"
    assert f"_target_: {target}" in launcher and "cpus_per_job: 2" in launcher
    module, name = target.rsplit(".", 1)
    assert callable(getattr(importlib.import_module(module), name))
