"""Every read of the report from MLflow (and from an Optuna search's storage), and its one
write: the report's files logged to the sweep's parent run. The sections read none; they get
what they need in the :class:`~madcluster_exp.report.sweep.Sweep` this module fills.

- :func:`locate_parent`: the parent run and tracking URI of a sweep directory or run id;
- :func:`load_sweep`: the finished and failed child runs, their params and final metrics;
- :func:`read_details`: per-epoch losses (training curves), the saved scores of each
  configuration's lowest seed (timelines), per-entity tables (ranks), an Optuna search's trials;
- :func:`series_results`: the series runs of a collection run or of a sweep of them;
- :func:`read_published`: a published per-file table (TSB-AD's), the report's one read that is
  not MLflow's.
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple
from urllib.parse import quote

import pandas as pd

from madcluster_exp.report.sweep import (
    PublishedTable,
    ReportError,
    Search,
    SearchReportError,
    Sweep,
    configurations,
    sweep_factors,
    timeline_runs,
)
from madcluster_exp.tracking import resolve_tracking_uri
from madcluster_exp.tracking.sweep import PARENT_FILE, refuse_mlflow_store, sqlalchemy_url

# The losses whose per-epoch history the training curves show.
CURVE_KEYS = ("train/loss", "val/loss")
#: Tags a job or series run carries that the report reads: why it failed (``error``; its kind,
#: ``failure.kind``: collapse | data | error) and a collection job's failed series count.
RUN_TAGS = ("error", "failure.kind", "collection.failed")
STORAGE_ENV = "MADCLUSTER_OPTUNA_STORAGE"


def _client(uri: str):
    from mlflow.tracking import MlflowClient

    return MlflowClient(uri)


# --------------------------------------------------------------------------------- the runs
def locate_parent(target: str, uri: Optional[str]) -> Tuple[str, str]:
    """(parent run id, tracking uri) of a sweep directory (its ``mlflow_parent.json``) or of a
    run id (``uri``, else $MLFLOW_TRACKING_URI, else ./outputs)."""
    path = Path(target)
    if path.is_dir():
        info_path = path / PARENT_FILE
        if not info_path.exists():
            raise ReportError(
                f"{path}: no {PARENT_FILE}; is this a multirun sweep directory "
                "run with tracking=mlflow?"
            )
        info = json.loads(info_path.read_text())
        return info["run_id"], uri or info["tracking_uri"]
    return target, resolve_tracking_uri(uri, Path.cwd() / "outputs")


def load_sweep(parent_id: str, uri: str) -> Sweep:
    """The sweep under ``parent_id``: one row per child run (``run_id``, ``run_name``,
    ``status``, ``overrides``, ``param:<key>``, one column per final metric), finished and
    failed apart, and its factors."""
    from mlflow.exceptions import MlflowException

    client = _client(uri)
    try:
        parent = client.get_run(parent_id)
    except MlflowException as exc:
        raise ReportError(f"no parent run {parent_id!r} in {uri}: {exc.message}") from None
    children = client.search_runs(
        [parent.info.experiment_id],
        filter_string=f"tags.mlflow.parentRunId = '{parent_id}'",
        max_results=50_000,
    )
    if not children:
        raise ReportError(f"run {parent_id} has no child runs in {uri}")
    rows = []
    for r in children:
        row = {
            "run_id": r.info.run_id,
            "run_name": r.info.run_name,
            "status": r.info.status,
            "overrides": r.data.tags.get("hydra.overrides", ""),
            **{t: r.data.tags[t] for t in RUN_TAGS if t in r.data.tags},
        }
        row.update({f"param:{k}": v for k, v in r.data.params.items()})
        row.update(r.data.metrics)
        rows.append(row)
    df = pd.DataFrame(rows)
    ok = df["status"] == "FINISHED"
    overrides = parent.data.tags.get("hydra.overrides")
    command = f"python -m madcluster_exp -m {overrides}".strip() if overrides is not None else ""
    return Sweep(
        parent_id,
        uri,
        df[ok].reset_index(drop=True),
        df[~ok].reset_index(drop=True),
        sweep_factors(df[ok]),
        command,
    )


def read_details(sweep: Sweep, storage: Optional[str] = None) -> Sweep:
    """``sweep`` with what its report's sections read besides params and final metrics: for
    an Optuna search its trials (``storage``: the study's, default $MADCLUSTER_OPTUNA_STORAGE,
    else the sweep's ``optuna.storage`` tag) and the training curves; for any other sweep the
    per-entity tables, the training curves and the timelines' scores."""
    client = _client(sweep.uri)
    tags = search_tags(client, sweep.parent_id)
    if tags is not None:
        search = load_search(client, sweep.parent_id, sweep.uri, tags, storage)
        return replace(sweep, search=search, curves=training_curves(sweep))
    series = series_results(sweep.uri, sweep.parent_id)
    return replace(
        sweep,
        series=series,
        entities=entity_tables(client, replace(sweep, series=series)),
        curves=training_curves(sweep),
        scores=score_files(client, sweep),
    )


# ------------------------------------------------------------------------- run histories
def _history(client, run_id: str, key: str) -> pd.Series:
    hist = sorted(client.get_metric_history(run_id, key), key=lambda h: h.step)
    return pd.Series([h.value for h in hist], index=[h.step + 1 for h in hist], dtype=float)


def training_curves(sweep: Sweep) -> Dict[str, List[Tuple[str, pd.DataFrame]]]:
    """Per loss (train, val), per configuration: its runs' values, epochs (from 1) x runs."""
    client = _client(sweep.uri)
    groups = configurations(sweep)
    return {
        key: [
            (label, pd.concat([_history(client, rid, key) for rid in g["run_id"]], axis=1))
            for label, g in groups
        ]
        for key in CURVE_KEYS
    }


# ------------------------------------------------------------------------------ artifacts
def score_files(client, sweep: Sweep) -> Dict[str, Path]:
    """run id -> its ``scores.npz``, downloaded, for the lowest seed of each configuration (a
    run without saved scores has none)."""
    out = {}
    for _, r in timeline_runs(sweep):
        try:
            local = client.download_artifacts(r["run_id"], "scores.npz", tempfile.mkdtemp())
        except Exception:  # noqa: BLE001 - a run without saved scores just gets no timeline
            continue
        out[r["run_id"]] = Path(local)
    return out


def entity_tables(client, sweep: Sweep) -> Dict[str, pd.DataFrame]:
    """run id -> its ``per_entity.csv`` (one row per entity), for each run in
    ``dataset.mode=per_entity`` that has one and no series runs (``sweep.series``: a
    collection's series runs say more, failures included)."""
    out = {}
    with_series = set(sweep.series.get("job_run_id", ()))
    for _, r in sweep.runs.iterrows():
        if r.get("param:dataset.mode") != "per_entity" or r["run_id"] in with_series:
            continue
        try:
            local = client.download_artifacts(r["run_id"], "per_entity.csv", tempfile.mkdtemp())
        except Exception:  # noqa: BLE001 - a run without the table contributes its pooled row
            continue
        out[r["run_id"]] = pd.read_csv(local)
    return out


# ---------------------------------------------------------------------------- a search
def search_tags(client, parent_id: str) -> Optional[Dict[str, str]]:
    """The parent run's search tags (``optuna.study``, ``search.metric``, ...), None when the
    sweep is not an Optuna search."""
    tags = client.get_run(parent_id).data.tags
    return tags if "optuna.study" in tags else None


def trial_runs(client, parent_id: str, tags: Dict[str, str]) -> pd.DataFrame:
    """MLflow runs of the study's trials: every process's (shared storage), else this sweep's."""
    exp = client.get_run(parent_id).info.experiment_id
    query = f"tags.`optuna.study` = '{tags['optuna.study']}'"
    if tags["optuna.storage"] == "in-memory":
        query = f"tags.mlflow.parentRunId = '{parent_id}'"
    rows = []
    for r in client.search_runs([exp], filter_string=query, max_results=50_000):
        t = r.data.tags
        if "optuna.trial" not in t or t.get("optuna.storage") != tags["optuna.storage"]:
            continue
        rows.append(
            {
                "trial": int(t["optuna.trial"]),
                "run_id": r.info.run_id,
                "run_status": r.info.status,
                "sweep_run": t.get("mlflow.parentRunId"),
                "run_objective": r.data.metrics.get(tags["search.metric"], math.nan),
                **{f"param:{k}": v for k, v in r.data.params.items()},
                **{f"metric:{k}": v for k, v in r.data.metrics.items()},
            }
        )
    return pd.DataFrame(rows)


def study_trials(storage: str, study_name: str) -> Tuple[pd.DataFrame, Optional[int]]:
    """(one row per trial of the stored study: number, state, objective, params; the best
    trial's number, None when no trial is complete)."""
    import optuna

    storage = sqlalchemy_url(storage)
    refuse_mlflow_store(storage, key="storage")  # before Optuna would add its tables to it
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except Exception as exc:  # noqa: BLE001 - any failure: say which storage and why
        raise SearchReportError(
            f"cannot load Optuna study {study_name!r} from {storage}: "
            f"{exc}; pass storage=<url> (or set {STORAGE_ENV})"
        ) from None
    rows = [
        {
            "trial": t.number,
            "state": t.state.name,
            "objective": t.value,
            **{f"param:{k}": v for k, v in t.params.items()},
        }
        for t in study.trials
    ]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    return pd.DataFrame(rows), (study.best_trial.number if complete else None)


def load_search(
    client, parent_id: str, uri: str, tags: Dict[str, str], storage: Optional[str] = None
) -> Search:
    """The search's trial runs and, for a study in a shared storage, its stored trials."""
    runs = trial_runs(client, parent_id, tags)
    if runs.empty:
        raise SearchReportError(
            f"no MLflow run of a trial of study {tags['optuna.study']!r} in {uri}"
        )
    if tags["optuna.storage"] == "in-memory":
        return Search(tags, runs)
    url = storage or os.environ.get(STORAGE_ENV) or tags["optuna.storage"]
    return Search(tags, runs, study_trials(url, tags["optuna.study"]))


# ---------------------------------------------------------------------------- collections
def series_results(uri: str, parent_id: str) -> pd.DataFrame:
    """One row per series run under ``parent_id`` (a DataFrame): the children of a collection
    run, or, given a sweep's parent, the series children of each of its jobs. Columns:
    ``run_id, run_name, status, job_run_id, series, series.format``, ``param:<key>`` for every
    param and one column per final metric: what a per-series ranking of detectors needs."""
    client = _client(uri)
    experiment = client.get_run(parent_id).info.experiment_id

    def children(run_id: str):
        return client.search_runs(
            [experiment], max_results=50_000, filter_string=f"tags.mlflow.parentRunId = '{run_id}'"
        )

    rows = []
    for job in [parent_id] + [
        r.info.run_id for r in children(parent_id) if "series" not in r.data.tags
    ]:
        for r in children(job):
            if "series" not in r.data.tags:
                continue
            rows.append(
                {
                    "run_id": r.info.run_id,
                    "run_name": r.info.run_name,
                    "status": r.info.status,
                    "job_run_id": job,
                    "series": r.data.tags["series"],
                    "series.format": r.data.tags.get("series.format"),
                    "series.file": r.data.tags.get("series.file"),
                    "error": r.data.tags.get("error"),
                    "failure.kind": r.data.tags.get("failure.kind"),
                    **{f"param:{k}": v for k, v in r.data.params.items()},
                    **r.data.metrics,
                }
            )
    return pd.DataFrame(rows)


# ------------------------------------------------------------------- a published table
#: Columns of TSB-AD's per-file tables that describe the file, not a detector.
FILE_COLUMNS = (
    "ts_len",
    "anomaly_len",
    "num_anomaly",
    "avg_anomaly_len",
    "anomaly_ratio",
    "point_anomaly",
    "seq_anomaly",
)


def read_published(path: Path, metric: Optional[str] = None) -> PublishedTable:
    """A published per-file table: TSB-AD's ``<...>_mergedTable_<metric>.csv`` (header ``file,
    <detector>,...,ts_len,...``; one row per file, one column per detector). ``metric`` is
    the catalog label of the metric it holds (``VUS-PR``), by default read from the file name;
    the file's description columns (:data:`FILE_COLUMNS`) are dropped."""
    from madcluster_exp.metrics.catalog import ranked

    path = Path(path)
    if not path.is_file():
        raise ReportError(f"published={path}: no such file")
    labels = [s.label for s in ranked()]
    if metric is None:
        found = [label for label in labels if f"_{label}." in f"_{path.name}"]
        if len(found) != 1:
            raise ReportError(
                f"published={path}: its name does not say which of {', '.join(labels)} it "
                "holds; name it with published.metric=<label>"
            )
        metric = found[0]
    elif metric not in labels:
        raise ReportError(f"published.metric={metric}: expected one of {', '.join(labels)}")
    table = pd.read_csv(path)
    if "file" not in table.columns:
        raise ReportError(
            f"published={path}: no 'file' column (header: {', '.join(table.columns[:5])}, ...); "
            "expected TSB-AD's per-file table, e.g. uni_mergedTable_VUS-PR.csv"
        )
    if table["file"].duplicated().any():
        dup = table.loc[table["file"].duplicated(), "file"].iloc[0]
        raise ReportError(f"published={path}: file {dup!r} has two rows")
    values = table.set_index("file").drop(columns=[c for c in FILE_COLUMNS if c in table])
    values = values.apply(pd.to_numeric, errors="coerce")
    values = values.loc[:, values.notna().any()]  # a column of text is no detector
    if values.empty:
        raise ReportError(f"published={path}: no column of numbers (no detector)")
    return PublishedTable(path, metric, values)


# ---------------------------------------------------------------------------- the write
def mlflow_image_links(markdown: str, run_id: str, folder: str = "report") -> str:
    """``markdown`` with each image of its own folder (``![alt](file.png)``) linked through
    the MLflow UI's artifact endpoint, which its markdown preview resolves: a relative
    ``file.png`` would be fetched from the UI's root and not found. The link stays relative
    (no leading ``/``), so it works behind ``--static-prefix`` too."""

    def link(m: re.Match) -> str:
        path = quote(f"{folder}/{m.group(2)}", safe="")
        return f"![{m.group(1)}](get-artifact?path={path}&run_uuid={run_id})"

    return re.sub(r"!\[([^\]]*)\]\(([^)/:]+\.(?:png|svg|jpg))\)", link, markdown)


def log_report(uri: str, parent_id: str, files: List[Path]) -> None:
    """Log the report's files to the sweep's parent run, under ``report/``; the logged
    markdown links its images as MLflow's preview finds them (the file on disk keeps plain
    relative links)."""
    client = _client(uri)
    with tempfile.TemporaryDirectory() as tmp:
        for f in files:
            if f.suffix == ".md":
                copy = Path(tmp) / f.name
                copy.write_text(mlflow_image_links(f.read_text(), parent_id))
                f = copy
            client.log_artifact(parent_id, str(f), "report")
