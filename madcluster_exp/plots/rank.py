"""The detectors' critical-difference diagram (madcluster_exp/report/sections/rank.py computes
the ranks and the pairwise tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import pandas as pd

from madcluster_exp.plots.backend import pyplot, save


def plot_cd_diagram(
    ranks: pd.Series,
    n_series: int,
    matrix: pd.DataFrame,
    test: str,
    omnibus: Optional[float],
    alpha: float,
    path: Path,
) -> Path:
    """Mean rank per detector (1 = best) on an axis; bars join the detectors whose pairwise
    p-value (``matrix``) is not below ``alpha``."""
    import scikit_posthocs as sp

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 1.2 + 0.3 * len(ranks)))
    sp.critical_difference_diagram(ranks, matrix.fillna(1.0), ax=ax, alpha=alpha)
    title = f"Mean rank by VUS-PR over {n_series} series (1 = best); {test}"
    if omnibus is not None:
        title += f", Friedman p = {omnibus:.3g}"
    ax.set_title(title + f"; bars: not different at alpha = {alpha}", fontsize=8)
    fig.tight_layout()
    return save(fig, path, dpi=120)
