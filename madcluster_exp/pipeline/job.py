"""One job: plan -> data -> open the run -> fit and score every unit -> pool -> log -> write.

The test split is sealed until a model is fitted; every number that selects a model, a radius,
a score normalisation or a threshold comes from training or validation data only.

This module orchestrates; the job's steps read in :func:`run` and :func:`_execute`. It gets
typed settings (:func:`madcluster_exp.config.load`) and what the Hydra command says
(:class:`~madcluster_exp.pipeline.context.JobContext`); every decision is made once in the
job's :class:`~madcluster_exp.pipeline.plan.JobPlan`. Fitting and scoring one model is
:mod:`~madcluster_exp.pipeline.unit`'s, a collection's series
:mod:`~madcluster_exp.pipeline.collection`'s, the files a job writes
:mod:`~madcluster_exp.pipeline.outputs`'.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import time
import traceback
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import torch

from madcluster_exp.config import RESUME_LAST, ConfigError, Settings
from madcluster_exp.config.identity import fingerprint, identifying, resume_conflicts
from madcluster_exp.config.schema import Config
from madcluster_exp.data import load_dataset
from madcluster_exp.data.collection import Collection
from madcluster_exp.errors import ExpectedError, JobInterrupted
from madcluster_exp.evaluation.protocols import Evaluation
from madcluster_exp.evaluation.sanity import describe, run_flags
from madcluster_exp.pipeline.collection import failure_kind, run_collection
from madcluster_exp.pipeline.context import JobContext
from madcluster_exp.pipeline.outputs import (
    entity_layout,
    format_results,
    model_note,
    save_model,
    write_artifacts,
    write_per_entity,
)
from madcluster_exp.pipeline.plan import JobEnv, JobPlan, make_plan
from madcluster_exp.pipeline.unit import Part, Unit, fit_unit, summary_metrics
from madcluster_exp.tracking import Tracker, build_tracker, resolve_tracking_uri
from madcluster_exp.training import FitResult
from madcluster_exp.training.checkpoint import check_resume
from madcluster_exp.training.progress import RECORD


@dataclass
class RunResult:
    run_name: str
    run_id: Optional[str]
    tracking_uri: Optional[str]
    output_dir: Path
    metrics: Dict[str, float]
    fit: Optional[FitResult]  # None: a finished sweep job that was not run again
    #: The run's MLflow logged model (``models:/<model_id>``); None when none was logged.
    model_id: Optional[str] = None


# ------------------------------------------------------------------------------- environment
def project_root(cfg: Config, context: JobContext) -> Path:
    if cfg.paths.root_dir:
        return Path(cfg.paths.root_dir).expanduser().resolve()
    return context.cwd.resolve()


def resolve_path(root: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def job_output_dir(cfg: Config, root: Path, context: JobContext) -> Path:
    if context.output_dir is not None:
        return context.output_dir
    stamp = datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
    return resolve_path(root, cfg.paths.output_dir) / "runs" / stamp


def finished_job(job_dir: Path, context: JobContext) -> Optional[Dict[str, Any]]:
    """The record of a sweep job that already finished in ``job_dir`` with the same overrides
    (run_info.json marked FINISHED, metrics.json written), else None: a sweep started again
    with the same sweep directory skips what it has, and runs what failed or never ran."""
    if not context.multirun:
        return None
    info_path, metrics_path = job_dir / RUN_INFO, job_dir / "metrics.json"
    overrides_path = job_dir / "overrides.json"
    if not (info_path.exists() and metrics_path.exists() and overrides_path.exists()):
        return None
    info = json.loads(info_path.read_text())
    same = json.loads(overrides_path.read_text())["overrides"] == list(context.overrides)
    if info.get("status") != "FINISHED" or not same:
        return None
    return {**info, "metrics": json.loads(metrics_path.read_text())}


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device=cuda but no CUDA device is available; use device=cpu or auto")
    return torch.device(str(name))


def early_stopping_tag(cfg: Config, fits: List[FitResult]) -> str:
    """How the kept epoch was chosen: ``no_signal`` when a model's validation loss was constant
    (full schedule trained, latest weights kept), else ``val_loss`` or ``off`` (no patience)."""
    if any(f.val_loss_signal is False for f in fits):
        return "no_signal"
    return "off" if cfg.train.patience is None else "val_loss"


# ---------------------------------------------------------------------------------- the job
#: Written first, so a killed run can be found, matched to its config and continued.
RUN_INFO = "run_info.json"

#: The job's log (Hydra's job log under the CLI, the same file): epoch lines, what the job
#: said and the results table; logged as an MLflow artifact.
JOB_LOG = "madcluster_exp.log"

#: A failed job's traceback, in its directory and among its run's artifacts.
TRACEBACK = "traceback.txt"

#: Left in the directory Hydra made for a ``train.resume=last`` command: where the run went on.
RESUMED_IN = "resumed_in.txt"


def run(
    settings: Settings,
    context: Optional[JobContext] = None,
    output_dir: Optional[Path] = None,
    verbose: bool = True,
) -> RunResult:
    """Run one configured job end to end. ``settings``: :func:`madcluster_exp.config.load` of
    the composed config; ``context``: what the Hydra command running it says (the entry point
    reads it); None for a job started from Python. Configuration and data errors raise before
    any MLflow run exists. A crash later marks the tracked run FAILED (KILLED on Ctrl-C), keeps
    everything already written and logs the traceback, then re-raises (Ctrl-C as
    :class:`~madcluster_exp.errors.JobInterrupted`, saying how to continue). A resumed run that
    finishes drops the error tag and traceback of the failure it went on from."""
    context = context if context is not None else JobContext.outside_hydra()
    try:
        plan, raw, job_dir, done = _prepare(settings, context, output_dir, verbose)
        cfg = plan.cfg
        root = project_root(cfg, context)
        if done is not None:
            if verbose:
                print(
                    f"[{plan.run_name}] finished in an earlier start of this sweep (MLflow run "
                    f"{done['run_id']}, {job_dir}); not run again"
                )
            return RunResult(
                plan.run_name,
                done["run_id"],
                done["tracking_uri"],
                job_dir,
                done["metrics"],
                None,
                done.get("model_id"),
            )
        tracker, name, resumed = _open_run(plan, context, root, job_dir)
    except ExpectedError as exc:
        exc.before_run = True  # refused up front (config, data, resume): nothing was tracked
        raise
    try:
        with job_record(job_dir / JOB_LOG):
            env = JobEnv(
                tracker=tracker,
                name=name,
                job_dir=job_dir,
                root=root,
                device=_set_up_compute(cfg, context),
                say=_sayer(verbose),
                context=context,
            )
            result = _execute(plan, env, raw)
        if cfg.tracking.log_artifacts:
            tracker.log_artifact(job_dir / JOB_LOG)
        if resumed:
            _clear_failure(tracker, job_dir)
    except BaseException as exc:
        _end_failed(tracker, job_dir, exc)
        if isinstance(exc, KeyboardInterrupt):
            raise JobInterrupted(tracker.run_id, name, job_dir, checkpoint_epoch(job_dir)) from exc
        raise
    tracker.end("FINISHED")
    _record_status(job_dir, "FINISHED", model_id=result.model_id)
    return result


def _prepare(settings: Settings, context: JobContext, output_dir: Optional[Path], verbose: bool):
    """What a job needs before its run is opened: the plan, the job directory (with
    ``train.resume=last``: the run it continues), the data (read and checked here, so a missing
    or bad file leaves no run), and the record of a finished sweep job (None: run it). Nothing
    is read when the job already finished."""
    plan = make_plan(settings)
    cfg = plan.cfg
    root = project_root(cfg, context)
    job_dir = Path(output_dir) if output_dir is not None else None
    if cfg.train.resume == RESUME_LAST:
        job_dir = _last_unfinished(plan, context, root, verbose) or job_dir
    if job_dir is None:
        job_dir = job_output_dir(cfg, root, context)
    job_dir.mkdir(parents=True, exist_ok=True)
    done = finished_job(job_dir, context)
    if done is not None:
        return plan, None, job_dir, done
    raw = load_dataset(cfg.dataset, resolve_path(root, cfg.paths.data_dir))
    return plan, raw, job_dir, None


def _tracking_uri(cfg: Config, root: Path) -> Optional[str]:
    """The store the job's run goes to (None: tracking=none)."""
    if cfg.tracking.backend == "none":
        return None
    return resolve_tracking_uri(cfg.tracking.uri, resolve_path(root, cfg.paths.output_dir))


def _last_unfinished(
    plan: JobPlan, context: JobContext, root: Path, verbose: bool
) -> Optional[Path]:
    """``train.resume=last``: the directory of the run to continue (None: there is none, and
    the job starts a new run, saying so)."""
    cfg = plan.cfg
    if context.multirun:
        raise ConfigError(
            "train.resume=last continues one run, not a sweep's jobs: start the sweep again "
            "with the same hydra.sweep.dir (its finished jobs are skipped, the others resume)"
        )
    runs = resolve_path(root, cfg.paths.output_dir) / "runs"
    found = latest_unfinished(runs, plan.params, _tracking_uri(cfg, root))
    here = context.output_dir
    if found is not None and here is not None and here.resolve() != found.resolve():
        # Hydra made this command a directory of its own: say where the run went on.
        here.mkdir(parents=True, exist_ok=True)
        (here / RESUMED_IN).write_text(f"train.resume=last continued the run in {found}\n")
    if verbose:
        print(
            f"[{plan.run_name}] train.resume=last: "
            + (
                f"continuing {found}"
                if found is not None
                else f"no unfinished run of this configuration with a checkpoint under {runs}; "
                "starting a new one"
            ),
            flush=True,
        )
    return found


def latest_unfinished(runs: Path, flat: Dict[str, Any], uri: Optional[str]) -> Optional[Path]:
    """The job directory under ``runs`` (``<paths.output_dir>/runs``) whose run_info.json
    recorded this configuration (the same identifying keys, seed included; ``train.epochs``
    may have grown) and tracking store, that did not finish, is not running now and has a
    checkpoint; the newest checkpoint wins. None when there is none."""
    best: Optional[Tuple[float, Path]] = None
    for info_path in runs.glob(f"**/{RUN_INFO}"):
        try:
            info = json.loads(info_path.read_text())
        except (OSError, ValueError):
            continue
        recorded = info.get("config")
        if info.get("status") == "FINISHED" or recorded is None or _running(info):
            continue
        if resume_conflicts(recorded, flat):
            continue
        if uri and info.get("tracking_uri") and info["tracking_uri"] != uri:
            continue
        saved = list((info_path.parent / "checkpoints").glob("*.pt"))
        if saved:
            newest = max(p.stat().st_mtime for p in saved)
            if best is None or newest > best[0]:
                best = (newest, info_path.parent)
    return None if best is None else best[1]


def _running(info: Dict[str, Any]) -> bool:
    """Whether the process that wrote this RUNNING run_info.json is alive on this machine (a
    run another terminal is training must not be continued twice)."""
    if info.get("status") != "RUNNING" or info.get("host") != socket.gethostname():
        return False
    try:
        os.kill(int(info["pid"]), 0)
    except (KeyError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # alive, another user's
    return True


def checkpoint_epoch(job_dir: Path) -> Optional[int]:
    """The last epoch (1-based) with a checkpoint in ``job_dir`` (the newest file of a
    per-entity run), None when there is none to continue from."""
    saved = sorted((job_dir / "checkpoints").glob("*.pt"), key=lambda p: p.stat().st_mtime)
    if not saved:
        return None
    try:
        return int(torch.load(saved[-1], map_location="cpu", weights_only=True)["epoch"]) + 1
    except (OSError, RuntimeError, KeyError, ValueError):
        return None


def _open_run(
    plan: JobPlan, context: JobContext, root: Path, job_dir: Path
) -> Tuple[Tracker, str, bool]:
    """Start the job's tracked run, or continue the one recorded in ``job_dir`` when its
    checkpoints are resumed; write run_info.json. Returns the tracker, the run's name and
    whether an earlier run is continued."""
    cfg, flat, name = plan.cfg, plan.params, plan.run_name
    out_root = resolve_path(root, cfg.paths.output_dir)
    info_path = job_dir / RUN_INFO
    checkpoints = job_dir / "checkpoints"
    resumable = bool(
        cfg.train.checkpoint
        and cfg.train.resume
        and info_path.exists()
        and any(checkpoints.glob("*.pt"))
    )
    uri = _tracking_uri(cfg, root)
    # Checked before the tracker exists: a refused resume touches no MLflow run.
    grown = check_resume(info_path, flat, uri) if resumable else []
    tracker = build_tracker(cfg.tracking, out_root)
    if not cfg.train.resume and checkpoints.exists():
        shutil.rmtree(checkpoints)  # start over, as asked
    previous = json.loads(info_path.read_text()) if resumable else {}
    if previous.get("run_id") and tracker.uri:
        tracker.resume(previous["run_id"])  # the same MLflow run goes on: no duplicate
        name = previous.get("run_name", name)
        if grown:  # params are written once: the grown epoch count is a tag
            tracker.set_tags(
                {"resume.changed": "; ".join(grown), "train.epochs": str(cfg.train.epochs)}
            )
    else:
        tracker.start(
            name,
            plan.run_params(),
            plan.identity_tags(context),
            parent_run_id=context.parent_run_id(),
        )
    info_path.write_text(
        json.dumps(
            {
                "run_id": tracker.run_id,
                "tracking_uri": tracker.uri,
                "run_name": name,
                "config_fingerprint": fingerprint(flat),
                "config": identifying(flat),
                # Until the job ends (FINISHED, FAILED or KILLED): train.resume=last leaves
                # alone a run whose process is still alive.
                "status": "RUNNING",
                "pid": os.getpid(),
                "host": socket.gethostname(),
            },
            indent=2,
        )
    )
    return tracker, name, resumable


def _record_status(job_dir: Path, status: str, **extra: Any) -> None:
    """run_info.json's ``status`` (and ``extra`` keys) at the end of the job."""
    info_path = job_dir / RUN_INFO
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "status": status, **extra}, indent=2))


def _end_failed(tracker: Tracker, job_dir: Path, exc: BaseException) -> None:
    """End the tracked run FAILED (KILLED on Ctrl-C) with the error tag (and, FAILED, the
    ``failure.kind`` tag: collapse, data or error) and traceback.txt."""
    status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
    tb_path = job_dir / TRACEBACK
    tb_path.write_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    tags = {"error": f"{type(exc).__name__}: {exc}"[:5000]}
    if status == "FAILED":
        tags["failure.kind"] = failure_kind(exc)
    try:
        _record_status(job_dir, status)
        tracker.set_tags(tags)
        tracker.log_artifact(tb_path)
    finally:
        tracker.end(status)


def _clear_failure(tracker: Tracker, job_dir: Path) -> None:
    """A resumed run that finished did not fail: the ``error`` and ``failure.kind`` tags and
    ``traceback.txt`` of the failure (or Ctrl-C) it went on from go, from MLflow and the job
    directory. Where the store cannot delete an artifact, a note replaces the traceback."""
    tracker.delete_tag("error")
    tracker.delete_tag("failure.kind")
    stale = job_dir / TRACEBACK
    if stale.exists():
        stale.unlink()
    if not tracker.delete_artifact(TRACEBACK):
        stale.write_text(
            "This run was interrupted, then resumed and finished: the traceback of the "
            "interruption was replaced by this note (this tracking store cannot delete an "
            "artifact).\n"
        )
        tracker.log_artifact(stale)


@contextmanager
def job_record(path: Path):
    """Append the job's own lines (progress.RECORD) to ``path`` while the job runs."""
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(message)s"))
    RECORD.addHandler(handler)
    RECORD.setLevel(logging.INFO)
    try:
        yield
    finally:
        RECORD.removeHandler(handler)
        handler.close()


def _execute(plan: JobPlan, env: JobEnv, raw) -> RunResult:
    """The job's steps: fit and score every unit, pool, log, write."""
    t_start = time.perf_counter()
    units = _fit_units(plan, env, raw)
    t_pool = time.perf_counter()
    ev, extra_artifacts = _job_evaluation(plan, units, env.job_dir)
    metrics = {**ev.metrics, **summary_metrics(plan, units)}
    metrics["time/metrics_s"] += time.perf_counter() - t_pool
    metrics["time/total_s"] = time.perf_counter() - t_start
    metrics["time/tracking_s"] = env.tracker.seconds  # everything logged up to here
    _log_results(plan, env.tracker, ev, units, metrics)
    model_dir, model_id = _write_outputs(plan, env, ev, units, metrics, extra_artifacts)
    tracker = env.tracker
    result = RunResult(
        env.name, tracker.run_id, tracker.uri, env.job_dir, metrics, units[0].fit, model_id
    )
    env.say(format_results(result, plan))
    if model_dir is not None:
        env.say(model_note(model_dir, tracker.run_id, model_id, env.job_dir))
    return result


def _sayer(verbose: bool):
    """What the job says: printed when ``verbose``, always in the job's log (RECORD)."""

    def say(*parts, **kwargs) -> None:
        if verbose:
            print(*parts, **kwargs)
        RECORD.info(" ".join(str(p) for p in parts))

    return say


def _set_up_compute(cfg: Config, context: JobContext) -> torch.device:
    """Torch threads (split between a sweep's parallel jobs), determinism; the device."""
    threads = cfg.train.num_threads or context.sweep_threads()
    if threads:
        torch.set_num_threads(int(threads))
    device = resolve_device(cfg.device)
    if cfg.deterministic:
        # Required by cuBLAS for deterministic matmuls; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    return device


def _fit_units(plan: JobPlan, env: JobEnv, raw) -> List[Unit]:
    """Fit and score one model on the dataset, one per entity (per_entity), or one per series
    of a collection (each in a child run of its own)."""
    if isinstance(raw, Collection):
        # One child run per series, read one at a time; bad files are skipped (collection.py).
        env.say(
            f"[{env.name}] collection {raw.root}: {len(raw.entities)} series, one model and one "
            "child run each"
        )
        return run_collection(plan, env, raw)
    per_entity = plan.cfg.dataset.mode == "per_entity"
    parts = (
        [Part(e, raw.subset(e), i == 0, f"{e}/") for i, e in enumerate(raw.entities)]
        if per_entity
        else [Part(None, raw, True)]
    )
    if per_entity:
        env.say(f"[{env.name}] per-entity mode: {len(parts)} models, one per entity")
    return [fit_unit(plan, env, part) for part in parts]


def _job_evaluation(
    plan: JobPlan, units: List[Unit], job_dir: Path
) -> Tuple[Evaluation, List[Path]]:
    """The job's evaluation: its one unit's, or (per_entity) all entities' pooled by the
    protocol, each entity's metrics written to per_entity.csv (returned with it)."""
    if plan.cfg.dataset.mode != "per_entity":
        return units[0].evaluation, []
    ev, table = plan.protocol.pool([u.evaluation for u in units], [u.entity for u in units])
    return ev, [write_per_entity(table, job_dir)]


def _log_results(
    plan: JobPlan, tracker: Tracker, ev: Evaluation, units: List[Unit], metrics: Dict
) -> None:
    """Log the score rule (param), threshold family, early stopping and sanity (tags) and
    the metrics to the job's run."""
    tracker.log_params({"score_rule": ev.score_rule})
    tracker.set_tags(
        {
            "threshold.family": ev.threshold_family,
            "early_stopping": early_stopping_tag(plan.cfg, [u.fit for u in units]),
            "sanity": describe(run_flags(metrics)),
        }
    )
    tracker.log_metrics(metrics)


def _write_outputs(
    plan: JobPlan,
    env: JobEnv,
    ev: Evaluation,
    units: List[Unit],
    metrics: Dict[str, float],
    extra_artifacts: List[Path],
) -> Tuple[Optional[Path], Optional[str]]:
    """Write the job's artifacts and saved model (outputs.py), log them to MLflow; return
    the model's directory and logged model id (None: no model saved, or not logged)."""
    layout, labels = entity_layout([u.test for u in units])
    ev.arrays.update(layout)
    paths = write_artifacts(
        plan, env.job_dir, env.name, units[0].fit, ev, labels, metrics, env.context.overrides
    )
    tracker = env.tracker
    if plan.cfg.tracking.log_artifacts:
        for path in paths + extra_artifacts:
            tracker.log_artifact(path)
    entries = [u.model for u in units if u.model is not None]
    return save_model(plan, env.job_dir, entries, env.say, tracker)
