"""Reports worth pasting: one timeline per configuration, embedded images, the sweep command,
error bars and seed counts, few-pairs warnings, readable curves past 10 configurations, and
grouping by every swept parameter."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from madcluster_exp.plots.sweep import sweep_curves_figure
from madcluster_exp.report.sections.kcurves import k_curves
from madcluster_exp.report.source import load_sweep, training_curves
from madcluster_exp.report.sweep import Sweep, sweep_factors

FAST = [
    "dataset.n_entities=2",
    "dataset.train_length=600",
    "dataset.test_length=600",
    "dataset.n_channels=3",
    "backbone.window=16",
    "train.epochs=1",
    "train.patience=null",
    "tracking.plots=false",
    "train.progress=line",
]


def _env():
    return {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}


def test_k_sweep_report_draws_one_timeline_per_configuration_and_embeds_images(tmp_path):
    args = ["-m", *FAST, "madcluster.k=1,2,3", "seed=0,1"]
    out = subprocess.run(
        [sys.executable, "-m", "madcluster_exp", *args],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    (sweep_dir,) = [p.parent for p in tmp_path.glob("outputs/multiruns/*/*/mlflow_parent.json")]
    parent = json.loads((sweep_dir / "mlflow_parent.json").read_text())["run_id"]
    uri = f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}"
    sweep = load_sweep(parent, uri)
    names = sweep.runs["run_name"].tolist()
    assert len(names) == 6 and len(set(names)) == 6  # 3 configurations x 2 seeds
    rep = subprocess.run(
        [sys.executable, "-m", "madcluster_exp.report", parent, f"uri={uri}"],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert rep.returncode == 0, rep.stderr[-3000:]
    out_dir = tmp_path / "outputs" / "reports" / parent
    timelines = sorted(p.name for p in out_dir.glob("timeline_*.png"))
    assert len(timelines) == 3
    md = (out_dir / "report.md").read_text()
    for png in timelines + ["training_curves.png", "k_sweep.png"]:
        assert f"]({png})" in md, png
    assert f"MLflow parent run: `{parent}`" in md
    assert ("Sweep command: `python -m madcluster_exp -m " + " ".join(args[1:]) + "`") in md
    assert "Configurations (3) differ in: madcluster.k" in md
    logged = {a.path for a in MlflowClient(uri).list_artifacts(parent, "report")}
    assert {f"report/{t}" for t in timelines} <= logged


def _store_with_configs(tmp_path, n_configs, seeds=2, epochs=1):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("e")
    parent = client.create_run(exp).info.run_id
    rows = []
    for c in range(n_configs):
        for s in range(seeds):
            r = client.create_run(exp, tags={"mlflow.parentRunId": parent}).info.run_id
            for e in range(epochs):
                client.log_metric(r, "train/loss", 1.0 / (c + 1) + 0.01 * s, step=e)
                client.log_metric(r, "val/loss", 2.0 / (c + 1) + 0.01 * s, step=e)
            rows.append(
                {
                    "run_id": r,
                    "run_name": f"c{c}-s{s}",
                    "param:seed": str(s),
                    "param:backbone.lr": str(10.0**-c),
                }
            )
    return Sweep(parent, uri, pd.DataFrame(rows), pd.DataFrame(), ["backbone.lr"])


def test_training_curves_show_single_epoch_runs_and_one_legend_entry_per_configuration(tmp_path):
    sweep = _store_with_configs(tmp_path, n_configs=12, seeds=2, epochs=1)
    fig = sweep_curves_figure(training_curves(sweep))
    for ax in fig.axes[:2]:
        lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
        assert len(lines) == 12  # one per configuration, seeds pooled (24 runs)
        assert all(line.get_marker() == "o" and len(line.get_xdata()) == 1 for line in lines)
    labels = [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    assert len(labels) == 12 and all(label.endswith("(n=2)") for label in labels)
    assert (
        len(
            {
                line.get_color()
                for line in fig.axes[0].get_lines()
                if not line.get_label().startswith("_")
            }
        )
        == 12
    )


def test_an_optuna_report_groups_by_every_swept_parameter():
    # Every trial has its own lr, so lr alone would tell the runs apart; nu_init is swept too.
    df = pd.DataFrame(
        {
            "param:seed": ["0"] * 4,
            "param:backbone.lr": ["0.01", "0.001", "0.0001", "0.002"],
            "param:madcluster.nu_init": ["0.3", "0.3", "0.5", "0.5"],
            "param:train.epochs": ["1"] * 4,
            "overrides": [
                f"backbone.lr={lr} madcluster.nu_init={nu} train.epochs=1"
                for lr, nu in (
                    ("0.01", "0.3"),
                    ("0.001", "0.3"),
                    ("0.0001", "0.5"),
                    ("0.002", "0.5"),
                )
            ],
        }
    )
    assert sweep_factors(df) == ["backbone.lr", "madcluster.nu_init"]
    assert sweep_factors(df.drop(columns="overrides")) == ["backbone.lr"]


def test_k_curves_are_labelled_by_the_other_factors_and_average_over_seeds():
    runs = pd.DataFrame(
        {
            "param:madcluster.k": ["1", "1", "2", "2"] * 2,
            "param:backbone.name": ["knn"] * 4 + ["usad"] * 4,
            "test/f1": [0.2, 0.4, 0.5, 0.7, 0.1, 0.1, 0.3, 0.3],
        }
    )
    sweep = Sweep("p", "sqlite://", runs, runs.iloc[:0], ["madcluster.k", "backbone.name"])
    (knn, knn_stats), (usad, usad_stats) = k_curves(sweep, ["test/f1"])["test/f1"]
    assert (knn, usad) == ("backbone.name=knn", "backbone.name=usad")
    assert knn_stats["mean"].tolist() == pytest.approx([0.3, 0.6])
    assert usad_stats["std"].tolist() == [0.0, 0.0]
    alone = Sweep("p", "sqlite://", runs.iloc[:4], runs.iloc[:0], ["madcluster.k"])
    assert [label for label, _ in k_curves(alone, ["test/f1"])["test/f1"]] == [None]
