"""Window scores -> one score per time point, per score component."""

from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from madcluster_exp.data import PointScoreAccumulator, SeriesSplit, WindowSet


def score_split(
    detector,
    split: SeriesSplit,
    stride: int,
    batch_size: int,
    aggregate: str,
    device: torch.device,
    window_means: bool = False,
):
    """Score every point of ``split``: {component name: float64 [N]}.

    Windows at ``stride`` plus an end-aligned window per entity cover every point; overlapping
    per-step scores are folded by ``aggregate`` (mean or max), except where the backbone
    declares its own rule for its component (``Backbone.score_aggregate``).
    With ``window_means`` it also returns {component: [n_windows]} (mean over each window's
    steps, windows in order) and the window starts: the reference protocol's window scores.
    """
    detector.eval()
    backbone = detector.backbone
    window = backbone.input_length
    rules = {"backbone": backbone.score_aggregate or aggregate}
    if rules["backbone"] == "sum" and stride != 1:
        raise ValueError(
            f"{type(backbone).__name__}'s point score sums per-step terms over "
            f"stride-1 windows; got scoring.stride={stride}, expected 1"
        )
    windows = WindowSet(split, window, stride=stride, cover_tail=True)
    accumulators: Dict[str, PointScoreAccumulator] = {}
    per_window: Dict[str, list] = {}
    for idx, x in windows.batches(batch_size):
        for name, s in detector.score_components(x.to(device)).items():
            acc = accumulators.get(name)
            if acc is None:
                acc = PointScoreAccumulator(len(split), window, rules.get(name, aggregate))
                accumulators[name] = acc
            s = s.float().cpu().numpy()
            acc.add(windows.starts[idx], s)
            if window_means:
                per_window.setdefault(name, []).append(s.mean(axis=1, dtype=np.float64))
    points = {name: acc.result() for name, acc in accumulators.items()}
    if not window_means:
        return points
    return points, {k: np.concatenate(v) for k, v in per_window.items()}, windows.starts


def window_labels(labels: np.ndarray, starts: np.ndarray, window: int) -> np.ndarray:
    """Label of each window: 1 if any point inside is anomalous (the reference protocol)."""
    c = np.r_[0, np.cumsum(labels.astype(np.int64))]
    return ((c[starts + window] - c[starts]) > 0).astype(np.int8)
