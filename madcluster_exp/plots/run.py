"""A job's figures, which a researcher would rather look at than read: the score timeline and
the training curves."""

from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

from madcluster_exp.plots.backend import pyplot, save


def plot_score_timeline(
    path: Path,
    scores: np.ndarray,
    labels: np.ndarray,
    threshold,
    title: str,
    max_points: int = 20000,
    bounds=None,
) -> Path:
    """Test scores over time, true anomalies shaded, the fitted threshold as a line (one per
    entity in per-entity mode, given ``bounds`` [[start, end], ...])."""
    plt = pyplot()
    n = len(scores)
    step = max(1, n // max_points)
    t = np.arange(0, n, step)
    fig, ax = plt.subplots(figsize=(12, 3.5))
    ax.plot(t, scores[::step], lw=0.7, color="tab:blue", label="score")
    thresholds = np.atleast_1d(np.asarray(threshold, dtype=float))
    if len(thresholds) == 1:
        ax.axhline(
            thresholds[0], color="tab:red", lw=1, ls="--", label=f"threshold {thresholds[0]:.3g}"
        )
    else:
        for i, ((a, b), thr) in enumerate(zip(bounds, thresholds)):
            ax.hlines(
                thr,
                a,
                b,
                color="tab:red",
                lw=1,
                ls="--",
                label="threshold per entity" if i == 0 else None,
            )
    d = np.diff(np.r_[0, labels.astype(np.int8), 0])
    for a, b in zip(np.flatnonzero(d == 1), np.flatnonzero(d == -1)):
        ax.axvspan(a, b, color="tab:orange", alpha=0.3, lw=0)
    ax.set_xlabel("time point (test)")
    ax.set_ylabel("anomaly score")
    ax.set_title(f"{title} — shaded: labelled anomalies")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    return save(fig, path)


def plot_training_curves(path: Path, history: List[Dict[str, float]], title: str) -> Path:
    """Loss components per epoch, and nu / R trajectories when the plug-in is on."""
    plt = pyplot()
    epochs = np.arange(1, len(history) + 1)
    keys = sorted({k for h in history for k in h})
    loss_keys = [k for k in keys if "/loss" in k]
    state_keys = [k for k in keys if k.startswith(("madcluster/", "backbone/"))]
    n_panels = 2 if state_keys else 1
    fig, axes = plt.subplots(1, n_panels, figsize=(6 * n_panels, 3.5), squeeze=False)
    for k in loss_keys:
        axes[0, 0].plot(epochs, [h.get(k, np.nan) for h in history], marker="o", ms=3, label=k)
    axes[0, 0].set_xlabel("epoch")
    axes[0, 0].set_title("losses")
    axes[0, 0].legend(fontsize=7)
    if state_keys:
        for k in state_keys:
            axes[0, 1].plot(epochs, [h.get(k, np.nan) for h in history], marker="o", ms=3, label=k)
        axes[0, 1].set_xlabel("epoch")
        axes[0, 1].set_title("threshold nu and radius R")
        axes[0, 1].legend(fontsize=7)
    fig.suptitle(title)
    fig.tight_layout()
    return save(fig, path)
