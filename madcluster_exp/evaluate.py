"""Recompute every metric of a finished run from its saved scores, without retraining.

    python -m madcluster_exp.evaluate run=<run-id | run directory> [metrics=full|basic]
        [definition=vus006|tsbad] [window=<range window>] [uri=<tracking uri>] [log=true|false]

A run directory is the Hydra output folder of a job (it holds ``scores.npz`` and
``run_info.json``); a run id is looked up in the tracking store (``uri=``, else
$MLFLOW_TRACKING_URI, else ``outputs/mlflow.db``) and its ``scores.npz`` artifact downloaded.
The recomputed metrics are logged to the same MLflow run (``log=false`` only prints them).
``definition=tsbad`` adds TSB-AD 1.5's metric set (``test/tsbad/...``) to the full suite.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from madcluster_exp.errors import ExpectedError, cli_errors
from madcluster_exp.evaluation.protocols import reference_metrics
from madcluster_exp.metrics import basic_suite
from madcluster_exp.metrics.suite import definition_suite
from madcluster_exp.tracking.lookup import find_run
from madcluster_exp.utils.cli_args import Option, parse

USAGE = __doc__.split("\n\n")[1]


class EvaluateError(ExpectedError, ValueError):
    pass


OPTIONS = {
    "run": Option("run id or run directory", required=True),
    "metrics": Option("full | basic", default="full"),
    "definition": Option("vus006 | tsbad: metric set of the full suite (default: the run's)"),
    "window": Option("range window of R_AUC/VUS (default: the run's)", kind=int),
    "uri": Option("tracking uri (default: $MLFLOW_TRACKING_URI, else outputs/mlflow.db)"),
    "log": Option("log the recomputed metrics to the same MLflow run", kind=bool, default=True),
}


def parse_args(argv: List[str]) -> Dict[str, object]:
    args = parse(argv, OPTIONS, USAGE)
    if args["metrics"] not in ("full", "basic"):
        raise EvaluateError(f"metrics={args['metrics']!r}: expected full or basic")
    if args.get("definition") not in (None, "vus006", "tsbad"):
        raise EvaluateError(f"definition={args['definition']!r}: expected vus006 or tsbad")
    return args


def locate(run: str, uri: Optional[str]) -> Tuple[Path, Optional[str], Optional[str]]:
    """(path of scores.npz, run id, tracking uri) for a run directory or a run id."""
    ref = find_run(run, uri, EvaluateError)
    if ref.directory is not None:
        scores = ref.directory / "scores.npz"
        if not scores.exists():
            raise EvaluateError(f"{ref.directory}: no scores.npz (was metrics.save_scores=false?)")
        return scores, ref.run_id, ref.uri
    local = ref.download("scores.npz", tempfile.mkdtemp())
    if local is None:
        raise EvaluateError(
            f"MLflow run {run} in {ref.uri} has no scores.npz artifact "
            "(was metrics.save_scores=false?)"
        )
    return local, ref.run_id, ref.uri


def recompute(
    scores_path: Path, suite: str, window: Optional[int], definition: Optional[str] = None
) -> Dict[str, float]:
    data = dict(np.load(scores_path))
    needed = {"range_window", "protocol"}
    if not needed <= set(data):
        raise EvaluateError(
            f"{scores_path}: lacks {sorted(needed - set(data))}; expected the "
            "scores.npz a run writes (metrics.save_scores=true)"
        )
    w = int(window) if window is not None else int(data["range_window"])
    protocol = str(data["protocol"])
    if protocol == "reference":
        metrics, _, _ = reference_metrics(data["window_label"], data["window_score"], w)
        return {f"ref/{k}": v for k, v in metrics.items()}
    y, s, p = data["test_label"], data["test_score"], data["test_pred"]
    if suite == "basic":
        out = basic_suite(y_true=y, y_score=s, y_pred=p)
    else:
        # runs from before metrics.definition existed used the vus006 set
        chosen = definition or str(data.get("metrics_definition", "vus006"))
        out = definition_suite(definition=chosen, y_true=y, y_score=s, y_pred=p, window=w)
    return {f"test/{k}": v for k, v in out.items()}


@cli_errors
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    scores_path, run_id, uri = locate(args["run"], args.get("uri"))
    t0 = time.perf_counter()
    metrics = recompute(scores_path, args["metrics"], args.get("window"), args.get("definition"))
    metrics["time/metrics_s"] = time.perf_counter() - t0
    width = max(len(k) for k in metrics)
    for key in sorted(metrics):
        print(f"  {key:<{width}}  {metrics[key]:.6g}")
    if args["log"] and run_id and uri:
        from madcluster_exp.tracking import MLflowTracker

        tracker = MLflowTracker.for_run(uri, run_id)
        tracker.log_metrics(metrics)
        tracker.set_tags({"evaluate.recomputed": time.strftime("%Y-%m-%dT%H:%M:%S")})
        print(f"logged {len(metrics)} metrics to MLflow run {run_id} in {uri}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
