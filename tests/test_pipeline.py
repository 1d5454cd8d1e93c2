"""The whole pipeline: MLflow records, honest evaluation, on/off identity, failure handling."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

import madcluster_exp.pipeline.kinds as fitting_module
from madcluster_exp.app import run
from madcluster_exp.detector import Detector

EXPECTED_FINAL = [
    "test/precision",
    "test/recall",
    "test/f1",
    "test/auc_roc",
    "test/auc_pr",
    "test/f1_oracle",
    "test/f1_pa",
    "threshold/value",
    "time/fit_s",
    "time/score_s",
    "time/metrics_s",
    "val/best_loss",
]
EXPECTED_PER_EPOCH = [
    "train/loss",
    "train/loss_backbone",
    "train/loss_mapping",
    "train/loss_cluster",
    "val/loss",
    "madcluster/threshold",
    "time/epoch_s",
]


def test_end_to_end_run_writes_an_mlflow_run_with_expected_keys(make_cfg, tmp_path):
    cfg = make_cfg("train.epochs=3", "madcluster.objective=soft-boundary")
    result = run(cfg, output_dir=tmp_path / "job", verbose=False)
    assert result.tracking_uri == f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    client = MlflowClient(result.tracking_uri)
    r = client.get_run(result.run_id)
    assert r.info.status == "FINISHED"
    cid = r.data.tags["config_id"]
    assert r.info.run_name == f"on-{cid}-s0-deepsvdd-synthetic" and len(cid) == 6
    assert r.data.tags["mlflow.source.git.commit"] == r.data.tags["git_commit"]
    assert len(r.data.tags["git_commit"]) == 40 and r.data.tags["git_dirty"] in ("true", "false")
    for key in EXPECTED_FINAL + EXPECTED_PER_EPOCH + ["madcluster/radius"]:
        assert key in r.data.metrics, key
    history = client.get_metric_history(result.run_id, "madcluster/threshold")
    assert [m.step for m in history] == [1, 2, 3]  # epoch numbers, as train/best_epoch
    nus = [m.value for m in history]
    assert all(0 < v < 1 for v in nus) and nus[-1] != nus[0]  # nu is learned
    assert len(client.get_metric_history(result.run_id, "madcluster/radius")) == 3
    params = r.data.params
    assert params["backbone.window"] == "32" and params["madcluster.k"] == "1"
    assert params["dataset.name"] == "synthetic" and params["seed"] == "0"
    assert int(params["params/madcluster"]) == 33  # center (32) + nu (1)
    assert params["score_rule"] == "madcluster_only"  # Deep SVDD hands its center over
    tags = r.data.tags
    assert tags["madcluster"] == "on" and tags["protocol"] == "point"
    assert tags["threshold.kind"] == "val_percentile"
    names = {a.path for a in client.list_artifacts(result.run_id)}
    assert {"scores.npz", "config_resolved.yaml", "overrides.json", "metrics.json"} <= names
    scores = np.load(result.output_dir / "scores.npz")
    assert scores["test_score"].shape == scores["test_label"].shape == (1600,)
    assert set(np.unique(scores["test_label"])) == {0, 1}
    assert np.isfinite(scores["test_score"]).all()
    assert float(scores["threshold"]) == pytest.approx(r.data.metrics["threshold/value"])


def test_test_split_stays_sealed_until_fit_returns(make_cfg, tmp_path, monkeypatch):
    states = []
    real_fit = fitting_module.fit

    def spying_fit(detector, data, settings, device, **kwargs):
        states.append(("before", data.test.sealed))
        out = real_fit(detector, data, settings, device, **kwargs)  # any test read would raise
        states.append(("after", data.test.sealed))
        return out

    monkeypatch.setattr(fitting_module, "fit", spying_fit)
    run(make_cfg("tracking=none"), output_dir=tmp_path / "job", verbose=False)
    assert states == [("before", True), ("after", True)]


_REAL_FIT = fitting_module.fit
_REAL_STEP = Detector.training_step


def _record_run(make_cfg, tmp_path, monkeypatch, state):
    seen = {"batches": [], "init": None}
    real_fit, real_step = _REAL_FIT, _REAL_STEP

    def spying_fit(detector, data, settings, device, **kwargs):
        seen["init"] = {k: v.clone() for k, v in detector.backbone.state_dict().items()}
        return real_fit(detector, data, settings, device, **kwargs)

    def spying_step(self, x, epoch):
        seen["batches"].append(x.clone())
        return real_step(self, x, epoch)

    monkeypatch.setattr(fitting_module, "fit", spying_fit)
    monkeypatch.setattr(Detector, "training_step", spying_step)
    run(
        make_cfg(
            f"madcluster={state}",
            "tracking=none",
            "train.max_batches_per_epoch=4",
            "backbone.objective=soft-boundary",
        ),
        output_dir=tmp_path / state,
        verbose=False,
    )
    return seen


def test_on_and_off_share_data_order_and_backbone_initialisation(make_cfg, tmp_path, monkeypatch):
    on = _record_run(make_cfg, tmp_path, monkeypatch, "on")
    off = _record_run(make_cfg, tmp_path, monkeypatch, "off")
    assert on["init"].keys() == off["init"].keys()
    for k in on["init"]:
        assert torch.equal(on["init"][k], off["init"][k]), k
    assert len(on["batches"]) == len(off["batches"]) == 8
    for a, b in zip(on["batches"], off["batches"]):
        assert torch.equal(a, b)


def test_same_seed_same_metrics(make_cfg, tmp_path):
    a = run(make_cfg("tracking=none"), output_dir=tmp_path / "a", verbose=False).metrics
    b = run(make_cfg("tracking=none"), output_dir=tmp_path / "b", verbose=False).metrics
    for key in ("test/f1", "test/auc_roc", "test/auc_pr", "val/best_loss"):
        assert a[key] == b[key], key


def test_deepsvdd_with_madcluster_beats_a_random_scorer(make_cfg, tmp_path):
    cfg = make_cfg(
        "tracking=none",
        "train.epochs=5",
        "dataset.train_length=1500",
        "dataset.test_length=1500",
        "dataset.n_channels=6",
        "dataset.n_entities=2",
    )
    result = run(cfg, output_dir=tmp_path / "job", verbose=False)
    scores = np.load(result.output_dir / "scores.npz")
    rng = np.random.default_rng(0)
    from madcluster_exp.metrics import auc_roc

    random_auc = auc_roc(y_true=scores["test_label"], y_score=rng.random(len(scores["test_label"])))
    assert abs(random_auc - 0.5) < 0.05
    assert result.metrics["test/auc_roc"] > 0.8
    assert result.metrics["test/auc_roc"] - random_auc > 0.25


@pytest.mark.parametrize(
    "overrides",
    [
        ["madcluster=off"],
        ["madcluster.k=3"],
        ["madcluster.variant=reference"],
        ["scoring.combine=product", "backbone.objective=soft-boundary"],
        ["backbone.objective=soft-boundary", "madcluster=off"],
        ["scoring.stride=8", "scoring.aggregate=max"],
    ],
)
def test_variants_run_end_to_end(make_cfg, tmp_path, overrides):
    result = run(
        make_cfg("tracking=none", "train.epochs=1", *overrides),
        output_dir=tmp_path / "job",
        verbose=False,
    )
    assert np.isfinite(result.metrics["test/auc_roc"])
    assert 0.0 <= result.metrics["test/f1"] <= 1.0


def test_a_crash_marks_the_run_failed_and_keeps_what_was_written(make_cfg, tmp_path, monkeypatch):
    def broken_scoring(*args, **kwargs):
        raise RuntimeError("scoring exploded")

    monkeypatch.setattr(fitting_module, "score_split", broken_scoring)
    cfg = make_cfg()
    with pytest.raises(RuntimeError, match="scoring exploded"):
        run(cfg, output_dir=tmp_path / "job", verbose=False)
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("madcluster_exp")
    (r,) = client.search_runs([exp.experiment_id])
    assert r.info.status == "FAILED"
    assert "scoring exploded" in r.data.tags["error"]
    assert "train/loss" in r.data.metrics  # per-epoch metrics written before the crash stay
    assert "traceback.txt" in {a.path for a in client.list_artifacts(r.info.run_id)}
    assert "scoring exploded" in (tmp_path / "job" / "traceback.txt").read_text()


def _cli(args, cwd, timeout=300):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, "-m", "madcluster_exp", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_cli_default_entry_point_runs_and_records_one_run(tmp_path):
    out = _cli(["debug=fast", "train.progress=line"], tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "Results: on-" in out.stdout and "-s0-deepsvdd-synthetic" in out.stdout
    assert "test/f1_oracle" in out.stdout and "ORACLE" in out.stdout
    assert "epoch 1/1" in out.stderr  # one line per epoch when not on a terminal
    db = tmp_path / "outputs" / "mlflow.db"
    assert db.exists()
    client = MlflowClient(f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("madcluster_exp").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert runs[0].data.tags["hydra.overrides"] == "debug=fast train.progress=line"
    logged = {a.path for a in client.list_artifacts(runs[0].info.run_id)}
    assert "madcluster_exp.log" in logged  # the job's log: epoch lines and the results table


def test_cli_bad_value_exits_non_zero_with_the_key_named(tmp_path):
    out = _cli(["madcluster.nu_init=1.5", "tracking=none"], tmp_path)
    assert out.returncode != 0
    assert "madcluster.nu_init=1.5" in out.stderr


# ------------------------------------------------------------------------------ early stopping
DCDETECTOR_TINY = [
    "backbone=dcdetector",
    "backbone.window=20",
    "backbone.d_model=16",
    "backbone.batch_size=64",
]


def test_dcdetector_alone_trains_its_full_schedule_and_logs_best_epoch_3(
    make_cfg, tmp_path, capsys
):
    # Its loss is 0 in value every epoch: the validation loss carries no signal.
    cfg = make_cfg(*DCDETECTOR_TINY, "madcluster=off", "train.epochs=3", "train.patience=1")
    result = run(cfg, output_dir=tmp_path / "job", verbose=False)
    assert result.metrics["train/best_epoch"] == 3
    assert result.metrics["train/epochs_run"] == 3
    assert "carries no signal" in capsys.readouterr().out
    client = MlflowClient(result.tracking_uri)
    r = client.get_run(result.run_id)
    assert r.data.tags["early_stopping"] == "no_signal"
    assert r.data.metrics["train/best_epoch"] == 3
    # The same numbering as the per-epoch metrics: best_epoch names a logged step.
    steps = [m.step for m in client.get_metric_history(result.run_id, "val/loss")]
    assert steps == [1, 2, 3]


def test_a_constant_validation_loss_disables_early_stopping_whatever_the_tie_rule(
    make_cfg, tmp_path, monkeypatch
):
    from madcluster_exp.backbones.dcdetector import DCdetector

    monkeypatch.setattr(DCdetector, "keep_latest_on_tie", False)
    cfg = make_cfg(
        *DCDETECTOR_TINY, "madcluster=off", "train.epochs=3", "train.patience=1", "tracking=none"
    )
    fit = run(cfg, output_dir=tmp_path / "job", verbose=False).fit
    assert (fit.best_epoch, fit.epochs_run, fit.stopped_early) == (3, 3, False)
    assert fit.val_loss_signal is False


@pytest.mark.parametrize(
    "keep_latest_on_tie, best_epoch, epochs_run",
    [
        (False, 2, 4),  # strict: the tie at epoch 3 is a bad epoch, 0.7 the second -> stop at 4
        (True, 3, 5),  # reference rule of DCdetector / Anomaly Transformer: the tie is kept
    ],
)
def test_early_stopping_follows_the_backbones_tie_rule(
    make_cfg, tmp_path, monkeypatch, keep_latest_on_tie, best_epoch, epochs_run
):
    from madcluster_exp.backbones.deepsvdd import DeepSVDD
    from madcluster_exp.training import loop

    losses = iter([1.0, 0.5, 0.5, 0.7, 0.8, 0.9])
    # Scripted validation losses: the rule under test is the loop's, not the model's.
    monkeypatch.setattr(loop, "validation_loss", lambda *a, **k: {"loss": next(losses)})
    monkeypatch.setattr(DeepSVDD, "keep_latest_on_tie", keep_latest_on_tie)
    cfg = make_cfg("train.epochs=6", "train.patience=2", "tracking=none")
    result = run(cfg, output_dir=tmp_path / "job", verbose=False)
    assert (result.fit.best_epoch, result.fit.epochs_run) == (best_epoch, epochs_run)
    assert result.fit.stopped_early and result.fit.val_loss_signal is True
    assert result.metrics["train/best_epoch"] == best_epoch
