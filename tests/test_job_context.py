"""The job's view of the Hydra run it is part of (JobContext), read once at the entry point."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from madcluster_exp.app import context_from_hydra
from madcluster_exp.config import load
from madcluster_exp.pipeline.context import JobContext
from madcluster_exp.pipeline.job import finished_job, job_output_dir, project_root
from madcluster_exp.pipeline.plan import make_plan
from madcluster_exp.tracking.sweep import PARENT_FILE, search_tags
from tests.conftest import compose_config


def test_a_job_started_from_python_has_the_current_directory_and_no_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    context = context_from_hydra()  # no Hydra run here
    assert context == JobContext.outside_hydra() == JobContext(cwd=tmp_path)
    assert (context.multirun, context.overrides, context.output_dir) == (False, (), None)
    assert context.tags() == {}
    assert context.sweep_threads() is None and context.parent_run_id() is None


def test_paths_resolve_against_the_context_not_the_process_directory(tmp_path):
    cfg = compose_config(["paths.root_dir=", "paths.output_dir=out"])
    context = JobContext(cwd=tmp_path / "launch")
    assert project_root(cfg, context) == (tmp_path / "launch").resolve()
    made = job_output_dir(cfg, project_root(cfg, context), context)
    assert made.parent.parent == (tmp_path / "launch" / "out" / "runs").resolve()
    hydra = JobContext(cwd=tmp_path, under_hydra=True, output_dir=tmp_path / "hydra_job")
    assert job_output_dir(cfg, tmp_path, hydra) == tmp_path / "hydra_job"


@pytest.mark.parametrize("n_jobs, threads", [(2, 4), (-1, 1), (3, 2), (None, None)])
def test_parallel_sweep_jobs_split_the_cores(monkeypatch, n_jobs, threads):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    context = JobContext(cwd=Path("."), under_hydra=True, multirun=True, launcher_jobs=n_jobs)
    assert context.sweep_threads() == threads
    assert JobContext(cwd=Path("."), launcher_jobs=2).sweep_threads() is None  # not a sweep


def test_the_sweep_parent_is_read_from_the_sweep_directory(tmp_path):
    (tmp_path / PARENT_FILE).write_text(json.dumps({"run_id": "parent123"}))
    context = JobContext(cwd=tmp_path, under_hydra=True, multirun=True, sweep_dir=tmp_path)
    assert context.parent_run_id() == "parent123"


def test_identity_tags_carry_the_hydra_command_and_the_optuna_study():
    plan = make_plan(load(compose_config(["search.trial=7"])))
    context = JobContext(
        cwd=Path("."),
        under_hydra=True,
        multirun=True,
        overrides=("seed=1", "backbone=usad"),
        job_num=3,
        sweeper={"study_name": "s1", "storage": "postgresql://u:secret@db:5432/x"},
    )
    tags = plan.identity_tags(context)
    assert tags["hydra.overrides"] == "seed=1 backbone=usad"
    assert tags["hydra.job.num"] == "3"
    assert tags["optuna.trial"] == "7"
    assert tags["optuna.study"] == "s1"
    assert "secret" not in tags["optuna.storage"]
    assert tags["optuna.storage"].startswith("postgresql+psycopg://")
    plain = plan.identity_tags(JobContext(cwd=Path(".")))
    assert "hydra.overrides" not in plain and plain["optuna.storage"] == "in-memory"
    assert search_tags({}) == {"optuna.study": "None", "optuna.storage": "in-memory"}


def test_a_finished_sweep_job_is_found_only_with_the_same_overrides(tmp_path):
    (tmp_path / "run_info.json").write_text(
        json.dumps({"run_id": "r1", "tracking_uri": "u", "status": "FINISHED"})
    )
    (tmp_path / "metrics.json").write_text(json.dumps({"test/f1": 0.5}))
    (tmp_path / "overrides.json").write_text(json.dumps({"overrides": ["seed=1"]}))
    sweep = JobContext(cwd=tmp_path, under_hydra=True, multirun=True, overrides=("seed=1",))
    assert finished_job(tmp_path, sweep)["metrics"] == {"test/f1": 0.5}
    other = JobContext(cwd=tmp_path, under_hydra=True, multirun=True, overrides=("seed=2",))
    assert finished_job(tmp_path, other) is None
    assert finished_job(tmp_path, JobContext(cwd=tmp_path)) is None  # a single run reruns
