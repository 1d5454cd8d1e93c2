"""One job: seed -> data -> detector -> fit -> score -> threshold -> metrics -> track.

The test split is sealed until ``fit`` has returned; every number that selects a model, a radius,
a score normalisation or a threshold comes from training or validation data only.

This module orchestrates; the job's steps read in :func:`run` and :func:`_execute`. What the
Hydra command says comes in as a :class:`~madcluster_exp.pipeline.context.JobContext`; what differs
between the point and reference protocols is asked of the protocol object
(:func:`madcluster_exp.evaluation.protocols.protocol_for`); the files a job writes and its
results table
are :mod:`madcluster_exp.pipeline.outputs`'; fitting and scoring one model is
:mod:`madcluster_exp.pipeline.unit`'s, and training gets its settings
(:class:`~madcluster_exp.training.TrainSettings`), not the config.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from madcluster_exp.backbones import backbone_class
from madcluster_exp.classical import is_classical
from madcluster_exp.config import (
    PROTOCOL_COMBINE,
    ConfigError,
    inert_settings,
    resolve_defaults,
    validate,
)
from madcluster_exp.config.identity import config_id, fingerprint, identifying
from madcluster_exp.data import load_dataset
from madcluster_exp.data.collection import Collection
from madcluster_exp.evaluation.protocols import (
    Evaluation,
    effective_threshold_kind,
    protocol_for,
)
from madcluster_exp.evaluation.sanity import describe, run_flags
from madcluster_exp.pipeline.context import JobContext, search_tags
from madcluster_exp.pipeline.outputs import (
    entity_layout,
    format_results,
    model_note,
    save_model,
    write_artifacts,
    write_per_entity,
)
from madcluster_exp.pipeline.unit import Unit, fit_and_score
from madcluster_exp.tracking import Tracker, build_tracker, resolve_tracking_uri
from madcluster_exp.training import FitResult
from madcluster_exp.training.checkpoint import check_resume
from madcluster_exp.training.progress import RECORD

# The checkout this code runs from: its git commit is the run's source version.
CODE_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RunResult:
    run_name: str
    run_id: Optional[str]
    tracking_uri: Optional[str]
    output_dir: Path
    metrics: Dict[str, float]
    fit: Optional[FitResult]  # None: a finished sweep job that was not run again


# ------------------------------------------------------------------------------- environment
def project_root(cfg: DictConfig, context: JobContext) -> Path:
    if cfg.paths.root_dir:
        return Path(cfg.paths.root_dir).expanduser().resolve()
    return context.cwd.resolve()


def resolve_path(root: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def job_output_dir(cfg: DictConfig, root: Path, context: JobContext) -> Path:
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
    return torch.device(name)


def _git(root: Path, *args: str) -> Optional[str]:
    try:
        out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def git_tags(root: Path) -> Dict[str, str]:
    """MLflow's own source tags (the UI's version column) and whether tracked files differed
    from that commit (``git_dirty``); none outside a git checkout."""
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return {"git_commit": "unknown"}
    status = _git(root, "status", "--porcelain", "--untracked-files=no")
    tags = {
        "git_commit": commit,
        "mlflow.source.git.commit": commit,
        "git_dirty": "unknown" if status is None else str(bool(status)).lower(),
    }
    branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        tags["mlflow.source.git.branch"] = branch
    return tags


# ---------------------------------------------------------------------------- identification
def run_name(cfg: DictConfig, flat: Optional[Dict[str, Any]] = None) -> str:
    """``{backbone}-{dataset}-{state}-{config id}-s{seed}``: the config id (identity.py) tells
    configurations apart, the same for every seed of one configuration; the state is on, off,
    or "on+<rule>" when MADCluster's score meets the backbone's by another rule than the
    protocol's (e.g. the backbone_only control arm)."""
    state = "on" if cfg.madcluster.enabled else "off"
    combine = cfg.scoring.combine
    if cfg.madcluster.enabled and combine and combine != PROTOCOL_COMBINE[cfg.protocol]:
        state = f"on+{combine}"
    cid = config_id(flat if flat is not None else flatten(cfg))
    name = f"{cfg.backbone.name}-{cfg.dataset.name}-{state}-{cid}-s{cfg.seed}"
    return f"{name}-{cfg.tracking.run_name_suffix}" if cfg.tracking.run_name_suffix else name


def flatten(cfg: DictConfig) -> Dict[str, Any]:
    """Every leaf of the resolved config as ``group.key`` -> value (MLflow params); a closed
    choice as its plain string (config.Choice members are named by their values)."""
    out: Dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), "")
    return out


def check_backbone_score_exists(cfg: DictConfig) -> None:
    """scoring.combine=backbone_only with MADCluster on needs a backbone score; a backbone
    that hands its objective and score to the plug-in (Deep SVDD) has none, and the combiner
    would silently use the plug-in's. Fails before any training."""
    if (
        cfg.madcluster.enabled
        and cfg.scoring.combine == "backbone_only"
        and not backbone_class(cfg.backbone.name).keeps_objective_with_plugin
    ):
        raise ConfigError(
            f"scoring.combine=backbone_only with backbone={cfg.backbone.name}: this backbone "
            "hands its objective and score to MADCluster's center, so there is no backbone "
            "score to keep; the control arm does not apply to it (use madcluster=off for the "
            "backbone alone)"
        )


def check_components_apply(cfg: DictConfig) -> None:
    """madcluster.components=mapping on a backbone whose objective the plug-in replaces (Deep
    SVDD) leaves only ||h - c||^2 with a *learnable* center c: its minimum is the trivial
    collapse (Ruff et al. 2018, Prop. 1), so the run would measure nothing. The paper's
    "distance only" row is Deep SVDD alone (madcluster=off). Fails before any training."""
    mc = cfg.madcluster
    if (
        mc.enabled
        and mc.components == "mapping"
        and not backbone_class(cfg.backbone.name).keeps_objective_with_plugin
    ):
        raise ConfigError(
            f"madcluster.components=mapping with backbone={cfg.backbone.name}: MADCluster "
            "replaces this backbone's objective, leaving only the distance to a learnable "
            "center, which collapses; the paper's 'distance only' row (appendix Table 3) is "
            f"{cfg.backbone.name} alone: use madcluster=off (see experiment=paper_ablation)"
        )


def early_stopping_tag(cfg: DictConfig, fits: List[FitResult]) -> str:
    """How the kept epoch was chosen: ``no_signal`` when a model's validation loss was constant
    (full schedule trained, latest weights kept), else ``val_loss`` or ``off`` (no patience)."""
    if any(f.val_loss_signal is False for f in fits):
        return "no_signal"
    return "off" if cfg.train.patience is None else "val_loss"


def identity_tags(cfg: DictConfig, context: JobContext) -> Dict[str, str]:
    tags = {
        "backbone": cfg.backbone.name,
        "family": cfg.backbone.family,
        "dataset": cfg.dataset.name,
        "madcluster": "on" if cfg.madcluster.enabled else "off",
        "seed": str(cfg.seed),
        "protocol": cfg.protocol,
        "threshold.kind": effective_threshold_kind(cfg),
        "config_id": config_id(flatten(cfg)),
        **git_tags(CODE_ROOT),
    }
    if cfg.backbone.get("embed_tap") is not None:
        tags["embed_tap"] = cfg.backbone.embed_tap
    if cfg.madcluster.enabled:
        tags.update(
            {
                "madcluster.k": str(cfg.madcluster.k),
                "madcluster.variant": cfg.madcluster.variant,
                "scoring.combine": str(cfg.scoring.combine),
            }
        )
    tags.update(context.tags())  # the Hydra command's overrides and job number
    if cfg.search.trial is not None:  # a trial of an Optuna search (its sweeper sets it)
        tags.update(search_tags(context.sweeper))
        tags["optuna.trial"] = str(cfg.search.trial)
    if cfg.notes:
        tags["mlflow.note.content"] = cfg.notes
    return tags


# ---------------------------------------------------------------------------------- the job
#: Written first, so a killed run can be found, matched to its config and continued.
RUN_INFO = "run_info.json"

#: The job's log (Hydra's job log under the CLI, the same file): epoch lines, what the job
#: said and the results table; logged as an MLflow artifact.
JOB_LOG = "madcluster_exp.log"


def run(
    cfg: DictConfig,
    context: Optional[JobContext] = None,
    output_dir: Optional[Path] = None,
    verbose: bool = True,
) -> RunResult:
    """Run one configured job end to end. ``context``: what the Hydra command running it says
    (the entry point reads it); None for a job started from Python. A crash marks the tracked
    run FAILED (KILLED on Ctrl-C), keeps everything already written and logs the traceback,
    then re-raises."""
    context = context if context is not None else JobContext.outside_hydra()
    cfg = _checked(cfg)
    root = project_root(cfg, context)
    job_dir = Path(output_dir) if output_dir is not None else job_output_dir(cfg, root, context)
    job_dir.mkdir(parents=True, exist_ok=True)
    flat = flatten(cfg)
    name = run_name(cfg, flat)
    done = finished_job(job_dir, context)
    if done is not None:
        if verbose:
            print(
                f"[{name}] finished in an earlier start of this sweep (MLflow run "
                f"{done['run_id']}, {job_dir}); not run again"
            )
        return RunResult(name, done["run_id"], done["tracking_uri"], job_dir, done["metrics"], None)
    tracker, name = _open_run(cfg, context, root, job_dir, flat, name)
    try:
        with job_record(job_dir / JOB_LOG):
            result = _execute(cfg, tracker, name, context, root, job_dir, verbose)
        if cfg.tracking.log_artifacts:
            tracker.log_artifact(job_dir / JOB_LOG)
    except BaseException as exc:
        _end_failed(tracker, job_dir, exc)
        raise
    tracker.end("FINISHED")
    info_path = job_dir / RUN_INFO
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "status": "FINISHED"}, indent=2))
    return result


def _checked(cfg: DictConfig) -> DictConfig:
    """The config validated, its inert settings warned about and the by-protocol defaults
    filled in; configuration errors raise here, before any MLflow run exists."""
    validate(cfg)
    inert = inert_settings(cfg)  # as composed, before the by-protocol defaults fill in
    if inert:
        warnings.warn("these settings have no effect here: " + "; ".join(inert), stacklevel=3)
    cfg = resolve_defaults(cfg)
    check_backbone_score_exists(cfg)
    check_components_apply(cfg)
    return cfg


def _open_run(
    cfg: DictConfig, context: JobContext, root: Path, job_dir: Path, flat: Dict[str, Any], name: str
) -> Tuple[Tracker, str]:
    """Start the job's tracked run, or continue the one recorded in ``job_dir`` when its
    checkpoints are resumed; write run_info.json. Returns the tracker and the run's name."""
    out_root = resolve_path(root, cfg.paths.output_dir)
    info_path = job_dir / RUN_INFO
    checkpoints = job_dir / "checkpoints"
    resumable = (
        cfg.train.checkpoint
        and cfg.train.resume
        and info_path.exists()
        and any(checkpoints.glob("*.pt"))
    )
    uri = (
        None if cfg.tracking.backend == "none" else resolve_tracking_uri(cfg.tracking.uri, out_root)
    )
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
        tags = identity_tags(cfg, context)
        tracker.start(name, flat, tags, parent_run_id=context.parent_run_id())
    info_path.write_text(
        json.dumps(
            {
                "run_id": tracker.run_id,
                "tracking_uri": tracker.uri,
                "run_name": name,
                "config_fingerprint": fingerprint(flat),
                "config": identifying(flat),
            },
            indent=2,
        )
    )
    return tracker, name


def _end_failed(tracker: Tracker, job_dir: Path, exc: BaseException) -> None:
    """End the tracked run FAILED (KILLED on Ctrl-C) with the error tag and traceback.txt."""
    status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
    tb_path = job_dir / "traceback.txt"
    tb_path.write_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
    try:
        tracker.set_tags({"error": f"{type(exc).__name__}: {exc}"[:5000]})
        tracker.log_artifact(tb_path)
    finally:
        tracker.end(status)


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


def _execute(
    cfg: DictConfig,
    tracker: Tracker,
    name: str,
    context: JobContext,
    root: Path,
    job_dir: Path,
    verbose: bool,
) -> RunResult:
    """The job's steps: set up the compute, fit and score every unit, pool, log, write."""
    say = _sayer(verbose)
    t_start = time.perf_counter()
    device = _set_up_compute(cfg, context)
    units = _fit_units(cfg, tracker, name, context, root, job_dir, device, say)
    t_pool = time.perf_counter()
    ev, extra_artifacts = _job_evaluation(cfg, units, job_dir)
    metrics = _job_metrics(cfg, ev, units, t_pool)
    metrics["time/total_s"] = time.perf_counter() - t_start
    metrics["time/tracking_s"] = tracker.seconds  # everything logged up to here
    _log_results(cfg, tracker, ev, units, metrics)
    model_dir = _write_outputs(
        cfg, tracker, context, name, job_dir, ev, units, metrics, extra_artifacts, say
    )
    result = RunResult(name, tracker.run_id, tracker.uri, job_dir, metrics, units[0].fit)
    say(format_results(result, cfg))
    if model_dir is not None:
        say(model_note(model_dir, tracker.run_id, cfg.tracking.log_artifacts, job_dir))
    return result


def _sayer(verbose: bool):
    """What the job says: printed when ``verbose``, always in the job's log (RECORD)."""

    def say(*parts, **kwargs) -> None:
        if verbose:
            print(*parts, **kwargs)
        RECORD.info(" ".join(str(p) for p in parts))

    return say


def _set_up_compute(cfg: DictConfig, context: JobContext) -> torch.device:
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


def data_window(backbone: DictConfig) -> int:
    """The window the data is cut into: ``backbone.window``, or more where the backbone needs
    it (SLMR adds its forecast target)."""
    if is_classical(backbone):
        return int(backbone.window)
    return backbone_class(backbone.name).data_window(int(backbone.window))


def _fit_units(
    cfg: DictConfig,
    tracker: Tracker,
    name: str,
    context: JobContext,
    root: Path,
    job_dir: Path,
    device: torch.device,
    say,
) -> List[Unit]:
    """Load the dataset; fit and score one model on it, one per entity (per_entity), or one
    per series of a collection (each in a child run of its own)."""
    window = data_window(cfg.backbone)
    raw = load_dataset(cfg.dataset, resolve_path(root, cfg.paths.data_dir))
    if isinstance(raw, Collection):
        # One child run per series, read one at a time; bad files are skipped (series_runs.py).
        from madcluster_exp.pipeline.collection import run_collection

        say(
            f"[{name}] collection {raw.root}: {len(raw.entities)} series, one model and one "
            "child run each"
        )
        units, _ = run_collection(cfg, tracker, name, raw, window, device, say, context, job_dir)
        return units
    per_entity = cfg.dataset.mode == "per_entity"
    parts = [(e, raw.subset(e)) for e in raw.entities] if per_entity else [(None, raw)]
    if per_entity:
        say(f"[{name}] per-entity mode: {len(parts)} models, one per entity")
    return [
        fit_and_score(
            cfg,
            tracker,
            name,
            part,
            entity,
            window,
            device,
            say,
            log_params=(i == 0),
            job_dir=job_dir,
        )
        for i, (entity, part) in enumerate(parts)
    ]


def _job_evaluation(
    cfg: DictConfig, units: List[Unit], job_dir: Path
) -> Tuple[Evaluation, List[Path]]:
    """The job's evaluation: its one unit's, or (per_entity) all entities' pooled by the
    protocol, each entity's metrics written to per_entity.csv (returned with it)."""
    if cfg.dataset.mode != "per_entity":
        return units[0].evaluation, []
    ev, table = protocol_for(cfg).pool([u.evaluation for u in units], [u.entity for u in units])
    return ev, [write_per_entity(table, job_dir)]


def _job_metrics(
    cfg: DictConfig, ev: Evaluation, units: List[Unit], t_pool: float
) -> Dict[str, float]:
    """The run's metrics: the evaluation's, the training summary (deep detectors; the first
    unit's epochs, the mean best validation loss) and the time spent per stage."""
    metrics = dict(ev.metrics)
    fit_result = units[0].fit
    if not is_classical(cfg.backbone):  # a classical detector has no loss and no epochs
        metrics.update(
            {
                "val/best_loss": float(np.mean([u.fit.best_val_loss for u in units])),
                "train/best_epoch": fit_result.best_epoch,
                "train/epochs_run": fit_result.epochs_run,
            }
        )
    metrics.update(
        {
            "time/fit_s": sum(u.fit.fit_seconds for u in units),
            "time/score_s": sum(u.score_s for u in units),
            "time/metrics_s": sum(u.metrics_s for u in units) + time.perf_counter() - t_pool,
        }
    )
    return metrics


def _log_results(
    cfg: DictConfig, tracker: Tracker, ev: Evaluation, units: List[Unit], metrics: Dict
) -> None:
    """Log the score rule (param), threshold family, early stopping and sanity (tags) and
    the metrics to the job's run."""
    tracker.log_params({"score_rule": ev.score_rule})
    tracker.set_tags(
        {
            "threshold.family": ev.threshold_family,
            "early_stopping": early_stopping_tag(cfg, [u.fit for u in units]),
            "sanity": describe(run_flags(metrics)),
        }
    )
    tracker.log_metrics(metrics)


def _write_outputs(
    cfg: DictConfig,
    tracker: Tracker,
    context: JobContext,
    name: str,
    job_dir: Path,
    ev: Evaluation,
    units: List[Unit],
    metrics: Dict[str, float],
    extra_artifacts: List[Path],
    say,
) -> Optional[Path]:
    """Write the job's artifacts and saved model (artifacts.py), log them to MLflow; return
    the model's directory (None: no model saved)."""
    layout, labels = entity_layout([u.test for u in units])
    ev.arrays.update(layout)
    paths = write_artifacts(
        cfg, job_dir, name, units[0].fit, ev, labels, metrics, context.overrides
    )
    if cfg.tracking.log_artifacts:
        for path in paths + extra_artifacts:
            tracker.log_artifact(path)
    model_dir = save_model(cfg, job_dir, [u.model for u in units if u.model is not None], say)
    if model_dir is not None and cfg.tracking.log_artifacts:
        tracker.log_artifacts(model_dir, "model")
    return model_dir
