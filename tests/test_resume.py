"""Checkpoints, resume after kill -9, NaN guard, weights-only loading."""

from __future__ import annotations

import json
import math
import os
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


def test_nan_loss_stops_with_epoch_and_component_keeps_checkpoint_and_fails(
    make_cfg, tmp_path, monkeypatch
):
    real = Detector.training_step

    def exploding(self, x, epoch):
        logs = real(self, x, epoch)
        if epoch == 1:
            logs["loss_cluster"] = float("nan")
        return logs

    monkeypatch.setattr(Detector, "training_step", exploding)
    with pytest.raises(TrainingDivergedError, match=r"epoch 2, batch 1: loss_cluster = nan"):
        run(make_cfg("train.epochs=3"), output_dir=tmp_path / "job", verbose=False)
    saved = torch.load(tmp_path / "job" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["epoch"] == 0  # the last good epoch
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    (r,) = client.search_runs([client.get_experiment_by_name("madcluster_exp").experiment_id])
    assert r.info.status == "FAILED" and "loss_cluster" in r.data.tags["error"]


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
