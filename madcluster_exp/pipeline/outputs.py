"""What a job leaves in its directory, and the results table it prints.

``config_resolved.yaml``, ``overrides.json``, ``metrics.json``, ``scores.npz``, the plots,
``per_entity.csv`` and the saved model (``model/``); the job (job.py) decides which are logged
to MLflow. ``format_results`` is the console's results table.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from madcluster_exp.evaluation.sanity import describe, run_flags
from madcluster_exp.metrics.catalog import results_specs

PER_ENTITY_FILE = "per_entity.csv"


def write_artifacts(
    plan,
    job_dir: Path,
    name: str,
    fit_result,
    ev,
    test_labels: np.ndarray,
    metrics: Dict[str, float],
    overrides: Sequence[str],
) -> List[Path]:
    """Write the config, the command line (``overrides``), the metrics, the scores and the
    plots of one run (of a :class:`~madcluster_exp.pipeline.plan.JobPlan`) into ``job_dir``;
    return their paths."""
    cfg = plan.cfg
    paths = []
    cfg_path = job_dir / "config_resolved.yaml"
    cfg_path.write_text(plan.settings.yaml)
    paths.append(cfg_path)
    ov_path = job_dir / "overrides.json"
    ov_path.write_text(json.dumps({"overrides": list(overrides), "argv": sys.argv}, indent=2))
    paths.append(ov_path)
    metrics_path = job_dir / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2, sort_keys=True))
    paths.append(metrics_path)
    if cfg.metrics.save_scores:
        scores_path = job_dir / "scores.npz"
        # ev.arrays holds the range window the evaluation used (per series with auto).
        np.savez_compressed(
            scores_path, metrics_definition=np.array(str(cfg.metrics.definition)), **ev.arrays
        )
        paths.append(scores_path)
    if cfg.tracking.plots:
        paths += _plots(job_dir, name, fit_result, ev, test_labels)
    return paths


def _plots(job_dir: Path, name: str, fit_result, ev, test_labels: np.ndarray) -> List[Path]:
    """The score timeline (point scores only) and the training curves (deep detectors only)."""
    from madcluster_exp.plots import plot_score_timeline, plot_training_curves

    paths = []
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


def write_per_entity(table, job_dir: Path) -> Path:
    """``per_entity.csv``: each entity's metrics (a pooled per-entity run)."""
    path = job_dir / PER_ENTITY_FILE
    table.to_csv(path, index=False)
    return path


def entity_layout(tests: Sequence) -> Tuple[Dict[str, np.ndarray], np.ndarray]:
    """The test splits of a job's units laid end to end: ({``entity_names``, ``entity_bounds``
    (start, end) of every entity}, the concatenated test labels)."""
    bounds, start = [], 0
    for t in tests:
        for seg in t.segments:
            bounds.append([start + seg.start, start + seg.end])
        start += len(t)
    arrays = {
        "entity_names": np.array([seg.name for t in tests for seg in t.segments]),
        "entity_bounds": np.array(bounds, dtype=np.int64),
    }
    return arrays, np.concatenate([t.labels for t in tests])


def save_model(
    plan, job_dir: Path, entries: List[dict], say, tracker
) -> Tuple[Optional[Path], Optional[str]]:
    """``<job dir>/model``: the pyfunc model of every unit's entry
    (madcluster_exp.serving.bundle), logged as the run's MLflow logged model ``model`` when
    artifacts are logged. Returns (the directory, the logged model's id); (None, None) when
    there is none to save (tracking.log_model=false, a classical detector,
    protocol=reference)."""
    if not plan.cfg.tracking.log_model:
        return None, None
    if not entries:
        say(plan.kind.no_model_reason)
        return None, None
    from madcluster_exp.serving.bundle import save_model as save_pyfunc

    model_id = tracker.model_id(MODEL_NAME) if plan.cfg.tracking.log_artifacts else None
    model_dir = save_pyfunc(
        job_dir / MODEL_NAME, plan.settings.container, entries, model_id, tracker.run_id
    )
    if model_id is not None:
        tracker.log_model(model_id, model_dir)
    return model_dir, model_id


#: The saved model's directory in the job's, and its name as the run's logged model.
MODEL_NAME = "model"


def model_note(
    model_dir: Path, run_id: Optional[str], model_id: Optional[str], job_dir: Path
) -> str:
    """Where the saved model is and the command that scores new data with it."""
    where = f" (MLflow: runs:/{run_id}/model, models:/{model_id})" if run_id and model_id else ""
    return (
        f"Model in {model_dir}{where}; score new data with: python -m "
        f"madcluster_exp.predict run={run_id or job_dir} data=<file.csv>"
    )


# ------------------------------------------------------------------------------- reporting
def format_results(result, plan) -> str:
    """The console's results table of a finished run (a
    :class:`madcluster_exp.pipeline.job.RunResult` of a plan)."""
    protocol = plan.protocol
    lines = [
        f"\nResults: {result.run_name}  (threshold.kind={protocol.threshold_kind}, "
        f"protocol={protocol.name})"
    ]
    note = plan.pipeline_note()
    if note:
        lines.append(f"  {note}")
    shown = results_specs()  # the catalog's (madcluster_exp/metrics/catalog.py)
    width = max(len(s.key) for s in shown)
    for s in shown:
        if s.key in result.metrics:
            lines.append(f"  {s.key:<{width}}  {result.metrics[s.key]:>8.4f}   {s.note}")
    lines.append(f"  {'time/total_s':<{width}}  {result.metrics['time/total_s']:>8.1f}")
    lines.append(f"  {'sanity':<{width}}  {describe(run_flags(result.metrics))}")
    if result.run_id:
        lines.append(f"MLflow run {result.run_id} in {result.tracking_uri}")
    lines.append(f"Artifacts in {result.output_dir}")
    return "\n".join(lines)
