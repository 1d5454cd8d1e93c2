"""Score new data with a finished run's model: per-point scores and 0/1 predictions.

    python -m madcluster_exp.predict run=<run id | run directory> data=<CSV file | dataset name>
        [out=<file.csv | file.npz>] [entity=<name>] [uri=<tracking uri>] [device=cpu]

The output goes to ``out``; by default ``outputs/predictions.csv``, under ``outputs/`` with the
runs (ignored by git), not loose in the directory the command was started from.

The run's saved model (``model/``: weights, config, scaler, score combiner, threshold) is read
from the run directory, or by run id from the tracking store (``uri=``, else
$MLFLOW_TRACKING_URI, else ``outputs/mlflow.db``). ``data``: a CSV file with a header (an
optional leading ``timestamp`` column, the channels in training order, an optional label column
``is_anomaly``/``label`` carried to the output), or a dataset name, whose test split is scored
(the run's own dataset with the run's settings). A per-entity run needs ``entity=<name>``,
except on a dataset whose entities all have a model. Scores: higher = more anomalous.

Python: ``load_detector(run).score(x)`` / ``.predict(x)``, x [time, channels] in raw units.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional

import numpy as np

from madcluster_exp.errors import cli_errors
from madcluster_exp.serving.bundle import (
    ARTIFACT,
    ModelError,
    TrainedDetector,
    choose_model,
    read_bundle,
)
from madcluster_exp.tracking.lookup import find_run
from madcluster_exp.utils.cli_args import Option, parse

USAGE = __doc__.split("\n\n")[1]

OPTIONS = {
    "run": Option("run id or run directory of a finished run", required=True),
    "data": Option(
        "CSV file (header; optional timestamp and label columns) or dataset name", required=True
    ),
    "out": Option(
        "output file: .csv (entity, row, score, prediction[, label]) or .npz",
        default="outputs/predictions.csv",
    ),
    "entity": Option("which model of a per-entity run scores the data"),
    "uri": Option("tracking uri (default: $MLFLOW_TRACKING_URI, else outputs/mlflow.db)"),
    "device": Option("cpu | cuda", default="cpu"),
}

LABEL_COLUMNS = ("is_anomaly", "label", "Label")


# ------------------------------------------------------------------------------ the model
def _no_model(run_dir: Path) -> ModelError:
    cfg_path = run_dir / "config_resolved.yaml"
    why = "it was made before runs saved models, or with tracking.log_model=false"
    if cfg_path.exists():
        from omegaconf import OmegaConf

        cfg = OmegaConf.load(cfg_path)
        if cfg.get("protocol") == "reference":
            why = (
                "protocol=reference runs save no model: their threshold is chosen on test "
                "labels over window scores"
            )
        elif not cfg.get("tracking", {}).get("log_model", True):
            why = "it ran with tracking.log_model=false"
    return ModelError(f"{run_dir}: no saved model (model/{'artifacts/' + ARTIFACT}); {why}")


def open_run(run: str, uri: Optional[str] = None):
    """(config, model entries, weights, description) of a run directory or run id."""
    ref = find_run(run, uri, ModelError)
    if ref.directory is not None:
        path = ref.directory
        for bundle in (path / "model" / "artifacts" / ARTIFACT, path / "artifacts" / ARTIFACT):
            if bundle.is_dir():
                return (*read_bundle(bundle), f"run directory {path}")
        raise _no_model(path)
    tmp = tempfile.mkdtemp(prefix="madcluster-model-")
    try:
        local = ref.download(f"model/artifacts/{ARTIFACT}", tmp)
        if local is None:
            raise ModelError(
                f"MLflow run {run} in {ref.uri} has no model artifact "
                f"(model/artifacts/{ARTIFACT}); it was made before runs saved "
                "models, with tracking.log_model=false, or under "
                "protocol=reference"
            )
        return (*read_bundle(local), f"MLflow run {run}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # everything is in memory now


def load_detector(
    run: str, entity: Optional[str] = None, uri: Optional[str] = None, device: str = "cpu"
) -> TrainedDetector:
    """The trained detector of a finished run (run directory or MLflow run id):
    ``.score(x)`` (higher = more anomalous) and ``.predict(x)`` (0/1 at the run's threshold)
    for x [time, channels] in raw units. ``entity``: which model of a per-entity run."""
    cfg, models, weights, source = open_run(str(run), uri)
    index = choose_model(models, entity, source)
    return TrainedDetector(cfg, models[index], weights[str(index)], source, device)


# ------------------------------------------------------------------------------- the data
def read_csv(path: Path, cfg) -> "SeriesSplit":  # noqa: F821 - imported lazily
    """A CSV with a header as a one-entity split: a first column named timestamp/time/date is
    dropped, a label column (the run's dataset.label_column, is_anomaly, label) kept apart."""
    import pandas as pd

    from madcluster_exp.data import SeriesSplit
    from madcluster_exp.data.formats import check_labels, read_numeric_table
    from madcluster_exp.data.series import Segment

    try:
        first = str(pd.read_csv(path, nrows=0).columns[0]).strip().lower()
    except (pd.errors.EmptyDataError, IndexError):
        raise ModelError(f"{path}: empty file; expected a header and rows of numbers") from None
    time_column = first.startswith(("timestamp", "time", "date"))
    frame = read_numeric_table(
        path,
        header=True,
        time_column=time_column,
        nan_policy=cfg.dataset.nan_policy,
    )
    names = [getattr(cfg.dataset, "label_column", None)] + list(LABEL_COLUMNS)
    label_col = next((c for c in names if c and c in frame.columns), None)
    labels = None
    if label_col is not None:
        labels = check_labels(
            frame[label_col].to_numpy(), f"{path} column {label_col!r}", len(frame)
        )
        frame = frame.drop(columns=[label_col])
    values = frame.to_numpy(np.float32)
    return SeriesSplit(values, [Segment(path.stem, 0, len(values))], labels, str(path))


def read_dataset(name: str, cfg):
    """The test split of dataset ``name``: the run's dataset with its settings, or another
    dataset option with its defaults."""
    from madcluster_exp.data import load_dataset
    from madcluster_exp.data.collection import Collection

    if name == cfg.dataset.name:
        dcfg = cfg.dataset
    else:
        from hydra.errors import HydraException

        from madcluster_exp.config import CONFIG_DIR, compose

        try:
            dcfg = compose([f"dataset={name}"]).dataset
        except HydraException:
            options = sorted(p.stem for p in (Path(CONFIG_DIR) / "dataset").glob("*.yaml"))
            raise ModelError(
                f"data={name!r}: neither a file nor a dataset; expected a CSV "
                f"file or one of {', '.join(options)}"
            ) from None
    root = Path(cfg.paths.root_dir or Path.cwd())
    data_dir = Path(cfg.paths.data_dir)
    raw = load_dataset(dcfg, data_dir if data_dir.is_absolute() else root / data_dir)
    if isinstance(raw, Collection):
        raise ModelError(
            f"data={name!r} is a collection of series files: score them one at a "
            "time (data=<file> entity=<series>)"
        )
    raw.test.unseal()  # the model is trained: reading test data is what predict is for
    return raw.test.get()


def read_data(data: str, cfg):
    path = Path(data)
    if path.is_file():
        return read_csv(path, cfg)
    if path.suffix or "/" in data:
        raise ModelError(f"data={data!r}: file not found (resolved to {path.resolve()})")
    return read_dataset(data, cfg)


# ---------------------------------------------------------------------------- the command
def score(split, cfg, models, weights, source, entity: Optional[str], device: str):
    """(scores, predictions, thresholds per segment, detectors used) of a split: one model for
    all of it, or, for a per-entity run without ``entity``, each segment by its own model."""
    names = [m["entity"] for m in models]
    segments = [s.name for s in split.segments]
    per_segment = entity is None and len(models) > 1 and set(segments) <= set(names)
    if not per_segment:
        i = choose_model(models, entity, source)
        det = TrainedDetector(cfg, models[i], weights[str(i)], source, device)
        s = det.score_split(split)
        return s, det.threshold_scores(s), [det.threshold] * len(segments), [det]
    scores, preds, thresholds, dets = [], [], [], []
    for name in segments:
        i = names.index(name)
        det = TrainedDetector(cfg, models[i], weights[str(i)], source, device)
        s = det.score_split(split.entity(name))
        scores.append(s)
        preds.append(det.threshold_scores(s))
        thresholds.append(det.threshold)
        dets.append(det)
    return np.concatenate(scores), np.concatenate(preds), thresholds, dets


def write(
    out: Path, split, scores: np.ndarray, preds: np.ndarray, thresholds: List[float], run: str
) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    names = np.array([s.name for s in split.segments])
    bounds = np.array([[s.start, s.end] for s in split.segments], dtype=np.int64)
    if out.suffix == ".npz":
        extra: Dict[str, np.ndarray] = {} if split.labels is None else {"label": split.labels}
        np.savez_compressed(
            out,
            score=scores,
            prediction=preds,
            entity_names=names,
            entity_bounds=bounds,
            threshold=np.asarray(thresholds),
            run=np.array(run),
            **extra,
        )
        return
    import pandas as pd

    columns = {}
    if len(names) > 1:
        columns["entity"] = np.repeat(names, bounds[:, 1] - bounds[:, 0])
    columns["row"] = np.concatenate([np.arange(s.length) for s in split.segments])
    columns.update(score=scores, prediction=preds)
    if split.labels is not None:
        columns["label"] = split.labels
    pd.DataFrame(columns).to_csv(out, index=False)


def summary(split, scores, preds, dets, out: Path) -> str:
    n, k = len(scores), int(preds.sum())
    lines = [
        f"scored {n} rows of {split.source} ({len(split.segments)} "
        f"entit{'y' if len(split.segments) == 1 else 'ies'}) with "
        + (repr(dets[0]) if len(dets) == 1 else f"{len(dets)} per-entity models"),
        f"  predicted anomalous: {k} ({k / n:.2%})",
    ]
    if split.labels is not None:
        from sklearn.metrics import precision_recall_fscore_support

        p, r, f1, _ = precision_recall_fscore_support(
            split.labels, preds, average="binary", zero_division=0
        )
        lines.append(
            f"  against the data's labels: precision {p:.4f}, recall {r:.4f}, "
            f"F1 {f1:.4f} (point-wise, at the run's threshold)"
        )
    lines.append(f"wrote {out}")
    return "\n".join(lines)


def parse_args(argv: List[str]) -> Dict[str, object]:
    args = parse(argv, OPTIONS, USAGE)
    if Path(args["out"]).suffix not in (".csv", ".npz"):
        raise ModelError(f"out={args['out']!r}: expected a file ending in .csv or .npz")
    if args["device"] not in ("cpu", "cuda"):
        raise ModelError(f"device={args['device']!r}: expected cpu or cuda")
    if args["device"] == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ModelError("device=cuda but no CUDA device is available; use device=cpu")
    return args


@cli_errors
def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    cfg, models, weights, source = open_run(args["run"], args.get("uri"))
    split = read_data(args["data"], cfg)
    scores, preds, thresholds, dets = score(
        split, cfg, models, weights, source, args.get("entity"), args["device"]
    )
    out = Path(args["out"])
    write(out, split, scores, preds, thresholds, args["run"])
    print(summary(split, scores, preds, dets, out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
