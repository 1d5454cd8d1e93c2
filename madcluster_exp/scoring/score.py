"""Window scores -> one score per time point, per score component."""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch

from madcluster_exp.data import PointScoreAccumulator, SeriesSplit, WindowSet


def score_split(detector, split: SeriesSplit, stride: int, batch_size: int, aggregate: str,
                device: torch.device) -> Dict[str, np.ndarray]:
    """Score every point of ``split``: {component name: float64 [N]}.

    Windows at ``stride`` plus an end-aligned window per entity cover every point; overlapping
    per-step scores are folded by ``aggregate`` (mean or max), except where the backbone
    declares its own rule for its component (``Backbone.score_aggregate``).
    """
    detector.eval()
    backbone = detector.backbone
    window = backbone.input_length
    rules = {"backbone": backbone.score_aggregate or aggregate}
    if rules["backbone"] == "sum" and stride != 1:
        raise ValueError(f"{type(backbone).__name__}'s point score sums per-step terms over "
                         f"stride-1 windows; got scoring.stride={stride}, expected 1")
    windows = WindowSet(split, window, stride=stride, cover_tail=True)
    accumulators: Dict[str, PointScoreAccumulator] = {}
    for idx, x in windows.batches(batch_size):
        for name, s in detector.score_components(x.to(device)).items():
            acc = accumulators.get(name)
            if acc is None:
                acc = PointScoreAccumulator(len(split), window, rules.get(name, aggregate))
                accumulators[name] = acc
            acc.add(windows.starts[idx], s.float().cpu().numpy())
    return {name: acc.result() for name, acc in accumulators.items()}
