"""A sweep report's figures (madcluster_exp/report/sections/ compute what they show): metric bars
off vs on, metrics against the number of clusters k, and training curves per configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
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
    """Mean off and on per configuration, error bars = std over seeds, n = seed pairs."""
    plt = pyplot()
    labels = [
        (" / ".join(str(r[f]) for f in factors) or "all") + f"\n(n={int(r['pairs'])})"
        for _, r in table.iterrows()
    ]
    fig, axes = plt.subplots(1, len(metrics), figsize=(4 * len(metrics), 4.2), squeeze=False)
    x = np.arange(len(labels))
    for ax, m in zip(axes[0], metrics):
        if f"{m} off" not in table:
            ax.set_visible(False)
            continue
        for shift, side, color in ((-0.2, "off", "tab:gray"), (0.2, "on", "tab:blue")):
            err = table.get(f"{m} {side} std", pd.Series(np.nan, index=table.index))
            ax.bar(
                x + shift,
                table[f"{m} {side}"],
                0.4,
                yerr=err.fillna(0).to_numpy(),
                capsize=3,
                label=side,
                color=color,
                error_kw={"lw": 0.8},
            )
        ax.set_xticks(x, labels, rotation=45, ha="right", fontsize=7)
        ax.set_title(m, fontsize=9)
    axes[0, 0].legend(title="MADCluster", fontsize=7)
    fig.suptitle("mean over seeds; error bars: std over seeds; n: seeds paired", fontsize=8)
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
