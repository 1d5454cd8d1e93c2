"""Experiment tracking: MLflow (default) or nothing."""

import os
from pathlib import Path

from madcluster_exp.config.schema import TrackingConfig
from madcluster_exp.tracking.mlflow_tracker import (
    MLflowTracker,
    NullTracker,
    Tracker,
    default_tracking_uri,
    resolve_tracking_uri,
)

# Artifact downloads (report, evaluate, predict) print no progress bars between the results;
# set MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=true to get them back.
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")


def build_tracker(cfg: TrackingConfig, output_dir: Path) -> Tracker:
    if cfg.backend == "none":
        return NullTracker()
    output_dir.mkdir(parents=True, exist_ok=True)
    uri = resolve_tracking_uri(cfg.uri, output_dir)
    return MLflowTracker(uri, cfg.experiment, artifact_root=output_dir / "mlartifacts")


__all__ = [
    "MLflowTracker",
    "NullTracker",
    "Tracker",
    "build_tracker",
    "default_tracking_uri",
    "resolve_tracking_uri",
]
