"""The training curves: per loss (train, val), one line per configuration, the mean over its
seeds, bars min..max (``training_curves.png``). An Optuna search's report draws the figure
without a section of its own (:func:`figure`)."""

from __future__ import annotations

from madcluster_exp.plots.sweep import plot_sweep_curves
from madcluster_exp.report.sections import Context, Section, lines
from madcluster_exp.report.sweep import Sweep

FILE = "training_curves.png"


def section(sweep: Sweep, ctx: Context) -> Section:
    path = plot_sweep_curves(sweep.curves, ctx.out_dir / FILE)
    return lines(["", "## Training curves", "", f"![training curves]({FILE})"], [path])


def figure(sweep: Sweep, ctx: Context) -> Section:
    """The figure alone, no markdown."""
    return Section("", [plot_sweep_curves(sweep.curves, ctx.out_dir / FILE)])
