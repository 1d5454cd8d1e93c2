"""Numbers that are right: metric timing, k > 1 MACs, git source tags."""

from __future__ import annotations

import subprocess
import time

import madcluster_exp.evaluation.protocols as protocols_module
from madcluster_exp.app import run
from madcluster_exp.detector import build_detector
from madcluster_exp.detector.complexity import complexity
from madcluster_exp.pipeline.plan import git_tags


def _macs(make_cfg, *overrides):
    cfg = make_cfg(*overrides)
    return complexity(build_detector(cfg, 4), 4)


def test_k_above_1_counts_distances_and_assignment(make_cfg):
    # deepsvdd at window 32: z is [1, 32, 32] (32 steps, 32 embedding features).
    one = _macs(make_cfg, "madcluster.k=1")
    three = _macs(make_cfg, "madcluster.k=3")
    five = _macs(make_cfg, "madcluster.k=5")
    steps, features = 32, 32
    assert three["macs/madcluster"] >= steps * 3 * features
    # Each further centre adds one distance (f MACs) and one assignment per step.
    assert five["macs/madcluster"] - three["macs/madcluster"] == steps * 2 * (features + 1)
    assert three["macs/madcluster"] > one["macs/madcluster"]
    assert three["macs/backbone"] == one["macs/backbone"]
    assert three["macs/total"] == three["macs/backbone"] + three["macs/madcluster"]


def test_time_metrics_s_covers_the_metric_computation(make_cfg, tmp_path, monkeypatch):
    spent = []
    real = protocols_module.evaluate_point

    def timed(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return real(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - t0)

    monkeypatch.setattr(protocols_module, "evaluate_point", timed)
    result = run(
        make_cfg("train.epochs=1", "tracking=none"), output_dir=tmp_path / "job", verbose=False
    )
    (measured,) = spent
    # What the metric computation took is inside time/metrics_s, which is inside the total
    # (orderings only: no test asserts wall-clock figures).
    assert 0 < measured <= result.metrics["time/metrics_s"] <= result.metrics["time/total_s"]


def _git(repo, *args):
    subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True)


def test_git_tags_name_the_commit_for_mlflow_and_say_whether_the_tree_was_dirty(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "a.py").write_text("x = 1\n")
    _git(repo, "add", "a.py")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True
    ).stdout.strip()
    clean = git_tags(repo)
    assert clean == {
        "git_commit": head,
        "mlflow.source.git.commit": head,
        "git_dirty": "false",
        "mlflow.source.git.branch": "main",
    }
    (repo / "a.py").write_text("x = 2\n")
    assert git_tags(repo)["git_dirty"] == "true"
    assert git_tags(tmp_path / "elsewhere") == {"git_commit": "unknown"}


def test_a_k_run_logs_the_counted_macs(make_cfg, tmp_path):
    k = 2
    from mlflow.tracking import MlflowClient

    result = run(
        make_cfg("train.epochs=1", f"madcluster.k={k}"), output_dir=tmp_path / "job", verbose=False
    )
    params = MlflowClient(result.tracking_uri).get_run(result.run_id).data.params
    assert int(params["macs/madcluster"]) >= 32 * k * 32
