"""One job: seed -> data -> detector -> fit -> score -> threshold -> metrics -> track.

The test split is sealed until ``fit`` has returned; every number that selects a model, a radius,
a score normalisation or a threshold comes from training or validation data only.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from madcluster_exp.backbones import backbone_class
from madcluster_exp.classical import build_classical, is_classical, score_split_classical
from madcluster_exp.complexity import complexity
from madcluster_exp.config import (
    PROTOCOL_COMBINE,
    ConfigError,
    inert_settings,
    resolve_defaults,
    validate,
)
from madcluster_exp.data import load_dataset, prepare
from madcluster_exp.data.collection import Collection
from madcluster_exp.data.inject import inject
from madcluster_exp.detector import build_detector
from madcluster_exp.identity import config_id, fingerprint, identifying
from madcluster_exp.protocols import (
    evaluate_point,
    evaluate_reference,
    injected_metrics,
    injected_score,
)
from madcluster_exp.sanity import describe, run_flags, score_spread
from madcluster_exp.scoring import score_split
from madcluster_exp.scoring.score import window_labels
from madcluster_exp.tracking import Tracker, build_tracker, resolve_tracking_uri
from madcluster_exp.tracking.callbacks import read_parent
from madcluster_exp.training import FitResult, fit
from madcluster_exp.training.checkpoint import Checkpointer, check_resume
from madcluster_exp.training.progress import RECORD

# The checkout this code runs from: its git commit is the run's source version.
CODE_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunResult:
    run_name: str
    run_id: Optional[str]
    tracking_uri: Optional[str]
    output_dir: Path
    metrics: Dict[str, float]
    fit: Optional[FitResult]  # None: a finished sweep job that was not run again


# ------------------------------------------------------------------------------- environment
def _hydra_runtime():
    from hydra.core.hydra_config import HydraConfig

    return HydraConfig.get() if HydraConfig.initialized() else None


def project_root(cfg: DictConfig) -> Path:
    if cfg.paths.root_dir:
        return Path(cfg.paths.root_dir).expanduser().resolve()
    hc = _hydra_runtime()
    return Path(hc.runtime.cwd if hc is not None else os.getcwd()).resolve()


def resolve_path(root: Path, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else (root / path).resolve()


def job_output_dir(cfg: DictConfig, root: Path) -> Path:
    hc = _hydra_runtime()
    if hc is not None:
        return Path(hc.runtime.output_dir)
    stamp = datetime.now().strftime("%Y-%m-%d/%H-%M-%S-%f")
    return resolve_path(root, cfg.paths.output_dir) / "runs" / stamp


def parent_run_id() -> Optional[str]:
    """The sweep's parent run (multirun: written by the sweep callback), else None."""
    hc = _hydra_runtime()
    if hc is not None and hc.mode == RunMode.MULTIRUN:
        return read_parent(
            Path(hc.sweep.dir)
            if Path(hc.sweep.dir).is_absolute()
            else Path(hc.runtime.cwd) / hc.sweep.dir
        )
    return None


def finished_job(job_dir: Path) -> Optional[Dict[str, Any]]:
    """The record of a sweep job that already finished in ``job_dir`` with the same overrides
    (run_info.json marked FINISHED, metrics.json written), else None: a sweep started again
    with the same sweep directory skips what it has, and runs what failed or never ran."""
    hc = _hydra_runtime()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return None
    info_path, metrics_path = job_dir / "run_info.json", job_dir / "metrics.json"
    overrides_path = job_dir / "overrides.json"
    if not (info_path.exists() and metrics_path.exists() and overrides_path.exists()):
        return None
    info = json.loads(info_path.read_text())
    same = json.loads(overrides_path.read_text())["overrides"] == list(hc.overrides.task)
    if info.get("status") != "FINISHED" or not same:
        return None
    return {**info, "metrics": json.loads(metrics_path.read_text())}


def sweep_threads() -> Optional[int]:
    """Threads per job when a parallel launcher runs several jobs at once: PyTorch's OpenMP
    threads spin at barriers, so jobs that share cores must split them (a 2-thread step became
    15-20x slower with another process on one of 2 cores)."""
    hc = _hydra_runtime()
    if hc is None or hc.mode != RunMode.MULTIRUN:
        return None
    n_jobs = hc.launcher.get("n_jobs")
    if n_jobs is None:
        return None
    cores = os.cpu_count() or 1
    parallel = cores if int(n_jobs) < 0 else int(n_jobs)
    return max(1, cores // max(1, parallel))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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


def effective_threshold_kind(cfg: DictConfig) -> str:
    """The reference protocol always thresholds at the test-label best F1 (an oracle)."""
    return "oracle" if cfg.protocol == "reference" else cfg.threshold.kind


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


def identity_tags(cfg: DictConfig, root: Path) -> Dict[str, str]:
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
    hc = _hydra_runtime()
    if hc is not None:
        tags["hydra.overrides"] = " ".join(hc.overrides.task)
        if hc.job.get("num") is not None:
            tags["hydra.job.num"] = str(hc.job.num)
    if cfg.search.trial is not None:  # a trial of an Optuna search (its sweeper sets it)
        tags.update(search_tags(hc.sweeper if hc is not None else {}))
        tags["optuna.trial"] = str(cfg.search.trial)
    if cfg.notes:
        tags["mlflow.note.content"] = cfg.notes
    return tags


def search_tags(sweeper) -> Dict[str, str]:
    """The study a run belongs to: ``optuna.study`` and ``optuna.storage`` (password hidden;
    ``in-memory`` for a one-process study), on the parent run and on every trial's run."""
    from madcluster_exp.launchers.optuna_study import sqlalchemy_url
    from madcluster_exp.tracking.server import redact

    storage = sweeper.get("storage")
    return {
        "optuna.study": str(sweeper.get("study_name")),
        "optuna.storage": redact(sqlalchemy_url(storage)) if storage else "in-memory",
    }


# ---------------------------------------------------------------------------------- the job
def run(cfg: DictConfig, output_dir: Optional[Path] = None, verbose: bool = True) -> RunResult:
    """Run one configured job end to end. A crash marks the tracked run FAILED (KILLED on
    Ctrl-C), keeps everything already written and logs the traceback, then re-raises."""
    validate(cfg)
    inert = inert_settings(cfg)  # as composed, before the by-protocol defaults fill in
    if inert:
        warnings.warn("these settings have no effect here: " + "; ".join(inert), stacklevel=2)
    cfg = resolve_defaults(cfg)
    check_backbone_score_exists(cfg)  # a configuration error: before any MLflow run exists
    check_components_apply(cfg)
    root = project_root(cfg)
    out_root = resolve_path(root, cfg.paths.output_dir)
    job_dir = Path(output_dir) if output_dir is not None else job_output_dir(cfg, root)
    job_dir.mkdir(parents=True, exist_ok=True)
    flat = flatten(cfg)
    name = run_name(cfg, flat)
    done = finished_job(job_dir)
    if done is not None:
        if verbose:
            print(
                f"[{name}] finished in an earlier start of this sweep (MLflow run "
                f"{done['run_id']}, {job_dir}); not run again"
            )
        return RunResult(name, done["run_id"], done["tracking_uri"], job_dir, done["metrics"], None)
    info_path = job_dir / "run_info.json"
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
        tracker.start(name, flat, identity_tags(cfg, root), parent_run_id=parent_run_id())
    # Written first, so a killed run can be found, matched to its config and continued.
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
    try:
        with job_record(job_dir / JOB_LOG):
            result = _execute(cfg, tracker, name, root, job_dir, verbose)
        if cfg.tracking.log_artifacts:
            tracker.log_artifact(job_dir / JOB_LOG)
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        tb_path = job_dir / "traceback.txt"
        tb_path.write_text("".join(traceback.format_exception(type(exc), exc, exc.__traceback__)))
        try:
            tracker.set_tags({"error": f"{type(exc).__name__}: {exc}"[:5000]})
            tracker.log_artifact(tb_path)
        finally:
            tracker.end(status)
        raise
    tracker.end("FINISHED")
    info = json.loads(info_path.read_text())
    info_path.write_text(json.dumps({**info, "status": "FINISHED"}, indent=2))
    return result


#: The job's log (Hydra's job log under the CLI, the same file): epoch lines, what the job
#: said and the results table; logged as an MLflow artifact.
JOB_LOG = "madcluster_exp.log"


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


@dataclass
class _Unit:
    """One trained model: the whole dataset (concat) or one entity (per_entity)."""

    entity: Optional[str]
    fit: FitResult
    evaluation: object
    test: object  # SeriesSplit
    score_s: float
    #: What the saved model needs of this unit (madcluster_exp.model.model_entry); None under
    #: protocol=reference, whose test-label threshold does not score new data.
    model: Optional[dict] = None
    metrics_s: float = 0.0  # computing the metrics (evaluate_point / evaluate_reference)


def _execute(
    cfg: DictConfig, tracker: Tracker, name: str, root: Path, job_dir: Path, verbose: bool
) -> RunResult:
    def say(*parts, **kwargs) -> None:
        if verbose:
            print(*parts, **kwargs)
        RECORD.info(" ".join(str(p) for p in parts))

    t_start = time.perf_counter()
    threads = cfg.train.num_threads or sweep_threads()
    if threads:
        torch.set_num_threads(int(threads))
    device = resolve_device(cfg.device)
    if cfg.deterministic:
        # Required by cuBLAS for deterministic matmuls; harmless on CPU.
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
    # The data window may differ from backbone.window (SLMR adds its forecast target).
    classical = is_classical(cfg.backbone)
    window = (
        int(cfg.backbone.window)
        if classical
        else backbone_class(cfg.backbone.name).data_window(int(cfg.backbone.window))
    )

    raw = load_dataset(cfg.dataset, resolve_path(root, cfg.paths.data_dir))
    per_entity = cfg.dataset.mode == "per_entity"
    if isinstance(raw, Collection):
        # One child run per series, read one at a time; bad files are skipped (series_runs.py).
        from madcluster_exp.series_runs import run_collection

        say(
            f"[{name}] collection {raw.root}: {len(raw.entities)} series, one model and one "
            "child run each"
        )
        units, _ = run_collection(cfg, tracker, name, raw, window, device, say, root, job_dir)
    else:
        parts = [(e, raw.subset(e)) for e in raw.entities] if per_entity else [(None, raw)]
        if per_entity:
            say(f"[{name}] per-entity mode: {len(parts)} models, one per entity")
        units = [
            _fit_and_score(
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

    # ---- metrics (each unit's were computed after its scoring; pooling adds its own) -------
    t_pool = time.perf_counter()
    artifacts_extra: List[Path] = []
    if per_entity:
        ev, table = _pool(cfg, units)
        csv_path = job_dir / "per_entity.csv"
        table.to_csv(csv_path, index=False)
        artifacts_extra.append(csv_path)
    else:
        ev = units[0].evaluation
    metrics = dict(ev.metrics)
    fit_result = units[0].fit
    if not classical:  # a classical detector has no loss and no epochs
        metrics.update(
            {
                "val/best_loss": float(np.mean([u.fit.best_val_loss for u in units])),
                "train/best_epoch": fit_result.best_epoch,
                "train/epochs_run": fit_result.epochs_run,
            }
        )
    if per_entity:  # the pooled scores' spread (each entity's is in per_entity.csv)
        metrics.update(
            score_spread(ev.arrays["test_score" if "test_score" in ev.arrays else "window_score"])
        )
    metrics.update(
        {
            "time/fit_s": sum(u.fit.fit_seconds for u in units),
            "time/score_s": sum(u.score_s for u in units),
            "time/metrics_s": sum(u.metrics_s for u in units) + time.perf_counter() - t_pool,
        }
    )
    metrics["time/total_s"] = time.perf_counter() - t_start
    metrics["time/tracking_s"] = tracker.seconds  # everything logged up to here
    tracker.log_params({"score_rule": ev.score_rule})
    tracker.set_tags(
        {
            "threshold.family": ev.threshold_family,
            "early_stopping": early_stopping_tag(cfg, [u.fit for u in units]),
            "sanity": describe(run_flags(metrics)),
        }
    )
    tracker.log_metrics(metrics)

    # ---- artifacts -------------------------------------------------------------------------
    tests = [u.test for u in units]
    bounds, start = [], 0
    for t in tests:
        for seg in t.segments:
            bounds.append([start + seg.start, start + seg.end])
        start += len(t)
    ev.arrays["entity_names"] = np.array([seg.name for t in tests for seg in t.segments])
    ev.arrays["entity_bounds"] = np.array(bounds, dtype=np.int64)
    labels = np.concatenate([t.labels for t in tests])
    artifacts = _write_artifacts(cfg, job_dir, name, fit_result, ev, labels, metrics)
    if cfg.tracking.log_artifacts:
        for path in artifacts + artifacts_extra:
            tracker.log_artifact(path)
    model_dir = _save_model(cfg, job_dir, units, say)
    if model_dir is not None and cfg.tracking.log_artifacts:
        tracker.log_artifacts(model_dir, "model")
    result = RunResult(name, tracker.run_id, tracker.uri, job_dir, metrics, fit_result)
    say(format_results(result, cfg))
    if model_dir is not None:
        logged = (
            f" (MLflow: runs:/{tracker.run_id}/model)"
            if tracker.run_id and cfg.tracking.log_artifacts
            else ""
        )
        say(
            f"Model in {model_dir}{logged}; score new data with: python -m "
            f"madcluster_exp.predict run={tracker.run_id or job_dir} data=<file.csv>"
        )
    return result


def _fit_and_score(
    cfg: DictConfig,
    tracker: Tracker,
    name: str,
    raw,
    entity: Optional[str],
    window: int,
    device: torch.device,
    say,
    log_params: bool,
    job_dir: Path,
    metric_prefix: Optional[str] = None,
) -> _Unit:
    tag = f"[{name}{'/' + entity if entity else ''}]"
    # ---- data: training part only; the test split stays sealed -------------------------
    data = prepare(raw, window, float(cfg.dataset.val_fraction), cfg.dataset.normalize)
    say(
        f"{tag} data: {raw.name}, {len(data.entities)} entities, {data.n_channels} channels, "
        f"{len(data.train)} train / {len(data.val)} validation rows (test sealed until fit ends)"
    )
    _announce_test_labels(data, tracker, tag, say)

    # ---- fit on train (and validation): the one place where the two kinds part ----------
    classical = is_classical(cfg.backbone)
    if classical:
        fit_result, score, detector = _fit_classical(cfg, tracker, data, tag, say, log_params)
    else:
        # Training curves of one entity in a shared run go under "<entity>/"; a child run of
        # its own (a collection's series) passes metric_prefix="".
        prefix = metric_prefix if metric_prefix is not None else (f"{entity}/" if entity else "")
        fit_result, score, detector = _fit_deep(
            cfg, tracker, data, entity, window, device, say, log_params, job_dir, tag, prefix
        )

    # ---- score: validation first (fits the combiner and threshold), then test ----------
    t_score = time.perf_counter()
    reference = cfg.protocol == "reference"
    val_out = score(data.val)
    injected = _score_injected(cfg, data.val, val_out[0] if reference else val_out, score)
    data.test.unseal()
    test = data.test.get()
    test_out = score(test)
    score_s = time.perf_counter() - t_score
    t_metrics = time.perf_counter()
    if reference:
        ev = evaluate_reference(
            cfg, val_out[1], test_out[1], window_labels(test.labels, test_out[2], window)
        )
    else:
        ev = evaluate_point(cfg, val_out, test_out, test.labels)
    metrics_s = time.perf_counter() - t_metrics
    ev.metrics.update(score_spread(ev.arrays["window_score" if reference else "test_score"]))
    if injected is not None:
        ev.arrays.update(injected)
        ev.metrics.update(
            injected_metrics(
                injected["val_injected_label"],
                injected["val_injected_score"],
                int(cfg.metrics.range_window),
            )
        )
    model = None
    if cfg.tracking.log_model and ev.scorer is not None and not classical:
        from madcluster_exp.model import model_entry

        model = model_entry(entity, data.entities, detector, data.scaler, ev.scorer)
    return _Unit(entity, fit_result, ev, test, score_s, model=model, metrics_s=metrics_s)


def _announce_test_labels(data, tracker: Tracker, tag: str, say) -> None:
    """Say before training when the test split has no labelled anomaly: then precision,
    recall and F1 are missing (NaN) and the false-alarm rate is the figure to read. Only the
    count of labels is read; the test split stays sealed."""
    count = data.test.anomaly_count()
    if count == 0:
        say(
            f"{tag} the test split has no labelled anomaly: precision, recall, F1 and the "
            "threshold-free metrics will be missing (NaN); read test/false_alarm_rate, the "
            "share of normal points the thresholded prediction flags"
        )
        tracker.set_tags({"test.anomalies": "none"})


def _fit_deep(
    cfg: DictConfig,
    tracker: Tracker,
    data,
    entity: Optional[str],
    window: int,
    device: torch.device,
    say,
    log_params: bool,
    job_dir: Path,
    tag: str,
    prefix: str,
):
    """Train backbone (+ plug-in) with the loop; return the fit, a split -> scores function
    and the detector."""
    # The backbone's init depends on the seed alone, on and off alike.
    seed_everything(int(cfg.seed))
    detector = build_detector(cfg, data.n_channels)
    backbone, plugin = detector.backbone, detector.plugin
    if log_params:
        sizes = complexity(detector, data.n_channels)
        tracker.log_params(
            {
                **sizes,
                "data_window": window,
                "torch_threads": torch.get_num_threads(),
                **backbone.extra_log_params(),
            }
        )
        plug = (
            f"MADCluster on: +{sizes['params/madcluster']:,} parameters, "
            f"+{sizes['macs/madcluster']:,} MACs"
            if plugin is not None
            else "MADCluster off"
        )
        say(
            f"{tag} {cfg.backbone.name}: {sizes['params/backbone']:,} parameters, "
            f"{sizes['macs/backbone']:,} MACs per window; {plug}"
        )

    # Fit on train, early-stop on validation.
    checkpointer = (
        Checkpointer(job_dir / "checkpoints", entity or "last") if cfg.train.checkpoint else None
    )
    fit_result = fit(
        detector,
        data,
        cfg,
        device,
        log_metrics=lambda m, step: tracker.log_metrics(
            {prefix + k: v for k, v in m.items()}, step
        ),
        checkpointer=checkpointer,
    )
    sc = cfg.scoring

    def score(split):
        return score_split(
            detector,
            split,
            int(sc.stride),
            int(sc.batch_size),
            sc.aggregate,
            device,
            window_means=cfg.protocol == "reference",
        )

    return fit_result, score, detector


def _fit_classical(cfg: DictConfig, tracker: Tracker, data, tag: str, say, log_params: bool):
    """Fit a classical detector once on the training windows (no epochs, no validation loss);
    return the fit and a split -> scores function."""
    detector = build_classical(cfg.backbone, int(cfg.seed))
    t0 = time.perf_counter()
    detector.fit(data.train, stride=int(cfg.dataset.train_stride))
    fit_s = time.perf_counter() - t0
    if log_params:
        tracker.log_params({"data_window": cfg.backbone.window, **detector.params()})
    say(
        f"{tag} {cfg.backbone.name} ({detector.library}): fitted on "
        f"{detector.n_train_windows:,} training windows in {fit_s:.2f}s"
    )
    sc = cfg.scoring

    def score(split):
        return score_split_classical(
            detector,
            split,
            int(sc.stride),
            int(sc.batch_size),
            cfg.backbone.spread,
            sc.aggregate,
            window_means=cfg.protocol == "reference",
        )

    return (
        FitResult(epochs_run=0, best_epoch=0, best_val_loss=float("nan"), fit_seconds=fit_s),
        score,
        detector,
    )


def _save_model(cfg: DictConfig, job_dir: Path, units: List[_Unit], say) -> Optional[Path]:
    """``<job dir>/model``: the pyfunc model of every unit (madcluster_exp.model), or None when
    there is none to save (tracking.log_model=false, protocol=reference)."""
    entries = [u.model for u in units if u.model is not None]
    if not cfg.tracking.log_model:
        return None
    if not entries:
        say(
            "no model saved: classical detectors are refitted, not saved"
            if is_classical(cfg.backbone)
            else "no model saved: protocol=reference thresholds window scores on test labels, "
            "which does not score new data (predict serves protocol=point runs)"
        )
        return None
    from madcluster_exp.model import save_model

    return save_model(job_dir / "model", cfg, entries)


def _score_injected(cfg: DictConfig, val, val_points: Dict[str, np.ndarray], score):
    """With ``search.objective=val_injected_vus_pr``: score a copy of the validation split with
    injected anomalies (before the test split is unsealed); {array name: array} or None."""
    if cfg.search.objective != "val_injected_vus_pr":
        return None
    inj = cfg.search.inject
    injected = inject(val, float(inj.ratio), list(inj.kinds), int(inj.seed))
    comps = score(injected.split)
    comps = comps[0] if isinstance(comps, tuple) else comps
    return {
        "val_injected_score": injected_score(cfg, val_points, comps),
        "val_injected_label": injected.split.labels,
    }


def _pool(cfg: DictConfig, units: List[_Unit]):
    """Pooled metrics (concatenated scores and predictions of all entities) as the headline
    ``test/<m>`` (``ref/<m>``), the mean over entities as ``<m>_entity_mean``, and the table."""
    import pandas as pd

    from madcluster_exp.protocols import Evaluation, point_metrics, reference_metrics

    evs = [u.evaluation for u in units]
    table = pd.DataFrame([{"entity": u.entity, **u.evaluation.metrics} for u in units])
    reference = cfg.protocol == "reference"
    keys = (
        ("window_score", "window_label", "window_pred")
        if reference
        else ("test_score", "test_label", "test_pred")
    )
    pooled = {k: np.concatenate([e.arrays[k] for e in evs]) for k in keys}
    if reference:
        m, _, _ = reference_metrics(
            pooled["window_label"], pooled["window_score"], int(cfg.metrics.range_window)
        )
        metrics = {f"ref/{k}": v for k, v in m.items()}
    else:
        m = point_metrics(
            pooled["test_label"],
            pooled["test_score"],
            pooled["test_pred"],
            cfg.metrics,
            int(cfg.seed),
        )
        metrics = {f"test/{k}": v for k, v in m.items()}
    if "val_injected_score" in evs[0].arrays:
        for k in ("val_injected_score", "val_injected_label"):
            pooled[k] = np.concatenate([e.arrays[k] for e in evs])
        metrics.update(
            injected_metrics(
                pooled["val_injected_label"],
                pooled["val_injected_score"],
                int(cfg.metrics.range_window),
            )
        )
    for key in evs[0].metrics:
        if key.startswith(("test/", "ref/", "val_injected/")):
            metrics[f"{key}_entity_mean"] = float(np.nanmean(table[key].to_numpy(dtype=float)))
    arrays = {
        "protocol": evs[0].arrays["protocol"],
        **pooled,
        "threshold": np.array([float(e.arrays["threshold"]) for e in evs]),
    }
    rules = {e.score_rule for e in evs}
    return Evaluation(
        metrics, arrays, rules.pop() if len(rules) == 1 else "mixed", evs[0].threshold_family
    ), table


def _write_artifacts(
    cfg: DictConfig,
    job_dir: Path,
    name: str,
    fit_result: FitResult,
    ev,
    test_labels: np.ndarray,
    metrics: Dict[str, float],
) -> List[Path]:
    paths = []
    cfg_path = job_dir / "config_resolved.yaml"
    cfg_path.write_text(OmegaConf.to_yaml(cfg, resolve=True))
    paths.append(cfg_path)
    hc = _hydra_runtime()
    overrides = list(hc.overrides.task) if hc is not None else []
    ov_path = job_dir / "overrides.json"
    ov_path.write_text(json.dumps({"overrides": overrides, "argv": sys.argv}, indent=2))
    paths.append(ov_path)
    metrics_path = job_dir / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    paths.append(metrics_path)
    if cfg.metrics.save_scores:
        scores_path = job_dir / "scores.npz"
        np.savez_compressed(
            scores_path,
            range_window=np.int64(cfg.metrics.range_window),
            metrics_definition=np.array(cfg.metrics.definition),
            **ev.arrays,
        )
        paths.append(scores_path)
    if cfg.tracking.plots:
        from madcluster_exp.plots import plot_score_timeline, plot_training_curves

        if "test_score" in ev.arrays:
            paths.append(
                plot_score_timeline(
                    job_dir / "score_timeline.png",
                    ev.arrays["test_score"],
                    test_labels,
                    ev.arrays["threshold"],
                    name,
                    bounds=ev.arrays.get("entity_bounds"),
                )
            )
        if fit_result.history:  # a classical detector has no training curve
            paths.append(
                plot_training_curves(job_dir / "training_curves.png", fit_result.history, name)
            )
    return paths


# ------------------------------------------------------------------------------- reporting
_LABELS = {
    "test/precision": "point-wise, at the fitted threshold",
    "test/recall": "point-wise, at the fitted threshold",
    "test/f1": "point-wise, at the fitted threshold (headline)",
    "test/false_alarm_rate": "share of normal points flagged, at the fitted threshold",
    "test/auc_roc": "threshold-free",
    "test/auc_pr": "threshold-free (average precision)",
    "test/r_auc_roc": "threshold-free, range-based",
    "test/r_auc_pr": "threshold-free, range-based",
    "test/vus_roc": "threshold-free, volume under the surface",
    "test/vus_pr": "threshold-free, volume under the surface",
    "test/affiliation_precision": "at the fitted threshold",
    "test/affiliation_recall": "at the fitted threshold",
    "test/f1_oracle": "ORACLE: best threshold chosen on test labels",
    "test/f1_pa": "POINT-ADJUSTED (inflated)",
    "test/f1_pa_random": "POINT-ADJUSTED random prediction, same #positives",
    "ref/f1_oracle": "REFERENCE PROTOCOL: windows, ORACLE threshold",
    "ref/auc_roc": "reference protocol, window scores",
    "ref/auc_pr": "reference protocol, window scores",
    "ref/r_auc_roc": "reference protocol, on the oracle-binarised prediction",
    "ref/r_auc_pr": "reference protocol, on the oracle-binarised prediction",
    "ref/vus_roc": "reference protocol, on the oracle-binarised prediction",
    "ref/vus_pr": "reference protocol, on the oracle-binarised prediction",
    "ref/affiliation_precision": "reference protocol, on the oracle-binarised prediction",
    "ref/affiliation_recall": "reference protocol, on the oracle-binarised prediction",
}


def format_results(result: RunResult, cfg: DictConfig) -> str:
    lines = [
        f"\nResults: {result.run_name}  (threshold.kind={effective_threshold_kind(cfg)}, "
        f"protocol={cfg.protocol})"
    ]
    width = max(len(k) for k in _LABELS)
    for key, note in _LABELS.items():
        if key in result.metrics:
            lines.append(f"  {key:<{width}}  {result.metrics[key]:>8.4f}   {note}")
    lines.append(f"  {'time/total_s':<{width}}  {result.metrics['time/total_s']:>8.1f}")
    lines.append(f"  {'sanity':<{width}}  {describe(run_flags(result.metrics))}")
    if result.run_id:
        lines.append(f"MLflow run {result.run_id} in {result.tracking_uri}")
    lines.append(f"Artifacts in {result.output_dir}")
    return "\n".join(lines)
