"""Where each detector stands in a sweep: per series and aggregate VUS-PR (the headline, as
TSB-AD), AUC-PR and AUC-ROC, the mean rank per detector, a critical-difference diagram, and a
sanity column that says in words what cannot be trusted.

- A *detector* is a configuration of the method: ``backbone.name``, ``/off`` or ``/on`` for a
  deep backbone (MADCluster), and any other ``backbone.*`` / ``madcluster.*`` key the sweep
  varies.
- A *series* is what the detectors are compared on: the values of the other keys the sweep
  varies (dataset, its seed, ...), and within a run in ``dataset.mode=per_entity`` each entity
  (read from the run's ``per_entity.csv``). Seeds are averaged within a (detector, series).
- Ranks: within each series, 1 = highest VUS-PR (ties share the average rank), over the series
  where every detector has a result. Friedman's test over those series, Nemenyi's post-hoc
  test for the pairs (scikit-posthocs; a Wilcoxon signed-rank test when there are only two
  detectors), drawn as scikit-posthocs' critical-difference diagram (madcluster_exp/plots/
  rank.py): detectors joined by a bar are not told apart at alpha = 0.05.
- Sanity: AUC-ROC below 0.5 and constant scores (madcluster_exp/evaluation/sanity.py), and,
  where the sweep holds them, VUS-PR below the ``random`` detector's or below ``knn``'s on the
  same series.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence, Tuple

import numpy as np
import pandas as pd

from madcluster_exp.evaluation.sanity import (
    BASELINES,
    baseline_flags,
    describe,
    flag_kind,
    run_flags,
)
from madcluster_exp.metrics.catalog import headline, ranked
from madcluster_exp.plots.rank import plot_cd_diagram
from madcluster_exp.report.sections import Context, Section, lines
from madcluster_exp.report.sweep import Sweep, detector_keys, series_keys
from madcluster_exp.report.tables import frame_table

SANITY_METRICS = ["sanity/score_mode_fraction", "sanity/score_relative_range"]
ALPHA = 0.05


def rank_metrics() -> List[str]:
    """The metrics the rank tables show, the headline first (the catalog's ranked metrics)."""
    return [s.key for s in ranked()]


# ------------------------------------------------------------------------------ long table
def detector_label(row: pd.Series, keys: Sequence[str]) -> str:
    name = str(row.get("param:backbone.name"))
    if row.get("param:backbone.family") != "classical":
        name += "/on" if str(row.get("param:madcluster.enabled")) == "True" else "/off"
    extra = [
        f"{k.split('.', 1)[1]}={row[f'param:{k}']}"
        for k in keys
        if k not in ("backbone.name", "madcluster.enabled")
    ]
    return name + (f" ({', '.join(extra)})" if extra else "")


def series_label(row: pd.Series, keys: Sequence[str]) -> str:
    parts = [f"{k}={row[f'param:{k}']}" for k in keys]
    return ", ".join(parts) if parts else str(row.get("param:dataset.name", "series"))


def long_table(sweep: Sweep) -> pd.DataFrame:
    """One row per (run, series): detector, series, seed, baseline name, the rank and sanity
    metrics; a per-entity run gives one row per entity of its table (``sweep.entities``)."""
    dkeys, skeys = detector_keys(sweep.factors), series_keys(sweep.factors)
    wanted = rank_metrics() + SANITY_METRICS
    rows = []
    for _, r in sweep.runs.iterrows():
        base = {
            "detector": detector_label(r, dkeys),
            "seed": r.get("param:seed"),
            "backbone": r.get("param:backbone.name"),
            "run_id": r["run_id"],
        }
        series = series_label(r, skeys)
        table = (
            sweep.entities.get(r["run_id"]) if r.get("param:dataset.mode") == "per_entity" else None
        )
        if table is None:
            rows.append({**base, "series": series, **{m: r.get(m, np.nan) for m in wanted}})
            continue
        for _, e in table.iterrows():
            name = f"{series} / {e['entity']}" if skeys else str(e["entity"])
            rows.append({**base, "series": name, **{m: e.get(m, np.nan) for m in wanted}})
    df = pd.DataFrame(rows)
    for m in wanted:
        df[m] = pd.to_numeric(df[m], errors="coerce")
    return df


# --------------------------------------------------------------------------- per series
def _baselines(per_series: pd.DataFrame) -> Dict[str, pd.Series]:
    """series -> VUS-PR of each baseline detector in the sweep (the best of its variants)."""
    key = headline().key
    out = {}
    for name in BASELINES:
        rows = per_series[per_series["backbone"] == name]
        if len(rows):
            out[name] = rows.groupby("series")[key].max()
    return out


def per_series_table(long: pd.DataFrame) -> pd.DataFrame:
    """Seed means per (detector, series), the rank by VUS-PR within each series, and the
    sanity column."""
    top = headline()
    metrics = rank_metrics() + SANITY_METRICS
    grouped = long.groupby(["detector", "series"], sort=True)
    table = grouped[metrics].mean().reset_index()
    table["backbone"] = grouped["backbone"].first().to_numpy()
    table["seeds"] = grouped.size().to_numpy()
    table["rank"] = table.groupby("series")[top.key].rank(
        ascending=not top.higher_is_better, method="average"
    )
    baselines = _baselines(table)
    sanity = []
    for _, r in table.iterrows():
        flags = run_flags(r.to_dict())
        refs = {
            name: float(b.get(r["series"], np.nan))
            for name, b in baselines.items()
            if name != r["backbone"]
        }
        flags += baseline_flags(float(r[top.key]), refs)
        sanity.append(describe(flags))
    table["sanity"] = sanity
    return table.sort_values(["series", "rank"]).reset_index(drop=True)


# ----------------------------------------------------------------------------- aggregate
def rank_matrix(per_series: pd.DataFrame) -> Tuple[pd.DataFrame, List[str]]:
    """series x detector VUS-PR over the series where every detector has a value, and the
    series left out."""
    pivot = per_series.pivot(index="series", columns="detector", values=headline().key)
    complete = pivot.dropna()
    return complete, sorted(set(pivot.index) - set(complete.index))


def mean_ranks(complete: pd.DataFrame) -> pd.Series:
    """Per detector, its rank within each series (1 = highest VUS-PR, ties share the average
    rank) averaged over the complete series."""
    ascending = not headline().higher_is_better
    return complete.rank(axis=1, ascending=ascending, method="average").mean(axis=0)


def _sanity_summary(rows: pd.DataFrame) -> str:
    """A detector's flags over its series, counted: 'AUC-ROC < 0.5 on 1/4 series; ...'."""
    n = len(rows)
    counts: Dict[str, int] = {}
    for text in rows["sanity"]:
        if text == "ok":
            continue
        for flag in text.split("; "):
            kind = flag_kind(flag)
            counts[kind] = counts.get(kind, 0) + 1
    return "; ".join(f"{k} on {c}/{n} series" for k, c in counts.items()) or "ok"


def aggregate_table(per_series: pd.DataFrame) -> pd.DataFrame:
    """Per detector: mean of each metric over series, mean rank (over complete series), the
    number of series, and the sanity summary; sorted by mean rank."""
    top, metrics = headline(), rank_metrics()
    ranks = mean_ranks(rank_matrix(per_series)[0])
    rows = []
    for det, g in per_series.groupby("detector"):
        row = {"detector": det, "series": len(g)}
        row.update({m: float(g[m].mean()) for m in metrics})
        row["mean rank"] = float(ranks.get(det, np.nan))
        row["sanity"] = _sanity_summary(g)
        rows.append(row)
    return (
        pd.DataFrame(rows)
        .sort_values(["mean rank", top.key], ascending=[True, not top.higher_is_better])
        .reset_index(drop=True)
    )


def significance(complete: pd.DataFrame):
    """(test name, omnibus p-value or None, pairwise p-value matrix) over complete series."""
    import scikit_posthocs as sp
    from scipy.stats import friedmanchisquare, wilcoxon

    detectors = list(complete.columns)
    if len(detectors) == 2:
        a, b = complete[detectors[0]].to_numpy(), complete[detectors[1]].to_numpy()
        p = float(wilcoxon(a, b).pvalue) if np.any(a != b) else 1.0
        matrix = pd.DataFrame([[1.0, p], [p, 1.0]], index=detectors, columns=detectors)
        return "Wilcoxon signed-rank", None, matrix
    omnibus = float(friedmanchisquare(*[complete[d].to_numpy() for d in detectors]).pvalue)
    matrix = sp.posthoc_nemenyi_friedman(complete.to_numpy())
    matrix.index = matrix.columns = detectors
    return "Friedman + Nemenyi", omnibus, matrix


# ------------------------------------------------------------------------------ markdown
def _cell(v) -> str:
    if not isinstance(v, (float, np.floating)):
        return str(v)
    return "n/a" if isinstance(v, float) and math.isnan(v) else f"{v:.4f}"


def section(sweep: Sweep, ctx: Context) -> Section:
    """The report's "where each detector stands" section and its files: rank_per_series.csv,
    rank_table.csv and cd_diagram.png (when there are two detectors or more and at least two
    complete series)."""
    out_dir = ctx.out_dir
    top, metrics = headline(), rank_metrics()
    long = long_table(sweep)
    if top.key not in long or long[top.key].isna().all():
        return lines(["", "## Where each detector stands", "", f"No run logged {top.key}."])
    per_series = per_series_table(long)
    aggregate = aggregate_table(per_series)
    files = [out_dir / "rank_per_series.csv", out_dir / "rank_table.csv"]
    per_series.to_csv(files[0], index=False)
    aggregate.to_csv(files[1], index=False)
    md = [
        "",
        f"## Where each detector stands (headline: {top.label}; rank 1 = best)",
        "",
        frame_table(aggregate, ["detector", "series", *metrics, "mean rank", "sanity"], _cell),
    ]
    complete, dropped = rank_matrix(per_series)
    if dropped:
        md += ["", f"Left out of the ranks (not every detector has a result): {', '.join(dropped)}"]
    if complete.shape[1] >= 2 and len(complete) >= 2:
        test, omnibus, matrix = significance(complete)
        ranks, cd_path = mean_ranks(complete), out_dir / "cd_diagram.png"
        files.append(plot_cd_diagram(ranks, len(complete), matrix, test, omnibus, ALPHA, cd_path))
        matrix.to_csv(out_dir / "rank_pvalues.csv")
        files.append(out_dir / "rank_pvalues.csv")
        md += [
            "",
            f"{test} over {len(complete)} series"
            + (f": Friedman p = {omnibus:.3g}" if omnibus is not None else "")
            + "; critical-difference diagram: cd_diagram.png, pairwise p-values: "
            "rank_pvalues.csv",
        ]
    else:
        md += [
            "",
            f"No critical-difference diagram: it needs 2 detectors or more on 2 complete "
            f"series or more (have {complete.shape[1]} on {len(complete)})",
        ]
    md += [
        "",
        "### Per series (mean over seeds)",
        "",
        frame_table(per_series, ["series", "detector", "seeds", *metrics, "rank", "sanity"], _cell),
    ]
    return lines(md, files)
