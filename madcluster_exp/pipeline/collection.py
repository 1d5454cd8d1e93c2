"""A collection run: one model and one MLflow child run per series, under the job's own run.

Design: the series of a collection are entities of ONE job (``dataset.mode=per_entity``), not
jobs of a sweep. The job's run is the parent; each series gets a nested child run with its own
params, tags (``series``, ``series.format``, ``series.file``), training curves, metrics and
artifacts; the parent holds the pooled and per-series-mean metrics, ``per_entity.csv`` and the
list of skipped files. This works the same from a single command and inside a sweep
(``experiment=benchmark``: sweep parent -> one run per detector x seed -> one child per series),
and a sweep that is resumed skips finished jobs as a whole.

A series that cannot be used (unreadable file, wrong labels, too short for the window, ...) is
skipped with its reason on the console, in the parent's ``collection.skipped`` tag and in its
``skipped.csv`` artifact (and, if its child run had started, in that run's ``error`` tag with
status FAILED); the other series go on. Errors that are not about the data still stop the job.
"""

from __future__ import annotations

import csv
import json
import time
from typing import List, Optional

from madcluster_exp.data import DataError
from madcluster_exp.data.collection import Collection, Skipped
from madcluster_exp.metrics.catalog import ranked
from madcluster_exp.pipeline.outputs import write_artifacts
from madcluster_exp.pipeline.plan import JobEnv, JobPlan
from madcluster_exp.pipeline.unit import Part, Unit, fit_unit, summary_metrics

RUNS_FILE = "series_runs.json"
SKIPPED_FILE = "skipped.csv"


def run_collection(plan: JobPlan, env: JobEnv, collection: Collection) -> List[Unit]:
    """Fit, score and track every series; returns the finished units."""
    say, name = env.say, env.name
    skipped = list(collection.skipped)
    for s in skipped:
        say(f"[{name}] skipped {s.file}: {s.reason}")
    runs_path = env.job_dir / RUNS_FILE
    train = plan.cfg.train
    resumable = train.resume and train.checkpoint and runs_path.exists()
    child_ids = json.loads(runs_path.read_text()) if resumable else {}
    units = []
    for entity in collection.entities:
        unit = _series(plan, env, collection, entity, child_ids, skipped)
        runs_path.write_text(json.dumps(child_ids, indent=2))
        if unit is not None:
            units.append(unit)
    tracker = env.tracker
    tracker.set_tags(
        {
            "collection.path": str(collection.root),
            "collection.series": str(len(units)),
            "collection.skipped": str(len(skipped)),
        }
    )
    if skipped:
        tracker.set_tags({"collection.skipped_files": " ".join(s.file for s in skipped)[:5000]})
    path = env.job_dir / SKIPPED_FILE
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["file", "reason"])
        writer.writerows([s.file, s.reason] for s in skipped)
    if plan.cfg.tracking.log_artifacts:
        tracker.log_artifact(path)
    if not units:
        raise DataError(
            f"collection {collection.root}: every series was skipped:"
            + "".join(f"\n  {s.file}: {s.reason}" for s in skipped)
        )
    say(series_table(name, collection, units, skipped))
    return units


def series_table(name: str, collection: Collection, units: list, skipped: List[Skipped]) -> str:
    """Per-series threshold-free metrics (the catalog's ranked ones, madcluster_exp/metrics/
    catalog.py) and their mean over series (as TSB-AD averages)."""
    shown = [(s.key, s.label) for s in ranked()]
    width = max(len(u.entity) for u in units)
    head = f"  {'series':<{width}}  {'format':<8}" + "".join(f"  {t:>8}" for _, t in shown)
    lines = [
        f"\nCollection {collection.root}: {len(units)} series run, {len(skipped)} file(s) "
        f"skipped ({name})",
        head,
    ]
    for u in units:
        fmt = collection.series[u.entity].format
        lines.append(
            f"  {u.entity:<{width}}  {fmt:<8}"
            + "".join(f"  {u.evaluation.metrics.get(k, float('nan')):>8.4f}" for k, _ in shown)
        )
    # The mean over the series where a metric is defined (a series without an anomaly in its
    # test part has no VUS-PR or AUC), said with their count; such series are named once.
    values = [[u.evaluation.metrics.get(k, float("nan")) for u in units] for k, _ in shown]
    defined = [[v for v in vs if v == v] for vs in values]
    means = [sum(d) / len(d) if d else float("nan") for d in defined]
    lo, hi = min(map(len, defined)), max(map(len, defined))
    n = f"{lo}" if lo == hi else f"{lo}-{hi}"
    label = "mean over series" if lo == len(units) else f"mean over {n} of {len(units)}"
    lines.append(f"  {label:<{width + 10}}" + "".join(f"  {m:>8.4f}" for m in means))
    free = [u.entity for u in units if not u.test.labels.any()]
    if free:
        lines.append(f"  no anomaly in the test part (metrics undefined): {', '.join(free)}")
    lines += [f"  skipped {s.file}: {s.reason}" for s in skipped]
    return "\n".join(lines)


def _series(
    plan: JobPlan,
    env: JobEnv,
    collection: Collection,
    entity: str,
    child_ids: dict,
    skipped: List[Skipped],
) -> Optional[Unit]:
    """One series: its own child run under the job's, one model, its metrics and artifacts;
    None when the series is skipped (its data cannot be used)."""
    name, say = env.name, env.say
    info = collection.describe(entity)
    try:
        raw = collection.subset(entity)  # reads and checks the file before any run starts
    except DataError as exc:
        return _skip(say, name, skipped, info["series.file"], exc)
    child = env.tracker.new_run()
    child_name = f"{entity} ({name})"  # the series first: the runs list shows ~16 characters
    resumed = bool(child_ids.get(entity) and child.uri)
    if resumed:
        child.resume(child_ids[entity])
    else:
        child.start(
            child_name,
            plan.run_params(),
            {**plan.identity_tags(env.context), **info},
            parent_run_id=env.tracker.run_id,
        )
    child_ids[entity] = child.run_id
    t0 = time.perf_counter()
    try:
        unit = fit_unit(plan, env.with_tracker(child), Part(entity, raw, log_params=True))
    except DataError as exc:
        child.set_tags({"error": f"DataError: {exc}"[:5000]})
        child.end("FAILED")
        return _skip(say, name, skipped, info["series.file"], exc)
    except BaseException as exc:
        child.set_tags({"error": f"{type(exc).__name__}: {exc}"[:5000]})
        child.end("KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    metrics = {
        **unit.evaluation.metrics,
        **summary_metrics(plan, [unit]),
        "time/total_s": time.perf_counter() - t0,
    }
    child.log_params({"score_rule": unit.evaluation.score_rule})
    child.log_metrics(metrics)
    series_dir = env.job_dir / "series" / entity
    series_dir.mkdir(parents=True, exist_ok=True)
    artifacts = write_artifacts(
        plan,
        series_dir,
        child_name,
        unit.fit,
        unit.evaluation,
        unit.test.labels,
        metrics,
        env.context.overrides,
    )
    if plan.cfg.tracking.log_artifacts:
        for path in artifacts:
            child.log_artifact(path)
    if resumed:
        child.delete_tag("error")  # of the interruption it went on from: it finished
    child.end("FINISHED")
    shown = "  ".join(
        f"{k}={metrics[k]:.4f}" for k in ("test/vus_pr", "test/auc_roc") if k in metrics
    )
    say(f"[{child_name}] {info['series.format']}: {shown}")
    return unit


def _skip(say, name: str, skipped: List[Skipped], file: str, exc: Exception) -> None:
    skipped.append(Skipped(file, str(exc)))
    say(f"[{name}] skipped {file}: {exc}")
    return None
