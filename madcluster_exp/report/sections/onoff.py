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

Where the gain comes from (:func:`parts_table`), when the sweep holds the three arms off, on and
on_backbone_only: each backbone's on − off splits into the *representation* part
(on_backbone_only − off: what the plug-in's training did to the backbone's own score) and the
*score* part (on − on_backbone_only: what adding the plug-in's score did), per series (paired
by seed: the seeds all three arms finished) and pooled over series (paired by series: each
arm's mean over its seeds), each part with its paired t-test where there are FEW_PAIRS pairs or
more.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence

import numpy as np
import pandas as pd

from madcluster_exp.metrics.catalog import headline
from madcluster_exp.plots.sweep import plot_onoff_bars
from madcluster_exp.report.sections import Context, Section, lines
from madcluster_exp.report.sweep import (
    COMBINE,
    ENABLED,
    Sweep,
    detector_keys,
    logged_combine,
    metric_label,
    series_long,
)
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
        "off": _mean(b),
        "on": _mean(a),
        "off std": _std(b),
        "on std": _std(a),
        "diff": _mean(d),
        "diff std": _std(d),
        "p": np.nan,
    }
    # No p-value below FEW_PAIRS pairs: the report says why instead of printing a number.
    if len(d) >= FEW_PAIRS and np.nanstd(d) > 0:
        out["p"] = float(ttest_rel(a, b, nan_policy="omit").pvalue)
    return out


def _mean(v: np.ndarray) -> float:
    """The mean of the values that are defined; NaN (and no warning) when none is."""
    v = v[~np.isnan(v)]
    return float(v.mean()) if len(v) else np.nan


def _std(v: np.ndarray) -> float:
    v = v[~np.isnan(v)]
    return float(v.std(ddof=1)) if len(v) > 1 else np.nan


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
    parts_md, parts_files = _parts_section(sweep, ctx)
    return lines(md + parts_md, files + parts_files)


# ------------------------------------------------------------------ where the gain comes from
PARTS = {
    # part: (minuend arm, subtrahend arm)
    "representation": ("on_backbone_only", "off"),
    "score": ("on", "on_backbone_only"),
    "total": ("on", "off"),
}
THREE_ARMS = ("off", "on_backbone_only", "on")
POOLED = "pooled over series"


def _part_stats(values: Dict[str, pd.Series]) -> dict:
    """Each arm's mean and each part's mean difference over the units (seeds or series) all
    three arms have, with its paired t-test p-value from FEW_PAIRS pairs on (total: no test,
    the arm table above has it)."""
    from scipy.stats import ttest_rel

    common = set.intersection(*(set(v.dropna().index) for v in values.values()))
    units = sorted(common, key=str)
    arr = {a: values[a].loc[units].to_numpy(dtype=float) for a in THREE_ARMS}
    out: dict = {"pairs": len(units)}
    out.update({a: _mean(arr[a]) for a in THREE_ARMS})
    for part, (hi, lo) in PARTS.items():
        d = arr[hi] - arr[lo]
        out[part] = _mean(d)
        test = part != "total" and len(d) >= FEW_PAIRS and np.std(d) > 0
        out[f"{part} p"] = float(ttest_rel(arr[hi], arr[lo]).pvalue) if test else np.nan
    return out


def _part_keys(factors: Sequence[str]):
    """(the detector keys besides the backbone's name and the arm's, the plug-in options
    besides the arm's) that tell the rows of :func:`parts_table` apart."""
    keys = [f for f in detector_keys(factors) if not _is_plugin_key(f) and f != "backbone.name"]
    extras = [f for f in arm_factors(factors) if f not in (COMBINE, "madcluster.components")]
    return keys, extras


def parts_table(long: pd.DataFrame, factors: Sequence[str], metrics: Sequence[str]):
    """Where each backbone's on − off comes from: one row per (backbone configuration, series)
    and one pooled row (``series``: :data:`POOLED`) per backbone configuration over two series
    or more; per metric ``<m> pairs``, the three arms' means, the parts (:data:`PARTS`) and
    their p-values. ``long``: one row per
    (job run, series), :func:`madcluster_exp.report.sweep.series_long`. None unless some
    backbone has all three arms."""
    long = long[long["series"].notna() & (long["status"] == "FINISHED")]
    if long.empty or not set(THREE_ARMS) <= set(long["arm"]):
        return None
    keys, extras = _part_keys(factors)
    rows = []
    for key, g in long.groupby(["backbone", *(f"param:{k}" for k in keys)], sort=True):
        key = key if isinstance(key, tuple) else (key,)
        on = g[g["arm"].isin(["on", "on_backbone_only"])]
        settings = on.groupby([f"param:{f}" for f in extras], sort=True) if extras else [((), on)]
        for setting, arms in settings:
            setting = setting if isinstance(setting, tuple) else (setting,)
            off = g[g["arm"] == "off"]
            for f, v in zip(extras, setting):  # off runs of the same setting where they vary
                if off[f"param:{f}"].nunique(dropna=False) > 1:
                    off = off[off[f"param:{f}"] == v]
            rows_of = {"off": off, **{a: arms[arms["arm"] == a] for a in THREE_ARMS[1:]}}
            if any(r.empty for r in rows_of.values()):
                continue
            label = {**dict(zip(["backbone", *keys], key)), **dict(zip(extras, setting))}
            per_series = {}
            for series in sorted(set.intersection(*(set(r["series"]) for r in rows_of.values()))):
                row = {**label, "series": series}
                for m in metrics:
                    values = {
                        a: r[r["series"] == series].groupby("seed")[m].mean()
                        for a, r in rows_of.items()
                    }
                    row.update({f"{m} {k}": v for k, v in _part_stats(values).items()})
                    per_series.setdefault(m, {})[series] = {
                        a: float(v.mean()) if v.notna().any() else np.nan for a, v in values.items()
                    }
                # no pair on any metric: a series without an anomaly, or every seed failed
                if any(row[f"{m} pairs"] for m in metrics):
                    rows.append(row)
            if len(per_series.get(metrics[0], {})) > 1:
                row = {**label, "series": POOLED}
                for m in metrics:
                    by_series = pd.DataFrame(per_series[m]).T  # series x arm
                    values = {a: by_series[a] for a in THREE_ARMS}
                    row.update({f"{m} {k}": v for k, v in _part_stats(values).items()})
                if any(row[f"{m} pairs"] > 1 for m in metrics):
                    rows.append(row)
    return pd.DataFrame(rows) if rows else None


def _part_cell(r: pd.Series, m: str, part: str) -> str:
    diff = r.get(f"{m} {part}", np.nan)
    if pd.isna(diff):
        return "n/a"
    p = r.get(f"{m} {part} p", np.nan)
    return f"{diff:+.4f}" + ("" if pd.isna(p) else f" (p={p:.3g})")


def _parts_section(sweep: Sweep, ctx: Context):
    """(markdown lines, files) of "where the gain comes from"; nothing without the three arms."""
    metrics = list(ctx.metrics)
    long = series_long(sweep, metrics)
    table = parts_table(long, sweep.factors, metrics)
    if table is None:
        return [], []
    csv = ctx.out_dir / "onoff_parts.csv"
    table.to_csv(csv, index=False)
    shown = headline().key if headline().key in metrics else metrics[0]
    keys = ["backbone", *(k for part in _part_keys(sweep.factors) for k in part), "series"]
    md = [
        "",
        f"### Where the gain comes from ({metric_label(shown)}; every metric: onoff_parts.csv)",
        "",
        "on − off = representation (on_backbone_only − off: the plug-in's training, the "
        "backbone's own score) + score (on − on_backbone_only: adding the plug-in's score). "
        "Per series: paired by seed (the seeds all three arms finished); pooled: paired by "
        f"series (each arm's mean over its seeds). p: paired t-test, from {FEW_PAIRS} pairs on.",
        "",
    ]
    header = keys + ["pairs", "off → on_backbone_only → on", *PARTS]
    table = table[table[f"{shown} pairs"] > 0]
    rows = []
    for _, r in table.iterrows():
        arms = [r.get(f"{shown} {a}", np.nan) for a in THREE_ARMS]
        cells = [str(r[k]) for k in keys] + [str(int(r[f"{shown} pairs"]))]
        cells.append(" → ".join("n/a" if pd.isna(v) else f"{v:.4f}" for v in arms))
        cells += [_part_cell(r, shown, part) for part in PARTS]
        rows.append(cells)
    md.append(markdown_table(header, rows))
    failed = _failed_by_arm(long)
    if failed:
        md += ["", f"Failed runs (in no pair): {failed}"]
    return md, [csv]


def _failed_by_arm(long: pd.DataFrame) -> str:
    """``usad/on: collapse 1; usad/off: error 1`` over the failed runs of the arms compared."""
    failed = long[(long["status"] != "FINISHED") & long["arm"].isin(THREE_ARMS)]
    parts = []
    for det, g in failed.groupby("detector"):
        counts = g["failure"].value_counts()
        parts.append(f"{det}: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    return "; ".join(parts)


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
