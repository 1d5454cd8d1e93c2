"""A sweep as the report sees it: its finished runs (params and final metrics), what else the
sections need from MLflow (read by :mod:`madcluster_exp.report.source`), and the factors, the
config keys that tell its configurations apart.

A configuration is one value of every swept parameter (every key that varies in the children's
overrides, e.g. each of an Optuna search's parameters) and of any other key that tells runs apart.

A *detector* is what the rank tables compare: a backbone, its MADCluster arm (``off``, ``on``,
``on_backbone_only``, ...; :func:`run_arm`) and every other factor but the data's; a *series*
is what they are compared on: the ``dataset.*`` factors, and within a collection or a
per-entity run each of its series (:func:`series_long`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from madcluster_exp.errors import ExpectedError
from madcluster_exp.metrics.catalog import spec

# Parameters that identify a run but never define a configuration to compare.
NOT_A_FACTOR = {
    "seed",
    "search.trial",
    "tracking.run_name_suffix",
    "notes",
    "torch_threads",
    "paths.root_dir",
    "paths.output_dir",
}
ENABLED, COMBINE = "madcluster.enabled", "scoring.combine"
#: Where runs logged before the rule moved to the scoring group recorded it.
LEGACY_COMBINE = "madcluster.combine"
#: The factors that make a series (every other factor makes a detector).
SERIES_PREFIX = "dataset."
#: Keys the arm label (:func:`run_arm`) already says.
ARM_KEYS = (ENABLED, "madcluster.components")
#: A failed series or job run's ``failure.kind`` tag (collapse | data | error), in words; a
#: failed run without the tag is an ``error``, or ``killed`` when it was stopped by hand.
FAILURE_KINDS = {
    "collapse": "MADCluster score constant on validation",
    "data": "data unusable",
    "error": "failed with an error",
    "killed": "killed",
}


class ReportError(ExpectedError, ValueError):
    pass


class SearchReportError(ExpectedError, ValueError):
    pass


@dataclass
class Search:
    """An Optuna search's trials, as stored: the parent run's search tags (``optuna.study``,
    ``search.metric``, ...), the MLflow run of each trial (``trial``, ``run_id``,
    ``run_status``, ``sweep_run``, ``run_objective``, ``param:<key>``, ``metric:<key>``), and,
    for a study in a shared storage, (its trials: number, state, objective, params; the best
    trial's number) read from that storage; None for a one-process study in memory."""

    tags: Dict[str, str]
    runs: pd.DataFrame
    study: Optional[Tuple[pd.DataFrame, Optional[int]]] = None


@dataclass
class Sweep:
    parent_id: str
    uri: str
    runs: pd.DataFrame  # one row per child run: params and final metrics
    failed: pd.DataFrame
    factors: List[str]  # params that vary across children (seed excluded)
    command: str = ""  # the sweep's command line (from the parent's hydra.overrides tag)
    # What the sections read besides the runs' params and final metrics (source.read_details):
    #: per loss, per configuration: its runs' values, epochs (from 1) x runs
    curves: Dict[str, List[Tuple[str, pd.DataFrame]]] = field(default_factory=dict)
    #: run id -> its scores.npz, downloaded (the lowest seed of each configuration)
    scores: Dict[str, Path] = field(default_factory=dict)
    #: run id -> its per_entity.csv (runs in dataset.mode=per_entity that saved one)
    entities: Dict[str, pd.DataFrame] = field(default_factory=dict)
    #: an Optuna search's trials; None for any other sweep
    search: Optional[Search] = None
    #: one row per series run of the sweep's collection jobs, finished and failed
    #: (source.series_results: ``job_run_id``, ``series``, ``series.file``, ``status``,
    #: ``error``, ``failure.kind``, params, metrics); empty without collections
    series: pd.DataFrame = field(default_factory=pd.DataFrame)


@dataclass(frozen=True)
class PublishedTable:
    """A published per-file table (TSB-AD's ``uni_mergedTable_<metric>.csv``): one row per file
    (``values``: index = file name, one column per published detector) of one metric."""

    path: Path
    metric: str  # the catalog label of the metric it holds: VUS-PR
    values: pd.DataFrame


# --------------------------------------------------------------------------------- factors
def is_derived(name: str) -> bool:
    """Values a run computes (parameter counts, MACs, the effective score rule), not choices."""
    return "/" in name or name in {"score_rule", "data_window"}


def swept_keys(df: pd.DataFrame) -> List[str]:
    """Config keys set to more than one value in the children's command-line overrides (each
    parameter of a grid or an Optuna search), seed and group choices excluded."""
    values: dict = {}
    for text in df.get("overrides", pd.Series(dtype=str)).fillna(""):
        for item in str(text).split():
            key, _, value = item.lstrip("+~").partition("=")
            values.setdefault(key, set()).add(value)
    return sorted(
        k
        for k, v in values.items()
        if len(v) > 1 and f"param:{k}" in df and k not in NOT_A_FACTOR and not is_derived(k)
    )


def sweep_factors(df: pd.DataFrame) -> List[str]:
    """The config keys that define the sweep's configurations, seed excluded: every swept
    parameter, then the other keys that vary, keeping only those that refine the grouping
    (choosing ``backbone=usad`` changes twenty ``backbone.*`` keys; ``backbone.name`` alone
    tells the configurations apart)."""
    candidates = [c[len("param:") :] for c in df.columns if c.startswith("param:")]
    candidates = [
        c
        for c in candidates
        if c not in NOT_A_FACTOR
        and not is_derived(c)
        and df[f"param:{c}"].nunique(dropna=False) > 1
    ]
    candidates.sort(key=lambda c: (not c.endswith(".name"), c != "madcluster.enabled", c))
    swept = [c for c in swept_keys(df) if c in candidates]
    candidates = swept + [c for c in candidates if c not in swept]
    chosen: List[str] = []
    n_groups = 1
    for c in candidates:
        n = df.groupby([f"param:{k}" for k in chosen + [c]], dropna=False).ngroups
        if n > n_groups or c in swept:
            chosen.append(c)
            n_groups = n
    return chosen


def detector_keys(factors: Sequence[str]) -> List[str]:
    """The factors that make a detector: the backbone, the MADCluster arm and its options
    (``madcluster.*``, ``scoring.combine``), and any other factor but the data's."""
    return [f for f in factors if not f.startswith(SERIES_PREFIX)]


def series_keys(factors: Sequence[str]) -> List[str]:
    """The factors that make a series detectors are compared on (``dataset.*``)."""
    return [f for f in factors if f.startswith(SERIES_PREFIX)]


# -------------------------------------------------------------------------- configurations
def group_label(factors: Sequence[str], key) -> Optional[str]:
    """``backbone=knn, seed=0`` for a group's key; None for the one group of no factors."""
    key = key if isinstance(key, tuple) else (key,)
    return ", ".join(f"{f}={v}" for f, v in zip(factors, key)) or None


def configurations(sweep: Sweep) -> List[tuple]:
    """(label, runs) per configuration, in summary-table order: runs that share every factor
    (seeds pooled)."""
    keys = [f"param:{f}" for f in sweep.factors]
    if not keys:
        return [("all runs", sweep.runs)]
    out = []
    for key, g in sweep.runs.groupby(keys, dropna=False, sort=True):
        out.append((group_label(sweep.factors, key), g))
    return out


def timeline_runs(sweep: Sweep) -> List[Tuple[str, pd.Series]]:
    """(configuration label, its run of the lowest seed) per configuration: the runs whose
    score timeline the report draws."""
    return [(label, g.sort_values("param:seed").iloc[0]) for label, g in configurations(sweep)]


# ------------------------------------------------------------------------ logged params
def logged_combine(params: Mapping) -> Optional[str]:
    """The score rule a run logged (``param:scoring.combine``), or for a run logged before the
    rule moved to the scoring group, ``param:madcluster.combine``; None if neither."""
    for key in (COMBINE, LEGACY_COMBINE):
        value = params.get(f"param:{key}")
        if isinstance(value, str):
            return value
    return None


def run_arm(params: Mapping) -> str:
    """The MADCluster arm a run measures, from its logged parameters: ``off``, ``on``,
    ``on_backbone_only`` (the control arm: on, scored by the backbone alone),
    ``clustering_only`` or ``mapping_only`` (``madcluster.components``)."""
    if str(params.get(f"param:{ENABLED}")) != "True":
        return "off"
    components = params.get("param:madcluster.components", "both")
    if components == "clustering":
        return "clustering_only"
    if components == "mapping":
        return "mapping_only"
    if logged_combine(params) == "backbone_only":
        return "on_backbone_only"
    return "on"


def failure_kind(row: Mapping) -> str:
    """A failed run's kind (:data:`FAILURE_KINDS`): its ``failure.kind`` tag, else ``killed``
    for a run stopped by hand (status KILLED), else ``error``."""
    kind = row.get("failure.kind")
    if isinstance(kind, str) and kind in FAILURE_KINDS:
        return kind
    return "killed" if row.get("status") == "KILLED" else "error"


# ------------------------------------------------------------------------------ detectors
def _short(key: str) -> str:
    return key.split(".", 1)[-1]


def detector_names(runs: pd.DataFrame, factors: Sequence[str]) -> pd.Series:
    """Each run's detector (aligned with ``runs``): ``knn`` for a classical detector,
    ``usad/off``, ``usad/on``, ``usad/on_backbone_only`` for a deep backbone's arms, then, in
    brackets, the detector factors whose values differ among the runs of that backbone and arm
    (``usad/on (k=3)``, ``usad/off (lr=0.001)``)."""
    if runs.empty:
        return pd.Series([], dtype=object, index=runs.index)
    base = []
    for _, r in runs.iterrows():
        name = str(r.get("param:backbone.name"))
        if r.get("param:backbone.family") != "classical":
            name += f"/{run_arm(r)}"
        base.append(name)
    base = pd.Series(base, index=runs.index)
    keys = [
        k
        for k in detector_keys(factors)
        if k not in ("backbone.name", *ARM_KEYS) and f"param:{k}" in runs
    ]
    out = base.copy()
    for name, idx in base.groupby(base).groups.items():
        group = runs.loc[idx]
        varying = [k for k in keys if group[f"param:{k}"].nunique(dropna=False) > 1]
        for i, r in group.iterrows():
            extra = ", ".join(f"{_short(k)}={r[f'param:{k}']}" for k in varying)
            out[i] = f"{name} ({extra})" if extra else name
    return out


def series_label(row: Mapping, keys: Sequence[str]) -> str:
    """A run's series from its series factors: ``dataset.name=smd``; the dataset's name when
    no data key varies."""
    parts = [f"{k}={row[f'param:{k}']}" for k in keys]
    name = row.get("param:dataset.name")
    return ", ".join(parts) if parts else (str(name) if isinstance(name, str) else "series")


LONG_COLUMNS = [
    "detector",
    "arm",
    "backbone",
    "seed",
    "series",
    "file",
    "protocol",
    "status",
    "failure",
    "run_id",
]


def series_long(sweep: Sweep, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per (job run, series), finished or failed: ``detector``, ``arm``, ``backbone``,
    ``seed``, ``series``, ``file`` (the series' file name, where known), ``protocol``,
    ``status``, ``failure`` (a failed run's kind, else None), ``run_id``, ``job_run_id``, the
    job's ``param:<key>`` columns and ``metrics``.

    A collection job's series are its series runs (``sweep.series``: failed ones included); a
    per-entity run's its ``per_entity.csv`` rows (``sweep.entities``); any other run is one
    series (its ``dataset.*`` factors). A failed job is one failed row, its series unknown
    (None) where it had many (a collection, per-entity mode)."""
    skeys = series_keys(sweep.factors)
    jobs = (
        pd.concat([sweep.runs, sweep.failed], ignore_index=True)
        if len(sweep.failed)
        else sweep.runs.reset_index(drop=True)
    )
    if "param:backbone.name" in jobs:
        jobs = jobs[jobs["param:backbone.name"].notna()].reset_index(drop=True)
    names = detector_names(jobs, sweep.factors)
    by_job = (
        {j: g for j, g in sweep.series.groupby("job_run_id")}
        if len(sweep.series) and "job_run_id" in sweep.series
        else {}
    )
    params = [c for c in jobs.columns if c.startswith("param:")]
    rows = []
    for i, r in jobs.iterrows():
        base = {
            "detector": names[i],
            "arm": run_arm(r) if r.get("param:backbone.family") != "classical" else "",
            "backbone": r.get("param:backbone.name"),
            "seed": r.get("param:seed"),
            "protocol": r.get("param:protocol", "point"),
            "job_run_id": r["run_id"],
            **{c: r[c] for c in params},
        }
        label = series_label(r, skeys)
        finished = r.get("status", "FINISHED") == "FINISHED"
        children = by_job.get(r["run_id"])
        entities = sweep.entities.get(r["run_id"]) if finished else None
        if children is not None and len(children):
            for _, c in children.iterrows():
                ok = c.get("status") == "FINISHED"
                rows.append(
                    {
                        **base,
                        "series": f"{label} / {c['series']}" if skeys else str(c["series"]),
                        "file": c.get("series.file"),
                        "status": c.get("status"),
                        "failure": None if ok else failure_kind(c),
                        "run_id": c["run_id"],
                        **{m: c.get(m, float("nan")) if ok else float("nan") for m in metrics},
                    }
                )
        elif entities is not None and r.get("param:dataset.mode") == "per_entity":
            for _, e in entities.iterrows():
                rows.append(
                    {
                        **base,
                        "series": f"{label} / {e['entity']}" if skeys else str(e["entity"]),
                        "file": None,
                        "status": "FINISHED",
                        "failure": None,
                        "run_id": r["run_id"],
                        **{m: e.get(m, float("nan")) for m in metrics},
                    }
                )
        else:
            # a failed job of many series (a collection, per-entity mode): which ones unknown
            many = r.get("param:dataset.mode") == "per_entity"
            rows.append(
                {
                    **base,
                    "series": None if (many and not finished) else label,
                    "file": None,
                    "status": r.get("status", "FINISHED"),
                    "failure": None if finished else failure_kind(r),
                    "run_id": r["run_id"],
                    **{m: r.get(m, float("nan")) if finished else float("nan") for m in metrics},
                }
            )
    columns = [*LONG_COLUMNS, "job_run_id", *params, *metrics]
    df = pd.DataFrame(rows) if rows else pd.DataFrame(columns=columns)
    for m in metrics:
        df[m] = pd.to_numeric(df[m], errors="coerce")
    return df


def metric_label(key: str) -> str:
    """A logged key's label in the catalog (``VUS-PR``), else the key."""
    try:
        return spec(key).label
    except KeyError:
        return key
