"""Re-running in a run directory: resume only the same configuration (train.epochs may grow);
anything else stops before any work, naming the keys and the two ways out."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from mlflow.tracking import MlflowClient

from madcluster_exp.config.identity import config_id, resume_conflicts

TINY = [
    "dataset.n_entities=1",
    "dataset.train_length=400",
    "dataset.test_length=300",
    "dataset.n_channels=3",
    "backbone.window=16",
    "train.patience=null",
    "tracking.plots=false",
    "train.progress=line",
]


def _cli(tmp_path, *args):
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    return subprocess.run(
        [sys.executable, "-m", "madcluster_exp", *TINY, *args, "hydra.run.dir=outputs/job"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _runs(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'outputs' / 'mlflow.db'}")
    exp = client.get_experiment_by_name("madcluster_exp")
    return client, client.search_runs([exp.experiment_id])


def _info(tmp_path):
    return json.loads((tmp_path / "outputs/job/run_info.json").read_text())


def test_rerun_resumes_only_the_same_config_and_the_mlflow_params_stay_true(tmp_path):
    first = _cli(tmp_path, "train.epochs=1", "seed=0")
    assert first.returncode == 0, first.stderr[-3000:]
    run_id = _info(tmp_path)["run_id"]

    # Another seed and lr: refused before any work, message names keys and the ways out.
    other = _cli(tmp_path, "train.epochs=1", "seed=1", "backbone.lr=0.01")
    assert other.returncode == 2, other.stderr[-3000:]
    assert "Traceback" not in other.stderr
    for text in (
        "seed: 0 -> 1",
        "backbone.lr: 0.001 -> 0.01",
        "train.resume=false",
        "hydra.run.dir=",
        run_id,
    ):
        assert text in other.stderr, text
    client, runs = _runs(tmp_path)
    assert [r.info.run_id for r in runs] == [run_id]
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "resumed" not in run.data.tags
    assert run.data.params["seed"] == "0" and run.data.params["backbone.lr"] == "0.001"
    assert _info(tmp_path)["run_id"] == run_id

    # More epochs, a different progress display: the same run continues.
    more = _cli(tmp_path, "train.epochs=2", "seed=0", "train.progress=none")
    assert more.returncode == 0, more.stderr[-3000:]
    assert "resuming from" in more.stdout + more.stderr
    client, runs = _runs(tmp_path)
    assert [r.info.run_id for r in runs] == [run_id]
    run = client.get_run(run_id)
    assert run.data.tags["resumed"] == "1" and run.data.tags["train.epochs"] == "2"
    assert run.data.tags["resume.changed"] == "train.epochs: 1 -> 2"
    assert run.data.metrics["train/epochs_run"] == 2
    assert run.data.params["seed"] == "0"
    steps = sorted(m.step for m in client.get_metric_history(run_id, "train/loss"))
    assert steps == [1, 2]  # step = epoch number

    # Fewer epochs than recorded: refused.
    fewer = _cli(tmp_path, "train.epochs=1", "seed=0")
    assert fewer.returncode == 2 and "train.epochs: 2 -> 1 (may only grow)" in fewer.stderr

    # train.resume=false starts a new MLflow run whose params are the new config.
    fresh = _cli(tmp_path, "train.epochs=1", "seed=1", "train.resume=false")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    client, runs = _runs(tmp_path)
    assert len(runs) == 2
    new_id = _info(tmp_path)["run_id"]
    assert new_id != run_id and client.get_run(new_id).data.params["seed"] == "1"
    assert client.get_run(run_id).data.params["seed"] == "0"


def test_resume_conflicts_ignore_non_identifying_keys_and_let_epochs_grow():
    old = {
        "seed": 0,
        "train.epochs": 2,
        "tracking.plots": True,
        "paths.output_dir": "a",
        "train.progress": "bar",
        "threshold.kind": "pot",
    }
    same = {
        **old,
        "tracking.plots": False,
        "paths.output_dir": "b",
        "train.progress": "none",
        "train.epochs": 5,
    }
    assert resume_conflicts(old, same) == []
    changed = {**old, "threshold.kind": "spot", "madcluster.k": 3}
    assert resume_conflicts(old, changed) == [
        "madcluster.k: '<absent>' -> 3",
        "threshold.kind: 'pot' -> 'spot'",
    ]


def test_config_id_is_shared_by_seeds_and_differs_between_configurations():
    base = {"seed": 0, "madcluster.k": 1, "tracking.experiment": "a"}
    assert config_id(base) == config_id({**base, "seed": 7, "tracking.experiment": "b"})
    assert config_id(base) != config_id({**base, "madcluster.k": 3})
    assert len(config_id(base)) == 6


def test_run_names_tell_configurations_apart_and_seeds_share_the_config_id():
    from madcluster_exp.config import load
    from madcluster_exp.pipeline.plan import make_plan
    from tests.conftest import compose_config

    def run_name(cfg):
        return make_plan(load(cfg, warn=False)).run_name

    variants = [
        [],
        ["madcluster.k=3"],
        ["madcluster.objective=soft-boundary"],
        ["backbone.objective=soft-boundary"],
        ["debug=fast"],
        ["hparams_search=optuna_val", "backbone.lr=0.0042", "madcluster.nu_init=0.31"],
        ["hparams_search=optuna_val", "backbone.lr=0.0042", "madcluster.nu_init=0.32"],
    ]
    names = [run_name(compose_config(v)) for v in variants]
    assert len(set(names)) == len(names), names
    assert names[0].startswith("on-") and names[0].endswith("-s0-deepsvdd-synthetic")
    assert names[5].endswith("-s0-deepsvdd-synthetic-optuna")
    seed1 = run_name(compose_config(["madcluster.k=3", "seed=1"]))
    assert seed1 == names[1].replace("-s0-", "-s1-")
    # Where records go and how progress shows change no name.
    assert (
        run_name(
            compose_config(
                ["tracking.plots=false", "train.progress=none", "paths.output_dir=elsewhere"]
            )
        )
        == names[0]
    )
