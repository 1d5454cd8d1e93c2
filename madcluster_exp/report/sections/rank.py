"""Where each detector stands in a sweep: per series and aggregate VUS-PR (the headline, as
TSB-AD), AUC-PR and AUC-ROC, the mean rank per detector, a critical-difference diagram, and a
sanity column that says in words what cannot be trusted.

- A *detector* is a configuration of the method (:func:`madcluster_exp.report.sweep.
  detector_names`): ``backbone.name``, for a deep backbone its MADCluster arm (``/off``,
  ``/on``, ``/on_backbone_only``, ...), and any other factor but the data's that tells its runs
  apart (``madcluster.k``, ``scoring.combine``, ``train.lr``, ...).
- A *series* is what the detectors are compared on: the ``dataset.*`` keys the sweep varies,
  and within a collection or a run in ``dataset.mode=per_entity`` each of its series (series
  runs, else the run's ``per_entity.csv``). Seeds are averaged within a (detector, series).
- Failed runs are counted, never dropped silently: a (detector, series) whose seeds failed
  says so in its sanity column (``MADCluster score constant on validation: 2 of 3 seeds``, the
  series run's ``failure.kind`` tag: collapse, data, error), keeps the mean of the seeds that
  finished, and the aggregate table counts the failures per detector.
- Means over series are over the series where the metric is defined (a series without an
  anomaly has no VUS-PR): the count is given where it is smaller; such series are named once.
- Ranks: within each series, 1 = highest VUS-PR (ties share the average rank), over the series
  where every detector has a result (the others are listed, with what each detector lacks).
  Friedman's test over those series, Nemenyi's post-hoc test for the pairs (scikit-posthocs; a
  Wilcoxon signed-rank test when there are only two detectors), drawn as scikit-posthocs'
  critical-difference diagram (madcluster_exp/plots/rank.py): detectors joined by a bar are not
  told apart at alpha = 0.05.
- Sanity: AUC-ROC below 0.5 and constant scores (madcluster_exp/evaluation/sanity.py), and,
  where the sweep holds them, VUS-PR below the ``random`` detector's or below ``knn``'s on the
  same series.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Tuple

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
from madcluster_exp.report.sweep import FAILURE_KINDS, Sweep, series_long
from madcluster_exp.report.tables import frame_table

SANITY_METRICS = ["sanity/score_mode_fraction", "sanity/score_relative_range"]
ALPHA = 0.05
FINISHED = "FINISHED"


def rank_metrics() -> List[str]:
    """The metrics the rank tables show, the headline first (the catalog's ranked metrics)."""
    return [s.key for s in ranked()]


# ------------------------------------------------------------------------------ long table
def long_table(sweep: Sweep) -> pd.DataFrame:
    """One row per (job run, series), finished or failed
    (:func:`madcluster_exp.report.sweep.series_long`), with the rank and sanity metrics."""
    return series_long(sweep, rank_metrics() + SANITY_METRICS)


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


def failure_flags(failed: Dict[str, int], runs: int) -> List[str]:
    """``MADCluster score constant on validation: 2 of 3 seeds`` per failure kind."""
    return [f"{FAILURE_KINDS[k]}: {n} of {runs} seeds" for k, n in failed.items() if n]


def per_series_table(long: pd.DataFrame) -> pd.DataFrame:
    """Per (detector, series): the mean over the seeds that finished, ``seeds`` (finished),
    ``failed`` ({kind: seeds}), the rank by VUS-PR within the series, and the sanity column."""
    top = headline()
    metrics = rank_metrics() + SANITY_METRICS
    rows = []
    for (det, series), g in long[long["series"].notna()].groupby(["detector", "series"]):
        done = g[g["status"] == FINISHED]
        failed = g[g["status"] != FINISHED]
        row = {"detector": det, "series": series, "backbone": g["backbone"].iloc[0]}
        row.update({m: float(done[m].mean()) if done[m].notna().any() else np.nan for m in metrics})
        row["seeds"] = len(done)
        row["failed"] = {k: int((failed["failure"] == k).sum()) for k in FAILURE_KINDS}
        row["runs"] = len(g)
        rows.append(row)
    table = pd.DataFrame(rows)
    table["rank"] = table.groupby("series")[top.key].rank(
        ascending=not top.higher_is_better, method="average"
    )
    baselines = _baselines(table)
    sanity = []
    for _, r in table.iterrows():
        flags = failure_flags(r["failed"], r["runs"])
        flags += run_flags(r.to_dict())
        refs = {
            name: float(b.get(r["series"], np.nan))
            for name, b in baselines.items()
            if name != r["backbone"]
        }
        flags += baseline_flags(float(r[top.key]), refs)
        sanity.append(describe(flags))
    table["sanity"] = sanity
    table["failed"] = [_failed_text(f) for f in table["failed"]]
    return table.sort_values(["series", "rank"]).reset_index(drop=True)


def _failed_text(failed: Dict[str, int]) -> str:
    """``collapse 2, data 1``; empty without a failure."""
    return ", ".join(f"{k} {n}" for k, n in failed.items() if n)


def anomaly_free(per_series: pd.DataFrame) -> List[str]:
    """The series where no detector that finished has the headline metric (no anomaly in the
    test part: VUS-PR, AUC-ROC and AUC-PR are undefined there)."""
    done = per_series[per_series["seeds"] > 0]
    has = done.groupby("series")[headline().key].apply(lambda v: v.notna().any())
    return sorted(has.index[~has])


# ----------------------------------------------------------------------------- aggregate
def rank_matrix(per_series: pd.DataFrame) -> Tuple[pd.DataFrame, Dict[str, str]]:
    """series x detector VUS-PR over the series where every detector has a value, and the
    series left out: {series: what each detector lacks there}; series without an anomaly
    (:func:`anomaly_free`) are neither."""
    skip = set(anomaly_free(per_series))
    rows = per_series[~per_series["series"].isin(skip)]
    pivot = rows.pivot(index="series", columns="detector", values=headline().key)
    complete = pivot.dropna()
    left_out = {}
    for series in sorted(set(pivot.index) - set(complete.index)):
        lacking = []
        for det in pivot.columns[pivot.loc[series].isna()]:
            cell = rows[(rows["series"] == series) & (rows["detector"] == det)]
            why = "not run" if cell.empty else cell["failed"].iloc[0] or "undefined"
            if not cell.empty and cell["seeds"].iloc[0] == 0 and cell["failed"].iloc[0]:
                why = "failed: " + why
            lacking.append(f"{det} ({why})")
        left_out[series] = ", ".join(lacking)
    return complete, left_out


def mean_ranks(complete: pd.DataFrame) -> pd.Series:
    """Per detector, its rank within each series (1 = highest VUS-PR, ties share the average
    rank) averaged over the complete series."""
    ascending = not headline().higher_is_better
    return complete.rank(axis=1, ascending=ascending, method="average").mean(axis=0)


def _kind(flag: str) -> str:
    for words in FAILURE_KINDS.values():
        if flag.startswith(words):
            return words
    return flag_kind(flag)


def _sanity_summary(rows: pd.DataFrame) -> str:
    """A detector's flags over its series, counted: 'AUC-ROC < 0.5 on 1/4 series; ...'."""
    n = len(rows)
    counts: Dict[str, int] = {}
    for text in rows["sanity"]:
        if text == "ok":
            continue
        for flag in text.split("; "):
            kind = _kind(flag)
            counts[kind] = counts.get(kind, 0) + 1
    return "; ".join(f"{k} on {c}/{n} series" for k, c in counts.items()) or "ok"


def aggregate_table(per_series: pd.DataFrame, long: pd.DataFrame) -> pd.DataFrame:
    """Per detector: ``series`` (those it has a finished run on), the mean of each metric over
    the series where it is defined and their count (``<m> n``), ``failed`` (failed runs by
    kind: series runs and whole jobs), the mean rank (over complete series) and the sanity
    summary; sorted by mean rank."""
    top, metrics = headline(), rank_metrics()
    ranks = mean_ranks(rank_matrix(per_series)[0])
    rows = []
    for det, g in per_series.groupby("detector"):
        done = g[g["seeds"] > 0]
        row = {"detector": det, "series": len(done)}
        for m in metrics:
            row[m] = float(done[m].mean()) if done[m].notna().any() else np.nan
            row[f"{m} n"] = int(done[m].notna().sum())
        failed = long[(long["detector"] == det) & (long["status"] != FINISHED)]
        counts = {k: int((failed["failure"] == k).sum()) for k in FAILURE_KINDS}
        row["failed"] = _failed_text(counts) or "0"
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


def _aggregate_cells(aggregate: pd.DataFrame, metrics: List[str]) -> pd.DataFrame:
    """The aggregate table as text: a metric's mean carries its count where it is over fewer
    series than the detector has."""
    out = aggregate.copy()
    for m in metrics:
        out[m] = [
            _cell(r[m]) + (f" (on {int(r[f'{m} n'])})" if r[f"{m} n"] < r["series"] else "")
            for _, r in aggregate.iterrows()
        ]
    return out


def ranking(
    complete: pd.DataFrame, png: Path, csv: Path, labels: Optional[Dict[str, str]] = None
) -> Tuple[List[str], List[Path]]:
    """(markdown lines, files): the significance test over the complete series, the
    critical-difference diagram ``png`` (detectors named by ``labels`` where given) and the
    pairwise p-values ``csv``; a line saying why not below 2 detectors on 2 series."""
    if complete.shape[1] < 2 or len(complete) < 2:
        return [
            "",
            f"No critical-difference diagram: it needs 2 detectors or more on 2 complete "
            f"series or more (have {complete.shape[1]} on {len(complete)})",
        ], []
    test, omnibus, matrix = significance(complete)
    ranks = mean_ranks(complete)
    if labels:
        ranks = ranks.rename(index=labels)
        named = matrix.rename(index=labels, columns=labels)
    else:
        named = matrix
    files = [plot_cd_diagram(ranks, len(complete), named, test, omnibus, ALPHA, png)]
    matrix.to_csv(csv)
    files.append(csv)
    md = [
        "",
        f"{test} over {len(complete)} series"
        + (f": Friedman p = {omnibus:.3g}" if omnibus is not None else "")
        + f"; critical-difference diagram: {png.name}, pairwise p-values: {csv.name}",
    ]
    return md, files


def section(sweep: Sweep, ctx: Context) -> Section:
    """The report's "where each detector stands" section and its files: rank_per_series.csv,
    rank_table.csv, and cd_diagram.png with rank_pvalues.csv (when there are two detectors or
    more and at least two complete series)."""
    out_dir = ctx.out_dir
    top, metrics = headline(), rank_metrics()
    long = long_table(sweep)
    if long.empty or long[top.key].isna().all():
        return lines(["", "## Where each detector stands", "", f"No run logged {top.key}."])
    per_series = per_series_table(long)
    aggregate = aggregate_table(per_series, long)
    files = [out_dir / "rank_per_series.csv", out_dir / "rank_table.csv"]
    per_series.to_csv(files[0], index=False)
    aggregate.to_csv(files[1], index=False)
    md = [
        "",
        f"## Where each detector stands (headline: {top.label}; rank 1 = best)",
        "",
        frame_table(
            _aggregate_cells(aggregate, metrics),
            ["detector", "series", *metrics, "mean rank", "failed", "sanity"],
            _cell,
        ),
    ]
    free = anomaly_free(per_series)
    if free:
        md += [
            "",
            f"No anomaly in the test part of {len(free)} series ({top.label}, AUC-PR and "
            f"AUC-ROC undefined there; left out of means and ranks): {', '.join(free)}",
        ]
    failed_jobs = long[long["series"].isna()]
    if len(failed_jobs):
        md += [
            "",
            f"{len(failed_jobs)} job(s) failed as a whole (counted under failed): "
            + ", ".join(f"{r['detector']} seed {r['seed']}" for _, r in failed_jobs.iterrows()),
        ]
    complete, left_out = rank_matrix(per_series)
    if left_out:
        md += [
            "",
            "Left out of the ranks (not every detector has a result): "
            + "; ".join(f"{s}: {why}" for s, why in left_out.items()),
        ]
    test_md, test_files = ranking(
        complete, out_dir / "cd_diagram.png", out_dir / "rank_pvalues.csv"
    )
    md += test_md
    files += test_files
    md += [
        "",
        "### Per series (mean over the seeds that finished)"
        + (" (series without an anomaly: in rank_per_series.csv)" if free else ""),
        "",
        frame_table(
            per_series[~per_series["series"].isin(free)],
            ["series", "detector", "seeds", *metrics, "rank", "failed", "sanity"],
            _cell,
        ),
    ]
    return lines(md, files)
