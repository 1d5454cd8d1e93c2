"""Metrics against the number of clusters k (when the sweep varies ``madcluster.k``): per
metric, per group of the other factors, the mean and std over seeds at each k. Draws
``k_sweep.png`` (the first four metrics)."""

from __future__ import annotations

from typing import Sequence

import pandas as pd

from madcluster_exp.plots.sweep import KCurves, plot_k_curves
from madcluster_exp.report.sections import Context, Section, lines
from madcluster_exp.report.sweep import Sweep, group_label

K = "madcluster.k"


def section(sweep: Sweep, ctx: Context) -> Section:
    if K not in sweep.factors:
        return Section()
    path = plot_k_curves(k_curves(sweep, ctx.metrics[:4]), ctx.out_dir / "k_sweep.png")
    return lines(["", "## Number of clusters k", "", "![metrics against k](k_sweep.png)"], [path])


def k_curves(sweep: Sweep, metrics: Sequence[str]) -> KCurves:
    """Per metric, per group of the other factors (one unlabelled group when k is the only
    one): mean and std over seeds at each k."""
    df = sweep.runs.copy()
    df["k"] = pd.to_numeric(df[f"param:{K}"])
    factors = [f for f in sweep.factors if f != K]
    others = [f"param:{f}" for f in factors]
    out: KCurves = {}
    for m in metrics:
        groups = df.groupby(others, dropna=False) if others else [((), df)]
        out[m] = [
            (group_label(factors, key), g.groupby("k")[m].agg(["mean", "std"]).sort_index())
            for key, g in groups
        ]
    return out
