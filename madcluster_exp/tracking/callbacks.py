"""Hydra callback: one MLflow parent run per multirun, every job a child of it.

``on_multirun_start`` runs in the main process before any job: it creates the tracking store
(creating a fresh SQLite store from several processes at once fails), the experiment and the
parent run, and hands the parent's id to the jobs both through an environment variable
(inherited by joblib/submitit workers) and a file in the sweep directory (read first, so a job
started by any launcher finds it). ``on_multirun_end`` closes the parent and counts its children.

A sweep started again with the same sweep directory (``hydra.sweep.dir=<it>``) continues the
parent run that directory names, so its children stay under one parent; jobs that finished the
first time are skipped (madcluster_exp/pipeline/job.py, ``finished_job``).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Optional

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from madcluster_exp.tracking.sweep import PARENT_FILE, PARENT_RUN_ENV, search_tags


def _output_root(config: DictConfig) -> Path:
    root = Path(config.paths.root_dir or config.hydra.runtime.cwd).expanduser()
    out = Path(config.paths.output_dir).expanduser()
    return (out if out.is_absolute() else root / out).resolve()


def _sweep_dir(config: DictConfig) -> Path:
    d = Path(config.hydra.sweep.dir)
    return d if d.is_absolute() else Path(config.hydra.runtime.cwd) / d


def _previous_parent(sweep_dir: Path, tracker) -> Optional[str]:
    """The parent run of an earlier start of this sweep, if it is in the same tracking store."""
    path = sweep_dir / PARENT_FILE
    if not path.exists():
        return None
    info = json.loads(path.read_text())
    if info.get("tracking_uri") != tracker.uri:
        return None
    from mlflow.exceptions import MlflowException

    try:
        tracker.client.get_run(info["run_id"])
    except MlflowException:
        return None
    return info["run_id"]


class MLflowSweepCallback(Callback):
    def __init__(self) -> None:
        self.tracker = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        if config.tracking.backend == "none":
            return
        from madcluster_exp.tracking import build_tracker

        sweep_dir = _sweep_dir(config)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        self.tracker = build_tracker(config.tracking, _output_root(config))
        previous = _previous_parent(sweep_dir, self.tracker)
        if previous is not None:
            self.tracker.resume(previous)
            os.environ[PARENT_RUN_ENV] = previous
            return
        overrides = " ".join(config.hydra.overrides.task)
        name = f"sweep-{time.strftime('%Y%m%d-%H%M%S')}"
        if config.tracking.run_name_suffix:
            name += f"-{config.tracking.run_name_suffix}"
        tags = {
            "sweep": "parent",
            "sweep.dir": str(sweep_dir),
            "hydra.overrides": overrides,
            "hydra.launcher": str(config.hydra.launcher._target_),
        }
        sweeper = config.hydra.sweeper
        if "study_name" in sweeper:  # an Optuna search: which study, what it optimises
            from madcluster_exp.config import SEARCH_OBJECTIVES

            metric, direction = SEARCH_OBJECTIVES[config.search.objective]
            tags.update(search_tags(sweeper))
            tags.update(
                {
                    "search.objective": config.search.objective,
                    "search.metric": metric,
                    "search.direction": direction,
                }
            )
        self.tracker.start(name, {}, tags)
        os.environ[PARENT_RUN_ENV] = self.tracker.run_id
        (sweep_dir / PARENT_FILE).write_text(
            json.dumps(
                {
                    "run_id": self.tracker.run_id,
                    "tracking_uri": self.tracker.uri,
                    "experiment_id": self.tracker.experiment_id,
                },
                indent=2,
            )
        )

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.tracker is None:
            return
        client, parent = self.tracker.client, self.tracker.run_id
        children = client.search_runs(
            [self.tracker.experiment_id], filter_string=f"tags.mlflow.parentRunId = '{parent}'"
        )
        statuses = [c.info.status for c in children]
        self.tracker.set_tags(
            {
                "children": str(len(children)),
                "children.failed": str(statuses.count("FAILED")),
                "children.killed": str(statuses.count("KILLED")),
            }
        )
        self.tracker.end("FINISHED")
        os.environ.pop(PARENT_RUN_ENV, None)
        print(sweep_summary(parent, statuses, _sweep_dir(config)), flush=True)


def sweep_summary(parent_id: str, statuses: list, sweep_dir: Path) -> str:
    """The lines a finished sweep ends with: parent run, children by status, report command."""
    counts = {s: statuses.count(s) for s in ("FINISHED", "FAILED", "KILLED", "RUNNING")}
    parts = [f"{n} {s.lower()}" for s, n in counts.items() if n]
    return (
        f"\nSweep finished: MLflow parent run {parent_id}, {len(statuses)} children "
        f"({', '.join(parts) or 'none'}).\n"
        f"Report: python -m madcluster_exp.report {sweep_dir}"
    )
