"""A sweep report's figures (madcluster_exp/report/sections/ compute what they show): metric bars
off vs on, metrics against the number of clusters k, and training curves per configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import pandas as pd

from madcluster_exp.plots.backend import pyplot, save

# One line per group: its label (None when there is one group) and a frame indexed by k with
# columns mean and std over seeds.
KCurves = Dict[str, List[Tuple[Optional[str], pd.DataFrame]]]
# Per metric key, one entry per configuration in the same order: its label and a frame of that
# metric's values, epochs (from 1) x runs (its seeds).
SweepCurves = Dict[str, List[Tuple[str, pd.DataFrame]]]


def plot_onoff_bars(
    table: pd.DataFrame, factors: Sequence[str], metrics: Sequence[str], path: Path
) -> Path:
    """Per configuration (``factors`` but ``arm``), one bar for off and one per arm of
    ``table`` (one row per configuration and arm: ``<m> off``, ``<m> on`` and their stds),
    each bar under its own label, ``<configuration> · <arm>``; a gap between configurations.
    Error bars: std over seeds; n: the seeds each arm pairs with off."""
    plt = pyplot()
    keys = [f for f in factors if f != "arm"]
    groups = (
        list(table.groupby([table[k].astype(str) for k in keys], sort=False))
        if keys
        else [((), table)]
    )
    arms = list(dict.fromkeys(table["arm"]))
    colors = {"off": "tab:gray", **{a: f"C{i}" for i, a in enumerate(arms)}}
    n_bars = sum(1 + len(g) for _, g in groups)
    width = max(4.0, 0.45 * n_bars + 1.5)
    fig, axes = plt.subplots(1, len(metrics), figsize=(width * len(metrics), 4.6), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        if f"{m} off" not in table:
            ax.set_visible(False)
            continue
        x, ticks, pos = 0.0, [], []
        for gkey, g in groups:
            gkey = gkey if isinstance(gkey, tuple) else (gkey,)
            name = " / ".join(gkey) or "all"
            first = g.iloc[0]
            bars = [("off", first[f"{m} off"], first.get(f"{m} off std"))]
            bars += [
                (r["arm"], r[f"{m} on"], r.get(f"{m} on std"), int(r["pairs"]))
                for _, r in g.iterrows()
            ]
            for arm, value, std, *pairs in bars:
                err = 0.0 if std is None or pd.isna(std) else float(std)
                ax.bar(x, value, 0.8, yerr=err, capsize=3, color=colors[arm], lw=0)
                ticks.append(f"{name} · {arm}" + (f" (n={pairs[0]})" if pairs else ""))
                pos.append(x)
                x += 1.0
            x += 0.6  # a gap between configurations
        ax.set_xticks(pos, ticks, rotation=45, ha="right", fontsize=7)
        ax.set_title(m, fontsize=9)
    fig.suptitle(
        "MADCluster off and each arm, mean over seeds; error bars: std over seeds; "
        "n: seeds paired with off",
        fontsize=8,
    )
    fig.tight_layout()
    return save(fig, path)


def plot_k_curves(curves: KCurves, path: Path) -> Path:
    """One panel per metric: mean over seeds against k, error bars = std over seeds, one line
    per group of the other swept keys (a legend when there is more than one group)."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(4 * len(curves), 3.5), squeeze=False)
    labelled = False
    for ax, (m, lines) in zip(axes[0], curves.items()):
        for label, stats in lines:
            ax.errorbar(
                stats.index,
                stats["mean"],
                yerr=stats["std"].fillna(0),
                marker="o",
                ms=3,
                capsize=2,
                label=label,
            )
            labelled = labelled or label is not None
        ax.set_xlabel("k (clusters)")
        ax.set_title(m, fontsize=9)
    if labelled:
        axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    return save(fig, path)


def plot_sweep_curves(curves: SweepCurves, path: Path) -> Path:
    """The sweep's training curves (:func:`sweep_curves_figure`) as a file."""
    return save(sweep_curves_figure(curves), path)


def sweep_curves_figure(curves: SweepCurves):
    """One panel per metric key, one line per configuration (mean over its seeds, a marker per
    epoch, so single-epoch runs show), bars min..max over seeds; the legend sits beside the
    last panel, in columns."""
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    n_groups = max((len(groups) for groups in curves.values()), default=0)
    cmap = plt.get_cmap("tab10" if n_groups <= 10 else "tab20" if n_groups <= 20 else "viridis")
    ncol = 1 + n_groups // 16
    fig, axes = plt.subplots(
        1, len(curves), figsize=(11 + 3.5 * ncol, 3.8 + 0.04 * n_groups), squeeze=False
    )
    axes = axes[0]
    for ax, (key, groups) in zip(axes, curves.items()):
        for i, (label, runs) in enumerate(groups):
            color = cmap(i % 20 if n_groups <= 20 else i / max(1, n_groups - 1))
            if not runs.empty:
                _mean_and_spread(ax, runs, label, color)
        ax.set_xlabel("epoch")
        ax.set_title(f"{key}: mean over seeds, bars min..max", fontsize=9)
        last = max([int(max(line.get_xdata(), default=1)) for line in ax.get_lines()] or [1])
        ax.set_xlim(0.5, last + 0.5)  # one epoch: a point at 1, not a blank axis around it
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if axes[-1].get_legend_handles_labels()[0]:  # runs without a loss history draw no line
        axes[-1].legend(
            fontsize=6, loc="upper left", bbox_to_anchor=(1.02, 1.0), ncol=ncol, frameon=False
        )
    fig.tight_layout()
    return fig


def _mean_and_spread(ax, runs: pd.DataFrame, label: str, color) -> None:
    """A configuration's line: the mean over its runs, and bars min..max when there are two
    runs or more."""
    mean = runs.mean(axis=1)
    ax.plot(
        runs.index, mean, marker="o", ms=4, lw=1, color=color, label=f"{label} (n={runs.shape[1]})"
    )
    if runs.shape[1] > 1:
        spread = [mean - runs.min(axis=1), runs.max(axis=1) - mean]
        ax.errorbar(
            runs.index, mean, yerr=spread, fmt="none", ecolor=color, alpha=0.5, capsize=2, lw=0.8
        )
