"""The command line as a person meets it: expected errors without tracebacks, --help on every
command with the user-facing groups only, boolean on/off spellings, the job's name and log."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from madcluster_exp.config import normalise_argv
from madcluster_exp.tracking.callbacks import sweep_summary
from madcluster_exp.utils.cli_args import Option, UsageError, parse


def _run(module, *args, cwd, **env):
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in ("MLFLOW_TRACKING_URI", "MADCLUSTER_FULL_ERROR", "HYDRA_FULL_ERROR")
    }
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


def _no_mlflow_run(tmp_path: Path) -> None:
    db = tmp_path / "outputs" / "mlflow.db"
    if db.exists():  # the store may exist; it must hold no run
        client = MlflowClient(f"sqlite:///{db}")
        exp = client.get_experiment_by_name("madcluster_exp")
        assert exp is None or not client.search_runs([exp.experiment_id])


@pytest.mark.parametrize(
    "args, says",
    [
        (["backbone.window=1"], ["error: invalid configuration", "backbone.window=1"]),
        # A key the schema does not know, added with + or ++: refused, naming the real one.
        (["+train.epoch=3"], ["train.epoch: not a key", "did you mean train.epochs=3"]),
        (["++backbone.hiden=3"], ["backbone.hiden: not a key", "did you mean backbone.hidden"]),
        # A mandatory value never given: one line, before any run.
        (["dataset=csv"], ["missing value: dataset.path must be given"]),
        # A dataset that is not there: the path and how to get it, before any run.
        (["dataset=SMD"], ["dataset SMD not found", "python -m madcluster_exp.data download SMD"]),
        # A bad cell in a data file: file, line, column and value, before any run.
        (["dataset=csv", "dataset.path=bad.csv"], ["bad.csv", "line 5", "'abc' is not a number"]),
    ],
)
def test_a_config_or_data_error_prints_its_message_alone_and_leaves_no_mlflow_run(
    tmp_path, args, says
):
    rows = [f"{t},{0.1 * t:.1f},0" for t in range(200)]
    rows[3] = "3,abc,0"
    (tmp_path / "bad.csv").write_text("\n".join(["timestamp,a,is_anomaly", *rows]) + "\n")
    out = _run("madcluster_exp", *args, cwd=tmp_path)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    for text in says:
        assert text in out.stderr
    _no_mlflow_run(tmp_path)


def test_a_bad_choice_stops_at_composition_naming_key_and_choices(tmp_path):
    out = _run("madcluster_exp", "device=bogus", cwd=tmp_path)
    assert out.returncode != 0
    assert "Invalid value 'bogus', expected one of [cpu, cuda, auto]" in out.stderr
    assert "full_key: device" in out.stderr
    assert not (tmp_path / "outputs").exists()  # nothing ran, nothing was written


def test_full_error_env_var_shows_the_traceback(tmp_path):
    out = _run(
        "madcluster_exp",
        "backbone.window=1",
        "tracking=none",
        cwd=tmp_path,
        MADCLUSTER_FULL_ERROR="1",
    )
    assert out.returncode != 0 and "Traceback" in out.stderr and "ConfigError" in out.stderr


@pytest.mark.parametrize(
    "spelling,enabled", [("true", "true"), ("False", "false"), ("yes", "true"), ("off", "false")]
)
def test_madcluster_accepts_boolean_spellings_of_on_and_off(tmp_path, spelling, enabled):
    out = _run("madcluster_exp", f"madcluster={spelling}", "--cfg", "job", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    block = out.stdout.split("madcluster:\n", 1)[1]
    assert block.splitlines()[0].strip() == f"enabled: {enabled}"


def test_normalise_argv_leaves_other_overrides_alone():
    assert normalise_argv(["madcluster=TRUE", "madcluster.k=3", "+madcluster=no", "seed=1"]) == [
        "madcluster=on",
        "madcluster.k=3",
        "+madcluster=off",
        "seed=1",
    ]


def test_help_lists_user_facing_groups_and_no_schema_internals(tmp_path):
    out = _run("madcluster_exp", "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    groups = dict(line.split(": ", 1) for line in out.stdout.splitlines() if ": " in line)
    assert {"off", "on", "on_backbone_only"} <= set(groups["madcluster"].split(", "))
    assert "knn" in groups["backbone"].split(", ")
    assert "hydra/launcher: " in out.stdout and "joblib" in out.stdout
    assert "schema/" not in out.stdout
    assert "seed: 0" in out.stdout  # the composed config follows


@pytest.mark.parametrize(
    "module",
    [
        "madcluster_exp.report",
        "madcluster_exp.evaluate",
        "madcluster_exp.data",
        "madcluster_exp.bench",
    ],
)
def test_every_sub_command_has_help(tmp_path, module):
    out = _run(module, "--help", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert "usage" in out.stdout.lower() and "Traceback" not in out.stderr


def test_sub_command_usage_errors_exit_2_with_a_message(tmp_path):
    out = _run("madcluster_exp.evaluate", "metrics=full", cwd=tmp_path)
    assert out.returncode == 2 and "missing run=" in out.stderr and "Traceback" not in out.stderr
    out = _run("madcluster_exp.evaluate", "run=x", "colour=red", cwd=tmp_path)
    assert out.returncode == 2 and "unknown option 'colour'" in out.stderr


def test_key_value_parser_types_values_and_keeps_ids_as_typed():
    opts = {
        "run": Option("id", required=True),
        "window": Option("w", kind=int),
        "log": Option("l", kind=bool, default=True),
        "m": Option("m", kind=list),
    }
    args = parse(["run=0123e4", "window=50", "log=false", "m=[test/f1,test/vus_pr]"], opts, "u")
    assert args == {"run": "0123e4", "window": 50, "log": False, "m": ["test/f1", "test/vus_pr"]}
    with pytest.raises(UsageError, match="log='maybe': expected true or false"):
        parse(["run=a", "log=maybe"], opts, "u")
    with pytest.raises(UsageError, match="window='x'"):
        parse(["run=a", "window=x"], opts, "u")


def test_job_is_named_after_the_project_and_its_log_holds_the_run(tmp_path):
    run_dir = tmp_path / "run"
    out = _run(
        "madcluster_exp", "debug=fast", "tracking=none", f"hydra.run.dir={run_dir}", cwd=tmp_path
    )
    assert out.returncode == 0, out.stderr[-3000:]
    log = (run_dir / "madcluster_exp.log").read_text()
    assert not (run_dir / "__main__.log").exists()
    assert "epoch 1/1" in log and "Results: on-" in log
    assert "test/f1_oracle" in log


def test_sweep_summary_names_parent_counts_and_report_command():
    text = sweep_summary("abc123", ["FINISHED", "FINISHED", "FAILED"], Path("/s/d"))
    assert "parent run abc123" in text and "3 children (2 finished, 1 failed)" in text
    assert "python -m madcluster_exp.report /s/d" in text
