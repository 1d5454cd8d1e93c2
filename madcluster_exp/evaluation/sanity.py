"""Sanity flags: what says, in words, that a detector's result cannot be trusted as it stands.

A run flags its own test AUC-ROC below 0.5 (anomalies ranked below normal points: worse than a
random ranking) and scores that are constant or nearly so (no ranking at all). A sweep report
adds, where the sweep holds them, a VUS-PR below the ``random`` detector's or below ``knn``'s
on the same series (madcluster_exp/report/sections/rank.py).
"""

from __future__ import annotations

import math
from typing import Dict, List, Mapping, Optional

import numpy as np

OK = "ok"
#: The baseline detectors a sweep report holds a detector's VUS-PR against, where it has them.
BASELINES = ("random", "knn")
# A score is "nearly constant" when this share of the points or more hold one value.
MODE_FRACTION = 0.99
# ... or when its range is this small relative to its magnitude (float noise on a constant).
RELATIVE_RANGE = 1e-9


def score_spread(score: np.ndarray) -> Dict[str, float]:
    """``sanity/score_mode_fraction`` (share of points holding the most common value) and
    ``sanity/score_relative_range`` (range / largest magnitude) of a score array."""
    s = np.asarray(score, dtype=np.float64)
    _, counts = np.unique(s, return_counts=True)
    scale = float(np.abs(s).max())
    rel = float(np.ptp(s)) / scale if scale > 0 else 0.0
    return {
        "sanity/score_mode_fraction": float(counts.max() / len(s)),
        "sanity/score_relative_range": rel,
    }


def _value(metrics: Mapping[str, float], key: str) -> Optional[float]:
    v = metrics.get(key)
    if v is None:
        return None
    v = float(v)
    return None if math.isnan(v) else v


def run_flags(metrics: Mapping[str, float]) -> List[str]:
    """Flags a single run can raise from its own metrics (test/ or ref/ keys)."""
    flags = []
    auc = _value(metrics, "test/auc_roc")
    if auc is None:
        auc = _value(metrics, "ref/auc_roc")
    if auc is not None and auc < 0.5:
        flags.append(
            f"AUC-ROC {auc:.3f} < 0.5: ranks anomalies below normal points (worse than random)"
        )
    mode = _value(metrics, "sanity/score_mode_fraction")
    rel = _value(metrics, "sanity/score_relative_range")
    if (mode is not None and mode >= 1.0) or (rel is not None and rel <= RELATIVE_RANGE):
        flags.append("scores constant: no ranking at all")
    elif mode is not None and mode >= MODE_FRACTION:
        flags.append(f"scores nearly constant: {100 * mode:.1f} % of test points share one value")
    return flags


def baseline_flags(vus_pr: Optional[float], baselines: Mapping[str, float]) -> List[str]:
    """VUS-PR below each baseline detector's on the same series (``{"random": .., "knn": ..}``)."""
    flags = []
    if vus_pr is None or math.isnan(vus_pr):
        return flags
    for name, ref in baselines.items():
        if ref is not None and not math.isnan(ref) and vus_pr < ref:
            flags.append(f"VUS-PR {vus_pr:.3f} below {name} ({ref:.3f})")
    return flags


def flag_kind(flag: str) -> str:
    """A flag without its numbers, to count flags of one kind over runs or series:
    ``AUC-ROC < 0.5``, ``constant scores``, ``nearly constant scores``, ``VUS-PR below knn``."""
    if flag.startswith("AUC-ROC"):
        return "AUC-ROC < 0.5"
    if flag.startswith("scores constant"):
        return "constant scores"
    if flag.startswith("scores nearly constant"):
        return "nearly constant scores"
    if flag.startswith("VUS-PR") and " below " in flag:
        return "VUS-PR below " + flag.split(" below ", 1)[1].split(" ")[0]
    return flag


def describe(flags: List[str]) -> str:
    """The sanity column's text: the flags joined, or ``ok``."""
    return "; ".join(flags) if flags else OK
