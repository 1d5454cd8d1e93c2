"""A sweep as the report sees it: its finished runs (params and final metrics), what else the
sections need from MLflow (read by :mod:`madcluster_exp.report.source`), and the factors, the
config keys that tell its configurations apart.

A configuration is one value of every swept parameter (every key that varies in the children's
overrides, e.g. each of an Optuna search's parameters) and of any other key that tells runs apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import pandas as pd

from madcluster_exp.errors import ExpectedError

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
    """The factors that make a detector (``backbone.*``, ``madcluster.*``)."""
    return [f for f in factors if f.startswith(("backbone.", "madcluster."))]


def series_keys(factors: Sequence[str]) -> List[str]:
    """The factors that make a series detectors are compared on (every other one)."""
    return [f for f in factors if not f.startswith(("backbone.", "madcluster."))]


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
