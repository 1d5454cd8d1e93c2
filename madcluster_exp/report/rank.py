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
- Sanity: AUC-ROC below 0.5 and constant scores (madcluster_exp/sanity.py), and, where the
  sweep holds them, VUS-PR below the ``random`` detector's or below ``knn``'s on the same series.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pandas as pd

from madcluster_exp.evaluation.sanity import baseline_flags, describe, run_flags
from madcluster_exp.plots.rank import plot_cd_diagram

HEADLINE = "test/vus_pr"
RANK_METRICS = ["test/vus_pr", "test/auc_pr", "test/auc_roc"]
SANITY_METRICS = ["sanity/score_mode_fraction", "sanity/score_relative_range"]
BASELINES = ("random", "knn")
ALPHA = 0.05


# ------------------------------------------------------------------------------ long table
def _detector_keys(factors: Sequence[str]) -> List[str]:
    return [f for f in factors if f.startswith(("backbone.", "madcluster."))]


def _series_keys(factors: Sequence[str]) -> List[str]:
    return [f for f in factors if not f.startswith(("backbone.", "madcluster."))]


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


def _entity_rows(client, run_id: str) -> Optional[pd.DataFrame]:
    """A per-entity run's per_entity.csv (one row per entity), or None if it has none."""
    try:
        local = client.download_artifacts(run_id, "per_entity.csv", tempfile.mkdtemp())
    except Exception:  # noqa: BLE001 - a run without the table contributes its pooled row
        return None
    return pd.read_csv(local)


def long_table(sweep) -> pd.DataFrame:
    """One row per (run, series): detector, series, seed, baseline name, the rank and sanity
    metrics."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(sweep.uri)
    dkeys, skeys = _detector_keys(sweep.factors), _series_keys(sweep.factors)
    wanted = RANK_METRICS + SANITY_METRICS
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
            _entity_rows(client, r["run_id"])
            if r.get("param:dataset.mode") == "per_entity"
            else None
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
    out = {}
    for name in BASELINES:
        rows = per_series[per_series["backbone"] == name]
        if len(rows):
            out[name] = rows.groupby("series")[HEADLINE].max()
    return out


def per_series_table(long: pd.DataFrame) -> pd.DataFrame:
    """Seed means per (detector, series), the rank by VUS-PR within each series, and the
    sanity column."""
    metrics = RANK_METRICS + SANITY_METRICS
    grouped = long.groupby(["detector", "series"], sort=True)
    table = grouped[metrics].mean().reset_index()
    table["backbone"] = grouped["backbone"].first().to_numpy()
    table["seeds"] = grouped.size().to_numpy()
    table["rank"] = table.groupby("series")[HEADLINE].rank(ascending=False, method="average")
    baselines = _baselines(table)
    sanity = []
    for _, r in table.iterrows():
        flags = run_flags(r.to_dict())
        refs = {
            name: float(b.get(r["series"], np.nan))
            for name, b in baselines.items()
            if name != r["backbone"]
        }
        flags += baseline_flags(float(r[HEADLINE]), refs)
        sanity.append(describe(flags))
    table["sanity"] = sanity
    return table.sort_values(["series", "rank"]).reset_index(drop=True)


# ----------------------------------------------------------------------------- aggregate
def rank_matrix(per_series: pd.DataFrame) -> Tuple[pd.DataFrame, List[str]]:
    """series x detector VUS-PR over the series where every detector has a value, and the
    series left out."""
    pivot = per_series.pivot(index="series", columns="detector", values=HEADLINE)
    complete = pivot.dropna()
    return complete, sorted(set(pivot.index) - set(complete.index))


def mean_ranks(complete: pd.DataFrame) -> pd.Series:
    """Per detector, its rank within each series (1 = highest VUS-PR, ties share the average
    rank) averaged over the complete series."""
    return complete.rank(axis=1, ascending=False, method="average").mean(axis=0)


def _sanity_summary(rows: pd.DataFrame) -> str:
    """A detector's flags over its series, counted: 'AUC-ROC < 0.5 on 1/4 series; ...'."""
    n = len(rows)
    counts: Dict[str, int] = {}
    for text in rows["sanity"]:
        if text == "ok":
            continue
        for flag in text.split("; "):
            kind = _flag_kind(flag)
            counts[kind] = counts.get(kind, 0) + 1
    return "; ".join(f"{k} on {c}/{n} series" for k, c in counts.items()) or "ok"


def _flag_kind(flag: str) -> str:
    if flag.startswith("AUC-ROC"):
        return "AUC-ROC < 0.5"
    if flag.startswith("scores constant"):
        return "constant scores"
    if flag.startswith("scores nearly constant"):
        return "nearly constant scores"
    if flag.startswith("VUS-PR") and " below " in flag:
        return "VUS-PR below " + flag.split(" below ", 1)[1].split(" ")[0]
    return flag


def aggregate_table(per_series: pd.DataFrame) -> pd.DataFrame:
    """Per detector: mean of each metric over series, mean rank (over complete series), the
    number of series, and the sanity summary; sorted by mean rank."""
    ranks = mean_ranks(rank_matrix(per_series)[0])
    rows = []
    for det, g in per_series.groupby("detector"):
        row = {"detector": det, "series": len(g)}
        row.update({m: float(g[m].mean()) for m in RANK_METRICS})
        row["mean rank"] = float(ranks.get(det, np.nan))
        row["sanity"] = _sanity_summary(g)
        rows.append(row)
    return (
        pd.DataFrame(rows)
        .sort_values(["mean rank", HEADLINE], ascending=[True, False])
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
def _num(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4f}"


def _markdown(df: pd.DataFrame, columns: Sequence[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for _, r in df.iterrows():
        cells = [
            (_num(r[c]) if isinstance(r[c], (float, np.floating)) else str(r[c])) for c in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def rank_section(sweep, out_dir: Path) -> Tuple[List[str], List[Path]]:
    """The report's "where each detector stands" section (markdown lines) and its files:
    rank_per_series.csv, rank_table.csv and cd_diagram.png (when there are two detectors or
    more and at least two complete series)."""
    long = long_table(sweep)
    if HEADLINE not in long or long[HEADLINE].isna().all():
        return ["", "## Where each detector stands", "", f"No run logged {HEADLINE}."], []
    per_series = per_series_table(long)
    aggregate = aggregate_table(per_series)
    files = [out_dir / "rank_per_series.csv", out_dir / "rank_table.csv"]
    per_series.to_csv(files[0], index=False)
    aggregate.to_csv(files[1], index=False)
    md = [
        "",
        "## Where each detector stands (headline: VUS-PR; rank 1 = best)",
        "",
        _markdown(aggregate, ["detector", "series", *RANK_METRICS, "mean rank", "sanity"]),
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
        _markdown(per_series, ["series", "detector", "seeds", *RANK_METRICS, "rank", "sanity"]),
    ]
    return md, files


# ------------------------------------------------------------------- summary's sanity column
def summary_sanity(sweep, summary: pd.DataFrame) -> List[str]:
    """The sanity column of report.py's summary table: each configuration's flags over its
    seeds' runs (AUC-ROC < 0.5, constant scores) and its mean VUS-PR against the ``random`` /
    ``knn`` configuration with the same series keys, where the sweep has them."""
    skeys = _series_keys(sweep.factors)
    runs = sweep.runs
    out = []
    for _, row in summary.iterrows():
        mask = np.ones(len(runs), bool)
        for f in sweep.factors:
            mask &= (runs[f"param:{f}"].astype(str) == str(row[f])).to_numpy()
        group = runs[mask]
        counts: Dict[str, int] = {}
        for _, r in group.iterrows():
            for flag in run_flags(r.to_dict()):
                counts[_flag_kind(flag)] = counts.get(_flag_kind(flag), 0) + 1
        flags = [f"{k} in {c}/{len(group)} runs" for k, c in counts.items()]
        vus = pd.to_numeric(group.get(HEADLINE), errors="coerce").mean() if len(group) else None
        own = str(group["param:backbone.name"].iloc[0]) if len(group) else ""
        flags += baseline_flags(vus, _summary_baselines(runs, row, skeys, own))
        out.append(describe(flags))
    return out


def _summary_baselines(
    runs: pd.DataFrame, row: pd.Series, skeys: Sequence[str], own: str
) -> Dict[str, float]:
    if HEADLINE not in runs or "param:backbone.name" not in runs:
        return {}
    same = np.ones(len(runs), bool)
    for k in skeys:
        same &= (runs[f"param:{k}"].astype(str) == str(row[k])).to_numpy()
    out = {}
    for name in BASELINES:
        rows = runs[same & (runs["param:backbone.name"] == name).to_numpy()]
        if len(rows) and name != own:
            out[name] = float(pd.to_numeric(rows[HEADLINE], errors="coerce").mean())
    return out
