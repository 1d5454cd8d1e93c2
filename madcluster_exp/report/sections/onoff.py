"""MADCluster on − off, per arm, paired by seed: the report's on/off section.

An *arm* is MADCluster on with one setting of the plug-in keys the sweep varies (``madcluster.*``
and the score rule ``scoring.combine``). With ``experiment=onoff`` there are two:

- ``on(combine=sum)``: the plug-in trains the embedding *and* adds its own standardised score to
  the backbone's, so a gain over off may be ensembling two scores, not a better representation;
- ``on(combine=backbone_only)``, the control arm: the plug-in trains the embedding, the backbone's
  own score is used, so a gain over off is what the plug-in did to the backbone.

Each arm is compared with off separately: per configuration (the sweep's non-plug-in keys), the
difference on − off of each metric over the seeds both have, its mean and std, and a paired
t-test (scipy's ``ttest_rel``, two-sided; n = number of pairs).
"""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import numpy as np
import pandas as pd

from madcluster_exp.plots.sweep import plot_onoff_bars
from madcluster_exp.report.sections import Context, Section, lines
from madcluster_exp.report.sweep import COMBINE, ENABLED, Sweep, logged_combine
from madcluster_exp.report.tables import markdown_table

# A paired test over fewer seeds than this is reported, but said to mean little.
FEW_PAIRS = 5

_MEANING = {
    "sum": "the plug-in's training plus its score added to the backbone's (may be ensembling)",
    "product": "the plug-in's training plus its score multiplied into the backbone's",
    "backbone_only": "the plug-in's training alone, on the backbone's own score (control arm)",
    "madcluster_only": "the plug-in's score alone",
}


def _is_plugin_key(key: str) -> bool:
    """A key that sets the plug-in arm: ``madcluster.*`` and the score rule."""
    return key.startswith("madcluster.") or key == COMBINE


def arm_factors(factors: Sequence[str]) -> List[str]:
    """The swept plug-in keys that tell arms apart (``madcluster.enabled`` aside)."""
    return [f for f in factors if _is_plugin_key(f) and f != ENABLED]


def arm_label(values: dict) -> str:
    """``on`` or ``on(combine=backbone_only, k=3)`` from {config key: value}."""
    inner = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in values.items())
    return f"on({inner})" if inner else "on"


def _by_seed(rows: pd.DataFrame, metric: str) -> pd.Series:
    """One value per seed (mean if a seed has several runs)."""
    values = (
        pd.to_numeric(rows[metric], errors="coerce")
        if metric in rows
        else pd.Series(np.nan, index=rows.index)
    )
    return values.groupby(rows["param:seed"]).mean()


def _paired(on: pd.Series, off: pd.Series) -> dict:
    from scipy.stats import ttest_rel

    seeds = sorted(set(on.index) & set(off.index))
    a, b = on.loc[seeds].to_numpy(dtype=float), off.loc[seeds].to_numpy(dtype=float)
    d = a - b
    out = {
        "off": float(np.nanmean(b)) if seeds else np.nan,
        "on": float(np.nanmean(a)) if seeds else np.nan,
        "off std": float(np.nanstd(b, ddof=1)) if len(b) > 1 else np.nan,
        "on std": float(np.nanstd(a, ddof=1)) if len(a) > 1 else np.nan,
        "diff": float(np.nanmean(d)) if seeds else np.nan,
        "diff std": float(np.nanstd(d, ddof=1)) if len(d) > 1 else np.nan,
        "p": np.nan,
    }
    # No p-value below FEW_PAIRS pairs: the report says why instead of printing a number.
    if len(d) >= FEW_PAIRS and np.nanstd(d) > 0:
        out["p"] = float(ttest_rel(a, b, nan_policy="omit").pvalue)
    return out


def onoff_table(
    runs: pd.DataFrame, factors: Sequence[str], metrics: Sequence[str]
) -> Optional[pd.DataFrame]:
    """One row per (configuration, arm): on − off of each metric, paired by seed.

    ``runs``: one row per finished run (``param:<key>`` columns and metric columns, as
    :func:`madcluster_exp.report.source.load_sweep` gives); ``factors``: the sweep's varying keys.
    None when MADCluster was not swept off and on.
    """
    if ENABLED not in factors:
        return None
    pair_keys = [f for f in factors if not _is_plugin_key(f)]
    arms = arm_factors(factors)
    grouped = (
        runs.groupby([f"param:{f}" for f in pair_keys], dropna=False, sort=True)
        if pair_keys
        else [((), runs)]
    )
    rows = []
    for key, g in grouped:
        key = key if isinstance(key, tuple) else (key,)
        on_runs = g[g[f"param:{ENABLED}"] == "True"]
        off_runs = g[g[f"param:{ENABLED}"] == "False"]
        arm_groups = (
            on_runs.groupby([f"param:{f}" for f in arms], dropna=False, sort=True)
            if arms
            else [((), on_runs)]
        )
        for arm_key, on in arm_groups:
            arm_key = arm_key if isinstance(arm_key, tuple) else (arm_key,)
            values = dict(zip(arms, arm_key))
            off = off_runs
            for f, v in values.items():  # pair with off runs of the same setting where they vary
                if off[f"param:{f}"].nunique(dropna=False) > 1:
                    off = off[off[f"param:{f}"] == v]
            row = dict(zip(pair_keys, key))
            row["arm"] = arm_label(values)
            row["pairs"] = len(set(on["param:seed"]) & set(off["param:seed"]))
            rules = {logged_combine(r) for _, r in on.iterrows()}
            row[COMBINE] = rules.pop() if len(rules) == 1 else None
            for m in metrics:
                stats = _paired(_by_seed(on, m), _by_seed(off, m))
                row.update({f"{m} {k}": v for k, v in stats.items()})
            rows.append(row)
    return pd.DataFrame(rows)


def section(sweep: Sweep, ctx: Context) -> Section:
    """The on/off section and its files (``onoff.csv``, the bars); nothing when MADCluster was
    not swept off and on."""
    metrics = ctx.metrics
    out_dir = ctx.out_dir
    table = onoff_table(sweep.runs, sweep.factors, metrics)
    if table is None or table.empty:
        return Section()
    keys = [f for f in sweep.factors if not _is_plugin_key(f)] + ["arm"]
    table.to_csv(out_dir / "onoff.csv", index=False)
    md = ["", "## MADCluster on − off, per arm (paired by seed; p: paired t-test)", ""]
    meanings = table.drop_duplicates("arm")
    md += [
        f"- {r['arm']} − off: {_MEANING[r[COMBINE]]}"
        for _, r in meanings.iterrows()
        if r[COMBINE] in _MEANING
    ]
    few = table[table["pairs"] < FEW_PAIRS]
    if len(few):
        md.append(
            f"- too few pairs for a test: {len(few)} of {len(table)} rows have fewer than "
            f"{FEW_PAIRS} seed pairs (n = {', '.join(str(int(n)) for n in few['pairs'])}); "
            "they carry no p-value and their differences mean little. Add seeds "
            "(seed=0,1,2,3,4) for a paired test."
        )
    md += [
        "",
        onoff_markdown(table, keys, metrics),
        "",
        "![MADCluster off vs on](onoff_bars.png)",
    ]
    files = [
        out_dir / "onoff.csv",
        plot_onoff_bars(table, keys, list(metrics)[:4], out_dir / "onoff_bars.png"),
    ]
    return lines(md, files)


def onoff_markdown(table: pd.DataFrame, keys: Sequence[str], metrics: Sequence[str]) -> str:
    """Per row: its keys, the seed pairs, and per metric ``off → on: difference (p=...)``."""
    header = list(keys) + ["pairs"] + [f"{m} (on − off)" for m in metrics]
    rows = []
    for _, r in table.iterrows():
        cells = [str(r.get(f, "")) for f in keys]
        cells.append(str(int(r["pairs"])))
        for m in metrics:
            diff = r.get(f"{m} diff", float("nan"))
            if diff is None or (isinstance(diff, float) and math.isnan(diff)):
                cells.append("n/a")
                continue
            p = r.get(f"{m} p", float("nan"))
            sig = "" if math.isnan(p) else f" (p={p:.3g})"
            cells.append(f"{r[f'{m} off']:.4f} → {r[f'{m} on']:.4f}: {diff:+.4f}{sig}")
        rows.append(cells)
    return markdown_table(header, rows)
