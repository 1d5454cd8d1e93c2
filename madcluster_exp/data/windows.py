"""Sliding windows as zero-copy strided views, and their reverse: window scores -> point scores.

``torch.from_numpy(values).unfold(0, T, 1)`` is a view of the one split array; indexing it with a
batch of window starts copies only that batch. Windows never cross entity boundaries.
"""

from __future__ import annotations

from typing import Iterator, Optional

import numpy as np
import torch

from madcluster_exp.data.series import DataError, SeriesSplit


def window_starts(split: SeriesSplit, window: int, stride: int, cover_tail: bool) -> np.ndarray:
    """Start index of every window, per entity; ``cover_tail`` adds an end-aligned last window
    so that every point is covered when scoring with a stride > 1."""
    starts = []
    for seg in split.segments:
        if seg.length < window:
            raise DataError(
                f"{split.source}[{seg.name}]: {seg.length} rows is shorter than "
                f"one window ({window})"
            )
        s = np.arange(seg.start, seg.end - window + 1, stride, dtype=np.int64)
        if cover_tail and s[-1] != seg.end - window:
            s = np.append(s, seg.end - window)
        starts.append(s)
    return np.concatenate(starts)


class WindowSet:
    """Windows of one split: ``batch(idx)`` returns [B, T, C] float32 for window indices ``idx``."""

    def __init__(self, split: SeriesSplit, window: int, stride: int = 1, cover_tail: bool = False):
        self.split = split
        self.window = window
        self.starts = window_starts(split, window, stride, cover_tail)
        # [N - T + 1, C, T]: a strided view, no data copied.
        self._view = torch.from_numpy(split.values).unfold(0, window, 1)

    def __len__(self) -> int:
        return len(self.starts)

    @property
    def view(self) -> torch.Tensor:
        return self._view

    def batch(self, idx: np.ndarray) -> torch.Tensor:
        starts = torch.from_numpy(self.starts[idx])
        return self._view[starts].transpose(1, 2).contiguous()

    def batches(
        self,
        batch_size: int,
        shuffle: bool = False,
        generator: Optional[torch.Generator] = None,
        max_batches: Optional[int] = None,
    ) -> Iterator[tuple]:
        """Yield (window indices, [B, T, C] tensor); the order comes from ``generator`` only."""
        n = len(self)
        order = torch.randperm(n, generator=generator).numpy() if shuffle else np.arange(n)
        n_batches = (n + batch_size - 1) // batch_size
        if max_batches is not None:
            n_batches = min(n_batches, max_batches)
        for b in range(n_batches):
            idx = order[b * batch_size : (b + 1) * batch_size]
            yield idx, self.batch(idx)

    def n_batches(self, batch_size: int, max_batches: Optional[int] = None) -> int:
        n = (len(self) + batch_size - 1) // batch_size
        return n if max_batches is None else min(n, max_batches)


class PointScoreAccumulator:
    """Turns per-step window scores into one score per time point (reverse windowing).

    Memory is O(points), not O(windows x T): batches are folded in as they arrive.
    ``mean`` averages every window's score for a point; ``max`` keeps the largest; ``sum``
    adds them (for backbones whose per-step scores are sparse by design, see SLMR); ``last``
    keeps the score from the window in which the point sits latest (the window ending at it
    where one exists: OmniAnomaly's "last point of the window" score, whose per-step scores
    are causal, so a point before the first full window keeps its shorter-context score).
    """

    def __init__(self, n_points: int, window: int, aggregate: str = "mean"):
        if aggregate not in ("mean", "max", "sum", "last"):
            raise ValueError(f"scoring.aggregate={aggregate!r}: expected mean, max, sum or last")
        self.n, self.window, self.aggregate = n_points, window, aggregate
        self._offsets = np.arange(window, dtype=np.int64)
        if aggregate in ("mean", "sum"):
            self._sum = np.zeros(n_points, np.float64)
            self._count = np.zeros(n_points, np.int64)
        elif aggregate == "last":
            self._last = np.zeros(n_points, np.float64)
            self._offset = np.full(n_points, -1, np.int64)  # offset of the kept score; -1 = none
        else:
            self._max = np.full(n_points, -np.inf, np.float64)

    def add(self, starts: np.ndarray, scores: np.ndarray) -> None:
        """``starts`` [B] window starts, ``scores`` [B, T] per-step scores."""
        pos = (starts[:, None] + self._offsets[None, :]).ravel()
        vals = np.asarray(scores, dtype=np.float64).ravel()
        if self.aggregate in ("mean", "sum"):
            # Bin only the span this batch touches: scoring batches are consecutive windows, so
            # this is O(B*T) per batch instead of O(points).
            lo, hi = int(pos.min()), int(pos.max()) + 1
            self._sum[lo:hi] += np.bincount(pos - lo, weights=vals, minlength=hi - lo)
            self._count[lo:hi] += np.bincount(pos - lo, minlength=hi - lo)
        elif self.aggregate == "last":
            self._add_last(pos, np.tile(self._offsets, len(starts)), vals)
        else:
            np.maximum.at(self._max, pos, vals)

    def _add_last(self, pos: np.ndarray, offsets: np.ndarray, vals: np.ndarray) -> None:
        """Per point, the entry with the largest in-window offset, if larger than the kept one."""
        order = np.lexsort((offsets, pos))  # by point, then offset: a point's last entry wins
        pos, offsets, vals = pos[order], offsets[order], vals[order]
        final = np.r_[pos[1:] != pos[:-1], True]
        pos, offsets, vals = pos[final], offsets[final], vals[final]
        better = offsets > self._offset[pos]
        self._offset[pos[better]] = offsets[better]
        self._last[pos[better]] = vals[better]

    def result(self) -> np.ndarray:
        if self.aggregate == "sum":
            return self._sum
        if self.aggregate == "last":
            uncovered = self._offset < 0
            if uncovered.any():
                raise RuntimeError(
                    f"point {int(np.flatnonzero(uncovered)[0])} is covered by no scored window"
                )
            return self._last
        uncovered = self._count == 0 if self.aggregate == "mean" else np.isneginf(self._max)
        if uncovered.any():
            missing = int(np.flatnonzero(uncovered)[0])
            raise RuntimeError(f"point {missing} is covered by no scored window")
        return self._sum / self._count if self.aggregate == "mean" else self._max
