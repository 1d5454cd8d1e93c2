"""Checkpoints, resume after kill -9, NaN guard, weights-only loading."""

from __future__ import annotations

import json
import math
import os
import shlex
import signal
import subprocess
import sys

import pytest
import torch
from mlflow.tracking import MlflowClient

from madcluster_exp.app import run
from madcluster_exp.detector import Detector
from madcluster_exp.training import TrainingDivergedError

ARGS = [
    "dataset.n_entities=2",
    "dataset.train_length=2500",
    "dataset.test_length=600",
    "dataset.n_channels=4",
    "backbone.window=32",
    "train.epochs=8",
    "train.patience=null",
    "tracking.plots=false",
    "train.progress=line",
    "backbone=slmr",
    "backbone.window=10",
    "backbone.width=30",
    "backbone.gru_hidden=16",
]


def _cmd(run_dir):
    return [sys.executable, "-m", "madcluster_exp", *ARGS, f"hydra.run.dir={run_dir}"]


def _env():
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


# Two full runs and a killed one; test_rerun continues a run's checkpoints by default.
@pytest.mark.slow
def test_kill_9_then_rerun_continues_to_the_same_metrics_in_the_same_mlflow_run(tmp_path):
    # Uninterrupted reference run.
    ref = subprocess.run(
        _cmd("outputs/ref"), cwd=tmp_path, env=_env(), capture_output=True, text=True, timeout=600
    )
    assert ref.returncode == 0, ref.stderr[-3000:]
    # Killed after epoch 3's checkpoint (the epoch line is printed after the checkpoint).
    proc = subprocess.Popen(
        _cmd("outputs/killed"),
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stderr:
        if line.startswith("epoch 3/8"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "outputs/killed/checkpoints/last.pt").exists()
    resumed = subprocess.run(
        _cmd("outputs/killed"),
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    m_ref = json.loads((tmp_path / "outputs/ref/metrics.json").read_text())
    m_res = json.loads((tmp_path / "outputs/killed/metrics.json").read_text())
    for key in ("test/f1", "test/auc_roc", "test/vus_pr", "val/best_loss", "threshold/value"):
        assert m_res[key] == m_ref[key], key
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("madcluster_exp")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == 2  # the reference and the killed-then-resumed run: no duplicate
    killed_id = json.loads((tmp_path / "outputs/killed/run_info.json").read_text())["run_id"]
    r = client.get_run(killed_id)
    assert r.info.status == "FINISHED" and r.data.tags["resumed"] == "1"
    steps = sorted({m.step for m in client.get_metric_history(killed_id, "train/loss")})
    assert steps == list(range(1, 9))


# Epochs long enough (~0.1-0.3 s) that Ctrl-C after epoch 2's line lands well before the job
# ends; one thread, which a busy machine slows least.
CTRL_C = [
    "dataset.n_entities=2",
    "dataset.train_length=3000",
    "dataset.test_length=600",
    "dataset.n_channels=3",
    "backbone.window=16",
    "train.epochs=8",
    "train.patience=null",
    "tracking.plots=false",
    "train.progress=line",
    "train.num_threads=1",
]


def _sigint_default():
    """In the child: SIGINT as Python expects it. A suite started in the background (``make
    test &``) runs with SIGINT ignored, which a child inherits, and Python then installs no
    KeyboardInterrupt handler: the job would train on through Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_prints_one_line_whose_command_resumes_the_same_run_to_a_clean_finish(tmp_path):
    """Ctrl-C (SIGINT) during training: exit 130, one line (no traceback) naming the run,
    marked KILLED with what it logged so far; the command that line prints continues the
    same MLflow run from its checkpoint, which ends FINISHED without the interruption's error
    tag or traceback."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "madcluster_exp", *CTRL_C],
        cwd=tmp_path,
        env=_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=_sigint_default,
    )
    try:
        for line in proc.stderr:  # epoch lines go to stderr, after the epoch's checkpoint
            if line.startswith("epoch 2/8"):
                proc.send_signal(signal.SIGINT)
                break
        rest = proc.communicate(timeout=120)[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 130, rest
    said = [ln for ln in rest.splitlines() if not ln.startswith("epoch ")]
    assert len(said) == 1 and said[0].startswith("interrupted: MLflow run "), rest
    (info_path,) = tmp_path.glob("outputs/runs/*/*/run_info.json")
    info = json.loads(info_path.read_text())
    assert info["run_id"] in said[0] and info["status"] == "KILLED"
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    killed = client.get_run(info["run_id"])
    assert killed.info.status == "KILLED" and "KeyboardInterrupt" in killed.data.tags["error"]
    assert "train/loss" in killed.data.metrics
    assert "traceback.txt" in {a.path for a in client.list_artifacts(info["run_id"])}

    command = said[0].split("resume it with: ", 1)[1]
    argv = shlex.split(command)
    assert argv[:3] == ["python", "-m", "madcluster_exp"]
    resumed = subprocess.run(
        [sys.executable, *argv[1:]],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming from" in resumed.stdout + resumed.stderr
    runs = client.search_runs([killed.info.experiment_id])
    assert [r.info.run_id for r in runs] == [info["run_id"]]  # the same run, no new one
    run = runs[0]
    assert run.info.status == "FINISHED" and run.data.tags["resumed"] == "1"
    assert "error" not in run.data.tags
    assert "traceback.txt" not in {a.path for a in client.list_artifacts(info["run_id"])}
    assert not (info_path.parent / "traceback.txt").exists()
    assert json.loads(info_path.read_text())["status"] == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(info["run_id"], "train/loss")})
    assert steps == list(range(1, 9))


def test_nan_loss_stops_and_fails_then_resume_last_continues_it_to_a_clean_finish(
    make_cfg, tmp_path, monkeypatch
):
    """A NaN loss stops training naming epoch and component, keeps the last good checkpoint
    and marks the run FAILED. ``train.resume=last`` then finds that run by its recorded
    configuration (no directory typed; another configuration finds none) and continues it
    into the same MLflow run, which finishes without the stale error tag and traceback."""
    from madcluster_exp.config import load
    from madcluster_exp.pipeline.job import latest_unfinished

    real = Detector.training_step

    def exploding(self, x, epoch):
        logs = real(self, x, epoch)
        if epoch == 1:
            logs["loss_cluster"] = float("nan")
        return logs

    with monkeypatch.context() as mp:
        mp.setattr(Detector, "training_step", exploding)
        with pytest.raises(TrainingDivergedError, match=r"epoch 2, batch 1: loss_cluster = nan"):
            run(make_cfg("train.epochs=3"), verbose=False)  # in a directory under outputs/runs
    runs = tmp_path / "outputs" / "runs"
    (info_path,) = runs.glob("*/*/run_info.json")
    saved = torch.load(info_path.parent / "checkpoints" / "last.pt", weights_only=True)
    assert saved["epoch"] == 0  # the last good epoch
    stopped = json.loads(info_path.read_text())
    assert stopped["status"] == "FAILED"
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    (r,) = client.search_runs([client.get_experiment_by_name("madcluster_exp").experiment_id])
    assert r.info.status == "FAILED" and "loss_cluster" in r.data.tags["error"]
    other = load(make_cfg("train.epochs=3", "seed=1"), warn=False).params
    assert latest_unfinished(runs, other, stopped["tracking_uri"]) is None

    result = run(make_cfg("train.epochs=3", "train.resume=last"), verbose=False)
    assert result.output_dir == info_path.parent and result.run_id == stopped["run_id"]
    assert result.fit.epochs_run == 3
    r = client.get_run(result.run_id)
    assert r.info.status == "FINISHED" and r.data.tags["resumed"] == "1"
    assert "error" not in r.data.tags
    assert "traceback.txt" not in {a.path for a in client.list_artifacts(result.run_id)}
    assert len(client.search_runs([r.info.experiment_id])) == 1


def test_resume_false_starts_over(make_cfg, tmp_path):
    run(make_cfg("train.epochs=2", "tracking=none"), output_dir=tmp_path / "job", verbose=False)
    before = (tmp_path / "job" / "checkpoints" / "last.pt").stat().st_mtime_ns
    result = run(
        make_cfg("train.epochs=2", "tracking=none", "train.resume=false"),
        output_dir=tmp_path / "job",
        verbose=False,
    )
    assert result.fit.epochs_run == 2
    assert (tmp_path / "job" / "checkpoints" / "last.pt").stat().st_mtime_ns != before


def test_checkpoints_load_with_weights_only_and_hold_no_pickled_objects(make_cfg, tmp_path):
    run(
        make_cfg("train.epochs=1", "tracking=none", "backbone=usad", "backbone.window=12"),
        output_dir=tmp_path / "job",
        verbose=False,
    )
    saved = torch.load(tmp_path / "job" / "checkpoints" / "last.pt", weights_only=True)
    assert set(saved["optimizers"]) == {"ae1", "ae2"}  # USAD's phases; nu is a group of ae1
    assert saved["optimizers"]["ae1"]["param_groups"][-1]["name"] == "madcluster_nu"
    assert {"torch", "order", "numpy", "python"} == set(saved["rng"])
    assert math.isfinite(saved["best_loss"])


def test_grad_clip_is_applied(make_cfg, tmp_path, monkeypatch):
    norms = []
    real = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *a, **kw):
        norms.append(max_norm)
        return real(params, max_norm, *a, **kw)

    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy)
    run(
        make_cfg(
            "train.epochs=1",
            "tracking=none",
            "train.grad_clip=0.5",
            "train.max_batches_per_epoch=3",
        ),
        output_dir=tmp_path / "job",
        verbose=False,
    )
    assert norms == [0.5, 0.5, 0.5]
