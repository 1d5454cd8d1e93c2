"""Copy every experiment and run of one MLflow store into another (e.g. the project's SQLite
store into the team's PostgreSQL-backed server), keeping parent/child links.

    python -m madcluster_exp.tracking.migrate src=sqlite:///outputs/mlflow.db
        dst=http://127.0.0.1:5000 [experiments=[madcluster_exp,...]]

Per run: name, status, start and end times, params, tags, the full history of every metric
(steps and timestamps) and all artifacts. A run already copied (tag ``migrated_from`` equal to
its source id, found in the destination) is skipped, so an interrupted copy can be re-run.
"""

from __future__ import annotations

import sys
import tempfile
from typing import Dict, List, Optional

from madcluster_exp.errors import cli_errors
from madcluster_exp.utils.cli_args import Option, parse

MIGRATED_TAG = "migrated_from"
PARENT_TAG = "mlflow.parentRunId"
BATCH = 900  # under MLflow's 1000-metric limit per log_batch


def _already_copied(dst, exp_id: str) -> Dict[str, str]:
    runs = dst.search_runs([exp_id], max_results=50000)
    return {r.data.tags[MIGRATED_TAG]: r.info.run_id for r in runs if MIGRATED_TAG in r.data.tags}


def _copy_run(src, dst, run, exp_id: str, id_map: Dict[str, str]) -> str:
    from mlflow.entities import Metric, Param, RunTag

    tags = dict(run.data.tags)
    if PARENT_TAG in tags:
        tags[PARENT_TAG] = id_map.get(tags[PARENT_TAG], tags[PARENT_TAG])
    tags[MIGRATED_TAG] = run.info.run_id
    new = dst.create_run(exp_id, start_time=run.info.start_time, run_name=run.info.run_name)
    new_id = new.info.run_id
    params = [Param(k, v) for k, v in run.data.params.items()]
    for i in range(0, len(params), 100):
        dst.log_batch(new_id, params=params[i : i + 100])
    run_tags = [RunTag(k, v) for k, v in tags.items() if k != "mlflow.runName"]
    dst.log_batch(new_id, tags=run_tags)
    metrics: List[Metric] = []
    for key in run.data.metrics:
        metrics.extend(
            Metric(m.key, m.value, m.timestamp, m.step)
            for m in src.get_metric_history(run.info.run_id, key)
        )
    for i in range(0, len(metrics), BATCH):
        dst.log_batch(new_id, metrics=metrics[i : i + BATCH])
    if src.list_artifacts(run.info.run_id):
        with tempfile.TemporaryDirectory() as tmp:
            local = src.download_artifacts(run.info.run_id, "", tmp)
            dst.log_artifacts(new_id, local)
    dst.set_terminated(new_id, run.info.status, run.info.end_time)
    return new_id


def migrate(
    src_uri: str, dst_uri: str, experiments: Optional[List[str]] = None, say=print
) -> Dict[str, str]:
    """Copy the named experiments (all by default); returns source run id -> new run id."""
    from mlflow.tracking import MlflowClient

    src, dst = MlflowClient(src_uri), MlflowClient(dst_uri)
    id_map: Dict[str, str] = {}
    for exp in src.search_experiments():
        if experiments and exp.name not in experiments:
            continue
        target = dst.get_experiment_by_name(exp.name)
        exp_id = target.experiment_id if target else dst.create_experiment(exp.name)
        done = _already_copied(dst, exp_id)
        id_map.update(done)
        runs = src.search_runs([exp.experiment_id], max_results=50000)
        # Parents first, so that every child's parent id can be mapped.
        runs.sort(key=lambda r: (PARENT_TAG in r.data.tags, r.info.start_time or 0))
        copied = 0
        for run in runs:
            if run.info.run_id in id_map:
                continue
            id_map[run.info.run_id] = _copy_run(src, dst, run, exp_id, id_map)
            copied += 1
        say(f"{exp.name}: {copied} runs copied, {len(runs) - copied} already there")
    return id_map


OPTIONS = {
    "src": Option("source tracking URI (e.g. sqlite:///outputs/mlflow.db)", required=True),
    "dst": Option("destination tracking URI (e.g. http://127.0.0.1:5000)", required=True),
    "experiments": Option("experiment names to copy (default: all)", kind=list),
}


@cli_errors
def main(argv: Optional[List[str]] = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv, OPTIONS, __doc__.split("\n\n")[1])
    migrate(args["src"], args["dst"], args["experiments"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
