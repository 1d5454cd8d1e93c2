"""One job: seed -> data -> detector -> fit -> score -> threshold -> metrics -> track.

The test split is sealed until ``fit`` has returned; every number that selects a model, a radius,
a score normalisation or a threshold comes from training or validation data only.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from madcluster_exp.backbones import backbone_class
from madcluster_exp.config import validate
from madcluster_exp.data import load_dataset, prepare
from madcluster_exp.data.collection import Collection
from madcluster_exp.complexity import complexity
from madcluster_exp.detector import build_detector
from madcluster_exp.evaluation import evaluate_point, evaluate_reference
from madcluster_exp.scoring import score_split
from madcluster_exp.scoring.score import window_labels
from madcluster_exp.identity import config_id, fingerprint, identifying
from madcluster_exp.tracking import NullTracker, build_tracker, resolve_tracking_uri
from madcluster_exp.tracking.callbacks import read_parent
from madcluster_exp.training import FitResult, fit
from madcluster_exp.training.checkpoint import Checkpointer, check_resume



# The checkout this code runs from: its git commit is the run's source version.
CODE_ROOT = Path(__file__).resolve().parent.parent


@dataclass
class RunResult:
    run_name: str
    run_id: Optional[str]
    tracking_uri: Optional[str]
    output_dir: Path
    metrics: Dict[str, float]
    fit: FitResult


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
        return read_parent(Path(hc.sweep.dir) if Path(hc.sweep.dir).is_absolute()
                           else Path(hc.runtime.cwd) / hc.sweep.dir)
    return None


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
    tags = {"git_commit": commit, "mlflow.source.git.commit": commit,
            "git_dirty": "unknown" if status is None else str(bool(status)).lower()}
    branch = _git(root, "rev-parse", "--abbrev-ref", "HEAD")
    if branch and branch != "HEAD":
        tags["mlflow.source.git.branch"] = branch
    return tags


# ---------------------------------------------------------------------------- identification
def run_name(cfg: DictConfig, flat: Optional[Dict[str, Any]] = None) -> str:
    """``{backbone}-{dataset}-{on|off}-{config id}-s{seed}``: the config id (identity.py) tells
    configurations apart, the same for every seed of one configuration."""
    state = "on" if cfg.madcluster.enabled else "off"
    cid = config_id(flat if flat is not None else flatten(cfg))
    name = f"{cfg.backbone.name}-{cfg.dataset.name}-{state}-{cid}-s{cfg.seed}"
    return f"{name}-{cfg.tracking.run_name_suffix}" if cfg.tracking.run_name_suffix else name


def flatten(cfg: DictConfig) -> Dict[str, Any]:
    """Every leaf of the resolved config as ``group.key`` -> value (MLflow params)."""
    out: Dict[str, Any] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = node

    walk(OmegaConf.to_container(cfg, resolve=True), "")
    return out


def effective_threshold_kind(cfg: DictConfig) -> str:
    """The reference protocol always thresholds at the test-label best F1 (an oracle)."""
    return "oracle" if cfg.protocol == "reference" else cfg.threshold.kind


def identity_tags(cfg: DictConfig, root: Path) -> Dict[str, str]:
    tags = {
        "backbone": cfg.backbone.name,
        "family": cfg.backbone.family,
        "dataset": cfg.dataset.name,
        "madcluster": "on" if cfg.madcluster.enabled else "off",
        "seed": str(cfg.seed),
        "protocol": cfg.protocol,
        "threshold.kind": effective_threshold_kind(cfg),
        "embed_tap": cfg.backbone.embed_tap,
        "config_id": config_id(flatten(cfg)),
        **git_tags(CODE_ROOT),
    }
    if cfg.madcluster.enabled:
        tags.update({"madcluster.k": str(cfg.madcluster.k),
                     "madcluster.variant": cfg.madcluster.variant})
    hc = _hydra_runtime()
    if hc is not None:
        tags["hydra.overrides"] = " ".join(hc.overrides.task)
        if hc.job.get("num") is not None:
            tags["hydra.job.num"] = str(hc.job.num)
    if cfg.notes:
        tags["mlflow.note.content"] = cfg.notes
    return tags


# ---------------------------------------------------------------------------------- the job
def run(cfg: DictConfig, output_dir: Optional[Path] = None, verbose: bool = True) -> RunResult:
    """Run one configured job end to end. A crash marks the tracked run FAILED (KILLED on
    Ctrl-C), keeps everything already written and logs the traceback, then re-raises."""
    validate(cfg)
    root = project_root(cfg)
    out_root = resolve_path(root, cfg.paths.output_dir)
    job_dir = Path(output_dir) if output_dir is not None else job_output_dir(cfg, root)
    job_dir.mkdir(parents=True, exist_ok=True)
    flat = flatten(cfg)
    name = run_name(cfg, flat)
    info_path = job_dir / "run_info.json"
    checkpoints = job_dir / "checkpoints"
    resumable = (cfg.train.checkpoint and cfg.train.resume and info_path.exists()
                 and any(checkpoints.glob("*.pt")))
    uri = (None if cfg.tracking.backend == "none"
           else resolve_tracking_uri(cfg.tracking.uri, out_root))
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
            tracker.set_tags({"resume.changed": "; ".join(grown),
                              "train.epochs": str(cfg.train.epochs)})
    else:
        tracker.start(name, flat, identity_tags(cfg, root), parent_run_id=parent_run_id())
    # Written first, so a killed run can be found, matched to its config and continued.
    info_path.write_text(json.dumps(
        {"run_id": tracker.run_id, "tracking_uri": tracker.uri, "run_name": name,
         "config_fingerprint": fingerprint(flat), "config": identifying(flat)}, indent=2))
    try:
        result = _execute(cfg, tracker, name, root, job_dir, verbose)
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
    return result


@dataclass
class _Unit:
    """One trained model: the whole dataset (concat) or one entity (per_entity)."""
    entity: Optional[str]
    fit: FitResult
    evaluation: object
    test: object  # SeriesSplit
    score_s: float
    metrics_s: float = 0.0  # computing the metrics (evaluate_point / evaluate_reference)


def _execute(cfg: DictConfig, tracker: NullTracker, name: str, root: Path, job_dir: Path,
             verbose: bool) -> RunResult:
    say = print if verbose else (lambda *a, **k: None)
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
    window = backbone_class(cfg.backbone.name).data_window(int(cfg.backbone.window))

    raw = load_dataset(cfg.dataset, resolve_path(root, cfg.paths.data_dir))
    per_entity = cfg.dataset.mode == "per_entity"
    if isinstance(raw, Collection):
        # One child run per series, read one at a time; bad files are skipped (series_runs.py).
        from madcluster_exp.series_runs import run_collection

        say(f"[{name}] collection {raw.root}: {len(raw.entities)} series, one model and one "
            "child run each")
        units, _ = run_collection(cfg, tracker, name, raw, window, device, say, root, job_dir)
    else:
        parts = [(e, raw.subset(e)) for e in raw.entities] if per_entity else [(None, raw)]
        if per_entity:
            say(f"[{name}] per-entity mode: {len(parts)} models, one per entity")
        units = [_fit_and_score(cfg, tracker, name, part, entity, window, device, say,
                                log_params=(i == 0), job_dir=job_dir)
                 for i, (entity, part) in enumerate(parts)]

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
    metrics.update({
        "val/best_loss": float(np.mean([u.fit.best_val_loss for u in units])),
        "train/best_epoch": fit_result.best_epoch + 1,
        "train/epochs_run": fit_result.epochs_run,
        "time/fit_s": sum(u.fit.fit_seconds for u in units),
        "time/score_s": sum(u.score_s for u in units),
        "time/metrics_s": sum(u.metrics_s for u in units) + time.perf_counter() - t_pool,
    })
    metrics["time/total_s"] = time.perf_counter() - t_start
    metrics["time/tracking_s"] = tracker.seconds  # everything logged up to here
    tracker.log_params({"score_rule": ev.score_rule})
    tracker.set_tags({"threshold.family": ev.threshold_family})
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
    result = RunResult(name, tracker.run_id, tracker.uri, job_dir, metrics, fit_result)
    say(format_results(result, cfg))
    return result


def _fit_and_score(cfg: DictConfig, tracker: NullTracker, name: str, raw, entity: Optional[str],
                   window: int, device: torch.device, say, log_params: bool,
                   job_dir: Path, metric_prefix: Optional[str] = None) -> _Unit:
    tag = f"[{name}{'/' + entity if entity else ''}]"
    # ---- data: training part only; the test split stays sealed -------------------------
    data = prepare(raw, window, float(cfg.dataset.val_fraction), cfg.dataset.normalize)
    say(f"{tag} data: {raw.name}, {len(data.entities)} entities, {data.n_channels} channels, "
        f"{len(data.train)} train / {len(data.val)} validation rows (test sealed until fit ends)")

    # ---- model: the backbone's init depends on the seed alone, on and off alike ---------
    seed_everything(int(cfg.seed))
    detector = build_detector(cfg, data.n_channels)
    backbone, plugin = detector.backbone, detector.plugin
    if log_params:
        sizes = complexity(detector, data.n_channels)
        tracker.log_params({**sizes, "data_window": window,
                            "torch_threads": torch.get_num_threads(),
                            **backbone.extra_log_params()})
        plug = (f"MADCluster on: +{sizes['params/madcluster']:,} parameters, "
                f"+{sizes['macs/madcluster']:,} MACs" if plugin is not None else "MADCluster off")
        say(f"{tag} {cfg.backbone.name}: {sizes['params/backbone']:,} parameters, "
            f"{sizes['macs/backbone']:,} MACs per window; {plug}")

    # ---- fit on train, early-stop on validation ----------------------------------------
    # Training curves of one entity in a shared run go under "<entity>/"; a child run of its
    # own (a collection's series) passes metric_prefix="".
    prefix = metric_prefix if metric_prefix is not None else (f"{entity}/" if entity else "")
    checkpointer = (Checkpointer(job_dir / "checkpoints", entity or "last")
                    if cfg.train.checkpoint else None)
    fit_result = fit(detector, data, cfg, device, log_metrics=lambda m, step: tracker.log_metrics(
        {prefix + k: v for k, v in m.items()}, step), checkpointer=checkpointer)

    # ---- score: validation first (fits the combiner and threshold), then test ----------
    t_score = time.perf_counter()
    sc = cfg.scoring
    reference = cfg.protocol == "reference"

    def score(split):
        return score_split(detector, split, int(sc.stride), int(sc.batch_size), sc.aggregate,
                           device, window_means=reference)

    val_out = score(data.val)
    data.test.unseal()
    test = data.test.get()
    test_out = score(test)
    score_s = time.perf_counter() - t_score
    t_metrics = time.perf_counter()
    if reference:
        ev = evaluate_reference(cfg, val_out[1], test_out[1],
                                window_labels(test.labels, test_out[2], window))
    else:
        ev = evaluate_point(cfg, val_out, test_out, test.labels)
    return _Unit(entity, fit_result, ev, test, score_s, time.perf_counter() - t_metrics)


def _pool(cfg: DictConfig, units: List[_Unit]):
    """Pooled metrics (concatenated scores and predictions of all entities) as the headline
    ``test/<m>`` (``ref/<m>``), the mean over entities as ``<m>_entity_mean``, and the table."""
    import pandas as pd

    from madcluster_exp.evaluation import Evaluation, point_metrics, reference_metrics

    evs = [u.evaluation for u in units]
    table = pd.DataFrame([{"entity": u.entity, **u.evaluation.metrics} for u in units])
    reference = cfg.protocol == "reference"
    keys = ("window_score", "window_label", "window_pred") if reference else \
        ("test_score", "test_label", "test_pred")
    pooled = {k: np.concatenate([e.arrays[k] for e in evs]) for k in keys}
    if reference:
        m, _, _ = reference_metrics(pooled["window_label"], pooled["window_score"],
                                    int(cfg.metrics.range_window))
        metrics = {f"ref/{k}": v for k, v in m.items()}
    else:
        m = point_metrics(pooled["test_label"], pooled["test_score"], pooled["test_pred"],
                          cfg.metrics, int(cfg.seed))
        metrics = {f"test/{k}": v for k, v in m.items()}
    for key in evs[0].metrics:
        if key.startswith(("test/", "ref/")):
            metrics[f"{key}_entity_mean"] = float(np.nanmean(table[key].to_numpy(dtype=float)))
    arrays = {"protocol": evs[0].arrays["protocol"], **pooled,
              "threshold": np.array([float(e.arrays["threshold"]) for e in evs])}
    rules = {e.score_rule for e in evs}
    return Evaluation(metrics, arrays, rules.pop() if len(rules) == 1 else "mixed",
                      evs[0].threshold_family), table


def _write_artifacts(cfg: DictConfig, job_dir: Path, name: str, fit_result: FitResult, ev,
                     test_labels: np.ndarray, metrics: Dict[str, float]) -> List[Path]:
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
        np.savez_compressed(scores_path, range_window=np.int64(cfg.metrics.range_window),
                            **ev.arrays)
        paths.append(scores_path)
    if cfg.tracking.plots:
        from madcluster_exp.plots import plot_score_timeline, plot_training_curves

        if "test_score" in ev.arrays:
            paths.append(plot_score_timeline(job_dir / "score_timeline.png",
                                             ev.arrays["test_score"], test_labels,
                                             ev.arrays["threshold"], name,
                                             bounds=ev.arrays.get("entity_bounds")))
        paths.append(plot_training_curves(job_dir / "training_curves.png", fit_result.history,
                                          name))
    return paths


# ------------------------------------------------------------------------------- reporting
_LABELS = {
    "test/precision": "point-wise, at the fitted threshold",
    "test/recall": "point-wise, at the fitted threshold",
    "test/f1": "point-wise, at the fitted threshold (headline)",
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
    lines = [f"\nResults: {result.run_name}  (threshold.kind={effective_threshold_kind(cfg)}, "
             f"protocol={cfg.protocol})"]
    width = max(len(k) for k in _LABELS)
    for key, note in _LABELS.items():
        if key in result.metrics:
            lines.append(f"  {key:<{width}}  {result.metrics[key]:>8.4f}   {note}")
    lines.append(f"  {'time/total_s':<{width}}  {result.metrics['time/total_s']:>8.1f}")
    if result.run_id:
        lines.append(f"MLflow run {result.run_id} in {result.tracking_uri}")
    lines.append(f"Artifacts in {result.output_dir}")
    return "\n".join(lines)
