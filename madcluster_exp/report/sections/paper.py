"""Published MADCluster figures beside the measured ones, for a sweep that measures any of them.

The published figures live in one data file, ``madcluster_exp/data/published.csv`` (table, row,
dataset, backbone, MADCluster arm, k, metric, value). A finished run measures a published figure
when its dataset, backbone, arm and k match it. The arm of a run:

- ``off``: MADCluster off (the backbone alone; Table 3's "DeepSVDD" row, distance mapping only,
  is Deep SVDD alone: see conf/experiment/paper_ablation.yaml);
- ``on``: MADCluster on with both components and a score that uses the plug-in;
- ``on_backbone_only``: on, but scored by the backbone alone (the control arm);
- ``clustering_only``: on with ``madcluster.components=clustering``;
- ``mapping_only``: on with ``madcluster.components=mapping`` (no published counterpart).

Which measured metric stands for a published one: ``F1`` is the paper's best F1 over all test
thresholds (an oracle), so the oracle ``f1_oracle``; ``VUS-ROC``/``VUS-PR`` and ``Aff-P``/
``Aff-R`` the same names. Under ``protocol=reference`` the ``ref/`` keys (the reference's
evaluation: window scores, range metrics on the oracle-binarised prediction), else ``test/``
(point scores; affiliation at the fitted, honest threshold). In per-entity mode the mean over
entities (``*_entity_mean``): the reference trains and evaluates each entity by itself, and the
paper's per-dataset figure is read as their mean (the paper does not say; the pooled value is
logged as well). The report names the key it used.

Per published table: one markdown table per metric with, per (dataset, backbone, k, protocol),
the published value of each arm, the measured mean ± std over seeds of each arm, and, where the
table has both ``off`` and ``on``, both on − off differences and whether their signs agree. The
protocol column names the paper's pipeline a run belongs to (param ``pipeline``: "reference
pipeline, validates on test" for ``setup=paper``, "honest pipeline" for ``setup=paper_honest``),
so the two are never pooled.

:func:`complexity_table` puts Table 2's printed parameter counts and MACs beside the ones the
runs measured (params ``params/*`` and ``macs/*``), per backbone and arm, on the dataset the
paper counted them on (MSL: the counts depend on the channel count).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from madcluster_exp.report.sections import Context, Section, lines
from madcluster_exp.report.sweep import Sweep, run_arm
from madcluster_exp.report.tables import frame_table

PUBLISHED = Path(__file__).resolve().parents[2] / "data" / "published.csv"
COLUMNS = ["table", "row", "dataset", "backbone", "madcluster", "k", "metric", "value"]
#: Published metric name -> the measured metric's name (without the ``test/``/``ref/`` prefix).
MEASURED = {
    "F1": "f1_oracle",
    "VUS-ROC": "vus_roc",
    "VUS-PR": "vus_pr",
    "Aff-P": "affiliation_precision",
    "Aff-R": "affiliation_recall",
}
#: Table 2's model size and compute (counts, not scores): read and checked, not compared here.
COMPLEXITY = ("Params", "MACs")
ARMS = ["off", "clustering_only", "mapping_only", "on", "on_backbone_only"]
ARM_LABELS = {
    "off": "alone",
    "on": "with",
    "on_backbone_only": "with (backbone score)",
    "clustering_only": "clustering only",
    "mapping_only": "mapping only",
}
KEY = ["dataset", "backbone", "k", "protocol"]


class PublishedDataError(ValueError):
    """published.csv does not have the expected shape; the message names the row."""


def load_published(path: Path = PUBLISHED) -> pd.DataFrame:
    """The published figures, checked: known arms and metrics, scores in [0, 1], counts
    (:data:`COMPLEXITY`) positive."""
    table = pd.read_csv(path, comment="#", dtype={"k": int})
    if list(table.columns) != COLUMNS:
        raise PublishedDataError(f"{path}: columns {list(table.columns)}; expected {COLUMNS}")
    for i, r in table.iterrows():
        line = f"{path}: data row {i + 1} ({r['table']}, {r['row']}, {r['metric']})"
        if r["madcluster"] not in ARMS:
            raise PublishedDataError(
                f"{line}: madcluster={r['madcluster']!r}; expected one of {', '.join(ARMS)}"
            )
        if r["metric"] in COMPLEXITY:
            if not float(r["value"]) > 0:
                raise PublishedDataError(f"{line}: value={r['value']}; expected a count > 0")
            continue
        if r["metric"] not in MEASURED:
            raise PublishedDataError(
                f"{line}: metric={r['metric']!r}; expected one of "
                f"{', '.join([*MEASURED, *COMPLEXITY])}"
            )
        if not 0.0 <= float(r["value"]) <= 1.0:
            raise PublishedDataError(f"{line}: value={r['value']}; expected a value in [0, 1]")
    return table


# ----------------------------------------------------------------------------- measured side
def measured_key(metric: str, protocol: str, per_entity: bool) -> str:
    """The metric key standing for a published one; ``protocol`` may be a :func:`protocol_label`."""
    prefix = "ref" if protocol.split(",")[0] == "reference" else "test"
    return f"{prefix}/{MEASURED[metric]}" + ("_entity_mean" if per_entity else "")


def _param(r: pd.Series, key: str) -> Optional[str]:
    value = r.get(f"param:{key}")
    if value is None or (isinstance(value, float) and math.isnan(value)) or value == "None":
        return None
    return str(value)


def protocol_label(r: pd.Series) -> str:
    """A run's protocol, with the paper's pipeline it belongs to (param ``pipeline``) and, when
    it validated on the test split (``dataset.validation=test``), "validates on test"."""
    label = _param(r, "protocol") or "point"
    pipeline = _param(r, "pipeline")
    if pipeline:
        label += f", {pipeline} pipeline"
    if _param(r, "dataset.validation") == "test":
        label += " (validates on test)"
    return label


def _runs_long(runs: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per (run, published metric): key columns, arm, measured key and value."""
    rows = []
    for _, r in runs.iterrows():
        protocol = protocol_label(r)
        per_entity = r.get("param:dataset.mode") == "per_entity"
        for m in metrics:
            key = measured_key(m, protocol, per_entity)
            value = pd.to_numeric(r.get(key, np.nan), errors="coerce")
            rows.append(
                {
                    "dataset": r.get("param:dataset.name"),
                    "backbone": r.get("param:backbone.name"),
                    "k": int(r.get("param:madcluster.k", 1)),
                    "protocol": protocol,
                    "arm": run_arm(r),
                    "seed": r.get("param:seed"),
                    "metric": m,
                    "measured_key": key,
                    "value": float(value),
                }
            )
    return pd.DataFrame(rows)


def _stats(values: pd.Series) -> Tuple[float, float, int]:
    v = values.dropna().to_numpy(dtype=float)
    if not len(v):
        return math.nan, math.nan, 0
    return float(v.mean()), float(v.std(ddof=1)) if len(v) > 1 else math.nan, len(v)


# ------------------------------------------------------------------------------- comparison
def compare(runs: pd.DataFrame, published: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Long table: one row per (published table, dataset, backbone, k, protocol, arm, metric)
    that the runs measure, with the published value (NaN where the paper has none, e.g. Table
    2 outside MSL) and the measured mean, std and n. Empty when nothing matches."""
    published = load_published() if published is None else published
    published = published[published["metric"].isin(MEASURED)]
    measured = _runs_long(runs, sorted(MEASURED))
    out = []
    for name, pub in published.groupby("table", sort=True):
        metrics = list(dict.fromkeys(pub["metric"]))
        backbones, ks = set(pub["backbone"]), set(pub["k"])
        table_arms = [a for a in ARMS if a in set(pub["madcluster"])]
        arms = table_arms + (["on_backbone_only"] if "on" in table_arms else [])
        mine = measured[
            measured["backbone"].isin(backbones)
            & measured["k"].isin(ks)
            & measured["arm"].isin(arms)
            & measured["metric"].isin(metrics)
        ]
        if mine.empty or not (set(mine["arm"]) & set(table_arms)):
            continue
        values = pub.set_index(["dataset", "backbone", "k", "madcluster", "metric"])
        for (dataset, backbone, k, protocol), g in mine.groupby(KEY, sort=True):
            for arm in arms:
                for m in metrics:
                    cell = g[(g["arm"] == arm) & (g["metric"] == m)]
                    if cell.empty and arm not in table_arms:
                        continue
                    idx = (dataset, backbone, k, arm, m)
                    paper = float(values.loc[idx, "value"]) if idx in values.index else math.nan
                    row = values.loc[idx, "row"] if idx in values.index else ""
                    mean, std, n = _stats(cell["value"])
                    out.append(
                        {
                            "table": name,
                            "row": row,
                            "dataset": dataset,
                            "backbone": backbone,
                            "k": k,
                            "protocol": protocol,
                            "arm": arm,
                            "metric": m,
                            "paper": paper,
                            "measured_mean": mean,
                            "measured_std": std,
                            "n": n,
                            "in_table": arm in table_arms,
                            "measured_key": measured_key(m, protocol, False)
                            if cell.empty
                            else cell["measured_key"].iloc[0],
                        }
                    )
    return pd.DataFrame(out)


def _sign(x: float) -> str:
    return "n/a" if math.isnan(x) else ("+" if x > 0 else "−" if x < 0 else "0")


def _agreement(paper: float, measured: float) -> str:
    if math.isnan(paper) or math.isnan(measured):
        return "n/a"
    if round(paper, 2) == 0.0:
        return "paper: no change"
    return "yes" if _sign(paper) == _sign(measured) else "no"


def _cell(mean: float, std: float, n: int) -> str:
    if n == 0 or math.isnan(mean):
        return "n/a"
    return f"{mean:.3f} ± {std:.3f} (n={n})" if not math.isnan(std) else f"{mean:.3f} (n={n})"


def metric_table(long: pd.DataFrame, table: str, metric: str) -> pd.DataFrame:
    """Wide table of one published table and metric: paper and measured value per arm, and the
    on − off differences with their sign agreement where the table has both arms."""
    sub = long[(long["table"] == table) & (long["metric"] == metric)]
    arms = [a for a in ARMS if a in set(sub["arm"])]
    published_arms = [a for a in arms if sub.loc[sub["arm"] == a, "in_table"].any()]
    rows = []
    for key, g in sub.groupby(KEY, sort=True):
        by_arm = g.set_index("arm")
        row = dict(zip(KEY, key))
        for a in published_arms:
            v = by_arm["paper"].get(a, math.nan)
            row[f"paper {ARM_LABELS[a]}"] = "n/a" if math.isnan(v) else f"{v:.2f}"
        for a in arms:
            if a in by_arm.index:
                r = by_arm.loc[a]
                row[f"measured {ARM_LABELS[a]}"] = _cell(
                    r["measured_mean"], r["measured_std"], int(r["n"])
                )
        if {"off", "on"} <= set(by_arm.index):
            d_paper = by_arm.loc["on", "paper"] - by_arm.loc["off", "paper"]
            d_meas = by_arm.loc["on", "measured_mean"] - by_arm.loc["off", "measured_mean"]
            row["paper on − off"] = "n/a" if math.isnan(d_paper) else f"{d_paper:+.2f}"
            row["measured on − off"] = "n/a" if math.isnan(d_meas) else f"{d_meas:+.3f}"
            row["sign agrees"] = _agreement(d_paper, d_meas)
        rows.append(row)
    return pd.DataFrame(rows)


def _count(value) -> float:
    value = pd.to_numeric(value, errors="coerce")
    return float(value) if value is not None else math.nan


def measured_size(r: pd.Series, metric: str) -> float:
    """A run's logged parameter count (``Params``) or MACs per window (``MACs``): the
    backbone's plus the plug-in's (``params/total``; older runs: the sum of the parts)."""
    kind = {"Params": "params", "MACs": "macs"}[metric]
    total = _count(r.get(f"param:{kind}/total", math.nan))
    if not math.isnan(total):
        return total
    backbone = _count(r.get(f"param:{kind}/backbone", math.nan))
    plugin = _count(r.get(f"param:{kind}/madcluster", math.nan))
    return backbone + (0.0 if math.isnan(plugin) else plugin)


def complexity_table(runs: pd.DataFrame, published: Optional[pd.DataFrame] = None) -> pd.DataFrame:
    """Published vs measured size, one row per (table, dataset, backbone, arm, metric) of the
    published Params and MACs that the runs measure (same dataset, backbone and arm ``off`` or
    ``on``): the printed figure, the runs' value (their median; ``n`` runs, ``distinct``
    values: one unless runs of other sizes are mixed) and measured / published − 1. Empty when
    no run matches."""
    published = load_published() if published is None else published
    pub = published[published["metric"].isin(COMPLEXITY)]
    measured = []
    for _, r in runs.iterrows():
        arm = run_arm(r)
        if arm not in ("off", "on"):
            continue
        for metric in COMPLEXITY:
            value = measured_size(r, metric)
            if not math.isnan(value):
                measured.append(
                    {
                        "dataset": _param(r, "dataset.name"),
                        "backbone": _param(r, "backbone.name"),
                        "arm": arm,
                        "metric": metric,
                        "value": value,
                    }
                )
    columns = ["table", "row", "dataset", "backbone", "arm", "metric", "paper"]
    columns += ["measured", "n", "distinct", "relative_diff"]
    if not measured:
        return pd.DataFrame(columns=columns)
    mine = pd.DataFrame(measured)
    out = []
    for _, p in pub.iterrows():
        cell = mine[
            (mine["dataset"] == p["dataset"])
            & (mine["backbone"] == p["backbone"])
            & (mine["arm"] == p["madcluster"])
            & (mine["metric"] == p["metric"])
        ]["value"]
        if cell.empty:
            continue
        value, paper = float(cell.median()), float(p["value"])
        out.append(
            {
                "table": p["table"],
                "row": p["row"],
                "dataset": p["dataset"],
                "backbone": p["backbone"],
                "arm": p["madcluster"],
                "metric": p["metric"],
                "paper": paper,
                "measured": value,
                "n": int(len(cell)),
                "distinct": int(cell.nunique()),
                "relative_diff": value / paper - 1.0,
            }
        )
    return pd.DataFrame(out, columns=columns)


def _size_text(value: float) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {unit}"
    return f"{value:.0f}"


def complexity_section(
    sweep: Sweep, ctx: Context, published: Optional[pd.DataFrame] = None
) -> Section:
    """The published-vs-measured model size section (appendix Table 2's parameters and MACs);
    nothing when no run measures a published count. Writes ``complexity_vs_published.csv``."""
    table = complexity_table(sweep.runs, published)
    if table.empty:
        return Section()
    csv = ctx.out_dir / "complexity_vs_published.csv"
    table.to_csv(csv, index=False)
    rows = pd.DataFrame(
        {
            "dataset": table["dataset"],
            "backbone": table["backbone"],
            "arm": table["arm"].map(ARM_LABELS),
            "metric": table["metric"],
            "paper": table["paper"].map(_size_text),
            "measured": table["measured"].map(_size_text),
            "measured / paper − 1": table["relative_diff"].map(lambda d: f"{d:+.1%}"),
        }
    )
    md = [
        "",
        "## Model size: published vs measured",
        "",
        f"Published: Table 2 of {PUBLISHED.name} (parameters; MACs per window). Measured: the "
        "runs' params/* and macs/* (backbone + MADCluster) on the same dataset.",
        "",
        frame_table(rows),
    ]
    return lines(md, [csv])


def split_unpublished(long: pd.DataFrame) -> Tuple[pd.DataFrame, Dict[str, List[str]]]:
    """(the rows of the (table, dataset) pairs with a published figure; the datasets measured
    without one: dataset -> the tables that have none of it)."""
    if long.empty:
        return long, {}
    has = long.groupby(["table", "dataset"])["paper"].transform(lambda v: v.notna().any())
    missing: Dict[str, List[str]] = {}
    for table, dataset in (
        long.loc[~has, ["table", "dataset"]].drop_duplicates().itertuples(index=False)
    ):
        missing.setdefault(str(dataset), []).append(str(table))
    return long[has].reset_index(drop=True), missing


def section(sweep: Sweep, ctx: Context, published: Optional[pd.DataFrame] = None) -> Section:
    """The published-vs-measured section; nothing when the sweep measures no published figure.
    Writes ``paper_vs_measured.csv`` (the long table)."""
    long, unpublished = split_unpublished(compare(sweep.runs, published))
    if long.empty and not unpublished:
        return Section()
    md = ["", "## Published vs measured", ""]
    if unpublished:
        md.append(
            "No published figure for dataset "
            + "; ".join(f"{d} (in {', '.join(t)})" for d, t in unpublished.items())
            + ": measured, not compared."
        )
    if long.empty:
        return lines(md)
    csv = ctx.out_dir / "paper_vs_measured.csv"
    long.to_csv(csv, index=False)
    md += [
        "",
        f"Published: {PUBLISHED.name} (MADCluster appendix). Measured: mean ± std over seeds "
        "(n = seeds). The paper's F1 is an oracle (best threshold on test labels). The "
        "protocol column names the pipeline: the reference pipeline (setup=paper) is the "
        "official code's and validates on test; the honest pipeline (setup=paper_honest) keeps "
        "test data out of training, validation and thresholds.",
    ]
    for table in sorted(set(long["table"])):
        sub = long[long["table"] == table]
        md += ["", f"### {table}"]
        if table == "Table 3":
            md += ["", "alone = Deep SVDD alone, the paper's distance-mapping-only row."]
        for metric in dict.fromkeys(sub["metric"]):
            keys = sorted(set(sub.loc[(sub["metric"] == metric) & (sub["n"] > 0), "measured_key"]))
            md += [
                "",
                f"**{metric}** (measured: {', '.join(keys)})",
                "",
                frame_table(metric_table(long, table, metric)),
            ]
    return lines(md, [csv])
