"""The report's head and summary: the sweep (parent run, command, runs, failed runs, factors),
then every configuration (the factors' values, seeds pooled) with mean ± std over seeds of each
metric and a sanity column. Writes ``summary.csv``."""

from __future__ import annotations

from collections import Counter
from typing import Dict, List, Sequence

import numpy as np
import pandas as pd

from madcluster_exp.evaluation.sanity import (
    BASELINES,
    baseline_flags,
    describe,
    flag_kind,
    run_flags,
)
from madcluster_exp.metrics.catalog import headline
from madcluster_exp.report.sections import Context, Section, lines
from madcluster_exp.report.sweep import Sweep, failure_kind, series_keys
from madcluster_exp.report.tables import markdown_table, mean_std


def section(sweep: Sweep, ctx: Context) -> Section:
    wanted = list(ctx.metrics)
    summary = summary_table(sweep, wanted)
    summary["sanity"] = summary_sanity(sweep, summary)
    csv = ctx.out_dir / "summary.csv"
    summary.to_csv(csv, index=False)
    parent_id = sweep.parent_id
    md = [f"# Sweep {parent_id}", "", f"- MLflow parent run: `{parent_id}` ({sweep.uri})"]
    if sweep.command:
        md.append(f"- Sweep command: `{sweep.command}`")
    md += [
        f"- {len(sweep.runs)} finished runs"
        + (
            f", {len(sweep.failed)} failed or killed (left out): "
            + ", ".join(sweep.failed["run_name"].astype(str))
            if len(sweep.failed)
            else ""
        ),
        *_series_runs(sweep),
        f"- Configurations ({len(summary)}) differ in: "
        + (", ".join(sweep.factors) or "nothing (seeds only)"),
        "",
        "## Mean ± std over seeds",
        "",
        summary_markdown(summary, sweep.factors, wanted),
    ]
    return lines(md, [csv])


def _series_runs(sweep: Sweep) -> List[str]:
    """The head's line on a collection's series runs: how many finished, how many failed, by
    kind (their detectors: the rank section's failed column)."""
    series = sweep.series
    if series.empty:
        return []
    failed = series[series["status"] != "FINISHED"]
    kinds = Counter(failure_kind(r) for _, r in failed.iterrows())
    text = f"- {len(series)} series runs: {len(series) - len(failed)} finished"
    if len(failed):
        text += f", {len(failed)} failed (" + ", ".join(f"{k} {n}" for k, n in kinds.items())
        text += "; per detector: the rank section's failed column)"
    return [text]


def summary_table(sweep: Sweep, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per configuration: its factors' values, ``n`` (runs), and per metric its
    ``<m> mean`` and ``<m> std`` over seeds."""
    keys = [f"param:{f}" for f in sweep.factors]
    df = sweep.runs
    groups = df.groupby(keys, dropna=False, sort=True) if keys else [((), df)]
    rows = []
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        row = dict(zip(sweep.factors, key))
        row["n"] = len(g)
        for m in metrics:
            vals = pd.to_numeric(g[m], errors="coerce") if m in g else pd.Series(dtype=float)
            row[f"{m} mean"] = float(vals.mean()) if len(vals) else float("nan")
            row[f"{m} std"] = float(vals.std(ddof=1)) if len(vals) > 1 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def summary_markdown(df: pd.DataFrame, factors: Sequence[str], metrics: Sequence[str]) -> str:
    header = list(factors) + ["n"] + list(metrics) + (["sanity"] if "sanity" in df else [])
    rows = []
    for _, r in df.iterrows():
        cells = [str(r.get(f, "")) for f in factors]
        cells.append(str(int(r["n"])))
        cells += [
            mean_std(r.get(f"{m} mean", float("nan")), r.get(f"{m} std", float("nan")))
            for m in metrics
        ]
        cells += [str(r["sanity"])] if "sanity" in r else []
        rows.append(cells)
    return markdown_table(header, rows)


# ------------------------------------------------------------------------- sanity column
def summary_sanity(sweep: Sweep, summary: pd.DataFrame) -> List[str]:
    """The summary's sanity column: each configuration's flags over its seeds' runs (AUC-ROC
    < 0.5, constant scores) and its mean headline metric (VUS-PR) against the ``random`` /
    ``knn`` configuration with the same series keys, where the sweep has them."""
    skeys = series_keys(sweep.factors)
    runs = sweep.runs
    key = headline().key
    out = []
    for _, row in summary.iterrows():
        mask = np.ones(len(runs), bool)
        for f in sweep.factors:
            mask &= (runs[f"param:{f}"].astype(str) == str(row[f])).to_numpy()
        group = runs[mask]
        counts: Dict[str, int] = {}
        for _, r in group.iterrows():
            for flag in run_flags(r.to_dict()):
                counts[flag_kind(flag)] = counts.get(flag_kind(flag), 0) + 1
        flags = [f"{k} in {c}/{len(group)} runs" for k, c in counts.items()]
        vus = pd.to_numeric(group.get(key), errors="coerce").mean() if len(group) else None
        own = str(group["param:backbone.name"].iloc[0]) if len(group) else ""
        flags += baseline_flags(vus, _baselines(runs, row, skeys, own, key))
        out.append(describe(flags))
    return out


def _baselines(
    runs: pd.DataFrame, row: pd.Series, skeys: Sequence[str], own: str, key: str
) -> Dict[str, float]:
    if key not in runs or "param:backbone.name" not in runs:
        return {}
    same = np.ones(len(runs), bool)
    for k in skeys:
        same &= (runs[f"param:{k}"].astype(str) == str(row[k])).to_numpy()
    out = {}
    for name in BASELINES:
        rows = runs[same & (runs["param:backbone.name"] == name).to_numpy()]
        if len(rows) and name != own:
            out[name] = float(pd.to_numeric(rows[key], errors="coerce").mean())
    return out
